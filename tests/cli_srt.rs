//! SRT round trip through the real binaries: `castmux scramble` (file in, SRT caller out)
//! -> `srt-live-transmit` (Debian srt-tools; SRT listener in, UDP out) -> `castmux
//! descramble` (UDP in, file out) with the CW log. Every ES packet comes back byte for
//! byte. Fails, not skips, when srt-live-transmit is missing.

mod cli_support;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::*;

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn scramble_over_srt_through_srt_live_transmit_and_descramble() {
    let dir = tmp();
    let (srt_port, udp_port) = (free_udp_port(), free_udp_port());
    let log = dir.path().join("cw.txt");
    let clear = dir.path().join("clear.ts");

    let _relay = Killed(
        Command::new("srt-live-transmit")
            .args([
                "-q",
                "-a:no",
                &format!("srt://:{srt_port}?mode=listener"),
                &format!("udp://127.0.0.1:{udp_port}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("srt-live-transmit is required: apt-get install srt-tools"),
    );

    std::thread::sleep(Duration::from_millis(500));
    // the sample paced through a pipe at about 8 Mbit/s (SRT live mode wants a live rate)
    let input = packets(&sample("spts.ts"));
    let mut scrambler = Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args([
            "scramble",
            "-i",
            "-",
            "-o",
            &format!("srt://127.0.0.1:{srt_port}?mode=caller"),
            "--crypto-period",
            "300ms",
            "--cw-log",
            s(&log),
        ])
        .env("CASTMUX_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn castmux scramble");
    // the CW log exists once the scrambler has started
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.exists() {
        assert!(Instant::now() < deadline, "the scrambler did not start");
        assert!(
            scrambler.try_wait().unwrap().is_none(),
            "the scrambler exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut descrambler = Killed(
        Command::new(env!("CARGO_BIN_EXE_castmux"))
            .args([
                "descramble",
                "-i",
                &format!("udp://127.0.0.1:{udp_port}"),
                "-o",
                s(&clear),
                "--idle-timeout",
                "3s",
                "--cw-log",
                s(&log),
            ])
            .env("CASTMUX_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn castmux descramble"),
    );
    std::thread::sleep(Duration::from_millis(300));
    {
        use std::io::Write;
        let mut stdin = scrambler.stdin.take().unwrap();
        for chunk in input.chunks(70) {
            stdin.write_all(&chunk.concat()).unwrap();
            std::thread::sleep(Duration::from_millis(13));
        }
    }
    let out = scrambler.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "scramble: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = descrambler.0.wait().unwrap();
    assert!(st.success(), "descramble failed");

    let lines = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(lines >= 3, "{lines} CW lines: periods rotated");
    let es = BTreeSet::from([0x100u16, 0x101]);
    let got = on_pids(&packets(&clear), &es);
    let want = on_pids(&input, &es);
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        got.len(),
        want.len(),
        "ES packets lost over SRT (first difference at {first_diff:?})"
    );
    assert!(got == want, "descrambled ES differs from the input");
}
