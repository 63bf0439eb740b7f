//! The collector connection every OTLP export shares (spans, log records, metrics): for an
//! `https://` endpoint, TLS that authenticates the collector against the CA certificates in
//! `--otlp-ca-file` and, with `--otlp-client-cert` and `--otlp-client-key`, this proxy to the
//! collector. The files are read once, at start: a file that does not hold what it should stops the
//! start with an error naming it (a collector's certificate that fails verification later costs
//! exports, never traffic).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::Channel;

use super::trace::{TraceError, TraceFlags};

/// How long connecting to the collector may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection to the collector of `flags` for an `https://` endpoint (lazy: it connects, and
/// reconnects, when an export needs it); `None` for an `http://` endpoint or none, which each
/// exporter dials itself.
pub(crate) fn tls_channel(flags: &TraceFlags) -> Result<Option<Channel>, TraceError> {
    let Some(config) = client_config(flags)? else {
        return Ok(None);
    };
    let endpoint = flags.otlp_endpoint.as_ref().expect("https:// was given");
    let authority = endpoint.authority().expect("endpoints have an authority");
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let address = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(443)
    );
    crate::identity::tls_channel(&address, host, Arc::new(config), CONNECT_TIMEOUT)
        .map(Some)
        .map_err(TraceError::Tls)
}

/// The TLS client settings for the collector of `flags`: `None` for an `http://` endpoint or none.
fn client_config(flags: &TraceFlags) -> Result<Option<rustls::ClientConfig>, TraceError> {
    let https = match &flags.otlp_endpoint {
        Some(endpoint) => endpoint.scheme_str() == Some("https"),
        None => false,
    };
    let client = (&flags.otlp_client_cert, &flags.otlp_client_key);
    if !https {
        if flags.otlp_ca_file.is_some() || client.0.is_some() || client.1.is_some() {
            return Err(TraceError::Tls(
                "--otlp-ca-file, --otlp-client-cert and --otlp-client-key are for an https:// \
                 --otlp-endpoint"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let Some(ca_file) = &flags.otlp_ca_file else {
        return Err(TraceError::Tls(
            "an https:// --otlp-endpoint needs --otlp-ca-file: the CA certificates (PEM) the \
             collector's certificate is verified against"
                .into(),
        ));
    };
    let mut roots = rustls::RootCertStore::empty();
    for root in certificates(ca_file, &read(ca_file)?)? {
        roots.add(root).map_err(|e| {
            TraceError::Tls(format!(
                "{}: a certificate is not usable as a CA: {e}",
                ca_file.display()
            ))
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TraceError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match client {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_file), Some(key_file)) => {
            let chain = certificates(cert_file, &read(cert_file)?)?;
            let key = PrivateKeyDer::from_pem_slice(&read(key_file)?).map_err(|e| {
                TraceError::Tls(format!(
                    "{}: no private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
                    key_file.display()
                ))
            })?;
            let mismatch = |e: rustls::Error| {
                TraceError::Tls(format!(
                    "{} and {}: not a certificate and its key: {e}",
                    cert_file.display(),
                    key_file.display()
                ))
            };
            // Refused here, not at the first handshake: a key that is not the certificate's.
            rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
                .map_err(mismatch)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(mismatch)?
        }
        _ => {
            return Err(TraceError::Tls(
                "--otlp-client-cert and --otlp-client-key go together".into(),
            ));
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(config))
}

fn read(path: &Path) -> Result<Vec<u8>, TraceError> {
    std::fs::read(path).map_err(|e| TraceError::Tls(format!("{}: {e}", path.display())))
}

/// The certificates of a PEM file: at least one, every one well-formed.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TraceError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TraceError::Tls(format!("{}: not PEM certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TraceError::Tls(format!(
            "{}: holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests;
