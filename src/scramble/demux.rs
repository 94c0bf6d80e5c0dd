//! PSI tracking and ES selection: follows the PAT and the PMTs of the input, decides which
//! PIDs are scrambled, and rewrites the PMT of each scrambled program with a CA_descriptor.
//!
//! - A PID once scrambled stays scrambled for the run (fail closed: a PMT change never
//!   turns a scrambled PID clear).
//! - A PMT with a bad CRC or syntax is counted and ignored; the last good one stays.
//! - The input packets of a rewritten PMT PID are dropped; our sections are packetized
//!   where an input section ends, so the PMT keeps the input's repetition rate, and the
//!   [`Packetizer`] keeps the continuity counter of the PID continuous.

use crate::ts::packet::Packet;
use crate::ts::psi::TABLE_ID_PMT;
use crate::ts::psi_write::{rewrite_pmt, CaPlacement};
use crate::ts::section::{split_sections, Section};
use crate::ts::{CaDescriptor, EsKind, Packetizer, Pat, Pid, Pmt, SectionAssembler};

use super::config::{CaSystem, ScrambleConfig, MAX_CA_SYSTEMS};
use super::stats::StreamCounters;

/// What the pipeline does with a PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not (yet) described by the PSI of a selected service.
    Unknown,
    /// PAT, CAT, SI, or a PMT we pass as it is: never scrambled, passed.
    Psi,
    /// A PMT PID we rewrite: input packets dropped, our packets inserted.
    Pmt,
    /// A PMT PID we read (to select ES) and pass as it is.
    PmtPass,
    /// An elementary stream we scramble.
    Scrambled,
    /// An elementary stream of a service we leave clear.
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
}

#[derive(Debug)]
struct PmtPid {
    pid: Pid,
    assembler: SectionAssembler,
    packetizer: Packetizer,
}

/// Follows PAT and PMTs and owns the PID role table.
#[derive(Debug)]
pub struct Demux {
    roles: Vec<Role>,
    services: Vec<u16>,
    scramble_audio: bool,
    only_pids: Vec<Pid>,
    component_level: bool,
    /// The CA_descriptors to add to scrambled PMTs, one per CA system.
    ca: Vec<CaSystem>,
    pat: SectionAssembler,
    pat_crc: Option<u32>,
    /// [`Demux::ready`], kept up to date when PSI changes (it is asked for every packet).
    ready: bool,
    programs: Vec<Program>,
    pmt_pids: Vec<PmtPid>,
    scratch: Vec<u8>,
    scrambled_scratch: Vec<Pid>,
}

impl Demux {
    /// A demux for `config`; scrambled PMTs get a CA_descriptor per `config.ca_systems`.
    pub fn new(config: &ScrambleConfig) -> Self {
        let mut roles = vec![Role::Unknown; 0x2000];
        for r in roles.iter_mut().take(0x20) {
            *r = Role::Psi;
        }
        roles[usize::from(Pid::NULL.value())] = Role::Null;
        let ecm_pids = config.ca_systems.iter().map(|c| c.ecm_pid);
        for p in ecm_pids.chain(config.emm_pid) {
            roles[usize::from(p.value())] = Role::Ours;
        }
        Demux {
            roles,
            services: config.services.clone(),
            scramble_audio: config.scramble_audio,
            only_pids: config.only_pids.clone(),
            component_level: config.component_level,
            ca: config.ca_systems.clone(),
            pat: SectionAssembler::psi(),
            pat_crc: None,
            ready: false,
            programs: Vec::new(),
            pmt_pids: Vec::new(),
            scratch: Vec::with_capacity(4096),
            scrambled_scratch: Vec::new(),
        }
    }

    /// The role of `pid`.
    #[inline]
    pub fn role(&self, pid: Pid) -> Role {
        self.roles[usize::from(pid.value())]
    }

    /// True once the PAT is known and every selected program in it has a good PMT.
    pub fn ready(&self) -> bool {
        self.ready
    }

    fn update_ready(&mut self) {
        self.ready = self.pat_crc.is_some()
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

    /// Services named in the configuration that the PAT does not list.
    pub fn missing_services(&self) -> Vec<u16> {
        if self.pat_crc.is_none() {
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
            Ok(s) if s.table_id() == 0x00 => scratch.extend_from_slice(s.bytes()),
            Ok(_) => {}
            Err(_) => counters.psi_errors += 1,
        });
        if self.scratch.is_empty() {
            return;
        }
        let sections = std::mem::take(&mut self.scratch);
        for bytes in split_sections(&sections) {
            if let Ok(section) = Section::parse(bytes, bytes.len()) {
                match Pat::parse(&section) {
                    Ok(pat) => self.apply_pat(&pat, section.crc32()),
                    Err(_) => counters.psi_errors += 1,
                }
            }
        }
        self.scratch = sections;
    }

    fn apply_pat(&mut self, pat: &Pat<'_>, crc: Option<u32>) {
        if !pat.header.current_next || crc == self.pat_crc {
            return;
        }
        self.pat_crc = crc;
        let mut programs = Vec::new();
        for e in pat.entries() {
            if e.program_number == 0 {
                // network PID: SI, never scrambled
                self.set_role_if_free(e.pid, Role::Psi);
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
                },
            };
            programs.push(program);
        }
        self.programs = programs;
        self.update_ready();
        // PMT PIDs: rewritten when they carry a selected program and there is a CA_descriptor
        for i in 0..self.programs.len() {
            let pid = self.programs[i].pmt_pid;
            let rewrite =
                !self.ca.is_empty() && self.programs.iter().any(|p| p.pmt_pid == pid && p.selected);
            let role = if rewrite { Role::Pmt } else { Role::PmtPass };
            if matches!(
                self.role(pid),
                Role::Unknown | Role::Clear | Role::Pmt | Role::PmtPass
            ) {
                self.roles[usize::from(pid.value())] = role;
            }
            if !self.pmt_pids.iter().any(|p| p.pid == pid) {
                self.pmt_pids.push(PmtPid {
                    pid,
                    assembler: SectionAssembler::psi(),
                    packetizer: Packetizer::new(pid),
                });
            }
        }
    }

    fn set_role_if_free(&mut self, pid: Pid, role: Role) {
        let r = &mut self.roles[usize::from(pid.value())];
        if matches!(*r, Role::Unknown | Role::Clear) {
            *r = role;
        }
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

    fn apply_pmt(
        &mut self,
        pi: usize,
        pmt: &Pmt<'_>,
        section: &Section<'_>,
    ) -> Result<(), crate::ts::TsError> {
        let selected = self.programs[pi].selected;
        let mut scrambled = std::mem::take(&mut self.scrambled_scratch);
        scrambled.clear();
        if selected {
            for s in pmt.streams() {
                let pid = s.elementary_pid;
                if pid.is_psi_reserved() || pid == Pid::NULL {
                    continue;
                }
                let role = self.role(pid);
                if matches!(role, Role::Ours | Role::Pmt | Role::PmtPass | Role::Psi) {
                    continue;
                }
                let kind = s.kind();
                let want = if self.only_pids.is_empty() {
                    match kind {
                        EsKind::Video | EsKind::Subtitle | EsKind::Teletext => true,
                        EsKind::Audio => self.scramble_audio,
                        EsKind::Data | EsKind::Other => false,
                    }
                } else {
                    self.only_pids.contains(&pid)
                };
                if want || role == Role::Scrambled {
                    self.roles[usize::from(pid.value())] = Role::Scrambled;
                    scrambled.push(pid);
                } else {
                    self.roles[usize::from(pid.value())] = Role::Clear;
                }
            }
        }
        let p = &mut self.programs[pi];
        p.pcr_pid = Some(pmt.pcr_pid);
        p.section.clear();
        match (self.ca.is_empty(), selected && !scrambled.is_empty()) {
            (false, true) => {
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
                let mut version = (pmt.header.version + 1) & 0x1F;
                if p.out_version == Some(version) {
                    version = (version + 1) & 0x1F;
                }
                let placement = if self.component_level {
                    CaPlacement::Components(&scrambled)
                } else {
                    CaPlacement::Program
                };
                rewrite_pmt(&mut p.section, pmt, ca, placement, version)?;
                p.out_version = Some(version);
            }
            _ => {
                // as received (its own version; we own the PID's CC, not its content)
                p.section.extend_from_slice(section.bytes());
            }
        }
        p.last_crc = section.crc32();
        self.scrambled_scratch = scrambled;
        self.update_ready();
        Ok(())
    }
}
