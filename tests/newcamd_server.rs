//! The newcamd server (library, on an ephemeral loopback port) against a client written
//! in the test from the protocol document, and against castmux's own client.

mod newcamd_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use castmux::softcard::newcamd::{
    CardBackend, CwPair, DesKey14, EcmRefusal, EmmResult, NewcamdClient, NewcamdError,
    NewcamdServer, ServerConfig, StatsSnapshot, Users,
};
use newcamd_support::*;

const CAID: u16 = 0x4ae1;
const SERIAL: u64 = 0x0000_0012_3456_789a;
const PROVIDER: u32 = 0x00_0102;
/// ECMs whose first body byte is this package are refused by the test card.
const NOT_ENTITLED: u8 = 0xee;

/// A card for the tests: CWs are a function of the ECM bytes; calls are counted.
struct TestCard {
    ecm_calls: Arc<AtomicUsize>,
}

fn cws_for(section: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = section.iter().enumerate().fold(i as u8, |a, (j, b)| {
            a.wrapping_mul(31).wrapping_add(b ^ j as u8)
        });
    }
    out
}

impl CardBackend for TestCard {
    fn caid(&self) -> u16 {
        CAID
    }
    fn serial(&self) -> u64 {
        SERIAL
    }
    fn provider_ids(&self) -> Vec<u32> {
        vec![PROVIDER]
    }
    fn ecm(&mut self, section: &[u8], _now: i64) -> Result<CwPair, EcmRefusal> {
        self.ecm_calls.fetch_add(1, Ordering::SeqCst);
        if section.get(3) == Some(&NOT_ENTITLED) {
            return Err(EcmRefusal("package not entitled".into()));
        }
        Ok(CwPair::from_bytes(&cws_for(section)))
    }
    fn emm(&mut self, section: &[u8], _now: i64) -> EmmResult {
        match section.get(3) {
            Some(0x01) => EmmResult::Applied,
            Some(0x03) => EmmResult::Unchanged,
            _ => EmmResult::Rejected,
        }
    }
}

struct Harness {
    addr: SocketAddr,
    server: Arc<NewcamdServer<TestCard>>,
    ecm_calls: Arc<AtomicUsize>,
    rt: tokio::runtime::Runtime,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Harness {
    fn start(tune: impl FnOnce(&mut ServerConfig)) -> Harness {
        let mut users = Users::default();
        users.add_flag("alice:secret").unwrap();
        users
            .add_toml("[[user]]\nname = \"bob\"\npassword = \"bobpw\"\nau = false\n")
            .unwrap();
        let mut cfg = ServerConfig::new(DesKey14::from_hex(CONFIG_KEY_HEX).unwrap(), users);
        cfg.login_fail_delay = Duration::from_millis(300);
        tune(&mut cfg);
        let ecm_calls = Arc::new(AtomicUsize::new(0));
        let server = Arc::new(NewcamdServer::new(
            cfg,
            TestCard {
                ecm_calls: ecm_calls.clone(),
            },
        ));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = server.clone();
        rt.spawn(async move {
            s.run(listener, async {
                let _ = stopped.await;
            })
            .await
        });
        Harness {
            addr,
            server,
            ecm_calls,
            rt,
            _stop: stop,
        }
    }

    fn stats(&self) -> StatsSnapshot {
        self.server.stats()
    }

    /// Wait (generously) until the counters satisfy `f`: the server counts after it answers.
    fn wait_stats(&self, f: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
        let t0 = Instant::now();
        loop {
            let s = self.stats();
            if f(&s) || t0.elapsed() > Duration::from_secs(20) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// An ECM section: table id, length, package byte, then some payload.
fn ecm_section(table_id: u8, package: u8, counter: u8) -> Vec<u8> {
    let body = [package, counter, 0xde, 0xad, 0xbe, 0xef, counter, 0x42];
    let mut s = vec![table_id, 0x70, body.len() as u8];
    s.extend_from_slice(&body);
    s
}

#[test]
fn login_card_data_ecm_emm_keepalive() {
    let h = Harness::start(|_| {});
    let (mut c, cd) = TestClient::login_ok(h.addr, "alice", "secret");
    // MSG_CARD_DATA: user id 1 (AU), caid, 8-byte serial, 1 provider, 11 bytes each
    assert_eq!(cd[3], 1);
    assert_eq!(u16::from_be_bytes([cd[4], cd[5]]), CAID);
    assert_eq!(&cd[6..14], &SERIAL.to_be_bytes());
    assert_eq!(cd[14], 1);
    assert_eq!(&cd[15..18], &PROVIDER.to_be_bytes()[1..]);
    assert_eq!(cd.len(), 15 + 11);

    // ECM answered: same table id, 16 bytes, even then odd
    for tid in [0x80u8, 0x81] {
        let sec = ecm_section(tid, 0x01, tid);
        let a = c.ecm(&sec, 0x0101);
        assert_eq!(a[0], tid);
        assert_eq!(a[2], 16);
        assert_eq!(&a[3..], &cws_for(&sec));
    }
    // refused: empty body
    let a = c.ecm(&ecm_section(0x80, NOT_ENTITLED, 1), 0x0101);
    assert_eq!(a, vec![0x80, 0x00, 0x00]);

    // EMM: accepted bit (bit 4 of byte 2) set or clear
    let r = c.request(0x82, &[0x01, 0xaa], 0).unwrap();
    assert_eq!(r.msg, vec![0x82, 0x10, 0x00]);
    let r = c.request(0x84, &[0x02, 0xaa], 0).unwrap();
    assert_eq!(r.msg, vec![0x84, 0x00, 0x00]);

    // keepalive echoed with its sequence id
    let r = c.request(0xfd, &[], 0).unwrap();
    assert_eq!(r.msg, vec![0xfd, 0x00, 0x00]);

    let s = h.wait_stats(|s| s.keepalives == 1);
    assert_eq!(s.logins, 1);
    assert_eq!(s.ecm_answered, 2);
    assert_eq!(s.ecm_refused_card, 1);
    assert_eq!(s.emm_accepted, 1);
    assert_eq!(s.emm_rejected, 1);
    assert_eq!(s.card_data_requests, 1);
}

#[test]
fn non_au_user_gets_no_serial_and_no_emm() {
    let h = Harness::start(|_| {});
    let (mut c, cd) = TestClient::login_ok(h.addr, "bob", "bobpw");
    assert_ne!(cd[3], 1, "not the AU user id");
    assert_eq!(&cd[6..14], &[0; 8], "serial hidden");
    let r = c.request(0x82, &[0x01, 0xaa], 0).unwrap();
    assert_eq!(r.msg, vec![0x82, 0x00, 0x00]);
    // ECMs work for every user
    let sec = ecm_section(0x80, 0x01, 9);
    assert_eq!(&c.ecm(&sec, 7)[3..], &cws_for(&sec));
    assert_eq!(h.wait_stats(|s| s.emm_not_allowed == 1).emm_not_allowed, 1);
}

#[test]
fn wrong_password_gets_a_delayed_nak() {
    let h = Harness::start(|_| {});
    let mut c = TestClient::connect(h.addr, CONFIG_KEY);
    let t0 = Instant::now();
    assert_eq!(c.login("alice", "guess"), Some(0xe2), "login NAK");
    assert!(t0.elapsed() >= Duration::from_millis(250), "NAK is delayed");
    assert!(c.is_closed());
    let mut c = TestClient::connect(h.addr, CONFIG_KEY);
    assert_eq!(c.login("mallory", "x"), Some(0xe2));
    assert_eq!(h.wait_stats(|s| s.login_failures == 2).login_failures, 2);
    assert_eq!(h.stats().logins, 0);
}

#[test]
fn wrong_des_key_closes_the_connection() {
    let h = Harness::start(|_| {});
    let mut other = CONFIG_KEY;
    other[13] ^= 0x80;
    let mut c = TestClient::connect(h.addr, other);
    assert_eq!(c.login("alice", "secret"), None, "closed without an answer");
    assert_eq!(h.wait_stats(|s| s.bad_frames == 1).bad_frames, 1);
}

#[test]
fn bad_frames_close_only_their_connection() {
    let h = Harness::start(|_| {});
    let (mut good, _) = TestClient::login_ok(h.addr, "alice", "secret");

    // oversize length prefix
    let (mut c, _) = TestClient::login_ok(h.addr, "alice", "secret");
    std::io::Write::write_all(&mut c.s, &[0xff, 0xff, 1, 2, 3, 4]).unwrap();
    assert!(c.is_closed(), "oversize length closes");

    // garbage: a plausible length followed by bytes that are no frame
    let (mut c, _) = TestClient::login_ok(h.addr, "bob", "bobpw");
    let mut junk = vec![0x00, 0x18];
    junk.extend((0..24u8).map(|i| i.wrapping_mul(37) ^ 0x5a));
    std::io::Write::write_all(&mut c.s, &junk).unwrap();
    assert!(c.is_closed(), "garbage closes");

    // a well-formed frame with a wrong checksum
    let (mut c, _) = TestClient::login_ok(h.addr, "alice", "secret");
    c.send(0xfd, &[], 0, Corrupt::Checksum);
    assert!(c.is_closed(), "bad checksum closes");

    // garbage before login
    let mut c = TestClient::connect(h.addr, CONFIG_KEY);
    std::io::Write::write_all(&mut c.s, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(c.is_closed(), "non-newcamd peer closed");

    // the first client never noticed
    let sec = ecm_section(0x81, 0x01, 3);
    assert_eq!(&good.ecm(&sec, 0x0101)[3..], &cws_for(&sec));
    assert_eq!(good.request(0xfd, &[], 0).unwrap().msg[0], 0xfd);
    assert_eq!(h.wait_stats(|s| s.bad_frames == 4).bad_frames, 4);
}

#[test]
fn third_service_is_refused_until_one_goes_idle() {
    let h = Harness::start(|c| c.service_idle = Duration::from_millis(1500));
    let (mut a, _) = TestClient::login_ok(h.addr, "alice", "secret");
    let (mut b, _) = TestClient::login_ok(h.addr, "bob", "bobpw");
    let s1 = ecm_section(0x80, 0x01, 1);
    let s2 = ecm_section(0x80, 0x01, 2);
    let s3 = ecm_section(0x80, 0x01, 3);
    assert_eq!(a.ecm(&s1, 101).len(), 19);
    assert_eq!(b.ecm(&s2, 102).len(), 19);
    assert_eq!(b.ecm(&s3, 103), vec![0x80, 0, 0], "third service refused");
    // the two active services keep working
    assert_eq!(a.ecm(&s1, 101).len(), 19);
    assert_eq!(h.stats().ecm_refused_service_limit, 1);
    // once both have been idle, the third gets its slot
    std::thread::sleep(Duration::from_millis(1700));
    assert_eq!(&b.ecm(&s3, 103)[3..], &cws_for(&s3));
    // limit applies per card across users: a fourth and fifth service, one gets in
    let s4 = ecm_section(0x80, 0x01, 4);
    let s5 = ecm_section(0x80, 0x01, 5);
    assert_eq!(a.ecm(&s4, 104).len(), 19);
    assert_eq!(a.ecm(&s5, 105).len(), 3);
    assert_eq!(h.stats().ecm_refused_service_limit, 2);
}

#[test]
fn repeated_ecm_is_answered_from_the_cache() {
    let h = Harness::start(|_| {});
    let (mut a, _) = TestClient::login_ok(h.addr, "alice", "secret");
    let (mut b, _) = TestClient::login_ok(h.addr, "bob", "bobpw");
    let sec = ecm_section(0x81, 0x01, 77);
    let first = a.ecm(&sec, 5);
    let second = b.ecm(&sec, 5);
    let third = a.ecm(&sec, 5);
    assert_eq!(first, second);
    assert_eq!(first, third);
    assert_eq!(
        h.ecm_calls.load(Ordering::SeqCst),
        1,
        "the card decrypted once"
    );
    let s = h.wait_stats(|s| s.ecm_cache_hits == 2);
    assert_eq!(s.ecm_cache_hits, 2);
    assert_eq!(s.ecm_answered, 3);
    // refusals are not cached: the card is asked every time
    let bad = ecm_section(0x81, NOT_ENTITLED, 1);
    a.ecm(&bad, 5);
    a.ecm(&bad, 5);
    assert_eq!(h.ecm_calls.load(Ordering::SeqCst), 3);
    // a repeated EMM changes nothing: the cache stays
    assert_eq!(
        a.request(0x82, &[0x03], 0).unwrap().msg,
        vec![0x82, 0x10, 0]
    );
    assert_eq!(a.ecm(&sec, 5), first);
    assert_eq!(h.ecm_calls.load(Ordering::SeqCst), 3);
    // an applied EMM may change entitlements: the card is asked again
    assert_eq!(
        a.request(0x82, &[0x01], 0).unwrap().msg,
        vec![0x82, 0x10, 0]
    );
    assert_eq!(a.ecm(&sec, 5), first);
    assert_eq!(h.ecm_calls.load(Ordering::SeqCst), 4);
}

#[test]
fn idle_session_is_closed() {
    let h = Harness::start(|c| c.idle_timeout = Duration::from_millis(800));
    let (mut c, _) = TestClient::login_ok(h.addr, "alice", "secret");
    // a keepalive within the timeout keeps it open
    std::thread::sleep(Duration::from_millis(400));
    assert!(c.request(0xfd, &[], 0).is_some());
    let t0 = Instant::now();
    assert!(c.is_closed());
    assert!(t0.elapsed() >= Duration::from_millis(600));
    assert_eq!(h.wait_stats(|s| s.idle_timeouts == 1).idle_timeouts, 1);
}

#[test]
fn library_client_against_the_server() {
    let h = Harness::start(|_| {});
    let key = DesKey14::from_hex(CONFIG_KEY_HEX).unwrap();
    let t = Duration::from_secs(20);
    h.rt.block_on(async {
        let mut c = NewcamdClient::connect(h.addr, "alice", "secret", &key, t)
            .await
            .unwrap();
        let cd = c.card_data().clone();
        assert_eq!((cd.user_id, cd.caid, cd.serial), (1, CAID, SERIAL));
        assert_eq!(cd.providers.len(), 1);
        assert_eq!(cd.providers[0].0, PROVIDER);
        let sec = ecm_section(0x80, 0x01, 50);
        let p = c.ecm(0x0101, &sec).await.unwrap().expect("CWs");
        assert_eq!(p.to_bytes(), cws_for(&sec));
        assert_eq!(
            c.ecm(0x0101, &ecm_section(0x80, NOT_ENTITLED, 0))
                .await
                .unwrap(),
            None
        );
        assert!(c.emm(&[0x82, 0x70, 0x02, 0x01, 0x00]).await.unwrap());
        assert!(!c.emm(&[0x82, 0x70, 0x02, 0x02, 0x00]).await.unwrap());
        c.keepalive().await.unwrap();
        assert!(c.ecm(1, &[0x82, 0x70, 0x00]).await.is_err(), "not an ECM");

        let e = NewcamdClient::connect(h.addr, "alice", "nope", &key, t)
            .await
            .unwrap_err();
        assert!(matches!(e, NewcamdError::LoginRefused(_)), "{e}");
        let other = DesKey14::from_hex("0102030405060708091011121315").unwrap();
        let e = NewcamdClient::connect(h.addr, "alice", "secret", &other, t)
            .await
            .unwrap_err();
        assert!(matches!(e, NewcamdError::Closed(_)), "{e}");
    });
}

#[test]
fn many_clients_at_once() {
    let h = Harness::start(|c| c.max_services = 64);
    let threads: Vec<_> = (0..16u8)
        .map(|i| {
            let addr = h.addr;
            std::thread::spawn(move || {
                let (mut c, _) = TestClient::login_ok(addr, "alice", "secret");
                for n in 0..20u8 {
                    let sec = ecm_section(0x80 | (n & 1), 0x01, i.wrapping_mul(20) ^ n);
                    assert_eq!(&c.ecm(&sec, u16::from(i))[3..], &cws_for(&sec));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(h.wait_stats(|s| s.ecm_answered == 320).ecm_answered, 320);
}
