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

/// `n` random packets with random parities, and what the scalar oracle makes of them
/// under `even` / `odd`.
fn random_case(
    rng: &mut rand::rngs::SmallRng,
    n: usize,
    even: &[u8; 8],
    odd: &[u8; 8],
) -> (Vec<u8>, Vec<Parity>, Vec<u8>) {
    let mut clear = Vec::with_capacity(n * 188);
    let mut parities = Vec::with_capacity(n);
    for _ in 0..n {
        let len = random_len(rng);
        clear.extend_from_slice(&packet(rng, 0x100, len));
        parities.push(if rng.gen_bool(0.5) {
            Parity::Even
        } else {
            Parity::Odd
        });
    }
    let mut expect = clear.clone();
    for (i, p) in expect.chunks_exact_mut(188).enumerate() {
        let cw = if parities[i] == Parity::Even {
            even
        } else {
            odd
        };
        scalar_scramble(cw, p.try_into().unwrap(), parities[i]);
    }
    (clear, parities, expect)
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
            let (clear, parities, expect) = random_case(&mut rng, n, &even, &odd);
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

/// The automatic backend narrows each call to the kernel that runs it cheapest
/// (on AVX-512: 256 or 512 lanes): every size around 128, 256 and 512, and
/// batches that end in a partial lane set of each width, against the scalar oracle.
#[test]
fn automatic_backend_at_the_narrowing_edges_matches_scalar() {
    let mut rng = rng(5);
    for n in [
        2usize,
        127,
        128,
        129,
        255,
        256,
        257,
        511,
        512,
        513,
        512 + 129,
        1024 + 255,
    ] {
        let even = random_cw(&mut rng);
        let odd = random_cw(&mut rng);
        let ctx = KeyContext::csa2(
            &ControlWord::from_bytes(even),
            &ControlWord::from_bytes(odd),
        );
        let (clear, parities, expect) = random_case(&mut rng, n, &even, &odd);
        let mut got = clear.clone();
        ctx.scramble_with(&mut got, |i| parities[i]).unwrap();
        assert!(got == expect, "automatic scramble n={n}");
        ctx.descramble(&mut got).unwrap();
        assert!(got == clear, "automatic descramble n={n}");
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

/// Every call size from 1 to one past a full lane set, on every backend, against the
/// scalar oracle: the kernels split their lanes into 16-lane transposes, groups of a
/// register's width run in pairs (an odd last group alone), and calls of up to 32 lanes
/// convert the keystream another way, so each size has its own edges.
#[test]
fn every_call_size_up_to_a_full_lane_set_matches_scalar() {
    let mut rng = rng(3);
    for backend in Backend::supported() {
        let lanes = backend.lanes().max(2);
        for n in 1..=lanes + 1 {
            let even = random_cw(&mut rng);
            let odd = random_cw(&mut rng);
            let ctx = KeyContext::csa2(
                &ControlWord::from_bytes(even),
                &ControlWord::from_bytes(odd),
            )
            .with_backend(Some(backend));
            let mut clear = Vec::with_capacity(n * 188);
            for _ in 0..n {
                let len = random_len(&mut rng);
                clear.extend_from_slice(&packet(&mut rng, 0x100, len));
            }
            let parity = |i: usize| {
                if i.is_multiple_of(3) {
                    Parity::Odd
                } else {
                    Parity::Even
                }
            };
            let mut expect = clear.clone();
            for (i, p) in expect.chunks_exact_mut(188).enumerate() {
                let cw = if parity(i) == Parity::Even {
                    &even
                } else {
                    &odd
                };
                scalar_scramble(cw, p.try_into().unwrap(), parity(i));
            }
            let mut got = clear.clone();
            ctx.scramble_with(&mut got, parity).unwrap();
            assert!(got == expect, "{backend:?} scramble n={n}");
            ctx.descramble(&mut got).unwrap();
            assert!(got == clear, "{backend:?} descramble n={n}");
        }
    }
}

/// The keyed kernels (a key per lane, through `MultiBatch`) at the sizes around their
/// edges, every payload under its own CW, against the scalar oracle.
#[test]
fn keyed_kernels_at_every_edge_size_match_scalar() {
    let mut rng = rng(4);
    for backend in Backend::supported() {
        let lanes = backend.lanes().max(2);
        let mut sizes = vec![
            1,
            2,
            15,
            16,
            17,
            31,
            32,
            33,
            63,
            64,
            65,
            lanes - 1,
            lanes,
            lanes + 1,
        ];
        sizes.retain(|&n| n <= lanes + 1);
        for n in sizes {
            let cws: Vec<[u8; 8]> = (0..n).map(|_| random_cw(&mut rng)).collect();
            let ctxs: Vec<KeyContext> = cws
                .iter()
                .map(|cw| {
                    KeyContext::csa2(&ControlWord::from_bytes(*cw), &ControlWord::from_bytes(*cw))
                })
                .collect();
            let clear: Vec<[u8; 188]> = (0..n)
                .map(|_| {
                    let len = random_len(&mut rng);
                    packet(&mut rng, 0x100, len)
                })
                .collect();
            let mut expect = clear.clone();
            for (p, cw) in expect.iter_mut().zip(&cws) {
                scalar_scramble(cw, p, Parity::Even);
            }
            let mut got = clear.clone();
            let mut batch = csa::MultiBatch::new().with_backend(Some(backend));
            let mut run = batch.begin();
            for (ctx, p) in ctxs.iter().zip(got.iter_mut()) {
                run.scramble(ctx, p, Parity::Even).unwrap();
            }
            run.finish();
            assert!(got == expect, "{backend:?} keyed scramble n={n}");
            let mut run = batch.begin();
            for (ctx, p) in ctxs.iter().zip(got.iter_mut()) {
                run.descramble(ctx, p).unwrap();
            }
            run.finish();
            assert!(got == clear, "{backend:?} keyed descramble n={n}");
        }
    }
}
