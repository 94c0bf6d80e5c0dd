//! `castmux ecmg`: the built-in CAS as a SimulCrypt ECMG (ECMG<->SCS, TS 103 197), so another
//! mux (Astra, TSDuck's scrambler, `castmux scramble --ecmg`) gets castmux ECMs.

use castmux::cas::store::StoreLocation;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use castmux::cas::{FollowerStats, RingOnly, SharedKeyRing, StoreFollower};
use castmux::net::AcceptLimits;
use castmux::simulcrypt::{EcmgServer, EcmgServerConfig, EcmgServerStats, RingEcmBuilder};
use clap::Args;

use super::args;
use super::init::open;

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

pub fn run(db: &StoreLocation, a: EcmgArgs) -> anyhow::Result<()> {
    let stop = super::stop_flag()?;
    let rt = super::runtime(2)?;
    let (stats, follower) = rt.block_on(serve(db, a, stop))?;
    report(&stats, &follower);
    Ok(())
}

async fn serve(
    db: &StoreLocation,
    a: EcmgArgs,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Arc<EcmgServerStats>, Arc<FollowerStats>)> {
    let accept = AcceptLimits::new(
        a.max_connections,
        a.max_connections_per_address,
        a.handshake_timeout,
    )
    .context("--max-connections, --max-connections-per-address, --handshake-timeout")?;
    let store = open(db).await?;
    let ca_system_id = a.ca_system_id.unwrap_or(store.ca_system_id());
    // the same follower as `scramble --cas builtin`: scheduled rotation included, so keys
    // rotate when this process is the only one serving the store
    let (follower, _) = StoreFollower::start(store.clone(), false).await?;
    let ring = follower.ring();
    let follower_stats = follower.stats();
    let builder = RingEcmBuilder::new(ring.clone(), ca_system_id);
    // a Super_CAS_id of another CA system is refused at channel_setup (unknown
    // Super_CAS_id value), not accepted and then failed at every CW_provision
    let config = EcmgServerConfig {
        ca_system_id: Some(ca_system_id),
        accept,
        ..EcmgServerConfig::default()
    };
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
    let stopped = || async {
        while !stop.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let mut ring_only = RingOnly;
    tokio::join!(
        server.run(stopped()),
        follower.run(&mut ring_only, stopped())
    );
    store.close().await;
    Ok((stats, follower_stats))
}

fn ring_packages(ring: &SharedKeyRing) -> String {
    let r = ring.read().unwrap_or_else(|e| e.into_inner());
    r.packages().to_string()
}

fn report(s: &EcmgServerStats, follower: &FollowerStats) {
    tracing::info!(stats = ?s, store = ?follower, "ecmg: stopped");
}
