//! The card store past one box (issue 16), against the real binary and a real PostgreSQL
//! (a throw-away cluster from scripts/pg.sh, unless CASTMUX_TEST_PG names one), printed side
//! by side with the targets:
//! - `castmux card add --count 100000` into a SQLite file and into PostgreSQL (whole process);
//! - 1,000,000 cards in PostgreSQL (900,000 more added), then `card show` of one of them;
//! - a full EMM cycle over those 1,000,000 cards at 1 Mbit/s: the cards read from
//!   PostgreSQL as a follower reads them, every card's EMM built by the carousel in
//!   simulated time, with unique EMMs only (format 1) and with group EMMs (the default);
//!   the air time of one cycle and the CPU it took (target: ≤ 10 minutes of air at
//!   1 Mbit/s);
//! - TVCAS card updates (`GET /api.php?…&set[name]=…`) across two `castmux serve` nodes on
//!   the one PostgreSQL store (both pinned to core 0, the clients on core 1, PostgreSQL
//!   unpinned), CLIENTS connections split between the nodes, SECS seconds; afterwards every
//!   card is read back through the other node (target: ≥ 1,000 updates per second).
//!
//! Run: `cargo bench --bench store` (env: CASTMUX_BENCH_CARDS for the EMM cycle, default
//! 1000000; CASTMUX_BENCH_CLIENTS, default 4; CASTMUX_BENCH_SECS, default 10).

use std::time::{Duration, Instant};

use castmux::cas::store::{Store, StoreLocation};
use castmux::cas::{derive_group_key, EmmCarousel, EmmFormat, GroupId};
use castmux::loadtest::headend::cpu_seconds;
use hdrhistogram::Histogram;

#[path = "support/load.rs"]
mod load;
use load::{castmux_db, env_num, pin_to};
#[path = "support/http_client.rs"]
mod http_client;
use http_client::{start, tvcas_updates, Conn};
#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

const KEY: &str = "bench-api-key-0123456789";

/// The cluster the bench uses: CASTMUX_TEST_PG's, or one of its own (stopped on drop).
enum Cluster {
    Given(String),
    Own(pg_support::OwnCluster),
}

impl Cluster {
    fn get() -> Cluster {
        match std::env::var("CASTMUX_TEST_PG") {
            Ok(url) => Cluster::Given(url),
            Err(_) => Cluster::Own(pg_support::OwnCluster::start()),
        }
    }

    /// A new database; its URL.
    fn database(&self) -> String {
        match self {
            Cluster::Given(url) => pg_support::fresh_database_on(url),
            Cluster::Own(c) => pg_support::fresh_database_on(&c.url),
        }
    }
}

fn new_store(at: &str) {
    castmux_db(at, &["init"]);
    castmux_db(at, &["package", "add", "sport"]);
    castmux_db(at, &["package", "add", "movies"]);
    castmux_db(at, &["package", "add", "kids"]);
    castmux_db(at, &["package", "add", "news"]);
}

struct Cycle {
    cards: usize,
    read_s: f64,
    air_s: f64,
    cpu_s: f64,
    bytes: u64,
}

/// One full turn of the carousel over every card of the store at `at`, at `bitrate`, in
/// `format`.
fn emm_cycle(at: &str, bitrate: u64, format: EmmFormat) -> Cycle {
    let at: StoreLocation = at.parse().expect("store URL");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let t = Instant::now();
    let (cards, keys, root, caid) = rt.block_on(async {
        let store = Store::open(&at).await.expect("open the store");
        let (cards, _) = store.emm_cards().await.expect("read the cards");
        let keys = store.service_keys().await.expect("read the keys");
        let (root, caid) = (store.root_key().clone(), store.ca_system_id());
        store.close().await;
        (cards, keys, root, caid)
    });
    let read_s = t.elapsed().as_secs_f64();
    let n = cards.len();
    let cpu0 = cpu_seconds(std::process::id());
    let mut c = EmmCarousel::with_layout(bitrate, format.layout(caid));
    c.set_service_keys(keys);
    for r in cards {
        if format == EmmFormat::Grouped {
            let group = GroupId::of(r.serial);
            c.set_group_key(group, derive_group_key(&root, group));
        }
        c.upsert_card(r.serial, r.card_key, r.entitlements, false);
    }
    let mut out = Vec::with_capacity(1 << 16);
    let mut now = Duration::ZERO;
    while c.counters().cycles == 0 {
        now += Duration::from_millis(10);
        out.clear();
        while c.poll(now, &mut out) {}
        assert!(now < Duration::from_secs(24 * 3600), "no cycle in a day");
    }
    Cycle {
        cards: n,
        read_s,
        air_s: now.as_secs_f64(),
        cpu_s: cpu_seconds(std::process::id()) - cpu0,
        bytes: c.counters().air_bytes,
    }
}

struct Updates {
    updates: u64,
    per_second: f64,
    hist: Histogram<u64>,
    verified: usize,
    /// Both nodes' CPU, % of one core (both run on core 0).
    cpu_pct: f64,
}

/// TVCAS name changes through two nodes on one store; every card read back through the
/// node that did not change it last.
fn two_node_updates(at: &str, cards: usize, clients: usize, secs: f64) -> Updates {
    let serial = |i: usize| 2_100_000_000u64 + i as u64;
    let (mut a, addr_a) = start(at, KEY, &["serve", "--listen", "127.0.0.1:0"], "");
    let (mut b, addr_b) = start(at, KEY, &["serve", "--listen", "127.0.0.1:0"], "");
    pin_to(1);
    let cpu0 = cpu_seconds(a.id()) + cpu_seconds(b.id());
    let run = tvcas_updates(&[addr_a, addr_b], KEY, &serial, cards, clients, secs);
    let cpu = cpu_seconds(a.id()) + cpu_seconds(b.id()) - cpu0;
    // client k wrote through node k % 2: read its cards back through the other one
    let mut conns = [Conn::open(addr_a), Conn::open(addr_b)];
    let mut verified = 0;
    for (i, round) in run.last.iter().enumerate() {
        let conn = &mut conns[(i % clients + 1) % 2];
        let (status, body) = conn.get(&format!("/api.php?api_key={KEY}&serial_no={}", serial(i)));
        assert_eq!(status, 200);
        let card: serde_json::Value = serde_json::from_slice(&body).expect("card JSON");
        if *round > 0 {
            assert_eq!(
                card["name"],
                format!("bench {round} {i}").as_str(),
                "card {}",
                serial(i)
            );
        }
        verified += 1;
    }
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
    Updates {
        updates: run.updates,
        per_second: run.updates as f64 / run.elapsed,
        hist: run.hist,
        verified,
        cpu_pct: cpu / run.elapsed * 100.0,
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() {
    let emm_cards = env_num("CASTMUX_BENCH_CARDS", 1_000_000.0) as usize;
    let clients = env_num("CASTMUX_BENCH_CLIENTS", 4.0).max(2.0) as usize;
    let secs = env_num("CASTMUX_BENCH_SECS", 10.0);
    let cluster = Cluster::get();
    let dir = tempfile::tempdir().expect("temporary directory");

    let file = dir.path().join("cards.db");
    let file = file.to_str().expect("utf-8 path").to_owned();
    new_store(&file);
    let add_file = castmux_db(
        &file,
        &["card", "add", "--count", "100000", "--packages", "sport"],
    );
    let pg = cluster.database();
    new_store(&pg);
    let add_pg = castmux_db(
        &pg,
        &["card", "add", "--count", "100000", "--packages", "sport"],
    );
    let more = emm_cards.saturating_sub(100_000).max(1).to_string();
    let add_rest = castmux_db(
        &pg,
        &[
            "card",
            "add",
            "--count",
            &more,
            "--packages",
            "sport,movies,kids,news",
        ],
    );
    // a card in the middle of the store
    let middle = (2_100_000_000 + emm_cards.max(2) / 2).to_string();
    let show = castmux_db(&pg, &["card", "show", &middle]);
    let unique = emm_cycle(&pg, 1_000_000, EmmFormat::Unique);
    let cycle = emm_cycle(&pg, 1_000_000, EmmFormat::Grouped);
    let updates = two_node_updates(&pg, 1000, clients, secs);

    println!("\n{:<66} {:>14} {:>12}", "run", "measured", "target");
    let row = |run: String, measured: String, target: &str| {
        println!("{run:<66} {measured:>14} {target:>12}");
    };
    row(
        "card add --count 100000, SQLite file (process)".into(),
        format!("{add_file:.2} s"),
        "seconds",
    );
    row(
        "card add --count 100000, PostgreSQL (process)".into(),
        format!("{add_pg:.2} s"),
        "seconds",
    );
    row(
        format!(
            "card add --count {more}, PostgreSQL, to {} cards",
            cycle.cards
        ),
        format!("{add_rest:.2} s"),
        "seconds",
    );
    row(
        format!(
            "card show among {} cards, PostgreSQL (process)",
            cycle.cards
        ),
        format!("{:.0} ms", show * 1e3),
        "-",
    );
    row(
        format!("{} cards read from PostgreSQL with their keys", cycle.cards),
        format!("{:.2} s", cycle.read_s),
        "-",
    );
    for (what, c, target) in [
        ("unique EMMs (format 1)", &unique, "-"),
        ("group + unique EMMs (default)", &cycle, "<= 10 min"),
    ] {
        row(
            format!(
                "EMM cycle, {} cards at 1 Mbit/s, {what}: air ({} MB)",
                c.cards,
                c.bytes / 1_000_000
            ),
            format!("{:.1} min", c.air_s / 60.0),
            target,
        );
        row(
            "  CPU to build that cycle (one core)".into(),
            format!("{:.2} s", c.cpu_s),
            "-",
        );
    }
    row(
        format!("TVCAS set[name], two serve nodes on PostgreSQL, {clients} connections"),
        format!("{:.0}/s", updates.per_second),
        ">= 1000/s",
    );
    row(
        "  both nodes' CPU (pinned to core 0; PostgreSQL unpinned)".into(),
        format!("{:.0} %", updates.cpu_pct),
        "-",
    );
    row(
        "  answer time p50 / p99 / max".into(),
        format!(
            "{:.1}/{:.1}/{:.0} ms",
            ms(&updates.hist, 0.5),
            ms(&updates.hist, 0.99),
            updates.hist.max() as f64 / 1000.0
        ),
        "-",
    );
    println!(
        "{} updates in all; {} cards read back through the other node with the last name set",
        updates.updates, updates.verified
    );
    let met = cycle.air_s <= 600.0 && updates.per_second >= 1000.0;
    println!(
        "targets: {}",
        if met { "met" } else { "NOT met (see above)" }
    );
}
