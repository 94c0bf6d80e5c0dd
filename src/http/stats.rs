//! The HTTP server's counters: live atomics a metrics endpoint can read without a lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::net::{AcceptSnapshot, AcceptStats};

/// Counters of one HTTP server (live). Connection refusals are in `accept`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Requests whose head was read (every answer below is one of them).
    pub requests: AtomicU64,
    /// Requests refused for a missing or wrong API key (REST 401, TVCAS `NOT_VALID_API_KEY`).
    pub unauthorized: AtomicU64,
    /// Requests refused for a body over the limit (413).
    pub too_large: AtomicU64,
    /// Requests that did not finish within the request timeout (408).
    pub timeouts: AtomicU64,
    /// Other requests refused: bad input, unknown path or method, cross-site changes (4xx).
    pub rejected: AtomicU64,
    /// Requests that failed on the server's side: the store (5xx).
    pub server_errors: AtomicU64,
    /// The accept loop's counters: connections accepted and refused.
    pub accept: Arc<AcceptStats>,
}

/// The counters of [`HttpStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HttpSnapshot {
    /// See [`HttpStats::requests`].
    pub requests: u64,
    /// See [`HttpStats::unauthorized`].
    pub unauthorized: u64,
    /// See [`HttpStats::too_large`].
    pub too_large: u64,
    /// See [`HttpStats::timeouts`].
    pub timeouts: u64,
    /// See [`HttpStats::rejected`].
    pub rejected: u64,
    /// See [`HttpStats::server_errors`].
    pub server_errors: u64,
    /// See [`HttpStats::accept`].
    pub accept: AcceptSnapshot,
}

impl HttpStats {
    /// Read every counter.
    pub fn snapshot(&self) -> HttpSnapshot {
        HttpSnapshot {
            requests: self.requests.load(Relaxed),
            unauthorized: self.unauthorized.load(Relaxed),
            too_large: self.too_large.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            server_errors: self.server_errors.load(Relaxed),
            accept: self.accept.snapshot(),
        }
    }
}
