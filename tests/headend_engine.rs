//! The head-end engine with many channels in one process: 50 UDP channels on the shared
//! data plane, each with its own CW pair. Every channel's output descrambles, byte for byte,
//! to its input's elementary streams; a channel whose output is gone and a channel whose
//! input stops leave the other channels' streams complete and continuous.

mod cli_support;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::gen::{pat_sections, pmt_section, Es, Writer};
use cli_support::{cc_errors, free_udp_port, has_payload, packets_of, pid, tsc, Packet};
use csa::{ControlWord, KeyContext};

const CHANNELS: usize = 50;
const DATAGRAMS: usize = 100;
const VIDEO: u16 = 0x100;
const AUDIO: u16 = 0x101;
/// Its output socket is closed before the run.
const DEAD_OUTPUT: usize = 7;
/// Its input stops after STOPPED_AFTER datagrams.
const DEAD_INPUT: usize = 13;
const STOPPED_AFTER: usize = 30;

fn keys(ch: usize) -> (String, String) {
    (
        format!("{ch:02X}02030604050615"),
        format!("{ch:02X}12131614151655"),
    )
}

/// Channel `ch`'s input: PAT and PMT every 40 packets, video and audio with content of
/// its own, cut into datagrams of 7 packets.
fn stream(ch: usize) -> Vec<Vec<u8>> {
    let pat = &pat_sections(1, 0, &[(1, 0x1000)], 64)[0];
    let pmt = pmt_section(1, 0, VIDEO, &[Es::new(0x1B, VIDEO), Es::new(0x0F, AUDIO)]);
    let mut w = Writer::new();
    let mut n = 0;
    while w.packets.len() < DATAGRAMS * 7 {
        if n % 40 == 0 {
            w.section(0, pat);
            w.section(0x1000, &pmt);
        }
        let pid = if n % 4 == 3 { AUDIO } else { VIDEO };
        w.es(pid, n % 25 == 0, (ch as u8).wrapping_mul(37) ^ (n as u8));
        n += 1;
    }
    w.packets.truncate(DATAGRAMS * 7);
    w.packets
        .chunks(7)
        .map(|d| d.iter().flat_map(|p| p.iter().copied()).collect())
        .collect()
}

fn es_packets(pkts: &[Packet]) -> Vec<Packet> {
    pkts.iter()
        .filter(|p| matches!(pid(p), VIDEO | AUDIO))
        .copied()
        .collect()
}

/// One run of the head-end: `channels` UDP channels on `workers` workers, batches of
/// `batch` packets; the datagrams go out `burst` rounds at a time (a round: one datagram
/// to every channel), a `pause` after each burst.
struct Case {
    channels: usize,
    workers: usize,
    batch: usize,
    dead_output: Option<usize>,
    dead_input: Option<usize>,
    burst: usize,
    pause: Duration,
    /// `headend --read-interval`, if not the default.
    read_interval: Option<&'static str>,
}

#[test]
fn fifty_channels_each_descramble_and_a_dead_one_leaves_the_others_whole() {
    run(&Case {
        channels: CHANNELS,
        workers: 2,
        batch: 512,
        dead_output: Some(DEAD_OUTPUT),
        dead_input: Some(DEAD_INPUT),
        burst: 1,
        pause: Duration::from_millis(10),
        read_interval: None,
    });
}

/// Bursts into small batches on one worker, reading at every arrival: a read fills the
/// batch while the input holds more datagrams than the socket shows, and every packet must
/// still come out.
#[test]
fn bursts_into_small_batches_lose_nothing_on_one_worker() {
    run(&Case {
        channels: 3,
        workers: 1,
        batch: 8,
        dead_output: None,
        dead_input: None,
        burst: 25,
        pause: Duration::from_millis(150),
        read_interval: Some("0"),
    });
}

/// Reading on a cadence: the worker sleeps between reads while traffic flows, and a read
/// that fills a small batch is read again at once; every packet still comes out, in order.
#[test]
fn reading_on_a_cadence_loses_nothing() {
    run(&Case {
        channels: 12,
        workers: 1,
        batch: 8,
        dead_output: None,
        dead_input: Some(5),
        burst: 4,
        pause: Duration::from_millis(12),
        read_interval: Some("4ms"),
    });
}

fn run(case: &Case) {
    let dir = tempfile::tempdir().unwrap();
    let outs: Vec<UdpSocket> = (0..case.channels)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
            s
        })
        .collect();
    let in_ports: Vec<u16> = (0..case.channels).map(|_| free_udp_port()).collect();
    let mut toml = String::new();
    for ch in 0..case.channels {
        let (even, odd) = keys(ch);
        toml.push_str(&format!(
            "[[channel]]\nname = \"ch{ch}\"\ninput = \"udp://127.0.0.1:{}\"\n\
             output = \"udp://127.0.0.1:{}\"\ncw = \"{even}:{odd}\"\ncrypto_period = \"200ms\"\n\
             batch = {}\n\n",
            in_ports[ch],
            outs[ch].local_addr().unwrap().port(),
            case.batch
        ));
    }
    let cfg = dir.path().join("headend.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut he = Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args([
            "headend",
            "--workers",
            &case.workers.to_string(),
            "--config",
        ])
        .arg(&cfg)
        .args(
            case.read_interval
                .map(|d| ["--read-interval", d])
                .into_iter()
                .flatten(),
        )
        .env("CASTMUX_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = he.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("headend: running") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the head-end did not start");
    // the dead output: its receiver goes away before any packet is sent
    let mut outs: Vec<Option<UdpSocket>> = outs.into_iter().map(Some).collect();
    if let Some(d) = case.dead_output {
        outs[d] = None;
    }

    let receivers: Vec<_> = outs
        .into_iter()
        .map(|s| {
            std::thread::spawn(move || {
                let Some(s) = s else { return Vec::new() };
                let mut got = Vec::new();
                let mut buf = [0u8; 2048];
                let mut quiet_since = Instant::now();
                while quiet_since.elapsed() < Duration::from_secs(3) {
                    if let Ok(n) = s.recv(&mut buf) {
                        got.extend_from_slice(&buf[..n]);
                        quiet_since = Instant::now();
                    }
                }
                got
            })
        })
        .collect();
    let streams: Vec<Vec<Vec<u8>>> = (0..case.channels).map(stream).collect();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for r in 0..DATAGRAMS {
        for (ch, (stream, port)) in streams.iter().zip(&in_ports).enumerate() {
            if Some(ch) == case.dead_input && r >= STOPPED_AFTER {
                continue;
            }
            tx.send_to(&stream[r], ("127.0.0.1", *port)).unwrap();
        }
        if r % case.burst == case.burst - 1 {
            std::thread::sleep(case.pause);
        }
    }
    let outputs: Vec<Vec<u8>> = receivers.into_iter().map(|r| r.join().unwrap()).collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(he.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = he.wait().unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "headend: {status:?}\n{log}");

    for ch in (0..case.channels).filter(|c| Some(*c) != case.dead_output) {
        let sent: Vec<u8> = streams[ch]
            .iter()
            .take(if Some(ch) == case.dead_input {
                STOPPED_AFTER
            } else {
                DATAGRAMS
            })
            .flatten()
            .copied()
            .collect();
        let want = es_packets(&packets_of(&sent));
        let out = packets_of(&outputs[ch]);
        let es = es_packets(&out);
        let clear = es.iter().filter(|p| has_payload(p) && tsc(p) == 0).count();
        assert_eq!(clear, 0, "channel {ch}: {clear} ES packets in clear");
        let parities: std::collections::BTreeSet<u8> = es.iter().map(tsc).collect();
        assert!(
            Some(ch) == case.dead_input || parities.len() == 2,
            "channel {ch}: the key never switched ({parities:?})"
        );
        let (even, odd) = keys(ch);
        let ctx = KeyContext::csa2(
            &ControlWord::from_hex(&even).unwrap(),
            &ControlWord::from_hex(&odd).unwrap(),
        );
        let mut bytes: Vec<u8> = es.iter().flatten().copied().collect();
        ctx.descramble(&mut bytes).unwrap();
        let got = packets_of(&bytes);
        assert_eq!(
            got.len(),
            want.len(),
            "channel {ch}: {} ES packets out, {} in",
            got.len(),
            want.len()
        );
        assert!(
            got == want,
            "channel {ch}: descrambled ES differ from the input's"
        );
        let errors = cc_errors(&out);
        assert!(
            errors.values().all(|n| *n == 0),
            "channel {ch}: CC errors {errors:?}"
        );
    }
}
