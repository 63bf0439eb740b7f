//! The CA's Kubernetes integration against a fake API server answering with real API JSON.

use std::sync::{Arc, Mutex};

use http::Method;
use veil_mesh::testing::fake_kube;

use super::*;
use crate::authz::{Authorizer, AuthzError};

const TOKENREVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// A TokenReview answer as the API server gives it for a bound service-account token.
fn review_answer(
    authenticated: bool,
    username: &str,
    audiences: &[&str],
    extra: &str,
    error: &str,
) -> String {
    let audiences = serde_json::to_string(audiences).unwrap();
    let user = if authenticated {
        format!(
            r#""user":{{"username":"{username}","uid":"0f3c2b1a-9e8d-4c7b-a6f5-e4d3c2b1a090","groups":["system:serviceaccounts","system:serviceaccounts:veil-system","system:authenticated"],"extra":{{{extra}}}}},"audiences":{audiences},"#
        )
    } else {
        String::new()
    };
    format!(
        r#"{{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{{"creationTimestamp":null}},"spec":{{"token":"redacted","audiences":["veil-ca"]}},"status":{{{user}"authenticated":{authenticated}{}}}}}"#,
        if error.is_empty() {
            String::new()
        } else {
            format!(r#","error":"{error}""#)
        }
    )
}

const ZTUNNEL_EXTRA: &str = r#""authentication.kubernetes.io/credential-id":["JTI=5b2e4c1a"],"authentication.kubernetes.io/node-name":["node-a"],"authentication.kubernetes.io/node-uid":["8c1d9e2f-aaaa-bbbb-cccc-000000000001"],"authentication.kubernetes.io/pod-name":["ztunnel-7xk2p"],"authentication.kubernetes.io/pod-uid":["3e4f5a6b-aaaa-bbbb-cccc-000000000002"]"#;

fn reviewer(answer: String) -> (TokenReviewer, Arc<Mutex<Vec<serde_json::Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let client = fake_kube(move |method, path, body| {
        assert_eq!((method, path), (&Method::POST, TOKENREVIEWS));
        log.lock()
            .unwrap()
            .push(serde_json::from_slice(body).unwrap());
        Some((201, answer.clone()))
    });
    (TokenReviewer::new(client, "cluster.local".into()), seen)
}

#[tokio::test]
async fn an_accepted_review_yields_the_service_account_and_its_node() {
    let answer = review_answer(
        true,
        "system:serviceaccount:veil-system:ztunnel",
        &["veil-ca"],
        ZTUNNEL_EXTRA,
        "",
    );
    let (reviewer, seen) = reviewer(answer);
    let caller = reviewer.authenticate("the-token").await.unwrap();
    assert_eq!(
        caller.identity.as_str(),
        "spiffe://cluster.local/ns/veil-system/sa/ztunnel"
    );
    assert_eq!(caller.node.as_deref(), Some("node-a"));
    let sent = &seen.lock().unwrap()[0];
    assert_eq!(sent["spec"]["token"], "the-token");
    assert_eq!(sent["spec"]["audiences"], serde_json::json!(["veil-ca"]));
}

#[tokio::test]
async fn a_reviewer_for_another_service_asks_for_its_audience_and_refuses_the_cas() {
    // The controller's reviewer: a token minted for the CA is refused, one for the controller is
    // taken (and the API server is asked for the controller's audience).
    let for_ca = review_answer(
        true,
        "system:serviceaccount:veil-system:ztunnel",
        &["veil-ca"],
        ZTUNNEL_EXTRA,
        "",
    );
    let (ca_reviewer, seen) = reviewer(for_ca);
    let controllers = ca_reviewer.with_audiences(vec!["veil-controller".into()]);
    let refused = controllers.authenticate("the-token").await.unwrap_err();
    assert!(refused.to_string().contains("veil-controller"), "{refused}");
    assert_eq!(
        seen.lock().unwrap()[0]["spec"]["audiences"],
        serde_json::json!(["veil-controller"])
    );
    let for_controller = review_answer(
        true,
        "system:serviceaccount:veil-system:ztunnel",
        &["veil-controller"],
        ZTUNNEL_EXTRA,
        "",
    );
    let controllers = reviewer(for_controller)
        .0
        .with_audiences(vec!["veil-controller".into()]);
    let caller = controllers.authenticate("the-token").await.unwrap();
    assert_eq!(caller.node.as_deref(), Some("node-a"));
}

#[tokio::test]
async fn rejected_tokens_wrong_audiences_and_non_service_accounts_are_refused() {
    let cases = [
        (
            "rejected",
            review_answer(
                false,
                "",
                &[],
                "",
                "invalid bearer token, service account token has expired",
            ),
        ),
        (
            "wrong audience (API server's refusal)",
            review_answer(
                false,
                "",
                &[],
                "",
                "token audiences [\\\"https://kubernetes.default.svc\\\"] is invalid for the target audiences [\\\"veil-ca\\\"]",
            ),
        ),
        (
            "wrong audience (authenticator ignored it)",
            review_answer(
                true,
                "system:serviceaccount:veil-system:ztunnel",
                &["https://kubernetes.default.svc"],
                ZTUNNEL_EXTRA,
                "",
            ),
        ),
        (
            "not a service account",
            review_answer(true, "kubernetes-admin", &["veil-ca"], r#""x":["y"]"#, ""),
        ),
    ];
    for (name, answer) in cases {
        let (reviewer, _) = reviewer(answer);
        match reviewer.authenticate("t").await {
            Err(AuthnError::Invalid(reason)) => assert!(!reason.is_empty(), "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unreachable_api_fails_closed() {
    let client = fake_kube(|_, _, _| {
        Some((503, r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"the server is currently unable to handle the request","reason":"ServiceUnavailable","code":503}"#.into()))
    });
    let reviewer = TokenReviewer::new(client, "cluster.local".into());
    assert!(matches!(
        reviewer.authenticate("t").await,
        Err(AuthnError::Unavailable(_))
    ));
}

#[tokio::test]
async fn without_node_info_the_node_is_read_from_the_callers_pod() {
    let extra = r#""authentication.kubernetes.io/pod-name":["ztunnel-7xk2p"],"authentication.kubernetes.io/pod-uid":["3e4f"]"#;
    let answer = review_answer(
        true,
        "system:serviceaccount:veil-system:ztunnel",
        &["veil-ca"],
        extra,
        "",
    );
    let client = fake_kube(move |method, path, _| {
        match (method, path) {
        (&Method::POST, TOKENREVIEWS) => Some((201, answer.clone())),
        (&Method::GET, "/api/v1/namespaces/veil-system/pods/ztunnel-7xk2p") => Some((
            200,
            r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"ztunnel-7xk2p","namespace":"veil-system","uid":"3e4f"},"spec":{"containers":[{"name":"ztunnel","image":"veil"}],"nodeName":"node-b","serviceAccountName":"ztunnel"},"status":{"phase":"Running"}}"#.into(),
        )),
        other => panic!("unexpected {other:?}"),
    }
    });
    let caller = TokenReviewer::new(client, "cluster.local".into())
        .authenticate("t")
        .await
        .unwrap();
    assert_eq!(caller.node.as_deref(), Some("node-b"));
}

/// Pods of `user-data` per node, as the API lists them for `fieldSelector=spec.nodeName=<node>`.
fn placement_api() -> Client {
    fake_kube(|method, path, _| {
        assert_eq!(method, Method::GET);
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        assert_eq!(path, "/api/v1/namespaces/user-data/pods");
        let items = if query.contains("spec.nodeName%3Dnode-a")
            || query.contains("spec.nodeName=node-a")
        {
            r#"[{"metadata":{"name":"user-profile-service-6f5e4d3c2-abcde","namespace":"user-data"},"spec":{"containers":[{"name":"app","image":"profiles"}],"serviceAccountName":"user-profile-service","nodeName":"node-a"},"status":{"phase":"Running"}}]"#
        } else {
            "[]"
        };
        Some((
            200,
            format!(
                r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"123"}},"items":{items}}}"#
            ),
        ))
    })
}

#[tokio::test]
async fn impersonation_is_allowed_for_a_pod_on_the_callers_node_only() {
    let authorizer = Authorizer::new(
        "cluster.local".into(),
        [Identity::parse("spiffe://cluster.local/ns/veil-system/sa/ztunnel").unwrap()],
        Arc::new(KubePlacement::new(placement_api())),
    );
    let profile =
        Identity::parse("spiffe://cluster.local/ns/user-data/sa/user-profile-service").unwrap();
    let ztunnel_on = |node: &str| Caller {
        identity: Identity::parse("spiffe://cluster.local/ns/veil-system/sa/ztunnel").unwrap(),
        node: Some(node.into()),
    };
    authorizer
        .authorize(&ztunnel_on("node-a"), &profile)
        .await
        .unwrap();
    let refused = authorizer
        .authorize(&ztunnel_on("node-b"), &profile)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, AuthzError::NotOnNode { .. }),
        "{refused:?}"
    );
    let other_sa = Identity::parse("spiffe://cluster.local/ns/user-data/sa/batch").unwrap();
    let refused = authorizer
        .authorize(&ztunnel_on("node-a"), &other_sa)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, AuthzError::NotOnNode { .. }),
        "{refused:?}"
    );
}

#[tokio::test]
async fn the_root_is_generated_once_into_a_secret_and_reused() {
    let stored: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
    let secret_path = "/api/v1/namespaces/veil-system/secrets";
    let api = {
        let stored = stored.clone();
        move || {
            let stored = stored.clone();
            fake_kube(move |method, path, body| {
                let path = path.split('?').next().unwrap();
                match (method, path) {
                    (&Method::GET, p) if p == format!("{secret_path}/{ROOT_SECRET}") => match &*stored.lock().unwrap() {
                        Some(secret) => Some((200, secret.to_string())),
                        None => Some((404, r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"secrets \"veil-ca-root\" not found","reason":"NotFound","details":{"name":"veil-ca-root","kind":"secrets"},"code":404}"#.into())),
                    },
                    (&Method::POST, p) if p == secret_path => {
                        let secret: serde_json::Value = serde_json::from_slice(body).unwrap();
                        *stored.lock().unwrap() = Some(secret.clone());
                        Some((201, secret.to_string()))
                    }
                    other => panic!("unexpected {other:?}"),
                }
            })
        }
    };
    let first = root_from_secret(&api(), "veil-system", "cluster.local")
        .await
        .unwrap();
    let secret = stored.lock().unwrap().clone().unwrap();
    assert_eq!(secret["immutable"], true);
    assert!(secret["data"]["root-key.pem"].is_string());
    let second = root_from_secret(&api(), "veil-system", "cluster.local")
        .await
        .unwrap();
    assert_eq!(first.root(), second.root(), "a restart keeps the root");
}

/// Two replicas starting together both find no root and both generate one: the API server keeps
/// the first Secret created and answers the second 409 AlreadyExists; the loser reads the winner's
/// root, so both sign with the same one.
#[tokio::test]
async fn replicas_racing_to_create_the_root_end_with_the_same_one() {
    let stored: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
    let gets = Arc::new(Mutex::new(0));
    let conflicts = Arc::new(Mutex::new(0));
    let secret_path = "/api/v1/namespaces/veil-system/secrets";
    let api = {
        let (stored, gets, conflicts) = (stored.clone(), gets.clone(), conflicts.clone());
        fake_kube(move |method, path, body| {
            let path = path.split('?').next().unwrap();
            match (method, path) {
                (&Method::GET, p) if p == format!("{secret_path}/{ROOT_SECRET}") => {
                    let mut gets = gets.lock().unwrap();
                    *gets += 1;
                    // Both replicas look before either has created it.
                    match (&*stored.lock().unwrap(), *gets <= 2) {
                        (Some(secret), false) => Some((200, secret.to_string())),
                        _ => Some((404, r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"secrets \"veil-ca-root\" not found","reason":"NotFound","details":{"name":"veil-ca-root","kind":"secrets"},"code":404}"#.into())),
                    }
                }
                (&Method::POST, p) if p == secret_path => {
                    let mut stored = stored.lock().unwrap();
                    if stored.is_some() {
                        *conflicts.lock().unwrap() += 1;
                        return Some((409, r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"secrets \"veil-ca-root\" already exists","reason":"AlreadyExists","details":{"name":"veil-ca-root","kind":"secrets"},"code":409}"#.into()));
                    }
                    let secret: serde_json::Value = serde_json::from_slice(body).unwrap();
                    *stored = Some(secret.clone());
                    Some((201, secret.to_string()))
                }
                other => panic!("unexpected {other:?}"),
            }
        })
    };
    let (a, b) = tokio::join!(
        root_from_secret(&api, "veil-system", "cluster.local"),
        root_from_secret(&api, "veil-system", "cluster.local"),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        *conflicts.lock().unwrap(),
        1,
        "both replicas should have tried to create it"
    );
    assert_eq!(a.root(), b.root(), "the replicas sign with different roots");
}

#[tokio::test]
async fn the_root_certificate_is_published_to_every_namespace() {
    let applied: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let log = applied.clone();
    let client = fake_kube(move |method, path, body| {
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        match *method {
            Method::GET if route == "/api/v1/namespaces" && query.contains("watch=true") => None,
            Method::GET if route == "/api/v1/namespaces" => Some((
                200,
                r#"{"kind":"NamespaceList","apiVersion":"v1","metadata":{"resourceVersion":"10"},"items":[{"metadata":{"name":"default"}},{"metadata":{"name":"user-data"}}]}"#.into(),
            )),
            Method::PATCH => {
                assert!(query.contains("fieldManager=veil-ca") && query.contains("force=true"), "{query}");
                let namespace = route.split('/').nth(4).unwrap().to_owned();
                log.lock().unwrap().push((namespace, serde_json::from_slice(body).unwrap()));
                Some((200, String::from_utf8(body.to_vec()).unwrap()))
            }
            _ => panic!("unexpected {method} {path}"),
        }
    });
    let task = tokio::spawn(publish_root(
        client,
        "ROOT PEM".into(),
        Duration::from_secs(3600),
    ));
    for _ in 0..100 {
        if applied.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    let applied = applied.lock().unwrap();
    let namespaces: std::collections::BTreeSet<&str> =
        applied.iter().map(|(ns, _)| ns.as_str()).collect();
    assert!(
        namespaces.contains("default") && namespaces.contains("user-data"),
        "{applied:?}"
    );
    let (_, cm) = &applied[0];
    assert_eq!(cm["metadata"]["name"], ROOT_CONFIGMAP);
    assert_eq!(cm["data"][ROOT_CONFIGMAP_KEY], "ROOT PEM");
}
