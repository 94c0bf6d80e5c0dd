//! The plain, unoptimised DVB-CSA2: the oracle the SIMD kernels are tested
//! against, and the path for batches too short to fill a SIMD word.
//!
//! It follows the published description of the cipher one step at a time;
//! clarity wins over speed here on purpose.

mod block;
mod stream;

pub use block::{block_decrypt, block_encrypt};
pub use stream::StreamCipher;

use crate::key::ExpandedKey;

/// Scrambles one payload in place (libdvbcsa semantics): the full 8-byte
/// blocks are chained through the block cipher from the last to the first,
/// then everything after the first block is XORed with the stream cipher
/// seeded by the first block. Payloads under 8 bytes are left as they are.
pub fn scramble_payload(key: &ExpandedKey, data: &mut [u8]) {
    let blocks = data.len() / 8;
    if blocks == 0 {
        return;
    }
    let mut next = [0u8; 8];
    for b in (0..blocks).rev() {
        let chunk: &mut [u8; 8] = (&mut data[b * 8..b * 8 + 8]).try_into().expect("8 bytes");
        for (c, n) in chunk.iter_mut().zip(next.iter()) {
            *c ^= n;
        }
        block_encrypt(&key.kk, chunk);
        next = *chunk;
    }
    let iv: [u8; 8] = data[..8].try_into().expect("8 bytes");
    StreamCipher::new(&key.cw, &iv).xor(&mut data[8..]);
}

/// Descrambles one payload in place; the inverse of [`scramble_payload`].
pub fn descramble_payload(key: &ExpandedKey, data: &mut [u8]) {
    let blocks = data.len() / 8;
    if blocks == 0 {
        return;
    }
    let iv: [u8; 8] = data[..8].try_into().expect("8 bytes");
    StreamCipher::new(&key.cw, &iv).xor(&mut data[8..]);
    for b in 0..blocks {
        let next: [u8; 8] = if b + 1 < blocks {
            data[(b + 1) * 8..(b + 2) * 8].try_into().expect("8 bytes")
        } else {
            [0; 8]
        };
        let chunk: &mut [u8; 8] = (&mut data[b * 8..b * 8 + 8]).try_into().expect("8 bytes");
        block_decrypt(&key.kk, chunk);
        for (c, n) in chunk.iter_mut().zip(next.iter()) {
            *c ^= n;
        }
    }
}
