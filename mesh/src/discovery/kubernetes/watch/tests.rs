//! The watch path through kube's real client on a mock API server: a failed list is retried with
//! backoff, and the snapshot arrives with what the retry returned.

use std::net::IpAddr;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;

use super::*;

mod patch;
mod telemetry;

fn json(path: &str) -> &'static str {
    match path {
        "/api/v1/namespaces" => include_str!("../testdata/namespaces.json"),
        "/api/v1/pods" => include_str!("../testdata/pods.json"),
        "/api/v1/services" => include_str!("../testdata/services.json"),
        "/apis/security.veil.dev/v1/authorizationpolicies" => {
            include_str!("../testdata/authorizationpolicies.json")
        }
        "/apis/security.veil.dev/v1/peerauthentications" => {
            include_str!("../testdata/peerauthentications.json")
        }
        "/apis/security.veil.dev/v1/telemetries" => include_str!("../testdata/telemetries.json"),
        other => panic!("unexpected request for {other}"),
    }
}

/// What the API server answers while etcd is electing a leader.
const INTERNAL_ERROR: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcdserver: leader changed","reason":"InternalError","code":500}"#;

#[tokio::test]
async fn a_failed_list_is_retried_with_backoff_and_the_snapshot_carries_its_result() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let source = tokio::spawn(start(client, MeshSettings::default(), |_| {}));

    let mut pod_lists = 0;
    let mut open_watches = Vec::new();
    let rx = loop {
        tokio::select! {
            done = &mut Box::pin(async { while !source.is_finished() { tokio::time::sleep(Duration::from_millis(10)).await } }) => {
                let () = done;
                break source.await.unwrap();
            }
            request = handle.next_request() => {
                let (request, respond) = request.expect("the client is alive");
                let path = request.uri().path().to_owned();
                if request.uri().query().is_some_and(|q| q.contains("watch=true")) {
                    // Keep watches open: answer nothing.
                    open_watches.push(respond);
                    continue;
                }
                let (status, body) = if path == "/api/v1/pods" && { pod_lists += 1; pod_lists == 1 } {
                    (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_ERROR)
                } else {
                    (StatusCode::OK, json(&path))
                };
                respond.send_response(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Body::from(body.as_bytes().to_vec()))
                        .unwrap(),
                );
            }
        }
    };
    assert_eq!(pod_lists, 2, "the failed list was retried");
    let snapshot = rx.borrow().clone();
    let account: IpAddr = "10.244.1.10".parse().unwrap();
    assert!(snapshot.state.workload_by_ip(account).unwrap().enrolled);
    assert_eq!(snapshot.invalid.len(), 1);
    assert_eq!(snapshot.objects.pods.len(), 8);
    assert_eq!(snapshot.state.telemetry_policies().len(), 2);
}

/// What the last translation saw of a kind, against the store: a version that reads alike takes
/// its place (the old one is let go); one that reads otherwise, or is gone, or is new, is a change.
#[test]
fn an_object_that_reads_as_before_is_no_change_and_replaces_the_one_seen() {
    let list: serde_json::Value =
        serde_json::from_str(include_str!("../testdata/authorizationpolicies.json")).unwrap();
    let policy: AuthorizationPolicy = serde_json::from_value(list["items"][0].clone()).unwrap();
    let key = key_of(&policy);
    let (store, mut writer) = reflector::store::<AuthorizationPolicy>();
    let apply = |writer: &mut reflector::store::Writer<AuthorizationPolicy>,
                 p: &AuthorizationPolicy| {
        writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
    };
    apply(&mut writer, &policy);
    let mut seen = Seen::of(&store.state());

    // Its status written: alike, and the store's version is the one seen now.
    let mut written = policy.clone();
    written.metadata.resource_version = Some("991".into());
    written.status = Some(veil_crd::status::PolicyStatus::default());
    apply(&mut writer, &written);
    assert!(seen.update(&store, &key));
    let now = store.get(&ObjectRef::from_obj(&written)).unwrap();
    assert!(Arc::ptr_eq(&seen.0[&key], &now));

    // Its rules changed: a change, every time it is asked until a translation sees it.
    let mut changed = written.clone();
    changed.spec.action = veil_crd::authorization::Action::Deny;
    assert_ne!(changed.spec, written.spec);
    apply(&mut writer, &changed);
    assert!(!seen.update(&store, &key));
    assert!(!seen.update(&store, &key));
    // And back as it was seen: no change.
    apply(&mut writer, &written);
    assert!(seen.update(&store, &key));

    // Gone; and one never seen.
    writer.apply_watcher_event(&watcher::Event::Delete(written.clone()));
    assert!(!seen.update(&store, &key));
    let other = (Some("elsewhere".to_owned()), "never".to_owned());
    assert!(seen.update(&store, &other), "absent before and now");
    let mut new = policy.clone();
    new.metadata.namespace = Some("elsewhere".into());
    new.metadata.name = Some("never".into());
    apply(&mut writer, &new);
    assert!(!seen.update(&store, &other));
}
