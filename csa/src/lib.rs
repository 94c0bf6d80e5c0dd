//! castmux's scrambling engine: DVB-CSA2 with SIMD bitslice kernels written
//! in C (portable 64-bit, SSE2, AVX2, AVX-512 with VBMI and GFNI at 512, 256
//! and 128 lanes, AVX-512 without them at 512 and 256), chosen at run time, and
//! the AES modes DVB-CISSA and ATIS-IDSA.
//!
//! Design:
//! - the scalar Rust path ([`scalar`]) is the plain description of the
//!   cipher and the oracle every kernel is tested against;
//! - the C kernel is one source built per lane width; [`Backend`] picks one
//!   from the CPU, `CASTMUX_CSA_BACKEND` or [`force_backend`] force one; on
//!   AVX-512 the automatic choice narrows small calls to the 256-lane build
//!   ([`Backend::for_batch`]);
//! - the safe API is [`KeyContext`]: even and odd keys expanded once per CW
//!   change, batches of 188-byte packets processed in place; [`MultiBatch`]
//!   runs the packets of many contexts in one pass, a key per kernel lane;
//! - all `unsafe` lives in `kernel.rs` (FFI), the lane sets of `batch.rs`
//!   (payload and key pointers held for one kernel call) and `reference.rs`
//!   (libdvbcsa).

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod aes_modes;
pub mod batch;
mod hex;
mod kernel;
pub mod key;
#[cfg(feature = "libdvbcsa")]
pub mod reference;
pub mod scalar;
/// DVB-CSA2 constants. They are facts of the cipher, published in the
/// cryptanalysis literature (Weinmann & Wirt 2004; Tews, Wälde & Weiner 2011)
/// and identical in every conforming implementation.
pub mod tables;

pub use aes_modes::{AesKey, AesMode};
pub use batch::{
    payload_offset, Algorithm, BatchStats, KeyContext, MultiBatch, MultiRun, Parity, PassStats,
    PACKET_SIZE,
};
pub use kernel::{
    force_backend, kernel_block_sbox, kernel_stream_sbox_circuits, kernel_stream_sbox_truth_tables,
    selected_backend, Backend, BACKEND_ENV,
};
pub use key::{ControlWord, ExpandedKey};

/// Errors of the engine's API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a control word is 16 hex digits (8 bytes); got {0} characters")]
    BadControlWord(usize),
    #[error("a batch is whole 188-byte TS packets; got {len} bytes ({} bytes over a multiple of 188)", .len % 188)]
    NotPacketMultiple { len: usize },
    #[error("{algorithm} keys are {expected} bytes; got {got}")]
    WrongKeyLength {
        algorithm: &'static str,
        expected: usize,
        got: usize,
    },
}
