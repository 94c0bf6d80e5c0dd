//! `loadtest headend` against the real head-end binary: a few channels, 1 s periods, every
//! packet checked; with faults, each one's effect is reported and nothing leaks.

use std::time::Duration;

use castmux::loadtest::headend::{run, Fault, HeadendLimits, HeadendLoad};

fn load(dir: &tempfile::TempDir, channels: usize, secs: u64) -> HeadendLoad {
    HeadendLoad {
        castmux: env!("CARGO_BIN_EXE_castmux").into(),
        channels,
        bitrate: 1_000_000,
        crypto_period: Duration::from_secs(1),
        duration: Duration::from_secs(secs),
        workers: Some(1),
        ecmg: false,
        faults: vec![],
        work_dir: dir.path().join("work"),
        interval: Duration::from_secs(1),
    }
}

#[test]
fn builtin_cas_channels_pass_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load(&dir, 4, 8);
    let r = run(&cfg, |_| {}).unwrap();
    let t = &r.total;
    eprintln!("{}", serde_json::to_string_pretty(&r.total).unwrap());
    eprintln!(
        "latency {:?} ecm {:?} cw {:?} lead {:?}",
        r.latency_ms, r.ecm_interval_ms, r.cw_period_ms, r.switch_lead_ms
    );
    assert_eq!(
        (t.clear, t.undecryptable, t.switch_before_ecm, t.lost),
        (0, 0, 0, 0),
        "{t:?}"
    );
    assert!(t.verified > 4 * 5 * 600, "{t:?}");
    assert!(t.key_switches >= 4 * 5, "{t:?}");
    assert!(r.ecm_interval_ms.max <= 500.0, "{:?}", r.ecm_interval_ms);
    assert_eq!(t.cc_errors, 0, "{t:?}");
}

#[test]
fn faults_are_played_and_nothing_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = load(&dir, 3, 14);
    cfg.ecmg = true;
    cfg.faults = vec![
        Fault::parse("kill-ecmg@3s+3s").unwrap(),
        Fault::parse("slow-ecmg@8s+2s:300ms").unwrap(),
        Fault::parse("stop-input:1@4s+2s").unwrap(),
    ];
    let r = run(&cfg, |_| {}).unwrap();
    let t = &r.total;
    eprintln!("{}", serde_json::to_string_pretty(&r.faults).unwrap());
    eprintln!("{}", serde_json::to_string_pretty(t).unwrap());
    // whatever the ECMG does, nothing leaves in clear and what is scrambled descrambles
    assert_eq!(
        (t.clear, t.undecryptable, t.switch_before_ecm),
        (0, 0, 0),
        "{t:?}"
    );
    assert!(t.verified > 3 * 8 * 600, "{t:?}");
    assert_eq!(r.faults.len(), 3);
    // the ECMG down for 3 s: no key switch can happen without its ECM, so periods stretch
    assert!(r.cw_period_ms.max >= 2000.0, "{:?}", r.cw_period_ms);
    // the input stop is not loss: those packets were never sent
    assert_eq!(t.lost, 0, "{t:?}");
}

/// An EMMG floods the head-end's `[emmg]` port at 1 Mbit/s after asking for 64 kbit/s: the
/// head-end drops the excess and counts it, every channel carries about the allocation on
/// its EMM PID, and the channels' scrambling is untouched.
#[test]
fn an_emmg_flood_is_policed_at_the_port_and_the_channels_stay_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = load(&dir, 3, 10);
    cfg.ecmg = true;
    cfg.faults = vec![Fault::parse("emmg-flood@3s+5s:1M").unwrap()];
    let r = run(&cfg, |_| {}).unwrap();
    let json = serde_json::to_value(&r).unwrap();
    let fl = &json["faults"][0]["flood"];
    eprintln!("{}", serde_json::to_string_pretty(&json["faults"]).unwrap());
    let t = &r.total;
    assert_eq!(
        (t.clear, t.undecryptable, t.switch_before_ecm, t.lost),
        (0, 0, 0, 0),
        "{t:?}"
    );
    assert_eq!(fl["flooder"]["allocated_kbps"], 64, "{fl}");
    // 1 Mbit/s of one-packet EMMs for 5 s: some 3300 sent, far above 64 kbit/s
    let sent = fl["flooder"]["emms_sent"].as_u64().unwrap();
    assert!(sent > 2000, "{fl}");
    assert!(fl["offered_kbps"].as_f64().unwrap() > 500.0, "{fl}");
    let dropped = fl["castmux"]["dropped_over_bandwidth"].as_f64().unwrap();
    assert!(dropped > sent as f64 * 0.8, "{fl}");
    // on air: about the allocation on every channel, not the flood, and not nothing
    let worst = fl["on_air_kbps_max"].as_f64().unwrap();
    let mean = fl["on_air_kbps_mean"].as_f64().unwrap();
    assert!((40.0..=64.0 * 1.2).contains(&worst), "{fl}");
    assert!(mean > 40.0, "{fl}");
    let v = r.verdict(&HeadendLimits::default());
    assert!(v.passed, "{}", v.reason());
    assert!(v
        .criteria
        .iter()
        .any(|c| c.what.contains("flood") && c.passed));
    // the same run with a limit below what the allocation itself puts on air fails by name
    let v = r.verdict(&HeadendLimits {
        max_emm_flood_ratio: 0.5,
        ..HeadendLimits::default()
    });
    assert!(!v.passed);
    assert!(
        v.reason().contains("--max-emm-flood-ratio"),
        "{}",
        v.reason()
    );
    assert!(r.summary().to_string().contains("dropped by castmux"));
}

#[test]
fn faults_parse_and_bad_ones_are_refused() {
    assert_eq!(
        Fault::parse("stop-input:2@10s+500ms").unwrap(),
        Fault::StopInput {
            channel: 2,
            at: Duration::from_secs(10),
            lasting: Duration::from_millis(500)
        }
    );
    for bad in [
        "kill-ecmg",
        "kill-ecmg@x+1s",
        "slow-ecmg@1s+1s",
        "melt@1s+1s",
        "stop-input:x@1s+1s",
    ] {
        let e = Fault::parse(bad).unwrap_err();
        assert!(e.contains("expected"), "{bad}: {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = load(&dir, 2, 1);
    cfg.faults = vec![Fault::parse("kill-ecmg@1s+1s").unwrap()];
    let e = run(&cfg, |_| {}).unwrap_err().to_string();
    assert!(e.contains("--ecmg"), "{e}");
}

/// `castmux loadtest headend` as an operator runs it: a passing run writes its JSON and
/// plot; a criterion the run cannot meet fails it by name.
#[test]
fn the_command_reports_and_fails_by_criterion() {
    let dir = tempfile::tempdir().unwrap();
    let (json, plot) = (dir.path().join("run.json"), dir.path().join("run.svg"));
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_castmux"))
            .args(["loadtest", "headend", "-c", "3", "--bitrate", "1M"])
            .args([
                "--crypto-period",
                "1s",
                "--duration",
                "6s",
                "--stats-interval",
                "1s",
            ])
            .args(["--workers", "1", "--quiet"])
            .args(extra)
            .env_remove("CASTMUX_DB")
            .env("CASTMUX_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = run(&[
        "--json",
        json.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("undecryptable") && text.contains("PASS"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["verdict"]["passed"], true, "{v}");
    assert_eq!(v["total"]["clear"], 0, "{v}");
    assert!(
        v["total"]["verified"].as_u64().unwrap() > 3 * 4 * 600,
        "{v}"
    );
    assert!(v["samples"].as_array().unwrap().len() >= 5, "{v}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("ECM interval"),
        "{}",
        &svg[..200.min(svg.len())]
    );
    // a panel per channel, aligned with the intervals
    assert!(svg.contains("per channel (all 3)"), "no per-channel panels");
    assert!(svg.contains("channel 2 (ms)"), "no panel of channel 2");
    let per_channel = v["channel_samples"].as_array().unwrap();
    assert_eq!(per_channel.len(), 3, "{v}");
    assert_eq!(
        per_channel[0]["samples"].as_array().unwrap().len(),
        v["samples"].as_array().unwrap().len()
    );

    // ECMs repeat every ~100 ms: a 50 ms limit cannot be met
    let out = run(&["--max-ecm-interval-ms", "50"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--max-ecm-interval-ms"), "{err}");
}
