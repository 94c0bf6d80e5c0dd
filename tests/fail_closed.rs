//! Fail closed on legal streams, end to end through the real binary: a PAT in several
//! sections, stream types castmux does not know, ES ahead of their PMT, a stock ffmpeg
//! H.264 + SMPTE 302M stream, and the exit status of a run that scrambled nothing.

mod cli_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use cli_support::gen::{pat_sections, pmt_section, Es, Writer};
use cli_support::{
    castmux, ffmpeg_decode, has_payload, ok, packets, pid, psi, s, tmp, tsc, Packet,
};

/// Clear payload packets on `pids`.
fn clear_on(pkts: &[Packet], pids: &BTreeSet<u16>) -> usize {
    pkts.iter()
        .filter(|p| pids.contains(&pid(p)) && has_payload(p) && tsc(p) == 0)
        .count()
}

fn payload_packets_on(pkts: &[Packet], id: u16) -> usize {
    pkts.iter()
        .filter(|p| pid(p) == id && has_payload(p))
        .count()
}

/// Scramble `input` (written to DIR/in.ts) with `args`; returns the output packets and the
/// `--stats` JSON.
fn scramble(dir: &Path, input: &[u8], args: &[&str]) -> (Vec<Packet>, serde_json::Value) {
    let src = dir.join("in.ts");
    let out = dir.join("out.ts");
    std::fs::write(&src, input).unwrap();
    let mut a = vec!["scramble", "-i", s(&src), "-o", s(&out), "--stats"];
    a.extend_from_slice(args);
    let o = castmux(&a);
    assert!(
        o.status.success(),
        "castmux {a:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stats = serde_json::from_slice(&o.stdout).expect("--stats JSON");
    (packets(&out), stats)
}

/// A stream of `rounds` repetitions of PAT sections, PMTs and a packet per ES.
fn layout(pat: &[Vec<u8>], pmts: &[(u16, Vec<u8>)], es: &[u16], rounds: usize) -> Vec<u8> {
    let mut w = Writer::new();
    for r in 0..rounds {
        for sec in pat {
            w.section(0, sec);
        }
        for (pmt_pid, sec) in pmts {
            w.section(*pmt_pid, sec);
        }
        for (i, e) in es.iter().enumerate() {
            w.es(*e, r % 4 == 0, (r + i) as u8);
        }
    }
    w.bytes()
}

#[test]
fn a_pat_in_two_sections_scrambles_the_programs_of_both() {
    let dir = tmp();
    // program 1 in section 0, program 2 in section 1
    let pat = pat_sections(1, 0, &[(1, 0x1001), (2, 0x1002)], 1);
    assert_eq!(pat.len(), 2);
    let pmts = vec![
        (
            0x1001,
            pmt_section(1, 0, 0x100, &[Es::new(0x1B, 0x100), Es::new(0x0F, 0x101)]),
        ),
        (
            0x1002,
            pmt_section(2, 0, 0x200, &[Es::new(0x1B, 0x200), Es::new(0x0F, 0x201)]),
        ),
    ];
    let es = [0x100, 0x101, 0x200, 0x201];
    let input = layout(&pat, &pmts, &es, 200);
    let (out, _) = scramble(
        dir.path(),
        &input,
        &["--cw-log", s(&dir.path().join("cw.log"))],
    );
    let pids: BTreeSet<u16> = es.into_iter().collect();
    assert_eq!(clear_on(&out, &pids), 0, "clear ES packets went out");
    for e in es {
        assert!(payload_packets_on(&out, e) >= 190, "PID {e:#x} was dropped");
    }
    // both PMTs are on air with our CA_descriptor
    let p = psi(&out);
    for prog in [1, 2] {
        assert_eq!(
            p.program_ca.get(&prog).map(Vec::len),
            Some(1),
            "program {prog}'s PMT has no CA_descriptor: {:?}",
            p.program_ca
        );
    }
}

#[test]
fn a_pat_of_500_programs_in_two_sections_scrambles_every_program() {
    let dir = tmp();
    let programs: Vec<(u16, u16)> = (1..=500).map(|n| (n, 0x1000 + n)).collect();
    let pat = pat_sections(1, 3, &programs, 250);
    assert_eq!(pat.len(), 2);
    let pmts: Vec<(u16, Vec<u8>)> = programs
        .iter()
        .map(|(n, pmt)| {
            (
                *pmt,
                pmt_section(*n, 0, 0x100 + n, &[Es::new(0x1B, 0x100 + n)]),
            )
        })
        .collect();
    let es: Vec<u16> = programs.iter().map(|(n, _)| 0x100 + n).collect();
    let input = layout(&pat, &pmts, &es, 6);
    let (out, _) = scramble(dir.path(), &input, &["--cw", "0102030405060708"]);
    let pids: BTreeSet<u16> = es.iter().copied().collect();
    assert_eq!(clear_on(&out, &pids), 0);
    // not blacked out: every program's ES is on air (the first round precedes the PMTs)
    for e in &es {
        assert!(payload_packets_on(&out, *e) >= 5, "PID {e:#x} blacked out");
    }
}

#[test]
fn every_stream_type_of_a_selected_service_is_scrambled_unless_excluded() {
    let dir = tmp();
    let streams = [
        Es::new(0x1B, 0x100),                 // H.264
        Es::new(0x06, 0x101),                 // private PES, no descriptor
        Es::registered(0x06, 0x102, b"BSSD"), // SMPTE 302M
        Es::registered(0x06, 0x103, b"AV01"), // AV1
        Es::new(0x21, 0x104),                 // JPEG 2000
        Es::new(0x05, 0x105),                 // private sections
        Es::new(0xC3, 0x106),                 // user private
        Es::new(0x0F, 0x107),                 // AAC
    ];
    let pat = pat_sections(1, 0, &[(1, 0x1001)], 1);
    let pmts = vec![(0x1001, pmt_section(1, 0, 0x100, &streams))];
    let es: Vec<u16> = streams.iter().map(|e| e.pid).collect();
    let input = layout(&pat, &pmts, &es, 100);
    let all: BTreeSet<u16> = es.iter().copied().collect();

    let (out, stats) = scramble(dir.path(), &input, &[]);
    assert_eq!(clear_on(&out, &all), 0, "{stats}");
    for e in &es {
        assert!(payload_packets_on(&out, *e) >= 99, "PID {e:#x}");
    }

    // the operator's exclusions are the only way to leave an ES clear
    let (out, _) = scramble(
        dir.path(),
        &input,
        &["--exclude-pid", "0x105", "--exclude-pid", "0x106"],
    );
    let kept: BTreeSet<u16> = all
        .iter()
        .copied()
        .filter(|p| *p < 0x105 || *p == 0x107)
        .collect();
    assert_eq!(clear_on(&out, &kept), 0);
    assert_eq!(clear_on(&out, &BTreeSet::from([0x105, 0x106])), 200);

    // --no-audio leaves the audio kinds it knows (AAC, SMPTE 302M) clear, nothing else
    let (out, _) = scramble(dir.path(), &input, &["--no-audio"]);
    let audio = BTreeSet::from([0x102, 0x107]);
    assert_eq!(clear_on(&out, &audio), 200);
    let rest: BTreeSet<u16> = all.difference(&audio).copied().collect();
    assert_eq!(clear_on(&out, &rest), 0);
}

#[test]
fn es_packets_ahead_of_the_pmt_naming_them_are_nulled_not_sent() {
    let dir = tmp();
    let pat = pat_sections(1, 0, &[(1, 0x1001)], 1);
    let mut w = Writer::new();
    for r in 0..50 {
        w.section(0, &pat[0]);
        w.section(0x1001, &pmt_section(1, 0, 0x100, &[Es::new(0x1B, 0x100)]));
        w.es(0x100, r % 4 == 0, r as u8);
    }
    // the ES moves to 0x101: its packets come first, the PMT naming it after
    for i in 0..192 {
        w.es(0x101, i % 4 == 0, i as u8);
    }
    for r in 0..50 {
        w.section(0, &pat[0]);
        w.section(0x1001, &pmt_section(1, 1, 0x101, &[Es::new(0x1B, 0x101)]));
        w.es(0x101, r % 4 == 0, r as u8);
    }
    let (out, stats) = scramble(dir.path(), &w.bytes(), &["--cw", "0102030405060708"]);
    assert_eq!(clear_on(&out, &BTreeSet::from([0x100, 0x101])), 0);
    assert_eq!(
        payload_packets_on(&out, 0x101),
        50,
        "the ES after its PMT is on air"
    );
    assert_eq!(stats["stream"]["nulled_unreferenced"], 192, "{stats}");
}

#[test]
fn a_scrambled_stream_gets_a_cat_even_without_an_emm_pid() {
    let dir = tmp();
    // the sample has no CAT (and PCRs, so stream time moves)
    let input = std::fs::read(cli_support::sample("spts.ts")).unwrap();
    assert_eq!(
        psi(&packets(&cli_support::sample("spts.ts"))).cat_sections,
        0
    );
    let (out, _) = scramble(dir.path(), &input, &["--cw", "0102030405060708"]);
    let p = psi(&out);
    assert!(p.cat_sections >= 1, "no CAT in a scrambled BISS output");
    assert!(
        p.cat_ca.is_empty(),
        "no EMM stream, no CA_descriptor: {:?}",
        p.cat_ca
    );
}

#[test]
fn a_run_that_scrambles_nothing_fails_with_the_reason() {
    let dir = tmp();
    let pat = pat_sections(1, 0, &[(1, 0x1001)], 1);
    let pmts = vec![(0x1001, pmt_section(1, 0, 0x100, &[Es::new(0x1B, 0x100)]))];
    let input = layout(&pat, &pmts, &[0x100], 20);
    let src = dir.path().join("in.ts");
    std::fs::write(&src, &input).unwrap();
    let out = dir.path().join("out.ts");

    let o = castmux(&["scramble", "-i", s(&src), "-o", s(&out), "--service", "7"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("[7]") && err.contains("not in the input's PAT"),
        "{err}"
    );

    let o = castmux(&[
        "scramble",
        "-i",
        s(&src),
        "-o",
        s(&out),
        "--exclude-pid",
        "0x100",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("nothing was scrambled"), "{err}");

    // no PAT at all
    let mut w = Writer::new();
    for i in 0..20 {
        w.es(0x100, false, i);
    }
    std::fs::write(&src, w.bytes()).unwrap();
    let o = castmux(&["scramble", "-i", s(&src), "-o", s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("no complete PAT"), "{err}");
    // ... and not one of its packets went out clear
    assert_eq!(clear_on(&packets(&out), &BTreeSet::from([0x100])), 0);

    ok(&[
        "scramble",
        "-i",
        s(&src),
        "-o",
        s(&out),
        "--allow-unscrambled",
    ]);
}

/// A stock ffmpeg stream, H.264 + SMPTE 302M audio: every packet of both scrambled, and the
/// descrambled stream decodes.
#[test]
fn ffmpeg_h264_with_smpte_302m_is_scrambled_whole() {
    let dir = tmp();
    let src = dir.path().join("s302m.ts");
    let made = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25:duration=3",
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=1000:sample_rate=48000:duration=3",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "s302m", "-strict", "-2", "-ac", "2", "-f", "mpegts"])
        .arg(&src)
        .status()
        .expect("ffmpeg must be installed (Debian package ffmpeg)");
    assert!(
        made.success(),
        "ffmpeg failed to make the H.264 + SMPTE 302M stream"
    );
    let input = packets(&src);
    let in_psi = psi(&input);
    let es: BTreeSet<u16> = in_psi.es.keys().copied().collect();
    assert_eq!(es.len(), 2, "{:?}", in_psi.es);

    let out = dir.path().join("scr.ts");
    let cw_log = dir.path().join("cw.log");
    ok(&[
        "scramble",
        "-i",
        s(&src),
        "-o",
        s(&out),
        "--cw-log",
        s(&cw_log),
    ]);
    let scrambled = packets(&out);
    assert_eq!(
        clear_on(&scrambled, &es),
        0,
        "clear packets of the H.264 + 302M service"
    );
    for e in &es {
        assert!(payload_packets_on(&scrambled, *e) > 10, "PID {e:#x}");
    }

    let clear = dir.path().join("clear.ts");
    ok(&[
        "descramble",
        "-i",
        s(&out),
        "-o",
        s(&clear),
        "--cw-log",
        s(&cw_log),
    ]);
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(&clear)
        .output()
        .expect("ffprobe");
    let codecs = String::from_utf8_lossy(&probe.stdout);
    assert!(
        codecs.contains("h264") && codecs.contains("s302m"),
        "{codecs}"
    );
    let decode = ffmpeg_decode(&clear);
    assert!(decode.status.success());
    assert!(
        decode.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&decode.stderr)
    );
}
