//! `castmux ecmg`: the built-in CAS as a SimulCrypt ECMG (ECMG<->SCS, TS 103 197), so another
//! mux (Astra, TSDuck's scrambler, `castmux scramble --ecmg`) gets castmux ECMs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use castmux::cas::{ServiceKeyRing, SharedKeyRing, Store};
use castmux::net::AcceptLimits;
use castmux::simulcrypt::{EcmgServer, EcmgServerConfig, EcmgServerStats, RingEcmBuilder};
use clap::Args;

use super::args;
use super::init::open;

/// How often the key ring is read again from the store (keys rotate).
const RING_REFRESH: Duration = Duration::from_secs(3);

/// Options of `castmux ecmg`.
#[derive(Debug, Args)]
pub struct EcmgArgs {
    /// Address to listen on for SCS connections, e.g. 0.0.0.0:43000 (port 0 picks one;
    /// the port is logged).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// CA_system_ID served (Super_CAS_ids with other top 16 bits are refused), hex.
    /// Default: the store's.
    #[arg(long, value_name = "HEX", value_parser = args::hex_u16)]
    ca_system_id: Option<u16>,
    /// SCS connections (one per ECM channel) open at once; one more is refused.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_connections: usize,
    /// Connections from one IP address at once, so one host cannot take every slot.
    /// Default: three quarters of --max-connections (48 of 64), the rest stays for others.
    #[arg(long, value_name = "N")]
    max_connections_per_address: Option<usize>,
    /// Close a connection whose channel_setup has not been accepted this long after it
    /// connected (silent sockets give their slot back).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = args::duration)]
    handshake_timeout: Duration,
}

pub fn run(db: &Path, a: EcmgArgs) -> anyhow::Result<()> {
    let stop = super::stop_flag()?;
    let rt = super::runtime(2)?;
    let stats = rt.block_on(serve(db, a, stop))?;
    report(&stats);
    Ok(())
}

async fn serve(
    db: &Path,
    a: EcmgArgs,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Arc<EcmgServerStats>> {
    let accept = AcceptLimits::new(
        a.max_connections,
        a.max_connections_per_address,
        a.handshake_timeout,
    )
    .context("--max-connections, --max-connections-per-address, --handshake-timeout")?;
    let config = EcmgServerConfig {
        accept,
        ..EcmgServerConfig::default()
    };
    let store = open(db).await?;
    let ca_system_id = a.ca_system_id.unwrap_or(store.ca_system_id());
    let ring: SharedKeyRing = ServiceKeyRing::from_keys(store.service_keys().await?).shared();
    let builder = RingEcmBuilder::new(ring.clone(), ca_system_id);
    let server = EcmgServer::bind(a.listen, config, Arc::new(builder))
        .await
        .with_context(|| format!("--listen {}: cannot listen (port in use?)", a.listen))?;
    let local = server.local_addr()?;
    let stats = server.stats();
    // the first line a script can wait for: where SCSs connect
    tracing::info!(
        listen = %local,
        ca_system_id = %format!("{ca_system_id:04X}"),
        packages = %ring_packages(&ring),
        "ecmg: serving"
    );
    let refresher = tokio::spawn(refresh(store.clone(), ring.clone(), stop.clone()));
    server
        .run(async {
            while !stop.load(Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
    refresher.abort();
    store.close().await;
    Ok(stats)
}

/// Re-read the service keys now and then; a failed read keeps the ring it had (logged).
async fn refresh(store: Store, ring: SharedKeyRing, stop: Arc<AtomicBool>) {
    let mut failures = 0u64;
    while !stop.load(Relaxed) {
        tokio::time::sleep(RING_REFRESH).await;
        match store.service_keys().await {
            Ok(keys) => {
                let new = ServiceKeyRing::from_keys(keys);
                let mut w = ring.write().unwrap_or_else(|e| e.into_inner());
                if *w != new {
                    *w = new;
                    drop(w);
                    tracing::info!(packages = %ring_packages(&ring), "ecmg: service keys reloaded");
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "ecmg: cannot read the service keys; keeping the ones loaded");
            }
        }
    }
}

fn ring_packages(ring: &SharedKeyRing) -> String {
    let r = ring.read().unwrap_or_else(|e| e.into_inner());
    r.packages().to_string()
}

fn report(s: &EcmgServerStats) {
    tracing::info!(stats = ?s, "ecmg: stopped");
}
