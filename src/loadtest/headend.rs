//! `castmux loadtest headend`: N synthetic channels through a real `castmux headend`
//! process over loopback UDP, every output packet checked ([`super::check`]).
//!
//! The run makes its own card store (one package, one card, entitled) in a work directory,
//! writes a head-end file with one typed channel per stream (`cas = "builtin"`, or a
//! SimulCrypt link to a `castmux ecmg` it starts, through a proxy that can slow it down),
//! starts the head-end, feeds every input from one paced generator thread and reads every
//! output on one checker thread (epoll). Faults are played on schedule: the ECMG killed
//! and restarted, the ECMG slowed, a channel's input stopped.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use serde::Serialize;

use super::check::{ChannelCounts, Checker};
use super::report::{ms_cell, Criterion, Plot, Table, Verdict};
use super::stream::{SyntheticStream, PER_DATAGRAM};
use crate::cas::store::{time, AccessSpec, CardChanges, InitOptions, Store, StoreError};
use crate::cas::CardFile;
use crate::io::udp::{UdpInput, UdpInputConfig, UdpOutput, UdpOutputConfig};
use crate::io::url::{UdpInputUrl, UdpOutputUrl};
use crate::io::IoStats;
use crate::softcard::SoftCard;

/// The CA_system_ID of the run's store.
const CA_SYSTEM_ID: u16 = 0x4AE1;
const PACKAGE: &str = "loadtest";
/// How long the outputs are read after the inputs stop, for what is still in flight.
const DRAIN: Duration = Duration::from_secs(1);
/// How long a started process gets to be reachable.
const START_WAIT: Duration = Duration::from_secs(15);

/// Why a load test could not run (as opposed to a run that failed its criteria).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The work directory or a file in it.
    #[error("{path}: {source}")]
    File {
        /// The path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Setting up the card store.
    #[error("the load test's card store: {0}")]
    Store(#[from] StoreError),
    /// A socket of the generator or checker.
    #[error("{what}: {source}")]
    Socket {
        /// Which socket.
        what: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A process did not start or died.
    #[error("{0}")]
    Process(String),
    /// A fault that cannot be played.
    #[error("fault {0}")]
    Fault(String),
}

/// A fault played during the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// Kill the ECMG (SIGKILL) at `at`, start it again `down` later on the same port.
    KillEcmg {
        /// When, from the start of the run.
        at: Duration,
        /// How long it stays down.
        down: Duration,
    },
    /// Delay every ECMG answer by `delay` from `at` for `lasting`.
    SlowEcmg {
        /// When.
        at: Duration,
        /// For how long.
        lasting: Duration,
        /// Added to each answer.
        delay: Duration,
    },
    /// Stop feeding channel `channel` at `at` for `lasting`.
    StopInput {
        /// The channel, from 0.
        channel: usize,
        /// When.
        at: Duration,
        /// For how long.
        lasting: Duration,
    },
}

impl Fault {
    /// Parses `kill-ecmg@AT+DOWN`, `slow-ecmg@AT+FOR:DELAY`, `stop-input:CH@AT+FOR`
    /// (durations as `10s`, `500ms`).
    pub fn parse(s: &str) -> Result<Fault, String> {
        let bad = |why: &str| {
            format!(
                "{s:?}: {why}; expected kill-ecmg@AT+DOWN, slow-ecmg@AT+FOR:DELAY or \
                 stop-input:CHANNEL@AT+FOR (e.g. kill-ecmg@30s+5s)"
            )
        };
        let (what, when) = s.split_once('@').ok_or_else(|| bad("no @"))?;
        let (at, rest) = when.split_once('+').ok_or_else(|| bad("no +"))?;
        let dur = |t: &str| crate::value::duration(t).map_err(|e| bad(&e));
        let at = dur(at)?;
        match what.split_once(':') {
            None if what == "kill-ecmg" => Ok(Fault::KillEcmg {
                at,
                down: dur(rest)?,
            }),
            None if what == "slow-ecmg" => {
                let (lasting, delay) = rest.split_once(':').ok_or_else(|| bad("no :DELAY"))?;
                Ok(Fault::SlowEcmg {
                    at,
                    lasting: dur(lasting)?,
                    delay: dur(delay)?,
                })
            }
            Some(("stop-input", ch)) => Ok(Fault::StopInput {
                channel: ch.parse().map_err(|_| bad("the channel is not a number"))?,
                at,
                lasting: dur(rest)?,
            }),
            _ => Err(bad("unknown fault")),
        }
    }

    fn at(&self) -> Duration {
        match self {
            Fault::KillEcmg { at, .. }
            | Fault::SlowEcmg { at, .. }
            | Fault::StopInput { at, .. } => *at,
        }
    }

    fn end(&self) -> Duration {
        match self {
            Fault::KillEcmg { at, down } => *at + *down,
            Fault::SlowEcmg { at, lasting, .. } | Fault::StopInput { at, lasting, .. } => {
                *at + *lasting
            }
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct HeadendLoad {
    /// The castmux binary to run as the head-end (and ECMG).
    pub castmux: PathBuf,
    /// Channels.
    pub channels: usize,
    /// Bit/s of each channel's input.
    pub bitrate: u64,
    /// The head-end's crypto period.
    pub crypto_period: Duration,
    /// How long the inputs are fed.
    pub duration: Duration,
    /// The head-end's data-plane workers (`--workers`); None: its default.
    pub workers: Option<usize>,
    /// ECMs from a `castmux ecmg` over SimulCrypt (through the fault proxy) instead of the
    /// head-end's built-in CAS.
    pub ecmg: bool,
    /// Faults to play.
    pub faults: Vec<Fault>,
    /// Where the store, the head-end file and the logs go (created; kept).
    pub work_dir: PathBuf,
    /// How often a [`Sample`] is taken.
    pub interval: Duration,
}

/// One reporting interval.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds from the start of the run (end of the interval).
    pub t: f64,
    /// ES packets proven so far.
    pub verified: u64,
    /// Clear ES payloads so far.
    pub clear: u64,
    /// Undecryptable packets so far.
    pub undecryptable: u64,
    /// Largest ECM interval of this interval, ms.
    pub ecm_interval_max_ms: f64,
    /// Latency p50 and p99 of this interval, ms (0 when nothing arrived).
    pub latency_p50_ms: f64,
    /// See `latency_p50_ms`.
    pub latency_p99_ms: f64,
    /// The head-end's CPU over this interval, in cores.
    pub headend_cpu: f64,
    /// The head-end's resident memory, MB.
    pub headend_rss_mb: f64,
    /// The load test's own CPU (generator and checker), in cores.
    pub loadtest_cpu: f64,
}

/// A fault as played.
#[derive(Debug, Clone, Serialize)]
pub struct FaultPlayed {
    /// The fault.
    pub fault: Fault,
    /// Counts when it started and when it ended (and the head-end had a second to recover).
    pub before: ChannelCounts,
    /// See `before`.
    pub after: ChannelCounts,
}

/// Distribution figures, ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Spread {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

fn spread(h: &hdrhistogram::Histogram<u64>, to_ms: f64) -> Spread {
    if h.is_empty() {
        return Spread::default();
    }
    Spread {
        count: h.len(),
        min: h.min() as f64 * to_ms,
        p50: h.value_at_quantile(0.5) as f64 * to_ms,
        p99: h.value_at_quantile(0.99) as f64 * to_ms,
        max: h.max() as f64 * to_ms,
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeadendReport {
    /// Channels.
    pub channels: usize,
    /// Bit/s per channel.
    pub bitrate: u64,
    /// Crypto period, seconds.
    pub crypto_period_s: f64,
    /// Seconds fed.
    pub duration_s: f64,
    /// Where ECMs came from: `builtin` or `ecmg`.
    pub cas: &'static str,
    /// ES packets sent.
    pub sent: u64,
    /// The sum over channels.
    pub total: ChannelCounts,
    /// Added latency (send to checked), ms.
    pub latency_ms: Spread,
    /// Gaps between ECM sections of one PID, ms.
    pub ecm_interval_ms: Spread,
    /// Time between key switches, ms.
    pub cw_period_ms: Spread,
    /// Lead of each key switch over the first ECM that carried its key, ms.
    pub switch_lead_ms: Spread,
    /// The head-end's mean CPU over the run, in cores.
    pub headend_cpu: f64,
    /// The head-end's largest resident memory, MB.
    pub headend_rss_mb: f64,
    /// The load test's own mean CPU, in cores.
    pub loadtest_cpu: f64,
    /// Per interval.
    pub samples: Vec<Sample>,
    /// The faults as played.
    pub faults: Vec<FaultPlayed>,
    /// Per channel.
    pub per_channel: Vec<ChannelCounts>,
}

/// utime + stime of a process, seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the fields after the command name (which may hold spaces) start after ')'
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Resident memory of a process, kB.
pub fn rss_kb(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::File {
        path: path.to_owned(),
        source,
    }
}

/// The store: one package, one card entitled to it; returns the card.
fn make_store(db: &Path) -> Result<CardFile, LoadError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadError::Process(format!("a runtime for the store: {e}")))?;
    let card = rt.block_on(async {
        let now = time::now();
        let opts = InitOptions {
            ca_system_id: CA_SYSTEM_ID,
            now,
            ..InitOptions::default()
        };
        let store = Store::init(db, opts).await?;
        store.add_package(PACKAGE, None, now).await?;
        let changes = CardChanges {
            access: Some(AccessSpec::Packages(vec![PACKAGE.to_owned()])),
            ..CardChanges::default()
        };
        let runs = store.add_cards(1, None, &changes, now).await?;
        let card = store.export_card(runs[0].0, now).await;
        store.close().await;
        card
    });
    Ok(card?)
}

/// A free loopback TCP port (bound, read, released).
fn free_tcp_port() -> Result<u16, LoadError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|source| LoadError::Socket {
            what: "a free loopback TCP port".into(),
            source,
        })
}

/// `n` distinct free loopback UDP ports, for the head-end's inputs. They are all held at
/// once while picked (a port released and picked again could go to two channels), and
/// taken below the kernel's ephemeral range, so no socket bound to port 0 (the head-end's
/// own outputs, opened while other channels still start) can take one first.
fn free_udp_ports(n: usize) -> Result<Vec<u16>, LoadError> {
    const FLOOR: u32 = 10_000;
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = low.saturating_sub(FLOOR).max(1);
    // runs one after another start at different places, and runs of one process (tests)
    // each after the ports the one before took
    static TAKEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let before = TAKEN.fetch_add(n as u32, Ordering::Relaxed);
    let start = (std::process::id().wrapping_mul(7919).wrapping_add(before)) % span;
    let mut held = Vec::with_capacity(n);
    for i in 0..span {
        if held.len() == n {
            break;
        }
        let port = (FLOOR + (start + i) % span) as u16;
        if let Ok(s) = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)) {
            held.push(s);
        }
    }
    if held.len() < n {
        return Err(LoadError::Socket {
            what: format!("{n} free loopback UDP ports from {FLOOR} to {low}"),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        });
    }
    // released together when `held` drops
    Ok(held
        .iter()
        .filter_map(|s| s.local_addr().ok().map(|a| a.port()))
        .collect())
}

/// A process of the run, its stderr in a log file.
struct Proc {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, name: &'static str, log: PathBuf) -> Result<Proc, LoadError> {
        let file = fs::File::create(&log).map_err(file_err(&log))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| LoadError::Process(format!("cannot run {name}: {e}")))?;
        Ok(Proc { child, name, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if it has exited, with the end of its log.
    fn alive(&mut self) -> Result<(), LoadError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            _ => {
                let log = fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Err(LoadError::Process(format!(
                    "{} exited; its log ({}) ends:\n{}",
                    self.name,
                    self.log.display(),
                    tail.join("\n")
                )))
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it is still there after 5 s.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// `castmux ecmg` on a fixed port, restartable.
struct Ecmg {
    proc: Option<Proc>,
    port: u16,
    castmux: PathBuf,
    db: PathBuf,
    dir: PathBuf,
    starts: u32,
    max_connections: usize,
}

impl Ecmg {
    fn start(&mut self) -> Result<(), LoadError> {
        self.starts += 1;
        let log = self.dir.join(format!("ecmg-{}.log", self.starts));
        let n = self.max_connections.to_string();
        let mut cmd = Command::new(&self.castmux);
        cmd.arg("--db")
            .arg(&self.db)
            .args(["ecmg", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--max-connections", &n, "--max-connections-per-address", &n])
            .env_remove("CASTMUX_DB");
        let mut p = Proc::spawn(&mut cmd, "castmux ecmg", log)?;
        let until = Instant::now() + START_WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            p.alive()?;
            if Instant::now() > until {
                return Err(LoadError::Process(
                    "castmux ecmg did not listen in time".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc = Some(p);
        Ok(())
    }
}

/// A TCP relay between the head-end and the ECMG that can delay the ECMG's answers.
struct Proxy {
    port: u16,
    delay_ms: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    fn start(upstream: u16) -> Result<Proxy, LoadError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| LoadError::Process(format!("the proxy's runtime: {e}")))?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .map_err(|source| LoadError::Socket {
                what: "the ECMG proxy".into(),
                source,
            })?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        rt.spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let delay = delay.clone();
                tokio::spawn(async move {
                    let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let (mut dr, mut dw) = down.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let to_ecmg = tokio::io::copy(&mut dr, &mut uw);
                    let to_mux = async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match ur.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let ms = delay.load(Ordering::Relaxed);
                            if ms > 0 {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            if dw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    tokio::select! {
                        _ = to_ecmg => {}
                        _ = to_mux => {}
                    }
                });
            }
        });
        Ok(Proxy {
            port,
            delay_ms,
            _rt: rt,
        })
    }
}

/// The head-end file: one typed channel per stream.
fn headend_toml(
    cfg: &HeadendLoad,
    inputs: &[u16],
    outputs: &[u16],
    ecmg_port: Option<u16>,
) -> String {
    let mut t = String::new();
    let period_ms = cfg.crypto_period.as_millis();
    for (i, (inp, out)) in inputs.iter().zip(outputs).enumerate() {
        t.push_str(&format!(
            "[[channel]]\nname = \"lt{i:04}\"\ninput = \"udp://127.0.0.1:{inp}\"\n\
             output = \"udp://127.0.0.1:{out}\"\ncrypto_period = \"{period_ms}ms\"\n"
        ));
        match ecmg_port {
            Some(port) => t.push_str(&format!(
                "ecmg = \"127.0.0.1:{port}\"\nsuper_cas_id = \"{CA_SYSTEM_ID:04X}0000\"\n\
                 access_criteria = \"00000001\"\nchannel_id = {}\n",
                i + 1
            )),
            None => t.push_str(&format!("cas = \"builtin\"\npackages = \"{PACKAGE}\"\n")),
        }
        t.push('\n');
    }
    t
}

/// The paced generator: every channel's datagrams on schedule, from one thread.
fn generate(
    mut outs: Vec<UdpOutput>,
    bitrate: u64,
    clock: Instant,
    run_for: Duration,
    paused: Arc<Vec<AtomicBool>>,
) -> Vec<[u32; 2]> {
    let n = outs.len();
    let mut streams: Vec<SyntheticStream> =
        (0..n).map(|i| SyntheticStream::new(i as u16)).collect();
    let every_ns = (PER_DATAGRAM * 188 * 8) as u64 * 1_000_000_000 / bitrate.max(1);
    // spread the channels' phases so they do not all send at once
    let mut due: Vec<u64> = (0..n)
        .map(|i| every_ns * i as u64 / n.max(1) as u64)
        .collect();
    let end_ns = run_for.as_nanos() as u64;
    let mut buf = Vec::with_capacity(PER_DATAGRAM * 188);
    loop {
        let now = clock.elapsed().as_nanos() as u64;
        if now >= end_ns {
            break;
        }
        let mut next = u64::MAX;
        for i in 0..n {
            while due[i] <= now {
                if !paused[i].load(Ordering::Relaxed) {
                    buf.clear();
                    streams[i].datagram(now, &mut buf);
                    let _ = outs[i].write(&buf);
                }
                due[i] += every_ns;
            }
            next = next.min(due[i]);
        }
        let now = clock.elapsed().as_nanos() as u64;
        if next > now + 200_000 {
            std::thread::sleep(Duration::from_nanos((next - now).min(2_000_000)));
        }
    }
    streams.iter().map(|s| s.sent()).collect()
}

/// The checker thread: reads every output socket that is ready and checks a round.
fn receive(
    mut inputs: Vec<UdpInput>,
    checker: Arc<Mutex<Checker>>,
    clock: Instant,
    stop: Arc<AtomicBool>,
) -> Result<(), LoadError> {
    let sock = |source| LoadError::Socket {
        what: "the checker's epoll".into(),
        source,
    };
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| sock(e.into()))?;
    for (i, inp) in inputs.iter().enumerate() {
        epoll
            .add(inp.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
            .map_err(|e| sock(e.into()))?;
    }
    let mut events = vec![EpollEvent::empty(); inputs.len().clamp(1, 1024)];
    while !stop.load(Ordering::Relaxed) {
        let n = match epoll.wait(&mut events, EpollTimeout::from(10u8)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(sock(e.into())),
        };
        if n == 0 {
            continue;
        }
        let now = clock.elapsed().as_nanos() as u64;
        let mut c = lock(&checker);
        let chans = c.channels_mut();
        for ev in &events[..n] {
            let i = ev.data() as usize;
            let _ = inputs[i].read_batch(&mut chans[i].packets, Duration::ZERO);
        }
        c.round(now);
    }
    Ok(())
}

fn lock(c: &Mutex<Checker>) -> std::sync::MutexGuard<'_, Checker> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fault on the schedule: started (counts then), ended, and counts a second later.
struct Playing {
    fault: Fault,
    before: Option<ChannelCounts>,
    ended: bool,
    after: Option<ChannelCounts>,
}

impl Playing {
    fn new(fault: Fault) -> Playing {
        Playing {
            fault,
            before: None,
            ended: false,
            after: None,
        }
    }
}

/// Counts over all channels now (loss against what was sent so far is not known mid-run:
/// it is left at 0 here).
fn snapshot(c: &Checker, channels: usize) -> ChannelCounts {
    let mut t = Checker::total(&c.counts(&vec![[0, 0]; channels]));
    t.lost = 0;
    t.before_first_output = 0;
    t
}

/// Runs the load test; `progress` is called after every sample.
pub fn run(
    cfg: &HeadendLoad,
    mut progress: impl FnMut(&Sample),
) -> Result<HeadendReport, LoadError> {
    if cfg.channels == 0 || cfg.channels > 4096 {
        return Err(LoadError::Process(format!(
            "{} channels: choose 1 to 4096",
            cfg.channels
        )));
    }
    for f in &cfg.faults {
        match f {
            Fault::KillEcmg { .. } | Fault::SlowEcmg { .. } if !cfg.ecmg => {
                return Err(LoadError::Fault(format!(
                    "{f:?} needs --ecmg (the built-in CAS has no ECMG to kill or slow)"
                )))
            }
            Fault::StopInput { channel, .. } if *channel >= cfg.channels => {
                return Err(LoadError::Fault(format!(
                    "{f:?}: there are {} channels, from 0",
                    cfg.channels
                )))
            }
            _ => {}
        }
    }
    let dir = &cfg.work_dir;
    fs::create_dir_all(dir).map_err(file_err(dir))?;
    let db = dir.join("loadtest.db");
    if db.exists() {
        fs::remove_file(&db).map_err(file_err(&db))?;
    }
    let card = make_store(&db)?;

    // the checker's sockets first: their ports are the head-end's outputs
    let stats = Arc::new(IoStats::default());
    let mut inputs = Vec::with_capacity(cfg.channels);
    for i in 0..cfg.channels {
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
        let url = UdpInputUrl {
            url: format!("udp://{addr}"),
            addr,
            source: None,
            iface: None,
        };
        let ucfg = UdpInputConfig {
            recv_buffer: 4 << 20,
            force_single: false,
        };
        inputs.push(
            UdpInput::open(&url, &ucfg, stats.clone()).map_err(|e| LoadError::Socket {
                what: format!("channel {i}'s output socket"),
                source: std::io::Error::other(e.to_string()),
            })?,
        );
    }
    let outputs: Vec<u16> = inputs.iter().map(|i| i.local_addr().port()).collect();
    let in_ports = free_udp_ports(cfg.channels)?;

    let (mut ecmg, proxy) = if cfg.ecmg {
        let mut e = Ecmg {
            proc: None,
            port: free_tcp_port()?,
            castmux: cfg.castmux.clone(),
            db: db.clone(),
            dir: dir.clone(),
            starts: 0,
            max_connections: cfg.channels + 16,
        };
        e.start()?;
        let p = Proxy::start(e.port)?;
        (Some(e), Some(p))
    } else {
        (None, None)
    };
    let toml = headend_toml(cfg, &in_ports, &outputs, proxy.as_ref().map(|p| p.port));
    let toml_path = dir.join("headend.toml");
    fs::write(&toml_path, toml).map_err(file_err(&toml_path))?;
    let mut cmd = Command::new(&cfg.castmux);
    cmd.arg("--db")
        .arg(&db)
        .arg("headend")
        .arg("--config")
        .arg(&toml_path);
    if let Some(w) = cfg.workers {
        cmd.args(["--workers", &w.to_string()]);
    }
    // the line the run waits for ("headend: running") is logged at info, whatever the
    // level asked for the rest
    let level = std::env::var("CASTMUX_LOG").unwrap_or_else(|_| "info".into());
    cmd.env_remove("CASTMUX_DB").env(
        "CASTMUX_LOG",
        format!("{level},castmux::headend::supervise=info"),
    );
    let mut headend = Proc::spawn(&mut cmd, "castmux headend", dir.join("headend.log"))?;
    // let it bind every input before the first datagram
    let until = Instant::now() + START_WAIT;
    loop {
        headend.alive()?;
        let log = fs::read_to_string(&headend.log).unwrap_or_default();
        if log.contains("headend: running") {
            break;
        }
        if Instant::now() > until {
            return Err(LoadError::Process(format!(
                "castmux headend did not start its channels in {START_WAIT:?}; see {}",
                headend.log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut outs = Vec::with_capacity(cfg.channels);
    for (i, port) in in_ports.iter().enumerate() {
        let url = UdpOutputUrl {
            url: format!("udp://127.0.0.1:{port}"),
            host: "127.0.0.1".into(),
            port: *port,
            ttl: None,
            iface: None,
            packets_per_datagram: PER_DATAGRAM,
        };
        let ocfg = UdpOutputConfig {
            send_buffer: 1 << 20,
            multicast_loop: false,
            force_single: false,
        };
        outs.push(
            UdpOutput::open(&url, &ocfg, stats.clone()).map_err(|e| LoadError::Socket {
                what: format!("channel {i}'s input socket"),
                source: std::io::Error::other(e.to_string()),
            })?,
        );
    }

    let cards = (0..cfg.channels)
        .map(|_| SoftCard::from_card_file(card.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::Process(format!("the load test's card: {e}")))?;
    let checker = Arc::new(Mutex::new(Checker::new(cards, csa::Algorithm::Csa2)));
    let stop = Arc::new(AtomicBool::new(false));
    let paused: Arc<Vec<AtomicBool>> =
        Arc::new((0..cfg.channels).map(|_| AtomicBool::new(false)).collect());
    let clock = Instant::now();
    let receiver: JoinHandle<Result<(), LoadError>> = {
        let (checker, stop) = (checker.clone(), stop.clone());
        std::thread::Builder::new()
            .name("lt-checker".into())
            .spawn(move || receive(inputs, checker, clock, stop))
            .map_err(|e| LoadError::Process(format!("the checker thread: {e}")))?
    };
    let generator = {
        let (bitrate, run_for, paused) = (cfg.bitrate, cfg.duration, paused.clone());
        std::thread::Builder::new()
            .name("lt-generator".into())
            .spawn(move || generate(outs, bitrate, clock, run_for, paused))
            .map_err(|e| LoadError::Process(format!("the generator thread: {e}")))?
    };

    // the schedule: samples and faults
    let me = std::process::id();
    let (mut last_t, mut last_cpu, mut last_self) =
        (0.0, cpu_seconds(headend.pid()), cpu_seconds(me));
    let (cpu0, self0) = (last_cpu, last_self);
    let mut samples = Vec::new();
    let mut rss_max = 0u64;
    let mut next_sample = cfg.interval;
    let mut faults: Vec<Playing> = cfg.faults.iter().cloned().map(Playing::new).collect();
    let mut died = None;
    while clock.elapsed() < cfg.duration {
        std::thread::sleep(Duration::from_millis(20));
        let now = clock.elapsed();
        if let Err(e) = headend.alive() {
            died = Some(e);
            break;
        }
        for p in &mut faults {
            let f = &p.fault;
            if p.before.is_none() && now >= f.at() {
                p.before = Some(snapshot(&lock(&checker), cfg.channels));
                match f {
                    Fault::KillEcmg { .. } => {
                        if let Some(p) = ecmg.as_mut().and_then(|e| e.proc.as_mut()) {
                            p.kill();
                        }
                    }
                    Fault::SlowEcmg { delay, .. } => {
                        if let Some(p) = &proxy {
                            p.delay_ms
                                .store(delay.as_millis() as u64, Ordering::Relaxed);
                        }
                    }
                    Fault::StopInput { channel, .. } => {
                        paused[*channel].store(true, Ordering::Relaxed)
                    }
                }
            }
            if p.before.is_some() && !p.ended && now >= f.end() {
                p.ended = true;
                match f {
                    Fault::KillEcmg { .. } => {
                        if let Some(e) = ecmg.as_mut() {
                            e.start()?;
                        }
                    }
                    Fault::SlowEcmg { .. } => {
                        if let Some(p) = &proxy {
                            p.delay_ms.store(0, Ordering::Relaxed);
                        }
                    }
                    Fault::StopInput { channel, .. } => {
                        paused[*channel].store(false, Ordering::Relaxed)
                    }
                }
            }
            // the "after" counts are taken a second after the fault ends
            if p.ended && p.after.is_none() && now >= f.end() + Duration::from_secs(1) {
                p.after = Some(snapshot(&lock(&checker), cfg.channels));
            }
        }
        if now >= next_sample {
            next_sample += cfg.interval;
            let t = now.as_secs_f64();
            let (cpu, me_cpu) = (cpu_seconds(headend.pid()), cpu_seconds(me));
            let rss = rss_kb(headend.pid());
            rss_max = rss_max.max(rss);
            let (counts, (lat, ecm_max)) = {
                let mut c = lock(&checker);
                let interval = c.take_interval();
                (snapshot(&c, cfg.channels), interval)
            };
            let dt = (t - last_t).max(1e-3);
            let s = Sample {
                t,
                verified: counts.verified,
                clear: counts.clear,
                undecryptable: counts.undecryptable,
                ecm_interval_max_ms: ecm_max as f64 / 1000.0,
                latency_p50_ms: if lat.is_empty() {
                    0.0
                } else {
                    lat.value_at_quantile(0.5) as f64 / 1000.0
                },
                latency_p99_ms: if lat.is_empty() {
                    0.0
                } else {
                    lat.value_at_quantile(0.99) as f64 / 1000.0
                },
                headend_cpu: (cpu - last_cpu) / dt,
                headend_rss_mb: rss as f64 / 1024.0,
                loadtest_cpu: (me_cpu - last_self) / dt,
            };
            (last_t, last_cpu, last_self) = (t, cpu, me_cpu);
            progress(&s);
            samples.push(s);
        }
    }
    let sent = generator
        .join()
        .map_err(|_| LoadError::Process("the generator thread panicked".into()))?;
    let elapsed = clock.elapsed().as_secs_f64();
    let (cpu_end, self_end) = (cpu_seconds(headend.pid()), cpu_seconds(me));
    std::thread::sleep(DRAIN);
    stop.store(true, Ordering::Relaxed);
    receiver
        .join()
        .map_err(|_| LoadError::Process("the checker thread panicked".into()))??;
    headend.stop();
    if let Some(e) = ecmg.as_mut().and_then(|e| e.proc.as_mut()) {
        e.stop();
    }
    if let Some(e) = died {
        return Err(e);
    }
    let c = lock(&checker);
    let per_channel = c.counts(&sent);
    let total = Checker::total(&per_channel);
    let h = c.histograms();
    Ok(HeadendReport {
        channels: cfg.channels,
        bitrate: cfg.bitrate,
        crypto_period_s: cfg.crypto_period.as_secs_f64(),
        duration_s: cfg.duration.as_secs_f64(),
        cas: if cfg.ecmg { "ecmg" } else { "builtin" },
        sent: sent.iter().flatten().map(|&n| u64::from(n)).sum(),
        total,
        latency_ms: spread(&h.latency_us, 1e-3),
        ecm_interval_ms: spread(&h.ecm_interval_us, 1e-3),
        cw_period_ms: spread(&h.cw_period_ms, 1.0),
        switch_lead_ms: spread(&h.switch_lead_ms, 1.0),
        headend_cpu: (cpu_end - cpu0) / elapsed.max(1e-3),
        headend_rss_mb: rss_max as f64 / 1024.0,
        loadtest_cpu: (self_end - self0) / elapsed.max(1e-3),
        samples,
        faults: faults
            .into_iter()
            .map(|p| FaultPlayed {
                fault: p.fault,
                before: p.before.unwrap_or_default(),
                after: p.after.unwrap_or_default(),
            })
            .collect(),
        per_channel,
    })
}

/// Pass criteria of a head-end load test.
#[derive(Debug, Clone)]
pub struct HeadendLimits {
    /// Clear ES payloads allowed.
    pub max_clear: u64,
    /// Undecryptable packets allowed.
    pub max_undecryptable: u64,
    /// Lost packets allowed.
    pub max_lost: u64,
    /// Largest ECM interval allowed, ms (monitors alarm at 500 ms).
    pub max_ecm_interval_ms: f64,
}

impl Default for HeadendLimits {
    fn default() -> Self {
        HeadendLimits {
            max_clear: 0,
            max_undecryptable: 0,
            max_lost: 0,
            max_ecm_interval_ms: 500.0,
        }
    }
}

impl HeadendReport {
    /// The run against `limits`; a key switch before its ECM and a run that proved nothing
    /// always fail.
    pub fn verdict(&self, limits: &HeadendLimits) -> Verdict {
        let t = &self.total;
        Verdict::new(vec![
            Criterion::at_least("ES packets proven", "", 1.0, t.verified as f64, ""),
            Criterion::at_most(
                "clear ES payloads",
                "--max-clear",
                limits.max_clear as f64,
                t.clear as f64,
                "",
            ),
            Criterion::at_most(
                "undecryptable packets",
                "--max-undecryptable",
                limits.max_undecryptable as f64,
                t.undecryptable as f64,
                "",
            ),
            Criterion::at_most(
                "key switches before their ECM",
                "",
                0.0,
                t.switch_before_ecm as f64,
                "",
            ),
            Criterion::at_most("packets of another channel", "", 0.0, t.foreign as f64, ""),
            Criterion::at_most(
                "lost packets",
                "--max-lost",
                limits.max_lost as f64,
                t.lost as f64,
                "",
            ),
            Criterion::at_most(
                "ECM interval max",
                "--max-ecm-interval-ms",
                limits.max_ecm_interval_ms,
                self.ecm_interval_ms.max,
                "ms",
            ),
        ])
    }

    /// What was run, on one line.
    pub fn headline(&self) -> String {
        format!(
            "head-end: {} channels x {:.1} Mbit/s, crypto period {} ms, {:.0} s, ECMs from {}",
            self.channels,
            self.bitrate as f64 / 1e6,
            (self.crypto_period_s * 1000.0).round(),
            self.duration_s,
            self.cas
        )
    }

    /// The summary: counts, distributions, resources, and what each fault did.
    pub fn summary(&self) -> Table {
        let t = &self.total;
        let n = |v: u64| v.to_string();
        let mut table = Table::new(["", "total"]);
        table
            .row(["ES packets sent".to_owned(), n(self.sent)])
            .row(["  proven (descrambled = sent)".to_owned(), n(t.verified)])
            .row(["  clear".to_owned(), n(t.clear)])
            .row(["  undecryptable".to_owned(), n(t.undecryptable)])
            .row(["  of another channel".to_owned(), n(t.foreign)])
            .row(["  lost".to_owned(), n(t.lost)])
            .row(["  reordered".to_owned(), n(t.reordered)])
            .row([
                "  before a channel's first output".to_owned(),
                n(t.before_first_output),
            ])
            .row([
                "  scrambled before the first ECM seen".to_owned(),
                n(t.before_first_key),
            ])
            .row(["key switches".to_owned(), n(t.key_switches)])
            .row(["  before their ECM".to_owned(), n(t.switch_before_ecm)])
            .row([
                "  lead over their ECM, min".to_owned(),
                ms_cell(self.switch_lead_ms.min),
            ])
            .row([
                "CW period min / max".to_owned(),
                format!(
                    "{} / {}",
                    ms_cell(self.cw_period_ms.min),
                    ms_cell(self.cw_period_ms.max)
                ),
            ])
            .row([
                "ECM interval p99 / max".to_owned(),
                format!(
                    "{} / {}",
                    ms_cell(self.ecm_interval_ms.p99),
                    ms_cell(self.ecm_interval_ms.max)
                ),
            ])
            .row([
                "PAT / PMT interval max".to_owned(),
                format!(
                    "{} / {}",
                    ms_cell(t.pat_interval_max_us as f64 / 1000.0),
                    ms_cell(t.pmt_interval_max_us as f64 / 1000.0)
                ),
            ])
            .row(["ECMs refused by the card".to_owned(), n(t.ecm_refused)])
            .row([
                "CC errors / CRC errors".to_owned(),
                format!("{} / {}", t.cc_errors, t.crc_errors),
            ])
            .row(["EMM bytes".to_owned(), n(t.emm_bytes)])
            .row([
                "added latency p50 / p99 / max".to_owned(),
                format!(
                    "{} / {} / {}",
                    ms_cell(self.latency_ms.p50),
                    ms_cell(self.latency_ms.p99),
                    ms_cell(self.latency_ms.max)
                ),
            ])
            .row([
                "head-end CPU (cores) / RSS max".to_owned(),
                format!("{:.2} / {:.1} MB", self.headend_cpu, self.headend_rss_mb),
            ])
            .row([
                "load test CPU (cores)".to_owned(),
                format!("{:.2}", self.loadtest_cpu),
            ]);
        for f in &self.faults {
            let (b, a) = (&f.before, &f.after);
            table.row([
                format!("fault {}", fault_name(&f.fault)),
                format!(
                    "+{} proven, +{} clear, +{} undecryptable, +{} switches, ECM max {}",
                    a.verified.saturating_sub(b.verified),
                    a.clear.saturating_sub(b.clear),
                    a.undecryptable.saturating_sub(b.undecryptable),
                    a.key_switches.saturating_sub(b.key_switches),
                    ms_cell(a.ecm_interval_max_us as f64 / 1000.0)
                ),
            ]);
        }
        table
    }

    /// ECM interval, latency, CPU and memory over time.
    pub fn plot(&self) -> Plot {
        let mut p = Plot::new(format!("loadtest {}", self.headline()));
        for s in &self.samples {
            p.push(
                "ECM interval max",
                "ms",
                "all channels",
                s.t,
                s.ecm_interval_max_ms,
            );
            p.push("added latency", "ms", "p50", s.t, s.latency_p50_ms);
            p.push("added latency", "ms", "p99", s.t, s.latency_p99_ms);
            p.push("CPU", "cores", "castmux headend", s.t, s.headend_cpu);
            p.push("CPU", "cores", "load test", s.t, s.loadtest_cpu);
            p.push("memory", "MB", "castmux headend RSS", s.t, s.headend_rss_mb);
        }
        p
    }
}

fn fault_name(f: &Fault) -> String {
    let ms = |d: &Duration| crate::value::show_duration(*d);
    match f {
        Fault::KillEcmg { at, down } => format!("kill-ecmg@{}+{}", ms(at), ms(down)),
        Fault::SlowEcmg { at, lasting, delay } => {
            format!("slow-ecmg@{}+{}:{}", ms(at), ms(lasting), ms(delay))
        }
        Fault::StopInput {
            channel,
            at,
            lasting,
        } => {
            format!("stop-input:{channel}@{}+{}", ms(at), ms(lasting))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fault_the_checker_counts_fails_the_run_by_name() {
        let good = HeadendReport {
            total: ChannelCounts {
                verified: 1000,
                ..ChannelCounts::default()
            },
            ecm_interval_ms: Spread {
                max: 110.0,
                ..Spread::default()
            },
            ..HeadendReport::default()
        };
        let limits = HeadendLimits::default();
        assert!(good.verdict(&limits).passed);
        type Break = fn(&mut HeadendReport);
        let cases: [(&str, Break); 6] = [
            ("clear ES payloads", |r| r.total.clear = 1),
            ("undecryptable packets", |r| r.total.undecryptable = 1),
            ("key switches before their ECM", |r| {
                r.total.switch_before_ecm = 1
            }),
            ("packets of another channel", |r| r.total.foreign = 1),
            ("lost packets", |r| r.total.lost = 1),
            ("ECM interval max", |r| r.ecm_interval_ms.max = 600.0),
        ];
        for (what, break_it) in cases {
            let mut r = good.clone();
            break_it(&mut r);
            let v = r.verdict(&limits);
            assert!(!v.passed, "{what}");
            let failed: Vec<&str> = v.failures().map(|c| c.what.as_str()).collect();
            assert_eq!(failed, [what]);
            assert!(v.reason().contains(what), "{}", v.reason());
        }
        let nothing = HeadendReport::default();
        assert!(
            !nothing.verdict(&limits).passed,
            "a run that proved nothing fails"
        );
    }
}
