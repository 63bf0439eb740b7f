use std::time::UNIX_EPOCH;

use veil_mesh::admin::{CertificateInfo, ProxyInfo};

use super::*;

const MESH: &str = r#"
namespaces:
  - {name: user-data, useWaypoint: waypoint}
waypoints:
  - {name: waypoint, namespace: user-data, serviceAccount: waypoint, ips: [10.21.0.50]}
workloads:
  - {name: account-7d9f-x2, namespace: production, serviceAccount: account, node: node-a, ips: [10.20.0.11], workloadName: account, labels: {app: account}}
  - {name: profile-0, namespace: user-data, serviceAccount: profile, node: node-b, ips: [10.21.0.11], labels: {app: profile}}
  - {name: legacy-0, namespace: legacy, serviceAccount: legacy, node: node-b, ips: [10.21.0.13], enrolled: false}
services:
  - {name: profile, namespace: user-data, vips: [10.96.0.20], ports: [{port: 80, targetPort: 8080}, {port: 53, targetPort: 5353, protocol: UDP}], selector: {app: profile}}
policies:
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: profile-reads, namespace: user-data}
    spec:
      targetRefs: [{kind: Service, name: profile}]
      rules:
        - to: [{operation: {methods: [GET]}}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: account-paths, namespace: production}
    spec:
      selector: {matchLabels: {app: account}}
      rules:
        - to: [{operation: {paths: [/admin]}}]
  - apiVersion: security.veil.dev/v1
    kind: PeerAuthentication
    metadata: {name: legacy-port, namespace: legacy}
    spec:
      selector: {matchLabels: {app: legacy}}
      mtls: {mode: STRICT}
      portLevelMtls: {"8080": {mode: PERMISSIVE}}
"#;

fn dump() -> ConfigDump {
    let state = veil_mesh::discovery::local::parse(MESH, &Default::default()).unwrap();
    let mut dump = ConfigDump::from_state(
        ProxyInfo {
            kind: "ztunnel".into(),
            name: "node-b".into(),
            version: "0.1.0".into(),
        },
        &state,
    );
    dump.certificates = vec![
        CertificateInfo {
            identity: "spiffe://cluster.local/ns/user-data/sa/profile".into(),
            not_after: Some("2026-12-03T12:00:00Z".into()),
        },
        CertificateInfo {
            identity: "spiffe://cluster.local/ns/production/sa/account".into(),
            not_after: None,
        },
    ];
    dump
}

fn at(rfc3339: &str) -> SystemTime {
    humantime::parse_rfc3339(rfc3339).unwrap()
}

#[test]
fn a_dump_reads_back_as_written() {
    let dump = dump();
    let text = serde_json::to_string(&dump).unwrap();
    assert_eq!(read(&text).unwrap(), dump);
}

#[test]
fn a_dump_of_another_schema_or_none_is_refused() {
    let mut value = serde_json::to_value(dump()).unwrap();
    value["schema"] = "veil.dev/config-dump/v2".into();
    let e = read(&value.to_string()).unwrap_err().to_string();
    assert!(
        e.contains("config-dump/v2") && e.contains(DUMP_SCHEMA),
        "{e}"
    );
    value.as_object_mut().unwrap().remove("schema");
    let e = read(&value.to_string()).unwrap_err().to_string();
    assert!(e.contains("no schema"), "{e}");
    assert!(read("not json").is_err());
    // Istio's ztunnel dump (another proxy on the same port) is named as such, not misread.
    let e = read(r#"{"workloads": [], "services": []}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no schema"), "{e}");
}

#[test]
fn workloads_show_their_waypoint_protocol_and_telemetry_name() {
    let text = table(&dump(), Section::Workloads, UNIX_EPOCH);
    let row = |pod: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(pod))
            .unwrap_or_else(|| panic!("no row for {pod} in\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("profile-0"),
        [
            "user-data",
            "profile-0",
            "profile-0",
            "10.21.0.11",
            "node-b",
            "user-data/waypoint",
            "HBONE",
            "ready"
        ]
    );
    assert_eq!(
        row("account-7d9f-x2"),
        [
            "production",
            "account-7d9f-x2",
            "account",
            "10.20.0.11",
            "node-a",
            "None",
            "HBONE",
            "ready"
        ]
    );
    assert_eq!(row("legacy-0")[6], "TCP");
    assert!(!text.contains("SERVICES"), "one section only:\n{text}");
}

#[test]
fn services_show_their_tcp_and_udp_ports() {
    let text = table(&dump(), Section::Services, UNIX_EPOCH);
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("profile"))
        .unwrap_or_else(|| panic!("no row for profile in\n{text}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[3], "80->8080,53->5353/udp", "{text}");
}

#[test]
fn policies_say_what_they_apply_to_and_when_ztunnel_fails_closed() {
    let text = table(&dump(), Section::Policies, UNIX_EPOCH);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert!(line("profile-reads").contains("service profile"), "{text}");
    assert!(line("profile-reads").contains("HTTP conditions"), "{text}");
    // An HTTP rule on a workload without a waypoint: ztunnel denies what it could match.
    assert!(line("account-paths").contains("fails closed"), "{text}");
    assert!(
        line("legacy-port").contains("STRICT (port 8080: PERMISSIVE)"),
        "{text}"
    );
}

#[test]
fn certificates_show_validity_at_the_time_asked() {
    let dump = dump();
    let before = table(&dump, Section::Certificates, at("2026-12-03T10:30:00Z"));
    assert!(
        before.contains("VALID") && before.contains("1h 30m"),
        "{before}"
    );
    assert!(before.contains("PENDING"), "{before}");
    let after = table(&dump, Section::Certificates, at("2026-12-03T12:00:01Z"));
    assert!(after.contains("EXPIRED"), "{after}");
    assert_eq!(
        certificate_state(Some("yesterday"), UNIX_EPOCH).0,
        "UNREADABLE"
    );
}

#[test]
fn one_namespace_keeps_only_its_own() {
    let mut dump = dump();
    only_namespace(&mut dump, "user-data");
    assert_eq!(dump.workloads.len(), 1);
    assert_eq!(dump.services.len(), 1);
    assert_eq!(
        dump.policies
            .iter()
            .map(|p| &p.name[..])
            .collect::<Vec<_>>(),
        ["profile-reads"]
    );
    assert_eq!(dump.certificates.len(), 1);
    let text = table(&dump, Section::All, UNIX_EPOCH);
    assert!(
        !text.contains("account") && !text.contains("legacy"),
        "{text}"
    );
    assert!(
        text.contains("POOLED HBONE CONNECTIONS") && text.contains("(none)"),
        "{text}"
    );
}

#[tokio::test]
async fn fetch_explains_what_it_cannot_reach_or_read() {
    // Nothing listens: the error says what to do.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let e = format!("{:#}", fetch(&closed.to_string()).await.unwrap_err());
    assert!(e.contains("port-forward"), "{e}");
    let e = format!("{:#}", fetch("https://127.0.0.1:15000").await.unwrap_err());
    assert!(e.contains("plain http"), "{e}");

    // A server that answers something else (a 404 from another tool on the port).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 10\r\n\r\nnot found\n")
            .await;
    });
    let e = format!("{:#}", fetch(&format!("http://{addr}")).await.unwrap_err());
    assert!(e.contains("404") && e.contains("not found"), "{e}");
}
