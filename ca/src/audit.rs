//! The audit line of refusals the certificate service never sees. tonic answers some requests by
//! itself, before `CreateCertificate` runs: a message over the size limit (OUT_OF_RANGE), a body
//! that is not a protobuf message (INTERNAL), an unsupported compression or an unknown method
//! (UNIMPLEMENTED). Every request carries an [`AuditSlot`]; the service marks it when it writes its
//! own line, and [`audit_unrecorded`] writes one for any refusal left unmarked, so every refusal is
//! audited exactly once whatever layer refused it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

use crate::service::AUDIT_TARGET;

/// Whether the certificate service has audited a request (put in its extensions by the server).
#[derive(Clone, Debug, Default)]
pub struct AuditSlot(Arc<AtomicBool>);

impl AuditSlot {
    /// Records that the request's audit line is written.
    pub fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the request's audit line is written.
    pub fn marked(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Writes the audit line of `response` when it refuses the request (a gRPC status other than OK in
/// its headers: tonic's "trailers-only" answer) and nobody audited it yet. Returns whether it wrote.
pub fn audit_unrecorded<B>(
    response: &http::Response<B>,
    slot: &AuditSlot,
    peer: SocketAddr,
    method: &str,
) -> bool {
    if slot.marked() {
        return false;
    }
    let Some(status) = tonic::Status::from_header_map(response.headers()) else {
        return false;
    };
    if status.code() == tonic::Code::Ok {
        return false;
    }
    slot.mark();
    warn!(
        target: AUDIT_TARGET,
        audit = veil_mesh::telemetry::audit::SCHEMA,
        event = "certificate_refused",
        component = "ca",
        outcome = "refused",
        code = ?status.code(),
        caller = "-",
        node = "-",
        identity = "-",
        peer = %peer,
        method,
        reason = %status.message(),
        "certificate refused before authentication"
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: Option<tonic::Status>) -> http::Response<()> {
        match status {
            Some(status) => status.into_http(),
            None => http::Response::new(()),
        }
    }

    #[test]
    fn writes_a_line_only_for_an_unaudited_refusal() {
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let oversized = tonic::Status::out_of_range("decoded message length too large");
        let slot = AuditSlot::default();
        assert!(audit_unrecorded(
            &response(Some(oversized.clone())),
            &slot,
            peer,
            "/m"
        ));
        assert!(slot.marked(), "a second pass must not write it again");
        assert!(!audit_unrecorded(
            &response(Some(oversized)),
            &slot,
            peer,
            "/m"
        ));
        // The service wrote its own line: nothing more.
        let audited = AuditSlot::default();
        audited.mark();
        let denied = tonic::Status::permission_denied("no");
        assert!(!audit_unrecorded(
            &response(Some(denied)),
            &audited,
            peer,
            "/m"
        ));
        // A success (status in the trailers, none in the headers) is not a refusal.
        assert!(!audit_unrecorded(
            &response(None),
            &AuditSlot::default(),
            peer,
            "/m"
        ));
    }
}
