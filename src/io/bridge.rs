//! The meeting point of a byte-stream input's own thread (SRT, HTTP) and the data path.
//!
//! The input's thread appends what it receives to a shared buffer (bounded; overflow is
//! dropped and counted in `queue_drops`); a read swaps that buffer with the reader's own,
//! so each side takes the lock once per message or per read, never per packet, and the
//! two buffers are reused. Neither side ever waits on the other beyond the read timeout.
//!
//! Every push (and the close) also writes an eventfd, so a reader that waits on many inputs
//! at once (the head-end's data plane, epoll) is woken by this input like by a socket.
//!
//! A thread that reconnects marks where the new connection's bytes start
//! ([`ByteBridge::restart`]): the reader hands out what came before, then drops the
//! resynchroniser's partial packet and hunts again, so the tail of one connection is never
//! glued to the head of the next.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Condvar, Mutex};

use nix::sys::eventfd::{EfdFlags, EventFd};
use std::time::{Duration, Instant};

use super::batch::PacketBatch;
use super::stats::IoStats;
use super::sync::Resync;
use super::ReadStatus;

#[derive(Debug, Default)]
struct Shared {
    data: Vec<u8>,
    /// Where in `data` a new connection's bytes start (the last one, if several).
    restart_at: Option<usize>,
    /// Why the input's thread stopped for good.
    closed: Option<String>,
}

/// The producer's side, shared with the reader (see the module docs).
#[derive(Debug)]
pub(crate) struct ByteBridge {
    state: Mutex<Shared>,
    ready: Condvar,
    /// Readable when bytes (or the close) came since the reader last looked.
    wake: EventFd,
    cap: usize,
}

impl ByteBridge {
    /// A bridge holding at most `cap` bytes the reader has not taken.
    pub(crate) fn new(cap: usize) -> std::io::Result<Arc<ByteBridge>> {
        let wake = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(std::io::Error::from)?;
        Ok(Arc::new(ByteBridge {
            state: Mutex::new(Shared {
                data: Vec::with_capacity(cap),
                ..Shared::default()
            }),
            ready: Condvar::new(),
            wake,
            cap,
        }))
    }

    /// Append `bytes`; when the reader is behind by a whole buffer they are dropped and
    /// counted (`queue_drops`, `dropped_bytes`) instead.
    pub(crate) fn push(&self, bytes: &[u8], stats: &IoStats) {
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.data.len() + bytes.len() > self.cap {
                IoStats::add(&stats.queue_drops, 1);
                IoStats::add(&stats.dropped_bytes, bytes.len() as u64);
                return;
            }
            st.data.extend_from_slice(bytes);
        }
        self.ready.notify_one();
        let _ = self.wake.write(1);
    }

    /// The bytes pushed from now on start a new stream (a new connection).
    pub(crate) fn restart(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.restart_at = Some(st.data.len());
    }

    /// The producer has stopped for good; the reader fails with `reason` once it has
    /// handed out every byte.
    pub(crate) fn close(&self, reason: String) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed
            .get_or_insert(reason);
        self.ready.notify_one();
        let _ = self.wake.write(1);
    }
}

/// The data path's side: the bytes taken from the bridge and the resynchroniser.
#[derive(Debug)]
pub(crate) struct BridgeReader {
    bridge: Arc<ByteBridge>,
    local: Vec<u8>,
    pos: usize,
    restart_at: Option<usize>,
    resync: Resync,
}

impl BridgeReader {
    /// What to wait on for this input's bytes (epoll, poll).
    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.bridge.wake.as_fd()
    }

    pub(crate) fn new(bridge: Arc<ByteBridge>) -> BridgeReader {
        let cap = bridge.cap;
        BridgeReader {
            bridge,
            local: Vec::with_capacity(cap),
            pos: 0,
            restart_at: None,
            resync: Resync::new(),
        }
    }

    /// Fill `batch` (cleared first), waiting up to `timeout` for the first bytes. Counts
    /// `packets_in`. Err carries the producer's reason once it has closed and every byte
    /// before has been handed out.
    pub(crate) fn read_batch(
        &mut self,
        batch: &mut PacketBatch,
        timeout: Duration,
        stats: &IoStats,
    ) -> Result<ReadStatus, String> {
        batch.clear();
        let deadline = Instant::now() + timeout;
        loop {
            if self.restart_at.is_some_and(|r| self.pos >= r) {
                self.resync.reset(stats);
                self.restart_at = None;
            }
            let end = self.restart_at.unwrap_or(self.local.len());
            if self.pos < end {
                self.pos += self.resync.push(&self.local[self.pos..end], batch, stats);
            }
            if self.restart_at.is_some_and(|r| self.pos >= r) {
                continue;
            }
            if self.pos >= self.local.len() {
                self.local.clear();
                self.pos = 0;
            }
            if batch.is_full() || self.pos < self.local.len() {
                break;
            }
            // reset the wake-up before looking: a push after this wakes the reader again
            let _ = self.bridge.wake.read();
            let mut st = self.bridge.state.lock().unwrap_or_else(|p| p.into_inner());
            while st.data.is_empty() && st.closed.is_none() && batch.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                st = match self.bridge.ready.wait_timeout(st, left) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
            if !st.data.is_empty() {
                std::mem::swap(&mut st.data, &mut self.local);
                self.restart_at = st.restart_at.take();
                continue;
            }
            if let Some(reason) = &st.closed {
                if batch.is_empty() {
                    return Err(reason.clone());
                }
            }
            break;
        }
        if batch.is_empty() {
            return Ok(ReadStatus::TimedOut);
        }
        IoStats::add(&stats.packets_in, batch.len() as u64);
        Ok(ReadStatus::Packets(batch.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{TS_PACKET_SIZE, TS_SYNC_BYTE};

    fn packet(cc: u8) -> [u8; TS_PACKET_SIZE] {
        let mut p = [0xAAu8; TS_PACKET_SIZE];
        p[..4].copy_from_slice(&[TS_SYNC_BYTE, 0x01, 0x00, 0x10 | (cc & 0x0F)]);
        p
    }

    #[test]
    fn a_restart_drops_the_cut_packet_and_keeps_the_new_stream() {
        let stats = IoStats::default();
        let bridge = ByteBridge::new(1 << 20).unwrap();
        let mut reader = BridgeReader::new(bridge.clone());
        let old: Vec<u8> = (0..5).flat_map(packet).collect();
        // the old connection ends 100 bytes into its sixth packet
        bridge.push(&old, &stats);
        bridge.push(&packet(5)[..100], &stats);
        bridge.restart();
        let new: Vec<u8> = (8..13).flat_map(packet).collect();
        bridge.push(&new, &stats);
        let mut batch = PacketBatch::with_capacity(64);
        let mut got = Vec::new();
        while let Ok(ReadStatus::Packets(_)) =
            reader.read_batch(&mut batch, Duration::from_millis(10), &stats)
        {
            got.extend(batch.packets().iter().map(|p| p[3] & 0x0F));
        }
        assert_eq!(got, vec![0, 1, 2, 3, 4, 8, 9, 10, 11, 12]);
        assert_eq!(stats.snapshot().dropped_bytes, 100);
        bridge.close("gone".to_owned());
        assert_eq!(
            reader.read_batch(&mut batch, Duration::from_millis(10), &stats),
            Err("gone".to_owned())
        );
    }

    #[test]
    fn overflow_is_dropped_and_counted() {
        let stats = IoStats::default();
        let bridge = ByteBridge::new(2 * TS_PACKET_SIZE).unwrap();
        bridge.push(&packet(0), &stats);
        bridge.push(&packet(1), &stats);
        bridge.push(&packet(2), &stats);
        let s = stats.snapshot();
        assert_eq!((s.queue_drops, s.dropped_bytes), (1, TS_PACKET_SIZE as u64));
    }
}
