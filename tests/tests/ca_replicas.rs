//! End-to-end: two real `veil-ca --kubernetes` replicas against one (stand-in) API server end with
//! one root. Started at the same moment, both find the root Secret absent (the stand-in answers
//! their first GETs only once both have asked), both generate a root and race to create the
//! Secret: one create succeeds, the other is refused `409 AlreadyExists`, and its replica reads and
//! serves the winner's root. Started one after the other, the second only reads it. Either way
//! both publish the same root to every namespace and keep running. Needs root (as the whole
//! suite); skips loudly otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use veil_e2e::apiserver::{Api, Noted, not_found, serve};
use veil_e2e::kube::{kubeconfig, namespace};
use veil_e2e::mesh::{bin, skip_unless_root};
use veil_e2e::process::Proc;

const SECRETS: &str = "/api/v1/namespaces/veil-system/secrets";
const ROOT_SECRET: &str = "/api/v1/namespaces/veil-system/secrets/veil-ca-root";
const NAMESPACES: &[&str] = &["veil-system", "shop"];
const GENERATED: &str = "generated a new self-signed root";
const STARTED: Duration = Duration::from_secs(30);

/// The stand-in API server, serving two namespaces on loopback from a thread of its own.
fn api_server(hold_root_gets: usize) -> (Api, SocketAddr) {
    let api = Api::default();
    api.change(|s| {
        for ns in NAMESPACES {
            s.put("namespaces", ns, namespace(ns, false), false);
        }
    });
    api.keep_journal();
    if hold_root_gets > 0 {
        api.hold_gets(ROOT_SECRET, hold_root_gets);
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the API server");
    let addr = listener.local_addr().expect("its address");
    listener.set_nonblocking(true).expect("non-blocking");
    let served = api.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
            let _ = serve(listener, served, |_| not_found()).await;
        });
    });
    (api, addr)
}

fn scratch(case: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("veil-ca-replicas-{case}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

fn free_port() -> u16 {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    socket.local_addr().expect("its address").port()
}

/// A `veil-ca --kubernetes` replica; its requests carry the bearer token `name`, which is how the
/// stand-in's journal tells the replicas apart.
fn replica(dir: &Path, api: SocketAddr, name: &str) -> Proc {
    let config = dir.join(format!("{name}.kubeconfig"));
    let text = kubeconfig(&format!("http://{api}"))
        .replace("user: {}", &format!("user:\n    token: {name}"));
    std::fs::write(&config, text).expect("writing the kubeconfig");
    let listen = format!("127.0.0.1:{}", free_port());
    let ca = bin("veil-ca");
    let argv = [
        ca.to_str().expect("a UTF-8 path"),
        "--kubernetes",
        "--namespace",
        "veil-system",
        "--listen",
        &listen,
    ];
    let config = config.to_str().expect("a UTF-8 path");
    Proc::spawn(
        name,
        None,
        &argv,
        &[("KUBECONFIG", config)],
        &dir.join(format!("{name}.log")),
    )
    .expect("starting veil-ca")
}

/// The requests of `who` to `path` with `method`, in order.
fn sent<'a>(journal: &'a [Noted], who: &str, method: &str, path: &str) -> Vec<&'a Noted> {
    journal
        .iter()
        .filter(|n| n.who == who && n.method == method && n.path == path)
        .collect()
}

/// The root each replica last published to each namespace (`None` where it has not yet).
fn published(api: &Api, replicas: &[&str]) -> Vec<Option<String>> {
    let journal = api.journal();
    let mut roots = Vec::new();
    for who in replicas {
        for ns in NAMESPACES {
            let path = format!("/api/v1/namespaces/{ns}/configmaps/veil-root-cert");
            let root = sent(&journal, who, "PATCH", &path)
                .iter()
                .rev()
                .find(|n| n.code < 300)
                .and_then(|n| serde_json::from_slice::<Value>(&n.body).ok())
                .and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(str::to_owned));
            roots.push(root);
        }
    }
    roots
}

/// Waits until every replica has published to every namespace; what they published.
fn wait_published(api: &Api, replicas: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + STARTED;
    loop {
        let roots = published(api, replicas);
        if roots.iter().all(Option::is_some) {
            return roots.into_iter().flatten().collect();
        }
        assert!(
            Instant::now() < deadline,
            "not published everywhere: {roots:?}\n{:#?}",
            api.journal()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The root certificate in the Secret as created (the body of the one create answered `201`).
fn secret_root(journal: &[Noted]) -> String {
    let created = journal
        .iter()
        .find(|n| n.method == "POST" && n.path == SECRETS && n.code == 201)
        .expect("a created Secret");
    let secret: Value = serde_json::from_slice(&created.body).expect("a JSON Secret");
    let encoded = secret["data"]["root-cert.pem"]
        .as_str()
        .expect("root-cert.pem");
    String::from_utf8(base64_decode(encoded)).expect("PEM text")
}

/// Standard base64 (the encoding of a Secret's `data`).
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let value = ALPHABET
            .iter()
            .position(|a| *a == c)
            .expect("a base64 character");
        acc = (acc << 6) | u32::try_from(value).expect("under 64");
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).expect("a byte"));
        }
    }
    out
}

fn codes(notes: &[&Noted]) -> Vec<u16> {
    notes.iter().map(|n| n.code).collect()
}

#[test]
fn replicas_started_together_create_the_root_once_and_serve_the_same_one() {
    if skip_unless_root("ca_replicas_started_together") {
        return;
    }
    let dir = scratch("together");
    // Both first GETs answered only once both have arrived: both see the Secret absent.
    let (api, addr) = api_server(2);
    let mut replicas = [replica(&dir, addr, "a"), replica(&dir, addr, "b")];
    for r in &mut replicas {
        r.wait_for("veil-ca serving", STARTED).unwrap();
    }
    let roots = wait_published(&api, &["a", "b"]);
    let journal = api.journal();

    for who in ["a", "b"] {
        let gets = sent(&journal, who, "GET", ROOT_SECRET);
        assert_eq!(
            gets.first().map(|n| n.code),
            Some(404),
            "{who}: {journal:#?}"
        );
    }
    let creates: Vec<&Noted> = journal
        .iter()
        .filter(|n| n.method == "POST" && n.path == SECRETS)
        .collect();
    let mut created = codes(&creates);
    created.sort_unstable();
    assert_eq!(created, [201, 409], "one create wins: {journal:#?}");
    let winner = creates
        .iter()
        .find(|n| n.code == 201)
        .map(|n| n.who.clone());
    let loser = if winner.as_deref() == Some("a") {
        "b"
    } else {
        "a"
    };
    assert_eq!(
        codes(&sent(&journal, loser, "GET", ROOT_SECRET)),
        [404, 200],
        "the loser reads the winner's Secret: {journal:#?}"
    );
    let generated: Vec<&str> = replicas
        .iter()
        .filter(|r| r.output().contains(GENERATED))
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(generated, [winner.as_deref().unwrap_or_default()]);

    let root = secret_root(&journal);
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");
    for published in &roots {
        assert_eq!(
            published, &root,
            "every replica publishes the Secret's root"
        );
    }
    for r in &mut replicas {
        assert!(r.running(), "{} stopped:\n{}", r.name, r.output());
    }
}

#[test]
fn a_replica_started_later_reads_the_root_the_first_created() {
    if skip_unless_root("ca_replicas_started_in_turn") {
        return;
    }
    let dir = scratch("in-turn");
    let (api, addr) = api_server(0);
    let mut first = replica(&dir, addr, "a");
    first.wait_for("veil-ca serving", STARTED).unwrap();
    let mut second = replica(&dir, addr, "b");
    second.wait_for("veil-ca serving", STARTED).unwrap();
    let roots = wait_published(&api, &["a", "b"]);
    let journal = api.journal();

    assert_eq!(codes(&sent(&journal, "a", "POST", SECRETS)), [201]);
    assert_eq!(
        codes(&sent(&journal, "b", "GET", ROOT_SECRET)),
        [200],
        "{journal:#?}"
    );
    assert!(
        sent(&journal, "b", "POST", SECRETS).is_empty(),
        "{journal:#?}"
    );
    assert!(first.output().contains(GENERATED), "{}", first.output());
    assert!(!second.output().contains(GENERATED), "{}", second.output());

    let root = secret_root(&journal);
    for published in &roots {
        assert_eq!(
            published, &root,
            "every replica publishes the Secret's root"
        );
    }
    assert!(first.running(), "{}", first.output());
    assert!(second.running(), "{}", second.output());
}
