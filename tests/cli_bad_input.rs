//! Bad input: garbage, truncated files, damaged PSI. No panic; a clear error or counters.

mod cli_support;

use std::collections::BTreeSet;

use cli_support::*;

/// Exit code 101 is a Rust panic.
fn no_panic(args: &[&str]) -> std::process::Output {
    let out = castmux(args);
    assert_ne!(
        out.status.code(),
        Some(101),
        "panic: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.code().is_some(), "killed by a signal");
    out
}

#[test]
fn garbage_input_does_not_panic() {
    let dir = tmp();
    let mut x: u32 = 12345;
    let data: Vec<u8> = (0..200_000)
        .map(|i| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            // sprinkle sync bytes so the resync finds (garbage) packets too
            if i % 188 == 0 {
                0x47
            } else {
                (x >> 16) as u8
            }
        })
        .collect();
    let inp = dir.path().join("garbage.ts");
    std::fs::write(&inp, &data).unwrap();
    let out = dir.path().join("out.ts");
    no_panic(&["scramble", "-i", s(&inp), "-o", s(&out)]);
    no_panic(&[
        "descramble",
        "-i",
        s(&inp),
        "-o",
        s(&out),
        "--cw",
        "0000000000000000",
    ]);
    no_panic(&["probe", s(&inp)]);
    no_panic(&["probe", s(&inp), "--json"]);
}

#[test]
fn truncated_file_scrambles_what_is_there() {
    let dir = tmp();
    let data = std::fs::read(sample("spts.ts")).unwrap();
    let inp = dir.path().join("cut.ts");
    std::fs::write(&inp, &data[..188 * 1000 + 77]).unwrap();
    let out = dir.path().join("out.ts");
    let log = dir.path().join("cw.txt");
    no_panic(&[
        "scramble",
        "-i",
        s(&inp),
        "-o",
        s(&out),
        "--cw-log",
        s(&log),
    ]);
    let got = packets(&out);
    assert!(got.len() >= 999, "{} packets out", got.len());
    for p in &got {
        if matches!(pid(p), 0x100 | 0x101) && has_payload(p) {
            assert_ne!(tsc(p), 0, "clear ES packet in the output");
        }
    }
}

#[test]
fn missing_input_is_a_clear_error() {
    let out = castmux(&["scramble", "-i", "/nonexistent/x.ts", "-o", "/tmp/never.ts"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error"), "{err}");
    let out = castmux(&["scramble", "-i", "x.ts", "-o", "y.ts", "--cw", "12"]);
    assert_eq!(out.status.code(), Some(1));
    let out = castmux(&["scramble", "-i", "x.ts", "-o", "y.ts", "--only-pid", "0x11"]);
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn bad_pmt_crc_keeps_the_last_good_pmt() {
    let dir = tmp();
    let mut pkts = packets(&sample("spts.ts"));
    // corrupt every other PMT packet's CRC byte (one-packet PMT sections)
    let mut n = 0;
    for p in pkts.iter_mut() {
        if pid(p) == 0x1000 {
            n += 1;
            if n % 2 == 0 {
                let len = 3 + ((usize::from(p[6] & 0x0F) << 8) | usize::from(p[7]));
                p[5 + len - 1] ^= 0xFF;
            }
        }
    }
    let inp = dir.path().join("badcrc.ts");
    std::fs::write(&inp, pkts.concat()).unwrap();
    let out = dir.path().join("out.ts");
    let log = dir.path().join("cw.txt");
    ok(&[
        "scramble",
        "-i",
        s(&inp),
        "-o",
        s(&out),
        "--cw-log",
        s(&log),
        "--stats",
    ]);
    let got = packets(&out);
    let psi_out = psi(&got);
    assert_eq!(psi_out.program_ca.get(&1).map(Vec::len), Some(1));
    // every PMT section we send is good, and CC stays continuous on the PMT PID
    let pmt_pkts = got.iter().filter(|p| pid(p) == 0x1000).count();
    assert_eq!(psi_out.pmt_sections, pmt_pkts);
    assert_eq!(cc_errors(&got).get(&0x1000), None);
    let es = BTreeSet::from([0x100u16, 0x101]);
    for p in on_pids(&got, &es) {
        if has_payload(&p) {
            assert_ne!(tsc(&p), 0);
        }
    }
}

#[test]
fn already_scrambled_input_is_passed_not_scrambled_twice() {
    let dir = tmp();
    let once = dir.path().join("once.ts");
    let twice = dir.path().join("twice.ts");
    let cw = "0123456789abcdef";
    ok(&[
        "scramble",
        "-i",
        s(&sample("spts.ts")),
        "-o",
        s(&once),
        "--cw",
        cw,
    ]);
    let out = castmux(&[
        "scramble",
        "-i",
        s(&once),
        "-o",
        s(&twice),
        "--cw",
        "1111111111111111",
        "--stats",
        "--allow-unscrambled",
    ]);
    assert!(out.status.success());
    // every packet untouched; only the CAT may differ (ours from the first pass is taken as
    // the input's, and the second pass may put its own on air before it shows up)
    assert_eq!(without_cat(&packets(&once)), without_cat(&packets(&twice)));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pids = stats["pids"].as_array().unwrap();
    let video = pids.iter().find(|p| p["pid"] == 0x100).unwrap();
    assert!(video["already_scrambled"].as_u64().unwrap() > 1000);
    assert_eq!(video["scrambled"], 0);
    // without --allow-unscrambled a run that scrambled nothing fails, and says why
    let out = castmux(&[
        "scramble",
        "-i",
        s(&once),
        "-o",
        s(&twice),
        "--cw",
        "1111111111111111",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already scrambled"), "{err}");
}
