//! Everything emitted, converted objects and stand-ins, read back as veil reads it: as Kubernetes
//! objects of veil's types compiled by veil's validation (the controller's path), and as the
//! policies of a local mesh file (ztunnel's path without Kubernetes).

use serde_json::Value;
use veil_crd::authorization::AuthorizationPolicy;
use veil_crd::peer_authentication::PeerAuthentication;
use veil_mesh::discovery::MeshSettings;
use veil_mesh::discovery::local::parse;
use veil_mesh::policy::{compile_authz, compile_peer_auth};

use super::*;

/// Istio's examples and the odd cases together: most convert, some with changes, some are replaced
/// by stand-ins (the last four), one is left out.
const MIXED: &str = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default, labels: {on: "yes", n: "010", e: ""}}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
  annotations: {note: "a: b # c", multi: "line one\nline two", star: "*"}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/sleep"]}
    - source: {namespaces: ["test"]}
    to:
    - operation: {methods: ["GET"], paths: ["/info*"]}
    - operation: {methods: ["POST"], paths: ["/data"], hosts: ["*.example.com", "a.b:*"]}
    when:
    - {key: "request.auth.claims[iss]", values: ["https://accounts.google.com"]}
  - from:
    - source: {serviceAccounts: [sleep], notIpBlocks: ["10.0.0.0/8", "2001:db8::/32"]}
    to:
    - operation: {ports: ["8080", "0443"], notMethods: ["DELETE"]}
    when:
    - {key: destination.port, values: ["8080"]}
    - {key: "request.headers[x-tenant]", notValues: ["*"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: dry, namespace: istio-system, annotations: {istio.io/dry-run: "true"}}
spec:
  selector: {matchLabels: {version: v1}}
  action: DENY
  rules: [{to: [{operation: {notPaths: ["/healthz"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint-deny, namespace: foo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {methods: ["POST"], ports: ["8080"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: svc, namespace: foo}
spec:
  targetRefs: [{kind: Service, group: core, name: reviews}]
  rules: [{from: [{source: {notPrincipals: ["*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: finance, namespace: foo}
spec:
  selector: {matchLabels: {app: finance}}
  mtls: {mode: STRICT}
  portLevelMtls: {8080: {mode: DISABLE}, 9090: {mode: UNSET}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: custom, namespace: foo}
spec: {action: CUSTOM, provider: {name: opa}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: istio-system, labels: {on: "yes"}}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{from: [{source: {notRequestPrincipals: ["*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: egress, namespace: foo}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: api}]
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-svc, namespace: foo}
spec:
  targetRefs: [{kind: Service, group: core, name: reviews}]
  action: CUSTOM
  provider: {name: opa}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: inveil, namespace: veil-system}
spec: {action: CUSTOM, provider: {name: opa}}
"#;

/// Asserts that veil accepts every object of `conversion`, read back from the YAML written, and
/// that no two of them are one veil object (the last applied would replace the others).
pub(super) fn assert_veil_accepts(conversion: &Conversion) {
    let text = conversion.objects_yaml();
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    assert_eq!(documents.len(), conversion.objects.len());
    let mut identities = std::collections::BTreeSet::new();
    for (document, object) in documents.iter().zip(&conversion.objects) {
        assert_eq!(document["apiVersion"], veil_crd::API_VERSION);
        let yaml = serde_saphyr::to_string(document).unwrap();
        let kind = document["kind"].as_str();
        let ns = document["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default();
        let name = document["metadata"]["name"].as_str().unwrap();
        assert!(
            identities.insert((kind, ns, name)),
            "{kind:?} {ns}/{name} twice"
        );
        match kind {
            Some("AuthorizationPolicy") => {
                let back: AuthorizationPolicy = serde_saphyr::from_str(&yaml).unwrap();
                compile_authz(ns, name, &back.spec).unwrap();
                assert_eq!(VeilSpec::AuthorizationPolicy(back.spec), object.spec);
                assert_eq!(
                    back.metadata.labels.unwrap_or_default(),
                    object.metadata.labels
                );
                let annotations = back.metadata.annotations.unwrap_or_default();
                assert_eq!(
                    annotations.contains_key(STAND_IN_ANNOTATION),
                    object.stand_in
                );
                assert_eq!(annotations, object.metadata.annotations);
            }
            Some("PeerAuthentication") => {
                let back: PeerAuthentication = serde_saphyr::from_str(&yaml).unwrap();
                compile_peer_auth(ns, name, &back.spec).unwrap();
                assert_eq!(VeilSpec::PeerAuthentication(back.spec), object.spec);
                assert!(!object.stand_in);
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }
}

#[test]
fn every_converted_object_reads_back_and_passes_veils_validation() {
    let conversion = run(MIXED);
    let names: Vec<&str> = conversion
        .objects
        .iter()
        .map(|o| o.metadata.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "allow-nothing",
            "httpbin",
            "dry",
            "waypoint-deny",
            "svc",
            "default",
            "finance",
            "custom",
            "jwt",
            "egress",
            "ext-svc",
        ]
    );
    let stand_ins: Vec<bool> = conversion.objects.iter().map(|o| o.stand_in).collect();
    assert_eq!(stand_ins, [[false; 7].as_slice(), &[true; 4]].concat());
    assert_veil_accepts(&conversion);
    // The stand-in for the CUSTOM policy on a Service keeps its target, group `core` written "".
    let VeilSpec::AuthorizationPolicy(ext_svc) = &conversion.objects[10].spec else {
        panic!("an AuthorizationPolicy")
    };
    assert_eq!(ext_svc.target_refs.len(), 1);
    assert_eq!(ext_svc.target_refs[0].group, "");
    // The labels and annotations that YAML could misread survive as strings.
    assert_eq!(conversion.objects[0].metadata.labels["on"], "yes");
    assert_eq!(conversion.objects[0].metadata.labels["n"], "010");
    assert_eq!(
        conversion.objects[1].metadata.annotations["multi"],
        "line one\nline two"
    );
}

#[test]
fn every_converted_object_loads_as_a_local_mesh_files_policy() {
    let conversion = run(MIXED);
    let mut documents: Vec<Value> =
        serde_saphyr::from_multiple(&conversion.objects_yaml()).unwrap();
    // The mesh file's metadata is name and namespace only.
    for document in &mut documents {
        let metadata = document["metadata"].as_object_mut().unwrap();
        metadata.retain(|key, _| key == "name" || key == "namespace");
    }
    let mesh = serde_json::json!({ "policies": documents });
    let state = parse(&mesh.to_string(), &MeshSettings::default()).unwrap();
    assert!(state.rejected().is_empty(), "{:?}", state.rejected());
    assert_eq!(state.authz_policies().len(), 9);
}

#[test]
fn the_mixed_input_reports_what_it_changed_replaced_and_left_out() {
    let conversion = run(MIXED);
    let expected = [
        "AuthorizationPolicy foo/httpbin (document 2) | dropped | spec.rules[0].when[0].key",
        "AuthorizationPolicy foo/httpbin (document 2) | changed | spec.rules[1].from[0].source.serviceAccounts[0]",
        "AuthorizationPolicy foo/httpbin (document 2) | widens | spec.rules",
        "AuthorizationPolicy istio-system/dry (document 3) | changed | spec.action",
        "AuthorizationPolicy istio-system/dry (document 3) | changed | metadata.namespace",
        "AuthorizationPolicy foo/svc (document 5) | changed | spec.targetRefs[0].group",
        "AuthorizationPolicy foo/svc (document 5) | widens | spec.targetRefs",
        "PeerAuthentication istio-system/default (document 6) | changed | metadata.namespace",
        "PeerAuthentication foo/finance (document 7) | changed | spec.portLevelMtls[8080].mode",
        "AuthorizationPolicy foo/custom (document 8) | not_converted | spec.action",
        "AuthorizationPolicy foo/custom (document 8) | stand_in | ",
        "AuthorizationPolicy istio-system/jwt (document 9) | not_converted | spec.rules[0].from[0].source.notRequestPrincipals",
        "AuthorizationPolicy istio-system/jwt (document 9) | stand_in | ",
        "AuthorizationPolicy foo/egress (document 10) | not_converted | spec.targetRefs[0]",
        "AuthorizationPolicy foo/egress (document 10) | stand_in | ",
        "AuthorizationPolicy foo/ext-svc (document 11) | not_converted | spec.action",
        "AuthorizationPolicy foo/ext-svc (document 11) | stand_in | ",
        "AuthorizationPolicy veil-system/inveil (document 12) | not_converted | spec.action",
        "AuthorizationPolicy veil-system/inveil (document 12) | not_converted | ",
    ];
    assert_eq!(findings(&conversion), expected);
    let table = report_table(&conversion);
    assert!(
        table.starts_with("AuthorizationPolicy foo/httpbin (document 2):\n  dropped        spec.rules[0].when[0].key"),
        "{table}"
    );
    assert!(
        table.ends_with(
            "\n7 converted, 4 replaced by fail-closed stand-ins, 1 left out; see the findings above.\n\
             WARNING: 2 converted object(s) may admit traffic Istio refused (severity widens): \
             review them before applying.\n"
        ),
        "{table}"
    );
}
