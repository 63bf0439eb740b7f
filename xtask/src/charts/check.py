"""veil's chart checks, run by `cargo xtask check-charts` inside a virtualenv it prepares.

For each chart: `helm lint --strict` through the Helm v4 SDK; render it with its default values and
with every values file in its `ci/` folder; validate every rendered manifest with
`kubernetes-validate --strict` for the target Kubernetes version; and render every values file in
`ci/must-fail/`, each of which must be refused (by the values schema, a template, or the manifest
validation) — so that the checks themselves are shown to catch broken values. Then the generated
CRDs are validated as manifests, and the example custom resources against the CRDs' schemas.

Exits non-zero on the first category of failure, after reporting every failure found.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import helm_python
import jsonschema
import yaml

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL  {message}", flush=True)


def ok(message):
    print(f"ok    {message}", flush=True)


def lint(chart, kube_version):
    report = helm_python.lint(str(chart), strict=True, kube_version=f"v{kube_version}")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    problems += [{"path": "", "error": e} for e in report.get("errors", [])]
    for m in problems:
        fail(f"{chart.name}: lint: {m.get('path', '')}: {m['error']}")
    infos = [m["error"] for m in report.get("messages", []) if m.get("severity", 0) < 2]
    if not problems:
        ok(f"{chart.name}: helm lint --strict" + (f" (info: {'; '.join(infos)})" if infos else ""))


def render(chart, values, namespace):
    """Rendered documents, or raises the SDK's error."""
    loaded = helm_python.Chart.load(str(chart))
    try:
        out = loaded.render(values, name=chart.name, namespace=namespace, is_install=True)
    finally:
        loaded.close()
    docs = []
    for path, text in sorted(out.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs


def validate_manifests(docs, validator, kube_version, workdir):
    """Runs kubernetes-validate on every document; returns its output on failure, else None."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (_, doc) in enumerate(docs):
        name = f"{i:03}-{doc.get('kind', 'x')}-{doc.get('metadata', {}).get('name', 'x')}.yaml"
        path = workdir / name
        path.write_text(yaml.safe_dump(doc))
        files.append(str(path))
    if not files:
        return "nothing rendered"
    result = subprocess.run(
        [validator, "--strict", "--quiet", "-k", kube_version, *files],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        return (result.stdout + result.stderr).strip()
    return None


def embedded_json_problem(docs):
    """A ConfigMap entry named *.json that is not JSON (a dashboard Grafana would not load)."""
    for _, doc in docs:
        if doc.get("kind") != "ConfigMap":
            continue
        for key, value in (doc.get("data") or {}).items():
            if not key.endswith(".json"):
                continue
            try:
                parsed = json.loads(value)
            except ValueError as e:
                return f"ConfigMap {doc['metadata']['name']}: {key} is not JSON: {e}"
            for panel in parsed.get("panels", []) if isinstance(parsed, dict) else []:
                if not all(t.get("expr") for t in panel.get("targets", [])) or not panel.get("targets"):
                    return f"ConfigMap {doc['metadata']['name']}: {key}: panel {panel.get('title')!r} has no query"
    return None


def scenario_values(path):
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: not a mapping")
    return values


def check_chart(chart, extra, args, tmp):
    lint(chart, args.kube_version)
    scenarios = [("default values", {})]
    scenarios += [(f"ci/{p.name}", scenario_values(p)) for p in sorted((chart / "ci").glob("*.yaml"))]
    scenarios += [(str(p), scenario_values(p)) for p in extra]
    for label, values in scenarios:
        try:
            docs = render(chart, values, args.namespace)
        except helm_python.HelmError as e:
            fail(f"{chart.name} ({label}): render: {e}")
            continue
        problem = manifests_problem(docs, args, tmp / chart.name / label.replace("/", "_"))
        problem = problem or embedded_json_problem(docs)
        if problem:
            fail(f"{chart.name} ({label}): {problem}")
        else:
            kinds = sorted({d.get("kind") for _, d in docs})
            ok(f"{chart.name} ({label}): {len(docs)} manifests valid for Kubernetes {args.kube_version} ({', '.join(kinds)})")
    for path in sorted((chart / "ci" / "must-fail").glob("*.yaml")):
        label = f"ci/must-fail/{path.name}"
        try:
            docs = render(chart, scenario_values(path), args.namespace)
        except helm_python.HelmError as e:
            reason = str(e).strip().splitlines()
            ok(f"{chart.name} ({label}): refused at render: {' '.join(reason)[:300]}")
            continue
        problem = manifests_problem(docs, args, tmp / chart.name / label.replace("/", "_"))
        if problem:
            ok(f"{chart.name} ({label}): refused: {problem.splitlines()[0][:300]}")
        else:
            fail(f"{chart.name} ({label}): a deliberately broken value was NOT caught")


def manifests_problem(docs, args, workdir):
    """Objects of another project's CRDs (`--foreign-crds`, e.g. the Prometheus Operator's PodMonitor)
    against their schemas, the rest with kubernetes-validate; the first problem found, else None."""
    foreign = crd_schemas(pathlib.Path(args.foreign_crds))
    mine, theirs = [], []
    for item in docs:
        doc = item[1]
        (theirs if (doc.get("apiVersion"), doc.get("kind")) in foreign else mine).append(item)
    for _, doc in theirs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        errors = sorted(
            jsonschema.Draft7Validator(foreign[key]).iter_errors(doc),
            key=lambda e: list(e.absolute_path),
        )
        if errors:
            e = errors[0]
            return f"{key[1]} {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message} (its CRD's schema)"
    problem = validate_manifests(mine, args.validator, args.kube_version, workdir)
    if problem:
        return f"kubernetes-validate --strict -k {args.kube_version}:\n{problem}"
    return None


def strict(schema):
    """The schema with unknown fields refused where the API server would prune them (what
    `kubectl apply --validate=strict` reports)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema


def crd_schemas(crd_dir):
    """(group/version, kind) -> openAPIV3Schema of every served version."""
    schemas = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                root = dict(version["schema"]["openAPIV3Schema"])
                # Every object has these; the API server does not list them in a CRD's schema.
                root["properties"] = {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    **root.get("properties", {}),
                }
                schemas[(f"{group}/{version['name']}", kind)] = strict(root)
    return schemas


def check_crds_and_examples(args, tmp):
    crd_dir = pathlib.Path(args.crds)
    crds = [(str(p), yaml.safe_load(p.read_text())) for p in sorted(crd_dir.glob("*.yaml"))]
    problem = validate_manifests(crds, args.validator, args.kube_version, tmp / "crds")
    if problem:
        fail(f"CRDs: kubernetes-validate:\n{problem}")
    else:
        ok(f"{len(crds)} CRDs valid for Kubernetes {args.kube_version}")
    schemas = crd_schemas(crd_dir)
    plain = []
    for path in sorted(pathlib.Path(args.examples).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key in schemas:
                errors = sorted(
                    jsonschema.Draft7Validator(schemas[key]).iter_errors(doc),
                    key=lambda e: list(e.absolute_path),
                )
                if not doc.get("metadata", {}).get("name"):
                    fail(f"{path.name}: {key[1]} without metadata.name")
                for e in errors:
                    fail(f"{path.name}: {key[1]} {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}")
                if not errors:
                    ok(f"{path.name}: valid {key[1]} ({key[0]})")
            elif key[0] and "veil.dev" in key[0]:
                fail(f"{path.name}: no CRD serves {key[1]} in {key[0]}")
            else:
                plain.append((str(path), doc))
    if plain:
        problem = validate_manifests(plain, args.validator, args.kube_version, tmp / "examples")
        if problem:
            fail(f"examples: kubernetes-validate:\n{problem}")
        else:
            ok(f"{len(plain)} example Kubernetes objects valid")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kube-version", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--validator", required=True)
    parser.add_argument("--crds", required=True)
    parser.add_argument("--examples", required=True)
    parser.add_argument("--foreign-crds", required=True, help="other projects' CRDs the charts may render objects of")
    parser.add_argument("--values", action="append", default=[], help="CHART=FILE: render CHART with FILE too")
    parser.add_argument("charts", nargs="+")
    args = parser.parse_args()
    extra = {}
    for item in args.values:
        chart, _, file = item.partition("=")
        if not file:
            parser.error(f"--values {item}: expected CHART=FILE")
        extra.setdefault(chart, []).append(pathlib.Path(file))
    unknown = set(extra) - {pathlib.Path(c).name for c in args.charts}
    if unknown:
        parser.error(f"--values for unknown chart(s): {', '.join(sorted(unknown))}")
    helm_python.disable_logging()
    with tempfile.TemporaryDirectory(prefix="veil-charts-") as tmp:
        tmp = pathlib.Path(tmp)
        for chart in args.charts:
            chart = pathlib.Path(chart)
            check_chart(chart, extra.get(chart.name, []), args, tmp)
        check_crds_and_examples(args, tmp)
    if failures:
        print(f"\n{len(failures)} chart check(s) failed", flush=True)
        sys.exit(1)
    print("\nall chart checks passed", flush=True)


if __name__ == "__main__":
    main()
