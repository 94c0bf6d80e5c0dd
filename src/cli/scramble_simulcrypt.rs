//! The SimulCrypt options of `castmux scramble`: an external ECMG (`--ecmg`) as the ECM
//! generator, and an EMMG<->MUX port (`--emmg-listen`) whose EMMs go out on `--emm-pid`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use castmux::scramble::{EcmError, EcmGenerator, EcmRequest, ScrambleConfig, Scrambler};
use castmux::simulcrypt::access::parse_access_criteria_hex;
use castmux::simulcrypt::{
    EmmMuxConfig, EmmMuxServer, EmmMuxStats, EmmQueueSource, ScsConfig, SimulcryptEcmg,
};
use clap::Args;

use super::args;

/// How long the first ECM is waited for, so no packet is scrambled before a card can
/// find its key (later ECMs never wait: the scrambler holds the key switch instead).
const FIRST_ECM_WAIT: Duration = Duration::from_secs(2);
/// How long the ECMG gets to set up channel and stream at start.
const SETUP_WAIT: Duration = Duration::from_secs(10);

/// SimulCrypt options of `castmux scramble`.
#[derive(Debug, Args)]
pub struct SimulcryptArgs {
    /// SimulCrypt ECMG to get ECMs from (ECMG<->SCS, TS 103 197), HOST:PORT (TVCAS
    /// listens on 43000, `castmux ecmg` where told). Needs --super-cas-id. delay_start and
    /// ECM_rep_period come from its channel_status unless --delay-start / --ecm-repetition
    /// are given; the CA_descriptor's CA_system_ID is the top 16 bits of --super-cas-id.
    #[arg(long, value_name = "HOST:PORT", requires = "super_cas_id")]
    ecmg: Option<String>,
    /// Super_CAS_id, 8 hex digits: CA_system_ID then CA_subsystem_ID (e.g. 4AE10000).
    #[arg(long, value_name = "HEX", value_parser = hex_u32, requires = "ecmg")]
    super_cas_id: Option<u32>,
    /// ECM_channel_id. Default 1.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = args::u16_number)]
    channel_id: u16,
    /// ECM_stream_id. Default 1 (Astra's "start stream id with 1").
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = args::u16_number)]
    stream_id: u16,
    /// ECM_id. Default 1.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = args::u16_number)]
    ecm_id: u16,
    /// ECMG<->SCS protocol version, 2 or 3. Default 3.
    #[arg(long, value_name = "2|3", default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=3))]
    ecmg_version: u8,
    /// Listen for SimulCrypt EMMGs (EMMG<->MUX, TCP and UDP on the same port; TVCAS's
    /// EMMG connects to 41000 in its guide); their EMMs go out on --emm-pid.
    #[arg(long, value_name = "ADDR:PORT")]
    emmg_listen: Option<SocketAddr>,
}

/// A u32 in hex, with or without `0x` (Super_CAS_id, client_id).
pub fn hex_u32(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let h = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if h.is_empty() || h.len() > 8 {
        return Err(format!(
            "'{s}' is not a 32-bit hex number (up to 8 hex digits)"
        ));
    }
    u32::from_str_radix(h, 16).map_err(|_| format!("'{s}' is not a 32-bit hex number"))
}

/// What the SimulCrypt options started; keep it for the whole run, then call [`finish`].
///
/// [`finish`]: SimulcryptParts::finish
#[derive(Debug, Default)]
pub struct SimulcryptParts {
    ecmg: Option<SimulcryptEcmg>,
    emm_source: Option<EmmQueueSource>,
    mux: Option<MuxThread>,
}

impl SimulcryptParts {
    /// The ECM generator for `Scrambler::new`, if `--ecmg` was given.
    pub fn ecm_generator(&self) -> Option<Box<dyn EcmGenerator>> {
        self.ecmg.clone().map(|g| {
            Box::new(FirstEcmWait {
                inner: g,
                delivered: false,
            }) as Box<dyn EcmGenerator>
        })
    }

    /// Whether `--emmg-listen` gives EMMs.
    pub fn has_emm(&self) -> bool {
        self.emm_source.is_some()
    }

    /// Hand the EMMG<->MUX queue to the scrambler, if `--emmg-listen` was given.
    pub fn attach_emm(&mut self, scrambler: &mut Scrambler) -> anyhow::Result<()> {
        if let Some(src) = self.emm_source.take() {
            scrambler
                .set_emm_source(Box::new(src))
                .context("--emmg-listen")?;
        }
        Ok(())
    }

    /// Stop the EMMG<->MUX server and log the SimulCrypt counters.
    pub fn finish(self) {
        if let Some(g) = &self.ecmg {
            let s = g.stats();
            let lat = g.latency();
            tracing::info!(
                setups = s.setups.load(Relaxed),
                link_failures = s.link_failures.load(Relaxed),
                provisions_sent = s.provisions_sent.load(Relaxed),
                ecms_received = s.ecms_received.load(Relaxed),
                ecms_delivered = s.ecms_delivered.load(Relaxed),
                unavailable = s.unavailable.load(Relaxed),
                late = s.late.load(Relaxed),
                timeouts = s.timeouts.load(Relaxed),
                bad_ecms = s.bad_ecms.load(Relaxed),
                errors_received = s.errors_received.load(Relaxed),
                latency_p99_us = lat.value_at_quantile(0.99),
                "simulcrypt ECMG link"
            );
        }
        if let Some(m) = self.mux {
            m.stop();
        }
    }
}

/// Start what the options ask for and fit `config` to it. `access_criteria` (the shared
/// `--access-criteria`) goes to the ECMG as the bytes of its hex digits, like Astra's
/// "ACCESS CRITERIA (HEX)" (TVCAS: one nibble per package, rightmost = package 1);
/// `builtin_cas` says `--cas builtin` is the one using it. `delay_start_given` and
/// `ecm_repetition_given` say whether the command line set those (then the ECMG's
/// channel_status does not override them).
pub fn start(
    a: &SimulcryptArgs,
    access_criteria: Option<&str>,
    builtin_cas: bool,
    config: &mut ScrambleConfig,
    delay_start_given: bool,
    ecm_repetition_given: bool,
) -> anyhow::Result<SimulcryptParts> {
    let mut parts = SimulcryptParts::default();
    if access_criteria.is_some() && !builtin_cas && a.ecmg.is_none() {
        bail!("--access-criteria goes with --cas builtin or --ecmg");
    }
    if let (Some(addr), Some(super_cas_id)) = (&a.ecmg, a.super_cas_id) {
        if config.ecm_pid.is_none() {
            bail!("--ecmg needs an ECM PID: give --ecm-pid, or drop --cw so CWs rotate");
        }
        let mut sc = ScsConfig::new(addr.clone(), super_cas_id);
        sc.version = a.ecmg_version;
        sc.channel_id = a.channel_id;
        sc.stream_id = a.stream_id;
        sc.ecm_id = a.ecm_id;
        sc.crypto_period = config.crypto_period;
        if let Some(text) = access_criteria {
            sc.access_criteria = parse_access_criteria_hex(text).with_context(|| {
                format!("--access-criteria {text:?}: expected up to 64 hex digits, e.g. 00000001")
            })?;
        }
        let ecmg = SimulcryptEcmg::start(sc).context("--ecmg")?;
        let status = ecmg.wait_ready(SETUP_WAIT).context("--ecmg")?;
        tracing::info!(
            ecmg = %addr,
            super_cas_id = %format!("{super_cas_id:08X}"),
            delay_start_ms = status.delay_start,
            ecm_rep_period_ms = status.ecm_rep_period,
            max_comp_time_ms = status.max_comp_time,
            section_tspkt_flag = status.section_tspkt_flag,
            "simulcrypt: ECMG channel and stream set up"
        );
        config.ca_system_id = ecmg.ca_system_id();
        if !delay_start_given {
            config.delay_start_ms = i64::from(status.delay_start);
        }
        if !ecm_repetition_given {
            config.ecm_repetition = Duration::from_millis(u64::from(status.ecm_rep_period.max(10)));
        }
        parts.ecmg = Some(ecmg);
    }
    if let Some(listen) = a.emmg_listen {
        if config.emm_pid.is_none() {
            bail!("--emmg-listen needs --emm-pid (the PID the EMMs go out on)");
        }
        let (mux, source) = MuxThread::start(listen)?;
        parts.mux = Some(mux);
        parts.emm_source = Some(source);
    }
    Ok(parts)
}

/// Waits for the first ECM (the ECMG answers within max_comp_time); later periods go
/// straight to the client, which never blocks the data path for long.
struct FirstEcmWait {
    inner: SimulcryptEcmg,
    delivered: bool,
}

impl EcmGenerator for FirstEcmWait {
    fn generate(&mut self, req: &EcmRequest<'_>, out: &mut Vec<u8>) -> Result<(), EcmError> {
        let deadline = Instant::now() + FIRST_ECM_WAIT;
        loop {
            match self.inner.generate(req, out) {
                Ok(()) => {
                    self.delivered = true;
                    return Ok(());
                }
                Err(e) if self.delivered || Instant::now() >= deadline => return Err(e),
                // each attempt already waits a few ms for the answer
                Err(_) => {}
            }
        }
    }
}

/// The EMMG<->MUX server on a thread of its own.
#[derive(Debug)]
struct MuxThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: std::sync::Arc<EmmMuxStats>,
}

impl MuxThread {
    fn start(listen: SocketAddr) -> anyhow::Result<(MuxThread, EmmQueueSource)> {
        let rt = super::runtime(0).context("the EMMG<->MUX control thread")?;
        let (server, source) = rt
            .block_on(EmmMuxServer::bind(listen, EmmMuxConfig::default()))
            .with_context(|| format!("--emmg-listen {listen}: cannot listen (port in use?)"))?;
        let local = server.local_addr()?;
        let stats = server.stats();
        // the line a script (or a test) waits for: where EMMGs connect
        tracing::info!(listen = %local, "simulcrypt: EMMG<->MUX listening");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("simulcrypt-mux".to_owned())
            .spawn(move || {
                rt.block_on(server.run(async {
                    let _ = rx.await;
                }))
            })
            .context("starting the EMMG<->MUX thread")?;
        Ok((
            MuxThread {
                stop: Some(tx),
                thread: Some(thread),
                stats,
            },
            source,
        ))
    }

    fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        tracing::info!(stats = ?self.stats, "simulcrypt: EMMG<->MUX stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_u32_parses_super_cas_ids() {
        assert_eq!(hex_u32("4AE10000").unwrap(), 0x4AE1_0000);
        assert_eq!(hex_u32("0x0B000001").unwrap(), 0x0B00_0001);
        assert!(hex_u32("123456789").is_err());
        assert!(hex_u32("").is_err());
        assert!(hex_u32("xyz").is_err());
    }
}
