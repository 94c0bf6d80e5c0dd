//! Builds transport streams with the PSI layouts the fail-closed tests need: a PAT in
//! several sections, PMTs with any stream types and descriptors, ES packets on any PID.

use std::collections::HashMap;

use castmux::ts::psi_write::SectionWriter;
use castmux::ts::section::MAX_PSI_SECTION;
use castmux::ts::{LongHeader, Packetizer, Pid};

use super::Packet;

/// A small deterministic PRNG (xorshift64*), so a failing seed can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// 0..n
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One ES entry of a PMT: stream_type, PID, ES_info descriptors (raw bytes).
#[derive(Debug, Clone)]
pub struct Es {
    pub stream_type: u8,
    pub pid: u16,
    pub descriptors: Vec<u8>,
}

impl Es {
    pub fn new(stream_type: u8, pid: u16) -> Self {
        Es {
            stream_type,
            pid,
            descriptors: Vec::new(),
        }
    }
    /// With a registration_descriptor (tag 0x05) naming `format`.
    pub fn registered(stream_type: u8, pid: u16, format: &[u8; 4]) -> Self {
        let mut d = vec![0x05, 4];
        d.extend_from_slice(format);
        Es {
            stream_type,
            pid,
            descriptors: d,
        }
    }
}

/// The sections of a PAT listing `programs`, split into sections of at most `per_section`
/// programs each.
pub fn pat_sections(
    tsid: u16,
    version: u8,
    programs: &[(u16, u16)],
    per_section: usize,
) -> Vec<Vec<u8>> {
    let chunks: Vec<&[(u16, u16)]> = if programs.is_empty() {
        vec![&[]]
    } else {
        programs.chunks(per_section.max(1)).collect()
    };
    let last = (chunks.len() - 1) as u8;
    chunks
        .iter()
        .enumerate()
        .map(|(i, progs)| {
            let mut out = Vec::new();
            let h = LongHeader {
                table_id: 0,
                table_id_extension: tsid,
                version,
                current_next: true,
                section_number: i as u8,
                last_section_number: last,
            };
            let mut w = SectionWriter::long(&mut out, &h, MAX_PSI_SECTION);
            for (prog, pmt_pid) in progs.iter() {
                w.put(&prog.to_be_bytes());
                w.put(&(0xE000 | pmt_pid).to_be_bytes());
            }
            w.finish().expect("PAT section");
            out
        })
        .collect()
}

/// A PMT section for `program` with `streams`.
pub fn pmt_section(program: u16, version: u8, pcr_pid: u16, streams: &[Es]) -> Vec<u8> {
    let mut out = Vec::new();
    let h = LongHeader {
        table_id: 2,
        table_id_extension: program,
        version,
        current_next: true,
        section_number: 0,
        last_section_number: 0,
    };
    let mut w = SectionWriter::long(&mut out, &h, MAX_PSI_SECTION);
    w.put(&(0xE000 | pcr_pid).to_be_bytes());
    w.put(&[0xF0, 0]);
    for s in streams {
        w.put(&[s.stream_type]);
        w.put(&(0xE000 | s.pid).to_be_bytes());
        w.put(&(0xF000 | s.descriptors.len() as u16).to_be_bytes());
        w.put(&s.descriptors);
    }
    w.finish().expect("PMT section");
    out
}

/// Writes packets with correct continuity counters per PID.
#[derive(Default)]
pub struct Writer {
    pub packets: Vec<Packet>,
    cc: HashMap<u16, u8>,
    pz: HashMap<u16, Packetizer>,
}

impl Writer {
    pub fn new() -> Self {
        Writer::default()
    }

    /// Packetize `section` on `pid`.
    pub fn section(&mut self, pid: u16, section: &[u8]) {
        let pz = self
            .pz
            .entry(pid)
            .or_insert_with(|| Packetizer::new(Pid::new(pid)));
        let packets = &mut self.packets;
        pz.packetize(section, |p| packets.push(*p))
            .expect("packetize");
    }

    /// One ES packet on `pid` with a full 184-byte payload (PES start when `start`), whose
    /// bytes are `fill` (never all zero, so a clear payload is visible).
    pub fn es(&mut self, pid: u16, start: bool, fill: u8) {
        let cc = self.cc.entry(pid).or_insert(0);
        let mut p = [fill | 0x01; 188];
        p[0] = 0x47;
        p[1] = (if start { 0x40 } else { 0 }) | (pid >> 8) as u8;
        p[2] = pid as u8;
        p[3] = 0x10 | *cc;
        *cc = (*cc + 1) & 0x0F;
        if start {
            p[4..10].copy_from_slice(&[0, 0, 1, 0xBD, 0, 0]);
        }
        self.packets.push(p);
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.packets
            .iter()
            .flat_map(|p| p.iter().copied())
            .collect()
    }
}
