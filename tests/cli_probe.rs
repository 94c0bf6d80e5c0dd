//! `castmux probe` on clear and scrambled streams.

mod cli_support;

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
