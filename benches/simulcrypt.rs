//! SimulCrypt load: 100 ECM streams on one ECMG channel with 1 s crypto periods
//! (CW_provision -> ECM_response latency, p50/p99/max, hdrhistogram) and EMMG data_provision
//! ingest through the mux-side server (Mbit/s, losses). Loopback; prints a table.
//!
//! ECMs are built by the built-in CAS (`RingEcmBuilder`: AES-GCM sealed CWs, the content key
//! wrapped under the package's service key), as `castmux ecmg` serves them.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use castmux::cas::{Key128, PackageBit, ServiceKey, ServiceKeyRing};
use castmux::scramble::{Cw, EmmData, EmmSource};
use castmux::simulcrypt::conn::FrameReader;
use castmux::simulcrypt::{
    run_emmg, CpCw, CwProvision, EcmgMessage, EcmgServer, EcmgServerConfig, EmmMuxConfig,
    EmmMuxServer, EmmgConfig, EmmgStats, RingEcmBuilder,
};
use tokio::io::AsyncWriteExt;

/// The built-in ECMG with one package (bit 0, the access criteria 00000001 the SCS sends).
fn builtin_builder() -> RingEcmBuilder {
    let bit = PackageBit::new(0).unwrap();
    let keys = (1..=2).map(|version| ServiceKey {
        bit,
        version,
        key: Key128::random(),
    });
    RingEcmBuilder::new(ServiceKeyRing::from_keys(keys).shared(), CA_SYSTEM_ID)
}

/// The CA_system_ID in the Super_CAS_id the SCS announces (0x0B00_0001).
const CA_SYSTEM_ID: u16 = 0x0B00;

const STREAMS: u16 = 100;
const PERIODS: u16 = 10;

async fn ecm_load() -> hdrhistogram::Histogram<u64> {
    let server = EcmgServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        EcmgServerConfig {
            max_streams: 200,
            ..EcmgServerConfig::default()
        },
        Arc::new(builtin_builder()),
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.set_nodelay(true).unwrap();
    let (rd, mut wr) = sock.into_split();
    let mut rd = FrameReader::new(rd);
    let mut buf = Vec::new();
    let send = |m: EcmgMessage, buf: &mut Vec<u8>| {
        buf.clear();
        m.encode(3, buf).unwrap();
    };
    send(
        EcmgMessage::ChannelSetup {
            channel_id: 1,
            super_cas_id: 0x0B00_0001,
        },
        &mut buf,
    );
    wr.write_all(&buf).await.unwrap();
    rd.next().await.unwrap().unwrap();
    for s in 0..STREAMS {
        send(
            EcmgMessage::StreamSetup {
                channel_id: 1,
                stream_id: s,
                ecm_id: s,
                nominal_cp_duration: 10,
            },
            &mut buf,
        );
        wr.write_all(&buf).await.unwrap();
        rd.next().await.unwrap().unwrap();
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
    let mut sent_at = vec![Instant::now(); usize::from(STREAMS)];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for cp in 0..PERIODS {
        tick.tick().await;
        // every stream's period starts together: the worst burst
        let mut batch = Vec::new();
        for s in 0..STREAMS {
            send(
                EcmgMessage::CwProvision(CwProvision {
                    channel_id: 1,
                    stream_id: s,
                    cp_number: cp,
                    cw_encryption: None,
                    cp_cw: vec![
                        CpCw {
                            cp_number: cp,
                            cw: Cw::from_slice(&[1; 8]).unwrap(),
                        },
                        CpCw {
                            cp_number: cp + 1,
                            cw: Cw::from_slice(&[2; 8]).unwrap(),
                        },
                    ],
                    cp_duration: Some(10),
                    access_criteria: Some(vec![0, 0, 0, 1]),
                }),
                &mut buf,
            );
            sent_at[usize::from(s)] = Instant::now();
            // one write per message, as an SCS sends them
            wr.write_all(&buf).await.unwrap();
            batch.push(s);
        }
        for _ in 0..STREAMS {
            let f = rd.next().await.unwrap().unwrap();
            let now = Instant::now();
            match EcmgMessage::decode(&f).unwrap().1 {
                EcmgMessage::EcmResponse {
                    stream_id,
                    cp_number,
                    ..
                } => {
                    assert_eq!(cp_number, cp);
                    let us = now
                        .duration_since(sent_at[usize::from(stream_id)])
                        .as_micros();
                    hist.record(us.max(1) as u64).unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    hist
}

struct Flood(u32);
impl EmmSource for Flood {
    fn poll(&mut self, _now: Duration, out: &mut Vec<u8>) -> Option<EmmData> {
        // 183-byte sections: one TS packet each on air
        self.0 = self.0.wrapping_add(1);
        out.extend_from_slice(&[0x82, 0x70, 180]);
        out.extend_from_slice(&self.0.to_be_bytes());
        out.resize(out.len() + 176, 0x5A);
        Some(EmmData::Sections)
    }
}

async fn emm_ingest(udp: bool, kbps: u16, secs: u64) -> (f64, u64, u64, u64) {
    let (server, mut src) = EmmMuxServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        EmmMuxConfig {
            max_bandwidth_kbps: kbps,
            queue_len: 65536,
            ..EmmMuxConfig::default()
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let mux = server.stats();
    tokio::spawn(server.run(std::future::pending()));
    let mut cfg = EmmgConfig::new(addr.to_string(), 0x0B00_0001);
    cfg.udp = udp;
    cfg.bandwidth_kbps = kbps;
    let stats = Arc::new(EmmgStats::default());
    let st = stats.clone();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let client = tokio::spawn(async move {
        let mut f = Flood(0);
        run_emmg(cfg, &mut f, st, async move {
            let _ = stop_rx.await;
        })
        .await;
    });
    // the pipeline side drains in its own thread until the sender has stopped
    let drained = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(secs + 2);
        let (mut count, mut bytes, mut last, mut gaps) = (0u64, 0u64, 0u32, 0u64);
        let mut out = Vec::new();
        let (mut first, mut last_t) = (None, Instant::now());
        while Instant::now() < end {
            out.clear();
            if src.poll(Duration::ZERO, &mut out).is_some() {
                first.get_or_insert_with(Instant::now);
                last_t = Instant::now();
                let n = u32::from_be_bytes(out[3..7].try_into().unwrap());
                if last != 0 && n != last + 1 {
                    gaps += 1;
                }
                last = n;
                count += 1;
                bytes += out.len() as u64;
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let t = first.map_or(1.0, |f| last_t.duration_since(f).as_secs_f64().max(0.001));
        (count, bytes, gaps, t)
    });
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let _ = stop.send(());
    let _ = client.await;
    let (count, bytes, gaps, t) = tokio::task::spawn_blocking(move || drained.join().unwrap())
        .await
        .unwrap();
    let sent = stats.datagrams_sent.load(Relaxed);
    let dropped = mux.dropped_over_bandwidth.load(Relaxed) + mux.dropped_queue_full.load(Relaxed);
    (
        bytes as f64 * 8.0 / t / 1e6,
        sent.saturating_sub(count) + dropped,
        gaps,
        stats.allocated_kbps.load(Relaxed),
    )
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs it too: keep that short
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let h = rt.block_on(ecm_load());
    println!("SimulCrypt load (loopback)");
    println!("| test | samples | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    println!(
        "| CW_provision -> ECM_response, {STREAMS} streams, 1 s CP | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    let secs = if quick { 1 } else { 5 };
    println!("| test | allocated | ingest | lost | sequence gaps |");
    println!("|---|---|---|---|---|");
    for udp in [false, true] {
        let (mbps, lost, gaps, alloc) = rt.block_on(emm_ingest(udp, 12_000, secs));
        println!(
            "| EMMG data_provision over {} | {alloc} kbit/s | {mbps:.2} Mbit/s | {lost} | {gaps} |",
            if udp { "UDP" } else { "TCP" }
        );
    }
}
