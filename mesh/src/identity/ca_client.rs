//! The client of the CA's certificate-signing API, over TLS 1.3 verified against the mesh roots and
//! authenticated with a bearer token.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prost_types::value::Kind;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::bundle::TrustBundle;
use super::id::Identity;
use super::proto::IMPERSONATED_IDENTITY;
use super::proto::IstioCertificateRequest;
use super::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use super::tls::ca_client_config;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that signs CSRs: the gRPC client below, or a fake in tests.
pub trait CaClient: Send + Sync + fmt::Debug + 'static {
    /// Asks for `csr_pem` to be signed for `identity` with a lifetime of at most `ttl`; returns the
    /// PEM chain, leaf first.
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, CaClientError>>;
}

/// Why a signing request failed.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    /// The bearer token could not be read or is not a valid header value.
    #[error("CA token from {source_name}: {reason}")]
    Token { source_name: String, reason: String },
    /// The CA answered and refused (authentication, authorization or a bad request).
    #[error("the CA refused: {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
    /// The CA could not be reached or failed internally; worth retrying.
    #[error("the CA is unavailable: {0}")]
    Unavailable(String),
    /// The CA did not answer in time.
    #[error("no answer from the CA within {0:?}")]
    Timeout(Duration),
    /// The client could not be set up (TLS configuration, address).
    #[error("CA client configuration: {0}")]
    Config(String),
}

/// Where the bearer token comes from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// A file, re-read for every request (Kubernetes rotates projected tokens in place).
    File(PathBuf),
    /// A fixed token.
    Static(String),
}

impl TokenSource {
    pub(crate) fn read(&self) -> Result<String, CaClientError> {
        match self {
            Self::Static(token) => Ok(token.clone()),
            Self::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| CaClientError::Token {
                    source_name: path.display().to_string(),
                    reason: e.to_string(),
                }),
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Static(_) => "static configuration".to_owned(),
            Self::File(path) => path.display().to_string(),
        }
    }
}

/// The gRPC client of `istio.v1.auth.IstioCertificateService`. Talks to veil's CA, or to istiod.
#[derive(Clone)]
pub struct GrpcCaClient {
    client: IstioCertificateServiceClient<Channel>,
    token: TokenSource,
    timeout: Duration,
}

impl fmt::Debug for GrpcCaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcCaClient")
            .field("token", &self.token.name())
            .finish_non_exhaustive()
    }
}

impl GrpcCaClient {
    /// A client of the CA at `address` (`host:port`), whose serving certificate must be valid for
    /// `server_name` and chain to one of `bundle`'s roots. Connects lazily and reconnects on its own.
    pub fn new(
        address: &str,
        server_name: &str,
        bundle: &TrustBundle,
        token: TokenSource,
        timeout: Duration,
    ) -> Result<Self, CaClientError> {
        let config = ca_client_config(bundle).map_err(|e| CaClientError::Config(e.to_string()))?;
        let channel = tls_channel(address, server_name, config, timeout)
            .map_err(|e| CaClientError::Config(format!("CA {e}")))?;
        Ok(Self {
            client: IstioCertificateServiceClient::new(channel),
            token,
            timeout,
        })
    }

    async fn create(
        &self,
        identity: &Identity,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, CaClientError> {
        let token = self.token.read()?;
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| CaClientError::Token {
                source_name: self.token.name(),
                reason: "not a valid header value".to_owned(),
            })?;
        let metadata = prost_types::Struct {
            fields: BTreeMap::from([(
                IMPERSONATED_IDENTITY.to_owned(),
                prost_types::Value {
                    kind: Some(Kind::StringValue(identity.to_string())),
                },
            )]),
        };
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem.to_owned(),
            validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            metadata: Some(metadata),
        });
        request.metadata_mut().insert("authorization", bearer);
        let mut client = self.client.clone();
        match tokio::time::timeout(self.timeout, client.create_certificate(request)).await {
            Err(_) => Err(CaClientError::Timeout(self.timeout)),
            Ok(Ok(response)) => Ok(response.into_inner().cert_chain),
            Ok(Err(status)) => Err(classify(status)),
        }
    }
}

/// Refusals are final for this request (asking again unchanged gets the same answer; the CA refuses
/// an oversized request with `OUT_OF_RANGE`); anything else is the CA being unavailable.
fn classify(status: tonic::Status) -> CaClientError {
    use tonic::Code;
    match status.code() {
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange => CaClientError::Refused {
            code: status.code(),
            message: status.message().to_owned(),
        },
        _ => CaClientError::Unavailable(format!("{:?}: {}", status.code(), status.message())),
    }
}

impl CaClient for GrpcCaClient {
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, CaClientError>> {
        Box::pin(self.create(identity, csr_pem, ttl))
    }
}

/// A lazily connecting gRPC channel to `address` (`host:port`) over TLS with `config`, whose
/// server must be valid for `server_name`; it reconnects on its own. The CA client and the
/// control-plane clients use it.
pub fn tls_channel(
    address: &str,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Channel, String> {
    let server_name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| format!("server name {server_name:?}: {e}"))?;
    let endpoint = Endpoint::from_shared(format!("https://{address}"))
        .map_err(|e| format!("address {address:?}: {e}"))?
        .connect_timeout(timeout);
    let connector = CaConnector {
        tls: TlsConnector::from(config),
        server_name,
    };
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// Dials a TLS server: TCP to the URI's authority, then TLS for the configured server name.
#[derive(Clone)]
struct CaConnector {
    tls: TlsConnector,
    server_name: ServerName<'static>,
}

impl tower::Service<Uri> for CaConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let authority = uri.authority().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "CA URI has no authority")
            })?;
            let port = authority.port_u16().unwrap_or(443);
            // An IPv6 literal keeps its brackets in the URI authority.
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(tls.connect(server_name, tcp).await?))
        })
    }
}

#[cfg(test)]
mod tests {
    use tonic::{Code, Status};

    use super::{CaClientError, classify};

    #[test]
    fn refusals_and_unavailability_are_told_apart() {
        for code in [
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::OutOfRange,
        ] {
            let error = classify(Status::new(code, "no"));
            assert!(
                matches!(&error, CaClientError::Refused { code: c, message } if *c == code && message == "no"),
                "{code:?}: {error}"
            );
        }
        for code in [
            Code::Unavailable,
            Code::Internal,
            Code::DeadlineExceeded,
            Code::Unknown,
        ] {
            let error = classify(Status::new(code, "busy"));
            assert!(
                matches!(error, CaClientError::Unavailable(_)),
                "{code:?}: {error}"
            );
        }
    }
}
