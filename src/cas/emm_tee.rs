//! One EMM source feeding several links: `castmux emmg --mux A --mux B` at one bandwidth
//! builds every EMM once, and each link takes every chunk, in order, at the source's pace.
//!
//! The source (the carousel) is polled on the tee's own clock by whichever link needs the
//! next chunk first; the chunk is kept in a short ring the other links read from. A link
//! that falls behind by more than [`CATCH_UP`] chunks (its mux was down, it reconnected)
//! jumps to the newest chunk instead of sending a backlog in a burst above its bandwidth:
//! the carousel sends every card again in its next cycle anyway. What it skipped is counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::scramble::{EmmData, EmmSource};

/// Chunks a link may lag behind the newest before it jumps to it.
pub const CATCH_UP: u64 = 16;

struct Inner {
    source: Box<dyn EmmSource>,
    start: Instant,
    /// The last chunks, oldest first; `first` is the number of the oldest.
    ring: VecDeque<(EmmData, Bytes)>,
    first: u64,
    buf: Vec<u8>,
}

/// The shared end: hands out [`TeeSource`]s.
#[derive(Clone)]
pub struct EmmTee(Arc<Mutex<Inner>>);

impl std::fmt::Debug for EmmTee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmmTee").finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EmmTee {
    /// A tee over `source`.
    pub fn new(source: impl EmmSource + 'static) -> EmmTee {
        EmmTee(Arc::new(Mutex::new(Inner {
            source: Box::new(source),
            start: Instant::now(),
            ring: VecDeque::with_capacity(CATCH_UP as usize + 1),
            first: 0,
            buf: Vec::with_capacity(4096),
        })))
    }

    /// A link's end, starting at the next chunk the source gives.
    pub fn subscribe(&self) -> TeeSource {
        let next = {
            let t = lock(&self.0);
            t.first + t.ring.len() as u64
        };
        TeeSource {
            tee: Arc::clone(&self.0),
            next,
            skipped: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// One link's end of an [`EmmTee`].
pub struct TeeSource {
    tee: Arc<Mutex<Inner>>,
    next: u64,
    skipped: Arc<AtomicU64>,
}

impl std::fmt::Debug for TeeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeeSource")
            .field("next", &self.next)
            .field("skipped", &self.skipped.load(Relaxed))
            .finish()
    }
}

impl TeeSource {
    /// Chunks this link skipped because it lagged (live).
    pub fn skipped_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.skipped)
    }
}

impl EmmSource for TeeSource {
    /// The caller's `now` is its own link's clock; the source runs on the tee's, one clock
    /// for every link.
    fn poll(&mut self, _now: Duration, out: &mut Vec<u8>) -> Option<EmmData> {
        let mut t = lock(&self.tee);
        let end = t.first + t.ring.len() as u64;
        if end - self.next.min(end) > CATCH_UP {
            self.skipped.fetch_add(end - self.next, Relaxed);
            self.next = end;
        }
        if self.next == end {
            let now = t.start.elapsed();
            let t = &mut *t;
            t.buf.clear();
            let kind = t.source.poll(now, &mut t.buf)?;
            t.ring.push_back((kind, Bytes::copy_from_slice(&t.buf)));
            if t.ring.len() as u64 > CATCH_UP {
                t.ring.pop_front();
                t.first += 1;
            }
        }
        let (kind, bytes) = &t.ring[(self.next - t.first) as usize];
        out.extend_from_slice(bytes);
        self.next += 1;
        Some(*kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbered one-byte chunks, one per poll, up to `max`.
    struct Counter {
        n: u8,
        max: u8,
    }

    impl EmmSource for Counter {
        fn poll(&mut self, _now: Duration, out: &mut Vec<u8>) -> Option<EmmData> {
            if self.n == self.max {
                return None;
            }
            out.push(self.n);
            self.n += 1;
            Some(EmmData::Sections)
        }
    }

    fn take(s: &mut TeeSource, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..n {
            if s.poll(Duration::ZERO, &mut out).is_none() {
                break;
            }
        }
        out
    }

    #[test]
    fn every_link_gets_every_chunk_once_built() {
        let tee = EmmTee::new(Counter { n: 0, max: 40 });
        let (mut a, mut b) = (tee.subscribe(), tee.subscribe());
        let mut got_a = Vec::new();
        let mut got_b = Vec::new();
        // interleaved at different paces, each within CATCH_UP of the other
        for _ in 0..12 {
            got_a.extend(take(&mut a, 2));
            got_b.extend(take(&mut b, 1));
        }
        got_b.extend(take(&mut b, 100));
        got_a.extend(take(&mut a, 100));
        let want: Vec<u8> = (0..40).collect();
        assert_eq!(got_a, want);
        assert_eq!(got_b, want);
        assert_eq!(a.skipped_counter().load(Relaxed), 0);
    }

    #[test]
    fn a_link_that_lags_jumps_to_the_newest_and_counts_what_it_skipped() {
        let tee = EmmTee::new(Counter { n: 0, max: 100 });
        let (mut a, mut b) = (tee.subscribe(), tee.subscribe());
        assert_eq!(take(&mut a, 30), (0..30).collect::<Vec<u8>>());
        // b is 30 behind: it skips to the newest and goes on from there
        assert_eq!(take(&mut b, 4), vec![30, 31, 32, 33]);
        assert_eq!(b.skipped_counter().load(Relaxed), 30);
        // a reads what b built, and neither skipped again
        assert_eq!(take(&mut a, 5), vec![30, 31, 32, 33, 34]);
        assert_eq!(take(&mut b, 1), vec![34]);
        assert_eq!(a.skipped_counter().load(Relaxed), 0);
    }

    #[test]
    fn a_late_subscriber_starts_at_the_next_chunk() {
        let tee = EmmTee::new(Counter { n: 0, max: 10 });
        let mut a = tee.subscribe();
        take(&mut a, 4);
        let mut late = tee.subscribe();
        assert_eq!(take(&mut late, 100), (4..10).collect::<Vec<u8>>());
        assert_eq!(take(&mut a, 100), (4..10).collect::<Vec<u8>>());
    }
}
