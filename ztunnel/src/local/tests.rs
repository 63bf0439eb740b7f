use veil_mesh::identity::Identity;
use veil_mesh::testing::pending_workload;

use super::*;

fn pod(namespace: &str, name: &str, node: &str, ips: &[&str]) -> Workload {
    let mut w = pending_workload(namespace, name, node, &[]);
    w.ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
    w
}

#[test]
fn only_on_this_node_and_only_when_on() {
    let endpoint = pod("user-data", "profile", "node-a", &["10.0.1.5"]);
    assert!(here(true, "node-a", &endpoint));
    assert!(!here(false, "node-a", &endpoint), "turned off");
    assert!(!here(true, "node-b", &endpoint), "another node's pod");
}

#[test]
fn joined_only_to_the_pod_the_mesh_names_now_with_both_certificates() {
    let enrolled = pod("user-data", "profile", "node-a", &["10.0.1.5"]);
    let same = pod("user-data", "profile", "node-a", &["10.0.1.5"]);
    assert!(joinable(&enrolled, &same, true));
    assert!(!joinable(&enrolled, &same, false), "a certificate missing");

    let mut other_account = pod("user-data", "profile", "node-a", &["10.0.1.5"]);
    other_account.identity = Identity::new("cluster.local", "user-data", "admin").unwrap();
    assert!(
        !joinable(&enrolled, &other_account, true),
        "identity changed"
    );

    for ips in [&["10.0.1.6"][..], &["10.0.1.5", "fd00::5"], &[]] {
        let moved = pod("user-data", "profile", "node-a", ips);
        assert!(!joinable(&enrolled, &moved, true), "addresses now {ips:?}");
    }

    let mut other_uid = pod("user-data", "profile-2", "node-a", &["10.0.1.5"]);
    other_uid.identity = Identity::new("cluster.local", "user-data", "profile").unwrap();
    assert!(!joinable(&enrolled, &other_uid, true), "another pod");
}
