//! HTTP/3 datagrams (RFC 9297 §2.1) of one QUIC connection: a QUIC DATAGRAM frame holding the
//! request stream's quarter stream ID, a context ID (0: a UDP payload, RFC 9298 §4) and the
//! payload. Unreliable and unordered, like the UDP they carry: no retransmission, no head-of-line
//! blocking between a flow's datagrams.
//!
//! One task per connection reads them and hands each to its flow by quarter stream ID; a datagram
//! for no flow (one that ended, or never was), with another context ID, or malformed is dropped, as
//! RFC 9297 allows. A flow whose queue is full loses the datagram, as a full socket buffer would.
//! Payloads too large for a DATAGRAM frame on the path go as capsules on the stream instead
//! (`super::super::udp`): the receiver takes both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::hbone::udp::{get_varint, put_varint};

/// Datagrams queued for one flow before its relay takes them.
const FLOW_QUEUE: usize = 64;

/// The UDP payload context (RFC 9298 §4).
const UDP_CONTEXT: u64 = 0;

/// The datagrams of one QUIC connection, routed to their flows.
#[derive(Clone)]
pub(crate) struct Datagrams {
    conn: quinn::Connection,
    flows: Arc<Mutex<HashMap<u64, mpsc::Sender<Bytes>>>>,
}

impl std::fmt::Debug for Datagrams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datagrams").finish_non_exhaustive()
    }
}

impl Datagrams {
    /// Starts routing `conn`'s datagrams (until it closes).
    pub(crate) fn start(conn: quinn::Connection) -> Self {
        let datagrams = Self {
            conn,
            flows: Arc::default(),
        };
        let (conn, flows) = (datagrams.conn.clone(), Arc::downgrade(&datagrams.flows));
        tokio::spawn(async move {
            while let Ok(mut datagram) = conn.read_datagram().await {
                let Some(flows) = flows.upgrade() else { return };
                let Some(qsid) = get_varint(&mut datagram) else {
                    continue;
                };
                if get_varint(&mut datagram) != Some(UDP_CONTEXT) {
                    continue;
                }
                let flow = flows
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&qsid)
                    .cloned();
                if let Some(flow) = flow {
                    // A copy: quinn's datagram is a slice of the whole receive batch, which a
                    // flow's queue would otherwise keep alive.
                    let _ = flow.try_send(Bytes::copy_from_slice(&datagram));
                }
            }
        });
        datagrams
    }

    /// The datagrams of the request stream `stream_id`: its sending end, and its receiving end
    /// (registered until dropped).
    pub(crate) fn flow(&self, stream_id: u64) -> (DatagramSender, DatagramReceiver) {
        let qsid = stream_id / 4;
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        self.flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(qsid, tx);
        let mut prefix = BytesMut::new();
        put_varint(&mut prefix, qsid);
        put_varint(&mut prefix, UDP_CONTEXT);
        (
            DatagramSender {
                conn: self.conn.clone(),
                prefix: prefix.freeze(),
            },
            DatagramReceiver {
                flows: self.flows.clone(),
                qsid,
                rx,
            },
        )
    }
}

/// Sends one flow's HTTP/3 datagrams.
pub struct DatagramSender {
    conn: quinn::Connection,
    /// Quarter stream ID and context ID, encoded.
    prefix: Bytes,
}

impl std::fmt::Debug for DatagramSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramSender").finish_non_exhaustive()
    }
}

impl DatagramSender {
    /// Sends `payload` as a datagram; `false` when it does not fit one on this path (or the peer
    /// takes none): the caller sends it as a capsule. While the connection's datagram buffer is
    /// full (congestion), waits for room: the flow's sender is held back, as a capsule's would be
    /// by flow control, rather than quinn dropping older datagrams (another flow's, perhaps) for
    /// this one, and what is counted as sent has been taken to send.
    pub async fn send(&self, payload: &[u8]) -> bool {
        let len = self.prefix.len() + payload.len();
        if self.conn.max_datagram_size().is_none_or(|max| len > max) {
            return false;
        }
        let mut datagram = BytesMut::with_capacity(len);
        datagram.extend_from_slice(&self.prefix);
        datagram.extend_from_slice(payload);
        let datagram = datagram.freeze();
        // Fails only if the connection is gone (the stream's error says so) or the path shrank.
        if self.conn.datagram_send_buffer_space() >= len {
            return self.conn.send_datagram(datagram).is_ok();
        }
        // Congested: boxed, as rare, and kept out of every flow's future.
        Box::pin(self.conn.send_datagram_wait(datagram))
            .await
            .is_ok()
    }
}

/// Receives one flow's HTTP/3 datagrams.
#[derive(Debug)]
pub struct DatagramReceiver {
    /// Kept alive by its flows as much as by the connection's owner.
    flows: Arc<Mutex<HashMap<u64, mpsc::Sender<Bytes>>>>,
    qsid: u64,
    rx: mpsc::Receiver<Bytes>,
}

impl DatagramReceiver {
    /// The next payload from the peer; `None` once the connection's datagrams end.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }
}

impl Drop for DatagramReceiver {
    fn drop(&mut self) {
        self.flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.qsid);
    }
}
