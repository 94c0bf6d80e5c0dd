//! A head-end that heals itself, with real processes: a backup ECMG takes over from a
//! killed primary and the primary comes back; a live channel starts with its ECMG down and
//! goes on air when it comes up, never clear before; `--cas-policy any` keeps the keys
//! rotating when one CAS dies; `castmux headend` restarts a channel whose store is missing
//! until it is there, applies a reloaded file (SIGHUP) without touching the unchanged
//! channel, refuses a bad one, and speaks sd_notify (READY, WATCHDOG).

mod cli_support;
mod head_support;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cli_support::gen::{pat_sections, pmt_section, Es, Writer};
use cli_support::*;
use head_support::*;

/// The ES packets of the sample, in order.
fn sample_es() -> Vec<Packet> {
    let input = packets(&sample("spts.ts"));
    let es: BTreeSet<u16> = psi(&input).es.keys().copied().collect();
    on_pids(&input, &es)
}

/// Descramble `scrambled` with `h`'s card: no packet without its key, and the ES packets
/// that came out are the sample's, in order (a run that held some back gives fewer).
fn descrambled_es(h: &Head, scrambled: &std::path::Path) -> (serde_json::Value, usize) {
    let clear = h.path("clear.ts");
    let stats = h.ok(&[
        "descramble",
        "--card",
        s(&h.card),
        "-i",
        s(scrambled),
        "-o",
        s(&clear),
        "--stats",
    ]);
    let want = sample_es();
    let es: BTreeSet<u16> = want.iter().map(pid).collect();
    let got = on_pids(&packets(&clear), &es);
    // every packet out is the next of the sample's from where it left off
    let mut at = 0;
    for (n, g) in got.iter().enumerate() {
        match want[at..].iter().position(|w| w == g) {
            Some(k) => at += k + 1,
            None => panic!(
                "descrambled ES packet {n} of {} is not the sample's: {stats}",
                got.len()
            ),
        }
    }
    (json(&stats), got.len())
}

/// `--ecmg PRIMARY,BACKUP`: the primary killed 3 s in, the backup carries on with no key
/// switch held; the primary back 3 s later takes the link back.
#[test]
fn a_backup_ecmg_takes_over_and_the_primary_comes_back() {
    let h = Head::new();
    let (primary, primary_addr) = h.ecmg("127.0.0.1:0");
    let (_backup, backup_addr) = h.ecmg("127.0.0.1:0");
    let out = h.path("out.ts");
    let list = format!("{primary_addr},{backup_addr}");
    let mut scr = h.spawn(&ecmg_scramble_args(s(&out), &list, &[]), true);
    let data = std::fs::read(sample("spts.ts")).unwrap();
    let mut primary = Some(primary);
    let mut again = None;
    feed_paced(scr.stdin(), &data, Duration::from_secs(16), |t| {
        if t >= Duration::from_secs(3) {
            primary.take();
        }
        if t >= Duration::from_secs(6) && again.is_none() {
            again = Some(h.ecmg(&primary_addr).0);
        }
    });
    let (stats, log) = scr.finish();
    drop(again);
    let stream = json(&stats)["stream"].clone();
    assert!(
        log.contains("the next ECMG of the list takes over"),
        "{log}"
    );
    assert!(log.contains("the primary ECMG answers again"), "{log}");
    assert!(log.contains("failovers=1"), "{log}");
    assert!(log.contains("returns=1"), "{log}");
    // no key switch missed: every one on time, whoever made the ECM
    assert_eq!(stream["degraded_holds"].as_u64(), Some(0), "{stream}");
    assert!(stream["key_switches"].as_u64().unwrap() >= 12, "{stream}");
    let pkts = packets(&out);
    assert!(assert_no_clear_es(&pkts) > 1000);
    let player = check_descrambles(&h, &out);
    assert_eq!(player["no_key"].as_u64(), Some(0), "{player}");
}

/// The ECMG is down when the live channel starts and comes up 4 s later: the channel
/// starts anyway, holds its scrambled services (nothing clear, nothing without its ECM),
/// and goes on air by itself once the link is up.
#[test]
fn a_live_channel_starts_with_its_ecmg_down_and_goes_on_air_when_it_comes_up() {
    let h = Head::new();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let out = h.path("out.ts");
    let mut scr = h.spawn(&ecmg_scramble_args(s(&out), &addr, &[]), true);
    let data = std::fs::read(sample("spts.ts")).unwrap();
    let mut ecmg = None;
    feed_paced(scr.stdin(), &data, Duration::from_secs(14), |t| {
        if t >= Duration::from_secs(4) && ecmg.is_none() {
            ecmg = Some(h.ecmg(&addr).0);
        }
    });
    let (stats, log) = scr.finish();
    drop(ecmg);
    let stream = json(&stats)["stream"].clone();
    assert!(
        log.contains("ECMG not up: the channel starts without it"),
        "{log}"
    );
    assert!(
        stream["held_before_ecm"].as_u64().unwrap() > 100,
        "nothing held while the ECMG was down: {stream}"
    );
    assert!(stream["key_switches"].as_u64().unwrap() >= 3, "{stream}");
    let pkts = packets(&out);
    assert_no_clear_es(&pkts);
    let (player, es_out) = descrambled_es(&h, &out);
    assert_eq!(player["no_key"].as_u64(), Some(0), "{player}");
    let all = sample_es().len();
    assert!(
        es_out > all / 4 && es_out < all,
        "{es_out} of {all} ES packets on air: {stream}"
    );
}

/// The built-in CAS and an external ECMG on one service; the ECMG dies 2 s in. With
/// `--cas-policy any` the keys keep rotating under the built-in CAS's ECMs and its card
/// opens every packet; the dead CAS's switches are counted.
#[test]
fn cas_policy_any_keeps_the_keys_rotating_when_one_cas_dies() {
    let a = Head::new();
    let b = Head::with_ca_system_id("0x0B00");
    let (ecmg_b, addr_b) = b.ecmg("127.0.0.1:0");
    let out = a.path("out.ts");
    let mut scr = a.spawn(
        &[
            "scramble",
            "-i",
            "-",
            "-o",
            s(&out),
            "--cas",
            "builtin",
            "--access-criteria",
            "00000001",
            "--ecmg",
            &addr_b,
            "--super-cas-id",
            "0B000000",
            "--cas-policy",
            "any",
            "--crypto-period",
            "1s",
            "--wall-clock",
            "--stats",
        ],
        true,
    );
    let data = std::fs::read(sample("spts.ts")).unwrap();
    let mut ecmg_b = Some(ecmg_b);
    feed_paced(scr.stdin(), &data, Duration::from_secs(9), |t| {
        if t >= Duration::from_secs(2) {
            ecmg_b.take();
        }
    });
    let (stats, log) = scr.finish();
    let stream = json(&stats)["stream"].clone();
    assert_eq!(stream["degraded_holds"].as_u64(), Some(0), "{stream}");
    assert!(stream["key_switches"].as_u64().unwrap() >= 7, "{stream}");
    assert!(
        stream["lagging_cas_switches"].as_u64().unwrap() >= 4,
        "{stream}"
    );
    assert!(log.contains("CAS policy any"), "{log}");
    let pkts = packets(&out);
    assert!(assert_no_clear_es(&pkts) > 1000);
    let player = check_descrambles(&a, &out);
    assert_eq!(player["no_key"].as_u64(), Some(0), "{player}");
}

const VIDEO: u16 = 0x100;
const AUDIO: u16 = 0x101;
/// Datagrams a second per channel (7 packets each: about 2 Mbit/s).
const RATE: u64 = 200;

/// A channel's input: PAT and PMT every 40 packets, video and audio, continuous CCs, cut
/// into 7-packet datagrams; `secs` seconds of it at [`RATE`].
fn stream(seed: u8, secs: u64) -> Vec<Vec<u8>> {
    let n = (RATE * secs) as usize;
    let pat = &pat_sections(1, 0, &[(1, 0x1000)], 64)[0];
    let pmt = pmt_section(1, 0, VIDEO, &[Es::new(0x1B, VIDEO), Es::new(0x0F, AUDIO)]);
    let mut w = Writer::new();
    let mut k = 0;
    while w.packets.len() < n * 7 {
        if k % 40 == 0 {
            w.section(0, pat);
            w.section(0x1000, &pmt);
        }
        let p = if k % 4 == 3 { AUDIO } else { VIDEO };
        w.es(p, k % 25 == 0, seed.wrapping_mul(37) ^ (k as u8));
        k += 1;
    }
    w.packets.truncate(n * 7);
    w.packets
        .chunks(7)
        .map(|d| d.iter().flat_map(|p| p.iter().copied()).collect())
        .collect()
}

/// What a receiver got: datagrams with their arrival times.
type Received = Vec<(Instant, Vec<u8>)>;

fn receive(sock: UdpSocket, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Received> {
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = sock.recv(&mut buf) {
                got.push((Instant::now(), buf[..n].to_vec()));
            }
        }
        got
    })
}

fn channel_toml(name: &str, input: u16, output: u16, extra: &str) -> String {
    format!(
        "[[channel]]\nname = \"{name}\"\ninput = \"udp://127.0.0.1:{input}\"\n\
         output = \"udp://127.0.0.1:{output}\"\ncrypto_period = \"1s\"\n{extra}\n"
    )
}

/// `castmux headend` under a NOTIFY_SOCKET with a watchdog. Channel "card" needs the
/// store, which is not there at start: it fails, is restarted with backoff, and goes on
/// air once the store exists. Then SIGHUP: "card" removed, "news" added, "sport" (fixed
/// CW) untouched, whose output never pauses over 50 ms and never loses a CC; a bad file
/// is refused and changes nothing.
#[test]
fn headend_restarts_a_channel_reloads_its_file_and_notifies_systemd() {
    let dir = tmp();
    let db = dir.path().join("later.db");
    let cfg = dir.path().join("headend.toml");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();

    let names = ["sport", "card", "news"];
    let ins: Vec<u16> = names.iter().map(|_| free_udp_port()).collect();
    let outs: Vec<UdpSocket> = names
        .iter()
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
            s
        })
        .collect();
    let out_port = |i: usize| outs[i].local_addr().unwrap().port();
    let sport = channel_toml(
        "sport",
        ins[0],
        out_port(0),
        "cw = \"11223366445566EF:0102030609080716\"",
    );
    let card = channel_toml(
        "card",
        ins[1],
        out_port(1),
        "cas = \"builtin\"\npackages = [\"sport\"]",
    );
    let news = channel_toml(
        "news",
        ins[2],
        out_port(2),
        "cw = \"A1A2A3E6B1B2B3E6:C1C2C3E6D1D2D3E6\"",
    );
    std::fs::write(&cfg, format!("{sport}{card}")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let receivers: Vec<_> = outs
        .into_iter()
        .map(|s| receive(s, Arc::clone(&stop)))
        .collect();
    let mut proc = {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_castmux"))
            .arg("--db")
            .arg(&db)
            .env_remove("CASTMUX_DB")
            .args(["headend", "--workers", "1", "--config"])
            .arg(&cfg)
            .env("CASTMUX_LOG", "info")
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "400000")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Proc::from_child(child)
    };
    proc.wait_for("headend: running");

    // the inputs, paced; "news" only matters once it is added
    let secs = 14;
    let streams: Vec<Vec<Vec<u8>>> = (0..names.len())
        .map(|i| stream(i as u8 + 1, secs))
        .collect();
    let sender = {
        let ins = ins.clone();
        std::thread::spawn(move || {
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let start = Instant::now();
            for r in 0..streams[0].len() {
                let due = start + Duration::from_micros(r as u64 * 1_000_000 / RATE);
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                for (st, port) in streams.iter().zip(&ins) {
                    let _ = tx.send_to(&st[r], ("127.0.0.1", *port));
                }
            }
        })
    };

    // READY, then watchdog pings for as long as it runs (read on a thread of its own)
    let notes = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut notes = Vec::new();
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = notify.recv(&mut buf) {
                    notes.push((
                        Instant::now(),
                        String::from_utf8_lossy(&buf[..n]).into_owned(),
                    ));
                }
            }
            notes
        })
    };

    // "card" fails while the store is missing, and is restarted
    proc.wait_for("channel down; it restarts after the backoff");
    proc.wait_for("channel restarting");
    for args in [
        vec!["init"],
        vec!["package", "add", "sport"],
        vec!["card", "add", "--packages", "sport"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_castmux"))
            .arg("--db")
            .arg(&db)
            .args(&args)
            .env_remove("CASTMUX_DB")
            .env("CASTMUX_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    proc.wait_for("built-in CAS");
    std::thread::sleep(Duration::from_secs(2));

    // a bad file: refused, nothing changes
    std::fs::write(
        &cfg,
        format!("{sport}{card}[[channel]]\nname = \"broken\"\n"),
    )
    .unwrap();
    let hup = |p: &Proc| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap()
    };
    hup(&proc);
    proc.wait_for("reload refused");
    // the real change
    std::fs::write(&cfg, format!("{sport}{news}")).unwrap();
    let reload_at = Instant::now();
    hup(&proc);
    let line = proc.wait_for("headend: reloaded");
    assert!(
        line.contains("added=1") && line.contains("removed=1"),
        "{line}"
    );
    sender.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let got: Vec<Received> = receivers.into_iter().map(|r| r.join().unwrap()).collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(proc.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (_, log) = proc.finish();
    assert!(log.contains("channel removed"), "{log}");
    let notes = notes.join().unwrap();
    assert!(notes[0].1.contains("READY=1"), "{notes:?}");
    // WATCHDOG_USEC=400000: a ping every 200 ms, never a gap near the 400 ms timeout
    let pings: Vec<Instant> = notes
        .iter()
        .filter(|n| n.1.contains("WATCHDOG=1"))
        .map(|n| n.0)
        .collect();
    assert!(pings.len() > 30, "{} pings", pings.len());
    let worst = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        worst < Duration::from_millis(350),
        "a watchdog gap of {worst:?}"
    );

    // sport: never a pause over 50 ms from start to end, never a CC lost
    let sport = &got[0];
    assert!(
        sport.len() as u64 > RATE * secs * 9 / 10,
        "{} datagrams",
        sport.len()
    );
    let worst = sport
        .windows(2)
        .map(|w| w[1].0.duration_since(w[0].0))
        .max()
        .unwrap();
    assert!(worst < Duration::from_millis(50), "a pause of {worst:?}");
    let bytes: Vec<u8> = sport.iter().flat_map(|d| d.1.iter().copied()).collect();
    let cc = cc_errors(&packets_of(&bytes));
    assert!(cc.values().all(|n| *n == 0), "CC errors {cc:?}");
    // card: on air for a while (after the store came), then gone at the reload
    let card = &got[1];
    assert!(!card.is_empty(), "the restarted channel never went on air");
    let last_card = card.last().unwrap().0;
    assert!(last_card < reload_at + Duration::from_millis(500));
    let es = on_pids(
        &packets_of(&card.iter().flat_map(|d| d.1.clone()).collect::<Vec<_>>()),
        &[VIDEO, AUDIO].into(),
    );
    assert!(
        es.iter().filter(|p| has_payload(p)).all(|p| tsc(p) != 0),
        "clear packets on card"
    );
    // news: on air after the reload
    let news = &got[2];
    assert!(
        news.iter().any(|d| d.0 > reload_at),
        "the added channel never went on air"
    );
    assert!(
        news.first().is_some_and(|d| d.0 >= reload_at),
        "news before it was added"
    );
}
