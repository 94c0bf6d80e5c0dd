//! Helpers shared by the csa integration tests.
#![allow(dead_code)]

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

pub fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

/// A clear TS packet with a payload of exactly `payload_len` bytes (0..=184):
/// shorter payloads get an adaptation field with stuffing.
pub fn packet(rng: &mut SmallRng, pid: u16, payload_len: usize) -> [u8; 188] {
    let mut p = [0u8; 188];
    rng.fill_bytes(&mut p);
    p[0] = 0x47;
    p[1] = (p[1] & 0x40) | ((pid >> 8) as u8 & 0x1f);
    p[2] = pid as u8;
    let cc = p[3] & 0x0f;
    if payload_len == 184 {
        p[3] = 0x10 | cc;
    } else if payload_len == 0 {
        p[3] = 0x20 | cc;
        p[4] = 183;
        p[5] = 0;
    } else {
        p[3] = 0x30 | cc;
        let af_len = 183 - payload_len; // 4 header + 1 length byte + af_len + payload = 188
        p[4] = af_len as u8;
        if af_len > 0 {
            p[5] = 0;
            for b in &mut p[6..5 + af_len] {
                *b = 0xff;
            }
        }
    }
    p
}

pub fn random_cw(rng: &mut SmallRng) -> [u8; 8] {
    let mut cw = [0u8; 8];
    rng.fill_bytes(&mut cw);
    cw
}

pub fn random_len(rng: &mut SmallRng) -> usize {
    // Half full payloads (the common case), half any length.
    if rng.gen_bool(0.5) {
        184
    } else {
        rng.gen_range(0..=184)
    }
}
