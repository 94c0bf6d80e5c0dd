//! Errors of the scrambling pipeline.

use crate::io::IoError;
use crate::ts::TsError;

/// What can stop a scrambling or descrambling run, or reject its settings.
#[derive(Debug, thiserror::Error)]
pub enum ScrambleError {
    /// A control word is not hex of the algorithm's length.
    #[error("bad control word: {0}")]
    BadControlWord(String),
    /// Settings that cannot work together.
    #[error("bad settings: {0}")]
    Config(String),
    /// The OS random source failed and there is no key to hold.
    #[error("the OS random generator failed: {0}")]
    Random(String),
    /// The CW log could not be read or written.
    #[error("CW log {path}: {source}")]
    CwLog {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A line of a CW log is not a control word.
    #[error("CW log {path}, line {line}: {reason}")]
    CwLogLine {
        path: String,
        line: usize,
        reason: String,
    },
    /// The cipher engine refused a key or a batch.
    #[error("cipher engine: {0}")]
    Engine(#[from] csa::Error),
    /// Input or output failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A table we write could not be built.
    #[error("PSI writer: {0}")]
    Psi(#[from] TsError),
    /// An ECM generator's answer ends the run (a file run cannot wait for an ECMG that
    /// refused its crypto period).
    #[error(transparent)]
    Ecm(#[from] super::ecm::EcmError),
}
