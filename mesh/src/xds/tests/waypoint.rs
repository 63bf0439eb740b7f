//! A waypoint's side: what the control plane sends it (its namespace, policies as written) back into
//! a mesh, deciding every request as the mesh it was sent from; and what fails closed.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::subscriber::resource;
use super::*;
use crate::discovery::{WaypointRef, Workload};
use crate::policy::{AuthzPolicy, HttpAttributes, Target};
use crate::xds::proto::veil::{AuthorizationPolicy, PolicyBinding};

const WAYPOINT_MESH: &str = r#"
namespaces:
  - {name: shop, dataplaneMode: ambient, useWaypoint: wp}
  - {name: bank, dataplaneMode: ambient, useWaypoint: vault}
waypoints:
  - {name: wp, namespace: shop, serviceAccount: wp, ips: [10.9.0.1]}
  - {name: vault, namespace: bank, serviceAccount: vault, ips: [10.9.1.1]}
workloads:
  - {name: web, namespace: shop, serviceAccount: web, node: node-a, ips: [10.1.0.1], labels: {app: web}}
  - {name: api, namespace: shop, serviceAccount: api, node: node-b, ips: [10.1.0.2], labels: {app: api, tier: gold}}
  - {name: db, namespace: shop, serviceAccount: db, node: node-b, ips: [10.1.0.3], labels: {app: db}, useWaypoint: none}
  - {name: ledger, namespace: bank, serviceAccount: ledger, node: node-a, ips: [10.2.0.1], labels: {app: ledger}}
services:
  - {name: api, namespace: shop, vips: [10.96.0.2], ports: [{port: 80, targetPort: 8080}], selector: {app: api}}
  - {name: db, namespace: shop, vips: [10.96.0.3], ports: [{port: 5432}], selector: {app: db}, useWaypoint: none}
  - {name: ledger, namespace: bank, vips: [10.96.1.1], ports: [{port: 80}], selector: {app: ledger}}
policies:
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: api-reads, namespace: shop}
    spec:
      targetRefs: [{kind: Service, group: "", name: api}]
      rules:
        - from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]
          to: [{operation: {methods: [GET], paths: ["/items/*"]}}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: no-admin, namespace: shop}
    spec:
      targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
      action: DENY
      rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: gold-only-posts, namespace: shop}
    spec:
      selector: {matchLabels: {tier: gold}}
      action: DENY
      rules: [{to: [{operation: {methods: [POST]}}], from: [{source: {notNamespaces: [shop]}}]}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: db-from-api, namespace: shop}
    spec:
      targetRefs: [{kind: Service, group: "", name: db}]
      rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/api]}}]}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: mesh-no-debug, namespace: veil-system}
    spec:
      selector: {matchLabels: {app: api}}
      action: DENY
      rules: [{when: [{key: "request.headers[x-debug]", values: ["1"]}]}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: ledger-tellers, namespace: bank}
    spec:
      rules: [{from: [{source: {principals: [cluster.local/ns/bank/sa/teller]}}]}]
"#;

pub(super) fn waypoint_state() -> MeshState {
    local::parse(WAYPOINT_MESH, &MeshSettings::default()).expect("the test mesh is valid")
}

fn shop() -> Audience {
    Audience::Waypoint {
        namespace: "shop".into(),
        root: "veil-system".into(),
    }
}

/// What the controller sends `audience` of the kinds a waypoint subscribes to, as its store holds
/// it.
fn received_by(resources: &Resources, audience: &Audience) -> Store {
    let mut store = Store::new(MeshSettings::default()).for_waypoint();
    for kind in [Kind::Policy, Kind::Binding, Kind::Address] {
        let list: Vec<_> = resources
            .of(kind)
            .iter()
            .filter(|(name, _)| audience.admits(kind, name))
            .map(|(name, e)| resource(kind, name, &e.version, e.body.to_vec()))
            .collect();
        assert_eq!(store.apply(kind, &list, &[]), vec![], "{kind:?}");
    }
    store
}

fn ids(policies: &[Arc<AuthzPolicy>]) -> BTreeSet<String> {
    policies.iter().map(|p| p.id.to_string()).collect()
}

/// What waypoint `wp` checks a request to `workload` (addressed through `service`, if any) against,
/// as veil's waypoint gathers it (waypoint/src/target.rs).
fn checked(state: &MeshState, workload: &Workload, service: Option<&str>) -> Vec<Arc<AuthzPolicy>> {
    let mut out = state.authz_for_target("shop", &Target::Gateway("wp".into()));
    if let Some(service) = service {
        out.extend(state.authz_for_target("shop", &Target::Service(service.into())));
    }
    out.extend(state.authz_for(workload).iter().cloned());
    out
}

#[test]
fn a_waypoint_is_sent_its_namespace_and_decides_every_request_as_the_mesh_it_was_sent_from() {
    let native = waypoint_state();
    let resources = Resources::from_state(&native);
    let store = received_by(&resources, &shop());
    let xds = store.to_state();
    assert_eq!(xds.rejected(), &[], "nothing refused");
    assert!(
        !xds.istio_semantics(),
        "policies as written, not Istio's L4 form"
    );
    // Its namespace only: no workload, service or policy of bank.
    let names = |state: &MeshState| -> BTreeSet<String> {
        state
            .workloads()
            .iter()
            .map(|w| w.key())
            .chain(state.services().map(|s| s.key()))
            .collect()
    };
    assert_eq!(
        names(&xds),
        ["shop/api", "shop/db", "shop/web"].map(String::from).into()
    );
    assert!(
        xds.authz_policies()
            .iter()
            .all(|p| &*p.id.namespace != "bank")
    );
    let me = WaypointRef {
        namespace: "shop".into(),
        name: "wp".into(),
    };
    assert_eq!(
        xds.waypoint(&me).map(|w| w.identity.clone()),
        native.waypoint(&me).map(|w| w.identity.clone())
    );

    let id = |ns: &str, sa: &str| Identity::new("cluster.local", ns, sa).unwrap();
    let peers = [id("shop", "web"), id("shop", "api"), id("bank", "ledger")];
    let requests = [
        ("GET", "/items/1", ""),
        ("GET", "/admin/users", ""),
        ("POST", "/items/1", ""),
        ("GET", "/items/1", "1"),
        ("DELETE", "/other", ""),
    ];
    let mut decided = 0;
    let mut allowed = 0;
    for (key, service) in [
        ("shop/web", None),
        ("shop/api", Some("api")),
        ("shop/db", Some("db")),
    ] {
        let w = native
            .workloads()
            .into_iter()
            .find(|w| w.key() == key)
            .unwrap();
        let x = xds.workload_by_ip(w.ips[0]).unwrap();
        assert_eq!(x.waypoint, w.waypoint, "{key}");
        let (want, got) = (checked(&native, &w, service), checked(&xds, x, service));
        assert_eq!(ids(&got), ids(&want), "{key} via {service:?}");
        for peer in &peers {
            for (method, path, debug) in requests {
                let mut headers = http::HeaderMap::new();
                if !debug.is_empty() {
                    headers.insert("x-debug", debug.parse().unwrap());
                }
                let attributes = Attributes {
                    source: Some(peer),
                    source_ip: "10.1.0.1".parse().unwrap(),
                    destination_ip: w.ips[0],
                    destination_port: 8080,
                    http: Some(HttpAttributes {
                        method,
                        path,
                        host: "api.shop.svc.cluster.local",
                        headers: &headers,
                    }),
                };
                let decision = evaluate(&want, &attributes).allowed();
                assert_eq!(
                    evaluate(&got, &attributes).allowed(),
                    decision,
                    "{key} via {service:?}: {peer} {method} {path} x-debug={debug:?}"
                );
                decided += 1;
                allowed += usize::from(decision);
            }
        }
    }
    // Both outcomes occur: the comparison is not vacuous.
    assert!(allowed > 0 && allowed < decided, "{allowed} of {decided}");
}

/// `GET /items/1` to api (10.1.0.2:8080) from `source` at `source_ip`.
fn get_item<'a>(
    source: &'a Identity,
    source_ip: &str,
    headers: &'a http::HeaderMap,
) -> Attributes<'a> {
    Attributes {
        source: Some(source),
        source_ip: source_ip.parse().unwrap(),
        destination_ip: "10.1.0.2".parse().unwrap(),
        destination_port: 8080,
        http: Some(HttpAttributes {
            method: "GET",
            path: "/items/1",
            host: "api.shop.svc.cluster.local",
            headers,
        }),
    }
}

#[test]
fn what_a_waypoint_cannot_read_fails_closed() {
    let native = waypoint_state();
    let resources = Resources::from_state(&native);
    let api = "Kubernetes//Pod/shop/api";
    let api_ip: IpAddr = "10.1.0.2".parse().unwrap();
    let denies_everything = |state: &MeshState| {
        let w = state.workload_by_ip(api_ip).unwrap();
        let web = Identity::new("cluster.local", "shop", "web").unwrap();
        let headers = http::HeaderMap::new();
        let attributes = get_item(&web, "10.1.0.1", &headers);
        !evaluate(&checked(state, w, Some("api")), &attributes).allowed()
    };
    // As sent, that request is admitted.
    assert!(!denies_everything(
        &received_by(&resources, &shop()).to_state()
    ));

    // A workload behind the waypoint whose binding has not arrived admits nothing.
    let mut store = received_by(&resources, &shop());
    store.apply(Kind::Binding, &[], &[api.to_owned()]);
    assert!(denies_everything(&store.to_state()));

    // A binding naming a policy of another namespace is refused, and its workload admits nothing.
    let mut store = received_by(&resources, &shop());
    let foreign = PolicyBinding {
        policies: vec!["bank/ledger-tellers".into()],
        policies_digest: String::new(),
    };
    refuses(&mut store, Kind::Binding, api, foreign.encode_to_vec());
    let state = store.to_state();
    assert!(denies_everything(&state));
    assert!(state.rejected().iter().any(|e| e.to_string().contains(api)));

    // A policy whose spec is not valid denies everything in its namespace, and is reported.
    for spec in ["{not json", r#"{"action": "CUSTOM"}"#] {
        let mut store = received_by(&resources, &shop());
        let bad = AuthorizationPolicy {
            namespace: "shop".into(),
            name: "api-reads".into(),
            spec: spec.into(),
        };
        let name = "shop/api-reads";
        refuses(&mut store, Kind::Policy, name, bad.encode_to_vec());
        let state = store.to_state();
        assert!(denies_everything(&state), "{spec}");
        assert!(
            state
                .rejected()
                .iter()
                .any(|e| e.to_string().contains(name))
        );
    }

    // A policy sent under another policy's name is refused.
    let mut store = received_by(&resources, &shop());
    let renamed = AuthorizationPolicy {
        namespace: "shop".into(),
        name: "something-else".into(),
        spec: "{}".into(),
    };
    refuses(
        &mut store,
        Kind::Policy,
        "shop/api-reads",
        renamed.encode_to_vec(),
    );
    assert!(denies_everything(&store.to_state()));

    // A policy a binding names that is gone admits nothing for its workloads.
    let mut store = received_by(&resources, &shop());
    store.apply(Kind::Policy, &[], &["veil-system/mesh-no-debug".to_owned()]);
    assert!(denies_everything(&store.to_state()));

    // A ztunnel's store takes none of a waypoint's types.
    let mut ztunnel = Store::new(MeshSettings::default());
    let entry = &resources.of(Kind::Policy)["shop/api-reads"];
    refuses(
        &mut ztunnel,
        Kind::Policy,
        "shop/api-reads",
        entry.body.to_vec(),
    );
}

#[test]
fn a_ztunnel_leaves_every_policy_of_a_workload_behind_a_waypoint_to_the_waypoint() {
    // shop has a namespace-wide policy too: with the waypoint as the peer, its rules would refuse
    // the waypoint's tunnels (Istio's ztunnel applies it so; veil's, on veil's controller, not).
    let yaml = format!(
        "{WAYPOINT_MESH}  - apiVersion: security.veil.dev/v1\n    kind: AuthorizationPolicy\n    metadata: {{name: clients-only, namespace: shop}}\n    spec:\n      rules: [{{from: [{{source: {{principals: [cluster.local/ns/shop/sa/web]}}}}]}}]\n"
    );
    let native = local::parse(&yaml, &MeshSettings::default()).unwrap();
    let ztunnel = super::subscriber::received(&Resources::from_state(&native)).to_state();
    let web = ztunnel.workload_by_ip("10.1.0.1".parse().unwrap()).unwrap();
    assert_eq!(
        ids(&ztunnel.authz_for(web)),
        ["veil-system/veil:waypoint-only:shop.wp".to_owned()].into()
    );
    // A workload of the namespace behind no waypoint is subject to it.
    let db = ztunnel.workload_by_ip("10.1.0.3".parse().unwrap()).unwrap();
    assert!(ids(&ztunnel.authz_for(db)).contains("shop/clients-only"));
}

/// Applies `body` as `name` of `kind` to `store`, which must refuse it.
fn refuses(store: &mut Store, kind: Kind, name: &str, body: Vec<u8>) {
    let refused = store.apply(kind, &[resource(kind, name, "x", body)], &[]);
    assert_eq!(refused.len(), 1, "{name}: {refused:?}");
}

/// Applies what `resources` hold of `kind` for waypoint shop/wp.
fn apply_kind(store: &mut Store, resources: &Resources, kind: Kind) {
    let list: Vec<_> = resources
        .of(kind)
        .iter()
        .filter(|(name, _)| shop().admits(kind, name))
        .map(|(name, e)| resource(kind, name, &e.version, e.body.to_vec()))
        .collect();
    assert_eq!(store.apply(kind, &list, &[]), vec![], "{kind:?}");
}

#[test]
fn a_policy_and_its_binding_of_different_moments_admit_nothing_until_they_agree() {
    // Moment 1: `reads` selects api and admits only web. Moment 2: it selects db instead and
    // admits everyone. Applying moment 2's rules with moment 1's selection would admit bank's
    // ledger to api; moment 1's rules with moment 2's selection would deny what moment 2 allows.
    let policy = |selects: &str, from: &str| {
        format!(
            "  - apiVersion: security.veil.dev/v1\n    kind: AuthorizationPolicy\n    metadata: {{name: reads, namespace: shop}}\n    spec:\n      selector: {{matchLabels: {{app: {selects}}}}}\n      rules: [{{from: [{{source: {{{from}}}}}]}}]\n"
        )
    };
    let one = format!(
        "{WAYPOINT_MESH}{}",
        policy("api", "principals: [cluster.local/ns/shop/sa/web]")
    );
    let two = format!("{WAYPOINT_MESH}{}", policy("db", "namespaces: [\"*\"]"));
    let resources =
        |yaml: &str| Resources::from_state(&local::parse(yaml, &MeshSettings::default()).unwrap());
    let (one, two) = (resources(&one), resources(&two));
    let ledger_to_api = |store: &Store| {
        let state = store.to_state();
        let api = state.workload_by_ip("10.1.0.2".parse().unwrap()).unwrap();
        let headers = http::HeaderMap::new();
        let ledger = Identity::new("cluster.local", "bank", "ledger").unwrap();
        let attributes = get_item(&ledger, "10.2.0.1", &headers);
        evaluate(&state.authz_for(api), &attributes).allowed()
    };
    // The new policy before the new bindings: the old binding of api is not current.
    let mut store = received_by(&one, &shop());
    assert!(!ledger_to_api(&store), "moment 1 denies it");
    apply_kind(&mut store, &two, Kind::Policy);
    assert!(
        !ledger_to_api(&store),
        "moment 2's rules with moment 1's selection"
    );
    apply_kind(&mut store, &two, Kind::Binding);
    // Moment 2: api is selected by nothing now; only moment 1's namespace-wide DENYs remain.
    let settled = received_by(&two, &shop());
    assert_eq!(ledger_to_api(&store), ledger_to_api(&settled));
    // The new bindings before the new policy: not current either.
    let mut store = received_by(&two, &shop());
    apply_kind(&mut store, &one, Kind::Binding);
    let state = store.to_state();
    let api = state.workload_by_ip("10.1.0.2".parse().unwrap()).unwrap();
    assert!(
        ids(&state.authz_for(api)).contains("veil/unknown-policies"),
        "a binding ahead of its policies admits nothing"
    );
}
