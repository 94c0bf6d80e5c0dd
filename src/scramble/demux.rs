//! PSI tracking and ES selection: follows the PAT (all its sections), the PMTs and the
//! CAT of the input, decides what every PID is, and rewrites the PMT of each scrambled
//! program with a CA_descriptor.
//!
//! Fail closed, by construction:
//! - Every ES of a selected service is scrambled whatever its stream type (private PES,
//!   AV1, JPEG 2000, SMPTE 302M, data, ...), unless the operator excludes it (`--no-audio`,
//!   an exclusion list, or an explicit `--only-pid` list). Never scrambled: PSI/SI, PMT
//!   PIDs, PCR-only PIDs, ECM/EMM PIDs, null packets.
//! - A PID that no current PSI names ([`Role::Unknown`]) is never sent as it is: its
//!   packets become null packets and are counted, before PSI is complete and after (an ES
//!   that shows up before the PMT naming it, a PID moved mid-stream). A PID is passed clear
//!   only when the current PSI says it belongs to no selected service (an ES of another
//!   service, an excluded ES, a PCR-only PID, another CAS's ECM/EMM PID).
//! - A table is complete only with all its sections ([`TableSections`]).
//! - A PID once scrambled stays scrambled for the run (a PMT change never turns it clear).
//! - A PMT with a bad CRC or syntax is counted and ignored; the last good one stays.
//! - The input packets of a rewritten PMT PID are dropped; our sections are packetized
//!   where an input section ends, so the PMT keeps the input's repetition rate, and the
//!   [`Packetizer`] keeps the continuity counter of the PID continuous.
//!
//! Roles are recomputed from the current PSI whenever it changes (rare), so the per-packet
//! lookup stays one table read.

use crate::ts::packet::Packet;
use crate::ts::psi::{TABLE_ID_PAT, TABLE_ID_PMT};
use crate::ts::psi_write::{rewrite_pmt, CaPlacement};
use crate::ts::section::{split_sections, Section};
use crate::ts::{
    CaDescriptor, EsKind, Packetizer, Pat, PatEntry, Pid, Pmt, SectionAssembler, TableSections,
};

use super::config::{CaSystem, ScrambleConfig, MAX_CA_SYSTEMS};
use super::stats::StreamCounters;

/// What the pipeline does with a PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Named by no current PSI: never passed as it is (nulled, counted).
    Unknown,
    /// PAT, CAT, SI, a network PID: never scrambled, passed.
    Psi,
    /// A PMT PID we rewrite: input packets dropped, our packets inserted.
    Pmt,
    /// A PMT PID we read (to select ES) and pass as it is.
    PmtPass,
    /// An elementary stream we scramble.
    Scrambled,
    /// Named by the PSI and not ours to scramble: an ES of another service or excluded by
    /// the operator, a PCR-only PID, another CAS's ECM or EMM PID. Passed.
    Clear,
    /// Null packets.
    Null,
    /// A PID the mux writes itself (ECM, EMM); input packets on it are dropped.
    Ours,
}

#[derive(Debug)]
struct Program {
    number: u16,
    pmt_pid: Pid,
    selected: bool,
    /// CRC of the last good input PMT section (change detection).
    last_crc: Option<u32>,
    out_version: Option<u8>,
    /// The section we send for this program (rewritten or as received).
    section: Vec<u8>,
    pcr_pid: Option<Pid>,
    /// The ES of the last good PMT, each with whether it is scrambled.
    streams: Vec<(Pid, bool)>,
    /// ECM PIDs of other CA systems named by the input PMT.
    other_ca_pids: Vec<Pid>,
}

#[derive(Debug)]
struct PmtPid {
    pid: Pid,
    assembler: SectionAssembler,
    packetizer: Packetizer,
}

/// Follows PAT, PMTs and CAT, and owns the PID role table.
#[derive(Debug)]
pub struct Demux {
    roles: Vec<Role>,
    services: Vec<u16>,
    scramble_audio: bool,
    only_pids: Vec<Pid>,
    exclude_pids: Vec<Pid>,
    component_level: bool,
    /// The CA_descriptors to add to scrambled PMTs, one per CA system.
    ca: Vec<CaSystem>,
    /// The PIDs the mux writes (ECM, EMM).
    ours: Vec<Pid>,
    pat: SectionAssembler,
    pat_table: TableSections,
    /// Network PIDs (program 0) of the current PAT.
    nit_pids: Vec<Pid>,
    /// EMM PIDs of the input CAT (other CA systems').
    emm_pids: Vec<Pid>,
    /// [`Demux::ready`], kept up to date when PSI changes (it is asked for every packet).
    ready: bool,
    any_scrambled: bool,
    programs: Vec<Program>,
    pmt_pids: Vec<PmtPid>,
    scratch: Vec<u8>,
}

impl Demux {
    /// A demux for `config`; scrambled PMTs get a CA_descriptor per `config.ca_systems`.
    pub fn new(config: &ScrambleConfig) -> Self {
        let mut d = Demux {
            roles: vec![Role::Unknown; 0x2000],
            services: config.services.clone(),
            scramble_audio: config.scramble_audio,
            only_pids: config.only_pids.clone(),
            exclude_pids: config.exclude_pids.clone(),
            component_level: config.component_level,
            ca: config.ca_systems.clone(),
            ours: (config.ca_systems.iter().map(|c| c.ecm_pid))
                .chain(config.emm_pid)
                .collect(),
            pat: SectionAssembler::psi(),
            pat_table: TableSections::new(),
            nit_pids: Vec::new(),
            emm_pids: Vec::new(),
            ready: false,
            any_scrambled: false,
            programs: Vec::new(),
            pmt_pids: Vec::new(),
            scratch: Vec::with_capacity(4096),
        };
        d.recompute_roles();
        d
    }

    /// The role of `pid`.
    #[inline]
    pub fn role(&self, pid: Pid) -> Role {
        self.roles[usize::from(pid.value())]
    }

    /// True once the whole PAT is known and every selected program in it has a good PMT.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// True once any PID has been given the scrambled role.
    pub fn any_scrambled(&self) -> bool {
        self.any_scrambled
    }

    fn update_ready(&mut self) {
        self.ready = self.pat_table.is_complete()
            && self
                .programs
                .iter()
                .all(|p| !p.selected || p.last_crc.is_some());
    }

    /// The PCR PID of the first selected program with a known PMT (drives the stream clock).
    pub fn first_pcr_pid(&self) -> Option<Pid> {
        self.programs
            .iter()
            .filter(|p| p.selected)
            .find_map(|p| p.pcr_pid)
    }

    /// Whether the whole PAT has been seen.
    pub fn pat_known(&self) -> bool {
        self.pat_table.is_complete()
    }

    /// Services named in the configuration that the PAT does not list.
    pub fn missing_services(&self) -> Vec<u16> {
        if !self.pat_table.is_complete() {
            return Vec::new();
        }
        self.services
            .iter()
            .copied()
            .filter(|s| !self.programs.iter().any(|p| p.number == *s))
            .collect()
    }

    /// The scrambled PIDs, in PID order.
    pub fn scrambled_pids(&self) -> Vec<Pid> {
        (0..0x2000u16)
            .map(Pid::new)
            .filter(|p| self.role(*p) == Role::Scrambled)
            .collect()
    }

    fn is_selected(&self, program_number: u16) -> bool {
        program_number != 0 && (self.services.is_empty() || self.services.contains(&program_number))
    }

    /// Feed a PAT packet (the packet itself is passed by the caller).
    pub fn on_pat_packet(&mut self, pkt: &Packet, counters: &mut StreamCounters) {
        let Demux { pat, scratch, .. } = self;
        scratch.clear();
        pat.push(pkt, |r| match r {
            Ok(s) if s.table_id() == TABLE_ID_PAT => scratch.extend_from_slice(s.bytes()),
            Ok(_) => {}
            Err(_) => counters.psi_errors += 1,
        });
        if self.scratch.is_empty() {
            return;
        }
        let sections = std::mem::take(&mut self.scratch);
        let mut complete = false;
        for bytes in split_sections(&sections) {
            let Ok(section) = Section::parse(bytes, bytes.len()) else {
                counters.psi_errors += 1;
                continue;
            };
            if Pat::parse(&section).is_err() {
                counters.psi_errors += 1;
                continue;
            }
            complete |= self.pat_table.push(&section);
        }
        self.scratch = sections;
        if complete {
            // every section parsed when it was pushed; a PSI change, so collecting is fine
            let entries: Vec<PatEntry> = self
                .pat_table
                .sections()
                .filter_map(|b| Section::parse(b, b.len()).ok())
                .filter_map(|s| Pat::parse(&s).ok().map(|p| p.entries().collect::<Vec<_>>()))
                .flatten()
                .collect();
            self.apply_pat(&entries);
        }
    }

    fn apply_pat(&mut self, entries: &[PatEntry]) {
        let mut programs = Vec::new();
        self.nit_pids.clear();
        for e in entries {
            if e.program_number == 0 {
                self.nit_pids.push(e.pid);
                continue;
            }
            if programs
                .iter()
                .any(|p: &Program| p.number == e.program_number)
            {
                // a program listed twice: the first entry counts
                continue;
            }
            let selected = self.is_selected(e.program_number);
            let old = self
                .programs
                .iter()
                .position(|p| p.number == e.program_number && p.pmt_pid == e.pid);
            let program = match old {
                Some(i) => self.programs.swap_remove(i),
                None => Program {
                    number: e.program_number,
                    pmt_pid: e.pid,
                    selected,
                    last_crc: None,
                    out_version: None,
                    section: Vec::new(),
                    pcr_pid: None,
                    streams: Vec::new(),
                    other_ca_pids: Vec::new(),
                },
            };
            programs.push(program);
        }
        self.programs = programs;
        for p in &self.programs {
            if !self.pmt_pids.iter().any(|x| x.pid == p.pmt_pid) {
                self.pmt_pids.push(PmtPid {
                    pid: p.pmt_pid,
                    assembler: SectionAssembler::psi(),
                    packetizer: Packetizer::new(p.pmt_pid),
                });
            }
        }
        self.recompute_roles();
        self.update_ready();
    }

    /// The EMM PIDs the input CAT names (other CA systems'): passed clear from now on.
    pub fn set_input_emm_pids(&mut self, pids: &[Pid]) {
        if self.emm_pids != pids {
            self.emm_pids.clear();
            self.emm_pids.extend_from_slice(pids);
            self.recompute_roles();
        }
    }

    /// Give every PID its role from the current PSI. In order of precedence: our ECM/EMM
    /// PIDs (dropped from the input), scrambled (once scrambled, always), the ES of selected
    /// services (fail closed: over the PSI range and PMT PIDs too, where a hostile or
    /// broken PMT may put one), the fixed roles (PSI range, null), PMT PIDs, network PIDs,
    /// then what the PSI names as not ours to scramble; everything else is unknown.
    fn recompute_roles(&mut self) {
        for (i, r) in self.roles.iter_mut().enumerate() {
            *r = match (i, *r) {
                (_, Role::Scrambled) => Role::Scrambled,
                (0..=0x1F, _) => Role::Psi,
                (0x1FFF, _) => Role::Null,
                _ => Role::Unknown,
            };
        }
        for p in &self.ours {
            self.roles[usize::from(p.value())] = Role::Ours;
        }
        for i in 0..self.programs.len() {
            let pid = self.programs[i].pmt_pid;
            let rewrite =
                !self.ca.is_empty() && self.programs.iter().any(|p| p.pmt_pid == pid && p.selected);
            let r = &mut self.roles[usize::from(pid.value())];
            if matches!(*r, Role::Unknown | Role::PmtPass) {
                // PmtPass: another program on the same PMT PID was seen first
                *r = if rewrite { Role::Pmt } else { Role::PmtPass };
            }
        }
        for p in self.programs.iter().filter(|p| p.selected) {
            for (pid, scrambled) in &p.streams {
                let r = &mut self.roles[usize::from(pid.value())];
                if *scrambled && *r != Role::Ours {
                    *r = Role::Scrambled;
                }
            }
        }
        for pid in &self.nit_pids {
            let r = &mut self.roles[usize::from(pid.value())];
            if *r == Role::Unknown {
                *r = Role::Psi;
            }
        }
        let named = self.programs.iter().flat_map(|p| {
            p.streams
                .iter()
                .map(|(pid, _)| *pid)
                .chain(p.pcr_pid)
                .chain(p.other_ca_pids.iter().copied())
        });
        for pid in named.chain(self.emm_pids.iter().copied()) {
            let r = &mut self.roles[usize::from(pid.value())];
            if *r == Role::Unknown {
                *r = Role::Clear;
            }
        }
        self.any_scrambled = self.roles.contains(&Role::Scrambled);
    }

    /// Feed a packet of a PMT PID. Returns true if the caller passes the input packet
    /// (PMT passed as it is), false if it is replaced: then our PMT packets, if a section
    /// ended in this packet, have been given to `emit`.
    pub fn on_pmt_packet(
        &mut self,
        pkt: &Packet,
        counters: &mut StreamCounters,
        emit: &mut impl FnMut(&Packet),
    ) -> bool {
        let pid = crate::ts::PacketRef::new(pkt).pid();
        let Some(idx) = self.pmt_pids.iter().position(|p| p.pid == pid) else {
            return true;
        };
        let rewrite = self.role(pid) == Role::Pmt;
        let mut sections = std::mem::take(&mut self.scratch);
        sections.clear();
        self.pmt_pids[idx].assembler.push(pkt, |r| match r {
            Ok(s) if s.table_id() == TABLE_ID_PMT => sections.extend_from_slice(s.bytes()),
            Ok(_) => {}
            Err(_) => counters.psi_errors += 1,
        });
        for bytes in split_sections(&sections) {
            let Ok(section) = Section::parse(bytes, bytes.len()) else {
                continue;
            };
            let pmt = match Pmt::parse(&section) {
                Ok(p) => p,
                Err(_) => {
                    counters.psi_errors += 1;
                    continue;
                }
            };
            let Some(pi) = self
                .programs
                .iter()
                .position(|p| p.number == pmt.program_number() && p.pmt_pid == pid)
            else {
                continue;
            };
            if !pmt.header.current_next {
                continue;
            }
            if self.programs[pi].last_crc != section.crc32() {
                counters.pmt_updates += 1;
                if let Err(_e) = self.apply_pmt(pi, &pmt, &section) {
                    counters.psi_errors += 1;
                    continue;
                }
            }
            if rewrite {
                let p = &self.programs[pi];
                if !p.section.is_empty() {
                    let _ = self.pmt_pids[idx]
                        .packetizer
                        .packetize(&p.section, |pk| emit(pk));
                }
            }
        }
        self.scratch = sections;
        !rewrite
    }

    /// Whether the operator's settings scramble `pid` of a selected service, of `kind`.
    fn wanted(&self, pid: Pid, kind: EsKind) -> bool {
        if !self.only_pids.is_empty() {
            return self.only_pids.contains(&pid);
        }
        if self.exclude_pids.contains(&pid) {
            return false;
        }
        kind != EsKind::Audio || self.scramble_audio
    }

    fn apply_pmt(
        &mut self,
        pi: usize,
        pmt: &Pmt<'_>,
        section: &Section<'_>,
    ) -> Result<(), crate::ts::TsError> {
        let selected = self.programs[pi].selected;
        let mut streams = Vec::new();
        for s in pmt.streams() {
            let pid = s.elementary_pid;
            // an ES of a selected service is scrambled wherever it is (fail closed), but
            // on the null PID, whose packets every receiver discards unread
            if pid == Pid::NULL || (pid.is_psi_reserved() && !selected) {
                continue;
            }
            // a PID that is already scrambled stays so whatever this PMT says
            let want =
                selected && (self.wanted(pid, s.kind()) || self.role(pid) == Role::Scrambled);
            streams.push((pid, want));
        }
        let mut other_ca_pids: Vec<Pid> = pmt
            .descriptors
            .ca_descriptors()
            .chain(pmt.streams().flat_map(|s| s.descriptors.ca_descriptors()))
            .filter(|d| !self.ca.iter().any(|c| c.ca_system_id == d.ca_system_id))
            .map(|d| d.ca_pid)
            .collect();
        other_ca_pids.dedup();
        // a PSI change: a new buffer, so a failed rewrite leaves the last good section
        let mut out = Vec::with_capacity(section.bytes().len() + 64);
        let scrambled: Vec<Pid> = streams.iter().filter(|s| s.1).map(|s| s.0).collect();
        // on an error the last good PMT stays in force (its roles and section)
        self.write_section(pi, pmt, section, &scrambled, &mut out)?;
        let p = &mut self.programs[pi];
        p.section = out;
        p.pcr_pid = Some(pmt.pcr_pid);
        p.streams = streams;
        p.other_ca_pids = other_ca_pids;
        p.last_crc = section.crc32();
        self.recompute_roles();
        self.update_ready();
        Ok(())
    }

    /// Write the section we send for program `pi` into `out`: rewritten with our
    /// CA_descriptors when it has scrambled ES, else as received.
    fn write_section(
        &mut self,
        pi: usize,
        pmt: &Pmt<'_>,
        section: &Section<'_>,
        scrambled: &[Pid],
        out: &mut Vec<u8>,
    ) -> Result<(), crate::ts::TsError> {
        if self.ca.is_empty() || scrambled.is_empty() {
            // as received (its own version; we own the PID's CC, not its content)
            out.extend_from_slice(section.bytes());
            return Ok(());
        }
        // at most a handful of systems: a small array, not a per-PMT allocation
        let mut ca = [CaDescriptor {
            ca_system_id: 0,
            ca_pid: Pid::NULL,
            private_data: &[],
        }; MAX_CA_SYSTEMS];
        let n = self.ca.len().min(MAX_CA_SYSTEMS);
        for (d, c) in ca.iter_mut().zip(&self.ca) {
            *d = CaDescriptor {
                ca_system_id: c.ca_system_id,
                ca_pid: c.ecm_pid,
                private_data: &c.private_data,
            };
        }
        let ca = &ca[..n];
        let p = &mut self.programs[pi];
        let mut version = (pmt.header.version + 1) & 0x1F;
        if p.out_version == Some(version) {
            version = (version + 1) & 0x1F;
        }
        let placement = if self.component_level {
            CaPlacement::Components(scrambled)
        } else {
            CaPlacement::Program
        };
        rewrite_pmt(out, pmt, ca, placement, version)?;
        p.out_version = Some(version);
        Ok(())
    }
}
