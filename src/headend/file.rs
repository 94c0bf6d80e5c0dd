//! The head-end file of `castmux headend` (docs/headend.md): TOML with an optional `[emmg]`
//! table and one `[[channel]]` table per channel. A channel is written in the typed form
//! (the [`ChannelSpec`] fields: `input`, `output`, `service`, …) or, as files written for
//! earlier versions do, as `args = "…"` (the `castmux scramble` options, which the command
//! line parses into the same spec). [`HeadendPlan`] is the file checked.

use std::net::SocketAddr;

use serde::Deserialize;

use super::error::HeadendError;
use super::spec::ChannelSpec;
use crate::net::AcceptLimits;
use crate::ts::Pid;

/// Why a head-end file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadendFileError {
    /// Not TOML, or not the head-end file's shape (unknown keys are refused): where, and
    /// toml's message. toml's own text quotes the line (and its error keeps the whole
    /// file), and the line may hold a key (`cw = …`, `args = "… --cw …"`, a passphrase),
    /// so neither is kept.
    #[error("{0}")]
    Toml(String),
}

impl HeadendFileError {
    fn toml(text: &str, e: &toml::de::Error) -> HeadendFileError {
        let msg = e.message().trim().replace('\n', "; ");
        let at = e
            .span()
            .and_then(|span| text.get(..span.start))
            .map(|before| {
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("line {line}, column {column}: ")
            });
        HeadendFileError::Toml(format!("{}{msg}", at.unwrap_or_default()))
    }
}

/// The file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadendFile {
    /// `[headend]`: how the process runs its channels.
    pub headend: Option<HeadendTable>,
    /// `[emmg]`: the shared EMMG<->MUX port, if any.
    pub emmg: Option<EmmgPort>,
    /// `[http]`: the HTTP API (status, control, metrics, cards).
    pub http: Option<HttpTable>,
    /// `[[channel]]` tables, in file order.
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelEntry>,
}

impl HeadendFile {
    /// Read a head-end file's text.
    pub fn parse(text: &str) -> Result<HeadendFile, HeadendFileError> {
        toml::from_str(text).map_err(|e| HeadendFileError::toml(text, &e))
    }
}

/// `[headend]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadendTable {
    /// Restart a channel that fails (backoff 1 s doubling to 30 s). Default true.
    pub restart: Option<bool>,
}

/// `[http]`: the head-end's HTTP server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTable {
    /// Where to listen. Default 127.0.0.1:8000.
    pub listen: Option<String>,
    /// The API key's file; without it the key comes from CASTMUX_API_KEY.
    pub api_key_file: Option<std::path::PathBuf>,
    /// The export key's file (the key of `POST /api/v1/cards/{serial}/export-key`); without
    /// it the key comes from CASTMUX_EXPORT_KEY, and without that the export is off.
    pub export_key_file: Option<std::path::PathBuf>,
    /// Connections at once. Default 256.
    pub max_connections: Option<usize>,
    /// Connections from one address. Default three quarters of max_connections.
    pub max_connections_per_address: Option<usize>,
}

/// The `[http]` table, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPlan {
    pub listen: SocketAddr,
    pub api_key_file: Option<std::path::PathBuf>,
    pub export_key_file: Option<std::path::PathBuf>,
    pub max_connections: usize,
    pub max_connections_per_address: Option<usize>,
}

/// `[emmg]`: the shared EMMG<->MUX port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmmgPort {
    /// Where EMMGs connect (TCP, and UDP data_provision on the same port), as written.
    pub listen: String,
    /// The PID the cloned EMMs go out on in every channel that names none (a number or a
    /// string such as "0x1FF1").
    pub emm_pid: PidValue,
    /// EMMG connections at once. Default 16.
    pub max_connections: Option<usize>,
    /// EMMG connections from one IP address at once. Default three quarters of
    /// max_connections.
    pub max_connections_per_address: Option<usize>,
    /// Time from connect to an accepted channel_setup, e.g. "5s". Default 5 s.
    pub handshake_timeout: Option<String>,
}

/// A PID as a TOML number or string, checked by the caller.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PidValue {
    /// `emm_pid = 8177`.
    Number(u16),
    /// `emm_pid = "0x1FF1"`.
    Text(String),
}

/// One `[[channel]]`. Its Debug names the typed fields but shows none of their values,
/// nor the `args` words: either may hold a CW or a passphrase.
#[derive(Deserialize)]
pub struct ChannelEntry {
    /// The channel's name (log lines, errors).
    pub name: String,
    /// The channel's `castmux scramble` options: one string split at whitespace, or a list.
    /// Absent in the typed form.
    pub args: Option<ArgsValue>,
    /// Take the `[emmg]` port's EMMs. Default true when `[emmg]` is there.
    pub emm_clone: Option<bool>,
    /// The typed form's fields (a [`ChannelSpec`]), checked by [`HeadendPlan::from_file`].
    #[serde(flatten)]
    pub fields: toml::Table,
}

impl std::fmt::Debug for ChannelEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelEntry")
            .field("name", &self.name)
            .field("args", &self.args)
            .field("emm_clone", &self.emm_clone)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A channel's options, as one line or as a list. Its Debug shows how many words, not
/// them (`--cw` may be among them).
#[derive(Deserialize)]
#[serde(untagged)]
pub enum ArgsValue {
    /// One string, split at whitespace (no shell quoting).
    Line(String),
    /// One string per word.
    List(Vec<String>),
}

impl std::fmt::Debug for ArgsValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArgsValue(<{} words>)", self.words().len())
    }
}

impl ArgsValue {
    /// The words, as a command line parser takes them.
    pub fn words(&self) -> Vec<String> {
        match self {
            ArgsValue::Line(l) => l.split_whitespace().map(str::to_owned).collect(),
            ArgsValue::List(v) => v.clone(),
        }
    }
}

/// The `[emmg]` table, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmmgPlan {
    pub listen: SocketAddr,
    /// The PID the cloned EMMs go out on in channels that name none.
    pub emm_pid: Pid,
    pub accept: AcceptLimits,
}

/// One channel, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelPlan {
    pub name: String,
    pub spec: ChannelSpec,
    /// Takes the `[emmg]` port's EMMs.
    pub emm_clone: bool,
}

/// What a head-end file asks for, checked.
#[derive(Debug, Clone)]
pub struct HeadendPlan {
    pub emmg: Option<EmmgPlan>,
    /// `[http]`, if any.
    pub http: Option<HttpPlan>,
    pub channels: Vec<ChannelPlan>,
    /// Restart a channel that fails, with backoff (the head-end file's default); a
    /// one-shot run (`castmux scramble`) reports the failure instead.
    pub restart: bool,
    /// UDP channels share the data plane's workers (a head-end); else each channel runs on
    /// threads of its own (one fast stream, `castmux scramble`).
    pub shared_plane: bool,
}

impl HeadendPlan {
    /// One channel and nothing else (`castmux scramble`).
    pub fn single(name: &str, spec: ChannelSpec) -> HeadendPlan {
        HeadendPlan {
            emmg: None,
            http: None,
            channels: vec![ChannelPlan {
                name: name.to_owned(),
                spec,
                emm_clone: false,
            }],
            restart: false,
            shared_plane: false,
        }
    }

    /// Check a head-end file's text. `parse_args` turns an `args` channel's words into a
    /// spec (the command line's parser); the typed form is read here.
    pub fn from_file(
        text: &str,
        parse_args: &dyn Fn(&[String]) -> Result<ChannelSpec, String>,
    ) -> Result<HeadendPlan, HeadendError> {
        let file = HeadendFile::parse(text)
            .map_err(|e| HeadendError::Config(format!("not a head-end file: {e}")))?;
        let emmg = file.emmg.as_ref().map(emmg_plan).transpose()?;
        let http = file.http.as_ref().map(http_plan).transpose()?;
        if file.channels.is_empty() {
            return Err(HeadendError::Config(
                "no [[channel]]; each channel needs a name, and input and output (or args)"
                    .to_owned(),
            ));
        }
        let mut channels: Vec<ChannelPlan> = Vec::with_capacity(file.channels.len());
        for c in file.channels {
            let bad = |e: String| HeadendError::Config(format!("channel {:?}: {e}", c.name));
            if c.name.trim().is_empty() {
                return Err(HeadendError::Config(
                    "a [[channel]] has an empty name".to_owned(),
                ));
            }
            if channels.iter().any(|o| o.name == c.name) {
                return Err(HeadendError::Config(format!(
                    "two channels are named {:?}; names must differ",
                    c.name
                )));
            }
            let spec = match (&c.args, c.fields.is_empty()) {
                (Some(args), true) => {
                    let spec = parse_args(&args.words()).map_err(bad)?;
                    // what clap cannot say (input with --program): the spec's own check
                    spec.check().map_err(bad)?;
                    spec
                }
                (Some(_), false) => {
                    let keys: Vec<&str> = c.fields.keys().map(String::as_str).collect();
                    return Err(bad(format!(
                        "give args or the typed fields, not both (typed: {})",
                        keys.join(", ")
                    )));
                }
                (None, _) => {
                    let spec: ChannelSpec = toml::Value::Table(c.fields.clone())
                        .try_into()
                        .map_err(|e: toml::de::Error| bad(e.message().to_owned()))?;
                    spec.check().map_err(bad)?;
                    spec
                }
            };
            // one process has one stdin and one stdout
            let (stdin, stdout) = spec.uses_stdio();
            let (stdin_taken, stdout_taken) = channels
                .iter()
                .map(|o| o.spec.uses_stdio())
                .fold((false, false), |a, b| (a.0 || b.0, a.1 || b.1));
            if stdin && stdin_taken {
                return Err(bad("another channel already reads stdin (-i -)".to_owned()));
            }
            if stdout && stdout_taken {
                return Err(bad(
                    "another channel already writes stdout (-o -)".to_owned()
                ));
            }
            // one HTTP-TS path is one stream: served by one output of one channel
            let served: Vec<_> = channels.iter().flat_map(|o| o.spec.http_paths()).collect();
            let mine = spec.http_paths();
            for (i, (addr, path)) in mine.iter().enumerate() {
                if served.contains(&(*addr, path.clone()))
                    || mine[..i].contains(&(*addr, path.clone()))
                {
                    return Err(bad(format!(
                        "http://{addr}{path} is already served by another output; give each output its own path"
                    )));
                }
            }
            let emm_clone = c.emm_clone.unwrap_or(emmg.is_some());
            if emm_clone && emmg.is_none() {
                return Err(bad(
                    "emm_clone needs an [emmg] table (listen, emm_pid)".to_owned()
                ));
            }
            channels.push(ChannelPlan {
                name: c.name,
                spec,
                emm_clone,
            });
        }
        Ok(HeadendPlan {
            emmg,
            http,
            channels,
            restart: file
                .headend
                .as_ref()
                .and_then(|h| h.restart)
                .unwrap_or(true),
            shared_plane: true,
        })
    }
}

/// The `[emmg]` table checked.
fn emmg_plan(e: &EmmgPort) -> Result<EmmgPlan, HeadendError> {
    let bad = |what: &str, e: String| HeadendError::Config(format!("[emmg] {what}: {e}"));
    let listen = e.listen.parse().map_err(|_| {
        HeadendError::Config(format!(
            "[emmg] listen = {:?}: expected ADDR:PORT",
            e.listen
        ))
    })?;
    let emm_pid = match &e.emm_pid {
        PidValue::Number(n) => crate::value::pid(&n.to_string()),
        PidValue::Text(t) => crate::value::pid(t),
    }
    .map_err(|err| bad("emm_pid", err))?;
    let defaults = crate::simulcrypt::EmmMuxConfig::default().accept;
    let handshake = match &e.handshake_timeout {
        Some(t) => crate::value::duration(t).map_err(|err| bad("handshake_timeout", err))?,
        None => defaults.handshake_timeout(),
    };
    let accept = AcceptLimits::new(
        e.max_connections.unwrap_or(defaults.max_connections()),
        e.max_connections_per_address,
        handshake,
    )
    .map_err(|err| HeadendError::Config(format!("[emmg]: {err}")))?;
    Ok(EmmgPlan {
        listen,
        emm_pid,
        accept,
    })
}

/// Check `[http]`.
fn http_plan(h: &HttpTable) -> Result<HttpPlan, HeadendError> {
    let listen = h.listen.as_deref().unwrap_or(crate::http::DEFAULT_LISTEN);
    let listen = listen.parse().map_err(|_| {
        HeadendError::Config(format!(
            "[http] listen = {listen:?}: expected ADDR:PORT, e.g. 127.0.0.1:8000"
        ))
    })?;
    let max_connections = h
        .max_connections
        .unwrap_or(crate::http::DEFAULT_MAX_CONNECTIONS);
    crate::http::HttpLimits::new(max_connections, h.max_connections_per_address)
        .map_err(|e| HeadendError::Config(format!("[http]: {e}")))?;
    Ok(HttpPlan {
        listen,
        api_key_file: h.api_key_file.clone(),
        export_key_file: h.export_key_file.clone(),
        max_connections,
        max_connections_per_address: h.max_connections_per_address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_args_forms_and_refuses_unknown_keys() {
        let f = HeadendFile::parse(
            "[emmg]\nlisten = \"127.0.0.1:1\"\nemm_pid = 8177\n\
             [[channel]]\nname = \"a\"\nargs = \" -i  x \"\n\
             [[channel]]\nname = \"b\"\nargs = [\"-o\", \"a b\"]\nemm_clone = false\n",
        )
        .unwrap();
        assert!(matches!(f.emmg.unwrap().emm_pid, PidValue::Number(8177)));
        assert_eq!(f.channels[0].args.as_ref().unwrap().words(), ["-i", "x"]);
        assert_eq!(f.channels[1].args.as_ref().unwrap().words(), ["-o", "a b"]);
        assert_eq!(f.channels[1].emm_clone, Some(false));
        let e = HeadendFile::parse("colour = 1\n").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn debug_shows_neither_args_words_nor_typed_values() {
        let f = HeadendFile::parse(
            "[[channel]]\nname = \"a\"\nargs = \"-i x --cw 0102030405060708\"\n\
             [[channel]]\nname = \"b\"\ncw = \"1112131415161718\"\n",
        )
        .unwrap();
        let d = format!("{f:?}");
        assert!(!d.contains("0102") && !d.contains("1112"), "{d}");
        assert!(d.contains("<4 words>") && d.contains("\"cw\""), "{d}");
    }

    #[test]
    fn a_syntax_error_says_where_but_never_quotes_the_line() {
        let even = "0102030405060708";
        for (text, line) in [
            // a CW written without quotes
            (
                format!("[[channel]]\nname = \"a\"\ncw = {even}:1112131415161718\n"),
                3,
            ),
            // an args string left open
            (
                format!("[[channel]]\nname = \"a\"\n\nargs = \"-i x --cw {even}\n"),
                4,
            ),
            // an SRT passphrase in a broken line
            (
                "[[channel]]\nname = \"a\"\noutput = srt://h:1?passphrase=sesame12345\n".to_owned(),
                3,
            ),
        ] {
            let e = HeadendFile::parse(&text).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(shown.contains(&format!("line {line}, column")), "{shown}");
            assert!(
                !shown.contains(even) && !shown.contains("sesame"),
                "{shown}"
            );
            let e = HeadendPlan::from_file(&text, &|_| unreachable!("not reached")).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(shown.contains("not a head-end file: line"), "{shown}");
            assert!(
                !shown.contains(even) && !shown.contains("sesame"),
                "{shown}"
            );
        }
    }

    #[test]
    fn one_http_path_is_served_by_one_output() {
        let plan = |outs: [&str; 2]| {
            let text = format!(
                "[[channel]]\nname = \"a\"\ninput = \"udp://:5000\"\noutput = \"{}\"\n\
                 [[channel]]\nname = \"b\"\ninput = \"udp://:5001\"\noutput = \"{}\"\n",
                outs[0], outs[1]
            );
            HeadendPlan::from_file(&text, &|_| unreachable!("typed form"))
        };
        // one port, two paths: fine; the same path on another port: fine
        plan(["http://0.0.0.0:8100/a", "http://0.0.0.0:8100/b"]).unwrap();
        plan(["http://0.0.0.0:8100/a", "http://0.0.0.0:8101/a"]).unwrap();
        let e = plan([
            "http://0.0.0.0:8100/a",
            "http://0.0.0.0:8100/a?max_clients=5",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("channel \"b\"") && e.contains("http://0.0.0.0:8100/a is already served"),
            "{e}"
        );
    }
}
