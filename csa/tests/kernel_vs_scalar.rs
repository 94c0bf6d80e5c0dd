//! Every SIMD backend against the scalar oracle, on random packets.
mod common;
use common::*;
use csa::{scalar, Backend, ControlWord, ExpandedKey, KeyContext, Parity};
use rand::Rng;

fn scalar_scramble(cw: &[u8; 8], pkt: &mut [u8; 188], parity: Parity) {
    let k = ExpandedKey::new(&ControlWord::from_bytes(*cw));
    if let Some(off) = csa::payload_offset(pkt) {
        pkt[3] = (pkt[3] & 0x3f) | (parity.tsc_bits() << 6);
        scalar::scramble_payload(&k, &mut pkt[off..]);
    }
}

#[test]
fn every_backend_matches_scalar_both_directions() {
    let mut rng = rng(1);
    for backend in Backend::supported() {
        for round in 0..6 {
            let even = random_cw(&mut rng);
            let odd = random_cw(&mut rng);
            let ctx = KeyContext::csa2(
                &ControlWord::from_bytes(even),
                &ControlWord::from_bytes(odd),
            )
            .with_backend(Some(backend));
            let n = [1, 7, 63, 64, 65, 513, 1100][round % 7];
            let mut clear = Vec::with_capacity(n * 188);
            let mut parities = Vec::new();
            for _ in 0..n {
                let len = random_len(&mut rng);
                clear.extend_from_slice(&packet(&mut rng, 0x100, len));
                parities.push(if rng.gen_bool(0.5) {
                    Parity::Even
                } else {
                    Parity::Odd
                });
            }
            let mut expect = clear.clone();
            for (i, p) in expect.chunks_exact_mut(188).enumerate() {
                let cw = if parities[i] == Parity::Even {
                    &even
                } else {
                    &odd
                };
                scalar_scramble(cw, p.try_into().unwrap(), parities[i]);
            }
            let mut got = clear.clone();
            ctx.scramble_with(&mut got, |i| parities[i]).unwrap();
            for i in 0..n {
                assert_eq!(
                    got[i * 188..(i + 1) * 188],
                    expect[i * 188..(i + 1) * 188],
                    "{backend:?} scramble packet {i} of {n}"
                );
            }
            ctx.descramble(&mut got).unwrap();
            assert!(got == clear, "{backend:?} descramble n={n}");
        }
    }
}

#[test]
fn automatic_backend_single_and_small_batches_match_scalar() {
    let mut rng = rng(2);
    for n in [1usize, 2, 3, 9] {
        let even = random_cw(&mut rng);
        let odd = random_cw(&mut rng);
        let ctx = KeyContext::csa2(
            &ControlWord::from_bytes(even),
            &ControlWord::from_bytes(odd),
        );
        let mut clear = Vec::new();
        for _ in 0..n {
            let len = random_len(&mut rng);
            clear.extend_from_slice(&packet(&mut rng, 0x100, len));
        }
        let mut expect = clear.clone();
        for (i, p) in expect.chunks_exact_mut(188).enumerate() {
            let (cw, par) = if i % 2 == 0 {
                (&even, Parity::Even)
            } else {
                (&odd, Parity::Odd)
            };
            scalar_scramble(cw, p.try_into().unwrap(), par);
        }
        let mut got = clear.clone();
        ctx.scramble_with(&mut got, |i| {
            if i % 2 == 0 {
                Parity::Even
            } else {
                Parity::Odd
            }
        })
        .unwrap();
        assert!(got == expect, "n={n}");
        ctx.descramble(&mut got).unwrap();
        assert!(got == clear, "n={n}");
    }
}

/// `descramble_selected` descrambles exactly the selected packets (as `descramble` would)
/// and leaves the others byte for byte, on every backend.
#[test]
fn descramble_selected_touches_only_the_selected_packets() {
    let cw = csa::ControlWord::from_bytes([1, 2, 3, 6, 5, 6, 7, 18]);
    for backend in csa::Backend::supported() {
        let ctx = csa::KeyContext::csa2(&cw, &cw).with_backend(Some(backend));
        let mut clear = vec![0u8; 600 * 188];
        for (i, p) in clear.chunks_exact_mut(188).enumerate() {
            p[0] = 0x47;
            p[1] = 0x01;
            p[3] = 0x10 | (i as u8 & 15);
            for (j, b) in p[4..].iter_mut().enumerate() {
                *b = (i * 7 + j * 13) as u8;
            }
        }
        let mut scrambled = clear.clone();
        ctx.scramble(&mut scrambled, csa::Parity::Odd).unwrap();
        let mut all = scrambled.clone();
        ctx.descramble(&mut all).unwrap();
        assert_eq!(all, clear);
        let mut some = scrambled.clone();
        let st = ctx.descramble_selected(&mut some, |i| i % 3 == 0).unwrap();
        for (i, p) in some.chunks_exact(188).enumerate() {
            let want = if i % 3 == 0 { &clear } else { &scrambled };
            assert_eq!(p, &want[i * 188..][..188], "{backend:?} packet {i}");
        }
        assert_eq!(st.clear, 400, "{backend:?}");
    }
}
