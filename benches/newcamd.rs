//! Load harness for the newcamd server: N clients on loopback, each sending an ECM every
//! period, for a while; prints ECM -> CW latency percentiles (hdrhistogram).
//!
//! `cargo bench --bench newcamd` (defaults: 100 clients, 100 ms, 10 s). Override with
//! NEWCAMD_BENCH_CLIENTS, NEWCAMD_BENCH_PERIOD_MS, NEWCAMD_BENCH_SECS. The server and the
//! clients run on separate tokio runtimes (2 threads each), as two processes would. The
//! card is a real software card and every request is a fresh castmux ECM (no cache hits).

use std::sync::Arc;
use std::time::{Duration, Instant};

use castmux::cas::ecm::EcmParams;
use castmux::cas::{
    build_ecm, derive_card_key, AccessCriteria, CardFile, CardSerial, Entitlements, Key128,
    PackageBit, ServiceKey, ServiceKeyRing, CARD_FILE_FORMAT,
};
use castmux::net::AcceptLimits;
use castmux::softcard::newcamd::{
    DesKey14, NewcamdClient, NewcamdServer, ServerConfig, SoftCardBackend, Users,
};
use castmux::softcard::SoftCard;
use hdrhistogram::Histogram;

const CAID: u16 = 0x4ae1;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn service_key() -> ServiceKey {
    ServiceKey {
        bit: PackageBit::new(0).expect("bit"),
        version: 1,
        key: Key128::from_bytes([0x42; 16]),
    }
}

/// A real software card entitled to package 0: every ECM costs a key unwrap and an
/// AES-GCM open, as in production.
fn card() -> SoftCardBackend {
    let serial = CardSerial(1);
    let card = SoftCard::from_card_file(CardFile {
        format: CARD_FILE_FORMAT,
        serial,
        ca_system_id: CAID,
        card_key: derive_card_key(&Key128::from_bytes([7; 16]), serial),
        entitlements: Entitlements {
            access: AccessCriteria(1),
            start: now() - 3600,
            finish: now() + 86_400,
            pair: 0,
            enabled: true,
            events: vec![],
        },
        service_keys: vec![service_key()],
        issued_at: now() - 3600,
    })
    .expect("card");
    SoftCardBackend::new(card)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let clients = env_u64("NEWCAMD_BENCH_CLIENTS", 100) as usize;
    let period = Duration::from_millis(env_u64("NEWCAMD_BENCH_PERIOD_MS", 100));
    let run_for = Duration::from_secs(env_u64("NEWCAMD_BENCH_SECS", 10));
    let key_hex = "0102030405060708091011121314";

    let mut users = Users::default();
    users.add_flag("bench:bench").expect("user");
    let mut cfg = ServerConfig::new(DesKey14::from_hex(key_hex).expect("key"), users);
    cfg.max_services = clients + 1;
    // every bench client connects from 127.0.0.1, all logging in at once: that address may
    // take every slot, and the logins get time on a busy machine
    cfg.accept = AcceptLimits::new(clients + 16, Some(clients + 16), Duration::from_secs(30))
        .expect("connection limits");
    let server = Arc::new(NewcamdServer::new(cfg, card()));

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let s = server.clone();
    server_rt.spawn(async move {
        s.run(listener, async {
            let _ = stopped.await;
        })
        .await
    });

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    let (hist, errors, login_time) = client_rt.block_on(async move {
        let key = DesKey14::from_hex(key_hex).expect("key");
        let t_login = Instant::now();
        let mut conns = Vec::with_capacity(clients);
        for _ in 0..clients {
            let c = NewcamdClient::connect(addr, "bench", "bench", &key, Duration::from_secs(30))
                .await
                .expect("login");
            conns.push(c);
        }
        let login_time = t_login.elapsed();
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for (i, mut c) in conns.into_iter().enumerate() {
            let ring = ServiceKeyRing::from_keys([service_key()]);
            // spread the clients over one period so they do not all fire at once
            let offset = period.mul_f64(i as f64 / clients as f64);
            tasks.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
                let mut errors = 0u64;
                let mut tick = tokio::time::interval_at(start + offset, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n: u32 = 0;
                while start.elapsed() < run_for {
                    tick.tick().await;
                    n = n.wrapping_add(1);
                    // a new ECM every time (fresh nonce and content key: no cache hits)
                    let mut sec = Vec::new();
                    let cw = [n as u8, (n >> 8) as u8, i as u8, 0, 1, 2, 3, 6];
                    build_ecm(
                        &ring,
                        &EcmParams {
                            ca_system_id: CAID,
                            access: AccessCriteria(1),
                            period: u64::from(n),
                            timestamp: now(),
                            even: &cw,
                            odd: &cw,
                        },
                        &mut sec,
                    )
                    .expect("ecm");
                    let t = Instant::now();
                    match c.ecm(i as u16 + 1, &sec).await {
                        Ok(Some(_)) => {
                            let us = t.elapsed().as_micros().max(1) as u64;
                            let _ = h.record(us.min(60_000_000));
                        }
                        _ => errors += 1,
                    }
                }
                (h, errors)
            }));
        }
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
        let mut errors = 0;
        for t in tasks {
            let (h, e) = t.await.expect("client task");
            all.add(&h).expect("merge");
            errors += e;
        }
        (all, errors, login_time)
    });
    let _ = stop.send(());
    let st = server.stats();
    let ms = |us: u64| us as f64 / 1000.0;
    println!("newcamd ECM -> CW latency on loopback (server and clients: 2 tokio threads each)");
    println!(
        "| clients | period | duration | ECMs answered | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} ms | {} s | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
        clients,
        period.as_millis(),
        run_for.as_secs(),
        hist.len(),
        errors,
        ms(hist.value_at_quantile(0.50)),
        ms(hist.value_at_quantile(0.90)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.value_at_quantile(0.999)),
        ms(hist.max()),
    );
    println!(
        "logins: {} in {:.1} ms; server counters: answered {}, cache hits {}, refused {}",
        st.logins,
        login_time.as_secs_f64() * 1000.0,
        st.ecm_answered,
        st.ecm_cache_hits,
        st.ecm_refused_card + st.ecm_refused_service_limit
    );
    let p99 = ms(hist.value_at_quantile(0.99));
    println!(
        "target p99 < 5 ms: {}",
        if p99 < 5.0 { "met" } else { "NOT met" }
    );
}
