//! Differential test against the `dvb-csa` crate: 100,000+ random cases,
//! random CWs, payload lengths 0..=184 through adaptation fields, both
//! directions, every backend forced in turn.
mod common;
use common::*;
use csa::{Backend, ControlWord, KeyContext, Parity};
use dvb_csa::ts::{descramble_ts_packet, scramble_ts_packet, KeyParity};

/// At least this many cases in all, spread over the backends the CPU runs (four without
/// AVX-512, seven with it). Each backend's first batches are 1, lanes - 1, lanes and
/// lanes + 1 packets; the rest random.
const CASES: usize = 100_000;

#[test]
fn matches_dvb_csa_on_random_packets() {
    let mut rng = rng(0xC5A2);
    let backends = Backend::supported();
    let per_backend = CASES.div_ceil(backends.len());
    let mut total = 0;
    for backend in &backends {
        let lanes = backend.lanes().max(2);
        let mut edges = [1, lanes - 1, lanes, lanes + 1].into_iter();
        let mut done = 0;
        while done < per_backend {
            let even = random_cw(&mut rng);
            let odd = random_cw(&mut rng);
            let ctx = KeyContext::csa2(
                &ControlWord::from_bytes(even),
                &ControlWord::from_bytes(odd),
            )
            .with_backend(Some(*backend));
            let ref_even = dvb_csa::ControlWord::from_bytes(even);
            let ref_odd = dvb_csa::ControlWord::from_bytes(odd);
            let n = edges
                .next()
                .unwrap_or_else(|| 1 + rand::Rng::gen_range(&mut rng, 0..1200usize));
            let mut clear = Vec::with_capacity(n * 188);
            let mut parities = Vec::with_capacity(n);
            for _ in 0..n {
                let len = rand::Rng::gen_range(&mut rng, 0..=184usize);
                clear.extend_from_slice(&packet(&mut rng, 0x101, len));
                parities.push(if rand::Rng::gen_bool(&mut rng, 0.5) {
                    Parity::Even
                } else {
                    Parity::Odd
                });
            }
            // Scramble: ours vs dvb-csa.
            let mut ours = clear.clone();
            ctx.scramble_with(&mut ours, |i| parities[i]).unwrap();
            let mut theirs = clear.clone();
            for (i, p) in theirs.chunks_exact_mut(188).enumerate() {
                let (cw, kp) = match parities[i] {
                    Parity::Even => (&ref_even, KeyParity::Even),
                    Parity::Odd => (&ref_odd, KeyParity::Odd),
                };
                // dvb-csa refuses packets without payload; those stay as they are.
                let _ = scramble_ts_packet(cw, kp, p.try_into().unwrap());
            }
            assert!(
                ours == theirs,
                "{backend:?}: scramble differs from dvb-csa (n={n})"
            );
            // Descramble: dvb-csa output through ours gives the clear packets back,
            // and dvb-csa descrambles ours.
            let mut back = theirs.clone();
            ctx.descramble(&mut back).unwrap();
            assert!(back == clear, "{backend:?}: descramble of dvb-csa output");
            for (i, p) in ours.chunks_exact_mut(188).enumerate() {
                let (cw, kp) = match parities[i] {
                    Parity::Even => (&ref_even, KeyParity::Even),
                    Parity::Odd => (&ref_odd, KeyParity::Odd),
                };
                let _ = descramble_ts_packet(cw, kp, p.try_into().unwrap());
            }
            assert!(ours == clear, "{backend:?}: dvb-csa descramble of ours");
            done += n;
        }
        total += done;
    }
    assert!(total >= CASES, "ran {total} cases");
    eprintln!("{total} random packets over {} backends", backends.len());
}
