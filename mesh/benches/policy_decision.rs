//! One L4 authorization decision with 10,000 AuthorizationPolicies in the store: the lookup of the
//! policies that apply to the destination (what a connection pays after the mesh changed) and the
//! evaluation (what every connection pays). Run by `cargo xtask bench`, or `cargo bench -p veil-mesh`.

#![allow(
    missing_docs,
    reason = "criterion's macros generate undocumented items"
)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use veil_crd::authorization::AuthorizationPolicySpec;
use veil_mesh::identity::Identity;
use veil_mesh::policy::{Attributes, AuthzPolicy, PolicyIndex, compile_authz, evaluate};

/// Policies in the store.
const POLICIES: usize = 10_000;
/// Namespaces they are spread over.
const NAMESPACES: usize = 500;

fn spec(json: serde_json::Value) -> AuthorizationPolicySpec {
    serde_json::from_value(json).expect("a valid spec")
}

/// 10,000 policies: per namespace a namespace-wide DENY, and ALLOW policies selecting one app each
/// by label, with principals, ports and source-address conditions; the destination's namespace
/// looks like every other.
fn store() -> PolicyIndex {
    let mut policies: Vec<Arc<AuthzPolicy>> = Vec::with_capacity(POLICIES);
    let per_namespace = POLICIES / NAMESPACES;
    for n in 0..NAMESPACES {
        let ns = format!("team-{n}");
        let deny = spec(serde_json::json!({
            "action": "DENY",
            "rules": [{"from": [{"source": {"namespaces": ["quarantine"]}}]}],
        }));
        policies.push(Arc::new(
            compile_authz(&ns, "deny-quarantine", &deny).unwrap(),
        ));
        for p in 1..per_namespace {
            let allow = spec(serde_json::json!({
                "selector": {"matchLabels": {"app": format!("app-{p}")}},
                "action": "ALLOW",
                "rules": [
                    {
                        "from": [{"source": {"principals": [
                            format!("cluster.local/ns/team-{}/sa/client-{p}", (n + 1) % NAMESPACES),
                            format!("cluster.local/ns/{ns}/sa/client-{p}"),
                        ]}}],
                        "to": [{"operation": {"ports": ["8080", "9090"]}}],
                    },
                    {
                        "from": [{"source": {"ipBlocks": ["10.20.0.0/16"]}}],
                        "to": [{"operation": {"ports": ["8443"]}}],
                        "when": [{"key": "source.namespace", "values": [ns.clone()]}],
                    },
                ],
            }));
            policies.push(Arc::new(
                compile_authz(&ns, &format!("allow-app-{p}"), &allow).unwrap(),
            ));
        }
    }
    assert_eq!(policies.len(), POLICIES);
    PolicyIndex::new("veil-system", policies)
}

fn decision(c: &mut Criterion) {
    let index = store();
    let labels = BTreeMap::from([
        ("app".to_owned(), "app-7".to_owned()),
        ("version".to_owned(), "v2".to_owned()),
    ]);
    let source = Identity::parse("spiffe://cluster.local/ns/team-250/sa/client-7").unwrap();
    let attrs = Attributes {
        source: Some(&source),
        source_ip: "10.21.0.12".parse::<IpAddr>().unwrap(),
        destination_ip: "10.22.0.30".parse::<IpAddr>().unwrap(),
        destination_port: 9090,
        http: None,
    };
    let applicable = index.for_workload("team-249", &labels);
    assert!(
        evaluate(&applicable, &attrs).allowed(),
        "the benchmarked request is allowed"
    );

    let mut group = c.benchmark_group("policy_decision_10k");
    group.bench_function("lookup_and_evaluate", |b| {
        b.iter(|| {
            let policies = index.for_workload(black_box("team-249"), black_box(&labels));
            evaluate(&policies, black_box(&attrs))
        });
    });
    group.bench_function("evaluate_cached", |b| {
        b.iter(|| evaluate(black_box(&applicable), black_box(&attrs)));
    });
    group.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
