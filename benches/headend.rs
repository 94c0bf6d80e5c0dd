//! The head-end engine under load: one `castmux headend` process, many channels of live UDP
//! on loopback, castmux pinned to one core and the sender and receiver to the other, so
//! castmux's CPU is its own (read from /proc over the measured window).
//!
//! Two runs, printed side by side:
//! - live: CHANNELS channels (default 200) × RATE Mbit/s (default 5) for SECS seconds
//!   (default 10), each channel its own fixed CW pair (CSA2) and its own phase (its
//!   datagrams are spaced evenly, at an offset of its own: independent sources do not
//!   send in step, and a bench that sends every channel's datagram at once measures a
//!   burst no head-end sees). Every datagram carries one
//!   marker packet: an adaptation-field-only packet on the scrambled video PID (no payload,
//!   so it passes clear like a PCR-only packet) whose private data holds the channel, a
//!   sequence number and the send time (realtime clock). Loss = markers sent − received;
//!   latency = the kernel's receive timestamp of each marker's datagram (SO_TIMESTAMPNS;
//!   the receiver polls, so castmux is not billed for waking it) − its send time. The
//!   receiver takes castmux's GSO writes whole (UDP_GRO), as a NIC would, so loopback
//!   does not split them into datagrams on castmux's core (CASTMUX_BENCH_RX_GRO=0: it does).
//! - idle: IDLE channels (default 1000) configured, no input, for 5 s: CPU and memory.
//!
//! Targets (issue 18): live 200 × 5 Mbit/s with 0 lost, p99 ≤ 10 ms, CPU ≤ 70 % of the one
//! core; idle 1000 channels ≤ 10 % of a core, RSS ≤ 2 MB per channel.
//!
//! Run: `cargo bench --bench headend` (env: CASTMUX_BENCH_CHANNELS, CASTMUX_BENCH_RATE,
//! CASTMUX_BENCH_SECS, CASTMUX_BENCH_IDLE, CASTMUX_BENCH_WORKERS, CASTMUX_BENCH_UDP_BURST:
//! `headend --udp-burst`, CASTMUX_BENCH_READ_INTERVAL: `headend --read-interval`;
//! these two go to this build only; CASTMUX_BENCH_ROUNDS: live runs of each build, taking
//! turns, summed). With
//! CASTMUX_BENCH_OTHER=/path/to/castmux the same two runs are made against that binary too
//! (e.g. a build of an earlier commit) and printed beside this one's; channels are written
//! in the `args = "…"` form every version reads. With CASTMUX_BENCH_FLOOR=1 the live runs
//! also take turns with a bare forwarder in castmux's place (`support/floor.rs`: the same
//! sockets, cadence and writes, no cipher or PSI): the kernel's floor at that moment, and
//! castmux's CPU above it round by round.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use castmux::loadtest::headend::{cpu_seconds, cpu_split, rss_kb};
use castmux::ts::psi_write::SectionWriter;
use castmux::ts::section::MAX_PSI_SECTION;
use castmux::ts::{LongHeader, Packetizer, Pid};
use hdrhistogram::Histogram;
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};

#[path = "support/floor.rs"]
mod floor;
#[path = "support/load.rs"]
mod load;
use load::{env_num, pin_to};

const PMT_PID: u16 = 0x1000;
const VIDEO_PID: u16 = 0x100;
const PER_DATAGRAM: usize = 7;
/// Markers of the first datagrams are not counted: the channel learns its PSI from them.
const WARMUP_DATAGRAMS: u32 = 200;

/// PAT and PMT packets of every channel (one program, H.264 on VIDEO_PID).
fn psi_packets() -> ([u8; 188], [u8; 188]) {
    let section = |table_id: u8, ext: u16, body: &[u8]| {
        let mut out = Vec::new();
        let h = LongHeader {
            table_id,
            table_id_extension: ext,
            version: 0,
            current_next: true,
            section_number: 0,
            last_section_number: 0,
        };
        let mut w = SectionWriter::long(&mut out, &h, MAX_PSI_SECTION);
        w.put(body);
        w.finish().expect("section");
        out
    };
    let pat = section(0, 1, &[0, 1, 0xE0 | (PMT_PID >> 8) as u8, PMT_PID as u8]);
    let pmt = section(
        2,
        1,
        &[
            0xE0 | (VIDEO_PID >> 8) as u8,
            VIDEO_PID as u8,
            0xF0,
            0,
            0x1B,
            0xE0 | (VIDEO_PID >> 8) as u8,
            VIDEO_PID as u8,
            0xF0,
            0,
        ],
    );
    let one = |pid: u16, s: &[u8]| {
        let mut got = None;
        Packetizer::new(Pid::new(pid))
            .packetize(s, |p| got = Some(*p))
            .expect("packetize");
        got.expect("one packet")
    };
    (one(0, &pat), one(PMT_PID, &pmt))
}

/// One channel's stream state.
struct Feed {
    pat: [u8; 188],
    pmt: [u8; 188],
    cc_pat: u8,
    cc_pmt: u8,
    cc_es: u8,
    seq: u32,
    /// How far this channel's datagrams run ahead of the first channel's, in datagram
    /// spacings (0 to 1): independent sources do not send in step.
    phase: f64,
}

impl Feed {
    /// The next datagram of `channel`, its marker stamped `t_us`.
    fn datagram(&mut self, channel: u16, t_us: u64, out: &mut Vec<u8>) {
        out.clear();
        let mut n = 0;
        if self.seq.is_multiple_of(40) {
            for (p, cc) in [(self.pat, &mut self.cc_pat), (self.pmt, &mut self.cc_pmt)] {
                let mut p = p;
                p[3] = (p[3] & 0xF0) | *cc;
                *cc = (*cc + 1) & 0x0F;
                out.extend_from_slice(&p);
                n += 1;
            }
        }
        while n < PER_DATAGRAM - 1 {
            let mut p = [0u8; 188];
            p[0] = 0x47;
            let start = self.cc_es == 0;
            p[1] = (if start { 0x40 } else { 0 }) | (VIDEO_PID >> 8) as u8;
            p[2] = VIDEO_PID as u8;
            p[3] = 0x10 | self.cc_es;
            self.cc_es = (self.cc_es + 1) & 0x0F;
            for (i, b) in p[4..].iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(31) ^ (self.seq as u8) | 1;
            }
            if start {
                p[4..10].copy_from_slice(&[0, 0, 1, 0xE0, 0, 0]);
            }
            out.extend_from_slice(&p);
            n += 1;
        }
        // the marker: adaptation field only (CC unchanged), private data = who and when
        let mut m = [0xFFu8; 188];
        m[0] = 0x47;
        m[1] = (VIDEO_PID >> 8) as u8;
        m[2] = VIDEO_PID as u8;
        m[3] = 0x20 | (self.cc_es.wrapping_sub(1) & 0x0F);
        m[4] = 183;
        m[5] = 0x02; // transport_private_data_flag
        m[6] = 14;
        m[7..9].copy_from_slice(&channel.to_be_bytes());
        m[9..13].copy_from_slice(&self.seq.to_be_bytes());
        m[13..21].copy_from_slice(&t_us.to_be_bytes());
        out.extend_from_slice(&m);
        self.seq += 1;
    }
}

/// A marker's channel, sequence number and send time.
fn marker(p: &[u8]) -> Option<(u16, u32, u64)> {
    let pid = u16::from_be_bytes([p[1], p[2]]) & 0x1FFF;
    if pid != VIDEO_PID || p[3] & 0x30 != 0x20 || p[5] != 0x02 || p[6] != 14 {
        return None;
    }
    Some((
        u16::from_be_bytes([p[7], p[8]]),
        u32::from_be_bytes(p[9..13].try_into().ok()?),
        u64::from_be_bytes(p[13..21].try_into().ok()?),
    ))
}

/// Microseconds of the realtime clock, the clock of the kernel's receive timestamps.
fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The first of `n` input ports, from a base picked by this process's id.
fn input_base(n: usize) -> u16 {
    // below the kernel's ephemeral range (32768 up), where the outputs' own sockets bind
    let span = 32_000 - 10_000 - n as u32;
    (10_000 + (std::process::id() * 7919) % span) as u16
}

/// Start `castmux headend` for `channels` inputs from `base`, all writing to `out_port`,
/// pinned to CPU 0; returns when it says it runs.
fn start_headend(
    bin: &Bin,
    dir: &std::path::Path,
    channels: usize,
    base: u16,
    out_port: u16,
) -> Child {
    if bin.floor {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"])
            .arg(&bin.path)
            .env(floor::ENV, format!("{base},{channels},{out_port}"));
        return load::start_headend(cmd);
    }
    let mut toml = String::new();
    for i in 0..channels {
        // each channel its own CW pair (a channel number in the key)
        let even = format!("{:04X}{:012X}", i, 0x0102_0304_0506u64);
        let odd = format!("{:04X}{:012X}", i, 0x1112_1314_1516u64);
        toml.push_str(&format!(
            "[[channel]]\nname = \"ch{i}\"\nargs = \"-i udp://127.0.0.1:{} \
             -o udp://127.0.0.1:{out_port} --cw {even}:{odd} --allow-unscrambled\"\n\n",
            base as usize + i
        ));
    }
    let cfg = dir.join("headend.toml");
    std::fs::write(&cfg, toml).expect("write headend.toml");
    let workers = env_num("CASTMUX_BENCH_WORKERS", 1.0) as usize;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"])
        .arg(&bin.path)
        .args(["headend", "--config"])
        .arg(&cfg);
    if bin.workers {
        cmd.args(["--workers", &workers.to_string()]);
        // settings under test go to this build only; the other keeps its defaults
        if bin.name == "this" {
            if let Ok(burst) = std::env::var("CASTMUX_BENCH_UDP_BURST") {
                cmd.args(["--udp-burst", &burst]);
            }
            if let Ok(d) = std::env::var("CASTMUX_BENCH_READ_INTERVAL") {
                cmd.args(["--read-interval", &d]);
            }
        }
    }
    load::start_headend(cmd)
}

struct Live {
    channels: usize,
    rate_mbps: f64,
    achieved_mbps: f64,
    sent: u64,
    received: u64,
    hist: Histogram<u64>,
    cpu_pct: f64,
    /// The user-space part of `cpu_pct` (the rest is the kernel: system calls, and on
    /// loopback the receivers' network stack too).
    user_pct: f64,
    rss_mb: f64,
    /// Runs summed into this one.
    runs: u32,
}

/// A castmux binary to measure.
struct Bin {
    name: String,
    path: std::path::PathBuf,
    /// It has `headend --workers`.
    workers: bool,
    /// The bare forwarder (this bench binary), not castmux.
    floor: bool,
}

fn live(bin: &Bin, channels: usize, rate_mbps: f64, secs: f64) -> Live {
    let dir = tempfile::tempdir().expect("tempdir");
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind receiver");
    let _ = socket2::SockRef::from(&rx).set_recv_buffer_size(64 << 20);
    let _ = setsockopt(&rx, sockopt::RcvBufForce, &(64 << 20));
    let out_port = rx.local_addr().unwrap().port();
    let base = input_base(channels);
    let mut child = start_headend(bin, dir.path(), channels, base, out_port);
    let pid = child.id();

    let done = Arc::new(AtomicBool::new(false));
    let counted = Arc::new(AtomicU64::new(0));
    // The receiver polls (no blocking receive): a receiver asleep in recv() is woken by
    // every datagram castmux sends, and on loopback that wake-up runs on castmux's core
    // and is billed to it (perf: 6 % of castmux's time), where a NIC would take the
    // datagram. Latency is taken at the kernel's receive timestamp, so the polling
    // period does not add to it.
    rx.set_nonblocking(true).unwrap();
    setsockopt(&rx, sockopt::ReceiveTimestampns, &true).expect("SO_TIMESTAMPNS");
    // UDP GRO on the receiver: a GSO write reaches it as one buffer, as a NIC would take
    // it whole, instead of loopback splitting it into datagrams on castmux's core.
    let gro = env_num("CASTMUX_BENCH_RX_GRO", 1.0) > 0.0;
    if gro {
        setsockopt(&rx, sockopt::UdpGroSegment, &true).expect("UDP_GRO");
    }
    let receiver = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            pin_to(1);
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut got = 0u64;
            // a GRO buffer holds up to 64 KB of datagrams
            let mut buf = vec![0u8; 65536];
            let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec, i32);
            loop {
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let got_one = recvmsg::<SockaddrStorage>(
                    rx.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT,
                )
                .map(|m| {
                    let at = m.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|c| match c {
                            ControlMessageOwned::ScmTimestampns(ts) => {
                                Some(ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1000)
                            }
                            _ => None,
                        })
                    });
                    (m.bytes, at)
                });
                match got_one {
                    Ok((n, at)) => {
                        let now = at.unwrap_or_else(wall_us);
                        for p in buf[..n].chunks_exact(188) {
                            if let Some((_, seq, t)) = marker(p) {
                                if seq >= WARMUP_DATAGRAMS {
                                    got += 1;
                                    hist.saturating_record(now.saturating_sub(t).max(1));
                                }
                            }
                        }
                    }
                    Err(_) if done.load(Ordering::Relaxed) => break,
                    Err(_) => std::thread::sleep(Duration::from_micros(1000)),
                }
            }
            (got, hist)
        })
    };

    pin_to(1);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ = socket2::SockRef::from(&tx).set_send_buffer_size(16 << 20);
    let per_sec = rate_mbps * 1e6 / (PER_DATAGRAM as f64 * 188.0 * 8.0);
    let mut feeds: Vec<Feed> = (0..channels)
        .map(|i| {
            let (pat, pmt) = psi_packets();
            Feed {
                pat,
                pmt,
                cc_pat: 0,
                cc_pmt: 0,
                cc_es: 0,
                seq: 0,
                // spread evenly and not in channel order (the golden ratio's fraction)
                phase: (i as f64 * 0.618_033_988_749_895).fract(),
            }
        })
        .collect();
    let warmup = WARMUP_DATAGRAMS as f64 / per_sec;
    let total = warmup + secs;
    let mut dgram = Vec::with_capacity(PER_DATAGRAM * 188);
    let start = Instant::now();
    let mut window: Option<(Instant, (f64, f64))> = None;
    let mut sent_counted = 0u64;
    loop {
        let t = start.elapsed().as_secs_f64();
        if t >= total {
            break;
        }
        if window.is_none() && t >= warmup {
            window = Some((Instant::now(), cpu_split(pid)));
        }
        for (i, f) in feeds.iter_mut().enumerate() {
            let due = (t * per_sec + f.phase) as u32;
            while f.seq < due {
                let now = wall_us();
                f.datagram(i as u16, now, &mut dgram);
                if f.seq > WARMUP_DATAGRAMS {
                    sent_counted += 1;
                }
                while tx.send_to(&dgram, ("127.0.0.1", base + i as u16)).is_err() {
                    std::thread::yield_now();
                }
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let (w_start, (user0, sys0)) = window.unwrap_or((Instant::now(), cpu_split(pid)));
    let wall = w_start.elapsed().as_secs_f64();
    let (user1, sys1) = cpu_split(pid);
    let (user, cpu) = (user1 - user0, user1 - user0 + sys1 - sys0);
    let rss = rss_kb(pid);
    let elapsed = start.elapsed().as_secs_f64() - warmup;
    std::thread::sleep(Duration::from_millis(300));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    done.store(true, Ordering::Relaxed);
    let (received, hist) = receiver.join().unwrap();
    counted.store(received, Ordering::Relaxed);
    Live {
        channels,
        rate_mbps,
        achieved_mbps: sent_counted as f64 * PER_DATAGRAM as f64 * 188.0 * 8.0 / elapsed / 1e6,
        sent: sent_counted,
        received,
        hist,
        cpu_pct: 100.0 * cpu / wall,
        user_pct: 100.0 * user / wall,
        rss_mb: rss as f64 / 1024.0,
        runs: 1,
    }
}

impl Live {
    /// Two runs of the same load as one: counts and histograms added, CPU averaged (the
    /// runs are equally long), the larger RSS.
    fn merge(mut self, o: Live) -> Live {
        let (a, b) = (f64::from(self.runs), f64::from(o.runs));
        self.achieved_mbps = (self.achieved_mbps * a + o.achieved_mbps * b) / (a + b);
        self.cpu_pct = (self.cpu_pct * a + o.cpu_pct * b) / (a + b);
        self.user_pct = (self.user_pct * a + o.user_pct * b) / (a + b);
        self.runs += o.runs;
        self.sent += o.sent;
        self.received += o.received;
        self.hist.add(&o.hist).expect("same histogram bounds");
        self.rss_mb = self.rss_mb.max(o.rss_mb);
        self
    }
}

struct Idle {
    channels: usize,
    cpu_pct: f64,
    rss_mb: f64,
}

fn idle(bin: &Bin, channels: usize, secs: f64) -> Idle {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let out_port = sink.local_addr().unwrap().port();
    let base = input_base(channels).wrapping_add(3);
    let mut child = start_headend(bin, dir.path(), channels, base, out_port);
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let c0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs_f64(secs));
    let cpu = cpu_seconds(pid) - c0;
    let wall = t0.elapsed().as_secs_f64();
    let rss = rss_kb(pid);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    Idle {
        channels,
        cpu_pct: 100.0 * cpu / wall,
        rss_mb: rss as f64 / 1024.0,
    }
}

fn main() {
    floor::run_if_asked();
    let channels = env_num("CASTMUX_BENCH_CHANNELS", 200.0) as usize;
    let rate = env_num("CASTMUX_BENCH_RATE", 5.0);
    let secs = env_num("CASTMUX_BENCH_SECS", 10.0);
    let idle_channels = env_num("CASTMUX_BENCH_IDLE", 1000.0) as usize;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "the bench pins castmux and the sender to different cores"
    );
    let mut bins = vec![Bin {
        name: "this".to_owned(),
        path: env!("CARGO_BIN_EXE_castmux").into(),
        workers: true,
        floor: false,
    }];
    if let Ok(other) = std::env::var("CASTMUX_BENCH_OTHER") {
        bins.push(Bin {
            name: "other".to_owned(),
            path: other.into(),
            workers: false,
            floor: false,
        });
    }
    if env_num("CASTMUX_BENCH_FLOOR", 0.0) > 0.0 {
        bins.push(Bin {
            name: "floor".to_owned(),
            path: std::env::current_exe().expect("the bench's own path"),
            workers: false,
            floor: true,
        });
    }
    // Live runs take turns, round after round (ABBA), each of SECS: a shared machine's
    // speed moves by tens of percent from one stretch to the next, so one run of each can
    // differ by more than the builds do; the rounds' sums, and the median of each round's
    // CPU difference, are what compare.
    let rounds = env_num("CASTMUX_BENCH_ROUNDS", 1.0).max(1.0) as usize;
    let mut acc: Vec<Option<Live>> = bins.iter().map(|_| None).collect();
    let mut cpu_rounds: Vec<Vec<f64>> = bins.iter().map(|_| Vec::new()).collect();
    let mut user_rounds: Vec<Vec<f64>> = bins.iter().map(|_| Vec::new()).collect();
    for r in 0..rounds {
        let mut order: Vec<usize> = (0..bins.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for k in order {
            let l = live(&bins[k], channels, rate, secs);
            cpu_rounds[k].push(l.cpu_pct);
            user_rounds[k].push(l.user_pct);
            acc[k] = Some(match acc[k].take() {
                None => l,
                Some(a) => a.merge(l),
            });
        }
        if rounds > 1 {
            let cpus: Vec<String> = bins
                .iter()
                .zip(cpu_rounds.iter().zip(&user_rounds))
                .map(|(b, (c, u))| format!("{} {:.1} % (user {:.1})", b.name, c[r], u[r]))
                .collect();
            println!("round {}: CPU {}", r + 1, cpus.join(", "));
        }
    }
    let mut rows = Vec::new();
    for (b, l) in bins.iter().zip(acc) {
        // a forwarder with no input costs nothing worth a row
        let i = (!b.floor).then(|| idle(b, idle_channels, 5.0));
        rows.push((b.name.clone(), l.expect("one round at least"), i));
    }
    println!(
        "\n{:<40} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8}",
        "run",
        "Mbit/s",
        "markers",
        "lost",
        "p50 ms",
        "p99 ms",
        "max ms",
        "CPU %",
        "user %",
        "RSS MB"
    );
    for (name, l, i) in &rows {
        println!(
            "{:<40} {:>8.0} {:>9} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>7.1} {:>7.1} {:>8.1}",
            format!("{name}: live {} ch x {} Mbit/s", l.channels, l.rate_mbps),
            l.achieved_mbps,
            l.sent,
            l.sent.saturating_sub(l.received),
            l.hist.value_at_quantile(0.5) as f64 / 1000.0,
            l.hist.value_at_quantile(0.99) as f64 / 1000.0,
            l.hist.max() as f64 / 1000.0,
            l.cpu_pct,
            l.user_pct,
            l.rss_mb,
        );
        let Some(i) = i else { continue };
        println!(
            "{:<40} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7.1} {:>7} {:>8.1}",
            format!("{name}: idle {} ch", i.channels),
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            i.cpu_pct,
            "-",
            i.rss_mb,
        );
    }
    for (k, b) in bins.iter().enumerate().skip(1) {
        for (what, r) in [("CPU", &cpu_rounds), ("user CPU", &user_rounds)] {
            let mut d: Vec<f64> = r[0].iter().zip(&r[k]).map(|(a, b)| a - b).collect();
            d.sort_by(f64::total_cmp);
            println!(
                "{what} this - {} over {rounds} rounds: median {:+.1} points (from {:+.1} to {:+.1})",
                b.name,
                d[rounds / 2],
                d[0],
                d[rounds - 1]
            );
        }
    }
    println!(
        "targets: live 0 lost, p99 <= 10 ms, CPU <= 70 % of one core; idle <= 10 % of a core, \
         RSS <= 2 MB per channel"
    );
}
