//! Past one box: castmux processes on one PostgreSQL store, with real processes and a real
//! server (scripts/pg.sh). Two ECMG nodes behind one mux, one killed mid-run; a card added
//! through one node's API on air through another node within 2 s; one scheduled rotation
//! whatever the number of nodes; the server restarted mid-run under a live channel; a
//! SQLite store copied into PostgreSQL and backed up out again.

mod cli_support;
mod head_support;
mod http_support;
mod pg_support;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use castmux::cas::store::{AuditQuery, StoreLocation};
use castmux::cas::{derive_card_key, CardSerial};
use castmux::cas::{open_emm2, Emm2Header};
use cli_support::*;
use head_support::*;
use pg_support::with_store;
use serde_json::json;

const EMM_PID: &str = "0x1F00";

/// A datagram and when it came.
type Datagram = (Instant, Vec<u8>);

/// `scramble` of stdin (paced) to `out` with the built-in CAS for package `sport`, EMMs on
/// [`EMM_PID`], 1 s periods; then `extra`.
fn builtin_scramble_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "scramble",
        "-i",
        "-",
        "-o",
        out,
        "--cas",
        "builtin",
        "--packages",
        "sport",
        "--emm-pid",
        EMM_PID,
        "--crypto-period",
        "1s",
        "--wall-clock",
    ];
    v.extend_from_slice(extra);
    v
}

/// The EMM sections in `pkts`, each with the index of the packet it ends in.
fn emm_sections(pkts: &[Packet]) -> Vec<(usize, Vec<u8>)> {
    pid_sections(
        pkts,
        u16::from_str_radix(EMM_PID.trim_start_matches("0x"), 16).unwrap(),
    )
}

/// Two `castmux ecmg` nodes on one PostgreSQL store behind one mux (`--ecmg A,B`); node A
/// killed 3 s in: node B carries on with no crypto period missed and nothing in clear, and
/// its ECMs open with the card of the store they share.
#[test]
fn two_ecmg_nodes_on_one_store_one_killed_misses_no_period() {
    let h = Head::on("0x4AE1", Some(pg_support::fresh_database()));
    let (a, a_addr) = h.ecmg("127.0.0.1:0");
    let (_b, b_addr) = h.ecmg("127.0.0.1:0");
    let out = h.path("out.ts");
    let list = format!("{a_addr},{b_addr}");
    let mut scr = h.spawn(&ecmg_scramble_args(s(&out), &list, &[]), true);
    let data = std::fs::read(sample("spts.ts")).unwrap();
    let mut a = Some(a);
    feed_paced(scr.stdin(), &data, Duration::from_secs(12), |t| {
        if t >= Duration::from_secs(3) {
            a.take();
        }
    });
    let (stats, log) = scr.finish();
    let stream = json(&stats)["stream"].clone();
    assert!(log.contains("failovers=1"), "{log}");
    assert_eq!(stream["degraded_holds"].as_u64(), Some(0), "{stream}");
    assert!(stream["key_switches"].as_u64().unwrap() >= 9, "{stream}");
    assert!(assert_no_clear_es(&packets(&out)) > 1000);
    let player = check_descrambles(&h, &out);
    assert_eq!(player["no_key"].as_u64(), Some(0), "{player}");
}

/// Node A serves the HTTP API, node B is a live channel with the built-in CAS, both on one
/// PostgreSQL store: a card added through A's API is on B's air, entitled, within 2 s.
#[test]
fn a_card_added_through_one_nodes_api_is_on_air_through_another_within_2s() {
    let h = Head::on("0x4AE1", Some(pg_support::fresh_database()));
    let api = http_support::serve(&h.at, &[]);
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let url = format!("udp://{}", rx.local_addr().unwrap());
    let got: Arc<Mutex<Vec<Datagram>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (got, stop) = (Arc::clone(&got), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = rx.recv(&mut buf) {
                    got.lock()
                        .unwrap()
                        .push((Instant::now(), buf[..n].to_vec()));
                }
            }
        })
    };
    let mut scr = h.spawn(&builtin_scramble_args(&url, &[]), true);
    let data = std::fs::read(sample("spts.ts")).unwrap();
    let mut added: Option<(Instant, u64)> = None;
    feed_paced(scr.stdin(), &data, Duration::from_secs(9), |t| {
        if t >= Duration::from_secs(4) && added.is_none() {
            let r = http_support::api(
                api.addr,
                "POST",
                "/api/v1/cards",
                Some(json!({"name": "Node A", "packages": ["sport"]})),
            );
            assert_eq!(r.status, 201, "{}", r.text());
            let serial: u64 = r.json()["runs"][0][0].as_str().unwrap().parse().unwrap();
            added = Some((Instant::now(), serial));
        }
    });
    drop(scr.finish());
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let (at, serial) = added.expect("the card was added");
    let card_key = with_store(&h.at, async |s| {
        derive_card_key(s.root_key(), CardSerial(serial))
    });
    let got = got.lock().unwrap();
    let mut first = None;
    // the stream as one, each packet with the time its datagram came
    let mut pkts = Vec::new();
    let mut when = Vec::new();
    for (t, datagram) in got.iter() {
        for p in packets_of(datagram) {
            pkts.push(p);
            when.push(*t);
        }
    }
    for (i, section) in emm_sections(&pkts) {
        if Emm2Header::parse(&section).map(|h| h.serial) == Ok(CardSerial(serial)) {
            let part = open_emm2(&section, &card_key).expect("the EMM opens with the card key");
            assert_eq!(
                part.entitlements.access.0 & 1,
                1,
                "the card is entitled to sport"
            );
            first.get_or_insert(when[i]);
        }
    }
    let first = first.unwrap_or_else(|| panic!("card {serial}'s EMM never on air"));
    let took = first.saturating_duration_since(at);
    println!("card {serial} added on node A, its EMM on node B's air {took:?} later");
    assert!(took <= Duration::from_secs(2), "took {took:?}");
}

/// Two ECMG nodes follow one store with a rotation due every 2 s: each due rotation is
/// done once, by whichever node gets the store's write lock first.
#[test]
fn a_scheduled_rotation_runs_once_whatever_the_number_of_nodes() {
    let h = Head::on("0x4AE1", Some(pg_support::fresh_database()));
    h.ok(&["keys", "schedule", "2s"]);
    let nodes: Vec<_> = (0..3).map(|_| h.ecmg("127.0.0.1:0").0).collect();
    std::thread::sleep(Duration::from_secs(9));
    drop(nodes);
    let mut rot: Vec<(i64, String)> = with_store(&h.at, async |s| {
        s.audit_log(&AuditQuery {
            action: Some("service-key.rotate".into()),
            limit: 1000,
            ..AuditQuery::default()
        })
        .await
        .unwrap()
    })
    .into_iter()
    .map(|e| (e.at, e.detail))
    .collect();
    rot.reverse();
    assert!(rot.len() >= 3, "{rot:?}");
    for w in rot.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= 2,
            "two rotations within the interval: {rot:?}"
        );
    }
    // versions step by one: current v2, v3, ... never the same one twice
    for (i, (_, detail)) in rot.iter().enumerate() {
        assert!(
            detail.starts_with(&format!("current v{}, ", i + 2)),
            "{rot:?}"
        );
    }
}

/// The PostgreSQL server stopped for 5 s under a live channel: the channel keeps its keys
/// and stays on air scrambled (every packet opens with the card), says the store is gone
/// and back, and a card added after the restart reaches its air.
#[test]
fn the_server_restarted_mid_run_channels_hold_their_keys_and_recover() {
    let cluster = pg_support::OwnCluster::start();
    let h = Head::on("0x4AE1", Some(pg_support::fresh_database_on(&cluster.url)));
    let out = h.path("out.ts");
    let mut scr = h.spawn(&builtin_scramble_args(s(&out), &["--stats"]), true);
    let data = std::fs::read(sample("spts.ts")).unwrap();
    let (mut paused, mut resumed, mut added, mut refused) = (false, false, None, None);
    feed_paced(scr.stdin(), &data, Duration::from_secs(16), |t| {
        if t >= Duration::from_secs(3) && !paused {
            cluster.pause();
            paused = true;
        }
        if paused && !resumed && refused.is_none() && t >= Duration::from_secs(4) {
            // a change while the server is down is refused, clearly, and not half-made
            let out = h
                .cmd()
                .args(["card", "add", "--packages", "sport"])
                .output()
                .unwrap();
            refused = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            assert!(!out.status.success());
        }
        if t >= Duration::from_secs(8) && !resumed {
            cluster.resume();
            resumed = true;
        }
        if t >= Duration::from_secs(11) && added.is_none() {
            let out = h.ok(&["card", "add", "--packages", "sport"]);
            let serial: u64 = out
                .split_whitespace()
                .find_map(|w| w.split("..").next().and_then(|x| x.parse().ok()))
                .unwrap_or_else(|| panic!("no serial in {out}"));
            added = Some(serial);
        }
    });
    let (stats, log) = scr.finish();
    let refused = refused.expect("a change was tried while the server was down");
    assert!(refused.contains("error: STORE_UNREACHABLE: "), "{refused}");
    assert!(refused.contains("PostgreSQL is up"), "{refused}");
    // two cards: the store's first and the one added after the restart; none half-made
    let cards = with_store(&h.at, async |s| s.emm_cards().await.unwrap().0.len());
    assert_eq!(cards, 2);
    let stream = json(&stats)["stream"].clone();
    assert!(
        log.contains("cannot read the card store; the keys and cards loaded stay on air"),
        "{log}"
    );
    assert!(log.contains("the card store reads again"), "{log}");
    assert!(stream["key_switches"].as_u64().unwrap() >= 12, "{stream}");
    let pkts = packets(&out);
    assert!(assert_no_clear_es(&pkts) > 1000);
    let player = check_descrambles(&h, &out);
    assert_eq!(player["no_key"].as_u64(), Some(0), "{player}");
    let serial = added.expect("a card was added");
    assert!(
        emm_sections(&pkts)
            .iter()
            .any(|(_, s)| Emm2Header::parse(s).map(|h| h.serial) == Ok(CardSerial(serial))),
        "card {serial}, added after the restart, never on air"
    );
}

/// `castmux store copy` moves a SQLite store into PostgreSQL whole (same cards, same root
/// key: a card exported from either is the same), refuses a database that has a store, and
/// `castmux backup` of the PostgreSQL store is a SQLite file that opens with the same cards.
#[test]
fn a_sqlite_store_copied_into_postgres_and_backed_up_out_again() {
    let h = Head::new();
    h.ok(&["card", "add", "--count", "1200", "--packages", "sport"]);
    h.ok(&[
        "event",
        "add",
        "final",
        "--start",
        "2030-01-01",
        "--end",
        "2030-01-02",
    ]);
    h.ok(&["keys", "rotate"]);
    let pg = pg_support::fresh_database();
    let out = h.ok(&["store", "copy", s(&h.db), &pg]);
    assert!(out.contains("cards 1201"), "{out}");

    let csv = |at: &str| http_support::castmux(at, &["card", "list", "--csv"]);
    let file_csv = csv(s(&h.db));
    assert_eq!(csv(&pg), file_csv);
    let read = |at: &str| {
        with_store(at, async |s| {
            let copied = s
                .audit_log(&AuditQuery {
                    action: Some("store.copy".into()),
                    limit: 10,
                    ..AuditQuery::default()
                })
                .await
                .unwrap()
                .len();
            (
                s.root_key().expose_hex(),
                s.service_keys().await.unwrap(),
                s.emm_cards().await.unwrap(),
                copied,
            )
        })
    };
    let (a, b) = (read(s(&h.db)), read(&pg));
    assert_eq!((&a.0, &a.1, &a.2), (&b.0, &b.1, &b.2), "the same store");
    assert_eq!((a.3, b.3), (0, 1), "the copy is audited in the target");

    // never over a store
    let again = h
        .cmd()
        .args(["store", "copy", s(&h.db), &pg])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("STORE_EXISTS"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // a backup of the PostgreSQL store is a SQLite file, private, with the same cards
    let backup = h.path("backup.db");
    http_support::castmux(&pg, &["backup", s(&backup)]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let before_open: Vec<String> = std::fs::read_dir(h.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("backup"))
        .collect();
    assert_eq!(before_open, ["backup.db"], "the backup is one file");
    assert_eq!(csv(s(&backup)), file_csv);
    let names: Vec<String> = std::fs::read_dir(h.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // (the -wal and -shm beside it are SQLite's, made when `card list` opened it)
    assert!(
        !names.iter().any(|n| n.contains("backup.db")
            && !["backup.db", "backup.db-wal", "backup.db-shm"].contains(&n.as_str())),
        "no temporary file left: {names:?}"
    );
}

/// The deployment's head-end files (docs/deployment/) are files `castmux headend` takes, and
/// its store file names a PostgreSQL store without a password.
#[test]
fn the_deployment_files_are_ones_castmux_takes() {
    let dir = tmp();
    for f in ["headend-a.toml", "headend-b.toml"] {
        let path = format!("{}/docs/deployment/{f}", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_castmux"))
            .args(["--db", s(&dir.path().join("none.db"))])
            .args(["headend", "--config", &path, "--check"])
            .env_remove("CASTMUX_DB")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("2 channel(s), shared EMMG port"),
            "{f}"
        );
    }
    let env = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/deployment/store.env"
    ))
    .unwrap();
    let url = env
        .lines()
        .find_map(|l| l.strip_prefix("CASTMUX_DB="))
        .expect("CASTMUX_DB in store.env");
    let at: StoreLocation = url.parse().unwrap();
    assert_eq!(at.backend(), castmux::cas::store::Backend::Postgres);
    assert!(
        !url.contains(':')
            || !url["postgres://".len()..]
                .split('@')
                .next()
                .unwrap()
                .contains(':'),
        "no password in the URL"
    );
}
