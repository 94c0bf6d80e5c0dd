//! The operator's surface under load, against the real binary, castmux pinned to one core
//! and the load to the other (castmux's CPU read from /proc over the measured window).
//!
//! Two runs, printed side by side with their targets (issue 12):
//! - **TVCAS card updates**: `castmux serve` over a store of CARDS cards (default 1000);
//!   CLIENTS keep-alive connections (default 4) each change the name of its share of the
//!   cards with `GET /api.php?api_key=…&serial_no=…&set[name]=…` for SECS seconds (default
//!   10), each waiting for its answer. Updates per second and the answer time (p50, p99,
//!   max). Afterwards every card is read back through the same API and must carry the last
//!   name set for it. Target: ≥ 1,000 updates per second.
//! - **`/metrics` of a big head-end**: `castmux headend` with CHANNELS channels (default
//!   300, UDP inputs, fixed CWs) and `[http]`; SCRAPES scrapes (default 200) one after the
//!   other on one connection. Time per scrape (p50, p99, max) and its size. Target: < 50 ms.
//!
//! Run: `cargo bench --bench http` (env: CASTMUX_BENCH_CARDS, CASTMUX_BENCH_CLIENTS,
//! CASTMUX_BENCH_SECS, CASTMUX_BENCH_CHANNELS, CASTMUX_BENCH_SCRAPES).

use std::path::Path;
use std::time::Instant;

use castmux::loadtest::headend::cpu_seconds;
use hdrhistogram::Histogram;

#[path = "support/load.rs"]
mod load;
use load::{castmux_db, env_num, pin_to};
#[path = "support/http_client.rs"]
mod http_client;
use http_client::{set_name_path, start, tvcas_updates, Conn};

const KEY: &str = "bench-api-key-0123456789";

fn percentile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

struct Updates {
    cards: usize,
    clients: usize,
    updates: u64,
    per_second: f64,
    hist: Histogram<u64>,
    cpu_pct: f64,
    verified: usize,
}

fn card_updates(dir: &Path, cards: usize, clients: usize, secs: f64) -> Updates {
    let db = dir.join("cards.db");
    castmux_db(&db, &["init"]);
    let csv = dir.join("cards.csv");
    let mut text = String::from("serial_no,name,info,access_criteria,pair,start,finish\n");
    for i in 0..cards {
        text.push_str(&format!(
            "{},card {i},bench,01010101,0,1586693700,1900000000\n",
            3_000_000_000u64 + i as u64
        ));
    }
    std::fs::write(&csv, text).expect("write cards.csv");
    castmux_db(&db, &["card", "import", csv.to_str().expect("utf-8 path")]);
    let (mut child, addr) = start(&db, KEY, &["serve", "--listen", "127.0.0.1:0"], "");
    pin_to(1);
    let serial = |i: usize| 3_000_000_000u64 + i as u64;
    // warm up: one update per client
    for k in 0..clients {
        let (status, body) = Conn::open(addr).get(&set_name_path(KEY, serial(k), k, 0));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let pid = child.id();
    let cpu0 = cpu_seconds(pid);
    let run = tvcas_updates(&[addr], KEY, &serial, cards, clients, secs);
    let (elapsed, updates, hist, last) = (run.elapsed, run.updates, run.hist, run.last);
    let cpu = cpu_seconds(pid) - cpu0;
    // every card carries the last name set for it
    let mut conn = Conn::open(addr);
    let mut verified = 0;
    for (i, round) in last.iter().enumerate() {
        let (status, body) = conn.get(&format!("/api.php?api_key={KEY}&serial_no={}", serial(i)));
        assert_eq!(status, 200);
        let card: serde_json::Value = serde_json::from_slice(&body).expect("card JSON");
        let want = if *round == 0 {
            if i < clients {
                format!("bench 0 {i}")
            } else {
                format!("card {i}")
            }
        } else {
            format!("bench {round} {i}")
        };
        assert_eq!(card["name"], want.as_str(), "card {}", serial(i));
        verified += 1;
    }
    let _ = child.kill();
    let _ = child.wait();
    Updates {
        cards,
        clients,
        updates,
        per_second: updates as f64 / elapsed,
        hist,
        cpu_pct: cpu / elapsed * 100.0,
        verified,
    }
}

struct Scrapes {
    channels: usize,
    scrapes: usize,
    hist: Histogram<u64>,
    bytes: usize,
    families: usize,
}

fn metrics_scrapes(dir: &Path, channels: usize, scrapes: usize) -> Scrapes {
    let db = dir.join("metrics.db");
    castmux_db(&db, &["init"]);
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind sink");
    let out_port = sink.local_addr().expect("sink address").port();
    let mut toml = String::from("[http]\nlisten = \"127.0.0.1:0\"\n\n");
    let base = 21_000u16;
    for i in 0..channels {
        toml.push_str(&format!(
            "[[channel]]\nname = \"ch{i}\"\ninput = \"udp://127.0.0.1:{}\"\n\
             output = \"udp://127.0.0.1:{out_port}\"\n\
             cw = \"{:04X}0102030405FF:{:04X}1112131415FF\"\n\n",
            base as usize + i,
            i,
            i
        ));
    }
    let cfg = dir.join("headend.toml");
    std::fs::write(&cfg, toml).expect("write headend.toml");
    let (mut child, addr) = start(
        &db,
        KEY,
        &[
            "headend",
            "--workers",
            "1",
            "--config",
            cfg.to_str().expect("utf-8 path"),
        ],
        "headend: running",
    );
    pin_to(1);
    let mut conn = Conn::open(addr);
    let (status, body) = conn.get("/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body).into_owned();
    let up = text
        .lines()
        .filter(|l| l.starts_with("castmux_channel_up{"))
        .count();
    assert_eq!(up, channels, "every channel in /metrics");
    let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut bytes = 0;
    for _ in 0..scrapes {
        let t = Instant::now();
        let (status, body) = conn.get("/metrics");
        hist.record(t.elapsed().as_micros().max(1) as u64).unwrap();
        assert_eq!(status, 200);
        bytes = body.len();
    }
    let _ = child.kill();
    let _ = child.wait();
    Scrapes {
        channels,
        scrapes,
        hist,
        bytes,
        families,
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken from the command line
    let cards = env_num("CASTMUX_BENCH_CARDS", 1000.0) as usize;
    let clients = env_num("CASTMUX_BENCH_CLIENTS", 4.0) as usize;
    let secs = env_num("CASTMUX_BENCH_SECS", 10.0);
    let channels = env_num("CASTMUX_BENCH_CHANNELS", 300.0) as usize;
    let scrapes = env_num("CASTMUX_BENCH_SCRAPES", 200.0) as usize;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "the bench pins castmux and the load to different cores"
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let u = card_updates(dir.path(), cards, clients.max(1), secs);
    let m = metrics_scrapes(dir.path(), channels, scrapes);
    println!(
        "\n{:<52} {:>10} {:>8} {:>8} {:>8} {:>7} {:>14}",
        "run", "measured", "p50 ms", "p99 ms", "max ms", "CPU %", "target"
    );
    println!(
        "{:<52} {:>10} {:>8.2} {:>8.2} {:>8.2} {:>7.1} {:>14}",
        format!(
            "TVCAS api.php set[name]: {} cards, {} connections",
            u.cards, u.clients
        ),
        format!("{:.0}/s", u.per_second),
        percentile_ms(&u.hist, 0.5),
        percentile_ms(&u.hist, 0.99),
        u.hist.max() as f64 / 1000.0,
        u.cpu_pct,
        ">= 1000/s",
    );
    println!(
        "{:<52} {:>10} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>14}",
        format!(
            "GET /metrics: {} channels, {} families, {} KB",
            m.channels,
            m.families,
            m.bytes / 1024
        ),
        format!("{} scrapes", m.scrapes),
        percentile_ms(&m.hist, 0.5),
        percentile_ms(&m.hist, 0.99),
        m.hist.max() as f64 / 1000.0,
        "-",
        "< 50 ms",
    );
    println!(
        "{} updates in all; every one of the {} cards read back with the last name set for it",
        u.updates, u.verified
    );
    let met = u.per_second >= 1000.0 && (m.hist.max() as f64) < 50_000.0;
    println!(
        "targets: {}",
        if met { "met" } else { "NOT met (see above)" }
    );
}
