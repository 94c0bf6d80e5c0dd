//! The real binary on UDP loopback: `castmux scramble -i udp://... -o udp://...` with a
//! sender and a receiver in this process. Measures, per input rate:
//! - added latency (send -> receive of marker packets, hdrhistogram p50/p99/max),
//! - loss (marker packets sent vs received; castmux's own drop counters),
//! - castmux's peak resident memory (VmHWM).
//!
//! The stream is samples/spts.ts repeated, 6 of its packets plus 1 marker packet per
//! datagram. A marker is an adaptation-field-only packet on the sample's video PID (no
//! payload, so it passes clear like a PCR-only packet; a PID no program names would be
//! nulled, fail closed) whose private data is its sequence number. The first WARMUP
//! markers are not counted: the scrambler nulls the video PID until it has read the PMT.
//! Targets: 20 Mbit/s and 1 Gbit/s with no loss, p99 under 5 ms,
//! peak memory under 50 MB.
//!
//! Run: `cargo bench --bench udp_latency`

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// The video PID of samples/spts.ts.
const MARKER_PID: u16 = 0x100;
const WARMUP: usize = 100;
const PER_DATAGRAM: usize = 7;

struct Outcome {
    rate_mbps: f64,
    achieved_mbps: f64,
    sent: u64,
    received: u64,
    hist: Histogram<u64>,
    peak_rss_kb: u64,
}

fn marker(seq: u64) -> [u8; 188] {
    let mut p = [0xFFu8; 188];
    p[0] = 0x47;
    p[1] = (MARKER_PID >> 8) as u8;
    p[2] = MARKER_PID as u8;
    p[3] = 0x20;
    p[4] = 183;
    p[5] = 0x02; // transport_private_data_flag
    p[6] = 8;
    p[7..15].copy_from_slice(&seq.to_be_bytes());
    p
}

/// A marker's sequence number.
fn marker_seq(p: &[u8]) -> Option<usize> {
    let pid = u16::from_be_bytes([p[1], p[2]]) & 0x1FFF;
    if pid != MARKER_PID || p[3] & 0x30 != 0x20 || p[5] != 0x02 || p[6] != 8 {
        return None;
    }
    Some(u64::from_be_bytes(p[7..15].try_into().ok()?) as usize)
}

fn peak_rss_kb(child: &Child) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn run(rate_mbps: f64, seconds: f64) -> Outcome {
    let sample = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/samples/spts.ts"))
        .expect("samples/spts.ts");
    let packets: Vec<&[u8]> = sample.chunks_exact(188).collect();

    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let socket2_rx = socket2::SockRef::from(&rx);
    let _ = socket2_rx.set_recv_buffer_size(16 << 20);
    let out_port = rx.local_addr().unwrap().port();
    let in_port = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args([
            "scramble",
            "-i",
            &format!("udp://127.0.0.1:{in_port}"),
            "-o",
            &format!("udp://127.0.0.1:{out_port}"),
            "--idle-timeout",
            "1s",
        ])
        .env("CASTMUX_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn castmux (build it first: cargo build --release)");
    std::thread::sleep(Duration::from_millis(300));

    let n_datagrams = (rate_mbps * 1e6 * seconds / (PER_DATAGRAM as f64 * 188.0 * 8.0)) as usize;
    let sent_at: Arc<Vec<std::sync::atomic::AtomicU64>> = Arc::new(
        (0..n_datagrams)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
    );
    let origin = Instant::now();
    let done = Arc::new(AtomicBool::new(false));

    let receiver = {
        let sent_at = Arc::clone(&sent_at);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut got = 0u64;
            let mut buf = [0u8; 1500];
            loop {
                match rx.recv(&mut buf) {
                    Ok(n) => {
                        let now = origin.elapsed().as_micros() as u64;
                        for p in buf[..n].chunks_exact(188) {
                            let Some(seq) = marker_seq(p).filter(|s| *s >= WARMUP) else {
                                continue;
                            };
                            if let Some(t) = sent_at.get(seq) {
                                let t = t.load(Ordering::Relaxed);
                                got += 1;
                                hist.saturating_record(now.saturating_sub(t).max(1));
                            }
                        }
                    }
                    Err(_) if done.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            (got, hist)
        })
    };

    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ = socket2::SockRef::from(&tx).set_send_buffer_size(8 << 20);
    let interval = Duration::from_secs_f64(seconds / n_datagrams as f64);
    let mut datagram = Vec::with_capacity(PER_DATAGRAM * 188);
    let start = Instant::now();
    let mut next = 0usize;
    for seq in 0..n_datagrams {
        // pace in 1 ms steps: send what is due, then sleep
        let due = start + interval * seq as u32;
        let now = Instant::now();
        if due > now + Duration::from_millis(1) {
            std::thread::sleep(due - now);
        }
        datagram.clear();
        for _ in 0..PER_DATAGRAM - 1 {
            datagram.extend_from_slice(packets[next % packets.len()]);
            next += 1;
        }
        datagram.extend_from_slice(&marker(seq as u64));
        sent_at[seq].store(origin.elapsed().as_micros() as u64, Ordering::Relaxed);
        while tx.send_to(&datagram, ("127.0.0.1", in_port)).is_err() {
            std::thread::yield_now();
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let peak_rss_kb = peak_rss_kb(&child);
    let _ = child.wait();
    done.store(true, Ordering::Relaxed);
    let (received, hist) = receiver.join().unwrap();
    Outcome {
        rate_mbps,
        achieved_mbps: n_datagrams as f64 * PER_DATAGRAM as f64 * 188.0 * 8.0 / elapsed / 1e6,
        sent: n_datagrams.saturating_sub(WARMUP) as u64,
        received,
        hist,
        peak_rss_kb,
    }
}

fn main() {
    // `cargo bench` passes --bench; any other argument filters nothing here
    let mut rows = Vec::new();
    for (rate, secs) in [(20.0, 5.0), (200.0, 3.0), (1000.0, 3.0)] {
        rows.push(run(rate, secs));
    }
    println!(
        "\n{:>9} {:>10} {:>9} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "target",
        "achieved",
        "markers",
        "received",
        "lost",
        "p50 ms",
        "p99 ms",
        "max ms",
        "peak MB"
    );
    for r in &rows {
        println!(
            "{:>6.0} Mb {:>7.0} Mb {:>9} {:>9} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.1}",
            r.rate_mbps,
            r.achieved_mbps,
            r.sent,
            r.received,
            r.sent - r.received.min(r.sent),
            r.hist.value_at_quantile(0.5) as f64 / 1000.0,
            r.hist.value_at_quantile(0.99) as f64 / 1000.0,
            r.hist.max() as f64 / 1000.0,
            r.peak_rss_kb as f64 / 1024.0,
        );
    }
    println!("targets: no loss; p99 < 5 ms; peak memory < 50 MB");
}
