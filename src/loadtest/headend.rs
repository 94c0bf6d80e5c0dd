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

use super::check::{ChannelCounts, ChannelInterval, Checker};
use super::flood::{self, Flood, FloodReport, PortCounters, FLOOD_REQUEST_KBPS};
use super::report::{ms_cell, Criterion, Plot, Table, Verdict};
use super::stream::{SyntheticStream, PER_DATAGRAM};
use crate::cas::store::{time, AccessSpec, CardChanges, InitOptions, Store, StoreError};
use crate::cas::CardFile;
use crate::io::udp::{UdpInput, UdpInputConfig, UdpOutput, UdpOutputConfig};
use crate::io::url::{UdpInputUrl, UdpOutputUrl};
use crate::io::IoStats;
use crate::simulcrypt::EmmgPace;
use crate::softcard::SoftCard;

/// The CA_system_ID of the run's store.
const CA_SYSTEM_ID: u16 = 0x4AE1;
/// The `[emmg]` port's PID in every channel (clear of the synthetic stream's PIDs and the
/// ECM PID).
const EMM_PID: u16 = 0x1FF1;
/// The head-end's API key when the run adds `[http]` (only `/metrics` is read, which needs
/// none; the head-end will not serve without one).
const API_KEY_ENV: &str = "CASTMUX_API_KEY";
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
    /// An EMMG on the head-end's `[emmg]` port from `at` for `lasting`, asking for a modest
    /// bandwidth and sending far above it: at `rate` bit/s, or as fast as the link takes.
    EmmgFlood {
        /// When.
        at: Duration,
        /// For how long.
        lasting: Duration,
        /// Bit/s sent (EMM bytes on air); None: unpaced.
        rate: Option<u64>,
    },
}

impl Fault {
    /// Parses `kill-ecmg@AT+DOWN`, `slow-ecmg@AT+FOR:DELAY`, `stop-input:CH@AT+FOR`,
    /// `emmg-flood@AT+FOR[:RATE]` (durations as `10s`, `500ms`; a rate as `2M`, `500k`).
    pub fn parse(s: &str) -> Result<Fault, String> {
        let bad = |why: &str| {
            format!(
                "{s:?}: {why}; expected kill-ecmg@AT+DOWN, slow-ecmg@AT+FOR:DELAY, \
                 stop-input:CHANNEL@AT+FOR or emmg-flood@AT+FOR[:RATE] (e.g. kill-ecmg@30s+5s)"
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
            None if what == "emmg-flood" => {
                let (lasting, rate) = match rest.split_once(':') {
                    Some((l, r)) => (l, Some(crate::value::bitrate(r).map_err(|e| bad(&e))?)),
                    None => (rest, None),
                };
                Ok(Fault::EmmgFlood {
                    at,
                    lasting: dur(lasting)?,
                    rate,
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
            | Fault::StopInput { at, .. }
            | Fault::EmmgFlood { at, .. } => *at,
        }
    }

    fn end(&self) -> Duration {
        match self {
            Fault::KillEcmg { at, down } => *at + *down,
            Fault::SlowEcmg { at, lasting, .. }
            | Fault::StopInput { at, lasting, .. }
            | Fault::EmmgFlood { at, lasting, .. } => *at + *lasting,
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
    /// An EMMG flood's measures (None for other faults, and for a flood the run ended
    /// before it did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flood: Option<FloodReport>,
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
    /// Per interval, for the channels the plot shows: every channel up to
    /// [`PLOT_CHANNELS`], else the worst that many ([`worst_channels`]), worst first.
    pub channel_samples: Vec<ChannelSeries>,
}

/// utime + stime of a process, seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// CPU seconds a process has used so far, (user, system): the system part holds the
/// network stack, which a change in castmux's own code does not move.
pub fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the fields after the command name (which may hold spaces) start after ')'
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (ticks(11) / hz, ticks(12) / hz)
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
        let card = store.export_card(runs[0].0, now, None).await;
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

/// A loopback port free for TCP and UDP at once (the `[emmg]` port takes both): the
/// checker's UDP sockets sit in the same ephemeral range a free TCP port comes from.
fn free_tcp_udp_port() -> Result<u16, LoadError> {
    for _ in 0..64 {
        let port = free_tcp_port()?;
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(LoadError::Socket {
        what: "a loopback port free for both TCP and UDP".into(),
        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
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

/// The ports a run that floods adds to the head-end: `[emmg]` for the flooder, `[http]`
/// for the port's counters.
#[derive(Debug, Clone, Copy)]
struct FloodPorts {
    emmg: u16,
    http: u16,
}

/// The head-end file: one typed channel per stream; with `flood`, the shared EMMG port
/// (every channel clones its EMMs onto [`EMM_PID`]) and the HTTP server.
fn headend_toml(
    cfg: &HeadendLoad,
    inputs: &[u16],
    outputs: &[u16],
    ecmg_port: Option<u16>,
    flood: Option<FloodPorts>,
) -> String {
    let mut t = String::new();
    if let Some(f) = flood {
        t.push_str(&format!(
            "[emmg]\nlisten = \"127.0.0.1:{}\"\nemm_pid = \"0x{EMM_PID:04X}\"\n\n\
             [http]\nlisten = \"127.0.0.1:{}\"\n\n",
            f.emmg, f.http
        ));
    }
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
    flood: Option<Flooding>,
}

/// An EMMG flood while it runs, and what it measured when it ended.
#[derive(Default)]
struct Flooding {
    flooder: Option<Flood>,
    /// The `[emmg]` port's counters when it started.
    port_before: Option<Result<PortCounters, String>>,
    /// When the flooder's stream was first seen set up.
    setup_at: Option<Duration>,
    /// The on-air window's start, and each channel's EMM bytes then.
    window: Option<(Duration, Vec<u64>)>,
    report: Option<FloodReport>,
}

impl Flooding {
    /// While it floods: note when the stream is set up, and start the on-air window a
    /// second after (the port lets a burst through first), if the flood still runs then.
    fn watch(&mut self, now: Duration, end: Duration, checker: &Mutex<Checker>) {
        let Some(flooder) = &self.flooder else { return };
        if self.setup_at.is_none() && flooder.counts().setups > 0 {
            self.setup_at = Some(now);
        }
        let settled = self
            .setup_at
            .is_some_and(|t| now >= t + Duration::from_secs(1));
        if self.window.is_none() && settled && now < end {
            self.window = Some((now, lock(checker).emm_bytes()));
        }
    }

    /// The flood's end (`now`): stop the flooder and measure.
    fn end(
        &mut self,
        now: Duration,
        at: Duration,
        lasting: Duration,
        rate: Option<u64>,
        checker: &Mutex<Checker>,
    ) {
        let end_bytes = lock(checker).emm_bytes();
        let counts = self.flooder.take().map(Flood::stop).unwrap_or_default();
        let ran = now.saturating_sub(at).max(lasting).as_secs_f64();
        let (window_s, on_air) = match &self.window {
            Some((from, start)) => {
                let secs = now.saturating_sub(*from).as_secs_f64();
                (secs, flood::on_air_kbps(start, &end_bytes, secs))
            }
            None => (0.0, None),
        };
        self.report = Some(FloodReport {
            requested_kbps: FLOOD_REQUEST_KBPS,
            rate_bps: rate,
            flooder: counts,
            offered_kbps: (counts.emms_sent * flood::emm_air_bytes()) as f64 * 8.0
                / ran.max(1e-3)
                / 1000.0,
            castmux: None,
            castmux_error: None,
            window_s,
            on_air_kbps_max: on_air.map(|o| o.0),
            on_air_kbps_mean: on_air.map(|o| o.1),
        });
    }

    /// The port's counters a second after the end: what castmux counted over the flood.
    fn castmux_counts(&mut self, after: Result<PortCounters, String>) {
        let Some(r) = self.report.as_mut() else {
            return;
        };
        match (self.port_before.take(), after) {
            (Some(Ok(before)), Ok(after)) => r.castmux = Some(after.since(&before)),
            (Some(Err(e)), _) | (_, Err(e)) => r.castmux_error = Some(e),
            (None, Ok(_)) => r.castmux_error = Some("not read when the flood started".into()),
        }
    }
}

impl Playing {
    fn new(fault: Fault) -> Playing {
        Playing {
            flood: matches!(fault, Fault::EmmgFlood { .. }).then(Flooding::default),
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

/// A random API key for a head-end the run serves `[http]` from.
fn api_key() -> Result<String, LoadError> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b)
        .map_err(|e| LoadError::Process(format!("random bytes for the API key: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Whether `faults` can be played on a run of `channels` with (`ecmg`) or without an ECMG,
/// fed for `duration`.
fn check_faults(
    faults: &[Fault],
    channels: usize,
    ecmg: bool,
    duration: Duration,
) -> Result<(), LoadError> {
    let refuse =
        |f: &Fault, why: String| Err(LoadError::Fault(format!("{}: {why}", fault_name(f))));
    for (i, f) in faults.iter().enumerate() {
        match f {
            Fault::KillEcmg { .. } | Fault::SlowEcmg { .. } if !ecmg => {
                return refuse(
                    f,
                    "needs --ecmg (the built-in CAS has no ECMG to kill or slow)".into(),
                )
            }
            Fault::StopInput { channel, .. } if *channel >= channels => {
                return refuse(f, format!("there are {channels} channels, from 0"))
            }
            Fault::EmmgFlood { .. } if !ecmg => {
                return refuse(
                    f,
                    "needs --ecmg (a channel with the built-in CAS makes its own EMMs and \
                     cannot take the [emmg] port's)"
                        .into(),
                )
            }
            Fault::EmmgFlood { lasting, .. } if *lasting < Duration::from_secs(2) => {
                return refuse(
                    f,
                    "lasts at least 2s (its first second holds the port's burst; the EMM \
                     bitrate is measured after it)"
                        .into(),
                )
            }
            Fault::EmmgFlood {
                rate: Some(bps), ..
            } if *bps <= u64::from(FLOOD_REQUEST_KBPS) * 1000 => {
                return refuse(
                    f,
                    format!(
                        "the rate is not above the {FLOOD_REQUEST_KBPS} kbit/s the flood asks \
                         for: that is no flood"
                    ),
                )
            }
            Fault::EmmgFlood { .. } if f.end() > duration => {
                return refuse(
                    f,
                    format!(
                        "ends after the run ({}): a flood is judged on what it did",
                        crate::value::show_duration(duration)
                    ),
                )
            }
            Fault::EmmgFlood { .. } => {
                // two floods at once share the port's channels: neither's share is known
                let overlaps = faults[..i].iter().any(|g| {
                    matches!(g, Fault::EmmgFlood { .. }) && g.at() < f.end() && f.at() < g.end()
                });
                if overlaps {
                    return refuse(f, "overlaps another emmg-flood".into());
                }
            }
            _ => {}
        }
    }
    Ok(())
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
    check_faults(&cfg.faults, cfg.channels, cfg.ecmg, cfg.duration)?;
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
    let floods = cfg
        .faults
        .iter()
        .any(|f| matches!(f, Fault::EmmgFlood { .. }));
    let flood_ports = if floods {
        Some(FloodPorts {
            emmg: free_tcp_udp_port()?,
            http: free_tcp_port()?,
        })
    } else {
        None
    };
    let toml = headend_toml(
        cfg,
        &in_ports,
        &outputs,
        proxy.as_ref().map(|p| p.port),
        flood_ports,
    );
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
    if flood_ports.is_some() {
        cmd.env(API_KEY_ENV, api_key()?);
    }
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
    // every channel's figures per sample; the plot shows the worst few
    let mut per_channel: Vec<Vec<ChannelInterval>> = vec![Vec::new(); cfg.channels];
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
        for (i, p) in faults.iter_mut().enumerate() {
            let f = &p.fault;
            if p.before.is_none() && now >= f.at() {
                p.before = Some(snapshot(&lock(&checker), cfg.channels));
                match f {
                    Fault::EmmgFlood { rate, .. } => {
                        let (Some(ports), Some(fl)) = (flood_ports, p.flood.as_mut()) else {
                            continue;
                        };
                        fl.port_before = Some(PortCounters::scrape(ports.http));
                        let pace = rate.map_or(EmmgPace::Unpaced, EmmgPace::Fixed);
                        // a data_channel_id of its own: one flood's ids are free for the next
                        let channel_id = u16::try_from(i + 1).unwrap_or(u16::MAX);
                        let client_id = u32::from(CA_SYSTEM_ID) << 16;
                        fl.flooder = Some(Flood::start(ports.emmg, channel_id, client_id, pace)?);
                    }
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
            if let Some(fl) = p.flood.as_mut().filter(|_| !p.ended) {
                fl.watch(now, f.end(), &checker);
            }
            if p.before.is_some() && !p.ended && now >= f.end() {
                p.ended = true;
                match f {
                    Fault::EmmgFlood { at, lasting, rate } => {
                        if let Some(fl) = p.flood.as_mut() {
                            fl.end(now, *at, *lasting, *rate, &checker);
                        }
                    }
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
                if let (Some(ports), Some(fl)) = (flood_ports, p.flood.as_mut()) {
                    fl.castmux_counts(PortCounters::scrape(ports.http));
                }
            }
        }
        if now >= next_sample {
            next_sample += cfg.interval;
            let t = now.as_secs_f64();
            let (cpu, me_cpu) = (cpu_seconds(headend.pid()), cpu_seconds(me));
            let rss = rss_kb(headend.pid());
            rss_max = rss_max.max(rss);
            let (counts, interval) = {
                let mut c = lock(&checker);
                let interval = c.take_interval();
                (snapshot(&c, cfg.channels), interval)
            };
            let (lat, ecm_max) = (&interval.latency_us, interval.ecm_max_us);
            for (series, figures) in per_channel.iter_mut().zip(interval.per_channel) {
                series.push(figures);
            }
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
    let channel_samples = worst_channels(&per_channel, PLOT_CHANNELS)
        .into_iter()
        .map(|channel| ChannelSeries {
            channel,
            samples: std::mem::take(&mut per_channel[channel]),
        })
        .collect();
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
                flood: p.flood.and_then(|f| f.report),
            })
            .collect(),
        per_channel,
        channel_samples,
    })
}

/// Channels the plot draws a panel for; more channels are ranked, the worst drawn.
pub const PLOT_CHANNELS: usize = 12;

/// One channel's figures per sample (aligned with [`HeadendReport::samples`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChannelSeries {
    /// The channel, from 0.
    pub channel: usize,
    /// Its figures of each interval.
    pub samples: Vec<ChannelInterval>,
}

impl ChannelSeries {
    /// Its largest ECM interval and latency p99 over the intervals, ms.
    fn peaks(samples: &[ChannelInterval]) -> (f64, f64) {
        samples.iter().fold((0.0, 0.0), |(e, l), s| {
            (
                f64::max(e, s.ecm_interval_max_ms),
                f64::max(l, s.latency_p99_ms),
            )
        })
    }
}

/// The `n` worst of the channels whose figures per interval are `channels`, worst first:
/// by the largest ECM interval (what a CAS vendor and the pass criterion look at), then the
/// largest latency p99; equal ones in channel order. All of them when there are at most
/// `n`, in channel order.
pub fn worst_channels(channels: &[Vec<ChannelInterval>], n: usize) -> Vec<usize> {
    if channels.len() <= n {
        return (0..channels.len()).collect();
    }
    let peaks: Vec<(f64, f64)> = channels.iter().map(|c| ChannelSeries::peaks(c)).collect();
    let mut order: Vec<usize> = (0..channels.len()).collect();
    // stable: equal channels keep their order
    order.sort_by(|&a, &b| {
        peaks[b]
            .0
            .total_cmp(&peaks[a].0)
            .then(peaks[b].1.total_cmp(&peaks[a].1))
    });
    order.truncate(n);
    order
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
    /// During an EMMG flood, the largest EMM bitrate on air of any channel over the
    /// bandwidth the head-end allocated the flooder (judged only when the run floods).
    pub max_emm_flood_ratio: f64,
}

impl Default for HeadendLimits {
    fn default() -> Self {
        HeadendLimits {
            max_clear: 0,
            max_undecryptable: 0,
            max_lost: 0,
            max_ecm_interval_ms: 500.0,
            max_emm_flood_ratio: 1.2,
        }
    }
}

impl HeadendReport {
    /// The run against `limits`; a key switch before its ECM and a run that proved nothing
    /// always fail. A run that floods the EMMG port is also judged on the flood: the EMM
    /// bitrate on air within `max_emm_flood_ratio` of the allocation, and the excess
    /// dropped by the head-end (a flood it did not drop was not policed, or not a flood).
    pub fn verdict(&self, limits: &HeadendLimits) -> Verdict {
        let t = &self.total;
        let mut criteria = vec![
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
        ];
        let floods: Vec<Option<&FloodReport>> = self
            .faults
            .iter()
            .filter(|f| matches!(f.fault, Fault::EmmgFlood { .. }))
            .map(|f| f.flood.as_ref())
            .collect();
        if !floods.is_empty() {
            // the worst flood; one that measured nothing (NaN) fails the run
            let worst = |v: &dyn Fn(&FloodReport) -> f64, pick: fn(f64, f64) -> f64| {
                floods
                    .iter()
                    .map(|f| f.map_or(f64::NAN, v))
                    .reduce(|a, b| {
                        if a.is_nan() || b.is_nan() {
                            f64::NAN
                        } else {
                            pick(a, b)
                        }
                    })
                    .unwrap_or(f64::NAN)
            };
            criteria.push(Criterion::at_most(
                "EMM bitrate on air in a flood / allocation",
                "--max-emm-flood-ratio",
                limits.max_emm_flood_ratio,
                worst(&FloodReport::over_allocation, f64::max),
                "x",
            ));
            criteria.push(Criterion::at_least(
                "flood EMMs dropped by the head-end",
                "",
                1.0,
                worst(
                    &|r| r.castmux.map_or(f64::NAN, |c| c.dropped_over_bandwidth),
                    f64::min,
                ),
                "",
            ));
        }
        Verdict::new(criteria)
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
            if let Some(fl) = &f.flood {
                flood_rows(&mut table, fl);
            }
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
        p.set_panels_title(self.panels_title());
        for c in &self.channel_samples {
            let name = format!("channel {}", c.channel);
            for (s, f) in self.samples.iter().zip(&c.samples) {
                p.push_panel(&name, "ms", "ECM interval max", s.t, f.ecm_interval_max_ms);
                p.push_panel(&name, "ms", "added latency p99", s.t, f.latency_p99_ms);
            }
        }
        p
    }

    /// What the per-channel panels are and which channels they show.
    fn panels_title(&self) -> String {
        let shown = self.channel_samples.len();
        if shown >= self.channels {
            format!("per channel (all {shown}): ECM interval max and added latency p99")
        } else {
            let list: Vec<String> = self
                .channel_samples
                .iter()
                .map(|c| c.channel.to_string())
                .collect();
            format!(
                "per channel: the {shown} worst of {} by ECM interval max, then latency p99 \
                 (channels {})",
                self.channels,
                list.join(", ")
            )
        }
    }
}

/// What an EMMG flood did, under its fault's row.
fn flood_rows(table: &mut Table, fl: &FloodReport) {
    let c = &fl.flooder;
    table.row([
        "  EMMs sent by the flooder".to_owned(),
        format!(
            "{} ({:.0} kbit/s offered; asked {}, allocated {} kbit/s)",
            c.emms_sent, fl.offered_kbps, fl.requested_kbps, c.allocated_kbps
        ),
    ]);
    table.row([
        "  dropped by castmux: over bandwidth / queue full".to_owned(),
        match (&fl.castmux, &fl.castmux_error) {
            (Some(p), _) => format!("{} / {}", p.dropped_over_bandwidth, p.dropped_queue_full),
            (None, e) => format!("- ({})", e.as_deref().unwrap_or("not read")),
        },
    ]);
    let kbps = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    table.row([
        "  EMM on air per channel: max / mean".to_owned(),
        format!(
            "{} / {} kbit/s over {:.1} s ({:.2} x allocation)",
            kbps(fl.on_air_kbps_max),
            kbps(fl.on_air_kbps_mean),
            fl.window_s,
            fl.over_allocation()
        ),
    ]);
}

/// A bitrate as `--fault` takes it back: `2M`, `500k`, `1500`.
fn rate_text(bps: u64) -> String {
    if bps.is_multiple_of(1_000_000) {
        format!("{}M", bps / 1_000_000)
    } else if bps.is_multiple_of(1000) {
        format!("{}k", bps / 1000)
    } else {
        bps.to_string()
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
        Fault::EmmgFlood { at, lasting, rate } => match rate {
            Some(bps) => format!("emmg-flood@{}+{}:{}", ms(at), ms(lasting), rate_text(*bps)),
            None => format!("emmg-flood@{}+{}", ms(at), ms(lasting)),
        },
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

    #[test]
    fn the_plot_shows_the_worst_channels_and_says_which() {
        let iv = |ecm: f64, lat: f64| ChannelInterval {
            ecm_interval_max_ms: ecm,
            latency_p99_ms: lat,
        };
        // channel 2 has the longest ECM gap; 0 and 3 tie on it, 3 has the worse latency;
        // 1 is the best
        let channels = vec![
            vec![iv(110.0, 2.0), iv(105.0, 3.0)],
            vec![iv(101.0, 9.0), iv(102.0, 1.0)],
            vec![iv(100.0, 1.0), iv(480.0, 1.0)],
            vec![iv(110.0, 4.0), iv(100.0, 2.0)],
        ];
        assert_eq!(worst_channels(&channels, 3), [2, 3, 0]);
        assert_eq!(worst_channels(&channels, 1), [2]);
        // few enough: all of them, in order
        assert_eq!(worst_channels(&channels, 4), [0, 1, 2, 3]);
        assert_eq!(worst_channels(&channels[..0], 4), Vec::<usize>::new());

        let r = HeadendReport {
            channels: 4,
            samples: vec![Sample { t: 1.0, ..sample() }, Sample { t: 2.0, ..sample() }],
            channel_samples: worst_channels(&channels, 2)
                .into_iter()
                .map(|c| ChannelSeries {
                    channel: c,
                    samples: channels[c].clone(),
                })
                .collect(),
            ..HeadendReport::default()
        };
        let plot = r.plot();
        assert!(
            plot.panels_title().contains("the 2 worst of 4")
                && plot.panels_title().contains("channels 2, 3"),
            "{}",
            plot.panels_title()
        );
        let names: Vec<&str> = plot.panels().iter().map(|p| p.metric.as_str()).collect();
        assert_eq!(names, ["channel 2", "channel 3"]);
        assert_eq!(
            plot.panels()[0].series[0].points,
            [(1.0, 100.0), (2.0, 480.0)]
        );
    }

    fn sample() -> Sample {
        Sample {
            t: 0.0,
            verified: 0,
            clear: 0,
            undecryptable: 0,
            ecm_interval_max_ms: 0.0,
            latency_p50_ms: 0.0,
            latency_p99_ms: 0.0,
            headend_cpu: 0.0,
            headend_rss_mb: 0.0,
            loadtest_cpu: 0.0,
        }
    }

    #[test]
    fn emmg_flood_parses_with_and_without_a_rate_and_prints_back() {
        let s = Duration::from_secs;
        let f = Fault::parse("emmg-flood@5s+3s:2M").unwrap();
        assert_eq!(
            f,
            Fault::EmmgFlood {
                at: s(5),
                lasting: s(3),
                rate: Some(2_000_000)
            }
        );
        assert_eq!(Fault::parse(&fault_name(&f)).unwrap(), f);
        let f = Fault::parse("emmg-flood@500ms+2s").unwrap();
        assert_eq!(
            f,
            Fault::EmmgFlood {
                at: Duration::from_millis(500),
                lasting: s(2),
                rate: None
            }
        );
        assert_eq!(Fault::parse(&fault_name(&f)).unwrap(), f);
        for bad in [
            "emmg-flood@1s",
            "emmg-flood@1s+2s:fast",
            "emmg-flood:1@1s+2s",
        ] {
            let e = Fault::parse(bad).unwrap_err();
            assert!(e.contains("emmg-flood@AT+FOR[:RATE]"), "{bad}: {e}");
        }
    }

    #[test]
    fn floods_that_cannot_be_judged_are_refused_before_the_run() {
        let s = Duration::from_secs;
        let flood = |at: u64, lasting: u64, rate: Option<u64>| Fault::EmmgFlood {
            at: s(at),
            lasting: s(lasting),
            rate,
        };
        let check = |faults: &[Fault], ecmg: bool| {
            check_faults(faults, 2, ecmg, s(20)).map_err(|e| e.to_string())
        };
        assert!(check(&[flood(2, 3, None), flood(6, 2, Some(1_000_000))], true).is_ok());
        let refused = [
            (vec![flood(2, 3, None)], false, "needs --ecmg"),
            (vec![flood(2, 1, None)], true, "at least 2s"),
            (
                vec![flood(2, 3, Some(64_000))],
                true,
                "not above the 64 kbit/s",
            ),
            (vec![flood(2, 4, None), flood(5, 3, None)], true, "overlaps"),
            (vec![flood(18, 3, None)], true, "ends after the run"),
        ];
        for (faults, ecmg, why) in refused {
            let e = check(&faults, ecmg).unwrap_err();
            assert!(e.contains(why), "{faults:?}: {e}");
        }
    }

    #[test]
    fn a_flood_fails_the_run_when_it_leaks_onto_the_air_or_was_not_dropped() {
        let flood = FloodReport {
            flooder: flood::FlooderCounts {
                allocated_kbps: 64,
                ..Default::default()
            },
            castmux: Some(PortCounters {
                dropped_over_bandwidth: 5000.0,
                ..Default::default()
            }),
            on_air_kbps_max: Some(66.0),
            ..FloodReport::default()
        };
        let good = HeadendReport {
            total: ChannelCounts {
                verified: 1000,
                ..ChannelCounts::default()
            },
            faults: vec![FaultPlayed {
                fault: Fault::parse("emmg-flood@1s+3s").unwrap(),
                before: ChannelCounts::default(),
                after: ChannelCounts::default(),
                flood: Some(flood),
            }],
            ..HeadendReport::default()
        };
        let limits = HeadendLimits::default();
        assert!(
            good.verdict(&limits).passed,
            "{}",
            good.verdict(&limits).reason()
        );
        let failed = |r: &HeadendReport| -> Vec<String> {
            r.verdict(&limits)
                .failures()
                .map(|c| c.what.clone())
                .collect()
        };
        let on_air = "EMM bitrate on air in a flood / allocation";
        let dropped = "flood EMMs dropped by the head-end";
        let mut r = good.clone();
        r.faults[0].flood.as_mut().unwrap().on_air_kbps_max = Some(128.0);
        assert_eq!(failed(&r), [on_air]);
        let mut r = good.clone();
        r.faults[0].flood.as_mut().unwrap().castmux = Some(PortCounters::default());
        assert_eq!(failed(&r), [dropped]);
        // the counters could not be read: not proven
        let mut r = good.clone();
        r.faults[0].flood.as_mut().unwrap().castmux = None;
        assert_eq!(failed(&r), [dropped]);
        // never set up (nothing allocated), or never played
        let mut r = good.clone();
        r.faults[0].flood.as_mut().unwrap().flooder.allocated_kbps = 0;
        assert_eq!(failed(&r), [on_air]);
        let mut r = good.clone();
        r.faults[0].flood = None;
        assert_eq!(failed(&r), [on_air, dropped]);
        assert!(good
            .summary()
            .to_string()
            .contains("EMMs sent by the flooder"));
    }
}
