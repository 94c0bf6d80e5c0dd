//! Counters of the newcamd server: one for every connection, request, refusal and limit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::net::{AcceptSnapshot, AcceptStats};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters, shared by all sessions.
        #[derive(Debug, Default)]
        pub struct NewcamdStats {
            /// Connections accepted, refused (all slots taken, or too many from one
            /// address) and closed for not logging in within the handshake timeout.
            pub accept: Arc<AcceptStats>,
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            /// See [`NewcamdStats::accept`].
            pub accept: AcceptSnapshot,
            $($(#[$doc])* pub $name: u64,)*
        }

        impl NewcamdStats {
            /// Read every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    accept: self.accept.snapshot(),
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Successful logins.
    logins,
    /// Logins refused (unknown user or wrong password), each delayed.
    login_failures,
    /// Frames that failed to decrypt or parse (wrong DES key, garbage, bad checksum,
    /// oversize length); the connection is closed.
    bad_frames,
    /// Sessions closed for idleness after their login (a login that never came is an
    /// `accept.handshake_timeouts`).
    idle_timeouts,
    /// ECM requests received.
    ecm_requests,
    /// ECMs answered with CWs (from the card or the cache).
    ecm_answered,
    /// ECMs the card refused (not entitled, expired, forged, ...).
    ecm_refused_card,
    /// ECMs refused because the card already serves `max_services` other services.
    ecm_refused_service_limit,
    /// ECMs answered from the cache without asking the card.
    ecm_cache_hits,
    /// EMM requests received.
    emm_requests,
    /// EMMs the card accepted.
    emm_accepted,
    /// EMMs the card rejected.
    emm_rejected,
    /// EMMs from users without AU rights (not given to the card).
    emm_not_allowed,
    /// Card data requests answered.
    card_data_requests,
    /// Keepalives echoed.
    keepalives,
    /// Messages with a tag the server does not handle (ignored).
    unknown_commands,
}

/// Add one to a counter.
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
