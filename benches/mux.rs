//! The multiplexer under load: three live SPTS inputs (ffmpeg-made MPEG-2, RATE Mbit/s of
//! TS each, default 12) over UDP loopback into one `castmux headend` MPTS channel sent at
//! a constant bitrate (CBR Mbit/s, default 40) with PCR restamping, every program scrambled;
//! castmux pinned to one core, the sender and the receiver on the other, castmux's CPU read
//! from /proc over the measured window. Beside it, the same three inputs as three plain
//! SPTS channels (scrambled, no multiplex, no constant bitrate), so the cost of the
//! multiplex and the schedule shows. Printed side by side: Mbit/s in and out, CPU % of the
//! core, CPU % per 100 Mbit/s of input.
//!
//! Run: `cargo bench --bench mux` (env: CASTMUX_BENCH_RATE, CASTMUX_BENCH_CBR,
//! CASTMUX_BENCH_SECS). Needs ffmpeg and taskset.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use castmux::loadtest::headend::cpu_seconds;

#[path = "support/load.rs"]
mod load;
use load::{env_num, pin_to};

const CW: &str = "0102030405060708:1112131415161718";

/// An SPTS of `secs` seconds at `mbps` Mbit/s of TS (video held at the rate by stuffing).
fn make_input(path: &Path, service: u16, mbps: f64, secs: u64) {
    let video = format!("{}k", (mbps * 1000.0 * 0.85) as u64);
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size=720x576:rate=25:duration={secs}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:duration={secs}"))
        .args(["-c:v", "mpeg2video", "-g", "12", "-b:v", &video])
        .args(["-minrate", &video, "-maxrate", &video, "-bufsize", "2M"])
        .args(["-c:a", "mp2", "-b:a", "192k"])
        .args(["-muxrate", &format!("{}k", (mbps * 1000.0) as u64)])
        .args(["-mpegts_service_id", &service.to_string(), "-f", "mpegts"])
        .arg(path)
        .output()
        .expect("ffmpeg (Debian package ffmpeg) is needed by this bench");
    assert!(out.status.success(), "ffmpeg: {out:?}");
}

fn start(cfg: &Path) -> Child {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"])
        .arg(env!("CARGO_BIN_EXE_castmux"))
        .args(["headend", "--config"])
        .arg(cfg)
        .args(["--workers", "1"]);
    load::start_headend(cmd)
}

struct Run {
    in_mbps: f64,
    out_mbps: f64,
    cpu_pct: f64,
}

/// Send the three inputs at their rate for `secs` (looping the files), receive on
/// `out_port`, measure castmux's CPU over the middle of the run.
fn run(
    child: &mut Child,
    inputs: &[Vec<u8>],
    ports: &[u16],
    rx: UdpSocket,
    rate: f64,
    secs: f64,
) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let receiver = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || {
            pin_to(1);
            rx.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut buf = [0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = rx.recv(&mut buf) {
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        })
    };
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (inputs, ports, sent) = (inputs.to_vec(), ports.to_vec(), sent.clone());
        std::thread::spawn(move || {
            pin_to(1);
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let dgram = 7 * 188;
            let step = Duration::from_secs_f64(dgram as f64 * 8.0 / (rate * 1e6));
            let start = Instant::now();
            let mut pos = vec![0usize; inputs.len()];
            let mut k = 0u32;
            while (step * k).as_secs_f64() < secs {
                if let Some(d) = (step * k).checked_sub(start.elapsed()) {
                    std::thread::sleep(d);
                }
                for (i, data) in inputs.iter().enumerate() {
                    if pos[i] + dgram > data.len() {
                        pos[i] = 0;
                    }
                    let _ = tx.send_to(&data[pos[i]..pos[i] + dgram], ("127.0.0.1", ports[i]));
                    pos[i] += dgram;
                    sent.fetch_add(dgram as u64, Ordering::Relaxed);
                }
                k += 1;
            }
        })
    };
    // measure the middle: after 2 s of warm-up, for secs - 4
    std::thread::sleep(Duration::from_secs(2));
    let (cpu0, t0) = (cpu_seconds(child.id()), Instant::now());
    let (in0, out0) = (
        sent.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
    );
    std::thread::sleep(Duration::from_secs_f64(secs - 4.0));
    let (cpu1, dt) = (cpu_seconds(child.id()), t0.elapsed().as_secs_f64());
    let (in1, out1) = (
        sent.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
    );
    sender.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    receiver.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    Run {
        in_mbps: (in1 - in0) as f64 * 8.0 / dt / 1e6,
        out_mbps: (out1 - out0) as f64 * 8.0 / dt / 1e6,
        cpu_pct: (cpu1 - cpu0) / dt * 100.0,
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn main() {
    let rate = env_num("CASTMUX_BENCH_RATE", 12.0);
    let cbr = env_num("CASTMUX_BENCH_CBR", 40.0);
    let secs = env_num("CASTMUX_BENCH_SECS", 14.0).max(6.0);
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = Vec::new();
    for (i, service) in [1u16, 2, 3].iter().enumerate() {
        let p = dir.path().join(format!("in{i}.ts"));
        make_input(&p, *service, rate, 10);
        inputs.push(std::fs::read(&p).unwrap());
    }

    // the multiplex: three programs, one scrambled, at a constant bitrate
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let out_port = rx.local_addr().unwrap().port();
    let mut toml = format!(
        "[[channel]]\nname = \"mux\"\noutput = \"udp://127.0.0.1:{out_port}\"\ntsid = 7\n\
         network_id = 1\nnetwork_name = \"bench\"\ncbr = \"{cbr}M\"\n\
         cw = \"{CW}\"\nallow_unscrambled = true\n"
    );
    for (i, port) in ports.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[channel.program]]\ninput = \"udp://127.0.0.1:{port}\"\npnr = {}\n\
             name = \"P{i}\"\nlcn = {}\n",
            101 + i,
            i + 1
        ));
    }
    let cfg = dir.path().join("mux.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut child = start(&cfg);
    let mux = run(&mut child, &inputs, &ports, rx, rate, secs);

    // the same inputs as three SPTS channels, scrambled, no multiplex
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let out_port = rx.local_addr().unwrap().port();
    let mut toml = String::new();
    for (i, port) in ports.iter().enumerate() {
        toml.push_str(&format!(
            "[[channel]]\nname = \"spts{i}\"\ninput = \"udp://127.0.0.1:{port}\"\n\
             output = \"udp://127.0.0.1:{out_port}\"\ncw = \"{CW}\"\n\n"
        ));
    }
    let cfg = dir.path().join("spts.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut child = start(&cfg);
    let plain = run(&mut child, &inputs, &ports, rx, rate, secs);

    println!();
    println!("castmux on one core, 3 live SPTS inputs × {rate} Mbit/s over UDP loopback, {secs} s");
    println!(
        "{:<48} {:>10} {:>11} {:>9} {:>22}",
        "", "in Mbit/s", "out Mbit/s", "CPU %", "CPU % per 100 Mbit/s"
    );
    for (name, r) in [
        (
            format!("MPTS, cbr {cbr}M, PCR restamp, all scrambled"),
            &mux,
        ),
        ("3 SPTS channels, all scrambled, no cbr".to_owned(), &plain),
    ] {
        println!(
            "{:<48} {:>10.1} {:>11.1} {:>9.1} {:>22.2}",
            name,
            r.in_mbps,
            r.out_mbps,
            r.cpu_pct,
            r.cpu_pct / r.in_mbps * 100.0
        );
    }
}
