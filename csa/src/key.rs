//! Control words and their expanded forms.

use crate::tables::KEY_PERM_BITS;
use std::fmt;

/// An 8-byte DVB-CSA2 control word. Never printed: `Debug` is redacted and
/// the bytes are wiped on drop; [`ControlWord::to_hex`] is the one explicit export.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlWord([u8; 8]);

impl ControlWord {
    pub const fn from_bytes(bytes: [u8; 8]) -> Self {
        ControlWord(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }

    /// Parses 16 hex digits (spaces and a leading `0x` allowed).
    pub fn from_hex(text: &str) -> Result<Self, crate::Error> {
        let mut out = [0u8; 8];
        crate::hex::decode_into(text, &mut out)
            .map_err(|_| crate::Error::BadControlWord(text.len()))?;
        Ok(ControlWord(out))
    }

    /// The CW as 16 upper-case hex digits: the explicit export.
    pub fn to_hex(&self) -> String {
        crate::hex::encode_upper(&self.0)
    }

    /// Sets the CSA2 checksum bytes: byte 3 = b0+b1+b2 and byte 7 = b4+b5+b6
    /// (mod 256), the entropy reduction receivers expect.
    pub fn with_checksum(mut self) -> Self {
        self.0[3] = self.0[0].wrapping_add(self.0[1]).wrapping_add(self.0[2]);
        self.0[7] = self.0[4].wrapping_add(self.0[5]).wrapping_add(self.0[6]);
        self
    }

    /// Whether the checksum bytes are consistent.
    pub fn has_valid_checksum(&self) -> bool {
        self.clone().with_checksum() == *self
    }
}

impl fmt::Debug for ControlWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ControlWord(<redacted>)")
    }
}

impl Drop for ControlWord {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Overwrites key material with volatile writes so the compiler keeps them.
pub(crate) fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // Volatile through a safe API: `std::hint::black_box` keeps the store.
        *b = 0;
        std::hint::black_box(&*b);
    }
}

/// A CW with its block-cipher key schedule, computed once per CW change.
/// Laid out as the C kernels' `struct castmux_csa_key`.
#[derive(Clone)]
#[repr(C)]
pub struct ExpandedKey {
    pub(crate) cw: [u8; 8],
    /// The 56 round-key bytes.
    pub(crate) kk: [u8; 56],
}

impl ExpandedKey {
    pub fn new(cw: &ControlWord) -> Self {
        let mut kk = [0u8; 56];
        let mut k = u64::from_le_bytes(cw.0);
        for round in (0..7).rev() {
            for j in 0..8 {
                kk[round * 8 + j] = (k >> (8 * j)) as u8 ^ round as u8;
            }
            k = permute_key(k);
        }
        ExpandedKey { cw: cw.0, kk }
    }
}

impl fmt::Debug for ExpandedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExpandedKey(<redacted>)")
    }
}

impl Drop for ExpandedKey {
    fn drop(&mut self) {
        wipe(&mut self.cw);
        wipe(&mut self.kk);
    }
}

fn permute_key(k: u64) -> u64 {
    KEY_PERM_BITS
        .iter()
        .enumerate()
        .fold(0, |acc, (i, &to)| acc | (((k >> i) & 1) << to))
}
