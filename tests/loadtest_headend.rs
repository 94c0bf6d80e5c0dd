//! `loadtest headend` against the real head-end binary: a few channels, 1 s periods, every
//! packet checked; with faults, each one's effect is reported and nothing leaks.

use std::time::Duration;

use castmux::loadtest::headend::{run, HeadendLoad};

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
