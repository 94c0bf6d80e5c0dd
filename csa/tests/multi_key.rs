//! `MultiBatch`: payloads of many key contexts in one pass, on random mixes of
//! keys, parities, payload lengths and channel counts, against the scalar
//! oracle and `KeyContext` (the one-context path), on every backend this CPU
//! runs; descrambling gives every channel back.
mod common;
use common::*;
use csa::{scalar, Algorithm, Backend, BatchStats, ControlWord, ExpandedKey, KeyContext};
use csa::{MultiBatch, Parity};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore};

/// One channel of a test: its keys, its clear packets and what to do with each.
struct Channel {
    algorithm: Algorithm,
    even: Vec<u8>,
    odd: Vec<u8>,
    ctx: KeyContext,
    clear: Vec<u8>,
    /// Per packet: scramble under this parity, or leave.
    plan: Vec<Option<Parity>>,
}

impl Channel {
    fn packets(&self) -> usize {
        self.plan.len()
    }

    /// What scrambling must produce, from the scalar oracle and the packet
    /// rules written out again here (AES: `KeyContext`, checked against
    /// the standards' vectors in tests/aes_modes.rs).
    fn expected(&self) -> Vec<u8> {
        let mut out = self.clear.clone();
        if self.algorithm != Algorithm::Csa2 {
            let plan = &self.plan;
            self.ctx.scramble_selected(&mut out, |i| plan[i]).unwrap();
            return out;
        }
        for (i, p) in out.chunks_exact_mut(188).enumerate() {
            let pkt: &mut [u8; 188] = p.try_into().unwrap();
            let Some(parity) = self.plan[i] else { continue };
            if pkt[0] != 0x47 || pkt[3] >> 6 != 0 {
                continue;
            }
            let Some(off) = csa::payload_offset(pkt) else {
                continue;
            };
            pkt[3] = (pkt[3] & 0x3f) | (parity.tsc_bits() << 6);
            let cw = if parity == Parity::Even {
                &self.even
            } else {
                &self.odd
            };
            let key = ExpandedKey::new(&ControlWord::from_bytes(cw[..8].try_into().unwrap()));
            scalar::scramble_payload(&key, &mut pkt[off..]);
        }
        out
    }

    /// The packets a round trip descrambles: those scrambling selected and found clear.
    fn descramble_select(&self) -> Vec<bool> {
        self.clear
            .chunks_exact(188)
            .zip(&self.plan)
            .map(|(p, plan)| plan.is_some() && p[3] >> 6 == 0)
            .collect()
    }
}

fn random_key(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut k = vec![0u8; len];
    rng.fill_bytes(&mut k);
    k
}

/// A channel of `n` random packets: mostly clear packets to scramble under a
/// random parity, some left alone, some already scrambled, a few bad syncs.
fn channel(rng: &mut SmallRng, algorithm: Algorithm, n: usize) -> Channel {
    let (even, odd) = (
        random_key(rng, algorithm.key_len()),
        random_key(rng, algorithm.key_len()),
    );
    let ctx = KeyContext::from_bytes(algorithm, &even, &odd).unwrap();
    let mut clear = Vec::with_capacity(n * 188);
    let mut plan = Vec::with_capacity(n);
    for _ in 0..n {
        let len = random_len(rng);
        let mut p = packet(rng, 0x100, len);
        match rng.gen_range(0..100) {
            0..=3 => p[3] |= 0x80 | (rng.gen::<u8>() & 0x40), // already scrambled
            4..=5 => p[0] = 0x46,                             // bad sync
            _ => {}
        }
        clear.extend_from_slice(&p);
        plan.push(match rng.gen_range(0..100) {
            0..=11 => None,
            12..=55 => Some(Parity::Even),
            _ => Some(Parity::Odd),
        });
    }
    Channel {
        algorithm,
        even,
        odd,
        ctx,
        clear,
        plan,
    }
}

/// Scrambles every channel in one `MultiBatch` pass, checks each against its
/// expectation and `KeyContext::scramble_selected` (bytes and stats) and the
/// number of kernel calls (`pinned`: the backend the batch was pinned to),
/// then descrambles them all in a second pass and checks the clear packets
/// came back.
fn check(batch: &mut MultiBatch, pinned: Option<Backend>, channels: &[Channel], what: &str) {
    let mut bufs: Vec<Vec<u8>> = channels.iter().map(|c| c.clear.clone()).collect();
    let mut stats = Vec::new();
    let mut run = batch.begin();
    for (ch, buf) in channels.iter().zip(&mut bufs) {
        let plan = &ch.plan;
        stats.push(run.scramble_selected(&ch.ctx, buf, |i| plan[i]).unwrap());
    }
    let pass = run.finish();
    let mut sum = BatchStats::default();
    let mut csa_payloads = 0;
    for (c, ((ch, buf), st)) in channels.iter().zip(&bufs).zip(&stats).enumerate() {
        let expect = ch.expected();
        for i in 0..ch.packets() {
            assert_eq!(
                buf[i * 188..][..188],
                expect[i * 188..][..188],
                "{what}: channel {c} ({:?}) packet {i} of {}",
                ch.algorithm,
                ch.packets()
            );
        }
        let mut one = ch.clear.clone();
        let plan = &ch.plan;
        let st_one = ch.ctx.scramble_selected(&mut one, |i| plan[i]).unwrap();
        assert_eq!(*st, st_one, "{what}: channel {c} stats");
        assert!(one == *buf, "{what}: channel {c}: KeyContext differs");
        sum += *st;
        if ch.algorithm == Algorithm::Csa2 {
            csa_payloads += st.processed;
        }
    }
    assert_eq!(pass.packets, sum, "{what}: pass stats");
    // Full lane sets whatever the keys: ceil(payloads / lanes) calls, except
    // that without a pinned backend a lone last payload goes the scalar way.
    let lanes = batch.lanes() as u64;
    let (calls, payloads) = match pinned {
        Some(Backend::Scalar) => (0, 0),
        Some(_) => (csa_payloads.div_ceil(lanes), csa_payloads),
        None if csa_payloads % lanes == 1 => (csa_payloads / lanes, csa_payloads - 1),
        None => (csa_payloads.div_ceil(lanes), csa_payloads),
    };
    assert_eq!(
        (pass.kernel_calls, pass.kernel_payloads),
        (calls, payloads),
        "{what}: kernel calls for {csa_payloads} payloads on {lanes} lanes"
    );

    let selects: Vec<Vec<bool>> = channels.iter().map(Channel::descramble_select).collect();
    let mut run = batch.begin();
    for ((ch, buf), sel) in channels.iter().zip(&mut bufs).zip(&selects) {
        run.descramble_selected(&ch.ctx, buf, |i| sel[i]).unwrap();
    }
    run.finish();
    for (c, (ch, buf)) in channels.iter().zip(&bufs).enumerate() {
        assert!(*buf == ch.clear, "{what}: channel {c} round trip");
    }
}

/// Batches to run on every backend, by name: (channels, packets per channel).
fn shapes(rng: &mut SmallRng, lanes: usize) -> Vec<(String, Vec<usize>)> {
    let mut v = vec![
        ("1 channel, 1 packet".to_string(), vec![1]),
        ("1 channel, lanes - 1".to_string(), vec![lanes - 1]),
        ("1 channel, lanes".to_string(), vec![lanes]),
        ("1 channel, lanes + 1".to_string(), vec![lanes + 1]),
        (
            "more channels than lanes, 1 packet each".to_string(),
            vec![1; lanes + 3],
        ),
        ("200 channels x 8".to_string(), vec![8; 200]),
        (
            "empty channels among others".to_string(),
            vec![0, 5, 0, 0, 17, 0],
        ),
    ];
    for r in 0..4 {
        let channels = rng.gen_range(1..300);
        let counts = (0..channels)
            .map(|_| {
                if rng.gen_bool(0.05) {
                    rng.gen_range(0..600)
                } else {
                    rng.gen_range(0..25)
                }
            })
            .collect();
        v.push((format!("random {r}: {channels} channels"), counts));
    }
    v
}

#[test]
fn many_csa_keys_match_scalar_on_every_backend() {
    let mut rng = rng(0x3017);
    for backend in Backend::supported() {
        let mut batch = MultiBatch::new().with_backend(Some(backend));
        for (name, counts) in shapes(&mut rng, backend.lanes().max(2)) {
            let channels: Vec<Channel> = counts
                .iter()
                .map(|&n| channel(&mut rng, Algorithm::Csa2, n))
                .collect();
            check(
                &mut batch,
                Some(backend),
                &channels,
                &format!("{backend:?} {name}"),
            );
        }
    }
}

/// The automatic backend, with its scalar shortcut for a lone payload and
/// (on AVX-512) its narrower kernels for partial lane sets: last sets of about
/// 128, 256 and 512 payloads (the 256-lane kernel up to 256), under a key each.
#[test]
fn automatic_backend_matches_scalar() {
    let mut rng = rng(0x3018);
    let mut batch = MultiBatch::new();
    for counts in [
        vec![1],
        vec![1, 1],
        vec![2, 0, 1],
        vec![9; 40],
        vec![1; 127],
        vec![1; 129],
        vec![64, 64],
        vec![200, 56, 1],
        vec![1; 257],
        vec![8; 64],
        vec![500, 12, 1],
        vec![512, 1],
    ] {
        let channels: Vec<Channel> = counts
            .iter()
            .map(|&n| channel(&mut rng, Algorithm::Csa2, n))
            .collect();
        check(&mut batch, None, &channels, &format!("auto {counts:?}"));
    }
}

/// Distinct contexts with the same CWs (the keyed kernel with every lane on one
/// key) and one context pushed many times (the one-key kernel).
#[test]
fn shared_keys_distinct_and_same_context() {
    let mut rng = rng(0x3019);
    for backend in Backend::supported() {
        let mut batch = MultiBatch::new().with_backend(Some(backend));
        let mut channels: Vec<Channel> = (0..40)
            .map(|_| channel(&mut rng, Algorithm::Csa2, 9))
            .collect();
        let (even, odd) = (channels[0].even.clone(), channels[0].odd.clone());
        for ch in &mut channels {
            ch.even = even.clone();
            ch.odd = odd.clone();
            ch.ctx = KeyContext::from_bytes(Algorithm::Csa2, &even, &odd).unwrap();
            for p in &mut ch.plan {
                *p = p.map(|_| Parity::Even);
            }
        }
        check(
            &mut batch,
            Some(backend),
            &channels,
            &format!("{backend:?} same CWs"),
        );

        // One context, many buffers.
        let ctx = &channels[0].ctx;
        let mut bufs: Vec<Vec<u8>> = channels.iter().map(|c| c.clear.clone()).collect();
        let mut run = batch.begin();
        for (ch, buf) in channels.iter().zip(&mut bufs) {
            let plan = &ch.plan;
            run.scramble_selected(ctx, buf, |i| plan[i]).unwrap();
        }
        run.finish();
        for (ch, buf) in channels.iter().zip(&bufs) {
            assert!(*buf == ch.expected(), "{backend:?} one context");
        }
    }
}

/// CSA2, CISSA and IDSA channels in one pass.
#[test]
fn aes_and_csa_channels_in_one_pass() {
    let mut rng = rng(0x301A);
    for backend in Backend::supported() {
        let mut batch = MultiBatch::new().with_backend(Some(backend));
        let channels: Vec<Channel> = (0..60)
            .map(|i| {
                let algorithm = [Algorithm::Csa2, Algorithm::Cissa, Algorithm::Idsa][i % 3];
                let n = rng.gen_range(0..20);
                channel(&mut rng, algorithm, n)
            })
            .collect();
        check(
            &mut batch,
            Some(backend),
            &channels,
            &format!("{backend:?} mixed algorithms"),
        );
    }
}

/// Scrambling some channels and descrambling others in the same pass.
#[test]
fn scramble_and_descramble_in_one_pass() {
    let mut rng = rng(0x301B);
    for backend in Backend::supported() {
        let mut batch = MultiBatch::new().with_backend(Some(backend));
        let channels: Vec<Channel> = (0..70)
            .map(|_| {
                let n = rng.gen_range(1..12);
                channel(&mut rng, Algorithm::Csa2, n)
            })
            .collect();
        let expected: Vec<Vec<u8>> = channels.iter().map(Channel::expected).collect();
        // Even channels start clear and get scrambled, odd ones start scrambled.
        let mut bufs: Vec<Vec<u8>> = channels
            .iter()
            .zip(&expected)
            .enumerate()
            .map(|(c, (ch, exp))| {
                if c % 2 == 0 {
                    ch.clear.clone()
                } else {
                    exp.clone()
                }
            })
            .collect();
        let selects: Vec<Vec<bool>> = channels.iter().map(Channel::descramble_select).collect();
        let mut run = batch.begin();
        for (c, (ch, buf)) in channels.iter().zip(&mut bufs).enumerate() {
            if c % 2 == 0 {
                let plan = &ch.plan;
                run.scramble_selected(&ch.ctx, buf, |i| plan[i]).unwrap();
            } else {
                let sel = &selects[c];
                run.descramble_selected(&ch.ctx, buf, |i| sel[i]).unwrap();
            }
        }
        run.finish();
        for (c, (ch, buf)) in channels.iter().zip(&bufs).enumerate() {
            let want = if c % 2 == 0 { &expected[c] } else { &ch.clear };
            assert!(buf == want, "{backend:?} channel {c}");
        }
    }
}

/// Dropping a pass without `finish` still runs its partial lane sets.
#[test]
fn dropping_a_pass_runs_it() {
    let mut rng = rng(0x301C);
    let mut batch = MultiBatch::new().with_backend(Some(Backend::U64));
    let ch = channel(&mut rng, Algorithm::Csa2, 10);
    let mut buf = ch.clear.clone();
    {
        let mut run = batch.begin();
        let plan = &ch.plan;
        run.scramble_selected(&ch.ctx, &mut buf, |i| plan[i])
            .unwrap();
    }
    assert!(buf == ch.expected());
}

#[test]
fn not_whole_packets_is_an_error_and_touches_nothing() {
    let mut rng = rng(0x301D);
    let ch = channel(&mut rng, Algorithm::Csa2, 3);
    let mut batch = MultiBatch::new();
    let mut buf = ch.clear[..188 * 2 + 7].to_vec();
    let mut run = batch.begin();
    assert!(matches!(
        run.scramble(&ch.ctx, &mut buf, Parity::Even),
        Err(csa::Error::NotPacketMultiple { .. })
    ));
    assert_eq!(run.finish(), csa::PassStats::default());
    assert!(buf == ch.clear[..188 * 2 + 7]);
}

/// A worker thread can own a batch (and move it where it runs).
#[test]
fn a_batch_moves_to_a_worker_thread() {
    fn is_send<T: Send>(_: &T) {}
    let batch = MultiBatch::new();
    is_send(&batch);
    let mut rng = rng(0x301E);
    let ch = channel(&mut rng, Algorithm::Csa2, 20);
    let expect = ch.expected();
    let done = std::thread::spawn(move || {
        let mut batch = batch;
        let mut buf = ch.clear.clone();
        let mut run = batch.begin();
        let plan = &ch.plan;
        run.scramble_selected(&ch.ctx, &mut buf, |i| plan[i])
            .unwrap();
        run.finish();
        buf
    })
    .join()
    .unwrap();
    assert!(done == expect);
}
