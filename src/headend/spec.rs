//! The typed channel spec: everything one scrambled channel is (what `castmux scramble`'s
//! options say, field for field), as the head-end file's typed `[[channel]]` form and as
//! the command line's options become it. Values are checked here, by the same parsers the
//! command line uses, so a file and a command line accept and refuse the same things.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::ecmg_spec::EcmgSpec;
use crate::cas::EmmFormat;
use crate::scramble::config::{CasPolicy, DEFAULT_CA_SYSTEM_ID, DEFAULT_CRYPTO_PERIOD};
use crate::ts::Pid;
use crate::value;

/// The scrambling algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scrambling {
    /// DVB-CSA2, 8-byte CWs.
    #[default]
    Csa2,
    /// DVB-CISSA (AES-128-CBC), 16-byte CWs.
    Cissa,
    /// ATIS-IDSA (AES-128-CBC), 16-byte CWs.
    Idsa,
}

impl Scrambling {
    /// The engine's algorithm.
    pub fn algorithm(self) -> csa::Algorithm {
        match self {
            Scrambling::Csa2 => csa::Algorithm::Csa2,
            Scrambling::Cissa => csa::Algorithm::Cissa,
            Scrambling::Idsa => csa::Algorithm::Idsa,
        }
    }
}

/// Where ECMs and EMMs come from besides SimulCrypt ECMGs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CasKind {
    /// castmux's own CAS: ECMs under the store's service keys, EMMs for every card.
    Builtin,
}

/// Backup inputs a channel may have.
pub const MAX_BACKUPS: usize = 15;
/// Programs an MPTS channel may have.
pub const MAX_MPTS_PROGRAMS: usize = 64;
/// Distinct inputs an MPTS channel may read.
pub const MAX_MPTS_INPUTS: usize = 16;

/// One program of an MPTS channel (`[[channel.program]]`): which input and which of its
/// programs, and how it appears in the channel's multiplex.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramSpec {
    /// The input (`udp://`, `rtp://`, `srt://`, `http://`); programs naming the same input
    /// share one reading of it.
    pub input: String,
    /// The input's program_number to take (default: the input's first program).
    #[serde(default, deserialize_with = "opt_u16")]
    pub program: Option<u16>,
    /// The program_number (service_id) in the multiplex (default: the input's).
    #[serde(default, deserialize_with = "opt_u16")]
    pub pnr: Option<u16>,
    /// SDT service_name (default: "Service PNR").
    pub name: Option<String>,
    /// SDT service_provider_name (default: the channel's `network_name`, else "castmux").
    pub provider: Option<String>,
    /// SDT/NIT service_type (default: 0x01 TV, 0x02 radio for a program with no video).
    #[serde(default, deserialize_with = "opt_u8")]
    pub service_type: Option<u8>,
    /// Logical channel number in the NIT (0..=1023; needs `network_id`).
    #[serde(default, deserialize_with = "opt_u16")]
    pub lcn: Option<u16>,
    /// The LCN's visible_service_flag.
    #[serde(default = "yes")]
    pub visible: bool,
    /// Input PID to output PID, `"IN=OUT"` each (other PIDs: the input's when free, else
    /// the next free one from 0x100).
    #[serde(default, deserialize_with = "pid_pairs")]
    pub pid_map: Vec<(Pid, Pid)>,
}

impl std::fmt::Debug for ProgramSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgramSpec")
            .field("input", &crate::io::url::mask(&self.input))
            .field("program", &self.program)
            .field("pnr", &self.pnr)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl std::str::FromStr for ProgramSpec {
    type Err = String;

    /// The command line's form: `URL[,KEY=VALUE]...` with the TOML entry's keys
    /// (`program`, `pnr`, `name`, `provider`, `service_type`, `lcn`, `visible`, `pid_map`
    /// as `IN=OUT`, repeated for several), e.g. `udp://239.0.0.1:1234,pnr=101,name=News`.
    fn from_str(text: &str) -> Result<ProgramSpec, String> {
        let mut parts = text.split(',');
        let input = parts.next().unwrap_or("").trim().to_owned();
        let mut p = ProgramSpec {
            input,
            program: None,
            pnr: None,
            name: None,
            provider: None,
            service_type: None,
            lcn: None,
            visible: true,
            pid_map: Vec::new(),
        };
        for part in parts {
            let (key, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: give KEY=VALUE (e.g. pnr=101)"))?;
            let v = v.trim();
            let at = |e: String| format!("{}: {e}", key.trim());
            match key.trim() {
                "program" => p.program = Some(value::u16_number(v).map_err(at)?),
                "pnr" => p.pnr = Some(value::u16_number(v).map_err(at)?),
                "name" => p.name = Some(v.to_owned()),
                "provider" => p.provider = Some(v.to_owned()),
                "service_type" => {
                    let n = value::u16_number(v).map_err(at)?;
                    p.service_type =
                        Some(u8::try_from(n).map_err(|_| at(format!("{n} is over 255")))?);
                }
                "lcn" => p.lcn = Some(value::u16_number(v).map_err(at)?),
                "visible" => {
                    p.visible = match v {
                        "true" | "yes" | "1" => true,
                        "false" | "no" | "0" => false,
                        _ => return Err(at(format!("{v:?} is not true or false"))),
                    }
                }
                "pid_map" => p.pid_map.push(pid_pair(v).map_err(at)?),
                other => {
                    return Err(format!(
                        "{other:?} is not a program key (program, pnr, name, provider, service_type, lcn, visible, pid_map)"
                    ))
                }
            }
        }
        Ok(p)
    }
}

impl ProgramSpec {
    /// The output program number when the spec fixes it.
    pub fn out_number(&self) -> Option<u16> {
        self.pnr.or(self.program)
    }
}

/// One channel: input, outputs, what is scrambled and how, where ECMs and EMMs come from.
/// `Default` gives `castmux scramble`'s defaults (no input or output yet).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelSpec {
    /// `udp://…`, `srt://…`, `http://…`, a file, or `-` for stdin.
    pub input: String,
    /// Backup inputs (`udp://`, `rtp://`, `srt://`, `http://`), in priority order after `input`: the channel takes the
    /// first one judged on air when the active one is not.
    #[serde(deserialize_with = "one_or_many")]
    pub backup: Vec<String>,
    /// A TS file looped in real time when no input is on air (the last resort).
    pub slate: Option<PathBuf>,
    /// The active input off air this long: the next input on air takes over.
    #[serde(deserialize_with = "duration")]
    pub backup_start_delay: Duration,
    /// A higher input back on air this long takes over again.
    #[serde(deserialize_with = "duration")]
    pub backup_return_delay: Duration,
    /// An input with no packet for this long is off air (with backups).
    #[serde(deserialize_with = "duration")]
    pub input_timeout: Duration,
    /// An input below this bitrate over the last second is off air (with backups).
    #[serde(deserialize_with = "opt_bitrate")]
    pub input_min_bitrate: Option<u64>,
    /// An input with more CC errors than this in the last second is off air (with backups).
    pub input_max_cc_errors: Option<u64>,
    /// One or more outputs; each gets the same packets.
    #[serde(deserialize_with = "one_or_many")]
    pub output: Vec<String>,
    /// Send the output at this constant bitrate (`"20M"`): nulls fill, PCRs are restamped,
    /// UDP is paced; what exceeds it is dropped (counted).
    #[serde(deserialize_with = "opt_bitrate")]
    pub cbr: Option<u64>,
    /// With `cbr`: the jitter buffer (packets are due this long after the stream's clock
    /// says; the latency added).
    #[serde(deserialize_with = "duration")]
    pub cbr_delay: Duration,
    /// With `cbr`: a packet this late for its slot is dropped.
    #[serde(deserialize_with = "duration")]
    pub cbr_max_delay: Duration,
    /// Services (program_number) to scramble; empty: every service in the PAT.
    #[serde(deserialize_with = "u16_list")]
    pub service: Vec<u16>,
    /// Fixed control word(s), hex EVEN or EVEN:ODD (a secret: never printed).
    #[serde(deserialize_with = "cw_text")]
    pub cw: Option<String>,
    #[serde(deserialize_with = "crypto_period")]
    pub crypto_period: Duration,
    /// Where every CW in use is written, one line per period.
    pub cw_log: Option<PathBuf>,
    #[serde(deserialize_with = "opt_pid")]
    pub ecm_pid: Option<Pid>,
    #[serde(deserialize_with = "opt_pid")]
    pub emm_pid: Option<Pid>,
    pub scrambling: Scrambling,
    pub cas: Option<CasKind>,
    /// TVCAS-style access criteria (0/1 digits, or 0x + hex); with an ECMG, its hex bytes.
    pub access_criteria: Option<String>,
    /// With `cas = "builtin"`: the channel's packages by name.
    #[serde(deserialize_with = "one_or_many")]
    pub packages: Vec<String>,
    /// With `cas = "builtin"`: EMM bandwidth in bit/s.
    #[serde(deserialize_with = "emm_bitrate")]
    pub emm_bitrate: u64,
    /// With `cas = "builtin"`: group EMMs and slim unique EMMs (`grouped`), or unique EMMs
    /// of format 1 only (`unique`).
    pub emm_format: EmmFormat,
    pub no_audio: bool,
    #[serde(deserialize_with = "pid_list")]
    pub only_pid: Vec<Pid>,
    #[serde(deserialize_with = "pid_list")]
    pub exclude_pid: Vec<Pid>,
    pub allow_unscrambled: bool,
    pub component_level: bool,
    pub no_cw_checksum: bool,
    #[serde(deserialize_with = "hex_u16")]
    pub ca_system_id: u16,
    /// SimulCrypt delay_start in ms (negative: ECM content before the key switch).
    #[serde(deserialize_with = "opt_signed_millis")]
    pub delay_start: Option<i64>,
    #[serde(deserialize_with = "opt_ecm_repetition")]
    pub ecm_repetition: Option<Duration>,
    pub wall_clock: bool,
    /// Packets per batch handed to the cipher; None: [`ChannelSpec::batch_packets`] picks.
    #[serde(deserialize_with = "opt_batch")]
    pub batch: Option<usize>,
    #[serde(deserialize_with = "opt_idle_timeout")]
    pub idle_timeout: Option<Duration>,
    /// SimulCrypt ECMGs, one per CAS: `HOST:PORT[?key=value&…]`.
    #[serde(deserialize_with = "ecmg_list")]
    pub ecmg: Vec<EcmgSpec>,
    #[serde(deserialize_with = "opt_hex_u32")]
    pub super_cas_id: Option<u32>,
    #[serde(deserialize_with = "u16_value")]
    pub channel_id: u16,
    #[serde(deserialize_with = "u16_value")]
    pub stream_id: u16,
    #[serde(deserialize_with = "u16_value")]
    pub ecm_id: u16,
    pub ecmg_version: Option<u8>,
    /// With several CAS: a key switch waits for `all` (default) or `any` of them.
    pub cas_policy: CasPolicy,
    /// Listen for SimulCrypt EMMGs (EMMG<->MUX) for this channel alone.
    pub emmg_listen: Option<SocketAddr>,
    pub emmg_max_connections: usize,
    pub emmg_max_connections_per_address: Option<usize>,
    #[serde(deserialize_with = "duration")]
    pub emmg_handshake_timeout: Duration,
    /// An MPTS channel's programs (`[[channel.program]]`), in place of `input`.
    pub program: Vec<ProgramSpec>,
    /// An MPTS channel's transport_stream_id (PAT, SDT, NIT).
    #[serde(deserialize_with = "u16_value")]
    pub tsid: u16,
    /// An MPTS channel's original_network_id (SDT, NIT).
    #[serde(deserialize_with = "u16_value")]
    pub onid: u16,
    /// An MPTS channel's network_id: a NIT is sent (PID 0x10) when set.
    #[serde(deserialize_with = "opt_u16")]
    pub network_id: Option<u16>,
    /// The NIT's network_name (and the default SDT provider name).
    pub network_name: Option<String>,
    /// Judge the output as it goes on air (ETR 290 priority 1 and 2, ECM repetition, crypto
    /// period, EMM bitrate) for the status API and `/metrics`. Off by default: it costs CPU.
    pub monitor: bool,
}

impl Default for ChannelSpec {
    fn default() -> Self {
        ChannelSpec {
            input: String::new(),
            backup: Vec::new(),
            slate: None,
            backup_start_delay: Duration::from_secs(1),
            backup_return_delay: Duration::from_secs(10),
            input_timeout: Duration::from_secs(1),
            input_min_bitrate: None,
            input_max_cc_errors: None,
            output: Vec::new(),
            cbr: None,
            cbr_delay: Duration::from_millis(250),
            cbr_max_delay: Duration::from_millis(500),
            service: Vec::new(),
            cw: None,
            crypto_period: DEFAULT_CRYPTO_PERIOD,
            cw_log: None,
            ecm_pid: None,
            emm_pid: None,
            scrambling: Scrambling::Csa2,
            cas: None,
            access_criteria: None,
            packages: Vec::new(),
            emm_bitrate: 50_000,
            emm_format: EmmFormat::Grouped,
            no_audio: false,
            only_pid: Vec::new(),
            exclude_pid: Vec::new(),
            allow_unscrambled: false,
            component_level: false,
            no_cw_checksum: false,
            ca_system_id: DEFAULT_CA_SYSTEM_ID,
            delay_start: None,
            ecm_repetition: None,
            wall_clock: false,
            batch: None,
            idle_timeout: None,
            ecmg: Vec::new(),
            super_cas_id: None,
            channel_id: 1,
            stream_id: 1,
            ecm_id: 1,
            ecmg_version: None,
            cas_policy: CasPolicy::All,
            emmg_listen: None,
            emmg_max_connections: 16,
            emmg_max_connections_per_address: None,
            emmg_handshake_timeout: Duration::from_secs(5),
            monitor: false,
            program: Vec::new(),
            tsid: 1,
            onid: 1,
            network_id: None,
            network_name: None,
        }
    }
}

impl std::fmt::Debug for ChannelSpec {
    // the CW is a key: Debug names whether one is set, never its value; an SRT
    // passphrase in a URL is masked
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSpec")
            .field("input", &crate::io::url::mask(&self.input))
            .field(
                "backup",
                &self
                    .backup
                    .iter()
                    .map(|o| crate::io::url::mask(o))
                    .collect::<Vec<_>>(),
            )
            .field(
                "output",
                &self
                    .output
                    .iter()
                    .map(|o| crate::io::url::mask(o))
                    .collect::<Vec<_>>(),
            )
            .field("program", &self.program)
            .field("cbr", &self.cbr)
            .field("service", &self.service)
            .field("cw", &self.cw.as_ref().map(|_| "<set>"))
            .field("crypto_period", &self.crypto_period)
            .field("cas", &self.cas)
            .field(
                "ecmg",
                &self.ecmg.iter().map(|e| &e.addr).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Packets per batch when none is asked for: a live input's batch is what one wake-up
/// brings anyway; a file is read as fast as it goes, and bigger batches cut the hand-offs
/// between the run loop's threads (file to file 11 % faster at 2048 than at 512).
pub const DEFAULT_BATCH: usize = 512;
pub const DEFAULT_FILE_BATCH: usize = 2048;

impl ChannelSpec {
    /// Packets per batch handed to the cipher: `batch` if set, else [`DEFAULT_FILE_BATCH`]
    /// for a file input and [`DEFAULT_BATCH`] for the others (stdin may be a live pipe,
    /// whose batch would wait to fill).
    pub fn batch_packets(&self) -> usize {
        let file = self.program.is_empty()
            && self.backup.is_empty()
            && matches!(self.input.parse(), Ok(crate::io::InputUrl::File(_)));
        self.batch.unwrap_or(if file {
            DEFAULT_FILE_BATCH
        } else {
            DEFAULT_BATCH
        })
    }

    /// The constant-bitrate output asked for, if any.
    pub fn cbr_settings(&self) -> Option<crate::mux::cbr::CbrSettings> {
        self.cbr.map(|bitrate| crate::mux::cbr::CbrSettings {
            bitrate,
            delay: self.cbr_delay,
            max_delay: self.cbr_max_delay,
        })
    }

    /// Check what serde cannot: the relations between fields (the command line's clap
    /// rules, for a file). The message names the field.
    pub fn check(&self) -> Result<(), String> {
        if !self.program.is_empty() {
            self.check_mpts()?;
        } else if self.input.trim().is_empty() {
            return Err(
                "input is missing (udp://…, srt://…, http://…, a file or -; or [[channel.program]] entries for an MPTS)"
                    .to_owned(),
            );
        } else if self.network_id.is_some() || self.network_name.is_some() {
            return Err(
                "network_id and network_name are for an MPTS channel ([[channel.program]] entries)"
                    .to_owned(),
            );
        }
        if self.output.is_empty() {
            return Err("output is missing (one or a list)".to_owned());
        }
        if let Some(c) = self.cbr_settings() {
            c.check()?;
        }
        if self.backup.len() > MAX_BACKUPS {
            return Err(format!("backup: at most {MAX_BACKUPS} backup inputs"));
        }
        if self.backup.iter().any(|b| b.trim().is_empty()) {
            return Err(
                "backup: an empty input (give udp://GROUP:PORT, srt://… or http://…)".to_owned(),
            );
        }
        if self.input_timeout.is_zero() {
            return Err("input_timeout must be above 0 (e.g. 1s)".to_owned());
        }
        if self.cas.is_some() && self.cw.is_some() {
            return Err("cas and cw exclude each other (a CAS rotates the CWs)".to_owned());
        }
        if self.access_criteria.is_some() && !self.packages.is_empty() {
            return Err("give access_criteria or packages, not both".to_owned());
        }
        if !self.packages.is_empty() && self.cas.is_none() {
            return Err("packages needs cas = \"builtin\"".to_owned());
        }
        if !self.only_pid.is_empty() && !self.exclude_pid.is_empty() {
            return Err("only_pid and exclude_pid exclude each other".to_owned());
        }
        if self.super_cas_id.is_some() && self.ecmg.is_empty() {
            return Err("super_cas_id needs ecmg".to_owned());
        }
        if self.ecmg_version.is_some_and(|v| !(2..=3).contains(&v)) {
            return Err("ecmg_version is 2 or 3".to_owned());
        }
        Ok(())
    }

    /// The relations of an MPTS channel's fields.
    fn check_mpts(&self) -> Result<(), String> {
        if !self.input.trim().is_empty() {
            return Err(
                "input and program exclude each other: an MPTS channel names its inputs in its [[channel.program]] entries"
                    .to_owned(),
            );
        }
        if !self.backup.is_empty() || self.slate.is_some() {
            return Err(
                "backup and slate are for a channel with one input, not program".to_owned(),
            );
        }
        if self.program.len() > MAX_MPTS_PROGRAMS {
            return Err(format!("program: at most {MAX_MPTS_PROGRAMS} programs"));
        }
        let mut inputs: Vec<&str> = self.program.iter().map(|p| p.input.trim()).collect();
        inputs.sort_unstable();
        inputs.dedup();
        if inputs.len() > MAX_MPTS_INPUTS {
            return Err(format!(
                "program: at most {MAX_MPTS_INPUTS} distinct inputs"
            ));
        }
        let mut out_pids: Vec<Pid> = Vec::new();
        for (k, p) in self.program.iter().enumerate() {
            let at = |what: &str| format!("program {}: {what}", k + 1);
            if p.input.trim().is_empty() {
                return Err(at(
                    "input is missing (udp://GROUP:PORT, srt://… or http://…)",
                ));
            }
            if p.pnr == Some(0) || p.program == Some(0) {
                return Err(at("pnr and program are 1 to 65535 (0 is the NIT's entry)"));
            }
            if p.lcn.is_some_and(|l| l > 1023) {
                return Err(at("lcn is 0 to 1023"));
            }
            if p.lcn.is_some() && self.network_id.is_none() {
                return Err(at("lcn goes in the NIT: give the channel a network_id"));
            }
            if let Some(n) = p.out_number() {
                let same = self.program[..k].iter().any(|q| q.out_number() == Some(n));
                if same {
                    return Err(at(&format!("pnr {n} is already another program's")));
                }
            }
            if self.program[..k]
                .iter()
                .any(|q| q.input.trim() == p.input.trim() && q.program == p.program)
            {
                return Err(at("the same input program is taken twice"));
            }
            for (_, to) in &p.pid_map {
                if to.value() < 0x20 || *to == Pid::NULL {
                    return Err(at(&format!(
                        "pid_map: {to} is reserved (0x0000-0x001F, 0x1FFF)"
                    )));
                }
                if out_pids.contains(to) {
                    return Err(at(&format!("pid_map: {to} is mapped twice")));
                }
                out_pids.push(*to);
            }
        }
        Ok(())
    }

    /// The `emmg_*` connection bounds of the channel's own EMMG<->MUX port.
    pub fn emmg_accept_limits(&self) -> Result<crate::net::AcceptLimits, super::HeadendError> {
        crate::net::AcceptLimits::new(
            self.emmg_max_connections,
            self.emmg_max_connections_per_address,
            self.emmg_handshake_timeout,
        )
        .map_err(|e| {
            super::HeadendError::Config(format!(
                "--emmg-max-connections, --emmg-max-connections-per-address, \
                 --emmg-handshake-timeout: {e}"
            ))
        })
    }

    /// Whether the channel reads stdin / writes stdout (`-`): one process has one of each.
    pub fn uses_stdio(&self) -> (bool, bool) {
        (self.input == "-", self.output.iter().any(|o| o == "-"))
    }

    /// The (address, path) each HTTP-TS output serves (outputs that do not parse are left
    /// to the channel's open to report).
    pub fn http_paths(&self) -> Vec<(std::net::SocketAddr, String)> {
        self.output
            .iter()
            .filter_map(|o| match o.parse() {
                Ok(crate::io::OutputUrl::Http(u)) => Some((u.addr, u.path)),
                _ => None,
            })
            .collect()
    }
}

/// A TOML value written as a number or a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Word {
    Number(i64),
    Text(String),
}

impl Word {
    fn text(self) -> String {
        match self {
            Word::Number(n) => n.to_string(),
            Word::Text(t) => t,
        }
    }
}

fn parsed<'de, D, T>(d: D, parse: impl Fn(&str) -> Result<T, String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let w = Word::deserialize(d)?;
    parse(&w.text()).map_err(de::Error::custom)
}

fn parsed_opt<'de, D, T>(
    d: D,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
{
    parsed(d, parse).map(Some)
}

fn parsed_list<'de, D, T>(
    d: D,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<Word>),
        One(Word),
    }
    let words = match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(w) => vec![w],
    };
    words
        .into_iter()
        .map(|w| parse(&w.text()).map_err(de::Error::custom))
        .collect()
}

/// The CW as text. Any other TOML type is refused without its value: serde's own message
/// would quote it (`cw = 0x0102030405060708` as an integer), and it is a key.
fn cw_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Secret {
        Text(String),
        Other(de::IgnoredAny),
    }
    match Secret::deserialize(d)? {
        Secret::Text(t) => Ok(Some(t)),
        Secret::Other(_) => Err(de::Error::custom(
            "cw is a string of hex digits, \"EVEN\" or \"EVEN:ODD\" (what was given is not shown: it is a key)",
        )),
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    parsed_list(d, |s| Ok(s.to_owned()))
}

fn u16_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    parsed_list(d, value::u16_number)
}

fn pid_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Pid>, D::Error> {
    parsed_list(d, value::pid)
}

fn ecmg_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EcmgSpec>, D::Error> {
    parsed_list(d, str::parse)
}

fn opt_u16<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    parsed_opt(d, value::u16_number)
}

fn opt_u8<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    parsed_opt(d, |s| {
        let n = value::u16_number(s)?;
        u8::try_from(n).map_err(|_| format!("{n} is over 255"))
    })
}

fn yes() -> bool {
    true
}

/// `"IN=OUT"`: an input PID and the output PID it becomes.
pub fn pid_pair(s: &str) -> Result<(Pid, Pid), String> {
    let (a, b) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: give IN=OUT, e.g. 0x100=0x200"))?;
    Ok((value::pid(a.trim())?, value::pid(b.trim())?))
}

fn pid_pairs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Pid, Pid)>, D::Error> {
    parsed_list(d, pid_pair)
}

fn opt_pid<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Pid>, D::Error> {
    parsed_opt(d, value::pid)
}

fn crypto_period<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parsed(d, value::crypto_period)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parsed(d, value::duration)
}

fn opt_bitrate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    parsed_opt(d, value::bitrate)
}

fn emm_bitrate<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    parsed(d, value::emm_bandwidth)
}

fn hex_u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    // a TOML number is the value itself (0x5510 in TOML is hex already)
    let w = Word::deserialize(d)?;
    match w {
        Word::Number(n) => {
            u16::try_from(n).map_err(|_| de::Error::custom(format!("{n} is over 0xFFFF")))
        }
        Word::Text(t) => value::hex_u16(&t).map_err(de::Error::custom),
    }
}

fn opt_hex_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let w = Word::deserialize(d)?;
    match w {
        Word::Number(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| de::Error::custom(format!("{n} is over 0xFFFFFFFF"))),
        Word::Text(t) => value::hex_u32(&t).map(Some).map_err(de::Error::custom),
    }
}

fn u16_value<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    parsed(d, value::u16_number)
}

fn opt_signed_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    parsed_opt(d, value::signed_millis)
}

fn opt_ecm_repetition<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parsed_opt(d, value::ecm_repetition)
}

fn opt_idle_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parsed_opt(d, value::stream_idle_timeout)
}

fn opt_batch<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    parsed_opt(d, value::batch_packets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<ChannelSpec, String> {
        toml::from_str::<ChannelSpec>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_file_input_takes_bigger_batches_unless_one_is_asked_for() {
        let file = spec("input = \"in.ts\"\noutput = \"out.ts\"").unwrap();
        assert_eq!(file.batch_packets(), DEFAULT_FILE_BATCH);
        let asked = spec("input = \"in.ts\"\noutput = \"out.ts\"\nbatch = 100").unwrap();
        assert_eq!(asked.batch_packets(), 100);
        for input in ["-", "udp://239.1.1.1:1234", "srt://127.0.0.1:9000"] {
            let s = spec(&format!("input = \"{input}\"\noutput = \"out.ts\"")).unwrap();
            assert_eq!(s.batch_packets(), DEFAULT_BATCH, "{input}");
        }
        assert!(spec("input = \"in.ts\"\noutput = \"o.ts\"\nbatch = 0").is_err());
    }

    #[test]
    fn values_are_read_as_the_command_line_reads_them() {
        let s = spec(
            r#"
            input = "udp://239.1.1.1:1234"
            output = "udp://239.2.2.1:1234"
            service = [101, "0x66"]
            crypto_period = "500ms"
            ecm_pid = "0x1FF0"
            emm_pid = 8177
            ca_system_id = 0x4AE1
            delay_start = "-500ms"
            ecmg = "127.0.0.1:43000?super_cas_id=4AE10000"
            only_pid = 256
            emm_bitrate = "1M"
            emm_format = "unique"
            monitor = true
            "#,
        )
        .unwrap();
        assert_eq!(s.output, ["udp://239.2.2.1:1234"]);
        assert_eq!(s.service, [101, 0x66]);
        assert_eq!(s.crypto_period, Duration::from_millis(500));
        assert_eq!(s.ecm_pid, Some(Pid::new(0x1FF0)));
        assert_eq!(s.emm_pid, Some(Pid::new(0x1FF1)));
        assert_eq!(s.ca_system_id, 0x4AE1);
        assert_eq!(s.delay_start, Some(-500));
        assert_eq!(s.ecmg[0].super_cas_id, Some(0x4AE1_0000));
        assert_eq!(s.only_pid, [Pid::new(256)]);
        assert_eq!(s.emm_bitrate, 1_000_000);
        assert_eq!(s.emm_format, EmmFormat::Unique);
        assert_eq!(ChannelSpec::default().emm_format, EmmFormat::Grouped);
        assert_eq!((s.batch, s.batch_packets()), (None, DEFAULT_BATCH));
        assert!(s.monitor && !ChannelSpec::default().monitor);
        s.check().unwrap();
    }

    #[test]
    fn bad_values_and_relations_are_refused_by_name() {
        for (text, says) in [
            ("crypto_period = \"10ms\"", "out of range"),
            ("ecm_pid = 9000", "over 8191"),
            ("colour = 1", "colour"),
            ("scrambling = \"des\"", "des"),
            ("ecmg = \"nohost\"", "HOST:PORT"),
        ] {
            let e = spec(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        let base = "input = \"a.ts\"\noutput = \"b.ts\"\n";
        for (extra, says) in [
            ("cas = \"builtin\"\ncw = \"0102030405060708\"", "exclude"),
            ("packages = [\"a\"]", "builtin"),
            ("only_pid = 1\nexclude_pid = 2", "exclude"),
        ] {
            let e = spec(&format!("{base}{extra}"))
                .unwrap()
                .check()
                .unwrap_err();
            assert!(e.contains(says), "{extra}: {e}");
        }
        // a list field takes one value as well as several
        let one = spec(&format!("{base}cas = \"builtin\"\npackages = \"sport\"")).unwrap();
        assert_eq!(one.packages, ["sport"]);
        assert!(spec("output = \"b.ts\"")
            .unwrap()
            .check()
            .unwrap_err()
            .contains("input"));
    }

    #[test]
    fn an_mpts_channel_names_its_programs_and_is_checked() {
        let s = spec(
            r#"
            output = "udp://239.1.1.1:1234"
            tsid = 10
            onid = "0x2"
            network_id = 1
            network_name = "castmux"
            service = 102
            [[program]]
            input = "udp://239.0.0.1:1234"
            program = 1
            pnr = 101
            name = "News"
            provider = "castmux"
            lcn = 1
            [[program]]
            input = "udp://239.0.0.2:1234"
            pnr = "0x66"
            pid_map = ["0x100=0x200", "257 = 0x201"]
            visible = false
            "#,
        )
        .unwrap();
        s.check().unwrap();
        assert_eq!((s.tsid, s.onid, s.network_id), (10, 2, Some(1)));
        assert_eq!(s.program[0].out_number(), Some(101));
        assert_eq!(s.program[1].out_number(), Some(102));
        assert_eq!(
            s.program[1].pid_map,
            [
                (Pid::new(0x100), Pid::new(0x200)),
                (Pid::new(0x101), Pid::new(0x201))
            ]
        );
        assert!(s.program[0].visible && !s.program[1].visible);
        let one = "[[program]]\ninput = \"udp://239.0.0.1:1\"\n";
        let base = "output = \"b.ts\"\n";
        for (extra, says) in [
            ("input = \"udp://239.0.0.9:1\"\n", "input and program"),
            ("backup = \"udp://239.0.0.9:1\"\n", "backup and slate"),
            ("network_id = 1\n", ""),
        ] {
            let text = format!("{base}{extra}{one}");
            let r = spec(&text).unwrap().check();
            if says.is_empty() {
                r.unwrap();
            } else {
                let e = r.unwrap_err();
                assert!(e.contains(says), "{extra}: {e}");
            }
        }
        for (fields, says) in [
            ("pnr = 0", "1 to 65535"),
            ("lcn = 5", "network_id"),
            ("pid_map = \"0x100=0x10\"", "reserved"),
        ] {
            let text = format!("{base}{one}{fields}\n");
            let e = spec(&text).unwrap().check().unwrap_err();
            assert!(e.contains(says), "{fields}: {e}");
        }
        let two = format!("{base}{one}pnr = 5\n{one}program = 5\n");
        assert!(spec(&two).unwrap().check().unwrap_err().contains("pnr 5"));
        assert!(spec("output = \"b.ts\"\nnetwork_id = 1")
            .unwrap()
            .check()
            .unwrap_err()
            .contains("input is missing"));
        assert!(spec(&format!("{base}{one}colour = 1"))
            .unwrap_err()
            .contains("colour"));
    }

    #[test]
    fn a_program_reads_from_the_command_line_as_from_the_file() {
        let p: ProgramSpec =
            "udp://239.0.0.2:1234,program=2,pnr=0x66,name=Sport,provider=Beta,lcn=2,visible=no,pid_map=0x100=0x200,pid_map=257=0x201"
                .parse()
                .unwrap();
        let toml = spec(
            r#"
            [[program]]
            input = "udp://239.0.0.2:1234"
            program = 2
            pnr = "0x66"
            name = "Sport"
            provider = "Beta"
            lcn = 2
            visible = false
            pid_map = ["0x100=0x200", "257=0x201"]
            "#,
        )
        .unwrap();
        assert!(p == toml.program[0], "{p:?}");
        for (bad, says) in [
            ("udp://a:1,pnr", "KEY=VALUE"),
            ("udp://a:1,colour=red", "colour"),
            ("udp://a:1,pnr=x", "pnr"),
            ("udp://a:1,visible=maybe", "visible"),
        ] {
            let e = bad.parse::<ProgramSpec>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn debug_never_shows_the_cw() {
        let s = ChannelSpec {
            cw: Some("0102030405060708".to_owned()),
            ..ChannelSpec::default()
        };
        let d = format!("{s:?}");
        assert!(!d.contains("0102") && d.contains("<set>"), "{d}");
    }

    #[test]
    fn a_cw_of_the_wrong_type_is_refused_without_its_value() {
        // 0x0102030405060708 is 72623859790382856
        for text in [
            "cw = 0x0102030405060708",
            "cw = 72623859790382856.5",
            "cw = [\"0102030405060708\"]",
        ] {
            // as a head-end file's channel is read: its table, then the spec
            let table: toml::Table = toml::from_str(text).unwrap();
            let e = toml::Value::Table(table)
                .try_into::<ChannelSpec>()
                .unwrap_err()
                .message()
                .to_owned();
            assert!(e.contains("cw is a string"), "{text}: {e}");
            assert!(
                !e.contains("72623859790382856") && !e.contains("0102030405060708"),
                "{text}: {e}"
            );
        }
        let ok = spec("cw = \"0102030405060708:1112131415161718\"").unwrap();
        assert_eq!(ok.cw.as_deref(), Some("0102030405060708:1112131415161718"));
        assert_eq!(spec("").unwrap().cw, None);
    }
}
