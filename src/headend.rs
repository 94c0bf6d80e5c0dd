//! The head-end file of `castmux headend` (docs/headend.md), as written: TOML with an
//! optional `[emmg]` table and one `[[channel]]` table per channel. Reading it is library
//! code so the parser can be fuzzed; checking each channel's `castmux scramble` options
//! stays with the command line, which owns those options.

use serde::Deserialize;

/// Why a head-end file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadendFileError {
    /// Not TOML, or not the head-end file's shape (unknown keys are refused).
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
}

/// The file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadendFile {
    /// `[emmg]`: the shared EMMG<->MUX port, if any.
    pub emmg: Option<EmmgPort>,
    /// `[[channel]]` tables, in file order.
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelEntry>,
}

impl HeadendFile {
    /// Read a head-end file's text.
    pub fn parse(text: &str) -> Result<HeadendFile, HeadendFileError> {
        Ok(toml::from_str(text)?)
    }
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

/// One `[[channel]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelEntry {
    /// The channel's name (log lines, errors).
    pub name: String,
    /// The channel's `castmux scramble` options: one string split at whitespace, or a list.
    pub args: ArgsValue,
    /// Take the `[emmg]` port's EMMs. Default true when `[emmg]` is there.
    pub emm_clone: Option<bool>,
}

/// A channel's options, as one line or as a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ArgsValue {
    /// One string, split at whitespace (no shell quoting).
    Line(String),
    /// One string per word.
    List(Vec<String>),
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
        assert_eq!(f.channels[0].args.words(), ["-i", "x"]);
        assert_eq!(f.channels[1].args.words(), ["-o", "a b"]);
        assert_eq!(f.channels[1].emm_clone, Some(false));
        let e = HeadendFile::parse("colour = 1\n").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }
}
