//! Hostile batches: wrong sizes are errors, corrupt packets are counted and
//! never stop the others, and nothing panics.
mod common;
use common::*;
use csa::{Backend, ControlWord, Error, KeyContext, Parity};
use rand::{Rng, RngCore};

fn ctx(backend: Backend) -> KeyContext {
    KeyContext::csa2(
        &ControlWord::from_bytes([1; 8]),
        &ControlWord::from_bytes([2; 8]),
    )
    .with_backend(Some(backend))
}

#[test]
fn non_multiple_of_188_is_an_error() {
    for len in [1usize, 187, 189, 188 * 3 + 5] {
        let mut buf = vec![0x47u8; len];
        let before = buf.clone();
        match ctx(Backend::best()).scramble(&mut buf, Parity::Even) {
            Err(Error::NotPacketMultiple { len: l }) => assert_eq!(l, len),
            other => panic!("expected NotPacketMultiple, got {other:?}"),
        }
        assert_eq!(buf, before, "rejected batch left untouched");
        assert!(ctx(Backend::best()).descramble(&mut buf).is_err());
    }
    // Empty is fine.
    assert_eq!(
        ctx(Backend::best()).scramble(&mut [], Parity::Odd).unwrap(),
        csa::BatchStats::default()
    );
}

#[test]
fn corrupt_packets_are_counted_and_skipped() {
    let mut rng = rng(7);
    for backend in Backend::supported() {
        let c = ctx(backend);
        let mut batch = Vec::new();
        let good = packet(&mut rng, 0x100, 184);
        let mut bad_sync = good;
        bad_sync[0] = 0x48;
        let mut bad_af = good;
        bad_af[3] = 0x30;
        bad_af[4] = 200; // adaptation field longer than the packet
        let af_only = packet(&mut rng, 0x100, 0);
        let mut scrambled = good;
        scrambled[3] |= 0xc0;
        let short = packet(&mut rng, 0x100, 5);
        for p in [good, bad_sync, bad_af, af_only, scrambled, short, good] {
            batch.extend_from_slice(&p);
        }
        let before = batch.clone();
        let stats = c.scramble(&mut batch, Parity::Even).unwrap();
        assert_eq!(stats.processed, 2, "{backend:?}");
        assert_eq!(stats.bad_sync, 1);
        assert_eq!(stats.no_payload, 2);
        assert_eq!(stats.already_scrambled, 1);
        assert_eq!(stats.short_payload, 1);
        for i in [1, 2, 3, 4] {
            assert_eq!(
                batch[i * 188..(i + 1) * 188],
                before[i * 188..(i + 1) * 188],
                "packet {i} untouched"
            );
        }
        // The short payload is marked but its bytes stay as they are (libdvbcsa semantics).
        assert_eq!(batch[5 * 188 + 3] >> 6, 0b10);
        assert_eq!(batch[5 * 188 + 4..6 * 188], before[5 * 188 + 4..6 * 188]);
        assert_ne!(batch[4..188], before[4..188], "good packet scrambled");
        assert_eq!(
            batch[6 * 188 + 4..],
            batch[4..188],
            "same clear payload, same key: same output"
        );
        c.descramble(&mut batch).unwrap();
        // The pre-scrambled packet (TSC 11) was descrambled with the odd key:
        // every other packet is back to clear.
        for i in [0, 1, 2, 3, 5, 6] {
            assert_eq!(
                batch[i * 188..(i + 1) * 188],
                before[i * 188..(i + 1) * 188],
                "{backend:?} packet {i}"
            );
        }
    }
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = rng(99);
    for backend in Backend::supported() {
        let c = ctx(backend);
        for _ in 0..20 {
            let n = rng.gen_range(0..700);
            let mut buf = vec![0u8; n * 188];
            rng.fill_bytes(&mut buf);
            for p in buf.chunks_exact_mut(188) {
                if rng.gen_bool(0.8) {
                    p[0] = 0x47;
                }
            }
            let s = c.scramble(&mut buf, Parity::Odd).unwrap();
            let d = c.descramble(&mut buf).unwrap();
            assert_eq!(s.bad_sync, d.bad_sync);
        }
    }
}
