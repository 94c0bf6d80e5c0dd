//! Property test of the fail-closed rule: over random legal PSI layouts (a PAT split into
//! sections, programs added and removed, ES PIDs moved with their packets ahead of the new
//! PMT, stream types castmux does not know), no payload packet of a selected service ever
//! leaves the scrambler clear.

mod cli_support;

use castmux::scramble::{CaSystem, Cw, KeyMode, ScrambleConfig, Scrambler};
use castmux::ts::Pid;
use cli_support::gen::{pat_sections, pmt_section, Es, Rng, Writer};
use cli_support::{has_payload, pid, tsc, Packet};

/// Selected services' ES PIDs come from this range, the others' from `OTHER`: a clear
/// payload packet on a PID of `SELECTED` is a leak whatever the PSI said at the time.
const SELECTED: std::ops::Range<u16> = 0x100..0x500;
const OTHER: std::ops::Range<u16> = 0x800..0xC00;

/// Stream types a head-end meets, known and not: video, audio, private PES with and
/// without descriptors, AV1, JPEG 2000, private sections, SCTE-35, user private.
const TYPES: [(u8, Option<&[u8; 4]>); 12] = [
    (0x1B, None),
    (0x24, None),
    (0x0F, None),
    (0x03, None),
    (0x06, None),
    (0x06, Some(b"BSSD")),
    (0x06, Some(b"AV01")),
    (0x06, Some(b"AC-3")),
    (0x21, None),
    (0x05, None),
    (0x86, None),
    (0xC3, None),
];

struct Program {
    number: u16,
    version: u8,
    es: Vec<Es>,
}

struct Model {
    rng: Rng,
    all_selected: bool,
    programs: Vec<Program>,
    pat_version: u8,
    used: std::collections::BTreeSet<u16>,
}

impl Model {
    fn selected(&self, number: u16) -> bool {
        self.all_selected || number % 2 == 1
    }

    fn new_pid(&mut self, selected: bool) -> u16 {
        let range = if selected { SELECTED } else { OTHER };
        loop {
            let p = range.start + self.rng.below(usize::from(range.end - range.start)) as u16;
            if self.used.insert(p) {
                return p;
            }
        }
    }

    fn new_es(&mut self, selected: bool) -> Es {
        let (st, reg) = TYPES[self.rng.below(TYPES.len())];
        let pid = self.new_pid(selected);
        match reg {
            Some(f) => Es::registered(st, pid, f),
            None => Es::new(st, pid),
        }
    }

    fn add_program(&mut self) {
        let free: Vec<u16> = (1..=24)
            .filter(|n| !self.programs.iter().any(|p| p.number == *n))
            .collect();
        if free.is_empty() {
            return;
        }
        let number = free[self.rng.below(free.len())];
        let sel = self.selected(number);
        let es = (0..1 + self.rng.below(4))
            .map(|_| self.new_es(sel))
            .collect();
        self.programs.push(Program {
            number,
            version: self.rng.below(32) as u8,
            es,
        });
        self.pat_version = (self.pat_version + 1) & 0x1F;
    }

    fn pat(&mut self, w: &mut Writer) {
        let list: Vec<(u16, u16)> = self
            .programs
            .iter()
            .map(|p| (p.number, 0x1000 + p.number))
            .collect();
        let per = 1 + self.rng.below(list.len().max(1));
        let mut secs = pat_sections(1, self.pat_version, &list, per);
        if self.rng.chance(30) {
            secs.reverse();
        }
        for s in secs {
            w.section(0, &s);
        }
    }

    fn pmts(&mut self, w: &mut Writer) {
        for p in &self.programs {
            let pcr = p.es.first().map_or(0x1FFF, |e| e.pid);
            w.section(
                0x1000 + p.number,
                &pmt_section(p.number, p.version, pcr, &p.es),
            );
        }
    }

    fn es_packets(&mut self, w: &mut Writer, n: usize) {
        let pids: Vec<u16> = self
            .programs
            .iter()
            .flat_map(|p| p.es.iter().map(|e| e.pid))
            .collect();
        if pids.is_empty() {
            return;
        }
        for _ in 0..n {
            let p = pids[self.rng.below(pids.len())];
            let start = self.rng.chance(10);
            w.es(p, start, self.rng.next() as u8);
        }
    }

    /// One change of the layout; ES packets of a moved or new PID may come before the PMT
    /// that names it.
    fn mutate(&mut self, w: &mut Writer) {
        match self.rng.below(5) {
            0 => self.add_program(),
            1 if self.programs.len() > 1 => {
                let i = self.rng.below(self.programs.len());
                self.programs.remove(i);
                self.pat_version = (self.pat_version + 1) & 0x1F;
            }
            _ if !self.programs.is_empty() => {
                let i = self.rng.below(self.programs.len());
                let sel = self.selected(self.programs[i].number);
                let es = self.new_es(sel);
                let new_pid = es.pid;
                let prog = &mut self.programs[i];
                if prog.es.len() > 1 && self.rng.chance(60) {
                    // move: the old PID stops
                    let j = self.rng.below(prog.es.len());
                    prog.es[j] = es;
                } else {
                    prog.es.push(es);
                }
                prog.version = (prog.version + 1) & 0x1F;
                // the ES on its new PID ahead of the PMT that names it
                for _ in 0..self.rng.below(20) {
                    let fill = self.rng.next() as u8;
                    w.es(new_pid, false, fill);
                }
            }
            _ => self.add_program(),
        }
    }
}

fn stream(seed: u64, all_selected: bool) -> Vec<Packet> {
    let mut m = Model {
        rng: Rng::new(seed),
        all_selected,
        programs: Vec::new(),
        pat_version: 0,
        used: Default::default(),
    };
    for _ in 0..1 + m.rng.below(4) {
        m.add_program();
    }
    let mut w = Writer::new();
    // ES before any PSI
    let n = m.rng.below(30);
    m.es_packets(&mut w, n);
    for seg in 0..4 + m.rng.below(8) {
        if seg > 0 {
            m.mutate(&mut w);
        }
        for _ in 0..1 + m.rng.below(3) {
            m.pat(&mut w);
            let n = m.rng.below(20);
            m.es_packets(&mut w, n);
            m.pmts(&mut w);
            let n = 10 + m.rng.below(80);
            m.es_packets(&mut w, n);
        }
    }
    w.packets
}

fn config(seed: u64, all_selected: bool) -> ScrambleConfig {
    let mut c = ScrambleConfig {
        services: if all_selected {
            Vec::new()
        } else {
            (1..=24).filter(|n| n % 2 == 1).collect()
        },
        ..ScrambleConfig::default()
    };
    if seed.is_multiple_of(2) {
        // BISS-style: PMT passed as it is
        c.keys = KeyMode::Fixed(Cw::from_hex("0102030405060708").unwrap());
    } else {
        // rotating keys with a CA system: PMTs rewritten
        c.ca_systems = vec![CaSystem::new(0x4AE1, Pid::new(0x1FF0))];
    }
    c
}

#[test]
fn no_selected_payload_leaves_clear_on_random_psi_layouts() {
    let mut total_scrambled = 0u64;
    for seed in 0..400u64 {
        let all_selected = seed.is_multiple_of(3);
        let input = stream(seed, all_selected);
        let mut s = Scrambler::new(config(seed, all_selected), None, Vec::new()).unwrap();
        let mut rng = Rng::new(seed ^ 0xABCD);
        let mut at = 0;
        let mut scrambled = 0u64;
        while at < input.len() {
            let n = (1 + rng.below(300)).min(input.len() - at);
            let out = s.process(&input[at..at + n]).unwrap();
            for p in out.chunks_exact(188) {
                let p: &Packet = p.try_into().unwrap();
                let id = pid(p);
                if SELECTED.contains(&id) && has_payload(p) {
                    assert_ne!(
                        tsc(p),
                        0,
                        "seed {seed}: a clear payload packet on PID {id:#x} of a selected service"
                    );
                    scrambled += 1;
                }
            }
            at += n;
        }
        total_scrambled += scrambled;
    }
    // the property holds because packets are scrambled, not because none got through
    assert!(
        total_scrambled > 10_000,
        "only {total_scrambled} scrambled packets"
    );
}

/// ES packets of a selected service whose header is not understood (a reserved
/// transport_scrambling_control or adaptation_field_control, an adaptation field past the
/// packet's end) are nulled, and bytes after an adaptation-only packet's field become
/// stuffing: none of their bytes go out clear, and each is counted.
#[test]
fn malformed_es_packets_never_carry_their_bytes_out() {
    let es = 0x101u16;
    let mut w = Writer::new();
    for s in pat_sections(1, 0, &[(1, 0x1001)], 1) {
        w.section(0, &s);
    }
    w.section(0x1001, &pmt_section(1, 0, es, &[Es::new(0x1B, es)]));
    let mark = 0xC5u8;
    // (transport_scrambling_control, adaptation_field_control, adaptation_field_length)
    let forms: [(u8, u8, Option<u8>); 5] = [
        (0b01, 0b01, None),
        (0b00, 0b00, None),
        (0b00, 0b11, Some(200)),
        (0b00, 0b10, Some(190)),
        (0b00, 0b10, Some(7)),
    ];
    for (tsc_, afc, afl) in forms {
        w.es(es, false, mark);
        let p = w.packets.last_mut().unwrap();
        p[3] = (tsc_ << 6) | (afc << 4) | (p[3] & 0x0F);
        if let Some(l) = afl {
            p[4] = l;
            // no adaptation field flags
            p[5] = 0;
        }
    }
    // a well-formed one, scrambled
    w.es(es, false, 0x10);
    let c = ScrambleConfig {
        keys: KeyMode::Fixed(Cw::from_hex("0102030405060708").unwrap()),
        ..ScrambleConfig::default()
    };
    let mut s = Scrambler::new(c, None, Vec::new()).unwrap();
    let out = s.process(&w.packets).unwrap();
    let mut es_out = Vec::new();
    for p in out.chunks_exact(188) {
        let p: &Packet = p.try_into().unwrap();
        // the adaptation field's own bytes (at most 6 here) are clear by design; nothing
        // longer of the mark may go out
        assert!(
            !p.windows(8).any(|w| w.iter().all(|b| *b == mark)),
            "ES bytes went out clear: {p:02x?}"
        );
        if pid(p) == es {
            es_out.push(*p);
        }
    }
    // the stuffed adaptation-only packet and the scrambled one; the rest became nulls
    assert_eq!(es_out.len(), 2, "{es_out:02x?}");
    assert!(es_out[0][12..].iter().all(|b| *b == 0xFF));
    assert_eq!(es_out[0][..12], w.packets[w.packets.len() - 2][..12]);
    assert_ne!(tsc(&es_out[1]), 0);
    let counters = s.counters();
    assert_eq!(counters.stream.malformed_es, 5);
    assert_eq!(counters.pid(castmux::ts::Pid::new(es)).dropped, 4);
}

/// A selected service's ES on a PID that is also another program's PMT PID, or in the
/// PSI range (a hostile or broken PMT), is scrambled all the same: the ES of a selected
/// service wins over every role but our own ECM/EMM PIDs.
#[test]
fn a_selected_es_on_a_pmt_or_psi_pid_is_scrambled() {
    for (es_pid, other_pmt) in [(0x100u16, 0x100u16), (0x0012, 0x200)] {
        let mut w = Writer::new();
        for s in pat_sections(1, 0, &[(1, 0x1000), (2, other_pmt)], 1) {
            w.section(0, &s);
        }
        w.section(0x1000, &pmt_section(1, 0, es_pid, &[Es::new(0x1B, es_pid)]));
        for k in 0..20u8 {
            w.es(es_pid, k == 0, 0xA0 | k);
        }
        for keys in [
            KeyMode::Fixed(Cw::from_hex("0102030405060708").unwrap()),
            KeyMode::Rotating,
        ] {
            let rotating = matches!(keys, KeyMode::Rotating);
            let c = ScrambleConfig {
                services: vec![1],
                keys,
                ca_systems: if rotating {
                    vec![CaSystem::new(0x4AE1, Pid::new(0x1FF0))]
                } else {
                    Vec::new()
                },
                ..ScrambleConfig::default()
            };
            let mut s = Scrambler::new(c, None, Vec::new()).unwrap();
            let out = s.process(&w.packets).unwrap().to_vec();
            let mut scrambled = 0;
            for p in out.chunks_exact(188) {
                let p: &Packet = p.try_into().unwrap();
                if pid(p) == es_pid && has_payload(p) {
                    assert!(
                        tsc(p) != 0 || p[4..].iter().all(|b| *b & 0xF0 != 0xA0),
                        "PID {es_pid:#x} (PMT PID {other_pmt:#x}) went out clear: {p:02x?}"
                    );
                    scrambled += usize::from(tsc(p) != 0);
                }
            }
            assert!(scrambled >= 19, "PID {es_pid:#x}: {scrambled} scrambled");
        }
    }
}
