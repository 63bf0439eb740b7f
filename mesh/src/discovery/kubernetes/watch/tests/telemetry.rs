//! Telemetries through kube's real client on a mock API server answering as a real one does: a CRD
//! not installed (404), then installed, then deleted; a 403; a list that never comes; an object
//! this version cannot read; events, a deletion and a relist after `410 Expired`.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower_test::mock::{Handle, SendResponse};
use veil_crd::telemetry::AccessLogLevel;

use super::*;
use crate::policy::TelemetrySettings;

const TELEMETRIES: &str = "/apis/security.veil.dev/v1/telemetries";

/// What a real API server answers for a resource it does not serve (its CRD not installed).
const NOT_FOUND: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#;

/// What it answers for a resource the caller's roles do not let it list.
const FORBIDDEN: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"telemetries.security.veil.dev is forbidden: User \"system:serviceaccount:veil-system:veil-controller\" cannot list resource \"telemetries\" in API group \"security.veil.dev\" at the cluster scope","reason":"Forbidden","details":{"group":"security.veil.dev","kind":"telemetries"},"code":403}"#;

/// The line it ends a watch with when the version watched from is no longer in its cache.
const EXPIRED: &str = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 4716 (5100)","reason":"Expired","code":410}}"#;

type Respond = SendResponse<Response<Body>>;

/// How the mock answers lists of Telemetries: a status and body, or never.
#[derive(Clone)]
enum Lists {
    Answer(StatusCode, String),
    Never,
}

/// The mock API server: the other kinds from `testdata/` (their watches held open), Telemetries'
/// lists as `lists` says, their watches handed to the test.
struct Server {
    lists: Arc<Mutex<Lists>>,
    /// Telemetry lists asked for.
    listed: Arc<AtomicUsize>,
    watches: mpsc::UnboundedReceiver<Respond>,
}

impl Server {
    fn start(lists: Lists) -> (Client, Self) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let (tx, watches) = mpsc::unbounded_channel();
        let server = Self {
            lists: Arc::new(Mutex::new(lists)),
            listed: Arc::default(),
            watches,
        };
        tokio::spawn(answer(
            handle,
            server.lists.clone(),
            server.listed.clone(),
            tx,
        ));
        (Client::new(service, "default"), server)
    }

    fn lists(&self, lists: Lists) {
        *self.lists.lock().unwrap() = lists;
    }

    /// The next watch of Telemetries the client opens.
    async fn watch(&mut self) -> Respond {
        tokio::time::timeout(Duration::from_secs(10), self.watches.recv())
            .await
            .expect("a watch of Telemetries")
            .expect("the server runs")
    }

    /// Waits until Telemetries have been listed `n` times.
    async fn listed(&self, n: usize) {
        for _ in 0..200 {
            if self.listed.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "Telemetries listed {} times, not {n}",
            self.listed.load(Ordering::SeqCst)
        );
    }
}

async fn answer(
    mut handle: Handle<Request<Body>, Response<Body>>,
    lists: Arc<Mutex<Lists>>,
    listed: Arc<AtomicUsize>,
    watches: mpsc::UnboundedSender<Respond>,
) {
    let mut held = Vec::new();
    while let Some((request, respond)) = handle.next_request().await {
        let path = request.uri().path().to_owned();
        let watch = request
            .uri()
            .query()
            .is_some_and(|q| q.contains("watch=true"));
        match (path == TELEMETRIES, watch) {
            (true, true) => {
                let _ = watches.send(respond);
            }
            (true, false) => {
                listed.fetch_add(1, Ordering::SeqCst);
                let now = lists.lock().unwrap().clone();
                match now {
                    Lists::Answer(status, body) => send(respond, status, &body),
                    Lists::Never => held.push(respond),
                }
            }
            (false, true) => held.push(respond),
            (false, false) => send(respond, StatusCode::OK, json(&path)),
        }
    }
}

fn send(respond: Respond, status: StatusCode, body: &str) {
    respond.send_response(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body.as_bytes().to_vec()))
            .unwrap(),
    );
}

/// A Telemetry as the API serves it, at resourceVersion `version`.
fn telemetry(namespace: &str, name: &str, version: u32, spec: Value) -> Value {
    json!({
        "apiVersion": "security.veil.dev/v1",
        "kind": "Telemetry",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "generation": 1, "resourceVersion": version.to_string()},
        "spec": spec,
    })
}

fn quiet(version: u32, level: &str) -> Value {
    telemetry(
        "user-data",
        "quiet",
        version,
        json!({"accessLog": {"level": level}}),
    )
}

fn account_traces(version: u32) -> Value {
    telemetry(
        "production",
        "account-traces",
        version,
        json!({"selector": {"matchLabels": {"app": "account-service"}}, "tracing": {"randomSamplingPercentage": 25}}),
    )
}

/// A list of Telemetries at resourceVersion `version`.
fn list(items: &[Value], version: u32) -> Lists {
    let list = json!({
        "apiVersion": "security.veil.dev/v1",
        "kind": "TelemetryList",
        "metadata": {"resourceVersion": version.to_string()},
        "items": items,
    });
    Lists::Answer(StatusCode::OK, list.to_string())
}

/// Watch lines, each `(type, object)`.
fn events(events: &[(&str, Value)]) -> String {
    events
        .iter()
        .map(|(kind, object)| format!("{}\n", json!({"type": kind, "object": object})))
        .collect()
}

/// What applies to the workload at `address`.
fn at(snapshot: &Snapshot, address: &str) -> TelemetrySettings {
    let state = &snapshot.state;
    state.telemetry_for(
        state
            .workload_by_ip(address.parse().unwrap())
            .expect("a workload"),
    )
}

/// The first snapshot `is` holds of, waiting for it at most 10 s.
async fn snapshot(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    what: &str,
    is: impl FnMut(&Arc<Snapshot>) -> bool,
) -> Arc<Snapshot> {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(is))
        .await
        .unwrap_or_else(|_| panic!("no snapshot where {what}"))
        .expect("the source runs")
        .clone()
}

/// The log lines written while the returned guard lives (on this thread, where a
/// `#[tokio::test]`'s tasks run).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn count(&self, needle: &str) -> usize {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().filter(|l| l.contains(needle)).count()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

const INSTALL_HINT: &str = "kubectl apply -f charts/veil/crds/telemetries.yaml";

#[tokio::test]
async fn a_missing_crd_holds_nothing_back_warns_once_and_its_objects_come_and_go_with_it() {
    let (logs, _guard) = Logs::capture();
    let (client, mut server) =
        Server::start(Lists::Answer(StatusCode::NOT_FOUND, NOT_FOUND.into()));
    // Answered at once: not even the grace period for an unanswered list is waited out.
    let mut rx = tokio::time::timeout(
        optional::GRACE / 2,
        start(client, MeshSettings::default(), |_| {}),
    )
    .await
    .expect("the first sync is not held back by a missing CRD");
    let first = rx.borrow_and_update().clone();
    assert!(
        first
            .state
            .workload_by_ip("10.244.1.10".parse().unwrap())
            .is_some_and(|w| w.enrolled),
        "the rest of the mesh is there"
    );
    assert!(first.objects.telemetries.is_empty());
    assert!(at(&first, "10.244.2.10").is_empty());

    // Listed again and again while missing, warned about once, and no translation for it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    rx.borrow_and_update();
    server.listed(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !rx.has_changed().unwrap(),
        "a missing kind costs no translation"
    );
    assert_eq!(logs.count(INSTALL_HINT), 1);

    // Installed: its objects apply, without a restart.
    server.lists(list(&[quiet(970, "off"), account_traces(975)], 4716));
    let installed = snapshot(&mut rx, "the Telemetries apply", |s| {
        s.state.telemetry_policies().len() == 2
    })
    .await;
    assert_eq!(
        at(&installed, "10.244.2.10").access_log,
        Some(AccessLogLevel::Off)
    );
    assert_eq!(at(&installed, "10.244.1.10").sampling, Some(0.25));
    assert_eq!(logs.count("the CRD is installed now"), 1);

    // Deleted (it takes its objects with it): the API ends the watch and answers 404 again.
    server.lists(Lists::Answer(StatusCode::NOT_FOUND, NOT_FOUND.into()));
    send(server.watch().await, StatusCode::OK, "");
    send(server.watch().await, StatusCode::NOT_FOUND, NOT_FOUND);
    let deleted = snapshot(&mut rx, "no Telemetry is left", |s| {
        s.state.telemetry_policies().is_empty()
    })
    .await;
    assert!(deleted.objects.telemetries.is_empty());
    assert!(at(&deleted, "10.244.2.10").is_empty());
    assert_eq!(
        logs.count(INSTALL_HINT),
        2,
        "warned again: it went missing again"
    );
}

#[tokio::test]
async fn a_forbidden_or_unanswered_list_holds_the_first_sync_a_grace_period_and_is_retried() {
    let (logs, _guard) = Logs::capture();
    let (client, server) = Server::start(Lists::Answer(StatusCode::FORBIDDEN, FORBIDDEN.into()));
    // A 403 is no answer: the first sync waits for a list, a grace period at most (a transient
    // error at start must not publish every workload without its Telemetry).
    let started = tokio::time::Instant::now();
    let mut rx = tokio::time::timeout(
        optional::GRACE + Duration::from_secs(5),
        start(client, MeshSettings::default(), |_| {}),
    )
    .await
    .expect("the first sync is held back by a 403 no longer than the grace period");
    assert!(started.elapsed() >= optional::GRACE, "waited for a list");
    assert_eq!(logs.count("not listed yet"), 1);
    assert!(rx.borrow().objects.telemetries.is_empty());
    assert!(!rx.borrow().state.workloads().is_empty());
    server.lists(list(&[quiet(970, "off")], 4716));
    let granted = snapshot(&mut rx, "the Telemetry applies", |s| {
        s.state.telemetry_policies().len() == 1
    })
    .await;
    assert_eq!(
        at(&granted, "10.244.2.10").access_log,
        Some(AccessLogLevel::Off)
    );
    assert_eq!(logs.count(INSTALL_HINT), 0, "a 403 is no missing CRD");
    assert!(logs.count("watch failed; retrying with backoff") >= 1);

    // A list that is never answered holds the first sync for a grace period, no longer.
    let (client, server) = Server::start(Lists::Never);
    let rx = tokio::time::timeout(
        optional::GRACE + Duration::from_secs(5),
        start(client, MeshSettings::default(), |_| {}),
    )
    .await
    .expect("the first sync is not held back by an unanswered list");
    assert_eq!(server.listed.load(Ordering::SeqCst), 1);
    assert!(rx.borrow().objects.telemetries.is_empty());
    assert!(!rx.borrow().state.workloads().is_empty());
    assert_eq!(logs.count("not listed yet"), 2);
}

#[tokio::test]
async fn events_a_bad_object_a_deletion_and_a_relist_after_410_are_followed() {
    let garbled = telemetry(
        "default",
        "garbled",
        971,
        json!({"tracing": {"randomSamplingPercentage": "ten"}}),
    );
    let (client, mut server) = Server::start(list(&[quiet(970, "off"), garbled], 4716));
    let mut rx = start(client, MeshSettings::default(), |_| {}).await;
    // An object this version cannot read fails closed in its namespace alone.
    let first = rx.borrow_and_update().clone();
    let refused: Vec<String> = first
        .invalid
        .iter()
        .filter(|e| e.kind == "Telemetry")
        .map(|e| e.policy.to_string())
        .collect();
    assert_eq!(refused, ["default/garbled"]);
    assert_eq!(
        at(&first, "10.244.1.12"),
        TelemetrySettings::record_nothing()
    );
    assert_eq!(
        at(&first, "10.244.2.10").access_log,
        Some(AccessLogLevel::Off)
    );
    assert!(at(&first, "10.244.1.10").is_empty());

    // Added and modified: translated whole (a patch for pods would keep the old Telemetries).
    let added = events(&[
        ("ADDED", account_traces(5000)),
        ("MODIFIED", quiet(5001, "metadata")),
    ]);
    send(server.watch().await, StatusCode::OK, &added);
    let changed = snapshot(&mut rx, "both events apply", |s| {
        s.state.telemetry_policies().len() == 3
            && at(s, "10.244.2.10").access_log == Some(AccessLogLevel::Metadata)
    })
    .await;
    assert_eq!(at(&changed, "10.244.1.10").sampling, Some(0.25));

    // Deleted.
    let deleted = events(&[("DELETED", quiet(5002, "metadata"))]);
    send(server.watch().await, StatusCode::OK, &deleted);
    let after = snapshot(&mut rx, "the deleted one is gone", |s| {
        s.state.telemetry_policies().len() == 2
    })
    .await;
    assert!(at(&after, "10.244.2.10").is_empty());

    // The watch's version expired: listed again, what went meanwhile is gone too.
    server.lists(list(&[account_traces(5000)], 5100));
    send(
        server.watch().await,
        StatusCode::OK,
        &format!("{EXPIRED}\n"),
    );
    let relisted = snapshot(&mut rx, "the relist applies", |s| {
        s.state.telemetry_policies().len() == 1
    })
    .await;
    assert!(at(&relisted, "10.244.1.12").is_empty());
    assert!(relisted.invalid.iter().all(|e| e.kind != "Telemetry"));
    assert_eq!(at(&relisted, "10.244.1.10").sampling, Some(0.25));
}
