//! EMM insertion: an [`EmmSource`] (the built-in EMM carousel, a SimulCrypt EMMG) hands
//! over EMM sections or TS packets when its bandwidth allows; they go out on the EMM PID
//! with our continuity counter, in null slots first, else added. Bounded: the source is
//! asked for more only when the queue has room, so a fast source is held back, never
//! buffered without limit.

use std::time::Duration;

use super::insert::InsertQueue;
use crate::ts::packet::{is_whole_packets, Packet, PACKET_SIZE};
use crate::ts::section::check_sections;
use crate::ts::{PacketMut, PacketRef, Packetizer, Pid};

/// What an [`EmmSource`] handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmmData {
    /// Complete sections back to back (table_id 0x82..=0x8F).
    Sections,
    /// Whole 188-byte TS packets (their PID and continuity counter are rewritten).
    TsPackets,
}

/// Gives EMMs at its own pace. Called from the data path between packets: it must not block.
pub trait EmmSource: Send {
    /// Append the next EMM data due at `now` to `out` (at most 4096 bytes), or None.
    fn poll(&mut self, now: Duration, out: &mut Vec<u8>) -> Option<EmmData>;
}

/// Counters of EMM insertion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EmmCounters {
    /// EMM sections (or packet groups) taken from the source.
    pub taken: u64,
    /// Packets queued for the EMM PID.
    pub packets: u64,
    /// Data rejected (not EMM sections, bad packets, too big).
    pub rejected: u64,
}

/// Largest chunk accepted from a source at once.
const MAX_CHUNK: usize = 4096;
/// Queue room kept for one chunk: 4096 bytes of sections take at most 24 packets.
const CHUNK_PACKETS: usize = MAX_CHUNK / 184 + 2;

/// Puts EMMs on the EMM PID.
pub struct EmmInserter {
    source: Box<dyn EmmSource>,
    packetizer: Packetizer,
    queue: InsertQueue,
    scratch: Vec<u8>,
    counters: EmmCounters,
}

impl std::fmt::Debug for EmmInserter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmmInserter")
            .field("pid", &self.packetizer.pid())
            .field("pending", &self.queue.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl EmmInserter {
    /// An inserter on `pid` taking EMMs from `source`.
    pub fn new(source: Box<dyn EmmSource>, pid: Pid) -> Self {
        EmmInserter {
            source,
            packetizer: Packetizer::new(pid),
            queue: InsertQueue::new(2 * CHUNK_PACKETS, Duration::from_millis(50)),
            scratch: Vec::with_capacity(MAX_CHUNK),
            counters: EmmCounters::default(),
        }
    }

    /// The EMM PID.
    pub fn pid(&self) -> Pid {
        self.packetizer.pid()
    }

    /// The counters.
    pub fn counters(&self) -> EmmCounters {
        self.counters
    }

    /// Ask the source for what is due at `now`, while there is room.
    pub fn tick(&mut self, now: Duration) {
        while self.queue.room() >= CHUNK_PACKETS {
            self.scratch.clear();
            let Some(kind) = self.source.poll(now, &mut self.scratch) else {
                return;
            };
            self.counters.taken += 1;
            if self.scratch.len() > MAX_CHUNK || !self.queue_chunk(kind, now) {
                self.counters.rejected += 1;
            }
        }
    }

    fn queue_chunk(&mut self, kind: EmmData, now: Duration) -> bool {
        match kind {
            EmmData::Sections => {
                if !are_emm_sections(&self.scratch) {
                    return false;
                }
                let queue = &mut self.queue;
                let packets = &mut self.counters.packets;
                self.packetizer
                    .packetize(&self.scratch, |p| {
                        queue.push(p, now);
                        *packets += 1;
                    })
                    .is_ok()
            }
            EmmData::TsPackets => {
                if !is_whole_packets(&self.scratch) {
                    return false;
                }
                let pid = self.packetizer.pid();
                let mut cc = self.packetizer.next_cc();
                for chunk in self.scratch.chunks_exact(PACKET_SIZE) {
                    let mut pkt: Packet = [0; PACKET_SIZE];
                    pkt.copy_from_slice(chunk);
                    let has_payload = PacketRef::new(&pkt).has_payload();
                    let mut m = PacketMut::new(&mut pkt);
                    m.set_pid(pid);
                    m.set_cc(cc);
                    if has_payload {
                        cc = cc.next();
                    }
                    self.queue.push(&pkt, now);
                    self.counters.packets += 1;
                }
                self.packetizer = Packetizer::with_cc(pid, cc);
                true
            }
        }
    }

    /// The input has a null packet at `now`: take it for an EMM packet if one waits.
    pub fn take_for_null(&mut self, now: Duration) -> Option<Packet> {
        self.queue.take_for_null(now)
    }

    /// A waiting EMM packet to add now (no null slots lately).
    pub fn take_to_add(&mut self, now: Duration) -> Option<Packet> {
        self.queue.take_to_add(now)
    }
}

/// Whether `bytes` are whole private sections with an EMM table_id (0x82..=0x8F).
fn are_emm_sections(bytes: &[u8]) -> bool {
    !bytes.is_empty() && check_sections(bytes, 0x82..=0x8F).is_ok()
}

/// A source that never has anything: for tests and for a configured EMM PID whose EMMs
/// come later.
#[derive(Debug, Default)]
pub struct NoEmm;

impl EmmSource for NoEmm {
    fn poll(&mut self, _now: Duration, _out: &mut Vec<u8>) -> Option<EmmData> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::psi_write::write_private_section;

    struct Every {
        period: Duration,
        next: Duration,
        kind: EmmData,
    }

    impl EmmSource for Every {
        fn poll(&mut self, now: Duration, out: &mut Vec<u8>) -> Option<EmmData> {
            if now < self.next {
                return None;
            }
            self.next += self.period;
            match self.kind {
                EmmData::Sections => {
                    write_private_section(out, 0x82, &[0xAA; 300]).unwrap();
                }
                EmmData::TsPackets => {
                    let mut p = [0xFFu8; PACKET_SIZE];
                    p[..4].copy_from_slice(&[0x47, 0x40, 0x20, 0x17]);
                    out.extend_from_slice(&p);
                    out.extend_from_slice(&p);
                }
            }
            Some(self.kind)
        }
    }

    #[test]
    fn sections_are_packetized_with_continuous_cc_and_bounded() {
        let src = Every {
            period: Duration::ZERO,
            next: Duration::ZERO,
            kind: EmmData::Sections,
        };
        let mut ins = EmmInserter::new(Box::new(src), Pid::new(0x1FF1));
        ins.tick(Duration::ZERO);
        // a source with no limit is held back by the queue bound
        assert!(ins.queue.len() <= 2 * CHUNK_PACKETS);
        let mut ccs = Vec::new();
        while let Some(p) = ins.take_to_add(Duration::from_secs(1)) {
            let r = PacketRef::new(&p);
            assert_eq!(r.pid(), Pid::new(0x1FF1));
            ccs.push(r.cc().value());
        }
        assert!(ccs.len() >= 2);
        for w in ccs.windows(2) {
            assert_eq!(w[1], (w[0] + 1) & 15);
        }
    }

    #[test]
    fn ts_packets_get_our_pid_and_cc_and_junk_is_rejected() {
        let src = Every {
            period: Duration::from_secs(1),
            next: Duration::ZERO,
            kind: EmmData::TsPackets,
        };
        let mut ins = EmmInserter::new(Box::new(src), Pid::new(0x1FF1));
        ins.tick(Duration::ZERO);
        let a = ins.take_for_null(Duration::ZERO).unwrap();
        let b = ins.take_for_null(Duration::ZERO).unwrap();
        assert_eq!(PacketRef::new(&a).pid(), Pid::new(0x1FF1));
        assert_eq!(PacketRef::new(&a).cc().value(), 0);
        assert_eq!(PacketRef::new(&b).cc().value(), 1);
        assert!(!are_emm_sections(&[0x80, 0x70, 0x01, 0x00]));
        assert!(!are_emm_sections(&[0x82, 0x70, 0x10, 0x00]));
    }
}
