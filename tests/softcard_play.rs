//! `castmux softcard play` end to end with the real binaries (issue 6's proof): a card
//! store, `scramble --cas builtin`, `softcard serve` as a separate process, and `softcard
//! play` taking CWs from it over newcamd (or from a local card.json) gives back every ES
//! packet byte for byte, to a file, to stdout and to a UDP socket (what VLC reads); ffmpeg
//! decodes the result with no error and its video frames hash as the clear source's; a
//! card that is not entitled descrambles nothing and the refusals are counted.
//!
//! Live inputs are fed through stdin at about real time (the sample is 5 s), as a receiver
//! would get them: a newcamd answer takes a round trip, so a file read at full speed would
//! be over before the CWs come back.

mod cli_support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cli_support::*;

const DES_KEY: &str = "0102030405060708091011121314";
/// How long the sample plays.
const SAMPLE_SECS: f64 = 5.0;

/// A store with `news` and `sport`, card A entitled to news and B to sport, both exported,
/// and the sample scrambled for news with 1 s crypto periods.
struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    db: PathBuf,
    card_a: PathBuf,
    card_b: PathBuf,
    scrambled: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tmp();
    let d = dir.path().to_path_buf();
    let db = d.join("cas.db");
    let db_ok = |args: &[&str]| {
        let mut v = vec!["--db", s(&db)];
        v.extend_from_slice(args);
        ok(&v)
    };
    db_ok(&["init"]);
    db_ok(&["package", "add", "news"]);
    db_ok(&["package", "add", "sport"]);
    for (serial, pkg) in [("2100000001", "news"), ("2100000002", "sport")] {
        db_ok(&[
            "card",
            "add",
            "--serial",
            serial,
            "--packages",
            pkg,
            "--days",
            "30",
        ]);
    }
    let card_a = d.join("a.json");
    let card_b = d.join("b.json");
    db_ok(&["card", "export-key", "2100000001", "-o", s(&card_a)]);
    db_ok(&["card", "export-key", "2100000002", "-o", s(&card_b)]);
    let scrambled = d.join("out.ts");
    scramble_news(&db, &scrambled);
    Fixture {
        _dir: dir,
        dir: d,
        db,
        card_a,
        card_b,
        scrambled,
    }
}

/// Scramble the sample for `news` with 1 s crypto periods, ECMs from the store in `db`.
fn scramble_news(db: &Path, out: &Path) {
    ok(&[
        "--db",
        s(db),
        "scramble",
        "-i",
        s(&sample("spts.ts")),
        "-o",
        s(out),
        "--cas",
        "builtin",
        "--packages",
        "news",
        "--crypto-period",
        "1s",
    ]);
}

fn es_pids() -> BTreeSet<u16> {
    BTreeSet::from([0x100, 0x101])
}

/// The clear source's ES packets.
fn want_es() -> Vec<Packet> {
    on_pids(&packets(&sample("spts.ts")), &es_pids())
}

fn is_scrambled_payload(p: &Packet) -> bool {
    tsc(p) != 0 && has_payload(p)
}

/// `castmux softcard serve` on an ephemeral port; its address comes from its log.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(card: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args(["softcard", "serve", "--card", s(card)])
        .args(["--listen", "127.0.0.1:0", "--des-key", DES_KEY])
        .args(["--user", "u:p", "--read-only-card"])
        .env("CASTMUX_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start castmux softcard serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // keep draining so the server never blocks on a full pipe
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("castmux softcard serve did not report its address");
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    Server { child, addr }
}

/// Where `softcard play` takes its CWs from.
enum Cws<'a> {
    Local(&'a Path),
    Newcamd(SocketAddr),
}

fn play_args(cws: &Cws<'_>, input: &str, output: &str) -> Vec<String> {
    let mut v: Vec<String> = ["softcard", "play", "-i", input, "-o", output, "--stats"]
        .map(String::from)
        .to_vec();
    match cws {
        Cws::Local(card) => v.extend(["--card".into(), s(card).into()]),
        Cws::Newcamd(addr) => v.extend([
            "--newcamd".into(),
            addr.to_string(),
            "--user".into(),
            "u".into(),
            "--password".into(),
            "p".into(),
            "--des-key".into(),
            DES_KEY.into(),
        ]),
    }
    v
}

/// Run `softcard play` on `input` fed through stdin at about real time (the whole sample
/// in [`SAMPLE_SECS`]), as a live source would give it.
fn play_paced(cws: &Cws<'_>, input: &Path, output: &str) -> Output {
    let data = std::fs::read(input).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args(play_args(cws, "-", output))
        .env("CASTMUX_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start castmux softcard play");
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = 7 * 188;
        let n = data.len().div_ceil(chunk);
        let start = Instant::now();
        for (i, c) in data.chunks(chunk).enumerate() {
            if stdin.write_all(c).is_err() {
                return;
            }
            let due = Duration::from_secs_f64(SAMPLE_SECS * (i + 1) as f64 / n as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        // dropping stdin ends the input
    });
    let out = child.wait_with_output().expect("softcard play");
    feeder.join().unwrap();
    out
}

fn play_file(cws: &Cws<'_>, input: &Path, output: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args(play_args(cws, s(input), output))
        .env("CASTMUX_LOG", "warn")
        .output()
        .expect("run castmux softcard play")
}

fn succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stats_of(json: &[u8]) -> serde_json::Value {
    serde_json::from_slice(json).unwrap_or_else(|e| {
        panic!(
            "--stats JSON: {e}: {}",
            String::from_utf8_lossy(json).trim()
        )
    })
}

fn counter(st: &serde_json::Value, name: &str) -> u64 {
    st[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {st}"))
}

/// Every ES packet of `got` is the clear source's, or (before the first CW answer only)
/// still scrambled; returns how many stayed scrambled at the start.
fn assert_es_clear(got: &[Packet], what: &str) -> usize {
    let want = want_es();
    let got = on_pids(got, &es_pids());
    assert_eq!(got.len(), want.len(), "{what}: ES packet count");
    let first = got
        .iter()
        .position(|p| !is_scrambled_payload(p))
        .unwrap_or(got.len());
    let bad = (first..got.len()).filter(|&i| got[i] != want[i]).count();
    assert_eq!(
        bad, 0,
        "{what}: {bad} ES packets differ after the first CW answer (packet {first})"
    );
    first
}

#[test]
fn play_over_newcamd_gives_back_every_es_packet() {
    let f = fixture();
    let srv = serve(&f.card_a);
    let out_path = f.dir.join("newcamd.clear.ts");
    let out = play_paced(&Cws::Newcamd(srv.addr), &f.scrambled, s(&out_path));
    succeeded(&out, "softcard play --newcamd");
    let st = stats_of(&out.stdout);
    assert_eq!(counter(&st, "refusals"), 0, "{st}");
    assert!(counter(&st, "answers") >= 5, "one answer per ECM: {st}");
    assert!(counter(&st, "parity_flips") >= 3, "{st}");
    let got = packets(&out_path);
    // the packets that went by during the first round trip were held back, not lost
    assert_eq!(assert_es_clear(&got, "newcamd"), 0, "{st}");
    assert_eq!(counter(&st, "no_key"), 0, "{st}");
    assert_eq!(counter(&st, "hold_timeouts"), 0, "{st}");
    assert_viewer_sees_the_source(&out_path, "newcamd");
}

#[test]
fn play_with_a_local_card_to_a_file_and_to_stdout() {
    let f = fixture();
    let card = Cws::Local(&f.card_a);
    let file = f.dir.join("local.clear.ts");
    let out = play_file(&card, &f.scrambled, s(&file));
    succeeded(&out, "softcard play --card -o FILE");
    let st = stats_of(&out.stdout);
    assert_eq!(counter(&st, "refusals"), 0, "{st}");
    assert_eq!(counter(&st, "no_key"), 0, "{st}");
    let got = packets(&file);
    assert_eq!(assert_es_clear(&got, "local, file"), 0);

    // stdout: the same bytes; the stats go to stderr so they cannot spoil the stream
    let out = play_file(&card, &f.scrambled, "-");
    succeeded(&out, "softcard play --card -o -");
    assert!(
        out.stdout == std::fs::read(&file).unwrap(),
        "stdout differs"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let json = &err[err.find('{').expect("stats on stderr")..];
    assert_eq!(
        counter(&stats_of(json.as_bytes()), "descrambled"),
        counter(&st, "descrambled")
    );

    // paced stdin in, stdout out: the `... | castmux softcard play -i - -o - | vlc -` case
    let out = play_paced(&card, &f.scrambled, "-");
    succeeded(&out, "softcard play --card -i - -o -");
    assert_eq!(assert_es_clear(&packets_of(&out.stdout), "local, pipe"), 0);
}

fn ffmpeg(args: &[&str]) -> Output {
    Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner"])
        .args(args)
        .output()
        .expect("ffmpeg must be installed for the viewer check (apt-get install ffmpeg)")
}

/// The hash column of ffmpeg's framemd5 of the video frames (none if ffmpeg finds no video).
fn frame_hashes(ts: &Path) -> Vec<String> {
    let out = ffmpeg(&[
        "-v",
        "error",
        "-i",
        s(ts),
        "-map",
        "0:v",
        "-f",
        "framemd5",
        "-",
    ]);
    if !out.status.success() {
        // no decodable video at all (a scrambled stream): no frames
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(',').next().map(|h| h.trim().to_owned()))
        .collect()
}

fn assert_viewer_sees_the_source(ts: &Path, what: &str) {
    let out = ffmpeg(&["-v", "error", "-i", s(ts), "-f", "null", "-"]);
    assert!(out.status.success(), "{what}: ffmpeg failed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim().is_empty(),
        "{what}: ffmpeg decode errors:\n{err}"
    );
    let want = frame_hashes(&sample("spts.ts"));
    assert!(want.len() >= 100, "the source has video frames");
    assert_eq!(frame_hashes(ts), want, "{what}: video frames differ");
}

#[test]
fn a_viewer_decodes_the_played_stream_as_the_clear_source() {
    let f = fixture();
    // the scrambled stream itself does not decode: the check can fail
    assert_ne!(
        frame_hashes(&f.scrambled),
        frame_hashes(&sample("spts.ts")),
        "scrambled video decodes as the source"
    );
    let file = f.dir.join("viewer.ts");
    succeeded(
        &play_file(&Cws::Local(&f.card_a), &f.scrambled, s(&file)),
        "softcard play --card",
    );
    assert_viewer_sees_the_source(&file, "local card");
}

#[test]
fn a_card_not_entitled_over_newcamd_descrambles_nothing() {
    let f = fixture();
    let srv = serve(&f.card_b);
    let out_path = f.dir.join("b.ts");
    let out = play_paced(&Cws::Newcamd(srv.addr), &f.scrambled, s(&out_path));
    // packets left scrambled: the exit status says so
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("were left scrambled") && err.contains("--allow-scrambled"),
        "{err}"
    );
    let st = stats_of(&out.stdout);
    assert_eq!(counter(&st, "descrambled"), 0, "{st}");
    assert_eq!(counter(&st, "answers"), 0, "{st}");
    assert!(counter(&st, "refusals") >= 3, "{st}");
    let why = st["last_refusal"].as_str().unwrap_or_default();
    assert!(why.contains("refused"), "{why}");
    let got = on_pids(&packets(&out_path), &es_pids());
    assert_eq!(got.len(), want_es().len());
    assert!(
        got.iter().all(|p| tsc(p) != 0 || !has_payload(p)),
        "a clear ES packet with a card not entitled"
    );
}

#[test]
fn packets_left_scrambled_fail_the_run_unless_allowed() {
    let f = fixture();
    // descramble --card and softcard play --card share the rule
    for cmd in [&["descramble"][..], &["softcard", "play"]] {
        let out_path = f.dir.join("b-local.ts");
        let mut args: Vec<&str> = cmd.to_vec();
        args.extend([
            "-i",
            s(&f.scrambled),
            "-o",
            s(&out_path),
            "--card",
            s(&f.card_b),
        ]);
        let out = castmux(&args);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("were left scrambled"), "{cmd:?}: {err}");
        assert!(
            err.contains("not entitled"),
            "{cmd:?}: names the refusal: {err}"
        );
        args.push("--allow-scrambled");
        let out = castmux(&args);
        succeeded(&out, "--allow-scrambled");
        // the stream still went out, scrambled, whole
        assert_eq!(packets(&out_path).len(), packets(&f.scrambled).len());
    }
}

#[test]
fn play_over_newcamd_from_a_file_waits_for_every_answer() {
    let f = fixture();
    let srv = serve(&f.card_a);
    let out_path = f.dir.join("newcamd-file.ts");
    // read at full speed: far faster than the round trips to the server
    let out = play_file(&Cws::Newcamd(srv.addr), &f.scrambled, s(&out_path));
    succeeded(&out, "softcard play --newcamd -i FILE");
    let st = stats_of(&out.stdout);
    assert_eq!(counter(&st, "no_key"), 0, "{st}");
    assert_eq!(counter(&st, "answer_timeouts"), 0, "{st}");
    assert!(counter(&st, "answers") >= 5, "{st}");
    assert_eq!(assert_es_clear(&packets(&out_path), "newcamd, file"), 0);
}

/// Put the ECM packets of `old` (an earlier run, other CWs) into `live` after the first
/// parity flip, each where it stood in its own run, with the ECM PID's continuity
/// counters renumbered as a splicer would.
fn splice_old_ecms(live: &[Packet], old: &[Packet]) -> (Vec<Packet>, usize) {
    const ECM_PID: u16 = 0x1FF0;
    let flip = live
        .iter()
        .position(|p| es_pids().contains(&pid(p)) && tsc(p) == 0b11)
        .expect("a second crypto period");
    let mut out = Vec::with_capacity(live.len() + old.len() / 10);
    let mut spliced = 0;
    for (i, p) in live.iter().enumerate() {
        out.push(*p);
        if i > flip && i < old.len() && pid(&old[i]) == ECM_PID {
            out.push(old[i]);
            spliced += 1;
        }
    }
    let mut cc = 0u8;
    for p in out.iter_mut().filter(|p| pid(p) == ECM_PID) {
        p[3] = (p[3] & 0xF0) | cc;
        cc = (cc + 1) & 0x0F;
    }
    (out, spliced)
}

#[test]
fn old_ecms_spliced_into_the_stream_are_refused_and_every_es_packet_comes_back() {
    let f = fixture();
    // the same channel scrambled again (new CWs, ECMs stamped later)
    std::thread::sleep(Duration::from_millis(1100));
    let live_path = f.dir.join("live.ts");
    scramble_news(&f.db, &live_path);
    let (spliced, n) = splice_old_ecms(&packets(&live_path), &packets(&f.scrambled));
    assert!(n >= 20, "{n} old ECM packets spliced in");
    let spliced_path = f.dir.join("spliced.ts");
    std::fs::write(&spliced_path, spliced.as_flattened()).unwrap();

    let local = f.dir.join("spliced.local.ts");
    let out = play_file(&Cws::Local(&f.card_a), &spliced_path, s(&local));
    succeeded(&out, "softcard play --card (spliced)");
    let st = stats_of(&out.stdout);
    assert!(counter(&st, "replays_refused") >= 5, "{st}");
    assert_eq!(
        counter(&st, "replays_refused"),
        counter(&st, "refusals"),
        "{st}"
    );
    assert_eq!(counter(&st, "no_key"), 0, "{st}");
    assert_eq!(assert_es_clear(&packets(&local), "spliced, local card"), 0);

    // the same through a card server: the old ECMs share a service with the live ones
    let srv = serve(&f.card_a);
    let remote = f.dir.join("spliced.newcamd.ts");
    let out = play_file(&Cws::Newcamd(srv.addr), &spliced_path, s(&remote));
    succeeded(&out, "softcard play --newcamd (spliced)");
    let st = stats_of(&out.stdout);
    assert!(counter(&st, "refusals") >= 5, "{st}");
    assert_eq!(counter(&st, "no_key"), 0, "{st}");
    assert_eq!(assert_es_clear(&packets(&remote), "spliced, newcamd"), 0);
}

#[test]
fn full_cw_plays_a_stream_scrambled_with_64_bit_keys() {
    let f = fixture();
    let full = f.dir.join("full.ts");
    ok(&[
        "--db",
        s(&f.db),
        "scramble",
        "-i",
        s(&sample("spts.ts")),
        "-o",
        s(&full),
        "--cas",
        "builtin",
        "--packages",
        "news",
        "--crypto-period",
        "1s",
        "--no-cw-checksum",
    ]);
    let want = want_es();
    let wrong_es = |path: &Path| {
        let got = on_pids(&packets(path), &es_pids());
        assert_eq!(got.len(), want.len());
        got.iter().zip(&want).filter(|(g, w)| g != w).count()
    };
    // by default the CWs are reduced as a CAM does: not this stream's keys
    let reduced = f.dir.join("full.reduced.ts");
    let out = play_file(&Cws::Local(&f.card_a), &full, s(&reduced));
    succeeded(&out, "softcard play (reduced CWs)");
    assert!(
        wrong_es(&reduced) > 1000,
        "reduced CWs descrambled a 64-bit-key stream"
    );
    // --full-cw uses them as the ECMs carry them
    let clear = f.dir.join("full.clear.ts");
    let mut args = play_args(&Cws::Local(&f.card_a), s(&full), s(&clear));
    args.push("--full-cw".into());
    let out = Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args(&args)
        .env("CASTMUX_LOG", "warn")
        .output()
        .unwrap();
    succeeded(&out, "softcard play --full-cw");
    assert_eq!(wrong_es(&clear), 0);
}

#[test]
fn play_to_udp_as_vlc_gets_it() {
    let f = fixture();
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    // room for the whole 1.1 MB sample even if this thread is slow to be scheduled
    let _ = sock.set_recv_buffer_size(8 << 20);
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let sock: UdpSocket = sock.into();
    let port = sock.local_addr().unwrap().port();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut data = Vec::new();
        let mut buf = [0u8; 65536];
        let mut datagrams = 0;
        let mut bad_sizes = 0;
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    datagrams += 1;
                    if n % 188 != 0 {
                        bad_sizes += 1;
                    }
                    data.extend_from_slice(&buf[..n]);
                }
                Err(_) if rx.try_recv().is_ok() => break,
                Err(_) => {}
            }
        }
        (data, datagrams, bad_sizes)
    });
    let out = play_paced(
        &Cws::Local(&f.card_a),
        &f.scrambled,
        &format!("udp://127.0.0.1:{port}"),
    );
    succeeded(&out, "softcard play -o udp://");
    // the last datagrams are in flight for a moment at most
    std::thread::sleep(Duration::from_millis(500));
    tx.send(()).unwrap();
    let (data, datagrams, bad_sizes) = reader.join().unwrap();
    assert_eq!(bad_sizes, 0, "datagrams of whole packets");
    assert!(datagrams > 100, "{datagrams} datagrams");
    let got = packets_of(&data);
    assert_eq!(got.len(), packets(&f.scrambled).len(), "every packet sent");
    assert_eq!(assert_es_clear(&got, "udp"), 0);
}

/// The start-up hold in the library, with a card that answers only when told: answered
/// within the first crypto period, every held ES packet comes back; answered after a
/// period change, the earlier period's packets stay scrambled (its key is not in the
/// answer) and nothing is ever sent wrongly descrambled.
mod startup_hold {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use castmux::cas::{
        derive_card_key, AccessCriteria, BuiltinEcmg, CardFile, CardSerial, Entitlements, Key128,
        PackageBit, ServiceKey, ServiceKeyRing, CARD_FILE_FORMAT,
    };
    use castmux::io::PacketBatch;
    use castmux::scramble::{CaSystem, KeyMode, PacketStage, ScrambleConfig, Scrambler};
    use castmux::softcard::player::{CardPlayer, CwAnswer, CwSource, LocalCard};
    use castmux::softcard::SoftCard;
    use castmux::ts::Pid;

    use super::*;

    const CAID: u16 = castmux::scramble::config::DEFAULT_CA_SYSTEM_ID;

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn keys() -> Vec<ServiceKey> {
        vec![ServiceKey {
            bit: PackageBit::new(0).unwrap(),
            version: 1,
            key: Key128::from_bytes([0x42; 16]),
        }]
    }

    fn scrambled() -> Vec<Packet> {
        let ring = ServiceKeyRing::from_keys(keys()).shared();
        let ecmg = BuiltinEcmg::new(ring, AccessCriteria(1), CAID);
        let config = ScrambleConfig {
            keys: KeyMode::Rotating,
            crypto_period: Duration::from_secs(1),
            ca_systems: vec![CaSystem::new(CAID, Pid::new(0x1FF0))],
            ..ScrambleConfig::default()
        };
        let mut s = Scrambler::new(config, None, vec![Box::new(ecmg)]).unwrap();
        let mut out = Vec::new();
        for batch in packets(&sample("spts.ts")).chunks(64) {
            out.extend(packets_of(s.process(batch).unwrap()));
        }
        out
    }

    /// A local card whose answers wait until `open` is set (a slow server).
    struct Gated {
        card: LocalCard,
        open: Arc<AtomicBool>,
        waiting: Vec<CwAnswer>,
    }

    impl CwSource for Gated {
        fn submit_ecm(&mut self, section: &[u8], now: i64) -> bool {
            let taken = self.card.submit_ecm(section, now);
            while let Some(a) = self.card.poll() {
                self.waiting.push(a);
            }
            taken
        }
        fn submit_emm(&mut self, section: &[u8], now: i64) {
            self.card.submit_emm(section, now);
        }
        fn poll(&mut self) -> Option<CwAnswer> {
            if self.open.load(Ordering::Relaxed) && !self.waiting.is_empty() {
                Some(self.waiting.remove(0))
            } else {
                None
            }
        }
    }

    /// Play `input` in batches of 16 packets; the card answers from packet `open_at` on.
    fn play_gated(input: &[Packet], open_at: usize) -> (Vec<Packet>, serde_json::Value) {
        let serial = CardSerial(2_100_000_001);
        let card = SoftCard::from_card_file(CardFile {
            format: CARD_FILE_FORMAT,
            serial,
            ca_system_id: CAID,
            card_key: derive_card_key(&Key128::from_bytes([9; 16]), serial),
            entitlements: Entitlements {
                access: AccessCriteria(1),
                start: now() - 3600,
                finish: now() + 86_400,
                pair: 0,
                enabled: true,
                events: vec![],
            },
            service_keys: keys(),
            issued_at: now() - 3600,
        })
        .unwrap();
        let open = Arc::new(AtomicBool::new(false));
        let source = Gated {
            card: LocalCard::new(card, None),
            open: open.clone(),
            waiting: Vec::new(),
        };
        let mut p = CardPlayer::new(csa::Algorithm::Csa2, CAID, Box::new(source)).unwrap();
        let mut out = Vec::new();
        let mut batch = PacketBatch::with_capacity(16);
        for (i, chunk) in input.chunks(16).enumerate() {
            if i * 16 >= open_at {
                open.store(true, Ordering::Relaxed);
            }
            batch.clear();
            batch.extend_from_bytes(chunk.as_flattened());
            p.process_batch(&mut batch, &mut out).unwrap();
        }
        p.finish(&mut out);
        let st = serde_json::to_value(p.counters()).unwrap();
        (packets_of(&out), st)
    }

    #[test]
    fn held_packets_come_back_once_the_card_answers() {
        let input = scrambled();
        let es = es_pids();
        let want = want_es();
        // scrambled ES packets precede the answer by ~0.3 s of stream
        let (got, st) = play_gated(&input, input.len() / 16);
        assert_eq!(got.len(), input.len(), "every packet out, in order");
        assert!(counter(&st, "held_descrambled") > 100, "{st}");
        assert_eq!(counter(&st, "no_key"), 0, "{st}");
        assert!(on_pids(&got, &es) == want, "held ES packets differ");

        // answered after the first period change: period 0 stays scrambled, no garbage
        let flip = input
            .iter()
            .position(|p| es.contains(&pid(p)) && tsc(p) == 0b11)
            .expect("a second period");
        let (got, st) = play_gated(&input, flip + 160);
        assert_eq!(got.len(), input.len());
        assert!(counter(&st, "held_descrambled") > 0, "{st}");
        let got = on_pids(&got, &es);
        let still = got.iter().filter(|p| is_scrambled_payload(p)).count();
        assert!(still > 0 && counter(&st, "no_key") == still as u64, "{st}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                is_scrambled_payload(g) || g == w,
                "ES packet {i} sent wrongly descrambled"
            );
        }
        // the input ended during the hold: what was held still goes out
        let (got, st) = play_gated(&input[..400], usize::MAX);
        assert_eq!(got.len(), 400, "{st}");
    }
}
