//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: authenticate the caller, authorize the
//! identity it asks for, validate the CSR, sign, and audit-log the outcome either way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost_types::value::Kind;
use tonic::{Code, Request, Response, Status};
use tracing::{info, warn};
use veil_mesh::identity::proto::istio_certificate_service_server::IstioCertificateService;
use veil_mesh::identity::proto::{
    IMPERSONATED_IDENTITY, IstioCertificateRequest, IstioCertificateResponse,
};
use veil_mesh::identity::{Identity, rfc3339};
use veil_mesh::telemetry::audit::SCHEMA;

use crate::audit::AuditSlot;
use crate::authn::{Authenticator, AuthnError, Caller, bearer};
use crate::authority::Authority;
use crate::authz::{Authorizer, AuthzError};
use crate::csr::{self, CsrError};

/// The audit log's tracing target: one line per issuance or refusal.
pub const AUDIT_TARGET: &str = veil_mesh::telemetry::audit::AUDIT;

/// The remote address of a request, put in its extensions by the server.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// What the CA issues.
#[derive(Clone, Debug)]
pub struct IssuePolicy {
    /// The longest lifetime granted, whatever is asked.
    pub max_ttl: Duration,
    /// Time allowed for one request, authentication backends included.
    pub request_timeout: Duration,
}

impl Default for IssuePolicy {
    fn default() -> Self {
        Self {
            max_ttl: Duration::from_secs(24 * 3600),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The certificate service.
#[derive(Debug)]
pub struct CaService {
    authority: Arc<Authority>,
    authn: Arc<dyn Authenticator>,
    authz: Authorizer,
    policy: IssuePolicy,
}

/// A refused request: what the audit log and the gRPC status say.
struct Refusal {
    code: Code,
    reason: String,
    caller: Option<Caller>,
    identity: Option<String>,
}

impl Refusal {
    fn new(code: Code, reason: impl ToString) -> Self {
        Self {
            code,
            reason: reason.to_string(),
            caller: None,
            identity: None,
        }
    }
}

impl From<AuthnError> for Refusal {
    fn from(e: AuthnError) -> Self {
        let code = match e {
            AuthnError::Unavailable(_) => Code::Unavailable,
            _ => Code::Unauthenticated,
        };
        Self::new(code, e)
    }
}

impl From<AuthzError> for Refusal {
    fn from(e: AuthzError) -> Self {
        let code = match e {
            AuthzError::PlacementUnavailable(_) => Code::Unavailable,
            _ => Code::PermissionDenied,
        };
        Self::new(code, e)
    }
}

impl From<CsrError> for Refusal {
    fn from(e: CsrError) -> Self {
        Self::new(Code::InvalidArgument, e)
    }
}

impl CaService {
    /// A service signing with `authority` for callers `authn` recognises and `authz` allows.
    pub fn new(
        authority: Arc<Authority>,
        authn: Arc<dyn Authenticator>,
        authz: Authorizer,
        policy: IssuePolicy,
    ) -> Self {
        Self {
            authority,
            authn,
            authz,
            policy,
        }
    }

    async fn issue(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<IstioCertificateResponse, Refusal> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().map_err(|_| AuthnError::Malformed))
            .transpose()?;
        let token = bearer(header)?;
        let caller = self.authn.authenticate(token).await?;
        let with_caller = |refusal: Refusal| Refusal {
            caller: Some(caller.clone()),
            ..refusal
        };

        let request = request.into_inner();
        let identity = requested_identity(&request, &caller).map_err(with_caller)?;
        let with_both = |refusal: Refusal| Refusal {
            caller: Some(caller.clone()),
            identity: Some(identity.to_string()),
            ..refusal
        };
        self.authz
            .authorize(&caller, &identity)
            .await
            .map_err(|e| with_both(e.into()))?;
        let ttl = self.ttl(request.validity_duration).map_err(with_both)?;
        let key = csr::validate(&request.csr, &identity).map_err(|e| with_both(e.into()))?;
        let issued = self
            .authority
            .sign_workload(&key, &identity, ttl, SystemTime::now())
            .map_err(|e| with_both(Refusal::new(Code::Internal, e)))?;
        info!(
            target: AUDIT_TARGET,
            audit = SCHEMA,
            event = "certificate_issued",
            component = "ca",
            outcome = "issued",
            caller = %caller.identity,
            node = caller.node.as_deref().unwrap_or("-"),
            identity = %identity,
            serial = %issued.serial,
            not_after = %rfc3339(issued.not_after),
            key = %key.description,
            "certificate issued"
        );
        Ok(IstioCertificateResponse {
            cert_chain: self.authority.response_chain(&issued),
        })
    }

    /// `validity_duration` in seconds: 0 means "the default", which is the maximum.
    fn ttl(&self, requested: i64) -> Result<Duration, Refusal> {
        match u64::try_from(requested) {
            Err(_) => Err(Refusal::new(
                Code::InvalidArgument,
                format!("negative validity_duration {requested}"),
            )),
            Ok(0) => Ok(self.policy.max_ttl),
            Ok(secs) => Ok(Duration::from_secs(secs).min(self.policy.max_ttl)),
        }
    }
}

/// The identity asked for: `ImpersonatedIdentity` when present, the caller's own otherwise.
fn requested_identity(
    request: &IstioCertificateRequest,
    caller: &Caller,
) -> Result<Identity, Refusal> {
    let field = request
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY));
    let Some(value) = field else {
        return Ok(caller.identity.clone());
    };
    let Some(Kind::StringValue(uri)) = &value.kind else {
        return Err(Refusal::new(
            Code::InvalidArgument,
            format!("{IMPERSONATED_IDENTITY} must be a string"),
        ));
    };
    Identity::parse(uri).map_err(|e| Refusal {
        identity: Some(uri.clone()),
        ..Refusal::new(
            Code::InvalidArgument,
            format!("{IMPERSONATED_IDENTITY}: {e}"),
        )
    })
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
        // Marked before the line is written: the server's fallback audit must not add a second.
        if let Some(slot) = request.extensions().get::<AuditSlot>() {
            slot.mark();
        }
        let outcome = tokio::time::timeout(self.policy.request_timeout, self.issue(request))
            .await
            .unwrap_or_else(|_| {
                Err(Refusal::new(
                    Code::Unavailable,
                    format!("request took longer than {:?}", self.policy.request_timeout),
                ))
            });
        outcome.map(Response::new).map_err(|refusal| {
            warn!(
                target: AUDIT_TARGET,
                audit = SCHEMA,
                event = "certificate_refused",
                component = "ca",
                outcome = "refused",
                code = ?refusal.code,
                caller = refusal.caller.as_ref().map_or("-".to_owned(), |c| c.identity.to_string()),
                node = refusal.caller.as_ref().and_then(|c| c.node.as_deref()).unwrap_or("-"),
                identity = refusal.identity.as_deref().unwrap_or("-"),
                peer = peer.map_or("-".to_owned(), |p| p.to_string()),
                reason = %refusal.reason,
                "certificate refused"
            );
            Status::new(refusal.code, refusal.reason)
        })
    }
}
