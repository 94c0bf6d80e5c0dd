//! The SimulCrypt options of `castmux scramble`: external ECMGs (`--ecmg`, one per CAS) and
//! an EMMG<->MUX port (`--emmg-listen`). The head-end library does the rest
//! (`castmux::headend::simulcrypt`).

use std::net::SocketAddr;
use std::time::Duration;

use castmux::headend::{ChannelSpec, EcmgSpec};
use castmux::scramble::CasPolicy;
use clap::Args;

use super::args;

/// SimulCrypt options of `castmux scramble`.
#[derive(Debug, Args)]
pub struct SimulcryptArgs {
    /// SimulCrypt ECMG to get ECMs from (ECMG<->SCS, TS 103 197), HOST:PORT (TVCAS
    /// listens on 43000, `castmux ecmg` where told). Backups of the same CAS follow after
    /// commas, HOST:PORT,HOST2:PORT2: on link loss the next one takes over (the latest CWs
    /// replayed), and the first comes back once it answers again. Repeat for several CAS on the same
    /// service: every ECMG gets the same CWs and its own ECM PID and CA_descriptor.
    /// Per-ECMG settings go in a query: HOST:PORT?super_cas_id=0B000001&ecm_pid=0x1FF2
    /// (keys: super_cas_id, channel_id, stream_id, ecm_id, access_criteria, version,
    /// ecm_pid, private_data); what a query leaves out comes from the options below.
    /// ECM PIDs default to --ecm-pid, then the next free PIDs up (skipping --emm-pid), in
    /// the order of the CAS (--cas builtin first). delay_start and ECM_rep_period come from each ECMG's
    /// channel_status unless --delay-start / --ecm-repetition are given; the
    /// CA_descriptor's CA_system_ID is the top 16 bits of its Super_CAS_id.
    #[arg(long, value_name = "HOST:PORT[?KEY=VALUE&..]")]
    ecmg: Vec<EcmgSpec>,
    /// Super_CAS_id, 8 hex digits: CA_system_ID then CA_subsystem_ID (e.g. 4AE10000).
    /// Needed by each --ecmg whose query gives none.
    #[arg(long, value_name = "HEX", value_parser = args::hex_u32, requires = "ecmg")]
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
    /// ECMG<->SCS protocol version, 2 or 3. Default: 3, and 2 when the ECMG refuses 3 with
    /// `unsupported protocol version` (TSDuck's tsecmg speaks 2 unless told otherwise); a
    /// version given here or in the --ecmg query is used as is, never changed.
    #[arg(long, value_name = "2|3", value_parser = clap::value_parser!(u8).range(2..=3))]
    ecmg_version: Option<u8>,
    /// With several CAS on the service (--cas builtin, --ecmg): `all` (default) holds each
    /// key switch until every CAS has the ECM with the next CW on air, so one dead CAS
    /// holds the key for all; `any` switches once one has, so the others keep rotating
    /// (the lagging CAS's PID keeps its last ECM, counted as lagging_cas_switches).
    #[arg(long, value_name = "all|any", default_value = "all")]
    cas_policy: CasPolicy,
    /// Listen for SimulCrypt EMMGs (EMMG<->MUX, TCP and UDP on the same port; TVCAS's
    /// EMMG connects to 41000 in its guide); their EMMs go out on --emm-pid.
    #[arg(long, value_name = "ADDR:PORT")]
    emmg_listen: Option<SocketAddr>,
    /// EMMG connections the --emmg-listen port holds at once; one more is refused.
    #[arg(long, value_name = "N", default_value_t = 16, requires = "emmg_listen")]
    emmg_max_connections: usize,
    /// EMMG connections from one IP address at once, so one host cannot take every slot.
    /// Default: three quarters of --emmg-max-connections (12 of 16).
    #[arg(long, value_name = "N", requires = "emmg_listen")]
    emmg_max_connections_per_address: Option<usize>,
    /// Close an EMMG connection whose channel_setup has not been accepted this long after
    /// it connected (silent sockets give their slot back).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = args::duration,
        requires = "emmg_listen")]
    emmg_handshake_timeout: Duration,
}

impl SimulcryptArgs {
    /// Copy the options into `spec`.
    pub fn fill(&self, spec: &mut ChannelSpec) {
        spec.ecmg = self.ecmg.clone();
        spec.super_cas_id = self.super_cas_id;
        spec.channel_id = self.channel_id;
        spec.stream_id = self.stream_id;
        spec.ecm_id = self.ecm_id;
        spec.ecmg_version = self.ecmg_version;
        spec.cas_policy = self.cas_policy;
        spec.emmg_listen = self.emmg_listen;
        spec.emmg_max_connections = self.emmg_max_connections;
        spec.emmg_max_connections_per_address = self.emmg_max_connections_per_address;
        spec.emmg_handshake_timeout = self.emmg_handshake_timeout;
    }
}
