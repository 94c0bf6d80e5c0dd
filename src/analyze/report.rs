//! What the analyzer found, as a value that serialises to JSON and prints as text.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::ca::{CwReport, EcmReport, EmmReport};
use super::etr290::{Errors, Indicator, Position};
use super::pcr::PcrReport;
use super::{Analyzer, Role};

/// A CA descriptor: CA_system_ID and its PID (ECM in a PMT, EMM in the CAT).
#[derive(Debug, Clone, Serialize)]
pub struct CaInfo {
    pub ca_system_id: String,
    pub pid: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamInfo {
    pub pid: u16,
    pub stream_type: u8,
    pub kind: String,
    pub ca: Vec<CaInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgramInfo {
    pub program_number: u16,
    pub pmt_pid: u16,
    pub pcr_pid: Option<u16>,
    pub pmt_version: Option<u8>,
    /// Program-level CA descriptors (ECM PIDs).
    pub ca: Vec<CaInfo>,
    pub streams: Vec<StreamInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PidInfo {
    pub pid: u16,
    /// What the PSI says the PID is.
    pub role: String,
    pub packets: u64,
    pub bitrate_bps: Option<u64>,
    /// "clear", "scrambled", "mixed" or "no payload".
    pub scrambling: String,
    pub scrambled_packets: u64,
    pub even_packets: u64,
    pub odd_packets: u64,
    pub cc_errors: u64,
    pub pcr_packets: u64,
}

/// One ETR 290 indicator's tally.
#[derive(Debug, Clone, Serialize)]
pub struct IndicatorReport {
    pub id: &'static str,
    pub name: &'static str,
    pub priority: u8,
    pub count: u64,
    pub first: Option<Position>,
    /// Counts per PID (for the indicators that belong to a PID).
    pub pids: Vec<PidCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PidCount {
    pub pid: u16,
    pub count: u64,
}

/// TR 101 290 priority 1 and 2.
#[derive(Debug, Clone, Serialize)]
pub struct Etr290Report {
    pub priority1_errors: u64,
    pub priority2_errors: u64,
    pub indicators: Vec<IndicatorReport>,
    pub pcr: Vec<PcrReport>,
    /// 1.6's period, s.
    pub pid_timeout_s: f64,
}

/// The CA checks.
#[derive(Debug, Clone, Serialize)]
pub struct CaReport {
    pub ecm: Vec<EcmReport>,
    pub cw: Vec<CwReport>,
    pub emm: Vec<EmmReport>,
}

/// Everything the analyzer found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// "stream" (PCR) or "wall" clock.
    pub time_base: &'static str,
    /// Time covered, s.
    pub duration_s: f64,
    pub packets: u64,
    pub transport_stream_id: Option<u16>,
    pub programs: Vec<ProgramInfo>,
    /// CA descriptors of the CAT (EMM PIDs).
    pub emm: Vec<CaInfo>,
    pub pids: Vec<PidInfo>,
    /// PSI/SI sections with a bad CRC (the same as 2.2's count).
    pub psi_errors: u64,
    pub etr290: Etr290Report,
    pub ca: CaReport,
}

fn ca_list(v: &[(u16, u16)]) -> Vec<CaInfo> {
    v.iter()
        .map(|&(caid, pid)| CaInfo {
            ca_system_id: format!("{caid:#06x}"),
            pid,
        })
        .collect()
}

impl Analyzer {
    /// The tallies including 2.4, which is only judged on constant-bitrate PCR PIDs and so
    /// is settled when asked (see [`super::pcr`]).
    pub fn indicators(&self) -> Errors {
        let mut e = self.errors.clone();
        for st in &self.pids {
            if let Some(p) = &st.pcr {
                if let Some(first) = p.first_over {
                    e.add_n(Indicator::PcrAccuracyError, first, p.accuracy_errors());
                }
            }
        }
        e
    }

    /// The report so far (call [`Analyzer::finish`] first at the end of an input).
    pub fn report(&self) -> Report {
        let secs = self.now().as_secs_f64();
        let rate = |packets: u64| (secs > 0.0).then(|| (packets as f64 * 1504.0 / secs) as u64);
        let programs: Vec<ProgramInfo> = self
            .pat
            .iter()
            .map(|(&number, &pmt_pid)| match self.programs.get(&number) {
                Some(p) => ProgramInfo {
                    program_number: number,
                    pmt_pid,
                    pcr_pid: p.pcr_pid,
                    pmt_version: p.version,
                    ca: ca_list(&p.ca),
                    streams: p
                        .streams
                        .iter()
                        .map(|s| StreamInfo {
                            pid: s.pid,
                            stream_type: s.stream_type,
                            kind: format!("{:?}", s.kind).to_lowercase(),
                            ca: ca_list(&s.ca),
                        })
                        .collect(),
                },
                None => ProgramInfo {
                    program_number: number,
                    pmt_pid,
                    pcr_pid: None,
                    pmt_version: None,
                    ca: Vec::new(),
                    streams: Vec::new(),
                },
            })
            .collect();
        let roles = roles(&programs, &self.cat);
        let mut pids = Vec::new();
        let mut pcr = Vec::new();
        let mut ecm = Vec::new();
        let mut cw = Vec::new();
        let mut emm = Vec::new();
        for (pid, st) in self.pids.iter().enumerate() {
            let pid = pid as u16;
            if let (Role::Ecm(caid), Some(r)) = (st.role, &st.tables) {
                ecm.push(EcmReport::of(pid, caid, r, self.settings.ecm_limit));
            }
            if st.packets == 0 {
                continue;
            }
            if let Role::Emm(caid) = st.role {
                emm.push(EmmReport {
                    pid,
                    ca_system_id: format!("{caid:#06x}"),
                    packets: st.packets,
                    bitrate_bps: rate(st.packets),
                });
            }
            if let Some(p) = &st.pcr {
                pcr.push(PcrReport::of(pid, p));
            }
            if let Some(c) = &st.cw {
                cw.push(CwReport::of(pid, c));
            }
            pids.push(PidInfo {
                pid,
                role: roles
                    .get(&pid)
                    .cloned()
                    .unwrap_or_else(|| default_role(pid).to_owned()),
                packets: st.packets,
                bitrate_bps: rate(st.packets),
                scrambling: match (st.scrambled, st.clear_payload) {
                    (0, 0) => "no payload",
                    (0, _) => "clear",
                    (_, 0) => "scrambled",
                    _ => "mixed",
                }
                .to_owned(),
                scrambled_packets: st.scrambled,
                even_packets: st.even,
                odd_packets: st.odd,
                cc_errors: st.cc_errors,
                pcr_packets: st.pcr_packets,
            });
        }
        let errors = self.indicators();
        Report {
            time_base: if self.time.is_stream() {
                "stream"
            } else {
                "wall"
            },
            duration_s: secs,
            packets: self.index,
            transport_stream_id: self.transport_stream_id,
            programs,
            emm: ca_list(&self.cat),
            pids,
            psi_errors: errors.get(Indicator::CrcError).count,
            etr290: Etr290Report {
                priority1_errors: errors.priority_total(1),
                priority2_errors: errors.priority_total(2),
                indicators: Indicator::ALL
                    .iter()
                    .map(|&i| {
                        let t = errors.get(i);
                        IndicatorReport {
                            id: i.id(),
                            name: i.name(),
                            priority: i.priority(),
                            count: t.count,
                            first: t.first,
                            pids: t
                                .pids
                                .iter()
                                .map(|(&pid, &count)| PidCount { pid, count })
                                .collect(),
                        }
                    })
                    .collect(),
                pcr,
                pid_timeout_s: self.settings.pid_timeout.as_secs_f64(),
            },
            ca: CaReport { ecm, cw, emm },
        }
    }
}

fn default_role(pid: u16) -> &'static str {
    match pid {
        0x0000 => "PAT",
        0x0001 => "CAT",
        0x0010 => "NIT",
        0x0011 => "SDT/BAT",
        0x0012 => "EIT",
        0x0014 => "TDT/TOT",
        0x1FFF => "null",
        0x0002..=0x001F => "SI",
        _ => "unreferenced",
    }
}

fn roles(programs: &[ProgramInfo], cat: &[(u16, u16)]) -> BTreeMap<u16, String> {
    let mut m = BTreeMap::new();
    for p in programs {
        m.insert(p.pmt_pid, format!("PMT of program {}", p.program_number));
        for s in &p.streams {
            m.insert(
                s.pid,
                format!(
                    "{} (type {:#04x}) of program {}",
                    s.kind, s.stream_type, p.program_number
                ),
            );
        }
        if let Some(pcr) = p.pcr_pid {
            m.entry(pcr)
                .or_insert_with(|| format!("PCR of program {}", p.program_number));
        }
        for c in
            p.ca.iter()
                .chain(p.streams.iter().flat_map(|s| s.ca.iter()))
        {
            m.insert(
                c.pid,
                format!("ECM ({}) of program {}", c.ca_system_id, p.program_number),
            );
        }
    }
    for &(caid, pid) in cat {
        m.insert(pid, format!("EMM ({caid:#06x})"));
    }
    m
}

fn opt<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or("?".to_owned(), |v| v.to_string())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "duration: {:.2} s ({} time), {} packets, transport_stream_id {}",
            self.duration_s,
            self.time_base,
            self.packets,
            self.transport_stream_id
                .map_or("unknown".to_owned(), |t| t.to_string())
        )?;
        for p in &self.programs {
            writeln!(
                f,
                "program {} (PMT {:#06x}, PCR {}, version {})",
                p.program_number,
                p.pmt_pid,
                p.pcr_pid.map_or("?".to_owned(), |v| format!("{v:#06x}")),
                opt(p.pmt_version),
            )?;
            for c in &p.ca {
                writeln!(f, "  CA {} ECM PID {:#06x}", c.ca_system_id, c.pid)?;
            }
            for s in &p.streams {
                writeln!(
                    f,
                    "  {:#06x} {:<9} type {:#04x}",
                    s.pid, s.kind, s.stream_type
                )?;
                for c in &s.ca {
                    writeln!(f, "    CA {} ECM PID {:#06x}", c.ca_system_id, c.pid)?;
                }
            }
        }
        for c in &self.emm {
            writeln!(f, "CAT: CA {} EMM PID {:#06x}", c.ca_system_id, c.pid)?;
        }
        writeln!(
            f,
            "{:>6}  {:>8}  {:>10}  {:<10}  {:>6}  role",
            "PID", "packets", "kbit/s", "scrambling", "CC err"
        )?;
        for p in &self.pids {
            writeln!(
                f,
                "{:#06x}  {:>8}  {:>10}  {:<10}  {:>6}  {}",
                p.pid,
                p.packets,
                p.bitrate_bps
                    .map_or("?".to_owned(), |b| format!("{:.1}", b as f64 / 1000.0)),
                p.scrambling,
                p.cc_errors,
                p.role
            )?;
        }
        let e = &self.etr290;
        writeln!(
            f,
            "ETR 290: {} priority 1 errors, {} priority 2 errors",
            e.priority1_errors, e.priority2_errors
        )?;
        for i in &e.indicators {
            let first = i.first.map_or(String::new(), |p| {
                format!(
                    "  first at packet {}, {:.3} s{}",
                    p.packet,
                    p.time_s,
                    p.pid.map_or(String::new(), |v| format!(", PID {v:#06x}"))
                )
            });
            let pids: Vec<String> = i
                .pids
                .iter()
                .map(|c| format!("{:#06x}: {}", c.pid, c.count))
                .collect();
            let pids = if pids.len() > 1 {
                format!("  ({})", pids.join(", "))
            } else {
                String::new()
            };
            writeln!(
                f,
                "  {:<5} {:<34} {:>6}{first}{pids}",
                i.id, i.name, i.count
            )?;
        }
        for p in &e.pcr {
            writeln!(
                f,
                "PCR {:#06x}: {} PCRs, max interval {:.1} ms, {}",
                p.pid,
                p.pcrs,
                p.max_interval_ms,
                if p.constant_bitrate {
                    format!("accuracy max {:.0} ns", p.max_deviation_ns)
                } else {
                    format!(
                        "accuracy not judged: variable bitrate ({} of {} interval pairs at one rate)",
                        p.same_rate_pairs, p.interval_pairs
                    )
                }
            )?;
        }
        for c in &self.ca.ecm {
            writeln!(
                f,
                "ECM {:#06x} ({}): {} sections, interval mean {} ms, max {:.1} ms, {} over {} ms",
                c.pid,
                c.ca_system_id,
                c.sections,
                c.mean_interval_ms
                    .map_or("?".to_owned(), |m| format!("{m:.1}")),
                c.max_interval_ms,
                c.over_limit,
                c.limit_ms
            )?;
        }
        for c in &self.ca.cw {
            writeln!(
                f,
                "CW {:#06x}: {} key changes, {} whole periods{}",
                c.pid,
                c.changes,
                c.periods,
                match (c.min_period_s, c.max_period_s, c.mean_period_s) {
                    (Some(a), Some(b), Some(m)) =>
                        format!(", period min {a:.3} s, mean {m:.3} s, max {b:.3} s"),
                    _ => String::new(),
                }
            )?;
        }
        for c in &self.ca.emm {
            writeln!(
                f,
                "EMM {:#06x} ({}): {} packets, {} bit/s",
                c.pid,
                c.ca_system_id,
                c.packets,
                opt(c.bitrate_bps)
            )?;
        }
        Ok(())
    }
}
