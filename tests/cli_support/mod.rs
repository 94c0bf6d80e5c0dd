//! Helpers shared by the CLI tests: run the real binary, read packets, check PSI and CC.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use castmux::ts::{CaDescriptor, EsKind, Pat, Pid, Pmt, Section, SectionAssembler};

pub mod gen;

pub type Packet = [u8; 188];

pub const SAMPLES: [&str; 4] = ["spts.ts", "mpts.ts", "heavy-af.ts", "nullpad.ts"];

pub fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name)
}

pub fn castmux(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args(args)
        .env("CASTMUX_LOG", "warn")
        .output()
        .expect("run castmux")
}

/// Run castmux and require success; returns stderr.
pub fn ok(args: &[&str]) -> String {
    let out = castmux(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "castmux {args:?} failed: {:?}\n{stderr}",
        out.status
    );
    stderr
}

pub fn packets(path: &Path) -> Vec<Packet> {
    let data = std::fs::read(path).expect("read ts");
    packets_of(&data)
}

pub fn packets_of(data: &[u8]) -> Vec<Packet> {
    data.chunks_exact(188)
        .map(|c| c.try_into().expect("188"))
        .collect()
}

pub fn pid(p: &Packet) -> u16 {
    (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2])
}

pub fn tsc(p: &Packet) -> u8 {
    p[3] >> 6
}

pub fn has_payload(p: &Packet) -> bool {
    p[3] & 0x10 != 0 && !(p[3] & 0x20 != 0 && p[4] >= 183)
}

/// Make an SPTS with ffmpeg: `secs` seconds of the lavfi `pattern` (320x240, 25 fps) as
/// MPEG-2 video at `video` bit/s (GOP 12) and a sine as MP2 audio at 96 kbit/s, with the
/// mpegts muxer's `options` (mux rate, numbering, ...). Fails loudly without ffmpeg.
pub fn ffmpeg_spts(path: &Path, pattern: &str, secs: u64, video: &str, options: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("{pattern}=size=320x240:rate=25:duration={secs}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:duration={secs}"))
        .args(["-c:v", "mpeg2video", "-b:v", video, "-g", "12"])
        .args(["-c:a", "mp2", "-b:a", "96k"])
        .args(options)
        .args(["-f", "mpegts"])
        .arg(path)
        .output()
        .expect("ffmpeg (Debian package ffmpeg) is needed by this test");
    assert!(out.status.success(), "ffmpeg: {out:?}");
}

/// ffmpeg decodes every stream of `ts` to nothing (`-v error`: what it says is an error);
/// its exit status and messages for the caller to judge. Fails loudly without ffmpeg.
pub fn ffmpeg_decode(ts: &Path) -> Output {
    Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(ts)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg (Debian package ffmpeg) is needed by this test")
}

/// (packet index, PCR in 27 MHz ticks) of every PCR on `pcr_pid`, read by hand rather
/// than by castmux's own parser.
pub fn pcrs(pkts: &[Packet], pcr_pid: u16) -> Vec<(usize, u64)> {
    pkts.iter()
        .enumerate()
        .filter(|(_, p)| pid(p) == pcr_pid && p[3] & 0x20 != 0 && p[4] >= 7 && p[5] & 0x10 != 0)
        .map(|(i, p)| {
            let base = (u64::from(p[6]) << 25)
                | (u64::from(p[7]) << 17)
                | (u64::from(p[8]) << 9)
                | (u64::from(p[9]) << 1)
                | (u64::from(p[10]) >> 7);
            let ext = (u64::from(p[10] & 1) << 8) | u64::from(p[11]);
            (i, base * 300 + ext)
        })
        .collect()
}

/// The bitrate each pair of consecutive PCRs of `pcrs` gives (bytes between them over the
/// PCR step), bit/s.
pub fn pcr_bitrates(pcrs: &[(usize, u64)]) -> Vec<f64> {
    const WRAP: u64 = (1 << 33) * 300;
    pcrs.windows(2)
        .map(|w| {
            let ticks = (w[1].1 + WRAP - w[0].1) % WRAP;
            (w[1].0 - w[0].0) as f64 * 1504.0 * 27e6 / ticks as f64
        })
        .collect()
}

/// What the PSI of a stream says.
#[derive(Debug, Default)]
pub struct Psi {
    /// program_number -> PMT PID.
    pub programs: BTreeMap<u16, u16>,
    /// ES PID -> (program, kind).
    pub es: BTreeMap<u16, (u16, EsKind)>,
    /// program_number -> program-level CA descriptors (system id, PID).
    pub program_ca: BTreeMap<u16, Vec<(u16, u16)>>,
    /// ES PID -> component-level CA descriptors.
    pub es_ca: BTreeMap<u16, Vec<(u16, u16)>>,
    /// Versions seen per program.
    pub versions: BTreeMap<u16, BTreeSet<u8>>,
    /// PMT sections with a good CRC.
    pub pmt_sections: usize,
    /// CA descriptors of the last good CAT.
    pub cat_ca: Vec<(u16, u16)>,
    /// CAT sections with a good CRC, and their versions.
    pub cat_sections: usize,
    /// Versions of the CAT seen.
    pub cat_versions: BTreeSet<u8>,
}

/// Read PAT and PMTs (the last good section of each wins).
pub fn psi(pkts: &[Packet]) -> Psi {
    let mut out = Psi::default();
    let mut asms: BTreeMap<u16, SectionAssembler> = BTreeMap::new();
    let mut pmt_pids: BTreeSet<u16> = BTreeSet::new();
    for p in pkts {
        let id = pid(p);
        if id != 0 && id != 1 && !pmt_pids.contains(&id) {
            continue;
        }
        let asm = asms.entry(id).or_insert_with(SectionAssembler::psi);
        let mut sections: Vec<Vec<u8>> = Vec::new();
        asm.push(p, |r| {
            if let Ok(s) = r {
                sections.push(s.bytes().to_vec());
            }
        });
        for bytes in sections {
            let s = Section::parse(&bytes, 1024).expect("assembled");
            if id == 0 {
                if let Ok(pat) = Pat::parse(&s) {
                    for e in pat.entries() {
                        if e.program_number != 0 {
                            out.programs.insert(e.program_number, e.pid.value());
                            pmt_pids.insert(e.pid.value());
                        }
                    }
                }
            } else if id == 1 {
                if let Ok(cat) = castmux::ts::Cat::parse(&s) {
                    out.cat_sections += 1;
                    out.cat_versions.insert(cat.header.version);
                    out.cat_ca = cas(cat.descriptors.ca_descriptors());
                }
            } else if let Ok(pmt) = Pmt::parse(&s) {
                out.pmt_sections += 1;
                let n = pmt.program_number();
                out.versions
                    .entry(n)
                    .or_default()
                    .insert(pmt.header.version);
                out.program_ca
                    .insert(n, cas(pmt.descriptors.ca_descriptors()));
                for st in pmt.streams() {
                    let e = st.elementary_pid.value();
                    out.es.insert(e, (n, st.kind()));
                    out.es_ca.insert(e, cas(st.descriptors.ca_descriptors()));
                }
            }
        }
    }
    out
}

fn cas<'a>(it: impl Iterator<Item = CaDescriptor<'a>>) -> Vec<(u16, u16)> {
    it.map(|c| (c.ca_system_id, c.ca_pid.value())).collect()
}

/// PIDs of elementary streams that carry audio/video/subtitles (scrambled by default).
pub fn av_pids(p: &Psi) -> BTreeSet<u16> {
    p.es.iter()
        .filter(|(_, (_, k))| {
            matches!(
                k,
                EsKind::Video | EsKind::Audio | EsKind::Subtitle | EsKind::Teletext
            )
        })
        .map(|(pid, _)| *pid)
        .collect()
}

/// The private sections carried on `pid` (EMMs packed back to back, a section across
/// packets), each with the index of the packet it ends in. A PID's payload is read as one
/// stream: the pointer_field of a packet that starts a section is dropped, stuffing (0xFF)
/// skipped; a section is taken once all its bytes are there.
pub fn pid_sections(pkts: &[Packet], pid_: u16) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut synced = false;
    for (i, p) in pkts.iter().enumerate() {
        if pid(p) != pid_ || !has_payload(p) {
            continue;
        }
        let mut at = 4;
        if p[3] & 0x20 != 0 {
            at += 1 + usize::from(p[4]);
        }
        if at >= 188 {
            continue;
        }
        let mut payload = &p[at..];
        if p[1] & 0x40 != 0 {
            let pointer = usize::from(payload[0]);
            if !synced {
                // the first section starts where the pointer says
                synced = true;
                payload = payload.get(1 + pointer..).unwrap_or(&[]);
            } else {
                buf.extend_from_slice(payload.get(1..).unwrap_or(&[]));
                payload = &[];
            }
        } else if !synced {
            continue;
        }
        buf.extend_from_slice(payload);
        loop {
            while buf.first() == Some(&0xFF) {
                buf.remove(0);
            }
            match castmux::ts::section::section_total_len(&buf) {
                Some(len) if len <= buf.len() => {
                    out.push((i, buf[..len].to_vec()));
                    buf.drain(..len);
                }
                _ => break,
            }
        }
    }
    out
}

/// The ES packets of `pids`, in order.
pub fn on_pids(pkts: &[Packet], pids: &BTreeSet<u16>) -> Vec<Packet> {
    pkts.iter()
        .filter(|p| pids.contains(&pid(p)))
        .copied()
        .collect()
}

/// The packets but CAT and null ones, in order (a scrambled output adds a CAT).
pub fn without_cat(pkts: &[Packet]) -> Vec<Packet> {
    pkts.iter()
        .filter(|p| !matches!(pid(p), 0x0001 | 0x1FFF))
        .copied()
        .collect()
}

/// Continuity errors per PID (null packets aside; duplicates and discontinuity_indicator allowed).
pub fn cc_errors(pkts: &[Packet]) -> BTreeMap<u16, u32> {
    let mut last: BTreeMap<u16, u8> = BTreeMap::new();
    let mut errs: BTreeMap<u16, u32> = BTreeMap::new();
    for p in pkts {
        let id = pid(p);
        if id == 0x1FFF {
            continue;
        }
        let cc = p[3] & 0x0F;
        let payload = p[3] & 0x10 != 0;
        let disc = p[3] & 0x20 != 0 && p[4] > 0 && p[5] & 0x80 != 0;
        if let Some(&l) = last.get(&id) {
            let expected = if payload { (l + 1) & 0x0F } else { l };
            if !disc && cc != expected && !(payload && cc == l) {
                *errs.entry(id).or_default() += 1;
            }
        }
        last.insert(id, cc);
    }
    errs
}

/// A UDP port on 127.0.0.1 with nothing behind it: an input port for castmux to bind, or
/// an output with no receiver. Picked below the kernel's ephemeral range (32768 up), each
/// once per test process, so a socket bound to port 0 (this test's, a parallel test's, or
/// castmux's own) cannot take it between the pick and its use.
pub fn free_udp_port() -> u16 {
    free_port(|port| std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok())
}

/// A TCP port on 127.0.0.1 nobody listens on (an HTTP listener castmux binds, a server a
/// test starts again on the same port), picked as [`free_udp_port`] picks.
pub fn free_tcp_port() -> u16 {
    free_port(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
}

fn free_port(free: impl Fn(u16) -> bool) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const LOW: u16 = 20000;
    const SPAN: u16 = 12000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // test processes that run one after the other start at different places
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + (start + n % SPAN) % SPAN;
        if free(port) {
            return port;
        }
    }
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Pid helper for library-level tests.
pub fn p(v: u16) -> Pid {
    Pid::new(v)
}

/// A TCP connection to `to` from the loopback address `from`: Linux routes all of
/// 127.0.0.0/8 to lo, so 127.0.0.2, 127.0.0.3, ... let one test be several hosts.
pub fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let src: SocketAddr = format!("{from}:0").parse().expect("source address");
    sock.bind(&src.into()).expect("bind the source address");
    sock.connect(&to.into()).expect("connect");
    sock.into()
}

/// GET `path` from an HTTP-TS listener and read the response head (byte by byte, so
/// nothing of the body is taken); `small_buffer` gives the socket a 16 KiB receive buffer,
/// so a throttled reader's backlog shows up at the server within a test's time.
pub fn http_get(addr: SocketAddr, path: &str, small_buffer: bool) -> (TcpStream, String) {
    use std::io::Write;
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    if small_buffer {
        sock.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    }
    sock.connect(&addr.into()).expect("connect");
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send the request");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// Whether the server has closed `s` (EOF or reset) within `within`; what it sent before
/// (a greeting) is read and dropped. False when it is still open at the end.
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let end = Instant::now() + within;
    let mut b = [0u8; 256];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Whether `s` is still open now: no EOF or reset waiting (data waiting is dropped).
pub fn still_open(s: &mut TcpStream) -> bool {
    !closed_within(s, Duration::from_millis(50))
}

/// The lines `child` writes to its stderr (piped), read on a thread of their own.
pub fn log_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A castmux server process (`serve`, `headend`, `softcard serve`) and the address it
/// logged; killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// SIGTERM, then the exit status and the log lines after the start.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        // the reader thread may still be forwarding the last lines: read to its end (the
        // pipe's end), not only what has arrived so far
        let mut lines = Vec::new();
        while let Ok(l) = self.log.recv_timeout(Duration::from_secs(5)) {
            lines.push(l);
        }
        (status, lines)
    }
}

/// Start a prepared server command (stderr piped) and wait for the `listen=ADDR` it logs.
pub fn start_server(mut c: Command) -> Server {
    let mut child = c.spawn().expect("run castmux");
    let log = log_lines(&mut child);
    let addr = loop {
        let line = log
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{c:?} did not log its listen= address"));
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    Server { child, addr, log }
}
