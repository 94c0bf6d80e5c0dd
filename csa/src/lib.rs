//! castmux's DVB-CSA2 engine.
pub mod key;
pub mod scalar;
pub mod tables;
mod hex;

pub use key::{ControlWord, ExpandedKey};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a control word is 16 hex digits (8 bytes); got {0} characters")]
    BadControlWord(usize),
}
