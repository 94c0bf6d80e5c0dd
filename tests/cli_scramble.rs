//! `castmux scramble` / `descramble` end to end on the committed samples.

mod cli_support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use cli_support::*;

const DEFAULT_ECM_PID: u16 = 0x1FF0;
const DEFAULT_CA_SYSTEM_ID: u16 = 0x5510;

/// Scramble `name` with rotating CWs (1 s periods) and a CW log; returns (input, scrambled, log).
fn scramble_sample(
    dir: &std::path::Path,
    name: &str,
    extra: &[&str],
) -> (Vec<Packet>, Vec<Packet>) {
    let out = dir.join(format!("{name}.scr"));
    let log = dir.join(format!("{name}.cw"));
    let input = sample(name);
    let mut args = vec![
        "scramble",
        "-i",
        s(&input),
        "-o",
        s(&out),
        "--crypto-period",
        "1s",
        "--cw-log",
        s(&log),
    ];
    args.extend_from_slice(extra);
    ok(&args);
    (packets(&sample(name)), packets(&out))
}

/// Run castmux, require success, return its stdout.
fn stdout_of(args: &[&str]) -> String {
    let out = castmux(args);
    assert!(
        out.status.success(),
        "castmux {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn descramble_reads_tsducks_spaced_cw_file_and_prints_stats() {
    let dir = tmp();
    let name = "spts.ts";
    let (input, _) = scramble_sample(dir.path(), name, &[]);
    // the same CWs as TSDuck's --output-cw-file writes them: "01 23 45 67 89 ab cd ef"
    let log = std::fs::read_to_string(dir.path().join(format!("{name}.cw"))).unwrap();
    let spaced: String = log
        .lines()
        .map(|l| {
            let bytes: Vec<&str> = (0..l.len()).step_by(2).map(|i| &l[i..i + 2]).collect();
            bytes.join(" ").to_uppercase() + "\n"
        })
        .collect();
    assert!(spaced.starts_with(&format!("{} ", &log[..2].to_uppercase())));
    let tsduck_log = dir.path().join("tsduck.cw");
    std::fs::write(&tsduck_log, &spaced).unwrap();
    let clear = dir.path().join("tsduck.clr");
    let stdout = stdout_of(&[
        "descramble",
        "-i",
        s(&dir.path().join(format!("{name}.scr"))),
        "-o",
        s(&clear),
        "--cw-log",
        s(&tsduck_log),
        "--stats",
    ]);
    let es: BTreeSet<u16> = psi(&input).es.keys().copied().collect();
    let got = on_pids(&packets(&clear), &es);
    assert!(got == on_pids(&input, &es), "descrambled ES differs");
    // --stats gives the counters, as the other modes do
    let st: serde_json::Value = serde_json::from_str(&stdout).expect("--stats JSON");
    let n = packets(&clear).len() as u64;
    assert_eq!(st["counters"]["stream"]["packets_in"], n, "{st}");
    let scrambled: u64 = st["counters"]["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["scrambled"].as_u64().unwrap())
        .sum();
    assert!(scrambled > 1000, "{st}");
    assert_eq!(st["missing_cws"], 0, "{st}");
    // and with fixed CWs too
    let fixed = stdout_of(&[
        "descramble",
        "-i",
        s(&dir.path().join(format!("{name}.scr"))),
        "-o",
        s(&dir.path().join("fixed.clr")),
        "--cw",
        "0000000000000000",
        "--stats",
    ]);
    let st: serde_json::Value = serde_json::from_str(&fixed).expect("--stats JSON (--cw)");
    assert_eq!(st["counters"]["stream"]["packets_in"], n, "{st}");
}

#[test]
fn round_trip_every_sample_with_the_cw_log() {
    let dir = tmp();
    for name in SAMPLES {
        let (input, scrambled) = scramble_sample(dir.path(), name, &[]);
        let log = dir.path().join(format!("{name}.cw"));
        let clear = dir.path().join(format!("{name}.clr"));
        ok(&[
            "descramble",
            "-i",
            s(&dir.path().join(format!("{name}.scr"))),
            "-o",
            s(&clear),
            "--cw-log",
            s(&log),
        ]);
        let psi_in = psi(&input);
        let es: BTreeSet<u16> = psi_in.es.keys().copied().collect();
        let av = av_pids(&psi_in);
        assert!(!av.is_empty(), "{name}: no ES found");

        // byte for byte on every ES packet
        let got = on_pids(&packets(&clear), &es);
        let want = on_pids(&input, &es);
        assert_eq!(got.len(), want.len(), "{name}: ES packet count");
        let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(first_bad, None, "{name}: descrambled ES differs");

        // every packet with payload on a scrambled PID carries TSC bits; parity changes
        let mut parities = BTreeSet::new();
        for p in on_pids(&scrambled, &av) {
            if has_payload(&p) {
                assert_ne!(tsc(&p), 0, "{name}: clear packet on PID {:#x}", pid(&p));
                parities.insert(tsc(&p));
            }
        }
        assert_eq!(
            parities.len(),
            2,
            "{name}: both parities used with 1 s periods"
        );
        // PSI, SI and nulls are never scrambled
        for p in &scrambled {
            if !es.contains(&pid(p)) {
                assert_eq!(tsc(p), 0, "{name}: PID {:#x} scrambled", pid(p));
            }
        }

        // CC continuous on every PID the input had continuous
        let cc_in = cc_errors(&input);
        let cc_out = cc_errors(&scrambled);
        for (pid, n) in &cc_out {
            assert!(
                cc_in.get(pid).copied().unwrap_or(0) >= *n,
                "{name}: {n} CC errors on PID {pid:#x} in the output"
            );
        }

        // the PMT of each program names our ECM PID at program level, version bumped
        let psi_out = psi(&scrambled);
        assert_eq!(psi_out.programs, psi_in.programs, "{name}: PAT unchanged");
        for prog in psi_in.programs.keys() {
            assert_eq!(
                psi_out.program_ca.get(prog),
                Some(&vec![(DEFAULT_CA_SYSTEM_ID, DEFAULT_ECM_PID)]),
                "{name}: program {prog} CA descriptor"
            );
            let v_in = psi_in.versions[prog].iter().next().copied().unwrap();
            assert_eq!(
                psi_out.versions[prog],
                BTreeSet::from([(v_in + 1) & 31]),
                "{name}: PMT version"
            );
        }
    }
}

#[test]
fn cw_log_has_one_line_per_period_of_stream_time() {
    let dir = tmp();
    // spts.ts is 10 s of stream: periods 0..=9 (+ the next CW, made ahead of its use)
    scramble_sample(dir.path(), "spts.ts", &[]);
    let log = std::fs::read_to_string(dir.path().join("spts.ts.cw")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        (10..=12).contains(&lines.len()),
        "{} CW lines for 10 s at 1 s periods",
        lines.len()
    );
    for l in &lines {
        assert_eq!(l.len(), 16);
        let b: Vec<u8> = (0..8)
            .map(|i| u8::from_str_radix(&l[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert_eq!(b[3], b[0].wrapping_add(b[1]).wrapping_add(b[2]), "checksum");
        assert_eq!(b[7], b[4].wrapping_add(b[5]).wrapping_add(b[6]), "checksum");
    }
    let unique: BTreeSet<&&str> = lines.iter().collect();
    assert_eq!(unique.len(), lines.len(), "fresh CW each period");
}

#[test]
fn component_level_puts_the_ca_descriptor_on_each_scrambled_es() {
    let dir = tmp();
    let (input, scrambled) = scramble_sample(
        dir.path(),
        "spts.ts",
        &[
            "--component-level",
            "--ecm-pid",
            "0x0555",
            "--ca-system-id",
            "0B00",
        ],
    );
    let psi_in = psi(&input);
    let psi_out = psi(&scrambled);
    assert_eq!(psi_out.program_ca.get(&1), Some(&vec![]));
    for es in av_pids(&psi_in) {
        assert_eq!(psi_out.es_ca.get(&es), Some(&vec![(0x0B00, 0x0555)]));
    }
}

#[test]
fn no_audio_and_only_pid_select_pids() {
    let dir = tmp();
    let (_, scrambled) = scramble_sample(dir.path(), "mpts.ts", &["--no-audio"]);
    for p in &scrambled {
        match pid(p) {
            0x101 | 0x201 | 0x301 => assert_eq!(tsc(p), 0, "audio scrambled"),
            0x100 | 0x200 | 0x300 if has_payload(p) => assert_ne!(tsc(p), 0),
            _ => {}
        }
    }
    let (_, scrambled) = scramble_sample(
        dir.path(),
        "mpts.ts",
        &["--service", "2", "--only-pid", "0x201"],
    );
    for p in &scrambled {
        if pid(p) == 0x201 && has_payload(p) {
            assert_ne!(tsc(p), 0);
        } else {
            assert_eq!(tsc(p), 0, "PID {:#x} scrambled", pid(p));
        }
    }
    let psi_out = psi(&scrambled);
    assert_eq!(
        psi_out.program_ca.get(&1),
        Some(&vec![]),
        "program 1 untouched"
    );
    assert_eq!(psi_out.program_ca.get(&2).map(Vec::len), Some(1));
}

#[test]
fn fixed_cw_scrambles_and_the_same_cw_descrambles() {
    let dir = tmp();
    let cw = "0123456789abcdef";
    let scr = dir.path().join("fixed.ts");
    let clr = dir.path().join("fixed-clear.ts");
    ok(&[
        "scramble",
        "-i",
        s(&sample("spts.ts")),
        "-o",
        s(&scr),
        "--cw",
        cw,
    ]);
    let input = packets(&sample("spts.ts"));
    let out = packets(&scr);
    let es = BTreeSet::from([0x100u16, 0x101]);
    // BISS-style: one key, even parity, no CA descriptor, PMT passed unchanged
    for p in on_pids(&out, &es) {
        if has_payload(&p) {
            assert_eq!(tsc(&p), 0b10);
        }
    }
    assert_eq!(psi(&out).program_ca.get(&1), Some(&vec![]));
    assert_ne!(on_pids(&out, &es), on_pids(&input, &es));
    // a wrong key does not give the input back
    let wrong = dir.path().join("wrong.ts");
    ok(&[
        "descramble",
        "-i",
        s(&scr),
        "-o",
        s(&wrong),
        "--cw",
        "1111111111111111",
    ]);
    assert_ne!(on_pids(&packets(&wrong), &es), on_pids(&input, &es));
    ok(&["descramble", "-i", s(&scr), "-o", s(&clr), "--cw", cw]);
    assert_eq!(on_pids(&packets(&clr), &es), on_pids(&input, &es));
    // the input back, but for the CAT a scrambled output carries (in null slots or added)
    assert_eq!(without_cat(&packets(&clr)), without_cat(&input));
    assert!(psi(&out).cat_sections > 0);
}

#[test]
fn fixed_pair_alternates_parity_and_descrambles() {
    let dir = tmp();
    let pair = "0123456789abcdef:fedcba9876543210";
    let scr = dir.path().join("pair.ts");
    let clr = dir.path().join("pair-clear.ts");
    ok(&[
        "scramble",
        "-i",
        s(&sample("mpts.ts")),
        "-o",
        s(&scr),
        "--cw",
        pair,
        "--crypto-period",
        "2s",
    ]);
    let out = packets(&scr);
    let parities: BTreeSet<u8> = out.iter().map(tsc).filter(|t| *t != 0).collect();
    assert_eq!(parities, BTreeSet::from([2, 3]));
    ok(&["descramble", "-i", s(&scr), "-o", s(&clr), "--cw", pair]);
    assert_eq!(
        without_cat(&packets(&clr)),
        without_cat(&packets(&sample("mpts.ts")))
    );
}

#[test]
fn aes_modes_round_trip() {
    for mode in ["cissa", "idsa"] {
        let dir = tmp();
        let (input, _) = scramble_sample(dir.path(), "heavy-af.ts", &["--scrambling", mode]);
        let log = dir.path().join("heavy-af.ts.cw");
        let line = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            line.lines().next().unwrap().len(),
            32,
            "{mode}: 16-byte keys"
        );
        let clr = dir.path().join("clear.ts");
        ok(&[
            "descramble",
            "-i",
            s(&dir.path().join("heavy-af.ts.scr")),
            "-o",
            s(&clr),
            "--cw-log",
            s(&log),
            "--scrambling",
            mode,
        ]);
        let es = BTreeSet::from([0x100u16, 0x101]);
        assert_eq!(on_pids(&packets(&clr), &es), on_pids(&input, &es), "{mode}");
    }
}

#[test]
fn stdin_to_stdout() {
    let dir = tmp();
    let log = dir.path().join("cw.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args(["scramble", "-i", "-", "-o", "-", "--cw-log", s(&log)])
        .env("CASTMUX_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let data = std::fs::read(sample("spts.ts")).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&data).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    let scr = dir.path().join("scr.ts");
    std::fs::write(&scr, &out.stdout).unwrap();
    let clr = dir.path().join("clr.ts");
    ok(&[
        "descramble",
        "-i",
        s(&scr),
        "-o",
        s(&clr),
        "--cw-log",
        s(&log),
    ]);
    let es = BTreeSet::from([0x100u16, 0x101]);
    let input = packets(&sample("spts.ts"));
    assert!(on_pids(&packets_of(&out.stdout), &es)
        .iter()
        .any(|p| tsc(p) != 0));
    assert_eq!(on_pids(&packets(&clr), &es), on_pids(&input, &es));
}

#[test]
fn emm_pid_puts_a_cat_with_the_emm_descriptor_on_air() {
    let dir = tmp();
    // a sample with no CAT: ours repeats every 500 ms of stream time, in null slots first
    for name in ["spts.ts", "nullpad.ts"] {
        let (input, scrambled) = scramble_sample(dir.path(), name, &["--emm-pid", "0x1FF1"]);
        assert_eq!(psi(&input).cat_sections, 0, "{name}: input has a CAT");
        let out = psi(&scrambled);
        assert_eq!(out.cat_ca, vec![(DEFAULT_CA_SYSTEM_ID, 0x1FF1)], "{name}");
        assert_eq!(out.cat_versions, BTreeSet::from([0]), "{name}");
        assert!(out.cat_sections >= 2, "{name}: CAT repeated");
        assert_eq!(cc_errors(&scrambled).get(&1), None, "{name}: CAT CC");
        if name == "nullpad.ts" {
            assert_eq!(scrambled.len(), input.len(), "{name}: CAT in null slots");
        }
    }

    // an input CAT of another CAS: merged, replaced in place, version ours
    let input = packets(&sample("spts.ts"));
    let mut sec = Vec::new();
    let other = castmux::ts::descriptor::CaDescriptor {
        ca_system_id: 0x0B00,
        ca_pid: p(0x0101),
        private_data: &[],
    };
    castmux::ts::psi_write::write_cat(&mut sec, &[], &[other], 9).unwrap();
    let mut pz = castmux::ts::Packetizer::new(p(1));
    let mut with_cat = Vec::new();
    for (i, pk) in input.iter().enumerate() {
        if i % 500 == 0 {
            pz.packetize(&sec, |c| with_cat.extend_from_slice(c))
                .unwrap();
        }
        with_cat.extend_from_slice(pk);
    }
    let src = dir.path().join("with_cat.ts");
    std::fs::write(&src, &with_cat).unwrap();
    let out = dir.path().join("with_cat.scr");
    ok(&[
        "scramble",
        "-i",
        s(&src),
        "-o",
        s(&out),
        "--emm-pid",
        "0x1FF1",
    ]);
    let scrambled = packets(&out);
    assert_eq!(
        scrambled.len() * 188,
        with_cat.len(),
        "CAT replaced in place"
    );
    let got = psi(&scrambled);
    let mut ca = got.cat_ca.clone();
    ca.sort();
    assert_eq!(ca, vec![(0x0B00, 0x0101), (DEFAULT_CA_SYSTEM_ID, 0x1FF1)]);
    assert_eq!(got.cat_versions, BTreeSet::from([1]));
    assert_eq!(cc_errors(&scrambled).get(&1), None, "CAT CC");
}
