//! Backup inputs against the real binary: a head-end channel with a primary and a backup
//! UDP input (ffmpeg-made, numbered differently). The primary stops: the backup goes on
//! air within the start delay; the primary comes back: it takes over after the return
//! delay; the API pins the backup and gives the choice back. Across all four switches the
//! output keeps the primary's numbering (PIDs, PAT/PMT versions), loses no continuity
//! counter, and descrambles to a stream ffmpeg decodes whole.

mod cli_support;
mod http_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use castmux::ts::{Section, SectionAssembler};
use cli_support::*;
use http_support::*;

const CW: &str = "11223366445566EF:0102030609080716";
/// The inputs' length and their constant rate (ffmpeg -muxrate).
const SECS: u64 = 18;
const MUXRATE: u64 = 1_500_000;

/// An ffmpeg-made SPTS: MPEG-2 video and MP2 audio at a constant mux rate, numbered by
/// `numbering` (ffmpeg's -mpegts_* options).
fn make_input(path: &Path, pattern: &str, numbering: &[&str]) {
    make_ts(path, pattern, SECS, numbering)
}

fn make_ts(path: &Path, pattern: &str, secs: u64, numbering: &[&str]) {
    let muxrate = MUXRATE.to_string();
    let mut options = vec!["-muxrate", &muxrate, "-pat_period", "0.1"];
    options.extend_from_slice(numbering);
    ffmpeg_spts(path, pattern, secs, "600k", &options);
}

/// Send both inputs (the backup may be empty) as 7-packet datagrams at their mux rate for
/// `secs`; the primary pauses for the seconds in `off`, then goes on where it stopped.
fn send(
    primary: Vec<u8>,
    backup: Vec<u8>,
    ports: [u16; 2],
    secs: f64,
    off: std::ops::Range<f64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dgram = 7 * 188;
        let step = Duration::from_secs_f64(dgram as f64 * 8.0 / MUXRATE as f64);
        let start = Instant::now();
        let (mut p, mut b) = (0usize, 0usize);
        let mut k = 0u32;
        loop {
            let due = step * k;
            if due.as_secs_f64() >= secs {
                break;
            }
            if let Some(d) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(d);
            }
            if !off.contains(&due.as_secs_f64()) && p + dgram <= primary.len() {
                let _ = tx.send_to(&primary[p..p + dgram], ("127.0.0.1", ports[0]));
                p += dgram;
            }
            if b + dgram <= backup.len() {
                let _ = tx.send_to(&backup[b..b + dgram], ("127.0.0.1", ports[1]));
                b += dgram;
            }
            k += 1;
        }
    })
}

/// The versions of every PAT and PMT section in `pkts`, by PID.
fn versions(pkts: &[Packet], pids: &[u16]) -> BTreeMap<u16, BTreeSet<u8>> {
    let mut out: BTreeMap<u16, BTreeSet<u8>> = BTreeMap::new();
    for &pid_ in pids {
        let mut asm = SectionAssembler::psi();
        for p in pkts.iter().filter(|p| pid(p) == pid_) {
            asm.push(p, |r| {
                if let Ok(s) = r {
                    if let Some(h) = Section::long_header(&s) {
                        out.entry(pid_).or_default().insert(h.version);
                    }
                }
            });
        }
    }
    out
}

fn active(addr: std::net::SocketAddr) -> (u64, u64) {
    let c = api(addr, "GET", "/api/v1/channels/tv", None).json();
    let inputs = c["input"]["inputs"].as_array().expect("inputs").clone();
    let k = inputs
        .iter()
        .position(|i| i["active"] == true)
        .expect("an active input") as u64;
    (k, c["input"]["switches"].as_u64().unwrap())
}

fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// No CC error on any PID, a discontinuity_indicator (a new time base's PCR) excusing
/// nothing, and at most `switches` of them.
fn assert_one_stream(pkts: &[Packet], switches: usize) {
    let disc = pkts
        .iter()
        .filter(|p| p[3] & 0x20 != 0 && p[4] > 0 && p[5] & 0x80 != 0)
        .count();
    assert!(
        disc <= switches,
        "{disc} packets with discontinuity_indicator"
    );
    let strict: Vec<Packet> = pkts
        .iter()
        .map(|p| {
            let mut p = *p;
            if p[3] & 0x20 != 0 && p[4] > 0 {
                p[5] &= 0x7F;
            }
            p
        })
        .collect();
    assert_eq!(
        cc_errors(&strict),
        BTreeMap::new(),
        "CC errors on the output"
    );
}

/// Descramble `bytes` under [`CW`]; ffmpeg decodes all of it: the video frames read.
fn decoded_frames(dir: &Path, bytes: &[u8]) -> u64 {
    let scrambled = dir.join("out.ts");
    std::fs::write(&scrambled, bytes).unwrap();
    let clear = dir.join("clear.ts");
    ok(&[
        "descramble",
        "-i",
        s(&scrambled),
        "-o",
        s(&clear),
        "--cw",
        CW,
    ]);
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(&clear)
        .output()
        .expect("ffprobe");
    assert!(probe.status.success(), "{probe:?}");
    let text = String::from_utf8_lossy(&probe.stdout);
    let frames: u64 = text
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("ffprobe said {text:?}"));
    let decode = ffmpeg_decode(&clear);
    assert!(decode.status.success(), "{decode:?}");
    frames
}

/// A receiver of the output until `stop`: every byte.
fn receive(out: UdpSocket, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u8>> {
    out.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = out.recv(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
        got
    })
}

/// `castmux headend` with `[http]` and one channel "tv" whose input settings are `lines`
/// (input timeout and start delay 300 ms), and a receiver of its output until the flag.
fn start(dir: &Path, lines: &str) -> (Server, Arc<AtomicBool>, std::thread::JoinHandle<Vec<u8>>) {
    let db = seed_store(dir);
    let out = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ = socket2::SockRef::from(&out).set_recv_buffer_size(8 << 20);
    let cfg = dir.join("headend.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\n[[channel]]\nname = \"tv\"\n{lines}\n\
             output = \"udp://127.0.0.1:{}\"\ncw = \"{CW}\"\ncrypto_period = \"1s\"\n\
             input_timeout = \"300ms\"\nbackup_start_delay = \"300ms\"\n",
            out.local_addr().unwrap().port()
        ),
    )
    .unwrap();
    let server = headend(&db, &cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = receive(out, Arc::clone(&stop));
    (server, stop, receiver)
}

/// Sleep until `secs` after `t0`.
fn at(t0: Instant, secs: f64) {
    if let Some(d) = Duration::from_secs_f64(secs).checked_sub(t0.elapsed()) {
        std::thread::sleep(d);
    }
}

/// The sender done: the output received, and the head-end's `input switched` log lines.
fn finish(
    server: Server,
    stop: Arc<AtomicBool>,
    receiver: std::thread::JoinHandle<Vec<u8>>,
    sender: std::thread::JoinHandle<()>,
) -> (Vec<u8>, Vec<String>) {
    sender.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let bytes = receiver.join().unwrap();
    let (_, log) = server.stop();
    let switches = log
        .into_iter()
        .filter(|l| l.contains("input switched"))
        .collect();
    (bytes, switches)
}

/// One stream in the primary's numbering: none of `foreign` PIDs out, no CC error across
/// at most `switches` new time bases, one PAT and one PMT version, and the descrambled
/// output decodes in ffmpeg with at least `frames` video frames.
fn check_output(
    dir: &Path,
    bytes: &[u8],
    foreign: &[u16],
    switches: usize,
    frames: u64,
) -> Vec<Packet> {
    let pkts = packets_of(bytes);
    let pids: BTreeSet<u16> = pkts.iter().map(pid).collect();
    for theirs in foreign {
        assert!(
            !pids.contains(theirs),
            "a foreign PID {theirs:#x} went out: {pids:x?}"
        );
    }
    for ours in [0u16, 0x1000, 0x100, 0x101] {
        assert!(pids.contains(&ours), "{ours:#x} missing: {pids:x?}");
    }
    assert_one_stream(&pkts, switches);
    let v = versions(&pkts, &[0, 0x1000]);
    assert_eq!(
        (v[&0].len(), v[&0x1000].len()),
        (1, 1),
        "PAT and PMT versions {v:?}"
    );
    // the ES left scrambled, and back clear under the CW ffmpeg decodes all of it
    assert!(pkts
        .iter()
        .filter(|p| [0x100, 0x101].contains(&pid(p)) && has_payload(p))
        .all(|p| tsc(p) != 0));
    let got = decoded_frames(dir, bytes);
    assert!(got >= frames, "{got} frames decoded");
    pkts
}

#[test]
fn a_backup_input_takes_over_and_the_output_stays_one_stream() {
    let dir = tmp();
    let primary = dir.path().join("primary.ts");
    let backup = dir.path().join("backup.ts");
    make_input(&primary, "testsrc", &[]);
    make_input(
        &backup,
        "testsrc2",
        &[
            "-mpegts_pmt_start_pid",
            "0x1200",
            "-mpegts_start_pid",
            "0x300",
            "-mpegts_service_id",
            "9",
            "-mpegts_transport_stream_id",
            "5",
        ],
    );
    let ports = [free_udp_port(), free_udp_port()];
    let primary_url = format!("udp://127.0.0.1:{}", ports[0]);
    let backup_url = format!("udp://127.0.0.1:{}", ports[1]);
    let (server, stop, receiver) = start(
        dir.path(),
        &format!(
            "input = \"{primary_url}\"\nbackup = [\"{backup_url}\"]\nbackup_return_delay = \"2s\""
        ),
    );
    let addr = server.addr;
    let t0 = Instant::now();
    let sender = send(
        std::fs::read(&primary).unwrap(),
        std::fs::read(&backup).unwrap(),
        ports,
        15.0,
        4.0..8.0,
    );
    let at = |secs: f64| at(t0, secs);

    // on the primary; it stops at 4 s: the backup within the timeout + start delay
    at(3.5);
    assert_eq!(active(addr), (0, 0));
    at(4.0);
    assert!(
        wait_until(Duration::from_millis(1500), || active(addr) == (1, 1)),
        "the backup did not take over within 1.5 s: {}",
        api(addr, "GET", "/api/v1/channels/tv", None).text()
    );
    let switched = t0.elapsed().as_secs_f64();
    assert!(switched < 5.2, "the backup took over at {switched:.2} s");
    // the primary is back at 8 s: it takes over after the 2 s return delay, not before
    at(9.5);
    assert_eq!(active(addr), (1, 1), "returned before the return delay");
    assert!(
        wait_until(Duration::from_millis(1500), || active(addr) == (0, 2)),
        "the primary did not take over again"
    );
    // the API pins the backup, then gives the choice back (the primary is on air)
    at(11.5);
    assert_eq!(
        api(addr, "POST", "/api/v1/channels/tv/input/1", None).status,
        202
    );
    assert!(wait_until(Duration::from_secs(1), || active(addr) == (1, 3)));
    let c = api(addr, "GET", "/api/v1/channels/tv", None).json();
    assert_eq!(c["input"]["manual"], true, "{c}");
    assert_eq!(c["input"]["url"], backup_url.as_str(), "{c}");
    assert_eq!(c["input"]["inputs"][0]["on_air"], true, "{c}");
    at(12.5);
    assert_eq!(active(addr), (1, 3), "a pinned input stays");
    assert_eq!(
        api(addr, "POST", "/api/v1/channels/tv/input/auto", None).status,
        202
    );
    assert!(wait_until(Duration::from_secs(1), || active(addr) == (0, 4)));
    // refusals
    assert_eq!(
        api(addr, "POST", "/api/v1/channels/tv/input/2", None).status,
        400
    );
    assert_eq!(
        api(addr, "POST", "/api/v1/channels/tv/input/x", None).status,
        400
    );
    assert_eq!(get(addr, "/api/v1/channels/tv/input/1").status, 401);
    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains("castmux_channel_input_switches_total{channel=\"tv\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "castmux_channel_active_input{{channel=\"tv\",input=\"{primary_url}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "castmux_channel_active_input{{channel=\"tv\",input=\"{backup_url}\"}} 0"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "castmux_channel_input_on_air{{channel=\"tv\",input=\"{backup_url}\"}} 1"
    )));
    let (bytes, switches) = finish(server, stop, receiver, sender);
    assert_eq!(switches.len(), 4, "{switches:#?}");
    assert!(switches[0].contains("off air"), "{}", switches[0]);
    assert!(switches[1].contains("back on air"), "{}", switches[1]);
    assert!(switches[2].contains("API"), "{}", switches[2]);

    // one stream in the primary's numbering, its program number the primary's; 15 s at
    // 25 fps, less the start
    let pkts = check_output(dir.path(), &bytes, &[0x1200, 0x300, 0x301], 4, 300);
    assert!(pkts.len() > 10_000, "{} packets out", pkts.len());
    let psi = psi(&pkts);
    assert_eq!(
        psi.programs.keys().copied().collect::<Vec<_>>(),
        [1],
        "{:?}",
        psi.programs
    );
}

/// A primary and a slate: the primary stops, the slate (a short ffmpeg file, numbered
/// otherwise) loops on air in its place, in the primary's numbering, its loops joined
/// without a CC error; the primary back on air takes over at once (not after the return
/// delay, which is for leaving a working backup).
#[test]
fn the_slate_loops_when_no_input_is_on_air() {
    let dir = tmp();
    let primary = dir.path().join("primary.ts");
    let slate = dir.path().join("slate.ts");
    make_input(&primary, "testsrc", &[]);
    make_ts(
        &slate,
        "smptebars",
        1,
        &[
            "-mpegts_pmt_start_pid",
            "0x1300",
            "-mpegts_start_pid",
            "0x400",
        ],
    );
    let ports = [free_udp_port(), free_udp_port()];
    let (server, stop, receiver) = start(
        dir.path(),
        &format!(
            "input = \"udp://127.0.0.1:{}\"\nslate = \"{}\"",
            ports[0],
            slate.display()
        ),
    );
    let addr = server.addr;
    let t0 = Instant::now();
    let sender = send(
        std::fs::read(&primary).unwrap(),
        Vec::new(),
        ports,
        10.0,
        2.0..6.0,
    );
    let at = |secs: f64| at(t0, secs);
    at(1.5);
    assert_eq!(active(addr), (0, 0));
    at(2.0);
    assert!(
        wait_until(Duration::from_millis(1500), || active(addr) == (1, 1)),
        "the slate did not go on air: {}",
        api(addr, "GET", "/api/v1/channels/tv", None).text()
    );
    at(5.5);
    let c = api(addr, "GET", "/api/v1/channels/tv", None).json();
    assert_eq!(c["on_air"], true, "{c}");
    let slate_packets = c["input"]["inputs"][1]["packets"].as_u64().unwrap();
    // three seconds of a 1.5 Mbit/s file: about 3,000 packets (it loops three times)
    assert!(slate_packets > 2000, "{slate_packets} slate packets: {c}");
    at(6.0);
    assert!(
        wait_until(Duration::from_millis(1500), || active(addr) == (0, 2)),
        "the primary did not take over from the slate at once"
    );
    let (bytes, switches) = finish(server, stop, receiver, sender);
    assert_eq!(switches.len(), 2, "{switches:#?}");
    assert!(switches[0].contains("the slate"), "{}", switches[0]);

    // the slate looped about three times: a new time base each time, counters continuous;
    // 10 s at 25 fps, less the start
    check_output(dir.path(), &bytes, &[0x1300, 0x400, 0x401], 8, 200);
}

/// The backup comes over SRT (castmux listens; `srt-live-transmit`, Debian srt-tools,
/// carries the backup's UDP to it): the data plane waits on the SRT input's eventfd like
/// on a socket, and the switch and return behave as with UDP.
#[test]
fn an_srt_backup_takes_over_and_gives_back() {
    let dir = tmp();
    let primary = dir.path().join("primary.ts");
    let backup = dir.path().join("backup.ts");
    make_input(&primary, "testsrc", &[]);
    make_input(
        &backup,
        "testsrc2",
        &[
            "-mpegts_pmt_start_pid",
            "0x1200",
            "-mpegts_start_pid",
            "0x300",
        ],
    );
    // the primary's port, and the UDP port srt-live-transmit takes the backup on
    let ports = [free_udp_port(), free_udp_port()];
    let srt_port = free_udp_port();
    let (server, stop, receiver) = start(
        dir.path(),
        &format!(
            "input = \"udp://127.0.0.1:{}\"\n\
             backup = [\"srt://127.0.0.1:{srt_port}?mode=listener\"]\nbackup_return_delay = \"2s\"",
            ports[0]
        ),
    );
    let addr = server.addr;
    let mut relay = Command::new("srt-live-transmit")
        .args([
            "-q",
            &format!("udp://:{}", ports[1]),
            &format!("srt://127.0.0.1:{srt_port}"),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("srt-live-transmit is required: apt-get install srt-tools");
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let sender = send(
        std::fs::read(&primary).unwrap(),
        std::fs::read(&backup).unwrap(),
        ports,
        10.0,
        3.0..6.0,
    );
    let at = |secs: f64| at(t0, secs);
    at(2.5);
    let c = api(addr, "GET", "/api/v1/channels/tv", None).json();
    assert_eq!(active(addr), (0, 0), "{c}");
    assert_eq!(
        c["input"]["inputs"][1]["on_air"], true,
        "the SRT backup is judged: {c}"
    );
    at(3.0);
    assert!(
        wait_until(Duration::from_millis(1500), || active(addr) == (1, 1)),
        "the SRT backup did not take over: {}",
        api(addr, "GET", "/api/v1/channels/tv", None).text()
    );
    at(6.0);
    assert!(
        wait_until(Duration::from_millis(3500), || active(addr) == (0, 2)),
        "the primary did not take over again"
    );
    let (bytes, switches) = finish(server, stop, receiver, sender);
    let _ = relay.kill();
    let _ = relay.wait();
    assert_eq!(switches.len(), 2, "{switches:#?}");
    check_output(dir.path(), &bytes, &[0x1200, 0x300, 0x301], 2, 200);
}
