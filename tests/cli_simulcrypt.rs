//! SimulCrypt on the command line, real processes and sockets: `castmux ecmg` serves the card
//! store's ECMs to `castmux scramble --ecmg`, `castmux emmg` feeds the scrambler's
//! `--emmg-listen` port, and `castmux descramble --card` (a card exported from the same store)
//! gives back every ES packet. Fault: the ECMG killed mid-run and restarted. What an ECMG
//! says is passed on: a Super_CAS_id refused at setup, an ECMG that speaks only version 2,
//! an ECMG refusing CW_provisions (a file run stops with its message). `castmux ecmg` alone
//! rotates keys on the store's schedule.

mod cli_support;
mod head_support;
mod simulcrypt_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use castmux::scramble::Cw;
use castmux::simulcrypt::{CpCw, CwProvision, EcmgMessage};
use cli_support::*;
use head_support::*;
use simulcrypt_support::Raw;

const ECM_PID: u16 = 0x1FF0;
const EMM_PID: u16 = 0x1FF1;

fn round_trip(version: &str) {
    let h = Head::new();
    let (_ecmg, ecmg_addr) = h.ecmg("127.0.0.1:0");
    let out = h.path("out.ts");
    let mut scr = h.spawn(
        &[
            "scramble",
            "-i",
            "-",
            "-o",
            s(&out),
            "--ecmg",
            &ecmg_addr,
            "--super-cas-id",
            "4AE10000",
            "--access-criteria",
            "00000001",
            "--ecmg-version",
            version,
            "--crypto-period",
            "1s",
            "--emm-pid",
            "0x1FF1",
            "--emmg-listen",
            "127.0.0.1:0",
            "--stats",
        ],
        true,
    );
    let line = scr.wait_for("EMMG<->MUX listening");
    let mux = field(&line, "listen=");
    let mut emmg = h.spawn(
        &[
            "emmg",
            "--mux",
            &mux,
            "--bandwidth",
            "200k",
            "--emmg-version",
            version,
        ],
        false,
    );
    emmg.wait_for("EMMG stream set up");
    let data = std::fs::read(sample("spts.ts")).unwrap();
    feed_paced(scr.stdin(), &data, Duration::from_secs(3), |_| {});
    let (stats, log) = scr.finish();
    let stats = json(&stats);
    let stream = &stats["stream"];

    let pkts = packets(&out);
    assert!(assert_no_clear_es(&pkts) > 1000);
    assert!(stream["key_switches"].as_u64().unwrap() >= 2, "{stream}");
    assert!(stream["ecms_generated"].as_u64().unwrap() >= 3, "{stream}");
    assert_eq!(stream["ecm_failures"].as_u64(), Some(0), "{stream}");
    assert!(log.contains("setups=1"), "{log}");
    // PMT: the CA_system_ID is the top of the Super_CAS_id; CAT names the EMM PID
    let p = psi(&pkts);
    assert_eq!(p.program_ca.get(&1), Some(&vec![(0x4AE1, ECM_PID)]));
    assert_eq!(p.cat_ca, vec![(0x4AE1, EMM_PID)]);
    let emm_packets = pkts.iter().filter(|p| pid(p) == EMM_PID).count();
    assert!(emm_packets > 0, "no EMM on air; {stream}");
    assert!(stream["emm"]["taken"].as_u64().unwrap() > 0, "{stream}");

    let player = check_descrambles(&h, &out);
    assert_eq!(player["no_key"].as_u64(), Some(0), "{player}");
    assert_eq!(player["refusals"].as_u64(), Some(0), "{player}");
    assert!(
        player["emms"].as_u64().unwrap() > 0,
        "the card saw no EMM: {player}"
    );
}

#[test]
fn ecmg_emmg_scramble_descramble_v3() {
    round_trip("3");
}

#[test]
fn ecmg_emmg_scramble_descramble_v2() {
    round_trip("2");
}

/// The ECMG dies 2.5 s into a 12 s live run and comes back 2.5 s later on the same port:
/// the key is held (counted), nothing goes out in clear, and after the restart the key
/// switches again under new ECMs that the card opens.
#[test]
fn ecmg_killed_and_restarted_mid_run() {
    let h = Head::new();
    let (ecmg, addr) = h.ecmg("127.0.0.1:0");
    let out = h.path("out.ts");
    let mut scr = h.spawn(&ecmg_scramble_args(s(&out), &addr, &[]), true);
    let data = std::fs::read(sample("spts.ts")).unwrap();
    let mut first = Some(ecmg);
    let mut second = None;
    feed_paced(scr.stdin(), &data, Duration::from_secs(12), |t| {
        if t >= Duration::from_millis(2500) {
            // dropping the process kills it
            first.take();
        }
        if t >= Duration::from_secs(5) && second.is_none() {
            second = Some(h.ecmg(&addr).0);
        }
    });
    let (stats, log) = scr.finish();
    drop(second);
    let stream = json(&stats)["stream"].clone();
    assert!(
        stream["degraded_holds"].as_u64().unwrap() > 0,
        "no hold counted: {stream}"
    );
    // the outage is one episode, entered and left, each logged once
    assert!(
        stream["degraded_episodes"].as_u64().unwrap() >= 1,
        "no episode counted: {stream}"
    );
    assert!(log.contains("degraded mode entered"), "{log}");
    assert!(log.contains("degraded mode left"), "{log}");
    assert!(log.contains("setups=2"), "no reconnection: {log}");

    let pkts = packets(&out);
    assert_no_clear_es(&pkts);
    // parity runs of the ES packets (input paced evenly, so length ~ time): the hold is
    // the longest run, and the key switched at least twice after it
    let av = av_pids(&psi(&packets(&sample("spts.ts"))));
    let mut runs: Vec<(u8, usize)> = Vec::new();
    for p in on_pids(&pkts, &av).iter().filter(|p| has_payload(p)) {
        match runs.last_mut() {
            Some((t, n)) if *t == tsc(p) => *n += 1,
            _ => runs.push((tsc(p), 1)),
        }
    }
    let longest = (0..runs.len()).max_by_key(|i| runs[*i].1).unwrap();
    assert!(
        runs.len() - 1 - longest >= 2,
        "ECMs did not resume after the outage: runs {runs:?}; {stream}"
    );
    let player = check_descrambles(&h, &out);
    assert_eq!(player["no_key"].as_u64(), Some(0), "{player}");
}

/// Real SimulCrypt: the built-in CAS and two external ECMGs (other stores, other
/// CA_system_IDs, one speaking version 2) on one service at once. One CW per period goes to
/// all three; the PMT names three ECM PIDs; a card of each CAS gives back every ES packet.
#[test]
fn three_cas_on_one_service() {
    let a = Head::new();
    let b = Head::with_ca_system_id("0x0B00");
    let c = Head::with_ca_system_id("0x0B01");
    let (_ecmg_b, addr_b) = b.ecmg("127.0.0.1:0");
    let (_ecmg_c, addr_c) = c.ecmg("127.0.0.1:0");
    let out = a.path("out.ts");
    let ecmg_c = format!("{addr_c}?super_cas_id=0B010000&ecm_pid=0x1FF7&version=2&channel_id=9");
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
            "--ecmg",
            &ecmg_c,
            "--crypto-period",
            "1s",
            "--stats",
        ],
        true,
    );
    let data = std::fs::read(sample("spts.ts")).unwrap();
    feed_paced(scr.stdin(), &data, Duration::from_secs(3), |_| {});
    let (stats, log) = scr.finish();
    let stream = json(&stats)["stream"].clone();
    assert!(stream["key_switches"].as_u64().unwrap() >= 2, "{stream}");
    assert_eq!(stream["ecm_failures"].as_u64(), Some(0), "{stream}");
    assert_eq!(stream["degraded_holds"].as_u64(), Some(0), "{stream}");
    assert_eq!(log.matches("simulcrypt ECMG link").count(), 2, "{log}");

    let pkts = packets(&out);
    assert!(assert_no_clear_es(&pkts) > 1000);
    let p = psi(&pkts);
    // builtin on --ecm-pid's default, B on the next free PID (the EMM PID 0x1FF1 skipped),
    // C where its query put it
    assert_eq!(
        p.program_ca.get(&1),
        Some(&vec![(0x4AE1, ECM_PID), (0x0B00, 0x1FF2), (0x0B01, 0x1FF7)]),
        "{stream}"
    );
    assert_eq!(p.cat_ca, vec![(0x4AE1, EMM_PID)]);
    for ecm_pid in [ECM_PID, 0x1FF2, 0x1FF7] {
        assert!(
            pkts.iter().any(|pk| pid(pk) == ecm_pid),
            "no ECM on {ecm_pid:#x}"
        );
    }
    for (name, h) in [("a", &a), ("b", &b), ("c", &c)] {
        let clear = a.path(&format!("clear-{name}.ts"));
        let player = check_descrambles_with(h, &h.card, &out, &clear);
        assert_eq!(player["no_key"].as_u64(), Some(0), "card {name}: {player}");
        assert_eq!(
            player["refusals"].as_u64(),
            Some(0),
            "card {name}: {player}"
        );
    }
}

/// The EMM sections on `pid`, in order.
fn emm_sections(pkts: &[Packet], emm_pid: u16) -> Vec<Vec<u8>> {
    let mut asm = castmux::ts::SectionAssembler::private();
    let mut v = Vec::new();
    for pk in pkts.iter().filter(|pk| pid(pk) == emm_pid) {
        asm.push(pk, |r| {
            v.push(r.expect("good EMM section").bytes().to_vec())
        });
    }
    v
}

/// `castmux headend`: two channels (UDP in, file out, each with its own ECMG link) share one
/// EMMG<->MUX port; the EMMs of the one `castmux emmg` go into both (EMM clone), and the card
/// opens both channels.
#[test]
fn headend_clones_emms_into_every_channel() {
    let h = Head::new();
    let (_ecmg, ecmg_addr) = h.ecmg("127.0.0.1:0");
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let outs = [h.path("sport.ts"), h.path("news.ts")];
    let channel = |name: &str, port: u16, out: &Path, channel_id: &str| {
        format!(
            "[[channel]]\nname = \"{name}\"\nargs = [\"-i\", \"udp://127.0.0.1:{port}\", \"-o\", \"{}\", \
             \"--ecmg\", \"{ecmg_addr}\", \"--super-cas-id\", \"4AE10000\", \"--channel-id\", \"{channel_id}\", \
             \"--access-criteria\", \"00000001\", \"--crypto-period\", \"1s\", \"--idle-timeout\", \"2s\"]\n",
            out.display()
        )
    };
    let config = h.path("headend.toml");
    std::fs::write(
        &config,
        format!(
            "[emmg]\nlisten = \"127.0.0.1:0\"\nemm_pid = \"0x1FF1\"\n\n{}\n{}",
            channel("sport", ports[0], &outs[0], "1"),
            channel("news", ports[1], &outs[1], "2")
        ),
    )
    .unwrap();
    h.ok(&["headend", "--config", s(&config), "--check"]);
    let mut he = h.spawn(&["headend", "--config", s(&config)], false);
    let mux = field(&he.wait_for("EMMG<->MUX listening"), "listen=");
    let mut emmg = h.spawn(&["emmg", "--mux", &mux, "--bandwidth", "200k"], false);
    emmg.wait_for("EMMG stream set up");
    // both channels have their ECMG link and their input socket
    let inputs: Vec<String> = ports
        .iter()
        .map(|p| format!("input=udp://127.0.0.1:{p}"))
        .collect();
    he.wait_for_all(&[&inputs[0], &inputs[1]]);
    std::thread::sleep(Duration::from_millis(300));
    let input = packets(&sample("spts.ts"));
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for chunk in input.chunks(7) {
        let d = chunk.concat();
        for port in &ports {
            sock.send_to(&d, ("127.0.0.1", *port)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    let (_, log) = he.finish();
    drop(emmg);

    let emms: Vec<Vec<Vec<u8>>> = outs
        .iter()
        .map(|o| {
            let pkts = packets(o);
            assert!(assert_no_clear_es(&pkts) > 1000, "{}", o.display());
            let p = psi(&pkts);
            assert_eq!(p.cat_ca, vec![(0x4AE1, EMM_PID)], "{}", o.display());
            emm_sections(&pkts, EMM_PID)
        })
        .collect();
    // both channels took every EMM from the start, in order: one sequence is the start of
    // the other (a channel may end with a few still queued)
    let (short, long) = if emms[0].len() <= emms[1].len() {
        (&emms[0], &emms[1])
    } else {
        (&emms[1], &emms[0])
    };
    assert!(short.len() >= 5, "{} EMMs; {log}", short.len());
    assert_eq!(
        short[..],
        long[..short.len()],
        "the same EMMs in both channels"
    );
    for (i, out) in outs.iter().enumerate() {
        let clear = h.path(&format!("clear-{i}.ts"));
        let player = check_descrambles_with(&h, &h.card, out, &clear);
        assert_eq!(player["no_key"].as_u64(), Some(0), "{player}");
        assert!(player["emms"].as_u64().unwrap() > 0, "{player}");
    }
}

#[test]
fn options_are_checked() {
    let h = Head::new();
    let run = |args: &[&str]| {
        let o = h
            .cmd()
            .args(args)
            .env("CASTMUX_LOG", "warn")
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let input = sample("spts.ts");
    let base = ["scramble", "-i", s(&input), "-o", "/dev/null"];
    let e = run(&[&base[..], &["--emmg-listen", "127.0.0.1:0"]].concat());
    assert!(e.contains("--emm-pid"), "{e}");
    let e = run(&[&base[..], &["--ecmg", "127.0.0.1:1"]].concat());
    assert!(e.contains("--super-cas-id"), "{e}");
    let e = run(&[
        &base[..],
        &[
            "--ecmg",
            "127.0.0.1:1",
            "--super-cas-id",
            "4AE10000",
            "--ecmg-version",
            "4",
        ],
    ]
    .concat());
    assert!(e.contains("--ecmg-version"), "{e}");
    let e = run(&["emmg", "--mux", "127.0.0.1:1", "--bandwidth", "lots"]);
    assert!(e.contains("bandwidth"), "{e}");
    let e = run(&[
        "ecmg",
        "--listen",
        "127.0.0.1:0",
        "--db",
        "/nonexistent/x.db",
    ]);
    assert!(e.contains("x.db"), "{e}");
}

/// A card changed in the store while `castmux emmg` runs goes out first (urgent); SIGINT
/// stops the EMMG cleanly with its counters.
#[test]
fn emmg_sends_changed_cards_first_and_stops_on_sigint() {
    let h = Head::new();
    let mut scr = h.spawn(
        &[
            "scramble",
            "-i",
            "-",
            "-o",
            "/dev/null",
            "--cw",
            "0102030405060708",
            "--emm-pid",
            "0x1FF1",
            "--emmg-listen",
            "127.0.0.1:0",
            "--stats",
        ],
        true,
    );
    let mux = field(&scr.wait_for("EMMG<->MUX listening"), "listen=");
    let mut emmg = h.spawn(&["emmg", "--mux", &mux, "--udp"], false);
    emmg.wait_for("EMMG stream set up");
    h.ok(&["card", "disable", &h.serial]);
    emmg.wait_for("emmg: cards changed; sent first");
    // the changed card's EMM goes out within a couple of seconds at 50 kbit/s
    std::thread::sleep(Duration::from_secs(2));
    interrupt(&emmg);
    let (_, log) = emmg.finish();
    let urgent: u64 = field(
        log.lines()
            .find(|l| l.contains("emmg: carousel"))
            .expect("carousel line"),
        "urgent=",
    )
    .parse()
    .unwrap();
    assert!(urgent >= 1, "{log}");
    assert!(log.contains("emmg: stopped"), "{log}");
    // the EMMs wait in the mux's queue until packets flow
    let data = std::fs::read(sample("spts.ts")).unwrap();
    feed_paced(scr.stdin(), &data, Duration::from_millis(500), |_| {});
    let (stats, _) = scr.finish();
    let stream = json(&stats)["stream"].clone();
    assert!(stream["emm"]["taken"].as_u64().unwrap() >= 1, "{stream}");
}

/// Send SIGINT to a castmux process (it stops cleanly and logs its counters).
fn interrupt(p: &Proc) {
    let st = Command::new("kill")
        .args(["-INT", &p.child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(st.success());
}

/// One CW_provision for period `cp` of stream 1 on channel 1, package 1 ("sport"); the
/// ECM_response must come back.
fn scs_gets_an_ecm(scs: &mut Raw, cp: u16) {
    let cw = || Cw::random(csa::Algorithm::Csa2, true).unwrap();
    scs.send_ecmg(
        3,
        &EcmgMessage::CwProvision(CwProvision {
            channel_id: 1,
            stream_id: 1,
            cp_number: cp,
            cw_encryption: None,
            cp_cw: vec![
                CpCw {
                    cp_number: cp,
                    cw: cw(),
                },
                CpCw {
                    cp_number: cp + 1,
                    cw: cw(),
                },
            ],
            cp_duration: Some(10),
            access_criteria: Some(vec![0, 0, 0, 1]),
        }),
    );
    match scs.read_ecmg() {
        Some(EcmgMessage::EcmResponse {
            cp_number,
            datagram,
            ..
        }) => {
            assert_eq!(cp_number, cp);
            assert!(!datagram.is_empty());
        }
        other => panic!("expected ECM_response, got {other:?}"),
    }
}

/// Channel 1 and stream 1 set up on a fresh SCS connection.
fn scs_setup(scs: &mut Raw) {
    scs.send_ecmg(
        3,
        &EcmgMessage::ChannelSetup {
            channel_id: 1,
            super_cas_id: 0x4AE1_0000,
        },
    );
    assert!(
        matches!(scs.read_ecmg(), Some(EcmgMessage::ChannelStatus(s)) if s.channel_id == 1),
        "channel_status"
    );
    scs.send_ecmg(
        3,
        &EcmgMessage::StreamSetup {
            channel_id: 1,
            stream_id: 1,
            ecm_id: 1,
            nominal_cp_duration: 10,
        },
    );
    assert!(
        matches!(
            scs.read_ecmg(),
            Some(EcmgMessage::StreamStatus { stream_id: 1, .. })
        ),
        "stream_status"
    );
}

/// Issue 17: sockets that connect and say nothing cannot lock `castmux ecmg` out. One
/// address gets at most --max-connections-per-address slots, a full server refuses, and a
/// socket without an accepted channel_setup is closed after --handshake-timeout (not
/// before); a real SCS from another address sets up and gets ECMs meanwhile, and after.
#[test]
fn ecmg_silent_connections_cannot_lock_it_out() {
    let h = Head::new();
    let handshake = Duration::from_secs(4);
    let mut ecmg = h.spawn(
        &[
            "ecmg",
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            "4",
            "--max-connections-per-address",
            "2",
            "--handshake-timeout",
            "4s",
        ],
        false,
    );
    let addr: SocketAddr = field(&ecmg.wait_for("ecmg: serving"), "listen=")
        .parse()
        .unwrap();
    let t0 = Instant::now();
    // one host floods: its share is two, the third is closed at once
    let mut silent = vec![
        connect_from("127.0.0.2", addr),
        connect_from("127.0.0.2", addr),
    ];
    let mut over = connect_from("127.0.0.2", addr);
    assert!(
        closed_within(&mut over, WAIT),
        "third from 127.0.0.2 refused"
    );
    // the real SCS (127.0.0.1) is served while the flood holds its slots
    let mut scs = Raw::connect(addr);
    scs_setup(&mut scs);
    scs_gets_an_ecm(&mut scs, 10);
    // a fourth host fills the server; a fifth is refused
    silent.push(connect_from("127.0.0.3", addr));
    let mut full = connect_from("127.0.0.4", addr);
    assert!(
        closed_within(&mut full, WAIT),
        "over --max-connections refused"
    );
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            still_open(s),
            "silent connection {i} closed before the timeout"
        );
    }
    // the silent ones go once their time is up
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(closed_within(s, WAIT), "silent connection {i} never closed");
    }
    assert!(t0.elapsed() >= handshake, "closed after {:?}", t0.elapsed());
    // the SCS keeps its channel; the flooding host may connect again and set up
    scs_gets_an_ecm(&mut scs, 11);
    let mut again = Raw {
        sock: connect_from("127.0.0.2", addr),
        sent: Vec::new(),
        received: Vec::new(),
    };
    again.sock.set_read_timeout(Some(WAIT)).unwrap();
    scs_setup(&mut again);
    interrupt(&ecmg);
    let (_, log) = ecmg.finish();
    let stopped = log
        .lines()
        .find(|l| l.contains("ecmg: stopped"))
        .unwrap_or_else(|| panic!("no counters in the log:\n{log}"));
    for want in [
        "accepted: 5,",
        "refused_full: 1,",
        "refused_per_address: 1,",
        "handshake_timeouts: 3,",
    ] {
        assert!(stopped.contains(want), "{want} not in {stopped}");
    }
    for want in [
        "all connection slots taken",
        "too many connections from this address",
        "no valid first message in time",
    ] {
        assert!(log.contains(want), "{want:?} not logged:\n{log}");
    }
}

/// Issue 17 on the `scramble --emmg-listen` port: a host flooding silent connections gets
/// its share of the slots and loses them after --emmg-handshake-timeout, while a real
/// `castmux emmg` from another address sets up its stream and its EMMs go on air.
#[test]
fn emmg_port_silent_connections_cannot_lock_it_out() {
    let h = Head::new();
    // long enough to start `castmux emmg` on a busy machine before it runs out
    let handshake = Duration::from_secs(6);
    let mut scr = h.spawn(
        &[
            "scramble",
            "-i",
            "-",
            "-o",
            "/dev/null",
            "--cw",
            "0102030405060708",
            "--emm-pid",
            "0x1FF1",
            "--emmg-listen",
            "127.0.0.1:0",
            "--emmg-max-connections",
            "3",
            "--emmg-max-connections-per-address",
            "2",
            "--emmg-handshake-timeout",
            "6s",
            "--stats",
        ],
        true,
    );
    let mux: SocketAddr = field(&scr.wait_for("EMMG<->MUX listening"), "listen=")
        .parse()
        .unwrap();
    let t0 = Instant::now();
    let mut silent = [
        connect_from("127.0.0.2", mux),
        connect_from("127.0.0.2", mux),
    ];
    let mut over = connect_from("127.0.0.2", mux);
    assert!(
        closed_within(&mut over, WAIT),
        "third from 127.0.0.2 refused"
    );
    let mut emmg = h.spawn(&["emmg", "--mux", &mux.to_string()], false);
    emmg.wait_for("EMMG stream set up");
    let mut full = connect_from("127.0.0.3", mux);
    assert!(
        closed_within(&mut full, WAIT),
        "over --emmg-max-connections refused"
    );
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            still_open(s),
            "silent connection {i} closed before the timeout"
        );
    }
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(closed_within(s, WAIT), "silent connection {i} never closed");
    }
    assert!(t0.elapsed() >= handshake, "closed after {:?}", t0.elapsed());
    // the EMMG's EMMs wait in the queue until packets flow, then go out
    let data = std::fs::read(sample("spts.ts")).unwrap();
    feed_paced(scr.stdin(), &data, Duration::from_millis(500), |_| {});
    let (stats, log) = scr.finish();
    drop(emmg);
    let stream = json(&stats)["stream"].clone();
    assert!(stream["emm"]["taken"].as_u64().unwrap() >= 1, "{stream}");
    let stopped = log
        .lines()
        .find(|l| l.contains("EMMG<->MUX stopped"))
        .unwrap_or_else(|| panic!("no counters in the log:\n{log}"));
    for want in [
        "accepted: 3,",
        "refused_full: 1,",
        "refused_per_address: 1,",
        "handshake_timeouts: 2,",
    ] {
        assert!(stopped.contains(want), "{want} not in {stopped}");
    }
}

/// Run castmux with `args` at info level; gives (success, stdout, stderr, how long it took).
fn run_timed(h: &Head, args: &[&str]) -> (bool, String, String, Duration) {
    let t = Instant::now();
    let o = h
        .cmd()
        .args(args)
        .env("CASTMUX_LOG", "info")
        .output()
        .expect("run castmux");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        t.elapsed(),
    )
}

/// `castmux ecmg` refuses a Super_CAS_id of another CA system at channel_setup with
/// `unknown Super_CAS_id value` (0x0005); `scramble --ecmg` fails at once with that name,
/// not after the 10 s setup wait, and not with ECM errors later.
#[test]
fn a_foreign_super_cas_id_is_refused_at_setup_by_name() {
    let h = Head::new();
    let (mut ecmg, addr) = h.ecmg("127.0.0.1:0");
    let input = sample("spts.ts");
    let out = h.path("out.ts");
    let (ok, _, log, took) = run_timed(
        &h,
        &[
            "scramble",
            "-i",
            s(&input),
            "-o",
            s(&out),
            "--ecmg",
            &addr,
            "--super-cas-id",
            "0B000001",
            "--access-criteria",
            "00000001",
        ],
    );
    assert!(!ok, "{log}");
    assert!(
        log.contains("refused the channel: unknown Super_CAS_id value (0x0005)"),
        "{log}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}: {log}");
    ecmg.wait_for("does not serve; refused");
}

/// An ECMG that speaks only version 2 (TSDuck's tsecmg by default): castmux asks in 3, gets
/// `unsupported protocol version`, sets up again in 2 and the file scrambles with every ECM.
/// The same ECMG with `--ecmg-version 3` given fails at once, saying what the ECMG said.
#[test]
fn an_ecmg_that_speaks_only_version_2_gets_version_2() {
    let rt = simulcrypt_support::runtime();
    let addr = simulcrypt_support::fake_ecmg(
        &rt,
        simulcrypt_support::FakeEcmg {
            version: 2,
            refuse_cw: None,
        },
    )
    .to_string();
    let h = Head::new();
    let input = sample("spts.ts");
    let out = h.path("out.ts");
    let base = [
        "scramble",
        "-i",
        s(&input),
        "-o",
        s(&out),
        "--ecmg",
        &addr,
        "--super-cas-id",
        "4AE10000",
        "--crypto-period",
        "1s",
    ];
    let (ok, stats, log, _) = run_timed(&h, &[&base[..], &["--stats"]].concat());
    assert!(ok, "{log}");
    assert!(
        log.contains("refused ECMG<->SCS version 3; setting up again in version 2"),
        "{log}"
    );
    let link = log
        .lines()
        .find(|l| l.contains("simulcrypt ECMG link"))
        .expect("link counters");
    assert!(
        link.contains("version=2") && link.contains("version_fallbacks=1"),
        "{link}"
    );
    let stats = json(&stats);
    let stream = &stats["stream"];
    assert_eq!(stream["ecm_failures"].as_u64(), Some(0), "{stream}");
    assert!(stream["ecms_generated"].as_u64().unwrap() >= 3, "{stream}");
    assert!(stream["key_switches"].as_u64().unwrap() >= 2, "{stream}");
    assert!(
        packets(&out).iter().any(|p| pid(p) == ECM_PID),
        "the ECMG's ECMs are on air"
    );

    let (ok, _, log, took) = run_timed(&h, &[&base[..], &["--ecmg-version", "3"]].concat());
    assert!(!ok, "{log}");
    assert!(
        log.contains("unsupported protocol version (0x0002) to ECMG<->SCS version 3"),
        "{log}"
    );
    assert!(log.contains("--ecmg-version 2"), "the hint: {log}");
    assert!(took < Duration::from_secs(8), "took {took:?}: {log}");
}

/// An ECMG that answers every CW_provision with a stream_error: a file run stops with the
/// ECMG's error_status by name instead of crawling on under a held key.
#[test]
fn a_file_run_stops_with_the_ecmgs_refusal() {
    let rt = simulcrypt_support::runtime();
    let addr = simulcrypt_support::fake_ecmg(
        &rt,
        simulcrypt_support::FakeEcmg {
            version: 3,
            refuse_cw: Some(0x000D),
        },
    )
    .to_string();
    let h = Head::new();
    let input = sample("spts.ts");
    let (ok, _, log, took) = run_timed(
        &h,
        &[
            "scramble",
            "-i",
            s(&input),
            "-o",
            s(&h.path("out.ts")),
            "--ecmg",
            &addr,
            "--super-cas-id",
            "4AE10000",
        ],
    );
    assert!(!ok, "{log}");
    assert!(
        log.contains("the ECM generator refused")
            && log.contains("ECMG out of computational resources (0x000d)"),
        "{log}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}: {log}");
}

/// The current key version of bit 0 as `keys status` prints it.
fn current_version(h: &Head) -> u32 {
    let status = h.ok(&["keys", "status"]);
    let line = status
        .lines()
        .find(|l| l.contains("sport"))
        .unwrap_or_else(|| panic!("no sport line in {status}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no version in {line}"))
}

/// Set up a channel and stream on `castmux ecmg` with a raw SCS; gives the peer.
fn scs_to(addr: &str) -> simulcrypt_support::Raw {
    use castmux::simulcrypt::EcmgMessage;
    let mut r = simulcrypt_support::Raw::connect(addr.parse().unwrap());
    r.send_ecmg(
        3,
        &EcmgMessage::ChannelSetup {
            channel_id: 1,
            super_cas_id: 0x4AE1_0000,
        },
    );
    assert!(matches!(r.read_ecmg(), Some(EcmgMessage::ChannelStatus(_))));
    r.send_ecmg(
        3,
        &EcmgMessage::StreamSetup {
            channel_id: 1,
            stream_id: 1,
            ecm_id: 1,
            nominal_cp_duration: 100,
        },
    );
    assert!(matches!(
        r.read_ecmg(),
        Some(EcmgMessage::StreamStatus { .. })
    ));
    r
}

/// One ECM for crypto period `cp` (package sport's access criteria).
fn ecm_from(r: &mut simulcrypt_support::Raw, cp: u16) -> Vec<u8> {
    use castmux::scramble::Cw;
    use castmux::simulcrypt::{CpCw, CwProvision, EcmgMessage};
    let cw = |b: u8| Cw::from_hex(&format!("{b:02x}").repeat(8)).unwrap();
    r.send_ecmg(
        3,
        &EcmgMessage::CwProvision(CwProvision {
            channel_id: 1,
            stream_id: 1,
            cp_number: cp,
            cw_encryption: None,
            cp_cw: vec![
                CpCw {
                    cp_number: cp,
                    cw: cw(1),
                },
                CpCw {
                    cp_number: cp + 1,
                    cw: cw(2),
                },
            ],
            cp_duration: Some(100),
            access_criteria: Some(vec![0, 0, 0, 1]),
        }),
    );
    match r.read_ecmg() {
        Some(EcmgMessage::EcmResponse { datagram, .. }) => datagram,
        other => panic!("expected an ECM, got {other:?}"),
    }
}

/// The key version bit 0's wrap in an ECM names.
fn ecm_key_version(ecm: &[u8]) -> u32 {
    let e = castmux::cas::EcmRef::parse(ecm).expect("a castmux ECM");
    let w = e.wraps().next().expect("one wrap");
    w.version
}

/// `castmux ecmg` alone serving the store (no scramble --cas builtin): `keys schedule`
/// rotates the package key, `keys status` shows it, and the ECMs are sealed under the new
/// key, which a card exported afterwards opens.
#[test]
fn ecmg_alone_rotates_keys_on_schedule() {
    let h = Head::new();
    let (mut ecmg, addr) = h.ecmg("127.0.0.1:0");
    let mut scs = scs_to(&addr);
    let before = current_version(&h);
    assert_eq!(ecm_key_version(&ecm_from(&mut scs, 0)), before);

    h.ok(&["keys", "schedule", "2s"]);
    ecmg.wait_for("scheduled service-key rotation");
    let deadline = Instant::now() + WAIT;
    while current_version(&h) < before + 2 {
        assert!(Instant::now() < deadline, "keys never rotated twice");
        std::thread::sleep(Duration::from_millis(200));
    }
    // stop rotating, give the follower a round to load the last keys
    h.ok(&["keys", "schedule", "off"]);
    std::thread::sleep(Duration::from_millis(2500));
    let now = current_version(&h);
    assert!(now >= before + 2);
    let ecm = ecm_from(&mut scs, 1);
    assert_eq!(
        ecm_key_version(&ecm),
        now,
        "the ECM is sealed under the new key"
    );

    let fresh = h.path("fresh.json");
    h.ok(&["card", "export-key", &h.serial, "-o", s(&fresh)]);
    let mut card = castmux::softcard::card::SoftCard::load(&fresh).unwrap();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    card.process_ecm(&ecm, unix)
        .expect("a card exported now opens the ECM");
    let mut old = castmux::softcard::card::SoftCard::load(&h.card).unwrap();
    assert!(
        old.process_ecm(&ecm, unix).is_err(),
        "the card exported before two rotations has no key for it"
    );
}

/// The same refusing ECMG under a live (UDP) input: the run does not stop; with no ECM ever
/// on air the scrambled services are held back (nulled, counted), the key switch is held
/// (degraded, counted), nothing goes out clear, and the ECMG is asked again and again. The
/// run then fails, as any run that was to scramble and scrambled nothing, and says why.
#[test]
fn a_live_run_holds_the_key_while_the_ecmg_refuses() {
    let rt = simulcrypt_support::runtime();
    let addr = simulcrypt_support::fake_ecmg(
        &rt,
        simulcrypt_support::FakeEcmg {
            version: 3,
            refuse_cw: Some(0x000D),
        },
    )
    .to_string();
    let h = Head::new();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = h.path("out.ts");
    let input_url = format!("udp://127.0.0.1:{port}");
    let mut scr = h.spawn(
        &[
            "scramble",
            "-i",
            &input_url,
            "-o",
            s(&out),
            "--ecmg",
            &addr,
            "--super-cas-id",
            "4AE10000",
            "--crypto-period",
            "1s",
            "--idle-timeout",
            "1s",
            "--stats",
        ],
        false,
    );
    scr.wait_for("ECMG channel and stream set up");
    std::thread::sleep(Duration::from_millis(300));
    let input = packets(&sample("spts.ts"));
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // about 7 s of wall clock: several crypto periods and retries of the refused one
    let chunks: Vec<_> = input.chunks(7).collect();
    let step = Duration::from_secs(7) / chunks.len() as u32;
    for chunk in chunks {
        sock.send_to(&chunk.concat(), ("127.0.0.1", port)).unwrap();
        std::thread::sleep(step);
    }
    let (status, stats, log) = scr.finish_any();
    assert!(!status.success(), "{log}");
    assert!(log.contains("no ECM was ever on air"), "{log}");
    let stream = json(&stats)["stream"].clone();
    assert!(stream["degraded_holds"].as_u64().unwrap() >= 1, "{stream}");
    assert!(stream["ecm_failures"].as_u64().unwrap() >= 1, "{stream}");
    assert!(
        stream["held_before_ecm"].as_u64().unwrap() > 100,
        "{stream}"
    );
    assert_eq!(stream["key_switches"].as_u64(), Some(0), "{stream}");
    // every ES packet was held back: none went out, clear or not
    assert_eq!(assert_no_clear_es(&packets(&out)), 0);
    let link = log
        .lines()
        .find(|l| l.contains("simulcrypt ECMG link"))
        .expect("link counters");
    let refused: u64 = field(link, "refused=").parse().unwrap();
    assert!(refused >= 2, "asked again after a refusal: {link}");
    assert!(
        log.contains("ECMG out of computational resources (0x000d)"),
        "the ECMG's error by name: {log}"
    );
}
