//! Differential test against the system libdvbcsa (Debian libdvbcsa-dev)
//! through FFI: both its single-packet and its bitslice API. Built with
//! `--features libdvbcsa` (`.ci/run` installs the library and turns it on).
#![cfg(feature = "libdvbcsa")]
mod common;
use common::*;
use csa::reference::{LibDvbCsa, LibDvbCsaBs};
use csa::{Backend, ControlWord, KeyContext, Parity};
use rand::Rng;

#[test]
fn matches_system_libdvbcsa_on_random_payloads() {
    let mut rng = rng(0x11BD);
    let mut cases = 0;
    for backend in Backend::supported() {
        let lanes = backend.lanes().max(2);
        // 1, lanes - 1, lanes and lanes + 1 packets first, then random sizes.
        let edges = [1, lanes - 1, lanes, lanes + 1];
        for round in 0..20 {
            let cw = random_cw(&mut rng);
            let ctx = KeyContext::csa2(&ControlWord::from_bytes(cw), &ControlWord::from_bytes(cw))
                .with_backend(Some(backend));
            let reference = LibDvbCsa::new(&cw);
            let mut bs = LibDvbCsaBs::new(&cw);
            let n = match edges.get(round) {
                Some(&n) => n,
                None => rng.gen_range(1..1500usize),
            };
            let mut clear = Vec::with_capacity(n * 188);
            for _ in 0..n {
                let len = random_len(&mut rng);
                clear.extend_from_slice(&packet(&mut rng, 0x200, len));
            }
            let mut ours = clear.clone();
            ctx.scramble(&mut ours, Parity::Even).unwrap();

            let mut single = clear.clone();
            let mut bitslice = clear.clone();
            for (p, q) in single
                .chunks_exact_mut(188)
                .zip(bitslice.chunks_exact_mut(188))
            {
                let pkt: &mut [u8; 188] = p.try_into().unwrap();
                if let Some(off) = csa::payload_offset(pkt) {
                    pkt[3] = (pkt[3] & 0x3f) | 0x80;
                    reference.encrypt(&mut pkt[off..]);
                    q[3] = (q[3] & 0x3f) | 0x80;
                }
            }
            let mut payloads: Vec<&mut [u8]> = bitslice
                .chunks_exact_mut(188)
                .filter_map(|p| {
                    let pkt: &mut [u8; 188] = p.try_into().unwrap();
                    csa::payload_offset(pkt).map(move |off| &mut pkt[off..])
                })
                .collect();
            bs.encrypt(&mut payloads);
            assert!(
                ours == single,
                "{backend:?}: scramble differs from libdvbcsa"
            );
            assert!(
                ours == bitslice,
                "{backend:?}: scramble differs from libdvbcsa bitslice"
            );

            let mut back = ours.clone();
            ctx.descramble(&mut back).unwrap();
            assert!(back == clear, "{backend:?}: descramble");
            for p in single.chunks_exact_mut(188) {
                let pkt: &mut [u8; 188] = p.try_into().unwrap();
                if let Some(off) = csa::payload_offset(pkt) {
                    pkt[3] &= 0x3f;
                    reference.decrypt(&mut pkt[off..]);
                }
            }
            assert!(single == clear, "libdvbcsa descramble of its own output");
            cases += n;
        }
    }
    eprintln!("{cases} packets checked against the system libdvbcsa");
}

/// `MultiBatch` with a key per channel and random parities against libdvbcsa's
/// one-packet API under each packet's CW, on every backend; both directions.
#[test]
fn many_keys_match_system_libdvbcsa() {
    let mut rng = rng(0x11BE);
    for backend in Backend::supported() {
        let mut batch = csa::MultiBatch::new().with_backend(Some(backend));
        for _ in 0..4 {
            let channels = rng.gen_range(1..=3 * backend.lanes().max(2));
            let keys: Vec<([u8; 8], [u8; 8])> = (0..channels)
                .map(|_| (random_cw(&mut rng), random_cw(&mut rng)))
                .collect();
            let ctxs: Vec<KeyContext> = keys
                .iter()
                .map(|(e, o)| {
                    KeyContext::csa2(&ControlWord::from_bytes(*e), &ControlWord::from_bytes(*o))
                })
                .collect();
            let mut clear = Vec::new();
            let mut parities = Vec::new();
            for _ in 0..channels {
                let n = rng.gen_range(1..12usize);
                let mut buf = Vec::with_capacity(n * 188);
                for _ in 0..n {
                    let len = random_len(&mut rng);
                    buf.extend_from_slice(&packet(&mut rng, 0x300, len));
                }
                clear.push(buf);
                parities.push(
                    (0..n)
                        .map(|_| {
                            if rng.gen_bool(0.5) {
                                Parity::Even
                            } else {
                                Parity::Odd
                            }
                        })
                        .collect::<Vec<_>>(),
                );
            }
            let mut ours = clear.clone();
            let mut run = batch.begin();
            for ((ctx, buf), par) in ctxs.iter().zip(&mut ours).zip(&parities) {
                run.scramble_selected(ctx, buf, |i| Some(par[i])).unwrap();
            }
            run.finish();
            for (c, ((even, odd), buf)) in keys.iter().zip(&clear).enumerate() {
                let (even, odd) = (LibDvbCsa::new(even), LibDvbCsa::new(odd));
                let mut theirs = buf.clone();
                for (i, p) in theirs.chunks_exact_mut(188).enumerate() {
                    let pkt: &mut [u8; 188] = p.try_into().unwrap();
                    if let Some(off) = csa::payload_offset(pkt) {
                        pkt[3] = (pkt[3] & 0x3f) | (parities[c][i].tsc_bits() << 6);
                        let key = if parities[c][i] == Parity::Even {
                            &even
                        } else {
                            &odd
                        };
                        key.encrypt(&mut pkt[off..]);
                    }
                }
                assert!(
                    theirs == ours[c],
                    "{backend:?}: channel {c} differs from libdvbcsa"
                );
            }
            let mut run = batch.begin();
            for (ctx, buf) in ctxs.iter().zip(&mut ours) {
                run.descramble(ctx, buf).unwrap();
            }
            run.finish();
            assert!(ours == clear, "{backend:?}: descramble");
        }
    }
}
