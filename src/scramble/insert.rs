//! Packets the mux adds to the stream (ECM, EMM, CAT): they take the place of input null
//! packets when the input has any, and are added otherwise. Bounded.

use std::collections::VecDeque;
use std::time::Duration;

use crate::ts::packet::Packet;

/// A bounded queue of packets waiting to go out.
#[derive(Debug)]
pub struct InsertQueue {
    pending: VecDeque<Packet>,
    limit: usize,
    /// When the input last had a null packet we could use.
    last_null: Option<Duration>,
    /// How long to wait for a null slot before adding packets instead.
    null_window: Duration,
    /// Before any null is seen, hold packets one window in case the input has nulls.
    wait_before_first_null: bool,
    /// When the oldest waiting packet was queued (None: not known, e.g. queued by `push`).
    waiting_since: Option<Duration>,
    /// Packets refused because the queue was full.
    pub overflowed: u64,
}

impl InsertQueue {
    /// A queue of at most `limit` packets that waits up to `null_window` for null slots.
    pub fn new(limit: usize, null_window: Duration) -> Self {
        InsertQueue {
            pending: VecDeque::with_capacity(limit),
            limit,
            last_null: None,
            null_window,
            wait_before_first_null: true,
            waiting_since: None,
            overflowed: 0,
        }
    }

    /// Add packets at once until the input shows a null packet (for ECMs: a key must not
    /// be used before its ECM is out). Default: hold them one window first.
    pub fn add_before_first_null(mut self) -> Self {
        self.wait_before_first_null = false;
        self
    }

    /// Queue `pkt` at `now`; false (and counted) when the queue is full.
    pub fn push(&mut self, pkt: &Packet, now: Duration) -> bool {
        if self.pending.len() >= self.limit {
            self.overflowed += 1;
            return false;
        }
        if self.pending.is_empty() {
            self.waiting_since = Some(now);
        }
        self.pending.push_back(*pkt);
        true
    }

    /// Drop what is waiting (superseded content).
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Room left.
    pub fn room(&self) -> usize {
        self.limit - self.pending.len()
    }

    /// The input has a null packet at `now`: take it for a waiting packet, if any.
    pub fn take_for_null(&mut self, now: Duration) -> Option<Packet> {
        self.last_null = Some(now);
        self.pending.pop_front()
    }

    /// A waiting packet to add at `now` because the input has given no null packet
    /// within the null window (before any null is seen: once packets waited that long).
    pub fn take_to_add(&mut self, now: Duration) -> Option<Packet> {
        if self.pending.is_empty() {
            return None;
        }
        let wait_for_null = match self.last_null {
            Some(t) => now.saturating_sub(t) <= self.null_window,
            None => {
                self.wait_before_first_null
                    && self
                        .waiting_since
                        .is_some_and(|t| now.saturating_sub(t) < self.null_window)
            }
        };
        if wait_for_null {
            None
        } else {
            self.pending.pop_front()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_prefers_null_slots() {
        let ms = Duration::from_millis;
        let mut q = InsertQueue::new(2, ms(100));
        let p = [0x47u8; 188];
        assert!(q.push(&p, ms(0)) && q.push(&p, ms(0)));
        assert!(!q.push(&p, ms(0)));
        assert_eq!(q.overflowed, 1);
        // no null seen yet: wait one window for one, then add
        assert!(q.take_to_add(ms(50)).is_none());
        assert!(q.take_to_add(ms(100)).is_some());
        // a null slot takes the next one
        assert!(q.take_for_null(ms(110)).is_some());
        assert!(q.take_for_null(ms(120)).is_none());
        // a null was seen lately: wait for the next one, add after the window
        q.push(&p, ms(130));
        assert!(q.take_to_add(ms(200)).is_none());
        assert!(q.take_to_add(ms(221)).is_some());
        // ECM style: added at once before any null is seen
        let mut e = InsertQueue::new(2, ms(100)).add_before_first_null();
        e.push(&p, ms(0));
        assert!(e.take_to_add(ms(0)).is_some());
    }
}
