//! PeerAuthentication, from Istio's mtls-migration task and the reference's examples.

use super::*;

// mtls-migration task: mesh-wide STRICT.
#[test]
fn mesh_wide_strict_moves_to_veils_root_namespace() {
    let input = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: "default"
  namespace: "istio-system"
spec:
  mtls:
    mode: STRICT
"#;
    let conversion = run(input);
    let expected = r#"
apiVersion: security.veil.dev/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: veil-system
spec:
  mtls:
    mode: STRICT
"#;
    assert_eq!(conversion.objects_yaml(), text(expected));
    assert_eq!(
        findings(&conversion),
        ["PeerAuthentication istio-system/default (document 1) | changed | metadata.namespace"]
    );
    let why = reason(&conversion, "metadata.namespace");
    assert!(why.contains("moves to veil's, veil-system"), "{why}");
}

// The reference: "Policies to allow both mTLS and plaintext traffic for all workloads under
// namespace foo, but require mTLS for workload finance", then the port-level exceptions.
#[test]
fn peer_authentications_carry_over_with_disable_written_permissive() {
    let input = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  mtls:
    mode: PERMISSIVE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: finance
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: UNSET
  portLevelMtls:
    8080:
      mode: DISABLE
"#;
    let conversion = run(input);
    let expected = r#"
apiVersion: security.veil.dev/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  mtls:
    mode: PERMISSIVE
---
apiVersion: security.veil.dev/v1
kind: PeerAuthentication
metadata:
  name: finance
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: UNSET
  portLevelMtls:
    8080:
      mode: PERMISSIVE
"#;
    assert_eq!(conversion.objects_yaml(), text(expected));
    assert_eq!(
        findings(&conversion),
        ["PeerAuthentication foo/finance (document 2) | changed | spec.portLevelMtls[8080].mode"]
    );
}

// The reference: "PeerAuthentication policies with workload selectors are ignored when deployed in
// the root namespace." veil would apply it.
#[test]
fn a_peer_authentication_with_a_selector_in_the_root_namespace_is_not_converted() {
    let input = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: legacy
  namespace: istio-system
spec:
  selector:
    matchLabels:
      app: legacy
  mtls:
    mode: PERMISSIVE
"#;
    let conversion = run(input);
    assert!(conversion.objects.is_empty());
    let at = "PeerAuthentication istio-system/legacy (document 1)";
    assert_eq!(
        findings(&conversion),
        [
            format!("{at} | not_converted | spec.selector"),
            format!("{at} | not_converted | "),
        ]
    );
    assert_eq!(
        reason(&conversion, ""),
        "Istio ignores this PeerAuthentication, so leaving it out changes nothing"
    );
}

#[test]
fn an_unset_mesh_wide_mode_is_reported() {
    let input = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n\
                 metadata: {name: default, namespace: istio-system}\nspec: {}\n";
    let conversion = run(input);
    assert_eq!(conversion.objects.len(), 1);
    let why = reason(&conversion, "spec.mtls.mode");
    assert!(
        why.contains("Istio then uses PERMISSIVE, veil STRICT"),
        "{why}"
    );
}

// veil needs no stand-in for a PeerAuthentication (without any, its mode is STRICT); the finding
// says what leaving each one out does.
#[test]
fn leaving_a_peer_authentication_out_says_whether_that_widens_access() {
    let pa = |name: &str, namespace: &str, spec: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
        )
    };
    // `mtsl` is misspelt in each, so none is converted.
    let input = [
        pa(
            "mesh-strict",
            "istio-system",
            "{mtls: {mode: STRICT}, mtsl: {}}",
        ),
        pa(
            "mesh-permissive",
            "istio-system",
            "{mtls: {mode: PERMISSIVE}, mtsl: {}}",
        ),
        pa("ns-permissive", "foo", "{mtls: {mode: DISABLE}, mtsl: {}}"),
        pa("ns-strict", "foo", "{mtls: {mode: STRICT}, mtsl: {}}"),
        pa(
            "port-strict",
            "foo",
            "{selector: {matchLabels: {app: a}}, portLevelMtls: {8080: {mode: STRICT}}, mtsl: {}}",
        ),
        pa(
            "unset",
            "foo",
            "{selector: {matchLabels: {app: a}}, mtls: {mode: UNSET}, mtsl: {}}",
        ),
        pa("unreadable", "foo", "{mtls: {mode: strict}}"),
    ]
    .join("---\n");
    let conversion = run(&input);
    assert!(conversion.objects.is_empty());
    let left_out: Vec<&str> = conversion
        .findings
        .iter()
        .filter(|f| f.field.is_empty())
        .map(|f| f.reason.as_str())
        .collect();
    let expected = [
        "leaving it out never widens access: without a mesh-wide PeerAuthentication veil's mode is \
         STRICT",
        "leaving it out never widens access: without a mesh-wide PeerAuthentication veil's mode is \
         STRICT, so plaintext it admitted is refused",
        "leaving it out never widens access: where it admitted plaintext, the mesh-wide \
         PeerAuthentication (veil's default, STRICT, without one) decides instead",
        "where it required mutual TLS (STRICT), the mesh-wide PeerAuthentication (veil's default, \
         STRICT, without one) decides instead: leaving it out widens nothing if that is STRICT or \
         absent, but admits plaintext if it is PERMISSIVE",
        "where it required mutual TLS (STRICT), the namespace's or the mesh-wide \
         PeerAuthentication",
        "its modes are UNSET and defer to the namespace's or the mesh-wide PeerAuthentication",
        "its modes cannot be read; where it required mutual TLS (STRICT)",
    ];
    assert_eq!(left_out.len(), expected.len(), "{left_out:#?}");
    for (reason, start) in left_out.iter().zip(expected) {
        assert!(
            reason.starts_with(start),
            "{reason}\n  does not start with\n{start}"
        );
    }
    // No stand-in for any, so all are left out.
    assert!(report_table(&conversion).ends_with(
        "0 converted, 0 replaced by fail-closed stand-ins, 7 left out; see the findings above.\n"
    ));
}

/// Istio applies the oldest of the PeerAuthentications that match a pod, veil the first by name:
/// with selectors a pod can match together and different modes, only the oldest is converted.
#[test]
fn overlapping_selectors_with_different_modes_keep_only_the_oldest() {
    let input = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a-permissive, namespace: shop, creationTimestamp: "2026-11-02T00:00:00Z"}
spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b-strict, namespace: shop, creationTimestamp: "2026-11-01T00:00:00Z"}
spec: {selector: {matchLabels: {app: web, tier: front}}, mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: c-db, namespace: shop, creationTimestamp: "2026-11-03T00:00:00Z"}
spec: {selector: {matchLabels: {app: db}}, mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: d-other-namespace, namespace: blog, creationTimestamp: "2026-11-04T00:00:00Z"}
spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}
"#;
    let conversion = run(input);
    let kept: Vec<&str> = conversion
        .objects
        .iter()
        .map(|o| o.metadata.name.as_str())
        .collect();
    // a-permissive would win in veil (first by name) for a pod labelled app=web,tier=front, where
    // Istio applies b-strict (older): it is left out. c-db and the other namespace's cannot meet
    // a pod of b-strict's.
    assert_eq!(kept, ["b-strict", "c-db", "d-other-namespace"]);
    let left_out: Vec<&str> = conversion
        .findings
        .iter()
        .filter(|f| f.severity == Severity::NotConverted)
        .filter_map(|f| f.object.name.as_deref())
        .collect();
    assert!(
        !left_out.is_empty() && left_out.iter().all(|n| *n == "a-permissive"),
        "{left_out:?}"
    );
}
