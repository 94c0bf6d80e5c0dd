//! `castmux emmg`: the built-in EMM carousel as a SimulCrypt EMMG (EMMG<->MUX, TS 103 197):
//! connects to a mux's EMMG port and sends every group's EMM and every card's unique EMM
//! at the allocated bandwidth. The store follower (the one `scramble --cas builtin` and `castmux ecmg` run, scheduled
//! rotation included) checks the store every second: changed cards go out first, new key
//! versions go to every group.

use castmux::cas::store::StoreLocation;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use castmux::cas::emm_tee::EmmTee;
use castmux::cas::{
    derive_group_key, CardKeyRecord, EmmCarousel, GroupId, Key128, ServiceKey, StoreFollower,
    StoreSink,
};
use castmux::scramble::{EmmData, EmmSource};
use castmux::simulcrypt::{run_emmg, EmmgConfig, EmmgStats};
use clap::Args;

use super::init::open;

/// Options of `castmux emmg`.
#[derive(Debug, Args)]
pub struct EmmgArgs {
    /// The mux's EMMG port, HOST:PORT (`castmux scramble --emmg-listen`, a head-end's
    /// `[emmg]`, Astra's EMM port). Repeat to feed several muxes, each over a link of its own
    /// that reconnects on its own. Muxes at one bandwidth share one carousel: every EMM is
    /// built once and each of them gets the same EMMs. HOST:PORT?bandwidth=RATE gives a mux
    /// a bandwidth of its own (a carousel of its own too).
    #[arg(long, value_name = "HOST:PORT[?bandwidth=RATE]", required = true, value_parser = mux_spec)]
    mux: Vec<MuxSpec>,
    /// Send data_provision over UDP to the same HOST:PORT (setup stays on TCP).
    #[arg(long)]
    udp: bool,
    /// client_id, hex. Default: the store's CA_system_ID followed by 0000.
    #[arg(long, value_name = "HEX", value_parser = super::args::hex_u32)]
    client_id: Option<u32>,
    /// data_id. Default 1.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = super::args::u16_number)]
    data_id: u16,
    /// Bandwidth asked for and used by the carousel: 50k, 1M, or bits per second;
    /// 1k to 65535k. Default 50k.
    #[arg(long, value_name = "RATE", default_value = "50k", value_parser = super::args::emm_bandwidth)]
    bandwidth: u64,
    /// Which EMMs: `grouped` (a group EMM per 256 cards with the service keys, a slim
    /// unique EMM per card) or `unique` (one EMM per card carrying its keys, for software
    /// cards older than group EMMs). Default grouped.
    #[arg(long, value_enum, default_value_t = super::scramble::EmmFormat::Grouped)]
    format: super::scramble::EmmFormat,
    /// EMMG<->MUX protocol version, 2 or 3. Default 3.
    #[arg(long, value_name = "2|3", default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=3))]
    emmg_version: u8,
}

/// One `--mux`: the address, and its own bandwidth if it has one.
#[derive(Debug, Clone)]
struct MuxSpec {
    addr: String,
    bandwidth: Option<u64>,
}

fn mux_spec(text: &str) -> Result<MuxSpec, String> {
    let Some((addr, query)) = text.split_once('?') else {
        return Ok(MuxSpec {
            addr: text.to_owned(),
            bandwidth: None,
        });
    };
    let rate = query.strip_prefix("bandwidth=").ok_or_else(|| {
        format!("{text:?}: the only setting of a --mux is ?bandwidth=RATE (like 1M)")
    })?;
    let bandwidth = super::args::emm_bandwidth(rate).map_err(|e| format!("{text:?}: {e}"))?;
    Ok(MuxSpec {
        addr: addr.to_owned(),
        bandwidth: Some(bandwidth),
    })
}

/// The carousel shared between the EMMG link (which polls it) and the store refresher.
struct SharedCarousel(Arc<Mutex<EmmCarousel>>);

impl SharedCarousel {
    fn lock(&self) -> std::sync::MutexGuard<'_, EmmCarousel> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EmmSource for SharedCarousel {
    fn poll(&mut self, now: Duration, out: &mut Vec<u8>) -> Option<EmmData> {
        self.lock().poll(now, out).then_some(EmmData::Sections)
    }
}

/// The carousels of every mux link, which the store follower's findings go into: new keys
/// to every group, changed cards first. `root` derives the group keys.
struct Carousels(Vec<SharedCarousel>, Key128);

impl StoreSink for Carousels {
    fn keys_changed(&mut self, keys: &[ServiceKey]) -> bool {
        for c in &self.0 {
            c.lock().set_service_keys(keys.to_vec());
        }
        tracing::info!(keys = keys.len(), "emmg: service keys changed");
        true
    }

    fn cards_changed(&mut self, cards: Vec<CardKeyRecord>) -> bool {
        tracing::info!(cards = cards.len(), "emmg: cards changed; sent first");
        for c in &self.0 {
            let mut c = c.lock();
            for r in &cards {
                let group = GroupId::of(r.serial);
                c.set_group_key(group, derive_group_key(&self.1, group));
                c.upsert_card(r.serial, r.card_key.clone(), r.entitlements.clone(), true);
            }
        }
        true
    }
}

pub fn run(db: &StoreLocation, a: EmmgArgs) -> anyhow::Result<()> {
    let stop = super::stop_flag()?;
    let rt = super::runtime(0)?;
    let stats = rt.block_on(feed(db, a, stop))?;
    tracing::info!(stats = ?stats, "emmg: stopped");
    Ok(())
}

async fn feed(
    db: &StoreLocation,
    a: EmmgArgs,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Arc<EmmgStats>> {
    let store = open(db).await?;
    let (follower, snapshot) = StoreFollower::start(store.clone(), true).await?;
    let follower_stats = follower.stats();
    let n_cards = snapshot.cards.len();
    // one carousel per bandwidth: the links at that bandwidth take its EMMs through a tee,
    // so each EMM is built once however many muxes get it
    let mut classes: BTreeMap<u64, (Arc<Mutex<EmmCarousel>>, EmmTee)> = BTreeMap::new();
    for m in &a.mux {
        let bandwidth = m.bandwidth.unwrap_or(a.bandwidth);
        classes.entry(bandwidth).or_insert_with(|| {
            let mut c =
                EmmCarousel::with_layout(bandwidth, a.format.spec().layout(store.ca_system_id()));
            for r in &snapshot.cards {
                let group = GroupId::of(r.serial);
                c.set_group_key(group, derive_group_key(store.root_key(), group));
                c.upsert_card(r.serial, r.card_key.clone(), r.entitlements.clone(), false);
            }
            c.set_service_keys(snapshot.keys.clone());
            let c = Arc::new(Mutex::new(c));
            let tee = EmmTee::new(SharedCarousel(Arc::clone(&c)));
            (c, tee)
        });
    }

    let client_id = a.client_id.unwrap_or(u32::from(store.ca_system_id()) << 16);
    let stats = Arc::new(EmmgStats::default());
    let stopped = || async {
        while !stop.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let mut links = Vec::with_capacity(a.mux.len());
    let mut skipped = Vec::with_capacity(a.mux.len());
    for m in &a.mux {
        let bandwidth = m.bandwidth.unwrap_or(a.bandwidth);
        let mut config = EmmgConfig::new(m.addr.clone(), client_id);
        config.udp = a.udp;
        config.version = a.emmg_version;
        config.data_id = a.data_id;
        config.bandwidth_kbps = (bandwidth / 1000).clamp(1, u64::from(u16::MAX)) as u16;
        tracing::info!(
            mux = %m.addr,
            udp = a.udp,
            client_id = %format!("{client_id:08X}"),
            bandwidth_bps = bandwidth,
            cards = n_cards,
            "emmg: feeding"
        );
        let (stats, stopped) = (stats.clone(), stopped());
        let mut source = classes[&bandwidth].1.subscribe();
        skipped.push((m.addr.clone(), source.skipped_counter()));
        links.push(async move { run_emmg(config, &mut source, stats, stopped).await });
    }
    let mut sink = Carousels(
        classes
            .values()
            .map(|(c, _)| SharedCarousel(Arc::clone(c)))
            .collect(),
        store.root_key().clone(),
    );
    tokio::join!(
        futures::future::join_all(links),
        follower.run(&mut sink, stopped())
    );
    tracing::info!(store = ?follower_stats, "emmg: store follower");
    for (bandwidth, (carousel, _)) in &classes {
        let counters = carousel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counters();
        tracing::info!(
            bandwidth_bps = bandwidth,
            emitted = counters.emitted,
            urgent = counters.urgent,
            cycles = counters.cycles,
            build_errors = counters.build_errors,
            "emmg: carousel"
        );
    }
    for (mux, skipped) in &skipped {
        let n = skipped.load(Relaxed);
        if n > 0 {
            tracing::info!(mux = %mux, skipped_chunks = n, "emmg: a link fell behind and skipped");
        }
    }
    store.close().await;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::super::args::emm_bandwidth as bandwidth;

    #[test]
    fn bandwidths() {
        assert_eq!(bandwidth("50k").unwrap(), 50_000);
        assert_eq!(bandwidth("1M").unwrap(), 1_000_000);
        assert_eq!(bandwidth("64000").unwrap(), 64_000);
        assert!(bandwidth("10").is_err());
        assert!(bandwidth("100M").is_err());
        assert!(bandwidth("fast").is_err());
    }
}
