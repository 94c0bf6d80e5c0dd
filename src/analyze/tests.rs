//! Each rule against a synthetic stream: a clean one first (so the counts below are the
//! rule's, not the generator's), then one fault at a time.

use super::*;
use crate::ts::psi_write::{write_pat, write_pmt, write_private_section};
use crate::ts::{Descriptors, Packetizer, PatEntry, Pid, PmtStream};

const PMT: u16 = 0x1000;
const VIDEO: u16 = 0x100;
const ECM: u16 = 0x1F00;

/// A stream written 10 ms at a time: a PCR on the video PID, PAT and PMT every 100 ms,
/// a video PES with a PTS every 40 ms, an ECM every 100 ms, null packets between.
struct Gen {
    out: Vec<[u8; 188]>,
    cc: Vec<u8>,
    pat: Packetizer,
    pmt: Packetizer,
    ecm: Packetizer,
    ms: u64,
    /// Faults to put in: what is due in these windows (ms) is left out.
    skip_pat: std::ops::Range<u64>,
    skip_pmt: std::ops::Range<u64>,
    skip_pts: std::ops::Range<u64>,
    skip_ecm: std::ops::Range<u64>,
}

impl Gen {
    fn new() -> Gen {
        Gen {
            out: Vec::new(),
            cc: vec![0; 0x2000],
            pat: Packetizer::new(Pid::new(0)),
            pmt: Packetizer::new(Pid::new(PMT)),
            ecm: Packetizer::new(Pid::new(ECM)),
            ms: 0,
            skip_pat: 0..0,
            skip_pmt: 0..0,
            skip_pts: 0..0,
            skip_ecm: 0..0,
        }
    }

    fn header(&mut self, pid: u16, afc: u8) -> [u8; 188] {
        let mut p = [0xFFu8; 188];
        p[0] = 0x47;
        p[1] = (pid >> 8) as u8;
        p[2] = pid as u8;
        let next = self.cc[usize::from(pid)];
        if afc & 1 == 1 {
            p[3] = (afc << 4) | next;
            self.cc[usize::from(pid)] = (next + 1) & 0x0F;
        } else {
            // no payload: the counter of the last packet with one
            p[3] = (afc << 4) | ((next + 15) & 0x0F);
        }
        p
    }

    fn pcr(&mut self) {
        let mut p = self.header(VIDEO, 2);
        let base = self.ms * 90;
        p[4] = 183;
        p[5] = 0x10;
        p[6..10].copy_from_slice(&((base >> 1) as u32).to_be_bytes());
        p[10] = ((base as u8 & 1) << 7) | 0x7E;
        p[11] = 0;
        self.out.push(p);
    }

    fn pes(&mut self) {
        let mut p = self.header(VIDEO, 1);
        p[1] |= 0x40;
        let pts = (self.ms + 100) * 90;
        p[4..13].copy_from_slice(&[0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 5]);
        p[13] = 0x21 | ((pts >> 29) as u8 & 0x0E);
        p[14] = (pts >> 22) as u8;
        p[15] = ((pts >> 14) as u8) | 1;
        p[16] = (pts >> 7) as u8;
        p[17] = ((pts << 1) as u8) | 1;
        self.out.push(p);
    }

    fn psi(&mut self) {
        let mut s = Vec::new();
        write_pat(
            &mut s,
            1,
            0,
            &[PatEntry {
                program_number: 1,
                pid: Pid::new(PMT),
            }],
        )
        .unwrap();
        let step = self.ms;
        let out = &mut self.out;
        if !self.skip_pat.contains(&step) {
            self.pat.packetize(&s, |p| out.push(*p)).unwrap();
        }
        s.clear();
        let ca = [9, 4, 0x55, 0x10, 0xE0 | (ECM >> 8) as u8, ECM as u8];
        write_pmt(
            &mut s,
            1,
            0,
            Pid::new(VIDEO),
            &Descriptors::new(&ca).unwrap(),
            [PmtStream {
                stream_type: StreamType(0x1B),
                elementary_pid: Pid::new(VIDEO),
                descriptors: Descriptors::new(&[]).unwrap(),
            }],
        )
        .unwrap();
        if !self.skip_pmt.contains(&step) {
            self.pmt.packetize(&s, |p| out.push(*p)).unwrap();
        }
        s.clear();
        write_private_section(&mut s, 0x80, &[0xAB; 20]).unwrap();
        if !self.skip_ecm.contains(&step) {
            self.ecm.packetize(&s, |p| out.push(*p)).unwrap();
        }
    }

    /// `ms` more of stream.
    fn run(&mut self, ms: u64) {
        for _ in 0..ms / 10 {
            self.pcr();
            if self.ms.is_multiple_of(100) {
                self.psi();
            }
            if self.ms.is_multiple_of(40) && !self.skip_pts.contains(&self.ms) {
                self.pes();
            } else {
                let p = self.header(VIDEO, 1);
                self.out.push(p);
            }
            // ten packets per 10 ms: a constant bitrate
            while !self.out.len().is_multiple_of(10) {
                let p = self.header(0x1FFF, 1);
                self.out.push(p);
            }
            self.ms += 10;
        }
    }

    fn analyze(&self) -> Analyzer {
        let mut a = Analyzer::new(Settings::default());
        for chunk in self.out.chunks(64) {
            a.process(chunk, None);
        }
        a.finish();
        a
    }
}

fn counts(a: &Analyzer) -> BTreeMap<&'static str, u64> {
    let e = a.indicators();
    Indicator::ALL
        .iter()
        .filter(|i| e.get(**i).count > 0)
        .map(|i| (i.name(), e.get(*i).count))
        .collect()
}

fn only(name: &'static str, n: u64) -> BTreeMap<&'static str, u64> {
    BTreeMap::from([(name, n)])
}

#[test]
fn the_synthetic_stream_is_clean() {
    let mut g = Gen::new();
    g.run(3000);
    let a = g.analyze();
    assert_eq!(counts(&a), BTreeMap::new());
    let r = a.report();
    assert!((r.duration_s - 2.99).abs() < 0.02, "{}", r.duration_s);
    assert_eq!(r.programs[0].streams[0].kind, "video");
    assert_eq!(r.ca.ecm[0].sections, 30);
    assert!(r.etr290.pcr[0].constant_bitrate);
    assert_eq!(r.etr290.pcr[0].max_deviation_ns, 0.0);
}

#[test]
fn continuity_allows_one_duplicate_and_a_signalled_jump_only() {
    let base = {
        let mut g = Gen::new();
        g.run(500);
        g
    };
    let video_at = |g: &Gen, n: usize| {
        g.out
            .iter()
            .enumerate()
            .filter(|(_, p)| p[2] == VIDEO as u8 && p[1] & 0x1F == 1 && p[3] & 0x10 != 0)
            .nth(n)
            .unwrap()
            .0
    };
    // one duplicate: fine; two: one error (in place of the null packets that follow, so
    // the PCRs stay where they were)
    let mut g = Gen {
        out: base.out.clone(),
        ..Gen::new()
    };
    let i = video_at(&g, 10);
    assert_eq!(g.out[i + 1][1] & 0x1F, 0x1F, "a null packet follows");
    g.out[i + 1] = g.out[i];
    assert_eq!(counts(&g.analyze()), BTreeMap::new());
    g.out[i + 2] = g.out[i];
    assert_eq!(counts(&g.analyze()), only("Continuity_count_error", 1));
    // a counter that steps on a packet without payload
    let mut g = Gen {
        out: base.out.clone(),
        ..Gen::new()
    };
    let pcr = g.out.iter().position(|p| p[3] >> 4 == 2).unwrap();
    let pcr2 = pcr
        + 1
        + g.out[pcr + 1..]
            .iter()
            .position(|p| p[3] >> 4 == 2)
            .unwrap();
    g.out[pcr2][3] = (g.out[pcr2][3] & 0xF0) | ((g.out[pcr2][3] + 1) & 0x0F);
    // (the next packet, with payload, then looks like its duplicate: one error)
    assert_eq!(counts(&g.analyze()), only("Continuity_count_error", 1));
    // a jump with the discontinuity_indicator is no error
    let mut g = Gen {
        out: base.out.clone(),
        ..Gen::new()
    };
    let i = video_at(&g, 20);
    g.out[i] = g.out[i + 1];
    assert_eq!(counts(&g.analyze()), only("Continuity_count_error", 1));
    let next = i + g.out[i..]
        .iter()
        .position(|p| p[2] == VIDEO as u8 && p[3] >> 4 == 2)
        .unwrap();
    g.out[next][5] |= 0x80;
    assert_eq!(counts(&g.analyze()), BTreeMap::new());
}

#[test]
fn pat_rules_interval_table_id_and_scrambling() {
    let mut g = Gen::new();
    g.skip_pat = 1000..1700; // PATs at 0.9 s then 1.7 s
    g.run(3000);
    assert_eq!(counts(&g.analyze()), only("PAT_error", 1));
    // and still missing at the end of the stream: noticed while missing
    let mut g = Gen::new();
    g.skip_pat = 2000..10_000;
    g.run(3000);
    let a = g.analyze();
    assert_eq!(counts(&a), only("PAT_error", 1));
    let first = a.indicators().get(Indicator::PatError).first.unwrap();
    assert!((first.time_s - 2.4).abs() < 0.05, "{first:?}");
    // a scrambled PAT packet, a PMT on PID 0
    let mut g = Gen::new();
    g.run(1000);
    let i = g
        .out
        .iter()
        .position(|p| p[1] & 0x1F == 0 && p[2] == 0)
        .unwrap();
    g.out[i][3] |= 0x80;
    let j = g
        .out
        .iter()
        .rposition(|p| p[1] & 0x1F == 0x10 && p[2] == 0)
        .unwrap();
    g.out[j][1] &= 0xE0;
    g.out[j][2] = 0;
    // (both break PID 0's counter, and the scrambled one is no PAT)
    let n = counts(&g.analyze());
    assert_eq!(n["PAT_error"], 2, "{n:?}");
}

#[test]
fn pmt_interval_and_scrambling() {
    let mut g = Gen::new();
    g.skip_pmt = 500..2000;
    g.run(3000);
    assert_eq!(counts(&g.analyze()), only("PMT_error", 1));
    let mut g = Gen::new();
    g.run(1000);
    let i = g
        .out
        .iter()
        .position(|p| p[1] & 0x1F == 0x10 && p[2] == 0)
        .unwrap();
    g.out[i][3] |= 0xC0;
    // and a scrambled packet in a stream without a CAT
    assert_eq!(
        counts(&g.analyze()),
        BTreeMap::from([("PMT_error", 1), ("CAT_error", 1)])
    );
}

#[test]
fn a_cat_pid_carrying_another_table_is_a_cat_error() {
    let mut g = Gen::new();
    g.run(1000);
    let mut s = Vec::new();
    write_pat(&mut s, 1, 0, &[]).unwrap();
    let mut cat = Packetizer::new(Pid::new(1));
    let mut pkts = Vec::new();
    cat.packetize(&s, |p| pkts.push(*p)).unwrap();
    let null = 100
        + g.out[100..]
            .iter()
            .position(|p| p[1] & 0x1F == 0x1F && p[2] == 0xFF)
            .unwrap();
    g.out[null] = pkts[0];
    assert_eq!(counts(&g.analyze()), only("CAT_error", 1));
}

#[test]
fn pts_more_than_700_ms_apart_is_a_pts_error() {
    let mut g = Gen::new();
    g.skip_pts = 1000..1760; // PTSs at 0.96 s then 1.76 s
    g.run(3000);
    assert_eq!(counts(&g.analyze()), only("PTS_error", 1));
    let mut g = Gen::new();
    g.skip_pts = 1000..1640; // 0.96 s then 1.64 s: within
    g.run(3000);
    assert_eq!(counts(&g.analyze()), BTreeMap::new());
}

#[test]
fn ecm_gaps_over_the_limit_are_counted_per_pid() {
    let mut g = Gen::new();
    g.skip_ecm = 1000..1800; // ECMs at 0.9 s then 1.8 s
    g.run(3000);
    let a = g.analyze();
    // not an ETR 290 indicator: a CA check
    assert_eq!(counts(&a), BTreeMap::new());
    let r = a.report();
    let ecm = &r.ca.ecm[0];
    assert_eq!((ecm.pid, ecm.over_limit), (ECM, 1));
    assert!((ecm.max_interval_ms - 900.0).abs() < 5.0, "{ecm:?}");
    let mut a = Analyzer::new(Settings {
        ecm_limit: Duration::from_secs(1),
        ..Settings::default()
    });
    a.process(&g.out, None);
    assert_eq!(a.report().ca.ecm[0].over_limit, 0);
}
