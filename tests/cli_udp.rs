//! A UDP loopback round trip through the real binary: sender -> scramble -> descramble,
//! with wall-clock crypto periods (the input is live) and the CW log.

mod cli_support;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cli_support::*;

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args(args)
        .env("CASTMUX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn castmux")
}

#[test]
fn udp_loopback_round_trip_with_wall_clock_periods() {
    let dir = tmp();
    let (p_in, p_mid) = (free_udp_port(), free_udp_port());
    let log = dir.path().join("cw.txt");
    let clear = dir.path().join("clear.ts");
    let in_url = format!("udp://127.0.0.1:{p_in}");
    let mid_url = format!("udp://127.0.0.1:{p_mid}");
    let mut scrambler = spawn(&[
        "scramble",
        "-i",
        &in_url,
        "-o",
        &mid_url,
        "--idle-timeout",
        "1s",
        "--crypto-period",
        "1s",
        "--cw-log",
        s(&log),
    ]);
    std::thread::sleep(Duration::from_millis(300));
    // the log has CW(0) and CW(1) now; the descrambler reads it again as periods go by
    let mut descrambler = spawn(&[
        "descramble",
        "-i",
        &mid_url,
        "-o",
        s(&clear),
        "--idle-timeout",
        "2s",
        "--cw-log",
        s(&log),
    ]);
    std::thread::sleep(Duration::from_millis(300));

    let input = packets(&sample("spts.ts"));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    // 7 packets per datagram, paced over about 2.4 s so the wall clock crosses periods
    for chunk in input.chunks(7) {
        sock.send_to(&chunk.concat(), ("127.0.0.1", p_in)).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    let st = scrambler.wait().unwrap();
    assert!(st.success(), "scrambler failed");
    let dt = descrambler.wait().unwrap();
    assert!(dt.success(), "descrambler failed");

    let lines = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(lines >= 3, "{lines} CW lines: wall-clock periods rotated");
    let es = BTreeSet::from([0x100u16, 0x101]);
    let got = on_pids(&packets(&clear), &es);
    let want = on_pids(&input, &es);
    assert_eq!(got.len(), want.len(), "packets lost on loopback");
    assert!(got == want, "descrambled ES differs from the input");
}

#[test]
fn ctrl_c_stops_cleanly_and_prints_the_counters() {
    let dir = tmp();
    let p_in = free_udp_port();
    let out = dir.path().join("out.ts");
    let child = Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args([
            "scramble",
            "-i",
            &format!("udp://127.0.0.1:{p_in}"),
            "-o",
            s(&out),
            "--stats",
        ])
        .env("CASTMUX_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn castmux");
    std::thread::sleep(Duration::from_millis(300));
    let input = packets(&sample("spts.ts"));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for chunk in input.chunks(7).take(200) {
        sock.send_to(&chunk.concat(), ("127.0.0.1", p_in)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "exit {:?}: {stderr}", done.status);
    assert!(stderr.contains("Stopped"), "the end is logged: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&done.stdout).expect("JSON counters on stdout");
    assert_eq!(report["stream"]["packets_in"], 1400, "{report}");
    // what came in went out, flushed before exit
    assert_eq!(packets(&out).len(), 1400);
}
