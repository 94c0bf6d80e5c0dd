//! The CSA stream cipher: two shift registers of ten nibbles (A and B),
//! seven 5->2 bit S-boxes, a nibble adder, two output bits per clock.

use crate::tables::{STREAM_SBOX, STREAM_SBOX_INPUTS};

/// Stream cipher state after initialisation with a CW and an 8-byte IV.
pub struct StreamCipher {
    /// a[1..=10], a[0] unused (the published description counts from 1).
    a: [u8; 11],
    b: [u8; 11],
    x: u8,
    y: u8,
    z: u8,
    d: u8,
    e: u8,
    f: u8,
    p: u8,
    q: u8,
    r: u8,
}

impl StreamCipher {
    /// Loads the CW and runs the 32 initialisation clocks over `iv`.
    pub fn new(cw: &[u8; 8], iv: &[u8; 8]) -> Self {
        let mut s = StreamCipher {
            a: [0; 11],
            b: [0; 11],
            x: 0,
            y: 0,
            z: 0,
            d: 0,
            e: 0,
            f: 0,
            p: 0,
            q: 0,
            r: 0,
        };
        for i in 0..4 {
            s.a[1 + 2 * i] = cw[i] >> 4;
            s.a[2 + 2 * i] = cw[i] & 0xf;
            s.b[1 + 2 * i] = cw[4 + i] >> 4;
            s.b[2 + 2 * i] = cw[4 + i] & 0xf;
        }
        for &byte in iv {
            s.clock_byte(Some(byte));
        }
        s
    }

    /// XORs the keystream over `data`.
    pub fn xor(&mut self, data: &mut [u8]) {
        for byte in data {
            *byte ^= self.clock_byte(None);
        }
    }

    /// Four clocks; returns the output byte (meaningless during init).
    fn clock_byte(&mut self, init: Option<u8>) -> u8 {
        let mut out = 0u8;
        for j in 0..4 {
            let mut sb = [0u8; 7];
            for (n, inputs) in STREAM_SBOX_INPUTS.iter().enumerate() {
                let mut idx = 0usize;
                for &(reg, bit) in inputs {
                    idx = (idx << 1) | ((self.a[reg as usize] >> bit) & 1) as usize;
                }
                sb[n] = STREAM_SBOX[n][idx];
            }
            let b = &self.b;
            let bit = |reg: usize, n: u8| (b[reg] >> n) & 1;
            let extra_b = ((bit(3, 0) ^ bit(6, 1) ^ bit(7, 2) ^ bit(9, 3)) << 3)
                | ((bit(6, 0) ^ bit(8, 1) ^ bit(3, 3) ^ bit(4, 2)) << 2)
                | ((bit(5, 3) ^ bit(8, 2) ^ bit(4, 0) ^ bit(5, 1)) << 1)
                | (bit(9, 2) ^ bit(6, 3) ^ bit(3, 1) ^ bit(8, 0));

            let mut next_a1 = self.a[10] ^ self.x;
            let mut next_b1 = self.b[7] ^ self.b[10] ^ self.y;
            if let Some(byte) = init {
                let (hi, lo) = (byte >> 4, byte & 0xf);
                let (in_a, in_b) = if j % 2 == 0 { (hi, lo) } else { (lo, hi) };
                next_a1 ^= self.d ^ in_a;
                next_b1 ^= in_b;
            }
            if self.p != 0 {
                next_b1 = ((next_b1 << 1) | (next_b1 >> 3)) & 0xf;
            }
            self.d = self.e ^ self.z ^ extra_b;
            let next_e = self.f;
            if self.q != 0 {
                let sum = self.z + self.e + self.r;
                self.r = sum >> 4;
                self.f = sum & 0xf;
            } else {
                self.f = self.e;
            }
            self.e = next_e;
            self.a.copy_within(1..10, 2);
            self.b.copy_within(1..10, 2);
            self.a[1] = next_a1;
            self.b[1] = next_b1;

            let [s1, s2, s3, s4, s5, s6, s7] = sb;
            self.x = ((s4 & 1) << 3) | ((s3 & 1) << 2) | (s2 & 2) | ((s1 & 2) >> 1);
            self.y = ((s6 & 1) << 3) | ((s5 & 1) << 2) | (s4 & 2) | ((s3 & 2) >> 1);
            self.z = ((s2 & 1) << 3) | ((s1 & 1) << 2) | (s6 & 2) | ((s5 & 2) >> 1);
            self.p = (s7 & 2) >> 1;
            self.q = s7 & 1;

            let d = self.d;
            out = (out << 2) ^ ((((d ^ (d >> 1)) >> 1) & 2) | ((d ^ (d >> 1)) & 1));
        }
        out
    }
}
