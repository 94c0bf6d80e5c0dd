//! I/O counters shared between the data path and whoever reports them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for one input or output (or several, when they share an `Arc`).
///
/// Every field only grows; updates are `Relaxed` atomics, once per batch or
/// per event, never behind a lock.
#[derive(Debug, Default)]
pub struct IoStats {
    /// TS packets handed to the caller by an input.
    pub packets_in: AtomicU64,
    /// TS packets accepted by an output.
    pub packets_out: AtomicU64,
    /// Datagrams (or SRT messages) received.
    pub datagrams_in: AtomicU64,
    /// Datagrams (or SRT messages) sent.
    pub datagrams_out: AtomicU64,
    /// Bytes received (before resync and RTP unwrapping).
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Times the resynchroniser lost packet sync.
    pub sync_losses: AtomicU64,
    /// Bytes thrown away while hunting for sync (or left over at end of stream).
    pub dropped_bytes: AtomicU64,
    /// Gaps in the RTP sequence numbers (each gap counts once, whatever its length).
    pub rtp_gaps: AtomicU64,
    /// Datagrams or batches an output failed to send (dropped, not retried).
    pub send_errors: AtomicU64,
    /// Datagrams longer than the receive slot (their tail is lost).
    pub truncated_datagrams: AtomicU64,
    /// Batches dropped because a bounded queue between threads was full.
    pub queue_drops: AtomicU64,
    /// HTTP output: clients that got the stream (200).
    pub clients_accepted: AtomicU64,
    /// HTTP output: clients whose connection has ended, for any reason.
    pub clients_gone: AtomicU64,
    /// HTTP output: clients dropped for reading slower than the stream.
    pub clients_dropped_slow: AtomicU64,
    /// HTTP output: clients refused (503) because max_clients were connected.
    pub clients_refused: AtomicU64,
    /// HTTP output: bytes written to all its clients together (`bytes_out` counts the
    /// stream itself, once, as for every output).
    pub clients_bytes_out: AtomicU64,
    /// HTTP input: connections made again after the server closed or failed.
    pub reconnects: AtomicU64,
}

/// A plain copy of [`IoStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IoStatsSnapshot {
    pub packets_in: u64,
    pub packets_out: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub sync_losses: u64,
    pub dropped_bytes: u64,
    pub rtp_gaps: u64,
    pub send_errors: u64,
    pub truncated_datagrams: u64,
    pub queue_drops: u64,
    /// HTTP output: clients connected now (accepted minus gone).
    pub clients: u64,
    pub clients_accepted: u64,
    pub clients_dropped_slow: u64,
    pub clients_refused: u64,
    pub clients_bytes_out: u64,
    pub reconnects: u64,
}

impl IoStats {
    /// Add `n` to a counter (helper that keeps call sites short).
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Read every counter.
    pub fn snapshot(&self) -> IoStatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IoStatsSnapshot {
            packets_in: r(&self.packets_in),
            packets_out: r(&self.packets_out),
            datagrams_in: r(&self.datagrams_in),
            datagrams_out: r(&self.datagrams_out),
            bytes_in: r(&self.bytes_in),
            bytes_out: r(&self.bytes_out),
            sync_losses: r(&self.sync_losses),
            dropped_bytes: r(&self.dropped_bytes),
            rtp_gaps: r(&self.rtp_gaps),
            send_errors: r(&self.send_errors),
            truncated_datagrams: r(&self.truncated_datagrams),
            queue_drops: r(&self.queue_drops),
            clients: r(&self.clients_accepted).saturating_sub(r(&self.clients_gone)),
            clients_accepted: r(&self.clients_accepted),
            clients_dropped_slow: r(&self.clients_dropped_slow),
            clients_refused: r(&self.clients_refused),
            clients_bytes_out: r(&self.clients_bytes_out),
            reconnects: r(&self.reconnects),
        }
    }
}
