//! HBONE authority spoofing and malformed CONNECTs: a client outside capture that holds a genuine
//! mesh certificate dials an enrolled pod's port 15008 directly and asks for tunnels it must not get
//! (loopback, another pod, ztunnel's own ports, a forged source), or sends requests that are not a
//! plain CONNECT. Each must be refused by the destination ztunnel without reaching any application,
//! the connection must keep serving valid requests, and the ztunnels must stay ready.

use std::time::Duration;

use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, bin, skip_unless_root};

use crate::apply;

/// The echo port of the test application.
const ECHO: u16 = 9090;
const ROGUE_TOKEN: &str = "rogue-holds-client-token-0123456789";
const CLIENT: &str = "spiffe://cluster.local/ns/production/sa/client";

/// `client` (production) on node-a; `server` and its `neighbour` (user-data) on node-b; `rogue`
/// (not enrolled) on node-a holding a genuine certificate for the client's identity.
fn mesh(policies: &str) -> Mesh {
    Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("client", "production", "node-a"),
            PodSpec::new("rogue", "default", "node-a").not_enrolled(),
            PodSpec::new("server", "user-data", "node-b"),
            PodSpec::new("neighbour", "user-data", "node-b"),
        ],
        extra_tokens: vec![(ROGUE_TOKEN.into(), CLIENT.into())],
        policies: policies.into(),
        ..MeshSpec::default()
    })
    .expect("starting the mesh")
}

fn ip(m: &Mesh, pod: &str) -> String {
    m.cluster.pod(pod).ip.to_string()
}

/// Sends `requests` (`METHOD URI [NAME=VALUE]...`) on one HBONE connection from `rogue` straight
/// to the server's port 15008; the answer per URI (`200`, `400`, `RESET …`, `INVALID`), in order.
fn raw(m: &Mesh, requests: &[String]) -> Vec<(String, String)> {
    let app = bin("e2e-app").to_string_lossy().into_owned();
    let root = m.root_cert().to_string_lossy().into_owned();
    let addr = format!("{}:15008", ip(m, "server"));
    let ca = m.ca_address();
    let expect = m.pod("server").identity();
    let mut argv = vec![
        app.as_str(),
        "hbone-raw",
        &addr,
        "--identity",
        CLIENT,
        "--ca",
        &ca,
        "--root",
        &root,
        "--token",
        ROGUE_TOKEN,
        "--expect",
        &expect,
        "--",
    ];
    argv.extend(requests.iter().map(String::as_str));
    let out = m.run_in_pod("rogue", &argv).unwrap();
    assert!(
        out.status.success(),
        "the rogue client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (uri, answer) = l.split_once(' ').unwrap_or((l, ""));
            (uri.to_owned(), answer.to_owned())
        })
        .collect()
}

/// Both ztunnels still answer ready, and the server is still reachable through the mesh.
fn assert_ready(m: &mut Mesh) {
    for node in ["node-a", "node-b"] {
        m.wait_ready(node, Duration::from_secs(10))
            .expect("ztunnel ready after the attack");
    }
    let addr = format!("{}:{ECHO}", ip(m, "server"));
    assert_eq!(
        m.tcp("client", &addr, "still-served", 1).as_deref(),
        Ok("still-served\n"),
        "the mesh stopped serving after the attack"
    );
}

/// The destination ztunnel's access-log lines (JSON) with `decision` from `source_ip`.
fn decisions(m: &Mesh, decision: &str, source_ip: &str) -> usize {
    m.ztunnel_log("node-b")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["decision"] == decision && l["source_ip"] == source_ip)
        .count()
}

#[test]
fn connect_to_loopback_another_pod_or_a_proxy_port_is_refused() {
    if skip_unless_root("hbone_spoofed_authority") {
        return;
    }
    let mut m = mesh("");
    let server = ip(&m, "server");
    let neighbour = ip(&m, "neighbour");
    let valid = format!("CONNECT {server}:{ECHO}");
    let spoofed = [
        format!("CONNECT 127.0.0.1:{ECHO}"),
        format!("CONNECT [::1]:{ECHO}"),
        format!("CONNECT {neighbour}:{ECHO}"),
        format!("CONNECT {server}:15001"),
        format!("CONNECT {server}:15006"),
        format!("CONNECT {server}:15008"),
        format!("CONNECT 10.96.0.10:{ECHO}"),
    ];
    // The valid request first and last: the refusals neither poison the connection nor hide an
    // acceptance (the client can see a 200).
    let mut requests = vec![valid.clone()];
    requests.extend(spoofed.iter().cloned());
    requests.push(valid);
    let answers = raw(&m, &requests);
    assert_eq!(answers.len(), requests.len(), "answers: {answers:?}");
    assert_eq!(
        answers[0].1, "200",
        "the valid CONNECT was refused: {answers:?}"
    );
    assert_eq!(
        answers.last().unwrap().1,
        "200",
        "the connection died: {answers:?}"
    );
    for (uri, answer) in &answers[1..answers.len() - 1] {
        assert_eq!(answer, "400", "CONNECT {uri} was not refused: {answers:?}");
    }
    let log = m.ztunnel_log("node-b");
    assert_eq!(
        log.matches("HBONE request for another destination").count(),
        spoofed.len(),
        "each refusal is logged once:\n{log}"
    );
    assert_ready(&mut m);
}

#[test]
fn malformed_connect_requests_are_refused_and_the_connection_lives_on() {
    if skip_unless_root("hbone_malformed") {
        return;
    }
    let mut m = mesh("");
    let server = ip(&m, "server");
    let valid = format!("CONNECT {server}:{ECHO}");
    let malformed = [
        format!("GET http://{server}:{ECHO}/"),
        format!("POST http://{server}:{ECHO}/upload"),
        format!("CONNECT localhost:{ECHO}"),
        format!("CONNECT server.user-data.svc:{ECHO}"),
        format!("CONNECT {server}:0"),
        format!("CONNECT {server}"),
    ];
    let mut requests = malformed.to_vec();
    requests.push(valid);
    let answers = raw(&m, &requests);
    assert_eq!(answers.len(), requests.len(), "answers: {answers:?}");
    for (uri, answer) in &answers[..malformed.len()] {
        assert_eq!(answer, "400", "{uri} was not refused with 400: {answers:?}");
    }
    assert_eq!(
        answers.last().unwrap().1,
        "200",
        "the connection died: {answers:?}"
    );
    let log = m.ztunnel_log("node-b");
    assert_eq!(
        log.matches("malformed HBONE request").count(),
        malformed.len(),
        "each refusal is logged once:\n{log}"
    );
    assert_ready(&mut m);
}

#[test]
fn a_forged_forwarded_header_does_not_change_the_source_policy_sees() {
    if skip_unless_root("hbone_forged_forwarded") {
        return;
    }
    // Only the client's address may reach the server. The rogue holds the client's identity but
    // calls from its own address, claiming the client's in `forwarded` and `x-forwarded-for`.
    let mut m = mesh("");
    let client = ip(&m, "client");
    apply(
        &mut m,
        &format!(
            r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {{name: client-address-only, namespace: user-data}}
    spec:
      rules: [{{from: [{{source: {{ipBlocks: [{client}/32]}}}}]}}]
"#
        ),
    );
    let addr = format!("{}:{ECHO}", ip(&m, "server"));
    // The client itself gets through; the rogue, asking plainly, does not...
    assert_eq!(
        m.tcp("client", &addr, "from-client", 1).as_deref(),
        Ok("from-client\n")
    );
    // ...nor when it claims the client's address.
    let answers = raw(
        &m,
        &[
            format!("CONNECT {addr}"),
            format!("CONNECT {addr} forwarded=for={client}"),
            format!("CONNECT {addr} forwarded=for=\"{client}:4242\""),
            format!("CONNECT {addr} x-forwarded-for={client}"),
        ],
    );
    assert_eq!(answers.len(), 4, "answers: {answers:?}");
    for (uri, answer) in &answers {
        assert_eq!(
            answer, "401",
            "{uri} from the rogue was let in: {answers:?}"
        );
    }
    let rogue = ip(&m, "rogue");
    assert_eq!(
        decisions(&m, "deny", &rogue),
        4,
        "{}",
        m.ztunnel_log("node-b")
    );
    assert_eq!(
        decisions(&m, "allow", &rogue),
        0,
        "a forged tunnel was admitted"
    );
    assert_ready(&mut m);
}

#[test]
fn plaintext_on_the_hbone_port_opens_no_tunnel() {
    if skip_unless_root("hbone_plaintext_port") {
        return;
    }
    let mut m = mesh("");
    let server = ip(&m, "server");
    // An HTTP/1.1 CONNECT in the clear, then the payload, straight to the HBONE port.
    let message = format!("CONNECT {server}:{ECHO} HTTP/1.1\r\nHost: {server}:{ECHO}\r\n\r\nleak");
    let reply = m.tcp("rogue", &format!("{server}:15008"), &message, 1);
    if let Ok(text) = &reply {
        assert!(
            !text.contains("leak") && !text.contains("200"),
            "plaintext CONNECT answered: {text:?}"
        );
    }
    assert!(
        !m.app_log("server").contains("leak"),
        "the payload reached the application:\n{}",
        m.app_log("server")
    );
    assert_ready(&mut m);
}
