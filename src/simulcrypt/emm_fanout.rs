//! EMM clone: every EMM the EMMG<->MUX server accepts goes to every subscribed pipeline
//! (Astra's "duplicate EMM packets to all streams").
//!
//! Each subscriber has a bounded queue of its own. The server never waits on one: a full
//! queue drops that subscriber's copy and counts it (on the [`EmmQueueSource`] and in the
//! server's `dropped_queue_full` total), so a stalled pipeline costs the others nothing.
//! The bytes of an EMM are shared between the copies ([`Bytes`]), not duplicated.
//! Dropping an [`EmmQueueSource`] unsubscribes it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;

use super::mux_server::EmmMuxStats;
use crate::scramble::emm::{EmmData, EmmSource};

/// One queued EMM chunk (whole sections, or whole packets), shared between subscribers.
type Chunk = (EmmData, Bytes);

struct Subscriber {
    id: u64,
    tx: SyncSender<Chunk>,
    dropped: Arc<AtomicU64>,
}

struct Shared {
    queue_len: usize,
    stats: Arc<EmmMuxStats>,
    next_id: AtomicU64,
    subs: Mutex<Vec<Subscriber>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cloneable handle on the server's subscriber list: subscribe a pipeline at any time,
/// also while the server runs.
#[derive(Clone)]
pub struct EmmSubscribers {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EmmSubscribers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmmSubscribers")
            .field("subscribers", &self.len())
            .field("queue_len", &self.shared.queue_len)
            .finish()
    }
}

impl EmmSubscribers {
    /// A list whose subscribers each get a queue of `queue_len` chunks (at least 1).
    pub(crate) fn new(queue_len: usize, stats: Arc<EmmMuxStats>) -> Self {
        EmmSubscribers {
            shared: Arc::new(Shared {
                queue_len: queue_len.max(1),
                stats,
                next_id: AtomicU64::new(0),
                subs: Mutex::default(),
            }),
        }
    }

    /// A new pipeline end that gets every EMM accepted from now on.
    pub fn subscribe(&self) -> EmmQueueSource {
        let (tx, rx) = sync_channel(self.shared.queue_len);
        let dropped = Arc::new(AtomicU64::new(0));
        let id = self.shared.next_id.fetch_add(1, Relaxed);
        lock(&self.shared.subs).push(Subscriber {
            id,
            tx,
            dropped: dropped.clone(),
        });
        EmmQueueSource {
            rx,
            held: None,
            id,
            list: Arc::downgrade(&self.shared),
            dropped,
            delivered: 0,
        }
    }

    /// Subscribers now.
    pub fn len(&self) -> usize {
        lock(&self.shared.subs).len()
    }

    /// Whether nobody is subscribed (accepted EMMs then go nowhere, counted).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hand `chunks` (all of one kind) to every subscriber, never waiting. Counts in the
    /// server's stats: `queued` for chunks at least one subscriber took, `dropped_queue_full`
    /// for each copy a full queue refused, `dropped_no_subscriber` when nobody listens.
    pub(crate) fn publish(&self, kind: EmmData, chunks: &[Bytes]) {
        let stats = &self.shared.stats;
        let mut subs = lock(&self.shared.subs);
        if subs.is_empty() {
            stats
                .dropped_no_subscriber
                .fetch_add(chunks.len() as u64, Relaxed);
            return;
        }
        for c in chunks {
            let mut taken = false;
            subs.retain(|s| match s.tx.try_send((kind, c.clone())) {
                Ok(()) => {
                    taken = true;
                    true
                }
                Err(TrySendError::Full(_)) => {
                    s.dropped.fetch_add(1, Relaxed);
                    stats.dropped_queue_full.fetch_add(1, Relaxed);
                    true
                }
                // its source went away between its Drop and now: forget it
                Err(TrySendError::Disconnected(_)) => false,
            });
            if taken {
                stats.queued.fetch_add(1, Relaxed);
                stats.queued_bytes.fetch_add(c.len() as u64, Relaxed);
            } else if subs.is_empty() {
                stats.dropped_no_subscriber.fetch_add(1, Relaxed);
            }
        }
    }
}

/// One pipeline's end of the EMM fan-out: an [`EmmSource`] handing over one chunk per poll.
/// Dropping it unsubscribes it.
pub struct EmmQueueSource {
    rx: Receiver<Chunk>,
    /// A chunk taken from the queue that did not fit the last poll.
    held: Option<Chunk>,
    id: u64,
    list: Weak<Shared>,
    dropped: Arc<AtomicU64>,
    /// Chunks handed to the pipeline (several sections may go in one poll).
    pub delivered: u64,
}

impl EmmQueueSource {
    /// Chunks this subscriber lost because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// The count of [`Self::dropped`], for a monitor to read after the source moved into
    /// its pipeline.
    pub fn dropped_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.dropped)
    }
}

impl std::fmt::Debug for EmmQueueSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmmQueueSource")
            .field("delivered", &self.delivered)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// Most bytes of sections handed over in one poll (the [`EmmSource`] bound).
const GATHER: usize = 4096;

impl EmmSource for EmmQueueSource {
    /// The next chunk; sections are gathered from the chunks waiting, back to back, up to
    /// [`GATHER`] bytes, so the mux packs short sections (castmux's grouped EMMs: about
    /// three per TS packet) as the EMMG's bandwidth was reckoned, instead of padding each
    /// to a packet.
    fn poll(&mut self, _now: Duration, out: &mut Vec<u8>) -> Option<EmmData> {
        let (kind, bytes) = match self.held.take() {
            Some(c) => c,
            None => self.rx.try_recv().ok()?,
        };
        let start = out.len();
        out.extend_from_slice(&bytes);
        self.delivered += 1;
        if kind == EmmData::Sections {
            while let Ok((k, b)) = self.rx.try_recv() {
                if k != EmmData::Sections || out.len() - start + b.len() > GATHER {
                    self.held = Some((k, b));
                    break;
                }
                out.extend_from_slice(&b);
                self.delivered += 1;
            }
        }
        Some(kind)
    }
}

impl Drop for EmmQueueSource {
    fn drop(&mut self) {
        if let Some(shared) = self.list.upgrade() {
            lock(&shared.subs).retain(|s| s.id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8) -> Bytes {
        Bytes::from(vec![0x82, 0x70, 1, n])
    }

    fn drain(src: &mut EmmQueueSource) -> Vec<u8> {
        let mut got = Vec::new();
        let mut out = Vec::new();
        while let Some(kind) = src.poll(Duration::ZERO, &mut out) {
            // sections come gathered, packets one chunk a poll
            got.extend(out.chunks(4).map(|c| c[3]));
            assert!(kind == EmmData::Sections || out.len() == 4);
            out.clear();
        }
        got
    }

    #[test]
    fn every_subscriber_gets_every_chunk_and_a_full_one_only_loses_its_own() {
        let stats = Arc::new(EmmMuxStats::default());
        let list = EmmSubscribers::new(4, stats.clone());
        let mut a = list.subscribe();
        let mut b = list.subscribe();
        let chunks: Vec<Bytes> = (0..6).map(chunk).collect();
        list.publish(EmmData::Sections, &chunks[..3]);
        assert_eq!(drain(&mut a), [0, 1, 2]);
        list.publish(EmmData::Sections, &chunks[3..]);
        // b was never drained: room for 4 of 6
        assert_eq!(drain(&mut a), [3, 4, 5]);
        assert_eq!(drain(&mut b), [0, 1, 2, 3]);
        assert_eq!((a.dropped(), b.dropped()), (0, 2));
        assert_eq!(stats.dropped_queue_full.load(Relaxed), 2);
        assert_eq!(stats.queued.load(Relaxed), 6);
        assert_eq!(stats.queued_bytes.load(Relaxed), 24);
    }

    #[test]
    fn a_dropped_source_is_unsubscribed() {
        let stats = Arc::new(EmmMuxStats::default());
        let list = EmmSubscribers::new(8, stats.clone());
        let a = list.subscribe();
        let mut b = list.subscribe();
        assert_eq!(list.len(), 2);
        drop(a);
        assert_eq!(list.len(), 1);
        list.publish(EmmData::TsPackets, &[chunk(7)]);
        assert_eq!(drain(&mut b), [7]);
        drop(b);
        assert!(list.is_empty());
        list.publish(EmmData::TsPackets, &[chunk(8), chunk(9)]);
        assert_eq!(stats.dropped_no_subscriber.load(Relaxed), 2);
        assert_eq!(stats.dropped_queue_full.load(Relaxed), 0);
    }

    #[test]
    fn a_source_outliving_the_server_is_harmless() {
        let list = EmmSubscribers::new(2, Arc::default());
        let mut a = list.subscribe();
        list.publish(EmmData::Sections, &[chunk(1)]);
        drop(list);
        assert_eq!(drain(&mut a), [1]);
        drop(a);
    }
}
