//! Packet resynchronisation for byte streams.
//!
//! Files, pipes, SRT messages and odd-sized datagrams are byte streams: a
//! packet may be split across two reads and garbage may sit between packets.
//! [`Resync`] finds the 0x47 sync byte at a 188-byte stride, locks after
//! [`LOCK_PACKETS`] consecutive sync bytes, hands whole packets out, and
//! drops (and counts) what is not a packet. It never panics on any input.
//! A locked packet whose successor's sync byte is visible in the same read
//! and wrong is taken as cut short and dropped too; a packet at the end of a
//! read is handed out at once (live inputs must not hold packets back).
//!
//! When locked and aligned, packets are copied straight from the input into
//! the batch; the small staging buffer is only used for split packets and
//! while hunting. Nothing allocates after [`Resync::new`].

use super::batch::{PacketBatch, TS_PACKET_SIZE, TS_SYNC_BYTE};
use super::stats::IoStats;

/// Consecutive sync bytes (188 apart) needed to lock.
pub const LOCK_PACKETS: usize = 3;
/// Staging buffer size: enough to test a lock anywhere within one packet.
const STAGE_SIZE: usize = TS_PACKET_SIZE * (LOCK_PACKETS + 5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for LOCK_PACKETS sync bytes at the right stride.
    Hunting,
    /// The stage (or the input) starts at a packet boundary.
    Locked,
}

/// A stream resynchroniser. See the module docs.
#[derive(Debug)]
pub struct Resync {
    state: State,
    stage: Box<[u8; STAGE_SIZE]>,
    stage_len: usize,
    /// Set once we have been locked; a later loss counts as a sync loss.
    ever_locked: bool,
}

impl Default for Resync {
    fn default() -> Self {
        Self::new()
    }
}

impl Resync {
    /// A resynchroniser that starts hunting.
    pub fn new() -> Self {
        Self {
            state: State::Hunting,
            stage: Box::new([0u8; STAGE_SIZE]),
            stage_len: 0,
            ever_locked: false,
        }
    }

    /// Whether the stream is currently locked.
    pub fn is_locked(&self) -> bool {
        self.state == State::Locked
    }

    /// Bytes held back (a split packet, or bytes still being hunted through).
    pub fn pending(&self) -> usize {
        self.stage_len
    }

    /// Forget everything held back (counted as dropped) and hunt again.
    pub fn reset(&mut self, stats: &IoStats) {
        IoStats::add(&stats.dropped_bytes, self.stage_len as u64);
        self.stage_len = 0;
        self.state = State::Hunting;
    }

    /// Feed `input`, appending whole packets to `out` until it is full.
    ///
    /// Returns how many bytes of `input` were consumed; when `out` fills up,
    /// call again with the rest. Packets emitted are not counted in
    /// `packets_in` (the input does that); sync losses and dropped bytes are.
    pub fn push(&mut self, mut input: &[u8], out: &mut PacketBatch, stats: &IoStats) -> usize {
        let total = input.len();
        loop {
            // Work off the stage first: it always precedes `input`.
            // With no more input in this call, a staged packet goes out
            // without waiting for its successor (live inputs must not hold it).
            self.drain_stage(out, stats, input.is_empty());
            if out.is_full() {
                break;
            }
            if self.stage_len == 0 && self.state == State::Locked {
                // Fast path: aligned input straight into the batch, the run of good
                // packets in one copy (a datagram's 7 packets: one memcpy, not seven).
                let whole = (input.len() / TS_PACKET_SIZE).min(out.remaining());
                let mut good = 0;
                let mut lost = false;
                while good < whole {
                    let at = good * TS_PACKET_SIZE;
                    // A packet whose successor's sync byte is visible and
                    // wrong is probably cut short: drop it and hunt.
                    let next_bad = input.len() > at + TS_PACKET_SIZE
                        && input[at + TS_PACKET_SIZE] != TS_SYNC_BYTE;
                    if input[at] != TS_SYNC_BYTE || next_bad {
                        lost = true;
                        break;
                    }
                    good += 1;
                }
                let bytes = good * TS_PACKET_SIZE;
                out.spare_mut()[..good]
                    .as_flattened_mut()
                    .copy_from_slice(&input[..bytes]);
                out.commit(good);
                input = &input[bytes..];
                if lost {
                    self.lose_sync(stats);
                }
                if out.is_full() {
                    break;
                }
                if self.state == State::Locked && input.len() < TS_PACKET_SIZE {
                    // A split packet: keep its head for the next read.
                    self.stage[..input.len()].copy_from_slice(input);
                    self.stage_len = input.len();
                    input = &[];
                    break;
                }
                continue;
            }
            if input.is_empty() {
                break;
            }
            // Top up the stage and let drain_stage hunt or emit. When locked,
            // only complete the split packet plus the next sync byte, so the
            // fast path takes over again as soon as it can.
            let room = match self.state {
                State::Locked => (TS_PACKET_SIZE + 1).saturating_sub(self.stage_len),
                State::Hunting => STAGE_SIZE - self.stage_len,
            };
            let n = room.min(input.len());
            self.stage[self.stage_len..self.stage_len + n].copy_from_slice(&input[..n]);
            self.stage_len += n;
            input = &input[n..];
        }
        total - input.len()
    }

    /// End of stream: emit what can still be trusted, drop the rest.
    ///
    /// Whole packets left in the stage are emitted if they carry sync bytes
    /// at the right stride (a short file of one or two packets never gets a
    /// full lock). Returns whether everything held back has been handled; if
    /// `out` is full, call again with an empty batch.
    pub fn finish(&mut self, out: &mut PacketBatch, stats: &IoStats) -> bool {
        self.drain_stage(out, stats, true);
        if self.stage_len == 0 {
            return true;
        }
        if self.state == State::Hunting {
            let whole = self.stage_len / TS_PACKET_SIZE;
            let aligned =
                whole > 0 && (0..whole).all(|i| self.stage[i * TS_PACKET_SIZE] == TS_SYNC_BYTE);
            if aligned {
                self.state = State::Locked;
                self.drain_stage(out, stats, true);
            }
        }
        // Only a full batch is a reason to be called again: a drain that lost sync (a tail
        // that is no packet) would find the same stage next time, so what is left is dropped.
        if self.stage_len >= TS_PACKET_SIZE && out.is_full() && self.state == State::Locked {
            return false;
        }
        IoStats::add(&stats.dropped_bytes, self.stage_len as u64);
        self.stage_len = 0;
        self.state = State::Hunting;
        true
    }

    fn lose_sync(&mut self, stats: &IoStats) {
        if self.ever_locked {
            IoStats::add(&stats.sync_losses, 1);
        }
        self.state = State::Hunting;
    }

    /// Drop `n` bytes from the front of the stage.
    fn consume_stage(&mut self, n: usize) {
        self.stage.copy_within(n..self.stage_len, 0);
        self.stage_len -= n;
    }

    /// Emit/hunt within the stage as far as it goes. A packet is emitted
    /// once the next sync byte is visible and right, or at the `last` call.
    fn drain_stage(&mut self, out: &mut PacketBatch, stats: &IoStats, last: bool) {
        loop {
            match self.state {
                State::Locked => {
                    let mut off = 0;
                    while self.stage_len - off >= TS_PACKET_SIZE && !out.is_full() {
                        if self.stage[off] != TS_SYNC_BYTE {
                            self.lose_sync(stats);
                            break;
                        }
                        let left = self.stage_len - off;
                        if left > TS_PACKET_SIZE {
                            if self.stage[off + TS_PACKET_SIZE] != TS_SYNC_BYTE {
                                self.lose_sync(stats);
                                break;
                            }
                        } else if !last {
                            // Wait for the next sync byte before trusting this packet.
                            break;
                        }
                        out.push_slot()
                            .expect("batch checked not full")
                            .copy_from_slice(&self.stage[off..off + TS_PACKET_SIZE]);
                        off += TS_PACKET_SIZE;
                    }
                    if off > 0 {
                        self.consume_stage(off);
                    }
                    if self.state == State::Locked {
                        return;
                    }
                }
                State::Hunting => {
                    let span = (LOCK_PACKETS - 1) * TS_PACKET_SIZE;
                    if self.stage_len <= span {
                        return;
                    }
                    let candidates = self.stage_len - span;
                    let found = (0..candidates).find(|&i| {
                        (0..LOCK_PACKETS)
                            .all(|k| self.stage[i + k * TS_PACKET_SIZE] == TS_SYNC_BYTE)
                    });
                    match found {
                        Some(i) => {
                            IoStats::add(&stats.dropped_bytes, i as u64);
                            self.consume_stage(i);
                            self.state = State::Locked;
                            self.ever_locked = true;
                        }
                        None => {
                            // No lock can start in the checked bytes.
                            IoStats::add(&stats.dropped_bytes, candidates as u64);
                            self.consume_stage(candidates);
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(n: u8) -> [u8; TS_PACKET_SIZE] {
        let mut p = [n; TS_PACKET_SIZE];
        p[0] = TS_SYNC_BYTE;
        p[1] = n;
        p
    }

    fn stream(count: u8) -> Vec<u8> {
        (0..count).flat_map(packet).collect()
    }

    /// Feed `bytes` in chunks of `chunk`, collecting packet ids.
    fn run(bytes: &[u8], chunk: usize, batch_cap: usize, stats: &IoStats) -> Vec<u8> {
        let mut rs = Resync::new();
        let mut out = PacketBatch::with_capacity(batch_cap);
        let mut ids = Vec::new();
        for mut piece in bytes.chunks(chunk.max(1)) {
            while !piece.is_empty() {
                let used = rs.push(piece, &mut out, stats);
                piece = &piece[used..];
                ids.extend(out.packets().iter().map(|p| p[1]));
                out.clear();
            }
        }
        while !rs.finish(&mut out, stats) {
            ids.extend(out.packets().iter().map(|p| p[1]));
            out.clear();
        }
        ids.extend(out.packets().iter().map(|p| p[1]));
        ids
    }

    #[test]
    fn finish_ends_on_a_packet_and_a_tail_that_is_not_one() {
        // found by the rtp_sync fuzz target: one packet and a tail that does not start with
        // 0x47 never locked, and finish() returned false on every call without handing
        // anything out, so a file input ending that way never ended
        let stats = IoStats::default();
        let mut rs = Resync::new();
        let mut out = PacketBatch::with_capacity(4);
        let mut bytes = packet(7).to_vec();
        bytes.extend_from_slice(&[0; 50]);
        assert_eq!(rs.push(&bytes, &mut out, &stats), bytes.len());
        let mut emitted = out.len();
        out.clear();
        let mut calls = 0;
        while !rs.finish(&mut out, &stats) {
            emitted += out.len();
            out.clear();
            calls += 1;
            assert!(calls < 10, "finish() never ends");
        }
        emitted += out.len();
        let dropped = stats.snapshot().dropped_bytes;
        assert_eq!(emitted as u64 * 188 + dropped, bytes.len() as u64);
    }

    #[test]
    fn clean_stream_any_chunking() {
        let s = stream(20);
        for chunk in [1, 7, 187, 188, 189, 376, 1000, 5000] {
            for cap in [1, 3, 7, 64] {
                let stats = IoStats::default();
                let ids = run(&s, chunk, cap, &stats);
                assert_eq!(ids, (0..20).collect::<Vec<_>>(), "chunk {chunk} cap {cap}");
                let snap = stats.snapshot();
                assert_eq!((snap.sync_losses, snap.dropped_bytes), (0, 0));
            }
        }
    }

    #[test]
    fn leading_garbage_and_mid_garbage() {
        let mut s = vec![0x47, 1, 2, 3, 0x47, 9, 9];
        let lead = s.len();
        s.extend(stream(5));
        s.truncate(s.len() - 88); // packet 4 cut short
        s.extend([0u8; 50]);
        s.extend((5..12).flat_map(packet));
        // The cut packet is caught when the byte after it is in the same read.
        for chunk in [s.len(), 4096] {
            let stats = IoStats::default();
            let ids = run(&s, chunk, 4, &stats);
            // The cut packet 4 is dropped with the garbage.
            let want: Vec<u8> = (0..4).chain(5..12).collect();
            assert_eq!(ids, want, "chunk {chunk}");
            let snap = stats.snapshot();
            assert_eq!(snap.sync_losses, 1);
            assert_eq!(snap.dropped_bytes, (lead + 100 + 50) as u64);
        }
    }

    #[test]
    fn short_tail_dropped_short_file_kept() {
        let stats = IoStats::default();
        let mut s = stream(2);
        assert_eq!(run(&s, 4096, 8, &stats), vec![0, 1]);
        s.extend([0x47, 0, 0]);
        let stats = IoStats::default();
        assert_eq!(run(&s, 4096, 8, &stats), vec![0, 1]);
        assert_eq!(stats.snapshot().dropped_bytes, 3);
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap LCG: deterministic pseudo-random bytes, some 0x47 heavy.
        let mut x: u32 = 12345;
        let mut bytes = Vec::new();
        for i in 0..200_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let b = (x >> 16) as u8;
            bytes.push(if i % 3 == 0 && b & 1 == 0 { 0x47 } else { b });
        }
        for chunk in [1, 13, 188, 1316, 65536] {
            let stats = IoStats::default();
            let ids = run(&bytes, chunk, 7, &stats);
            let snap = stats.snapshot();
            // Everything is either a packet or counted as dropped.
            assert_eq!(
                ids.len() as u64 * 188 + snap.dropped_bytes,
                bytes.len() as u64
            );
        }
    }
}
