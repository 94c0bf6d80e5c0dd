//! `castmux probe` on clear and scrambled streams.

mod cli_support;

use std::collections::BTreeMap;

use cli_support::*;

fn probe_json(path: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["probe", s(path), "--json"];
    args.extend_from_slice(extra);
    let out = castmux(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("probe JSON")
}

fn pid_entry(v: &serde_json::Value, pid: u64) -> &serde_json::Value {
    v["pids"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("PID {pid:#x} missing"))
}

#[test]
fn probe_clear_mpts() {
    let v = probe_json(&sample("mpts.ts"), &["--duration", "60s"]);
    let programs = v["programs"].as_array().unwrap();
    assert_eq!(programs.len(), 3);
    assert_eq!(programs[2]["streams"][1]["kind"], "audio");
    assert_eq!(programs[2]["streams"][1]["stream_type"], 3);
    assert_eq!(v["packets"], 4102);
    let video = pid_entry(&v, 0x100);
    assert_eq!(video["scrambling"], "clear");
    assert_eq!(video["cc_errors"], 0);
    let kbps = video["bitrate_bps"].as_u64().unwrap() / 1000;
    assert!((150..=600).contains(&kbps), "{kbps} kbit/s");
}

#[test]
fn probe_scrambled_shows_ca_descriptors_and_scrambling_state() {
    let dir = tmp();
    let out = dir.path().join("scr.ts");
    ok(&[
        "scramble",
        "-i",
        s(&sample("spts.ts")),
        "-o",
        s(&out),
        "--crypto-period",
        "2s",
        "--ecm-pid",
        "0x1234",
        "--no-audio",
    ]);
    let v = probe_json(&out, &["--duration", "60s"]);
    let prog = &v["programs"][0];
    assert_eq!(prog["ca"][0]["pid"], 0x1234);
    assert_eq!(prog["ca"][0]["ca_system_id"], "0x5510");
    assert_eq!(prog["pmt_version"], 1);
    let video = pid_entry(&v, 0x100);
    assert_eq!(video["scrambling"], "scrambled");
    assert!(video["even_packets"].as_u64().unwrap() > 0);
    assert!(video["odd_packets"].as_u64().unwrap() > 0);
    assert_eq!(pid_entry(&v, 0x101)["scrambling"], "clear");
    for p in v["pids"].as_array().unwrap() {
        assert_eq!(p["cc_errors"], 0, "PID {}", p["pid"]);
    }
    // text form runs too, and --duration limits by stream time
    let text = ok(&["probe", s(&out), "--duration", "1s"]);
    let _ = text;
    let short = probe_json(&out, &["--duration", "1s"]);
    assert!(short["duration_s"].as_f64().unwrap() < 1.5);
}

// ---- ETR 290 and the CA checks -------------------------------------------------------

/// The count of one ETR 290 indicator, by its TR 101 290 name.
fn indicator<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["etr290"]["indicators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

fn count(v: &serde_json::Value, name: &str) -> u64 {
    indicator(v, name)["count"].as_u64().unwrap()
}

/// The indicators with a non-zero count: name -> count.
fn nonzero(v: &serde_json::Value) -> BTreeMap<String, u64> {
    v["etr290"]["indicators"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["count"] != 0)
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                i["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// spts.ts with `edit` applied to its packets, probed.
fn probe_edited(edit: impl FnOnce(&mut Vec<Packet>)) -> serde_json::Value {
    let dir = tmp();
    let path = dir.path().join("edited.ts");
    let mut pkts = packets(&sample("spts.ts"));
    edit(&mut pkts);
    std::fs::write(&path, pkts.concat()).unwrap();
    probe_json(&path, &[])
}

/// The index (in `pkts`) of the `n`th packet of `pid`.
fn nth_of(pkts: &[Packet], p: u16, n: usize) -> usize {
    pkts.iter()
        .enumerate()
        .filter(|(_, k)| pid(k) == p)
        .nth(n)
        .expect("enough packets")
        .0
}

fn has_pcr(p: &Packet) -> bool {
    p[3] & 0x20 != 0 && p[4] > 0 && p[5] & 0x10 != 0
}

#[test]
fn clean_ffmpeg_samples_have_no_priority_1_or_2_errors() {
    for name in SAMPLES {
        let v = probe_json(&sample(name), &[]);
        assert_eq!(nonzero(&v), BTreeMap::new(), "{name}");
        assert_eq!(v["etr290"]["priority1_errors"], 0, "{name}");
        assert_eq!(v["etr290"]["priority2_errors"], 0, "{name}");
        for p in v["etr290"]["pcr"].as_array().unwrap() {
            // the two CBR samples (-muxrate) are judged for accuracy; ffmpeg places their
            // PCRs within a tick of the byte position
            if matches!(name, "heavy-af.ts" | "nullpad.ts") {
                assert_eq!(p["constant_bitrate"], true, "{name}");
                assert!(
                    p["max_deviation_ns"].as_f64().unwrap() < 100.0,
                    "{name} {p}"
                );
            } else {
                assert_eq!(p["constant_bitrate"], false, "{name}");
            }
        }
    }
    // the text form has the table too, and --fail-on passes a clean input
    let out = castmux(&["probe", s(&sample("spts.ts")), "--fail-on", "p2"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ETR 290: 0 priority 1 errors, 0 priority 2 errors"),
        "{text}"
    );
    assert!(
        text.contains("2.3b  PCR_discontinuity_indicator_error"),
        "{text}"
    );
}

#[test]
fn a_lost_packet_is_one_continuity_count_error_on_its_pid() {
    let v = probe_edited(|pkts| {
        let i = nth_of(pkts, 0x100, 300);
        pkts.remove(i);
    });
    assert_eq!(
        nonzero(&v),
        BTreeMap::from([("Continuity_count_error".to_owned(), 1)])
    );
    let cc = indicator(&v, "Continuity_count_error");
    assert_eq!(cc["pids"][0]["pid"], 0x100);
    assert_eq!(cc["first"]["pid"], 0x100);
    assert_eq!(v["etr290"]["priority1_errors"], 1);
    assert_eq!(pid_entry(&v, 0x100)["cc_errors"], 1);
}

#[test]
fn a_pcr_jump_without_the_indicator_is_one_pcr_discontinuity_error() {
    let v = probe_edited(|pkts| {
        let from = pkts.len() / 2;
        for p in pkts[from..]
            .iter_mut()
            .filter(|p| pid(p) == 0x100 && has_pcr(p))
        {
            // PCR base + 5 s (90 kHz)
            let base = (u64::from(p[6]) << 25)
                | (u64::from(p[7]) << 17)
                | (u64::from(p[8]) << 9)
                | (u64::from(p[9]) << 1)
                | u64::from(p[10] >> 7);
            let base = (base + 5 * 90_000) & ((1 << 33) - 1);
            p[6] = (base >> 25) as u8;
            p[7] = (base >> 17) as u8;
            p[8] = (base >> 9) as u8;
            p[9] = (base >> 1) as u8;
            p[10] = (p[10] & 0x7F) | (((base & 1) as u8) << 7);
        }
    });
    // the time base bridges the jump: nothing else moves
    assert_eq!(
        nonzero(&v),
        BTreeMap::from([("PCR_discontinuity_indicator_error".to_owned(), 1)])
    );
    assert_eq!(
        indicator(&v, "PCR_discontinuity_indicator_error")["first"]["pid"],
        0x100
    );
    assert!(
        v["duration_s"].as_f64().unwrap() < 10.5,
        "{}",
        v["duration_s"]
    );
}

#[test]
fn a_pmt_with_a_bad_crc_is_one_crc_error() {
    let v = probe_edited(|pkts| {
        let i = nth_of(pkts, 0x1000, 20);
        // a byte inside the section (after the 4-byte header and the pointer field)
        pkts[i][4 + 1 + 10] ^= 0x55;
    });
    assert_eq!(nonzero(&v), BTreeMap::from([("CRC_error".to_owned(), 1)]));
    assert_eq!(indicator(&v, "CRC_error")["pids"][0]["pid"], 0x1000);
    assert_eq!(v["psi_errors"], 1);
}

#[test]
fn a_transport_error_indicator_is_one_transport_error() {
    let v = probe_edited(|pkts| {
        let i = nth_of(pkts, 0x101, 100);
        pkts[i][1] |= 0x80;
    });
    assert_eq!(
        nonzero(&v),
        BTreeMap::from([("Transport_error".to_owned(), 1)])
    );
    assert_eq!(indicator(&v, "Transport_error")["first"]["pid"], 0x101);
}

#[test]
fn pats_missing_for_a_second_and_a_half_are_one_pat_error_and_fail_p1() {
    let dir = tmp();
    let path = dir.path().join("nopat.ts");
    let mut pkts = packets(&sample("spts.ts"));
    let (a, b) = (1500, 1500 + 825); // about 1.5 s of a 10 s, 5497-packet file
    let mut i = 0;
    pkts.retain(|p| {
        i += 1;
        !(pid(p) == 0 && (a..b).contains(&i))
    });
    std::fs::write(&path, pkts.concat()).unwrap();
    let v = probe_json(&path, &[]);
    // the counter of PID 0 skips over the gap: one continuity error too
    assert_eq!(
        nonzero(&v),
        BTreeMap::from([
            ("PAT_error".to_owned(), 1),
            ("Continuity_count_error".to_owned(), 1)
        ])
    );
    assert_eq!(indicator(&v, "Continuity_count_error")["first"]["pid"], 0);
    let t = indicator(&v, "PAT_error")["first"]["time_s"]
        .as_f64()
        .unwrap();
    assert!((3.0..5.0).contains(&t), "noticed at {t} s");
    // the exit status says so only when asked
    assert!(castmux(&["probe", s(&path)]).status.success());
    let out = castmux(&["probe", s(&path), "--fail-on", "p1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 priority 1 errors"));
}

#[test]
fn a_pid_absent_for_six_seconds_is_one_pid_error_and_its_pts_stops() {
    let v = probe_edited(|pkts| {
        let (a, b) = (1000, 1000 + 3300); // about 6 s
        let mut i = 0;
        pkts.retain(|p| {
            i += 1;
            !(pid(p) == 0x101 && (a..b).contains(&i))
        });
    });
    let n = nonzero(&v);
    assert_eq!(n.get("PID_error"), Some(&1), "{n:?}");
    assert_eq!(n.get("PTS_error"), Some(&1), "{n:?}");
    // the packets around the gap are consecutive on their PID only by counter: a CC error
    assert_eq!(n.get("Continuity_count_error"), Some(&1), "{n:?}");
    assert_eq!(n.len(), 3, "{n:?}");
    assert_eq!(indicator(&v, "PID_error")["first"]["pid"], 0x101);
    // with a longer --pid-timeout it is not an error
    let dir = tmp();
    let path = dir.path().join("gap.ts");
    let mut pkts = packets(&sample("spts.ts"));
    let mut i = 0;
    pkts.retain(|p| {
        i += 1;
        !(pid(p) == 0x101 && (1000..4300).contains(&i))
    });
    std::fs::write(&path, pkts.concat()).unwrap();
    let v = probe_json(&path, &["--pid-timeout", "8s"]);
    assert_eq!(count(&v, "PID_error"), 0);
}

#[test]
fn a_broken_sync_byte_is_a_sync_loss() {
    let v = probe_edited(|pkts| pkts[2000][0] = 0x46);
    assert_eq!(count(&v, "TS_sync_loss"), 1);
    assert_eq!(count(&v, "Sync_byte_error"), 1);
}

/// A store with one package and one card, for `scramble --cas builtin`.
fn store(dir: &std::path::Path) -> std::path::PathBuf {
    let db = dir.join("cas.db");
    for args in [
        vec!["init"],
        vec!["package", "add", "news"],
        vec![
            "card",
            "add",
            "--serial",
            "2100000001",
            "--packages",
            "news",
            "--days",
            "30",
        ],
    ] {
        let mut a = vec!["--db", s(&db)];
        a.extend(args);
        ok(&a);
    }
    db
}

#[test]
fn castmux_scrambled_output_is_clean_and_its_ca_figures_are_the_configured_ones() {
    let dir = tmp();
    let db = store(dir.path());
    let out = dir.path().join("scr.ts");
    ok(&[
        "--db",
        s(&db),
        "scramble",
        "-i",
        s(&sample("spts.ts")),
        "-o",
        s(&out),
        "--cas",
        "builtin",
        "--packages",
        "news",
        "--crypto-period",
        "1s",
        "--ecm-repetition",
        "200ms",
        "--emm-bitrate",
        "100k",
    ]);
    let v = probe_json(&out, &["--fail-on", "p2"]);
    assert_eq!(nonzero(&v), BTreeMap::new());
    let ecm = &v["ca"]["ecm"][0];
    assert_eq!(ecm["pid"], 0x1FF0);
    let mean = ecm["mean_interval_ms"].as_f64().unwrap();
    assert!((190.0..=215.0).contains(&mean), "ECM interval {mean} ms");
    assert_eq!(ecm["over_limit"], 0);
    let video = v["ca"]["cw"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["pid"] == 0x100)
        .expect("CW periods of the video");
    assert!(video["periods"].as_u64().unwrap() >= 7, "{video}");
    for k in ["min_period_s", "mean_period_s", "max_period_s"] {
        let p = video[k].as_f64().unwrap();
        assert!((0.99..=1.01).contains(&p), "{k} {p}");
    }
    let emm = &v["ca"]["emm"][0];
    assert_eq!(emm["pid"], 0x1FF1);
    let bps = emm["bitrate_bps"].as_u64().unwrap();
    assert!((90_000..=110_000).contains(&bps), "EMM {bps} bit/s");

    // the same output without its CAT: scrambled packets and no CAT
    let no_cat: Vec<Packet> = packets(&out).into_iter().filter(|p| pid(p) != 1).collect();
    let path = dir.path().join("nocat.ts");
    std::fs::write(&path, no_cat.concat()).unwrap();
    let v = probe_json(&path, &[]);
    assert_eq!(nonzero(&v), BTreeMap::from([("CAT_error".to_owned(), 1)]));
    // priority 2 only: --fail-on p1 passes, p2 fails
    assert!(castmux(&["probe", s(&path), "--fail-on", "p1"])
        .status
        .success());
    assert!(!castmux(&["probe", s(&path), "--fail-on", "p2"])
        .status
        .success());
}
