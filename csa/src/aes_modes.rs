//! AES-128 TS payload scrambling: DVB-CISSA and ATIS-IDSA.
//!
//! Both functions work on one TS packet payload, in place: the caller has
//! already skipped the TS header and adaptation field and handles the
//! `transport_scrambling_control` bits. Every payload starts a fresh CBC
//! chain. Nothing is allocated.
//!
//! # DVB-CISSA
//!
//! ETSI TS 103 127 V1.1.1 (2013-05), clause 6.3 "Normative Elements":
//! * 6.3.1.1: the block cipher is AES-128 (FIPS 197);
//! * 6.3.1.2: the IV is `0x445642544d4350544145534349535341`, which is the
//!   ASCII text `DVBTMCPTAESCISSA` ([`CISSA_IV`]);
//! * 6.3.1.3: the chaining mode is CBC (NIST SP 800-38A);
//! * 6.3.2: each TS packet is processed separately, and
//!   `encrypted_payload_size = payload_size - (payload_size mod 16)`.
//!   The remaining bytes are left unchanged. Example 4 in that clause has a
//!   15-byte payload that stays entirely in the clear.
//!
//! Annex B of the standard gives test vectors for TS-level scrambling. The
//! tests in `tests/aes_modes.rs` use them.
//!
//! # ATIS-IDSA
//!
//! This is ATIS-0800006, "IIF Default Scrambling Algorithm (IDSA) IPTV
//! Interoperability Specification". ITU-T X.1194 Appendix I.1 also refers
//! to it. I could not read the ATIS text itself because it is paywalled.
//! The rule used here comes from TSDuck, an independent implementation.
//! Its `tsIDSA.h`/`tsIDSA.cpp` define ATIS-IDSA as the DVS 042 chaining mode
//! (`tsDVS042Template.h`) over AES-128, with both the IV and the
//! short-packet IV set to zero. TSDuck's `tsSCTE52.h` says that DVS 042 was
//! renamed ANSI/SCTE 52. The mode is the "residual block termination"
//! variant of CBC:
//! * the full 16-byte blocks are encrypted with AES-128 CBC, with the IV set
//!   to zero ([`IDSA_IV`]);
//! * the residue (`len mod 16` trailing bytes) is XORed with the leading
//!   bytes of `AES_K(C_last)`, where `C_last` is the last full ciphertext
//!   block. Descrambling also uses the AES encryption here, not decryption;
//! * a payload shorter than 16 bytes has no `C_last`. It is XORed with
//!   `AES_K(IV) = AES_K(0^128)`.
//!
//! TSDuck's known-answer vectors (`src/utest/crypto/tv_atis_idsa.h`, with
//! 13-, 35- and 48-byte payloads) match this rule. They are in the tests.
//! TSDuck does not say where those vectors come from.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Block};
use std::fmt;

/// The AES block size in bytes.
const BLOCK: usize = 16;

/// The DVB-CISSA IV (ETSI TS 103 127 clause 6.3.1.2): ASCII `DVBTMCPTAESCISSA`.
pub const CISSA_IV: [u8; 16] = *b"DVBTMCPTAESCISSA";

/// The ATIS-IDSA IV: all zero. This value is also used for the short-payload rule.
pub const IDSA_IV: [u8; 16] = [0u8; 16];

/// How many blocks go to the AES back end in one call when descrambling.
/// CBC decryption can run in parallel, and the AES-NI back end of `aes`
/// processes 8 blocks at a time.
const PAR_BLOCKS: usize = 8;

/// The AES-128 payload scrambling mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AesMode {
    /// DVB-CISSA (ETSI TS 103 127): CBC with a fixed IV. The residue stays clear.
    Cissa,
    /// ATIS-IDSA (ATIS-0800006): CBC with a zero IV. The residue is handled
    /// by residual block termination.
    Idsa,
}

impl AesMode {
    /// The fixed IV this mode uses.
    pub const fn iv(self) -> [u8; 16] {
        match self {
            AesMode::Cissa => CISSA_IV,
            AesMode::Idsa => IDSA_IV,
        }
    }
}

/// An expanded AES-128 key (round keys computed once per key change). Debug is redacted; key bytes never printed.
///
/// The raw key bytes are not kept. The round keys live in [`Aes128`]. They
/// are wiped on drop only if the `aes` crate's `zeroize` feature is on, and
/// `csa/Cargo.toml` does not enable it at the moment.
#[derive(Clone)]
pub struct AesKey {
    cipher: Aes128,
}

impl AesKey {
    /// Expands a 16-byte AES-128 key.
    pub fn new(key: &[u8; 16]) -> Self {
        AesKey {
            cipher: Aes128::new(&(*key).into()),
        }
    }
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

/// Scrambles one TS packet payload in place.
///
/// * CISSA: `len - len % 16` bytes become AES-128-CBC ciphertext (IV
///   [`CISSA_IV`]). The residue, and any payload under 16 bytes, stays clear.
/// * IDSA: the full blocks become AES-128-CBC ciphertext (zero IV). The
///   residue is XORed with `AES(last ciphertext block)`, or with `AES(0)`
///   when the payload is under 16 bytes.
pub fn scramble_payload(mode: AesMode, key: &AesKey, data: &mut [u8]) {
    let full_len = data.len() - data.len() % BLOCK;
    let (full, residue) = data.split_at_mut(full_len);

    let mut chain = Block::from(mode.iv());
    for chunk in full.chunks_exact_mut(BLOCK) {
        let block = Block::from_mut_slice(chunk);
        xor_in_place(block, &chain);
        key.cipher.encrypt_block(block);
        chain = *block;
    }

    terminate_residue(mode, key, &chain, residue);
}

/// Descrambles one TS packet payload in place. It undoes
/// [`scramble_payload`] with the same mode and key.
pub fn descramble_payload(mode: AesMode, key: &AesKey, data: &mut [u8]) {
    let full_len = data.len() - data.len() % BLOCK;
    let (full, residue) = data.split_at_mut(full_len);

    // `chain` is the ciphertext block before the current batch, or the IV.
    let mut chain = Block::from(mode.iv());
    let mut work = [Block::default(); PAR_BLOCKS];
    for batch in full.chunks_mut(BLOCK * PAR_BLOCKS) {
        let n = batch.len() / BLOCK;
        for (w, c) in work.iter_mut().zip(batch.chunks_exact(BLOCK)) {
            w.copy_from_slice(c);
        }
        key.cipher.decrypt_blocks(&mut work[..n]);

        // Before the batch is overwritten, keep its last ciphertext block
        // as the chain value for the next batch.
        let next_chain = *Block::from_slice(&batch[(n - 1) * BLOCK..]);

        // Write back from the last block to the first. Then block i-1 is
        // still ciphertext when P_i = D(C_i) ^ C_{i-1} is written.
        for i in (0..n).rev() {
            let prev = if i == 0 {
                chain
            } else {
                *Block::from_slice(&batch[(i - 1) * BLOCK..i * BLOCK])
            };
            let out = Block::from_mut_slice(&mut batch[i * BLOCK..(i + 1) * BLOCK]);
            *out = work[i];
            xor_in_place(out, &prev);
        }
        chain = next_chain;
    }

    terminate_residue(mode, key, &chain, residue);
}

/// The residue rule. `last` is the last full ciphertext block, or the IV
/// when there are no full blocks. Scrambling and descrambling use the same
/// rule: under IDSA the residue is XORed with `AES_K(last)`.
fn terminate_residue(mode: AesMode, key: &AesKey, last: &Block, residue: &mut [u8]) {
    match mode {
        AesMode::Cissa => {}
        AesMode::Idsa => {
            if residue.is_empty() {
                return;
            }
            let mut pad = *last;
            key.cipher.encrypt_block(&mut pad);
            for (r, p) in residue.iter_mut().zip(pad.iter()) {
                *r ^= p;
            }
        }
    }
}

fn xor_in_place(dst: &mut Block, src: &Block) {
    for (d, s) in dst.iter_mut().zip(src.iter()) {
        *d ^= s;
    }
}
