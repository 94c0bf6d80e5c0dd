//! The CSA block cipher: 56 rounds over eight byte registers R1..R8.

use crate::tables::{perm_byte, BLOCK_SBOX};

/// Decrypts one 8-byte block: rounds 55 down to 0.
pub fn block_decrypt(kk: &[u8; 56], block: &mut [u8; 8]) {
    // r[0] is R1 ... r[7] is R8.
    let mut r = *block;
    for round in (0..56).rev() {
        let s = BLOCK_SBOX[(kk[round] ^ r[6]) as usize];
        let p = perm_byte(s);
        let t = r[7] ^ s;
        r = [t, r[0], r[1] ^ t, r[2] ^ t, r[3] ^ t, r[4], r[5] ^ p, r[6]];
    }
    *block = r;
}

/// Encrypts one 8-byte block: the exact inverse of [`block_decrypt`].
pub fn block_encrypt(kk: &[u8; 56], block: &mut [u8; 8]) {
    let mut r = *block;
    for &k in kk.iter() {
        let s = BLOCK_SBOX[(k ^ r[7]) as usize];
        let p = perm_byte(s);
        let r1 = r[0];
        r = [
            r[1],
            r[2] ^ r1,
            r[3] ^ r1,
            r[4] ^ r1,
            r[5],
            r[6] ^ p,
            r[7],
            r1 ^ s,
        ];
    }
    *block = r;
}
