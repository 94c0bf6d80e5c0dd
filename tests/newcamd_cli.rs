//! `castmux softcard serve` as a process: a card.json served over newcamd, real castmux
//! ECMs and EMMs sent by the document-derived test client.

mod cli_support;
mod newcamd_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use castmux::cas::ecm::EcmParams;
use castmux::cas::emm::build_emm;
use castmux::cas::{
    build_ecm, derive_card_key, AccessCriteria, CardFile, CardSerial, Entitlements, Key128,
    PackageBit, ServiceKey, ServiceKeyRing, CARD_FILE_FORMAT,
};
use cli_support::{closed_within, connect_from, start_server, still_open, Server};
use newcamd_support::*;

const CAID: u16 = castmux::scramble::config::DEFAULT_CA_SYSTEM_ID;
const SERIAL: u64 = 2_100_000_042;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn root() -> Key128 {
    Key128::from_bytes([0x5C; 16])
}

fn service_key(bit: u32) -> ServiceKey {
    ServiceKey {
        bit: PackageBit::new(bit).unwrap(),
        version: 1,
        key: Key128::from_bytes([0xA0 | bit as u8; 16]),
    }
}

fn entitlements(access: u64) -> Entitlements {
    Entitlements {
        access: AccessCriteria(access),
        start: now() - 3600,
        finish: now() + 86_400,
        pair: 0,
        enabled: true,
        events: vec![],
    }
}

fn write_card(path: &Path, access: u64, keys: Vec<ServiceKey>) {
    let card = CardFile {
        format: CARD_FILE_FORMAT,
        serial: CardSerial(SERIAL),
        ca_system_id: CAID,
        card_key: derive_card_key(&root(), CardSerial(SERIAL)),
        entitlements: entitlements(access),
        service_keys: keys,
        issued_at: now() - 3600,
    };
    std::fs::write(path, serde_json::to_vec_pretty(&card).unwrap()).unwrap();
}

/// The CWs of [`ecm`]: CSA2 CWs with their checksum bytes, as castmux makes them.
const EVEN: [u8; 8] = [0xE1, 0xE2, 0xE3, 0xA6, 0xE5, 0xE6, 0xE7, 0xB2];
const ODD: [u8; 8] = [0x0D, 0x0E, 0x0F, 0x2A, 0x01, 0x02, 0x03, 0x06];

/// An ECM for package `bit`, CWs [`EVEN`] / [`ODD`], stamped now.
fn ecm(bit: u32, period: u64) -> Vec<u8> {
    ecm_at(bit, period, now())
}

/// An ECM for package `bit` made at `timestamp`.
fn ecm_at(bit: u32, period: u64, timestamp: i64) -> Vec<u8> {
    let ring = ServiceKeyRing::from_keys([service_key(bit)]);
    let mut out = Vec::new();
    build_ecm(
        &ring,
        &EcmParams {
            ca_system_id: CAID,
            access: AccessCriteria(1 << bit),
            period,
            timestamp,
            even: &EVEN,
            odd: &ODD,
        },
        &mut out,
    )
    .unwrap();
    out
}

/// Start `castmux softcard serve` on an ephemeral port; its address comes from its log.
fn serve(card: &Path, extra: &[&str]) -> Server {
    let mut c = Command::new(env!("CARGO_BIN_EXE_castmux"));
    c.args(["softcard", "serve", "--card"])
        .arg(card)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--des-key",
            CONFIG_KEY_HEX,
            "--user",
            "alice:secret",
            "--login-fail-delay",
            "200ms",
        ])
        .args(extra)
        .env("CASTMUX_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    start_server(c)
}

#[test]
fn serves_a_card_file_over_newcamd() {
    let dir = tempfile::tempdir().unwrap();
    let card = dir.path().join("card.json");
    write_card(&card, 1 << 2, vec![service_key(2)]);
    let srv = serve(&card, &[]);

    let (mut c, cd) = TestClient::login_ok(srv.addr, "alice", "secret");
    assert_eq!(u16::from_be_bytes([cd[4], cd[5]]), CAID);
    assert_eq!(&cd[6..14], &SERIAL.to_be_bytes());
    assert_eq!(cd[14], 1, "one provider (000000)");

    for period in [10u64, 11] {
        let sec = ecm(2, period);
        let a = c.ecm(&sec, 0x0101);
        assert_eq!(a[0], sec[0], "answer carries the ECM's table id");
        assert_eq!(a[2], 16);
        assert_eq!(&a[3..11], &EVEN);
        assert_eq!(&a[11..19], &ODD);
    }
    // package 5 is not on the card: refused, empty body
    let a = c.ecm(&ecm(5, 12), 0x0101);
    assert_eq!(a.len(), 3);

    // an EMM for this card entitles package 5 and brings its key; the answer says so
    let mut emm = Vec::new();
    let key = derive_card_key(&root(), CardSerial(SERIAL));
    build_emm(
        CardSerial(SERIAL),
        &key,
        1,
        &entitlements((1 << 2) | (1 << 5)),
        [&service_key(2), &service_key(5)],
        &mut emm,
    )
    .unwrap();
    assert!(
        emm.len() < 360,
        "EMM of {} bytes fits a newcamd frame",
        emm.len()
    );
    c.send_section(&emm, 0);
    let r = c.recv().unwrap();
    assert_eq!(r.msg_id, c.msg_id);
    assert_eq!(r.msg, vec![emm[0], 0x10, 0x00], "EMM accepted");
    let a = c.ecm(&ecm(5, 13), 0x0101);
    assert_eq!(a.len(), 19, "entitled after the EMM");

    // the applied EMM was saved to the card file
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&card).unwrap()).unwrap();
    assert_eq!(saved["service_keys"].as_array().unwrap().len(), 2);

    // wrong password: NAK; the server stays up for the logged-in client
    let mut bad = TestClient::connect(srv.addr, CONFIG_KEY);
    assert_eq!(bad.login("alice", "wrong"), Some(0xe2));
    assert_eq!(c.request(0xfd, &[], 0).unwrap().msg[0], 0xfd);
    let mut lines = Vec::new();
    while let Ok(l) = srv.log.recv_timeout(Duration::from_millis(500)) {
        lines.push(l);
    }
    let log = lines.join("\n");
    assert!(log.contains("login refused"), "{log}");
    assert!(log.contains("ECM refused by the card"), "{log}");
    // no CW bytes in the log, in any case
    assert!(!log.to_ascii_lowercase().contains("e1e2e3a6"), "{log}");
}

#[test]
fn not_entitled_card_gets_empty_answers_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let card = dir.path().join("card.json");
    // entitled to package 3 only, and without the key of package 2
    write_card(&card, 1 << 3, vec![service_key(3)]);
    let srv = serve(&card, &["--max-services", "1"]);
    let (mut c, _) = TestClient::login_ok(srv.addr, "alice", "secret");
    assert_eq!(c.ecm(&ecm(2, 1), 1), vec![0x80 | 1, 0, 0]);
    assert_eq!(c.ecm(&ecm(3, 2), 1).len(), 19);
    // a second service over the limit of 1
    assert_eq!(c.ecm(&ecm(3, 3), 2).len(), 3);

    // CLI errors name the problem
    let out = Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args(["softcard", "serve", "--card"])
        .arg(&card)
        .args(["--des-key", "0102", "--user", "a:b"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("28 hex digits"));
    let out = Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args(["softcard", "serve", "--card"])
        .arg(&card)
        .args(["--des-key", CONFIG_KEY_HEX])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no users"));
    let out = Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args(["softcard", "serve", "--card", "/nonexistent/card.json"])
        .args(["--des-key", CONFIG_KEY_HEX, "--user", "a:b"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("card"));
}

#[test]
fn users_file_and_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let card = dir.path().join("card.json");
    write_card(&card, 1 << 2, vec![service_key(2)]);
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        "[[user]]\nname = \"bob\"\npassword = \"bobpw\"\nau = false\n",
    )
    .unwrap();
    let mut srv = serve(&card, &["--config", users.to_str().unwrap()]);
    let (mut c, cd) = TestClient::login_ok(srv.addr, "bob", "bobpw");
    assert_eq!(&cd[6..14], &[0; 8], "non-AU user sees no serial");
    assert_eq!(c.ecm(&ecm(2, 4), 9).len(), 19);
    // SIGTERM: the server stops and reports its counters
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(srv.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut stopped = String::new();
    while let Ok(l) = srv.log.recv_timeout(Duration::from_secs(20)) {
        if l.contains("newcamd: stopped") {
            stopped = l;
            break;
        }
    }
    assert!(stopped.contains("ecm_answered=1"), "{stopped}");
    let status = srv.child.wait().unwrap();
    assert!(status.success());
}

/// Issue 17: sockets that connect and never log in cannot lock `softcard serve` out. One
/// address gets at most --max-clients-per-address slots, a full server refuses, and a
/// socket that has not logged in is closed after --login-timeout (not before); a real
/// client from another address logs in and gets CWs meanwhile, and after.
#[test]
fn silent_connections_cannot_lock_the_server_out() {
    let dir = tempfile::tempdir().unwrap();
    let card = dir.path().join("card.json");
    write_card(&card, 1 << 2, vec![service_key(2)]);
    let login = Duration::from_secs(4);
    let mut srv = serve(
        &card,
        &[
            "--max-clients",
            "4",
            "--max-clients-per-address",
            "2",
            "--login-timeout",
            "4s",
        ],
    );
    let wait = Duration::from_secs(30);
    let t0 = Instant::now();
    let mut silent = vec![
        connect_from("127.0.0.2", srv.addr),
        connect_from("127.0.0.2", srv.addr),
    ];
    let mut over = connect_from("127.0.0.2", srv.addr);
    assert!(
        closed_within(&mut over, wait),
        "third from 127.0.0.2 refused"
    );
    let (mut c, _) = TestClient::login_ok(srv.addr, "alice", "secret");
    assert_eq!(
        c.ecm(&ecm(2, 4), 9).len(),
        19,
        "CWs while the flood holds its slots"
    );
    silent.push(connect_from("127.0.0.3", srv.addr));
    let mut full = connect_from("127.0.0.4", srv.addr);
    assert!(closed_within(&mut full, wait), "over --max-clients refused");
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            still_open(s),
            "silent connection {i} closed before the timeout"
        );
    }
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(closed_within(s, wait), "silent connection {i} never closed");
    }
    assert!(t0.elapsed() >= login, "closed after {:?}", t0.elapsed());
    // the logged-in client stays; its slot was never at risk
    assert_eq!(c.ecm(&ecm(2, 5), 9).len(), 19);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(srv.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut stopped = String::new();
    while let Ok(l) = srv.log.recv_timeout(wait) {
        if l.contains("newcamd: stopped") {
            stopped = l;
            break;
        }
    }
    for want in [
        "accepted=4 ",
        "refused_full=1 ",
        "refused_per_address=1 ",
        "handshake_timeouts=3 ",
    ] {
        assert!(stopped.contains(want), "{want} not in {stopped:?}");
    }
    assert!(srv.child.wait().unwrap().success());
}

/// What Cesbo Astra 4's newcamd client sends: the section with the top four bits of
/// byte 1 cleared (it writes only the 12 length bits there).
fn astra(section: &[u8]) -> Vec<u8> {
    let mut s = section.to_vec();
    s[1] &= 0x0F;
    s
}

#[test]
fn a_client_that_clears_the_section_flag_bits_gets_cws_and_its_emms_apply() {
    let dir = tempfile::tempdir().unwrap();
    let card = dir.path().join("card.json");
    write_card(&card, 1 << 2, vec![service_key(2)]);
    let srv = serve(&card, &[]);
    let (mut c, _) = TestClient::login_ok(srv.addr, "alice", "secret");

    let sec = ecm(2, 30);
    assert_eq!(sec[1] & 0xF0, 0x70);
    let a = c.ecm(&astra(&sec), 0x0101);
    assert_eq!(a.len(), 19, "answered: {a:?}");
    assert_eq!(&a[3..11], &EVEN);
    assert_eq!(&a[11..19], &ODD);

    // an EMM with its flag bits cleared entitles package 5
    let mut emm = Vec::new();
    build_emm(
        CardSerial(SERIAL),
        &derive_card_key(&root(), CardSerial(SERIAL)),
        7,
        &entitlements((1 << 2) | (1 << 5)),
        [&service_key(2), &service_key(5)],
        &mut emm,
    )
    .unwrap();
    c.send_section(&astra(&emm), 0);
    assert_eq!(
        c.recv().unwrap().msg,
        vec![emm[0], 0x10, 0x00],
        "EMM accepted"
    );
    assert_eq!(c.ecm(&astra(&ecm(5, 31)), 0x0102).len(), 19);

    // a changed byte elsewhere is still refused
    let mut bad = astra(&ecm(2, 32));
    bad[30] ^= 0x01;
    assert_eq!(c.ecm(&bad, 0x0101).len(), 3);
}

#[test]
fn an_older_ecm_spliced_into_a_service_is_refused_even_from_the_answer_cache() {
    let dir = tempfile::tempdir().unwrap();
    let card = dir.path().join("card.json");
    write_card(&card, 1 << 2, vec![service_key(2)]);
    let srv = serve(&card, &[]);
    let (mut c, _) = TestClient::login_ok(srv.addr, "alice", "secret");
    let t = now();
    // recorded two minutes ago: inside the time window, so answered the first time ...
    let old = ecm_at(2, 40, t - 120);
    assert_eq!(c.ecm(&old, 0x0101).len(), 19);
    let live = ecm_at(2, 42, t);
    assert_eq!(c.ecm(&live, 0x0101).len(), 19);
    // ... but not once the service's newer even ECM is held, though its answer is cached
    assert_eq!(c.ecm(&old, 0x0101), vec![0x80, 0, 0]);
    assert_eq!(c.ecm(&live, 0x0101).len(), 19, "the live ECM still is");
    // another service of the session (or another session) is its own stream
    assert_eq!(c.ecm(&old, 0x0102).len(), 19);
    let (mut other, _) = TestClient::login_ok(srv.addr, "alice", "secret");
    assert_eq!(other.ecm(&old, 0x0101).len(), 19);
    let mut lines = Vec::new();
    while let Ok(l) = srv.log.recv_timeout(Duration::from_millis(500)) {
        lines.push(l);
    }
    let log = lines.join("\n");
    assert!(log.contains("replay"), "{log}");
    assert_eq!(
        log.matches("ECM refused as a replay").count(),
        1,
        "the card says it once: {log}"
    );
}
