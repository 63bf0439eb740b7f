//! Workload identity: SPIFFE IDs, trust bundles, certificate verification, mesh mTLS configurations,
//! and getting certificates from the CA and keeping them fresh.

mod bundle;
mod ca_client;
mod cert;
pub mod csr;
mod id;
mod manager;
mod pem;
pub mod proto;
mod tls;
mod verify;

pub use bundle::{BundleError, TrustBundle};
pub use ca_client::{BoxFuture, CaClient, CaClientError, GrpcCaClient, TokenSource, tls_channel};
pub use cert::{CertError, CertInfo, WorkloadCert, hex, inspect, rfc3339};
pub use id::{Identity, IdentityError, parse_trust_domain};
pub use manager::{CertHandle, CertManager, FetchError, ManagerConfig, fetch};
pub use pem::{PemError, single_section};
pub use tls::{
    ALPN_H2, FixedCert, ca_client_config, client_config, control_client_config,
    control_server_config, peer_identity, provider, server_config,
};
pub use verify::{Usage, VerifyError, verify_identity};
