//! Table tests of the authorization rules, and of token authentication in front of them.

use super::*;
use crate::authn::{Authenticator, AuthnError, StaticTokens, bearer};

fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap()
}

const ZTUNNEL: &str = "spiffe://cluster.local/ns/veil-system/sa/ztunnel";
const ACCOUNT: &str = "spiffe://cluster.local/ns/production/sa/account-service";
const PROFILE: &str = "spiffe://cluster.local/ns/user-data/sa/user-profile-service";

#[derive(Debug)]
struct BrokenPlacement;

impl Placement for BrokenPlacement {
    fn runs_on<'a>(&'a self, _: &'a Identity, _: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async { Err("API server unreachable".to_owned()) })
    }
}

fn authorizer(placement: Arc<dyn Placement>) -> Authorizer {
    Authorizer::new("cluster.local".into(), [id(ZTUNNEL)], placement)
}

fn placement() -> Arc<dyn Placement> {
    Arc::new(StaticPlacement::new([
        ("node-a".to_owned(), id(ACCOUNT)),
        ("node-b".to_owned(), id(PROFILE)),
    ]))
}

fn caller(identity: &str, node: Option<&str>) -> Caller {
    Caller {
        identity: id(identity),
        node: node.map(str::to_owned),
    }
}

/// Allowed, or refused with an error the check accepts.
type Expect = Result<(), fn(&AuthzError) -> bool>;

#[tokio::test]
async fn authorization_rules() {
    let rules = authorizer(placement());
    let cases: Vec<(&str, Caller, &str, Expect)> = vec![
        ("own identity", caller(ACCOUNT, None), ACCOUNT, Ok(())),
        (
            "node agent, workload on its node",
            caller(ZTUNNEL, Some("node-a")),
            ACCOUNT,
            Ok(()),
        ),
        (
            "node agent, workload on another node",
            caller(ZTUNNEL, Some("node-a")),
            PROFILE,
            Err(|e| matches!(e, AuthzError::NotOnNode { node, .. } if node == "node-a")),
        ),
        (
            "node agent, unknown node",
            caller(ZTUNNEL, Some("node-z")),
            ACCOUNT,
            Err(|e| matches!(e, AuthzError::NotOnNode { .. })),
        ),
        (
            "node agent without a node",
            caller(ZTUNNEL, None),
            ACCOUNT,
            Err(|e| matches!(e, AuthzError::NoNode { .. })),
        ),
        (
            "untrusted caller impersonating",
            caller(ACCOUNT, Some("node-b")),
            PROFILE,
            Err(|e| matches!(e, AuthzError::NotNodeAgent { .. })),
        ),
        (
            "foreign trust domain, even for itself",
            caller("spiffe://evil.local/ns/a/sa/b", None),
            "spiffe://evil.local/ns/a/sa/b",
            Err(|e| matches!(e, AuthzError::ForeignTrustDomain { .. })),
        ),
    ];
    for (name, who, requested, want) in cases {
        let got = rules.authorize(&who, &id(requested)).await;
        match (want, got) {
            (Ok(()), Ok(())) => {}
            (Err(check), Err(e)) => assert!(check(&e), "{name}: unexpected {e:?}"),
            (_, got) => panic!("{name}: got {got:?}"),
        }
    }
}

#[tokio::test]
async fn no_node_agent_gets_a_control_plane_identity_even_where_its_pod_runs() {
    const CONTROLLER: &str = "spiffe://cluster.local/ns/veil-system/sa/veil-controller";
    // The controller's pod runs on node-a.
    let placement: Arc<dyn Placement> = Arc::new(StaticPlacement::new([
        ("node-a".to_owned(), id(CONTROLLER)),
        ("node-a".to_owned(), id(ACCOUNT)),
    ]));
    let authz = authorizer(placement).with_protected_namespaces(["veil-system".to_owned()]);
    let on_a = caller(ZTUNNEL, Some("node-a"));
    assert!(matches!(
        authz.authorize(&on_a, &id(CONTROLLER)).await,
        Err(AuthzError::ControlPlane { .. })
    ));
    // Its workloads' identities it still gets; the controller gets its own.
    authz.authorize(&on_a, &id(ACCOUNT)).await.unwrap();
    authz
        .authorize(&caller(CONTROLLER, None), &id(CONTROLLER))
        .await
        .unwrap();
}

#[tokio::test]
async fn unknown_placement_is_refused_not_guessed() {
    let rules = authorizer(Arc::new(BrokenPlacement));
    let err = rules
        .authorize(&caller(ZTUNNEL, Some("node-a")), &id(ACCOUNT))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthzError::PlacementUnavailable(_)));
    // A caller's own identity needs no placement.
    rules
        .authorize(&caller(ACCOUNT, None), &id(ACCOUNT))
        .await
        .unwrap();
}

#[tokio::test]
async fn tokens_authenticate_their_caller_only() {
    let tokens = StaticTokens::from_yaml(&format!(
        "tokens:\n  - token: node-a-0123456789abcdef\n    identity: {ZTUNNEL}\n    node: node-a\n  - token: account-0123456789abcdef\n    identity: {ACCOUNT}\n"
    ))
    .unwrap();
    assert_eq!(
        tokens
            .authenticate("node-a-0123456789abcdef")
            .await
            .unwrap(),
        caller(ZTUNNEL, Some("node-a"))
    );
    assert_eq!(
        tokens
            .authenticate("account-0123456789abcdef")
            .await
            .unwrap(),
        caller(ACCOUNT, None)
    );
    let bad = tokens.authenticate("node-a-0123456789abcdeX").await;
    assert!(matches!(bad, Err(AuthnError::Invalid(_))));
}

#[test]
fn bearer_header_parsing() {
    let cases: [(Option<&str>, Result<&str, AuthnError>); 7] = [
        (Some("Bearer abc"), Ok("abc")),
        (Some("bearer abc"), Ok("abc")),
        (None, Err(AuthnError::Missing)),
        (Some(""), Err(AuthnError::Malformed)),
        (Some("Bearer"), Err(AuthnError::Malformed)),
        (Some("Bearer  "), Err(AuthnError::Malformed)),
        (Some("Basic abc"), Err(AuthnError::Malformed)),
    ];
    for (header, want) in cases {
        assert_eq!(bearer(header), want, "{header:?}");
    }
}

#[test]
fn token_files_are_validated() {
    let cases = [
        (
            "short token",
            format!("tokens:\n  - token: short\n    identity: {ACCOUNT}\n"),
        ),
        (
            "duplicate token",
            format!(
                "tokens:\n  - token: 0123456789abcdef0\n    identity: {ACCOUNT}\n  - token: 0123456789abcdef0\n    identity: {PROFILE}\n"
            ),
        ),
        (
            "bad identity",
            "tokens:\n  - token: 0123456789abcdef0\n    identity: spiffe://cluster.local/web\n"
                .to_owned(),
        ),
        (
            "unknown field",
            format!("tokens:\n  - token: 0123456789abcdef0\n    identity: {ACCOUNT}\n    nod: a\n"),
        ),
        (
            "empty node",
            format!(
                "tokens:\n  - token: 0123456789abcdef0\n    identity: {ACCOUNT}\n    node: \"\"\n"
            ),
        ),
        ("not yaml", "tokens: [".to_owned()),
    ];
    for (name, yaml) in cases {
        assert!(
            StaticTokens::from_yaml(&yaml).is_err(),
            "{name} was accepted"
        );
    }
}
