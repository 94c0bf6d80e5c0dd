//! `castmux probe`: programs, PIDs with stream types, bitrates, scrambling state per PID,
//! CA descriptors with ECM/EMM PIDs, continuity errors.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use castmux::io::{Input, InputOptions, InputUrl, PacketBatch, ReadStatus};
use castmux::scramble::clock::Clock;
use castmux::scramble::ClockMode;
use castmux::ts::packet::Packet;
use castmux::ts::{Cat, PacketRef, Pat, Pid, Pmt, Section, SectionAssembler};
use clap::Args;
use serde::Serialize;

use super::args;

/// How long stdin and live inputs are probed when no --duration is given.
const DEFAULT_LIVE_DURATION: Duration = Duration::from_secs(5);

/// Options of `castmux probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Input: udp://..., srt://..., a file, or - for stdin.
    input: String,
    /// How much of the stream to look at: stream time (PCR) for files and stdin, wall
    /// clock for live inputs (udp, srt). Default: the whole file; 5s for stdin and live
    /// inputs. The output says which it was.
    #[arg(long, value_name = "DURATION", value_parser = args::probe_duration)]
    duration: Option<Duration>,
    /// Print JSON instead of text. Default text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct CaInfo {
    ca_system_id: String,
    pid: u16,
}

#[derive(Debug, Serialize)]
struct StreamInfo {
    pid: u16,
    stream_type: u8,
    kind: String,
    ca: Vec<CaInfo>,
}

#[derive(Debug, Serialize)]
struct ProgramInfo {
    program_number: u16,
    pmt_pid: u16,
    pcr_pid: Option<u16>,
    pmt_version: Option<u8>,
    /// Program-level CA descriptors (ECM PIDs).
    ca: Vec<CaInfo>,
    streams: Vec<StreamInfo>,
}

#[derive(Debug, Default, Serialize)]
struct PidInfo {
    pid: u16,
    /// What the PSI says the PID is.
    role: String,
    packets: u64,
    bitrate_bps: Option<u64>,
    /// "clear", "scrambled", "mixed" or "no payload".
    scrambling: String,
    scrambled_packets: u64,
    even_packets: u64,
    odd_packets: u64,
    cc_errors: u64,
    pcr_packets: u64,
    #[serde(skip)]
    last_cc: Option<u8>,
    #[serde(skip)]
    clear_payload: u64,
}

#[derive(Debug, Serialize)]
struct ProbeReport {
    input: String,
    /// What was read: "whole file", or the limit that stopped the read.
    read: String,
    /// Stream time (PCR) or wall time covered, in seconds.
    duration_s: f64,
    packets: u64,
    transport_stream_id: Option<u16>,
    programs: Vec<ProgramInfo>,
    /// CA descriptors of the CAT (EMM PIDs).
    emm: Vec<CaInfo>,
    pids: Vec<PidInfo>,
    /// Sections dropped for bad CRC or syntax.
    psi_errors: u64,
}

#[derive(Default)]
struct Tables {
    tsid: Option<u16>,
    /// program_number -> PMT PID
    pat: BTreeMap<u16, u16>,
    pmts: BTreeMap<u16, ProgramInfo>,
    emm: Vec<CaInfo>,
    errors: u64,
}

fn ca_list<'a>(it: impl Iterator<Item = castmux::ts::CaDescriptor<'a>>) -> Vec<CaInfo> {
    it.map(|c| CaInfo {
        ca_system_id: format!("{:#06x}", c.ca_system_id),
        pid: c.ca_pid.value(),
    })
    .collect()
}

impl Tables {
    fn on_section(&mut self, pid: u16, s: &Section<'_>) {
        match (pid, s.table_id()) {
            (0, 0x00) => match Pat::parse(s) {
                Ok(pat) => {
                    self.tsid = Some(pat.transport_stream_id());
                    self.pat = pat
                        .entries()
                        .filter(|e| e.program_number != 0)
                        .map(|e| (e.program_number, e.pid.value()))
                        .collect();
                }
                Err(_) => self.errors += 1,
            },
            (1, 0x01) => match Cat::parse(s) {
                Ok(cat) => self.emm = ca_list(cat.descriptors.ca_descriptors()),
                Err(_) => self.errors += 1,
            },
            (_, 0x02) => match Pmt::parse(s) {
                Ok(pmt) => {
                    let info = ProgramInfo {
                        program_number: pmt.program_number(),
                        pmt_pid: pid,
                        pcr_pid: Some(pmt.pcr_pid.value()),
                        pmt_version: Some(pmt.header.version),
                        ca: ca_list(pmt.descriptors.ca_descriptors()),
                        streams: pmt
                            .streams()
                            .map(|st| StreamInfo {
                                pid: st.elementary_pid.value(),
                                stream_type: st.stream_type.0,
                                kind: format!("{:?}", st.kind()).to_lowercase(),
                                ca: ca_list(st.descriptors.ca_descriptors()),
                            })
                            .collect(),
                    };
                    self.pmts.insert(pmt.program_number(), info);
                }
                Err(_) => self.errors += 1,
            },
            _ => {}
        }
    }
}

pub fn run(a: ProbeArgs) -> anyhow::Result<()> {
    let url: InputUrl = a.input.parse().context("input")?;
    let mut input = Input::open(&url, &InputOptions::default())
        .with_context(|| format!("opening input {}", url.display()))?;
    let live = input.is_live();
    // a file is read to its end unless told otherwise; a pipe or a live input may never end
    let limit = match (a.duration, &url) {
        (Some(d), _) => Some(d),
        (None, InputUrl::File(_)) => None,
        (None, _) => Some(DEFAULT_LIVE_DURATION),
    };
    let mut stopped_by_limit = false;
    let mut clock = Clock::new(if live {
        ClockMode::Wall
    } else {
        ClockMode::Stream
    });
    let started = Instant::now();
    let mut pids: Vec<PidInfo> = (0..0x2000u16)
        .map(|pid| PidInfo {
            pid,
            ..PidInfo::default()
        })
        .collect();
    let mut asms: BTreeMap<u16, SectionAssembler> = BTreeMap::new();
    let mut tables = Tables::default();
    let mut batch = PacketBatch::with_capacity(512);
    let mut total = 0u64;
    let mut scratch: Vec<Vec<u8>> = Vec::new();
    'read: loop {
        match input.read_batch(&mut batch, Duration::from_millis(50))? {
            ReadStatus::Packets(_) => {}
            ReadStatus::TimedOut => {
                if limit.is_some_and(|l| started.elapsed() >= l) {
                    stopped_by_limit = true;
                    break;
                }
                continue;
            }
            ReadStatus::EndOfStream => break,
        }
        for pkt in batch.packets() {
            total += 1;
            let p = PacketRef::new(pkt);
            if !p.sync_ok() {
                continue;
            }
            let pid = p.pid();
            let info = &mut pids[usize::from(pid.value())];
            count(info, &p);
            if let Some(pcr) = p.pcr() {
                if clock.pcr_pid().is_none() {
                    clock.set_pcr_pid(pid);
                }
                if clock.pcr_pid() == Some(pid) {
                    clock.on_pcr(pcr);
                }
            }
            let is_psi = pid.value() <= 1 || tables.pat.values().any(|v| *v == pid.value());
            if is_psi {
                psi_packet(pkt, pid, &mut asms, &mut tables, &mut scratch);
            }
            if limit.is_some_and(|l| clock.now() >= l) {
                stopped_by_limit = true;
                break 'read;
            }
        }
    }
    let dur = clock.now();
    let secs = dur.as_secs_f64();
    let mut programs: Vec<ProgramInfo> = Vec::new();
    for (num, pmt_pid) in &tables.pat {
        match tables.pmts.remove(num) {
            Some(p) => programs.push(p),
            None => programs.push(ProgramInfo {
                program_number: *num,
                pmt_pid: *pmt_pid,
                pcr_pid: None,
                pmt_version: None,
                ca: Vec::new(),
                streams: Vec::new(),
            }),
        }
    }
    let roles = roles(&programs, &tables);
    let pids: Vec<PidInfo> = pids
        .into_iter()
        .filter(|p| p.packets > 0)
        .map(|mut p| {
            p.bitrate_bps = (secs > 0.0).then(|| (p.packets as f64 * 188.0 * 8.0 / secs) as u64);
            p.scrambling = match (p.scrambled_packets, p.clear_payload) {
                (0, 0) => "no payload",
                (0, _) => "clear",
                (_, 0) => "scrambled",
                _ => "mixed",
            }
            .to_owned();
            p.role = roles
                .get(&p.pid)
                .cloned()
                .unwrap_or_else(|| default_role(p.pid));
            p
        })
        .collect();
    let read = match (stopped_by_limit, limit) {
        (true, Some(l)) => format!(
            "the first {} of {} time (--duration{}); give --duration to read more",
            format_duration(l),
            if live { "wall-clock" } else { "stream" },
            if a.duration.is_none() {
                ", the default for stdin and live inputs"
            } else {
                ""
            }
        ),
        _ if matches!(url, InputUrl::File(_)) => "whole file".to_owned(),
        _ => "to the end of the input".to_owned(),
    };
    let report = ProbeReport {
        input: a.input.clone(),
        read,
        duration_s: secs,
        packets: total,
        transport_stream_id: tables.tsid,
        programs,
        emm: tables.emm,
        pids,
        psi_errors: tables.errors,
    };
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_text(&report)?;
    }
    Ok(())
}

fn count(info: &mut PidInfo, p: &PacketRef<'_>) {
    info.packets += 1;
    let payload = p.has_payload();
    let cc = p.cc().value();
    if let Some(last) = info.last_cc {
        let expected = if payload { (last + 1) & 0x0F } else { last };
        if cc != expected && !(payload && cc == last) && !p.discontinuity() && p.pid() != Pid::NULL
        {
            info.cc_errors += 1;
        }
    }
    info.last_cc = Some(cc);
    if p.pcr().is_some() {
        info.pcr_packets += 1;
    }
    if payload {
        match p.tsc().bits() {
            2 => {
                info.scrambled_packets += 1;
                info.even_packets += 1;
            }
            3 => {
                info.scrambled_packets += 1;
                info.odd_packets += 1;
            }
            1 => info.scrambled_packets += 1,
            _ => info.clear_payload += 1,
        }
    }
}

fn psi_packet(
    pkt: &Packet,
    pid: Pid,
    asms: &mut BTreeMap<u16, SectionAssembler>,
    tables: &mut Tables,
    scratch: &mut Vec<Vec<u8>>,
) {
    let asm = asms
        .entry(pid.value())
        .or_insert_with(SectionAssembler::psi);
    scratch.clear();
    let mut errors = 0;
    asm.push(pkt, |r| match r {
        Ok(s) => scratch.push(s.bytes().to_vec()),
        Err(_) => errors += 1,
    });
    tables.errors += errors;
    for bytes in scratch.iter() {
        if let Ok(s) = Section::parse(bytes, bytes.len()) {
            tables.on_section(pid.value(), &s);
        }
    }
}

fn default_role(pid: u16) -> String {
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
    .to_owned()
}

fn roles(programs: &[ProgramInfo], tables: &Tables) -> BTreeMap<u16, String> {
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
    for c in &tables.emm {
        m.insert(c.pid, format!("EMM ({})", c.ca_system_id));
    }
    m
}

fn print_text(r: &ProbeReport) -> Result<(), super::out::StdoutError> {
    outln!("input: {} (read: {})", r.input, r.read)?;
    outln!(
        "duration: {:.2} s, {} packets, transport_stream_id {}",
        r.duration_s,
        r.packets,
        r.transport_stream_id
            .map_or("unknown".to_owned(), |t| t.to_string())
    )?;
    for p in &r.programs {
        outln!(
            "program {} (PMT {:#06x}, PCR {}, version {})",
            p.program_number,
            p.pmt_pid,
            p.pcr_pid.map_or("?".to_owned(), |v| format!("{v:#06x}")),
            p.pmt_version.map_or("?".to_owned(), |v| v.to_string()),
        )?;
        for c in &p.ca {
            outln!("  CA {} ECM PID {:#06x}", c.ca_system_id, c.pid)?;
        }
        for s in &p.streams {
            outln!("  {:#06x} {:<9} type {:#04x}", s.pid, s.kind, s.stream_type)?;
            for c in &s.ca {
                outln!("    CA {} ECM PID {:#06x}", c.ca_system_id, c.pid)?;
            }
        }
    }
    for c in &r.emm {
        outln!("CAT: CA {} EMM PID {:#06x}", c.ca_system_id, c.pid)?;
    }
    outln!(
        "{:>6}  {:>8}  {:>10}  {:<10}  {:>6}  role",
        "PID",
        "packets",
        "kbit/s",
        "scrambling",
        "CC err"
    )?;
    for p in &r.pids {
        outln!(
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
    if r.psi_errors > 0 {
        outln!("PSI errors: {}", r.psi_errors)?;
    }
    Ok(())
}

/// `5s`, `1.5s`, `250ms`: a limit as the user would write it.
fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}
