//! What a test can ask of the stand-in's traffic: a journal of the requests it answered (who sent
//! them, what was written, the status answered), and GETs held back until several have arrived,
//! so that clients racing to create an object all see it absent first, whatever their timing.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::Method;
use http::request::Parts;
use tokio::sync::Barrier;

use super::Api;

/// A request the stand-in answered.
#[derive(Clone, Debug)]
pub struct Noted {
    /// Its method.
    pub method: Method,
    /// Its path.
    pub path: String,
    /// Its bearer token, or empty: which client sent it.
    pub who: String,
    /// Its body.
    pub body: Bytes,
    /// The status answered.
    pub code: u16,
}

/// GETs of `path` held until `left` more have arrived.
#[derive(Debug)]
struct Hold {
    path: String,
    left: usize,
    barrier: Arc<Barrier>,
}

/// The journal (when kept) and the holds.
#[derive(Debug, Default)]
pub(super) struct Watched {
    journal: Mutex<Option<Vec<Noted>>>,
    holds: Mutex<Vec<Hold>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Api {
    /// Records every request answered from now on (not watches' events), for [`Api::journal`].
    pub fn keep_journal(&self) {
        lock(&self.watched.journal).get_or_insert_with(Vec::new);
    }

    /// The requests answered since [`Api::keep_journal`], in the order answered.
    pub fn journal(&self) -> Vec<Noted> {
        lock(&self.watched.journal).clone().unwrap_or_default()
    }

    /// Holds the next `count` GETs of `path`: none is answered until all `count` have arrived.
    pub fn hold_gets(&self, path: &str, count: usize) {
        lock(&self.watched.holds).push(Hold {
            path: path.to_owned(),
            left: count,
            barrier: Arc::new(Barrier::new(count)),
        });
    }

    /// Waits while the request is held.
    pub(super) async fn held(&self, parts: &Parts) {
        if parts.method != Method::GET {
            return;
        }
        let barrier = {
            let mut holds = lock(&self.watched.holds);
            let hold = holds
                .iter_mut()
                .find(|h| h.left > 0 && h.path == parts.uri.path());
            hold.map(|h| {
                h.left -= 1;
                h.barrier.clone()
            })
        };
        if let Some(barrier) = barrier {
            barrier.wait().await;
        }
    }

    /// Notes an answered request, if the journal is kept.
    pub(super) fn note(&self, parts: &Parts, body: &Bytes, code: http::StatusCode) {
        let mut journal = lock(&self.watched.journal);
        let Some(journal) = journal.as_mut() else {
            return;
        };
        let who = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        journal.push(Noted {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            who: who.to_owned(),
            body: body.clone(),
            code: code.as_u16(),
        });
    }
}
