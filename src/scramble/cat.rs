//! The CAT the mux sends: the input's CAT with castmux's EMM CA_descriptor merged in
//! (same CA_system_ID replaced), or one of its own when the input has none.
//!
//! Input CAT packets are replaced in place by ours, so the input's repetition rate is kept.
//! Without an input CAT (none for a second), ours repeats every [`CAT_REPETITION`] through
//! the insert queue (null slots first). The version is ours: it starts at 0 and moves on
//! each time the content changes, so a receiver sees every change.

use std::time::Duration;

use super::insert::InsertQueue;
use crate::ts::descriptor::CaDescriptor;
use crate::ts::packet::Packet;
use crate::ts::psi::{Cat, TABLE_ID_CAT};
use crate::ts::psi_write::write_cat;
use crate::ts::section::{split_sections, Section, SectionAssembler};
use crate::ts::{Packetizer, Pid};

/// How often the mux sends its own CAT when the input has none.
pub const CAT_REPETITION: Duration = Duration::from_millis(500);
/// How long without an input CAT before the mux sends its own.
const INPUT_CAT_GONE: Duration = Duration::from_secs(1);

/// Counters of the CAT writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CatCounters {
    /// Input CAT sections with new content merged.
    pub input_updates: u64,
    /// Input CAT sections rejected (syntax, CRC); the last good merge stays.
    pub input_errors: u64,
    /// CAT packets written in place of input CAT packets.
    pub replaced: u64,
    /// CAT packets queued for insertion (no input CAT).
    pub queued: u64,
}

/// Writes the CAT with the EMM CA_descriptor.
#[derive(Debug)]
pub struct CatWriter {
    ca_system_id: u16,
    emm_pid: Pid,
    assembler: SectionAssembler,
    packetizer: Packetizer,
    version: u8,
    input_crc: Option<u32>,
    section: Vec<u8>,
    scratch: Vec<u8>,
    last_input: Option<Duration>,
    next_due: Duration,
    queue: InsertQueue,
    counters: CatCounters,
}

impl CatWriter {
    /// A writer announcing `emm_pid` under `ca_system_id`.
    pub fn new(ca_system_id: u16, emm_pid: Pid) -> Self {
        let mut w = CatWriter {
            ca_system_id,
            emm_pid,
            assembler: SectionAssembler::psi(),
            packetizer: Packetizer::new(Pid::CAT),
            version: 0,
            input_crc: None,
            section: Vec::with_capacity(256),
            scratch: Vec::with_capacity(1024),
            last_input: None,
            next_due: Duration::ZERO,
            // wait up to 100 ms for a null slot, well within one repetition
            queue: InsertQueue::new(8, Duration::from_millis(100)),
            counters: CatCounters::default(),
        };
        w.rebuild(None);
        w
    }

    /// The counters.
    pub fn counters(&self) -> CatCounters {
        let mut c = self.counters;
        c.queued = c.queued.saturating_sub(self.queue.len() as u64);
        c
    }

    fn rebuild(&mut self, input: Option<&Cat<'_>>) -> bool {
        let ca = CaDescriptor {
            ca_system_id: self.ca_system_id,
            ca_pid: self.emm_pid,
            private_data: &[],
        };
        let mut out = Vec::with_capacity(256);
        if write_cat(&mut out, input, &[ca], self.version).is_err() {
            return false;
        }
        self.section = out;
        true
    }

    /// An input CAT packet at `now`: it is replaced; our packets, if a section ended in it,
    /// go to `emit`.
    pub fn on_input_packet(&mut self, pkt: &Packet, now: Duration, emit: &mut impl FnMut(&Packet)) {
        let mut sections = std::mem::take(&mut self.scratch);
        sections.clear();
        let mut errors = 0;
        self.assembler.push(pkt, |r| match r {
            Ok(s) if s.table_id() == TABLE_ID_CAT => sections.extend_from_slice(s.bytes()),
            Ok(_) => {}
            Err(_) => errors += 1,
        });
        self.counters.input_errors += errors;
        for bytes in split_sections(&sections) {
            let cat = Section::parse(bytes, bytes.len())
                .ok()
                .and_then(|s| Cat::parse(&s).ok().map(|c| (c, s.crc32())));
            let Some((cat, crc)) = cat else {
                self.counters.input_errors += 1;
                continue;
            };
            if !cat.header.current_next {
                continue;
            }
            self.last_input = Some(now);
            self.queue.clear();
            if self.input_crc != crc {
                self.version = (self.version + 1) & 0x1F;
                if self.rebuild(Some(&cat)) {
                    self.input_crc = crc;
                    self.counters.input_updates += 1;
                } else {
                    // too big to merge: keep the last good CAT
                    self.counters.input_errors += 1;
                }
            }
            let mut n = 0;
            let _ = self.packetizer.packetize(&self.section, |p| {
                n += 1;
                emit(p)
            });
            self.counters.replaced += n;
        }
        self.scratch = sections;
    }

    /// Queue our CAT if the input has none and one is due at `now`.
    pub fn tick(&mut self, now: Duration) {
        let input_alive = self
            .last_input
            .is_some_and(|t| now.saturating_sub(t) < INPUT_CAT_GONE);
        if input_alive || now < self.next_due {
            return;
        }
        self.queue.clear();
        let queue = &mut self.queue;
        let mut n = 0;
        let _ = self.packetizer.packetize(&self.section, |p| {
            if queue.push(p, now) {
                n += 1;
            }
        });
        self.counters.queued += n;
        self.next_due = now + CAT_REPETITION;
    }

    /// The input has a null packet at `now`: take it for a CAT packet if one waits.
    pub fn take_for_null(&mut self, now: Duration) -> Option<Packet> {
        self.queue.take_for_null(now)
    }

    /// A waiting CAT packet to add now (no null slots lately).
    pub fn take_to_add(&mut self, now: Duration) -> Option<Packet> {
        self.queue.take_to_add(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_cat(packets: &[Packet]) -> Vec<(u16, u16)> {
        let mut asm = SectionAssembler::psi();
        let mut out = Vec::new();
        for p in packets {
            asm.push(p, |r| {
                let s = r.unwrap();
                let cat = Cat::parse(&s).unwrap();
                for ca in cat.descriptors.ca_descriptors() {
                    out.push((ca.ca_system_id, ca.ca_pid.value()));
                }
            });
        }
        out
    }

    #[test]
    fn own_cat_without_input_cat_repeats() {
        let mut w = CatWriter::new(0x4AE1, Pid::new(0x1FF1));
        w.tick(Duration::ZERO);
        // waits one window for a null slot, then is added
        assert!(w.take_to_add(Duration::ZERO).is_none());
        let p = w
            .take_to_add(Duration::from_millis(100))
            .expect("a CAT packet");
        assert!(w.take_to_add(Duration::from_millis(100)).is_none());
        assert_eq!(parse_cat(&[p]), vec![(0x4AE1, 0x1FF1)]);
        w.tick(Duration::from_millis(200));
        assert!(w.take_to_add(Duration::from_millis(400)).is_none());
        w.tick(CAT_REPETITION);
        assert!(w.take_for_null(CAT_REPETITION).is_some());
    }

    #[test]
    fn input_cat_is_merged_and_replaced_in_place() {
        // input CAT: another CAS 0x0B00 on EMM PID 0x0101, and a stale 0x4AE1 entry
        let mut sec = Vec::new();
        let other = CaDescriptor {
            ca_system_id: 0x0B00,
            ca_pid: Pid::new(0x101),
            private_data: &[1, 2],
        };
        let stale = CaDescriptor {
            ca_system_id: 0x4AE1,
            ca_pid: Pid::new(0x102),
            private_data: &[],
        };
        write_cat(&mut sec, None, &[other, stale], 7).unwrap();
        let mut input = Vec::new();
        let mut pz = Packetizer::new(Pid::CAT);
        for _ in 0..3 {
            pz.packetize(&sec, |p| input.push(*p)).unwrap();
        }
        let mut w = CatWriter::new(0x4AE1, Pid::new(0x1FF1));
        let mut out = Vec::new();
        w.on_input_packet(&input[0], Duration::ZERO, &mut |p| out.push(*p));
        let mut got = parse_cat(&out);
        got.sort();
        assert_eq!(got, vec![(0x0B00, 0x101), (0x4AE1, 0x1FF1)]);
        // an input CAT on air: ours is not queued
        w.tick(Duration::from_millis(600));
        assert!(w.take_to_add(Duration::from_millis(600)).is_none());
        assert_eq!(w.counters().input_updates, 1);
        // same content again: same version, no new update; garbage is counted
        let mut bad = input[1];
        bad[10] ^= 0xFF;
        w.on_input_packet(&bad, Duration::from_millis(700), &mut |_| {});
        assert_eq!(w.counters().input_errors, 1);
        w.on_input_packet(&input[2], Duration::from_millis(800), &mut |p| out.push(*p));
        assert_eq!(w.counters().input_updates, 1);
        assert_eq!(w.counters().replaced, 2);
    }
}
