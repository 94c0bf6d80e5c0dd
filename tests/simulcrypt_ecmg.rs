//! ECMG<->SCS through real sockets: castmux's SCS client against castmux's ECMG server in
//! protocol versions 2 and 3, sections and TS packets; protocol errors answered with the
//! right error_status; ECMG killed and restarted; ECMG late or silent.

mod simulcrypt_support;

use std::net::SocketAddr;
use std::time::Duration;

use castmux::scramble::ecm::{EcmError, EcmGenerator, EcmRequest};
use castmux::scramble::{CryptoPeriod, Cw};
use castmux::simulcrypt::access::parse_access_criteria_hex;
use castmux::simulcrypt::{
    ChannelStatus, CpCw, CwProvision, EcmgMessage, EcmgServerConfig, ScsConfig, SimulcryptEcmg,
};
use castmux::ts::Pid;
use csa::Algorithm;
use simulcrypt_support::*;

const SUPER_CAS_ID: u32 = 0x0B00_0001;

fn cw() -> Cw {
    Cw::random(Algorithm::Csa2, true).unwrap()
}

fn client(addr: SocketAddr, version: u8) -> ScsConfig {
    let mut c = ScsConfig::new(addr.to_string(), SUPER_CAS_ID);
    c.version = version;
    c.access_criteria = parse_access_criteria_hex("00000001").unwrap();
    c.crypto_period = Duration::from_secs(1);
    c.backoff_min = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(400);
    c.keepalive = Duration::from_secs(1);
    c
}

/// Ask for the ECM of `period` until it comes (the first call only announces it).
fn ecm_for(
    g: &mut SimulcryptEcmg,
    period: u64,
    cur: &Cw,
    next: &Cw,
    within: Duration,
) -> Option<Vec<u8>> {
    let req = EcmRequest {
        period: CryptoPeriod(period),
        parity: CryptoPeriod(period).parity(),
        current: cur,
        next,
        ecm_pid: Pid::new(0x100),
        ca_system_id: 0x0B00,
    };
    let end = std::time::Instant::now() + within;
    loop {
        let mut out = Vec::new();
        match g.generate(&req, &mut out) {
            Ok(()) => return Some(out),
            Err(EcmError::Unavailable(_)) if std::time::Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => return None,
        }
    }
}

fn check_ecm(sec: &[u8], period: u64, cur: &Cw, next: &Cw) {
    let e = parse_test_ecm(sec);
    let (even, odd) = if period.is_multiple_of(2) {
        (cur, next)
    } else {
        (next, cur)
    };
    assert_eq!(
        e.table_id,
        if period.is_multiple_of(2) { 0x80 } else { 0x81 }
    );
    assert_eq!(e.cp, period as u16);
    assert_eq!(e.even, even.as_bytes());
    assert_eq!(e.odd, odd.as_bytes());
    // Astra/TVCAS "00000001" = package 1 = bit 0
    assert_eq!(e.access, 1);
}

#[test]
fn scs_client_gets_ecms_from_the_ecmg_in_both_versions_and_both_datagram_forms() {
    let rt = runtime();
    for version in [2u8, 3] {
        for tspkt in [false, true] {
            let cfg = EcmgServerConfig {
                section_tspkt_flag: tspkt,
                delay_start: -300,
                ecm_rep_period: 80,
                ..EcmgServerConfig::default()
            };
            let mut server = start_ecmg(&rt, "127.0.0.1:0".parse().unwrap(), cfg);
            let mut g = SimulcryptEcmg::start(client(server.addr, version)).unwrap();
            let status: ChannelStatus = g.wait_ready(Duration::from_secs(20)).unwrap();
            assert_eq!(status.delay_start, -300);
            assert_eq!(status.ecm_rep_period, 80);
            assert_eq!(status.section_tspkt_flag, tspkt);
            assert_eq!(g.ca_system_id(), 0x0B00);
            let cws: Vec<Cw> = (0..6).map(|_| cw()).collect();
            for p in 0..5u64 {
                let (c, n) = (&cws[p as usize], &cws[p as usize + 1]);
                let sec = ecm_for(&mut g, p, c, n, Duration::from_secs(20))
                    .unwrap_or_else(|| panic!("v{version} tspkt={tspkt}: no ECM for period {p}"));
                check_ecm(&sec, p, c, n);
            }
            assert_eq!(
                server.stats.ecms.load(std::sync::atomic::Ordering::Relaxed),
                5
            );
            assert_eq!(
                g.stats()
                    .errors_received
                    .load(std::sync::atomic::Ordering::Relaxed),
                0
            );
            drop(g);
            server.kill(&rt);
        }
    }
}

#[test]
fn provisioning_ahead_makes_generate_immediate() {
    let rt = runtime();
    let mut server = start_ecmg(
        &rt,
        "127.0.0.1:0".parse().unwrap(),
        EcmgServerConfig::default(),
    );
    let mut g = SimulcryptEcmg::start(client(server.addr, 3)).unwrap();
    g.wait_ready(Duration::from_secs(20)).unwrap();
    let (a, b) = (cw(), cw());
    g.provision(7, &a, &b);
    assert!(wait_until(Duration::from_secs(20), || {
        g.stats()
            .ecms_received
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    }));
    let before = g
        .stats()
        .unavailable
        .load(std::sync::atomic::Ordering::Relaxed);
    let sec = ecm_for(&mut g, 7, &a, &b, Duration::ZERO).expect("ready at the first call");
    check_ecm(&sec, 7, &a, &b);
    assert_eq!(
        g.stats()
            .unavailable
            .load(std::sync::atomic::Ordering::Relaxed),
        before
    );
    // other CWs for the same period are not served the stale ECM
    let c = cw();
    let mut out = Vec::new();
    let req = EcmRequest {
        period: CryptoPeriod(7),
        parity: CryptoPeriod(7).parity(),
        current: &a,
        next: &c,
        ecm_pid: Pid::new(0x100),
        ca_system_id: 0x0B00,
    };
    assert!(g.generate(&req, &mut out).is_err() || parse_test_ecm(&out).odd != b.as_bytes());
    drop(g);
    server.kill(&rt);
}

#[test]
fn ecmg_killed_and_restarted_mid_run_ecms_resume() {
    let rt = runtime();
    let mut server = start_ecmg(
        &rt,
        "127.0.0.1:0".parse().unwrap(),
        EcmgServerConfig::default(),
    );
    let addr = server.addr;
    let mut g = SimulcryptEcmg::start(client(addr, 2)).unwrap();
    g.wait_ready(Duration::from_secs(20)).unwrap();
    let cws: Vec<Cw> = (0..5).map(|_| cw()).collect();
    let s0 = ecm_for(&mut g, 0, &cws[0], &cws[1], Duration::from_secs(20)).unwrap();
    check_ecm(&s0, 0, &cws[0], &cws[1]);

    server.kill(&rt);
    assert!(wait_until(Duration::from_secs(20), || !g.is_connected()));
    // while the ECMG is away: no ECM, counted, never a wait longer than a few ms
    let t = std::time::Instant::now();
    let mut out = Vec::new();
    let req = EcmRequest {
        period: CryptoPeriod(1),
        parity: CryptoPeriod(1).parity(),
        current: &cws[1],
        next: &cws[2],
        ecm_pid: Pid::new(0x100),
        ca_system_id: 0x0B00,
    };
    assert!(matches!(
        g.generate(&req, &mut out),
        Err(EcmError::Unavailable(_))
    ));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "generate blocked {:?}",
        t.elapsed()
    );
    assert!(
        g.stats()
            .unavailable
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );

    // the ECMG comes back on the same port: the client reconnects and replays period 1
    let mut server2 = start_ecmg(&rt, addr, EcmgServerConfig::default());
    let s1 = ecm_for(&mut g, 1, &cws[1], &cws[2], Duration::from_secs(30)).expect("ECMs resume");
    check_ecm(&s1, 1, &cws[1], &cws[2]);
    let s2 = ecm_for(&mut g, 2, &cws[2], &cws[3], Duration::from_secs(20)).unwrap();
    check_ecm(&s2, 2, &cws[2], &cws[3]);
    assert!(g.stats().setups.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    assert!(
        g.stats()
            .link_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    drop(g);
    server2.kill(&rt);
}

/// A fake ECMG: sets the channel and stream up, then answers CW_provisions after `delay`,
/// or never when `delay` is None.
fn slow_ecmg(rt: &tokio::runtime::Runtime, delay: Option<Duration>) -> SocketAddr {
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap();
    rt.spawn(async move {
        use castmux::simulcrypt::conn::FrameReader;
        use tokio::io::AsyncWriteExt;
        let (s, _) = l.accept().await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut r = FrameReader::new(rd);
        while let Ok(Some(f)) = r.next().await {
            let (v, m) = EcmgMessage::decode(&f).unwrap();
            let reply = match m {
                EcmgMessage::ChannelSetup { channel_id, .. }
                | EcmgMessage::ChannelTest { channel_id } => Some(EcmgMessage::ChannelStatus(
                    channel_status(channel_id, 1, 100),
                )),
                EcmgMessage::StreamSetup {
                    channel_id,
                    stream_id,
                    ecm_id,
                    ..
                } => Some(EcmgMessage::StreamStatus {
                    channel_id,
                    stream_id,
                    ecm_id,
                    access_criteria_transfer_mode: false,
                }),
                EcmgMessage::CwProvision(CwProvision {
                    channel_id,
                    stream_id,
                    cp_number,
                    ..
                }) => match delay {
                    None => None,
                    Some(d) => {
                        tokio::time::sleep(d).await;
                        let tid = if cp_number.is_multiple_of(2) {
                            0x80
                        } else {
                            0x81
                        };
                        Some(EcmgMessage::EcmResponse {
                            channel_id,
                            stream_id,
                            cp_number,
                            datagram: vec![tid, 0x70, 2, 0xAB, 0xCD],
                        })
                    }
                },
                _ => None,
            };
            if let Some(m) = reply {
                let mut b = Vec::new();
                m.encode(v, &mut b).unwrap();
                if wr.write_all(&b).await.is_err() {
                    return;
                }
            }
        }
    });
    addr
}

#[test]
fn ecmg_that_never_answers_gives_unavailable_and_timeouts() {
    let rt = runtime();
    let addr = slow_ecmg(&rt, None);
    let mut g = SimulcryptEcmg::start(client(addr, 3)).unwrap();
    g.wait_ready(Duration::from_secs(20)).unwrap();
    let (a, b) = (cw(), cw());
    assert!(ecm_for(&mut g, 0, &a, &b, Duration::from_millis(800)).is_none());
    assert!(
        g.stats()
            .unavailable
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // max_comp_time 100 ms: timeout after 300 ms, resent, counted
    assert!(wait_until(Duration::from_secs(20), || {
        g.stats()
            .timeouts
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    }));
    assert_eq!(
        g.stats()
            .ecms_delivered
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn ecmg_that_answers_late_is_counted_and_the_ecm_still_used() {
    let rt = runtime();
    let addr = slow_ecmg(&rt, Some(Duration::from_millis(180)));
    let mut g = SimulcryptEcmg::start(client(addr, 2)).unwrap();
    g.wait_ready(Duration::from_secs(20)).unwrap();
    let (a, b) = (cw(), cw());
    let mut out = Vec::new();
    let req = EcmRequest {
        period: CryptoPeriod(4),
        parity: CryptoPeriod(4).parity(),
        current: &a,
        next: &b,
        ecm_pid: Pid::new(0x100),
        ca_system_id: 0x0B00,
    };
    // the first call cannot have it: generate never waits, and the ECMG takes 180 ms
    let t = std::time::Instant::now();
    assert!(matches!(
        g.generate(&req, &mut out),
        Err(EcmError::Unavailable(_))
    ));
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "generate waited {:?} for the ECMG",
        t.elapsed()
    );
    let sec = ecm_for(&mut g, 4, &a, &b, Duration::from_secs(20)).unwrap();
    assert_eq!(sec, [0x80, 0x70, 2, 0xAB, 0xCD]);
    assert!(g.stats().late.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    // where waiting is allowed (before the first packet, a file run), wait_for_ecm waits
    // for the answer, and generate then takes it at once
    let (c, d) = (cw(), cw());
    let req = EcmRequest {
        period: CryptoPeriod(5),
        parity: CryptoPeriod(5).parity(),
        current: &c,
        next: &d,
        ecm_pid: Pid::new(0x100),
        ca_system_id: 0x0B00,
    };
    let t = std::time::Instant::now();
    assert!(g.wait_for_ecm(&req, Duration::from_secs(20)));
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    out.clear();
    g.generate(&req, &mut out).unwrap();
    assert_eq!(out[0], 0x81);
    // and gives up when the bound runs out
    let (e, f) = (cw(), cw());
    let req = EcmRequest {
        period: CryptoPeriod(6),
        parity: CryptoPeriod(6).parity(),
        current: &e,
        next: &f,
        ecm_pid: Pid::new(0x100),
        ca_system_id: 0x0B00,
    };
    assert!(!g.wait_for_ecm(&req, Duration::from_millis(20)));
}

fn status_of(m: Option<EcmgMessage>) -> (u16, Option<u16>, Vec<u16>) {
    match m {
        Some(EcmgMessage::ChannelError {
            channel_id, status, ..
        }) => (channel_id, None, status),
        Some(EcmgMessage::StreamError {
            channel_id,
            stream_id,
            status,
            ..
        }) => (channel_id, Some(stream_id), status),
        other => panic!("expected an error message, got {other:?}"),
    }
}

#[test]
fn malformed_messages_get_the_right_error_codes_then_the_link_recovers() {
    let rt = runtime();
    let mut server = start_ecmg(
        &rt,
        "127.0.0.1:0".parse().unwrap(),
        EcmgServerConfig {
            super_cas_id: Some(SUPER_CAS_ID),
            max_streams: 2,
            ..EcmgServerConfig::default()
        },
    );
    let mut r = Raw::connect(server.addr);
    // before channel_setup: unknown channel
    r.send_ecmg(3, &EcmgMessage::ChannelTest { channel_id: 5 });
    assert_eq!(status_of(r.read_ecmg()).2, [0x0006]);
    // a Super_CAS_id not served
    r.send_ecmg(
        3,
        &EcmgMessage::ChannelSetup {
            channel_id: 5,
            super_cas_id: 0x1234_0000,
        },
    );
    assert_eq!(status_of(r.read_ecmg()).2, [0x0005]);
    r.send_ecmg(
        3,
        &EcmgMessage::ChannelSetup {
            channel_id: 5,
            super_cas_id: SUPER_CAS_ID,
        },
    );
    assert!(matches!(r.read_ecmg(), Some(EcmgMessage::ChannelStatus(s)) if s.channel_id == 5));
    // unknown message_type
    r.send_bytes(&[3, 0x0F, 0x0F, 0, 0]);
    assert_eq!(status_of(r.read_ecmg()).2, [0x0003]);
    // unsupported version
    r.send_bytes(&[9, 0, 2, 0, 6, 0, 0x0E, 0, 2, 0, 5]);
    assert_eq!(status_of(r.read_ecmg()).2, [0x0002]);
    // inconsistent parameter length (ECM_channel_id of 3 bytes)
    r.send_bytes(&[3, 0, 2, 0, 7, 0, 0x0E, 0, 3, 0, 0, 5]);
    assert_eq!(status_of(r.read_ecmg()).2, [0x000F]);
    // unknown parameter type
    r.send_bytes(&[3, 0, 2, 0, 10, 0, 0x0E, 0, 2, 0, 5, 0x55, 0x55, 0, 0]);
    assert_eq!(status_of(r.read_ecmg()).2, [0x000E]);
    // missing mandatory parameter
    r.send_bytes(&[3, 0, 2, 0, 0]);
    assert_eq!(status_of(r.read_ecmg()).2, [0x0010]);
    // another channel id
    r.send_ecmg(3, &EcmgMessage::ChannelTest { channel_id: 6 });
    assert_eq!(status_of(r.read_ecmg()).2, [0x0006]);
    // streams: unknown, in use, ECM_id in use, too many
    let setup = |s, e| EcmgMessage::StreamSetup {
        channel_id: 5,
        stream_id: s,
        ecm_id: e,
        nominal_cp_duration: 10,
    };
    r.send_ecmg(
        3,
        &EcmgMessage::StreamTest {
            channel_id: 5,
            stream_id: 1,
        },
    );
    assert_eq!(status_of(r.read_ecmg()), (5, Some(1), vec![0x0007]));
    r.send_ecmg(3, &setup(1, 1));
    assert!(matches!(
        r.read_ecmg(),
        Some(EcmgMessage::StreamStatus {
            stream_id: 1,
            ecm_id: 1,
            ..
        })
    ));
    r.send_ecmg(3, &setup(1, 2));
    assert_eq!(status_of(r.read_ecmg()).2, [0x0014]);
    r.send_ecmg(3, &setup(2, 1));
    assert_eq!(status_of(r.read_ecmg()).2, [0x0015]);
    r.send_ecmg(3, &setup(2, 2));
    assert!(matches!(
        r.read_ecmg(),
        Some(EcmgMessage::StreamStatus { stream_id: 2, .. })
    ));
    r.send_ecmg(3, &setup(3, 3));
    assert_eq!(status_of(r.read_ecmg()).2, [0x0009]);
    // CW_provision: unknown stream, not enough CWs, bad access criteria
    let prov = |stream_id, cps: &[u16], ac: Vec<u8>| {
        EcmgMessage::CwProvision(CwProvision {
            channel_id: 5,
            stream_id,
            cp_number: 10,
            cw_encryption: None,
            cp_cw: cps
                .iter()
                .map(|&cp_number| CpCw {
                    cp_number,
                    cw: cw(),
                })
                .collect(),
            cp_duration: Some(10),
            access_criteria: Some(ac),
        })
    };
    r.send_ecmg(3, &prov(9, &[10, 11], vec![0, 0, 0, 1]));
    assert_eq!(status_of(r.read_ecmg()), (5, Some(9), vec![0x0007]));
    r.send_ecmg(3, &prov(1, &[10], vec![0, 0, 0, 1]));
    assert_eq!(status_of(r.read_ecmg()), (5, Some(1), vec![0x000B]));
    r.send_ecmg(3, &prov(1, &[10, 11], vec![0x22; 12]));
    assert_eq!(status_of(r.read_ecmg()).2, [0x0011]);
    // a stream-level message with a bad parameter gets a stream_error
    r.send_bytes(&[
        3, 0x01, 0x02, 0, 16, 0, 0x0E, 0, 2, 0, 5, 0, 0x0F, 0, 2, 0, 1, 0x44, 0x44, 0, 0,
    ]);
    assert_eq!(status_of(r.read_ecmg()), (5, Some(1), vec![0x000E]));
    // and the link recovers: a good CW_provision gets its ECM, a test its status
    r.send_ecmg(3, &prov(1, &[10, 11], vec![0, 0, 0, 1]));
    match r.read_ecmg() {
        Some(EcmgMessage::EcmResponse {
            cp_number: 10,
            datagram,
            ..
        }) => {
            assert_eq!(parse_test_ecm(&datagram).access, 1)
        }
        other => panic!("expected ECM_response, got {other:?}"),
    }
    r.send_ecmg(
        3,
        &EcmgMessage::StreamCloseRequest {
            channel_id: 5,
            stream_id: 2,
        },
    );
    assert!(matches!(
        r.read_ecmg(),
        Some(EcmgMessage::StreamCloseResponse { stream_id: 2, .. })
    ));
    r.send_ecmg(3, &EcmgMessage::ChannelTest { channel_id: 5 });
    assert!(matches!(r.read_ecmg(), Some(EcmgMessage::ChannelStatus(_))));
    // a message too long to frame: channel_error 0x0004, then the connection closes
    r.send_bytes(&[3, 0, 2, 0xFF, 0xFF]);
    assert_eq!(status_of(r.read_ecmg()).2, [0x0004]);
    assert!(
        r.read_frame().is_none(),
        "connection closed after an unframeable message"
    );
    assert!(
        server
            .stats
            .errors_sent
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 17
    );

    // random garbage on a fresh connection: errors or a close, never a crash
    let mut x: u64 = 0x1234_5678;
    for _ in 0..20 {
        let mut r = Raw::connect(server.addr);
        let junk: Vec<u8> = (0..200)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = std::io::Write::write_all(&mut r.sock, &junk);
        let _ = r.sock.shutdown(std::net::Shutdown::Write);
        while r.read_frame().is_some() {}
    }
    // the server still serves
    let mut r = Raw::connect(server.addr);
    r.send_ecmg(
        2,
        &EcmgMessage::ChannelSetup {
            channel_id: 1,
            super_cas_id: SUPER_CAS_ID,
        },
    );
    assert!(matches!(r.read_ecmg(), Some(EcmgMessage::ChannelStatus(_))));
    server.kill(&rt);
}

#[test]
fn builtin_cas_served_over_simulcrypt_seals_ecms_with_the_streams_access_criteria() {
    use castmux::cas::{AccessCriteria, EcmRef, Key128, PackageBit, ServiceKey, ServiceKeyRing};
    use castmux::simulcrypt::{EcmgServer, RingEcmBuilder};
    let rt = runtime();
    let ring = ServiceKeyRing::from_keys([ServiceKey {
        bit: PackageBit::new(0).unwrap(),
        version: 1,
        key: Key128::random(),
    }])
    .shared();
    let server = rt
        .block_on(EcmgServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            EcmgServerConfig::default(),
            std::sync::Arc::new(RingEcmBuilder::new(ring, 0x0B00)),
        ))
        .unwrap();
    let addr = server.local_addr().unwrap();
    rt.spawn(server.run(std::future::pending()));
    let mut g = SimulcryptEcmg::start(client(addr, 3)).unwrap();
    g.wait_ready(Duration::from_secs(20)).unwrap();
    let (a, b) = (cw(), cw());
    for p in [0u64, 1] {
        let sec = ecm_for(&mut g, p, &a, &b, Duration::from_secs(20)).expect("built-in ECM");
        let e = EcmRef::parse(&sec).expect("a castmux ECM");
        assert_eq!(sec[0], if p == 0 { 0x80 } else { 0x81 });
        assert_eq!(e.ca_system_id(), 0x0B00);
        assert_eq!(e.access(), AccessCriteria(1));
        // CWs are sealed: not in clear in the section
        assert!(!sec
            .windows(8)
            .any(|w| w == a.as_bytes() || w == b.as_bytes()));
    }
}

/// An ECMG that answers every CW_provision with a stream_error (a live run's view): each
/// `generate` answers Refused with the status by name, at once, never an ECM; the link stays
/// up and the period is asked again after the retry delay (the scrambler holds its key
/// meanwhile), each answer counted.
#[test]
fn refused_cw_provisions_are_reported_by_name_and_asked_again() {
    let rt = runtime();
    let addr = fake_ecmg(
        &rt,
        FakeEcmg {
            version: 3,
            refuse_cw: Some(0x000C),
        },
    );
    let mut c = client(addr, 3);
    // the retry delay is setup_timeout, at least 1 s
    c.setup_timeout = Duration::from_secs(1);
    let mut g = SimulcryptEcmg::start(c).unwrap();
    g.wait_ready(Duration::from_secs(20)).unwrap();
    let (a, b) = (cw(), cw());
    let req = EcmRequest {
        period: CryptoPeriod(0),
        parity: CryptoPeriod(0).parity(),
        current: &a,
        next: &b,
        ecm_pid: Pid::new(0x100),
        ca_system_id: 0x0B00,
    };
    let refused = |g: &SimulcryptEcmg| g.stats().refused.load(std::sync::atomic::Ordering::Relaxed);
    let mut out = Vec::new();
    let mut said = None;
    assert!(wait_until(Duration::from_secs(20), || {
        match g.generate(&req, &mut out) {
            Err(EcmError::Refused(why)) => {
                said = Some(why);
                true
            }
            _ => false,
        }
    }));
    let said = said.unwrap();
    assert!(
        said.contains("ECMG out of storage capacity (0x000c)") && said.contains("crypto period 0"),
        "{said}"
    );
    assert!(out.is_empty(), "no ECM bytes on a refusal");
    assert_eq!(refused(&g), 1);
    // asked again after the retry delay, refused again; the link never dropped
    assert!(wait_until(Duration::from_secs(20), || {
        let _ = g.generate(&req, &mut out);
        refused(&g) >= 2
    }));
    assert!(g.is_connected());
    assert_eq!(
        g.stats()
            .link_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
