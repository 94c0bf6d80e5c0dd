//! The CAT the mux sends once anything is scrambled: the input's CAT (every section of it)
//! with castmux's EMM CA_descriptor merged in when there is an EMM PID (same CA_system_ID
//! replaced), or one of its own when the input has none (empty without an EMM PID: a
//! scrambled stream needs a CAT, ETR 290 2.6 CAT_error).
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
use crate::ts::{Packetizer, Pid, TableSections};

/// How often the mux sends its own CAT when the input has none.
pub const CAT_REPETITION: Duration = Duration::from_millis(500);
/// How long without an input CAT before the mux sends its own.
const INPUT_CAT_GONE: Duration = Duration::from_secs(1);

/// Counters of the CAT writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CatCounters {
    /// Input CATs (all sections) with new content merged.
    pub input_updates: u64,
    /// Input CAT sections rejected (syntax, CRC); the last good merge stays.
    pub input_errors: u64,
    /// CAT packets written in place of input CAT packets.
    pub replaced: u64,
    /// CAT packets queued for insertion (no input CAT).
    pub queued: u64,
}

/// Writes the CAT, with the EMM CA_descriptor when there is one.
#[derive(Debug)]
pub struct CatWriter {
    /// (CA_system_ID, EMM PID) announced, if any.
    emm: Option<(u16, Pid)>,
    assembler: SectionAssembler,
    table: TableSections,
    packetizer: Packetizer,
    version: u8,
    section: Vec<u8>,
    scratch: Vec<u8>,
    /// CA PIDs (EMM PIDs) named by the input CAT.
    input_ca_pids: Vec<Pid>,
    last_input: Option<Duration>,
    /// The first tick (when the mux started sending).
    first_tick: Option<Duration>,
    next_due: Duration,
    queue: InsertQueue,
    counters: CatCounters,
}

impl CatWriter {
    /// A writer announcing `emm` = (CA_system_ID, EMM PID), or no EMM stream.
    pub fn new(emm: Option<(u16, Pid)>) -> Self {
        let mut w = CatWriter {
            emm,
            assembler: SectionAssembler::psi(),
            table: TableSections::new(),
            packetizer: Packetizer::new(Pid::CAT),
            version: 0,
            section: Vec::with_capacity(256),
            scratch: Vec::with_capacity(1024),
            input_ca_pids: Vec::new(),
            last_input: None,
            first_tick: None,
            next_due: Duration::ZERO,
            // wait up to 100 ms for a null slot, well within one repetition
            queue: InsertQueue::new(8, Duration::from_millis(100)),
            counters: CatCounters::default(),
        };
        w.rebuild(false);
        w
    }

    /// The counters.
    pub fn counters(&self) -> CatCounters {
        let mut c = self.counters;
        c.queued = c.queued.saturating_sub(self.queue.len() as u64);
        c
    }

    /// The CA PIDs (EMM PIDs of other CA systems) the last complete input CAT names.
    pub fn input_ca_pids(&self) -> &[Pid] {
        &self.input_ca_pids
    }

    /// Build our section from the input CAT (`with_input`: the complete table collected).
    fn rebuild(&mut self, with_input: bool) -> bool {
        let ca = self.emm.map(|(ca_system_id, pid)| CaDescriptor {
            ca_system_id,
            ca_pid: pid,
            private_data: &[],
        });
        let ca = ca.as_slice();
        let cats: Vec<Cat<'_>> = match with_input {
            true => self
                .table
                .sections()
                .filter_map(|b| Section::parse(b, b.len()).ok())
                .filter_map(|s| Cat::parse(&s).ok())
                .collect(),
            false => Vec::new(),
        };
        let descriptors: Vec<_> = cats.iter().map(|c| c.descriptors).collect();
        let mut out = Vec::with_capacity(256);
        if write_cat(&mut out, &descriptors, ca, self.version).is_err() {
            return false;
        }
        self.section = out;
        if with_input {
            self.read_input_pids();
        }
        true
    }

    /// Note the CA PIDs the collected input CAT names.
    fn read_input_pids(&mut self) {
        self.input_ca_pids.clear();
        let sections = self
            .table
            .sections()
            .filter_map(|b| Section::parse(b, b.len()).ok());
        for cat in sections.filter_map(|s| Cat::parse(&s).ok()) {
            for d in cat.descriptors.ca_descriptors() {
                if !self.input_ca_pids.contains(&d.ca_pid) {
                    self.input_ca_pids.push(d.ca_pid);
                }
            }
        }
    }

    /// An input CAT packet at `now`: it is replaced; our packets, if a section ended in it,
    /// go to `emit`. Returns true when the input CAT's content changed (see
    /// [`CatWriter::input_ca_pids`]).
    pub fn on_input_packet(
        &mut self,
        pkt: &Packet,
        now: Duration,
        emit: &mut impl FnMut(&Packet),
    ) -> bool {
        let mut sections = std::mem::take(&mut self.scratch);
        sections.clear();
        let mut errors = 0;
        self.assembler.push(pkt, |r| match r {
            Ok(s) if s.table_id() == TABLE_ID_CAT => sections.extend_from_slice(s.bytes()),
            Ok(_) => {}
            Err(_) => errors += 1,
        });
        self.counters.input_errors += errors;
        let mut changed = false;
        for bytes in split_sections(&sections) {
            let section = Section::parse(bytes, bytes.len())
                .ok()
                .filter(|s| Cat::parse(s).is_ok());
            let Some(section) = section else {
                self.counters.input_errors += 1;
                continue;
            };
            if !section.long_header().is_some_and(|h| h.current_next) {
                continue;
            }
            self.last_input = Some(now);
            self.queue.clear();
            if self.emm.is_none() {
                // nothing of ours to merge: the input's sections go out as they are, through
                // our packetizer so the CC stays continuous if ours ever takes over
                if self.table.push(&section) {
                    let v = section.long_header().map_or(0, |h| h.version);
                    // our own CAT, if the input's goes, is a new version to receivers
                    self.version = (v + 1) & 0x1F;
                    self.read_input_pids();
                    self.rebuild(false);
                    self.counters.input_updates += 1;
                    changed = true;
                }
                let mut n = 0;
                let _ = self.packetizer.packetize(section.bytes(), |p| {
                    n += 1;
                    emit(p)
                });
                self.counters.replaced += n;
                continue;
            }
            if self.table.push(&section) {
                self.version = (self.version + 1) & 0x1F;
                if self.rebuild(true) {
                    self.counters.input_updates += 1;
                    changed = true;
                } else {
                    // too big to merge: keep the last good CAT
                    self.counters.input_errors += 1;
                }
            }
            if !self.table.is_complete() {
                // until the whole input CAT is in, the input's sections are not passed on
                continue;
            }
            let mut n = 0;
            let _ = self.packetizer.packetize(&self.section, |p| {
                n += 1;
                emit(p)
            });
            self.counters.replaced += n;
        }
        self.scratch = sections;
        changed
    }

    /// Queue our CAT if the input has none and one is due at `now`.
    pub fn tick(&mut self, now: Duration) {
        let input_alive = self
            .last_input
            .is_some_and(|t| now.saturating_sub(t) < INPUT_CAT_GONE);
        // with nothing of ours to announce, give the input one window to show its own CAT
        // first, so an input that has one is passed as it is
        let first = *self.first_tick.get_or_insert(now);
        let waiting = self.emm.is_none() && now.saturating_sub(first) < INPUT_CAT_GONE;
        if input_alive || waiting || now < self.next_due {
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
        let mut w = CatWriter::new(Some((0x4AE1, Pid::new(0x1FF1))));
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
        write_cat(&mut sec, &[], &[other, stale], 7).unwrap();
        let mut input = Vec::new();
        let mut pz = Packetizer::new(Pid::CAT);
        for _ in 0..3 {
            pz.packetize(&sec, |p| input.push(*p)).unwrap();
        }
        let mut w = CatWriter::new(Some((0x4AE1, Pid::new(0x1FF1))));
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

    #[test]
    fn a_cat_in_two_sections_is_merged_whole_or_without_an_emm_pid_passed_on() {
        use crate::ts::psi_write::SectionWriter;
        use crate::ts::section::{LongHeader, MAX_PSI_SECTION};
        // two sections, a CAS in each
        let section = |n: u8, ca: CaDescriptor<'_>| {
            let mut out = Vec::new();
            let h = LongHeader {
                table_id: TABLE_ID_CAT,
                table_id_extension: 0xFFFF,
                version: 4,
                current_next: true,
                section_number: n,
                last_section_number: 1,
            };
            let mut w = SectionWriter::long(&mut out, &h, MAX_PSI_SECTION);
            w.put_ca(&ca).unwrap();
            w.finish().unwrap();
            out
        };
        let a = CaDescriptor {
            ca_system_id: 0x0B00,
            ca_pid: Pid::new(0x101),
            private_data: &[],
        };
        let b = CaDescriptor {
            ca_system_id: 0x0500,
            ca_pid: Pid::new(0x102),
            private_data: &[],
        };
        let mut pz = Packetizer::new(Pid::CAT);
        let mut input = Vec::new();
        for (n, ca) in [(0, a), (1, b)] {
            pz.packetize(&section(n, ca), |p| input.push(*p)).unwrap();
        }
        // with an EMM stream: merged once whole, into one section of ours
        let mut w = CatWriter::new(Some((0x4AE1, Pid::new(0x1FF1))));
        let mut out = Vec::new();
        assert!(!w.on_input_packet(&input[0], Duration::ZERO, &mut |p| out.push(*p)));
        assert!(out.is_empty(), "half a CAT is not merged");
        assert!(w.on_input_packet(&input[1], Duration::ZERO, &mut |p| out.push(*p)));
        let mut got = parse_cat(&out);
        got.sort();
        assert_eq!(
            got,
            vec![(0x0500, 0x102), (0x0B00, 0x101), (0x4AE1, 0x1FF1)]
        );
        assert_eq!(w.input_ca_pids(), &[Pid::new(0x101), Pid::new(0x102)]);

        // without: the input's sections go out as they are
        let mut w = CatWriter::new(None);
        let mut out = Vec::new();
        assert!(!w.on_input_packet(&input[0], Duration::ZERO, &mut |p| out.push(*p)));
        assert!(w.on_input_packet(&input[1], Duration::ZERO, &mut |p| out.push(*p)));
        assert_eq!(out, input);
        assert_eq!(w.input_ca_pids(), &[Pid::new(0x101), Pid::new(0x102)]);
    }

    #[test]
    fn without_an_emm_pid_our_own_cat_is_empty() {
        let mut w = CatWriter::new(None);
        w.tick(Duration::ZERO);
        w.tick(Duration::from_millis(900));
        assert!(
            w.take_to_add(Duration::from_millis(900)).is_none(),
            "the input's CAT may come"
        );
        w.tick(INPUT_CAT_GONE);
        let p = w
            .take_to_add(INPUT_CAT_GONE + Duration::from_millis(100))
            .expect("a CAT packet");
        assert_eq!(parse_cat(&[p]), vec![]);
    }
}
