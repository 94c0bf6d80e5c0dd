//! EMMG<->MUX through real sockets: castmux's EMMG client against castmux's mux-side server,
//! TCP and UDP, versions 2 and 3; an EMMG flooding above its allocation; malformed messages;
//! EMM clone (every subscribed pipeline gets every EMM, a stalled one loses only its own).

mod simulcrypt_support;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use castmux::scramble::{EmmData, EmmSource};
use castmux::simulcrypt::emmg_messages::ChannelIds;
use castmux::simulcrypt::{
    run_emmg, EmmMuxConfig, EmmMuxServer, EmmMuxStats, EmmQueueSource, EmmSubscribers, EmmgConfig,
    EmmgMessage, EmmgPace, EmmgStats, StreamIds,
};
use simulcrypt_support::*;

const CLIENT: u32 = 0x0B00_0001;

/// EMM sections 0x82 numbered 0..max, 100 bytes each.
struct Numbered {
    n: u32,
    max: u32,
}

fn emm(n: u32) -> Vec<u8> {
    let mut s = vec![0x82, 0x70, 97];
    s.extend_from_slice(&n.to_be_bytes());
    s.resize(100, 0xA5);
    s
}

impl EmmSource for Numbered {
    fn poll(&mut self, _now: Duration, out: &mut Vec<u8>) -> Option<EmmData> {
        if self.n >= self.max {
            return None;
        }
        out.extend_from_slice(&emm(self.n));
        self.n += 1;
        Some(EmmData::Sections)
    }
}

fn start_mux(
    rt: &tokio::runtime::Runtime,
    cfg: EmmMuxConfig,
) -> (
    std::net::SocketAddr,
    Arc<EmmMuxStats>,
    EmmQueueSource,
    tokio::sync::oneshot::Sender<()>,
) {
    let (server, source) = rt
        .block_on(EmmMuxServer::bind("127.0.0.1:0".parse().unwrap(), cfg))
        .unwrap();
    let addr = server.local_addr().unwrap();
    let stats = server.stats();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(server.run(async move {
        let _ = rx.await;
    }));
    (addr, stats, source, tx)
}

/// Run castmux's EMMG with `cfg` feeding EMMs 0..300 until the sender is used; its counters,
/// the sender and the task.
fn spawn_emmg(
    rt: &tokio::runtime::Runtime,
    cfg: EmmgConfig,
) -> (
    Arc<EmmgStats>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let stats = Arc::new(EmmgStats::default());
    let (quit, quit_rx) = tokio::sync::oneshot::channel::<()>();
    let st = stats.clone();
    let job = rt.spawn(async move {
        let mut source = Numbered { n: 0, max: 300 };
        run_emmg(cfg, &mut source, st, async move {
            let _ = quit_rx.await;
        })
        .await;
    });
    (stats, quit, job)
}

/// Drain the pipeline's end: the numbers of the EMMs, in order.
fn drain(src: &mut EmmQueueSource, into: &mut Vec<u32>) {
    let mut out = Vec::new();
    while let Some(kind) = src.poll(Duration::ZERO, &mut out) {
        assert_eq!(kind, EmmData::Sections);
        // sections waiting are handed over together, whole
        assert_eq!(out.len() % 100, 0);
        for s in out.chunks(100) {
            assert_eq!(s[0], 0x82);
            into.push(u32::from_be_bytes(s[3..7].try_into().unwrap()));
        }
        out.clear();
    }
}

#[test]
fn emmg_client_feeds_the_mux_over_tcp_and_udp_in_both_versions() {
    let rt = runtime();
    for version in [2u8, 3] {
        for udp in [false, true] {
            let (addr, mux_stats, mut src, stop) = start_mux(
                &rt,
                EmmMuxConfig {
                    client_id: Some(CLIENT),
                    max_bandwidth_kbps: 400,
                    ..EmmMuxConfig::default()
                },
            );
            let mut cfg = EmmgConfig::new(addr.to_string(), CLIENT);
            cfg.version = version;
            cfg.udp = udp;
            cfg.bandwidth_kbps = 1000; // more than the mux gives: allocation is 400
            let (stats, quit, job) = spawn_emmg(&rt, cfg);
            let mut got = Vec::new();
            assert!(
                wait_until(Duration::from_secs(30), || {
                    drain(&mut src, &mut got);
                    got.len() >= 300
                }),
                "v{version} udp={udp}: {} of 300 EMMs arrived, mux {:?}",
                got.len(),
                mux_stats
            );
            assert_eq!(got, (0..300).collect::<Vec<_>>(), "in order, none lost");
            assert_eq!(stats.allocated_kbps.load(Relaxed), 400);
            assert_eq!(mux_stats.dropped_over_bandwidth.load(Relaxed), 0);
            assert_eq!(mux_stats.dropped_queue_full.load(Relaxed), 0);
            assert_eq!(stats.errors_received.load(Relaxed), 0);
            let _ = quit.send(());
            let _ = rt.block_on(job);
            let _ = stop.send(());
        }
    }
}

fn ids() -> StreamIds {
    StreamIds {
        client_id: CLIENT,
        channel_id: 3,
        stream_id: 4,
    }
}

fn setup(r: &mut Raw, kbps: u16) {
    r.send_emmg(
        3,
        &EmmgMessage::ChannelSetup {
            ids: ChannelIds {
                client_id: CLIENT,
                channel_id: 3,
            },
            section_tspkt_flag: false,
        },
    );
    assert!(matches!(
        r.read_emmg(),
        Some(EmmgMessage::ChannelStatus { .. })
    ));
    r.send_emmg(
        3,
        &EmmgMessage::StreamSetup {
            ids: ids(),
            data_id: 9,
            data_type: 0,
        },
    );
    assert!(matches!(
        r.read_emmg(),
        Some(EmmgMessage::StreamStatus { data_id: 9, .. })
    ));
    r.send_emmg(
        3,
        &EmmgMessage::StreamBwRequest {
            ids: ids(),
            bandwidth: Some(kbps),
        },
    );
    assert!(matches!(
        r.read_emmg(),
        Some(EmmgMessage::StreamBwAllocation { bandwidth: Some(b), .. }) if b == kbps
    ));
}

#[test]
fn emmg_flooding_above_its_allocation_is_policed_and_counted() {
    let rt = runtime();
    let (addr, stats, mut src, _stop) = start_mux(&rt, EmmMuxConfig::default());
    let mut r = Raw::connect(addr);
    setup(&mut r, 64); // 8000 bytes/s
                       // 2000 EMMs of 100 bytes (1 packet each on air) in well under a second: ~376 kB
    let t = std::time::Instant::now();
    for batch in 0..100u32 {
        let datagrams = (0..20).map(|i| emm(batch * 20 + i)).collect();
        r.send_emmg(
            3,
            &EmmgMessage::DataProvision {
                client_id: CLIENT,
                channel_id: Some(3),
                stream_id: Some(4),
                data_id: 9,
                datagrams,
            },
        );
    }
    // the mux says so (at most once a second)
    match r.read_emmg() {
        Some(EmmgMessage::StreamError { status, .. }) => assert_eq!(status, [0x000F]),
        other => panic!("expected stream_error exceeded bandwidth, got {other:?}"),
    }
    let elapsed = t.elapsed().as_secs_f64();
    assert!(wait_until(Duration::from_secs(10), || stats
        .data_provisions
        .load(Relaxed)
        == 100));
    let mut got = Vec::new();
    drain(&mut src, &mut got);
    let dropped = stats.dropped_over_bandwidth.load(Relaxed);
    assert_eq!(
        got.len() as u64 + dropped,
        2000,
        "every EMM queued or counted as dropped"
    );
    assert!(dropped > 1000, "dropped {dropped}");
    // what got through fits the allocation: burst (8192 B) + rate * time, 188 bytes each
    let allowed = (8192.0 + 8000.0 * (elapsed + 1.0)) / 188.0;
    assert!(
        (got.len() as f64) <= allowed,
        "{} EMMs passed, allowed {allowed}",
        got.len()
    );
    // the link still works
    r.send_emmg(3, &EmmgMessage::StreamTest(ids()));
    assert!(matches!(
        r.read_emmg(),
        Some(EmmgMessage::StreamStatus { .. })
    ));
}

/// castmux's own EMMG told to flood (a load test's fault): it sends at its fixed pace far
/// above the 64 kbit/s it was given, the mux drops and counts the excess, and what passes
/// fits the allocation.
#[test]
fn the_emmg_client_paced_above_its_allocation_floods_and_is_policed() {
    let rt = runtime();
    let (addr, mux_stats, mut src, _stop) = start_mux(&rt, EmmMuxConfig::default());
    let mut cfg = EmmgConfig::new(addr.to_string(), CLIENT);
    cfg.bandwidth_kbps = 64;
    cfg.pace = EmmgPace::Fixed(1_000_000);
    let stats = Arc::new(EmmgStats::default());
    let (quit, quit_rx) = tokio::sync::oneshot::channel::<()>();
    let st = stats.clone();
    let job = rt.spawn(async move {
        // never runs dry
        let mut source = Numbered {
            n: 0,
            max: u32::MAX,
        };
        run_emmg(cfg, &mut source, st, async move {
            let _ = quit_rx.await;
        })
        .await;
    });
    assert!(wait_until(Duration::from_secs(10), || stats
        .setups
        .load(Relaxed)
        == 1));
    let t = std::time::Instant::now();
    let mut got = Vec::new();
    while t.elapsed() < Duration::from_secs(2) {
        drain(&mut src, &mut got);
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = quit.send(());
    let _ = rt.block_on(job);
    let elapsed = t.elapsed().as_secs_f64();
    // the mux has read every message the client wrote
    let messages = stats.messages_sent.load(Relaxed);
    assert!(wait_until(Duration::from_secs(10), || mux_stats
        .data_provisions
        .load(Relaxed)
        == messages));
    drain(&mut src, &mut got);
    assert_eq!(stats.allocated_kbps.load(Relaxed), 64);
    // 1 Mbit/s on air is 665 EMMs of one packet a second
    let sent = stats.datagrams_sent.load(Relaxed);
    assert!(sent > 1000, "sent {sent}");
    let dropped = mux_stats.dropped_over_bandwidth.load(Relaxed);
    assert!(dropped > sent / 2, "dropped {dropped} of {sent}");
    assert!(stats.errors_received.load(Relaxed) >= 1, "{stats:?}");
    // burst (8192 B) + 8000 B/s, 188 bytes each on air
    let allowed = (8192.0 + 8000.0 * (elapsed + 1.0)) / 188.0;
    assert!(
        (got.len() as f64) <= allowed,
        "{} EMMs passed, allowed {allowed}",
        got.len()
    );
    assert!(!got.is_empty(), "the allocation still passes");
}

fn status_of(m: Option<EmmgMessage>) -> Vec<u16> {
    match m {
        Some(EmmgMessage::ChannelError { status, .. })
        | Some(EmmgMessage::StreamError { status, .. }) => status,
        other => panic!("expected an error message, got {other:?}"),
    }
}

#[test]
fn malformed_messages_get_the_right_error_codes() {
    let rt = runtime();
    let (addr, stats, mut src, _stop) = start_mux(
        &rt,
        EmmMuxConfig {
            client_id: Some(CLIENT),
            ..EmmMuxConfig::default()
        },
    );
    let mut r = Raw::connect(addr);
    let chan = ChannelIds {
        client_id: CLIENT,
        channel_id: 3,
    };
    // before setup
    r.send_emmg(3, &EmmgMessage::ChannelTest(chan));
    assert_eq!(status_of(r.read_emmg()), [0x0006]);
    // unknown client
    r.send_emmg(
        2,
        &EmmgMessage::ChannelSetup {
            ids: ChannelIds {
                client_id: 7,
                channel_id: 3,
            },
            section_tspkt_flag: false,
        },
    );
    assert_eq!(status_of(r.read_emmg()), [0x000E]);
    setup(&mut r, 100);
    // unknown message type, unknown parameter, inconsistent length, missing parameter
    r.send_bytes(&[3, 0x09, 0x99, 0, 0]);
    assert_eq!(status_of(r.read_emmg()), [0x0003]);
    r.send_bytes(&[
        3, 0, 0x12, 0, 14, 0, 1, 0, 4, 0x0B, 0, 0, 1, 0, 3, 0, 2, 0, 3,
    ]);
    assert!(r.read_emmg().is_some()); // a valid channel_test: status back
    r.send_bytes(&[
        3, 0, 0x12, 0, 18, 0, 1, 0, 4, 0x0B, 0, 0, 1, 0, 3, 0, 2, 0, 3, 0x66, 0x66, 0, 0,
    ]);
    assert_eq!(status_of(r.read_emmg()), [0x000A]);
    r.send_bytes(&[
        3, 0, 0x12, 0, 15, 0, 1, 0, 4, 0x0B, 0, 0, 1, 0, 3, 0, 3, 0, 3, 0,
    ]);
    assert_eq!(status_of(r.read_emmg()), [0x000B]);
    r.send_bytes(&[3, 0, 0x12, 0, 8, 0, 1, 0, 4, 0x0B, 0, 0, 1]);
    assert_eq!(status_of(r.read_emmg()), [0x000C]);
    // a stream of private data (not EMM), a stream id in use, unknown stream, unknown data_id
    let other = StreamIds {
        stream_id: 5,
        ..ids()
    };
    r.send_emmg(
        3,
        &EmmgMessage::StreamSetup {
            ids: other,
            data_id: 10,
            data_type: 1,
        },
    );
    assert_eq!(status_of(r.read_emmg()), [0x000D]);
    r.send_emmg(
        3,
        &EmmgMessage::StreamSetup {
            ids: ids(),
            data_id: 11,
            data_type: 0,
        },
    );
    assert_eq!(status_of(r.read_emmg()), [0x0012]);
    r.send_emmg(3, &EmmgMessage::StreamTest(other));
    assert_eq!(status_of(r.read_emmg()), [0x0005]);
    r.send_emmg(
        3,
        &EmmgMessage::DataProvision {
            client_id: CLIENT,
            channel_id: Some(3),
            stream_id: Some(4),
            data_id: 77,
            datagrams: vec![emm(1)],
        },
    );
    assert_eq!(status_of(r.read_emmg()), [0x0010]);
    // datagrams that are not EMM sections are rejected and counted, good ones pass
    r.send_emmg(
        3,
        &EmmgMessage::DataProvision {
            client_id: CLIENT,
            channel_id: None,
            stream_id: None,
            data_id: 9,
            datagrams: vec![vec![0x00, 0xB0, 1, 0], emm(42)],
        },
    );
    r.send_emmg(3, &EmmgMessage::StreamTest(ids()));
    assert!(matches!(
        r.read_emmg(),
        Some(EmmgMessage::StreamStatus { .. })
    ));
    assert_eq!(stats.rejected.load(Relaxed), 2); // data_id 77 + the PAT-looking datagram
    let mut got = Vec::new();
    drain(&mut src, &mut got);
    assert_eq!(got, [42]);
    // too long: channel_error then closed
    r.send_bytes(&[3, 0x02, 0x11, 0xFF, 0xFF]);
    assert_eq!(status_of(r.read_emmg()), [0x0004]);
    assert!(r.read_frame().is_none());
    // the channel was freed: a new connection may take it again
    let mut r = Raw::connect(addr);
    setup(&mut r, 10);
}

/// Bind a mux with `extra` more subscribers than the first: one subscribed before `run`,
/// the others through the handle while it runs.
fn start_mux_with(
    rt: &tokio::runtime::Runtime,
    cfg: EmmMuxConfig,
    extra: usize,
) -> (
    std::net::SocketAddr,
    Arc<EmmMuxStats>,
    EmmSubscribers,
    Vec<EmmQueueSource>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (server, first) = rt
        .block_on(EmmMuxServer::bind("127.0.0.1:0".parse().unwrap(), cfg))
        .unwrap();
    let mut sources = vec![first];
    if extra > 0 {
        sources.push(server.subscribe());
    }
    let addr = server.local_addr().unwrap();
    let stats = server.stats();
    let handle = server.subscriber_handle();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(server.run(async move {
        let _ = rx.await;
    }));
    while sources.len() < extra + 1 {
        sources.push(handle.subscribe());
    }
    (addr, stats, handle, sources, tx)
}

#[test]
fn emm_clone_gives_every_subscriber_the_same_emms_from_one_emmg() {
    let rt = runtime();
    for (n, udp) in [(2usize, false), (3, false), (3, true)] {
        let (addr, mux_stats, handle, mut sources, stop) = start_mux_with(
            &rt,
            EmmMuxConfig {
                client_id: Some(CLIENT),
                max_bandwidth_kbps: 400,
                ..EmmMuxConfig::default()
            },
            n - 1,
        );
        assert_eq!(handle.len(), n);
        let mut cfg = EmmgConfig::new(addr.to_string(), CLIENT);
        cfg.udp = udp;
        cfg.bandwidth_kbps = 400;
        let (_stats, quit, job) = spawn_emmg(&rt, cfg);
        let mut got = vec![Vec::new(); n];
        assert!(
            wait_until(Duration::from_secs(30), || {
                for (s, g) in sources.iter_mut().zip(&mut got) {
                    drain(s, g);
                }
                got.iter().all(|g| g.len() >= 300)
            }),
            "{n} subscribers, udp={udp}: got {:?} EMMs, mux {mux_stats:?}",
            got.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let want: Vec<u32> = (0..300).collect();
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g, &want, "subscriber {i} of {n}: every EMM, in order");
        }
        for s in &sources {
            assert_eq!((s.delivered, s.dropped()), (300, 0));
        }
        // policed once: 300 accepted chunks, not 300 per subscriber
        assert_eq!(mux_stats.queued.load(Relaxed), 300);
        assert_eq!(mux_stats.queued_bytes.load(Relaxed), 300 * 100);
        assert_eq!(mux_stats.dropped_queue_full.load(Relaxed), 0);
        assert_eq!(mux_stats.dropped_over_bandwidth.load(Relaxed), 0);
        let _ = quit.send(());
        let _ = rt.block_on(job);
        let _ = stop.send(());
    }
}

/// Send EMMs `from..to` in one data_provision and wait until the mux has handled it (the
/// stream_test after it is answered in order on the same connection).
fn provide(r: &mut Raw, from: u32, to: u32) {
    r.send_emmg(
        3,
        &EmmgMessage::DataProvision {
            client_id: CLIENT,
            channel_id: Some(3),
            stream_id: Some(4),
            data_id: 9,
            datagrams: (from..to).map(emm).collect(),
        },
    );
    r.send_emmg(3, &EmmgMessage::StreamTest(ids()));
    assert!(matches!(
        r.read_emmg(),
        Some(EmmgMessage::StreamStatus { .. })
    ));
}

#[test]
fn a_subscriber_never_polled_overflows_alone_and_is_counted() {
    let rt = runtime();
    let cfg = EmmMuxConfig {
        queue_len: 64,
        ..EmmMuxConfig::default()
    };
    let (addr, stats, _handle, mut sources, _stop) = start_mux_with(&rt, cfg, 1);
    let mut stalled = sources.pop().unwrap();
    let mut live = sources.pop().unwrap();
    let mut r = Raw::connect(addr);
    setup(&mut r, 1000); // a burst of 62500 bytes: the 200 EMMs below pass policing
    let mut got = Vec::new();
    for round in 0..10u32 {
        provide(&mut r, round * 20, round * 20 + 20);
        drain(&mut live, &mut got);
    }
    assert_eq!(
        got,
        (0..200).collect::<Vec<_>>(),
        "the live one loses nothing"
    );
    assert_eq!(live.dropped(), 0);
    assert_eq!(stalled.dropped(), 200 - 64);
    assert_eq!(stats.dropped_queue_full.load(Relaxed), 200 - 64);
    assert_eq!(stats.queued.load(Relaxed), 200);
    // what the stalled one kept is the head of the stream, in order
    let mut kept = Vec::new();
    drain(&mut stalled, &mut kept);
    assert_eq!(kept, (0..64).collect::<Vec<_>>());
    // the EMMG link never noticed
    assert_eq!(stats.errors_sent.load(Relaxed), 0);
}

#[test]
fn dropping_a_subscriber_mid_stream_unsubscribes_it() {
    let rt = runtime();
    let (addr, stats, handle, mut sources, _stop) = start_mux_with(&rt, EmmMuxConfig::default(), 2);
    let mut r = Raw::connect(addr);
    setup(&mut r, 1000);
    let mut got = vec![Vec::new(); 3];
    provide(&mut r, 0, 50);
    for (s, g) in sources.iter_mut().zip(&mut got) {
        drain(s, g);
    }
    let gone = sources.remove(1);
    drop(gone);
    got.remove(1);
    assert_eq!(handle.len(), 2);
    provide(&mut r, 50, 100);
    for (s, g) in sources.iter_mut().zip(&mut got) {
        drain(s, g);
        assert_eq!(g, &(0..100).collect::<Vec<_>>());
    }
    assert_eq!(stats.dropped_queue_full.load(Relaxed), 0);
    // a pipeline joining late gets what comes from then on
    let mut late = handle.subscribe();
    provide(&mut r, 100, 110);
    let mut late_got = Vec::new();
    drain(&mut late, &mut late_got);
    assert_eq!(late_got, (100..110).collect::<Vec<_>>());
    // with nobody left, accepted EMMs are counted as going nowhere
    sources.clear();
    drop(late);
    assert!(handle.is_empty());
    provide(&mut r, 110, 115);
    assert_eq!(stats.dropped_no_subscriber.load(Relaxed), 5);
    assert_eq!(stats.queued.load(Relaxed), 110);
}
