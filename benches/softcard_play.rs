//! `softcard play`'s data path against the raw cipher, side by side, one thread, on a
//! 200 MB stream held in memory: samples/spts.ts scrambled once with the built-in ECMG
//! (1 s crypto periods, CAS 0x4AE1) and repeated.
//! - `raw-csa`: copy each 512-packet batch and `csa::KeyContext::descramble` it (the
//!   engine's ceiling on this stream);
//! - `card-player`: copy the same batches and `CardPlayer::process` them with a
//!   `LocalCard` (PSI/CAT tracking, ECMs to the card, key changes, per-packet selection).
//!
//! The player's output is checked (every scrambled ES packet descrambled, no refusal)
//! before it is timed. Target: card-player ≥ 1 Gbit/s on one core.
//!
//! Run: `cargo bench --bench softcard_play` (`-- --quick` for one pass each).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use castmux::cas::{
    derive_card_key, AccessCriteria, BuiltinEcmg, CardFile, CardSerial, Entitlements, Key128,
    PackageBit, ServiceKey, ServiceKeyRing, CARD_FILE_FORMAT,
};
use castmux::scramble::{CaSystem, KeyMode, ScrambleConfig, Scrambler};
use castmux::softcard::player::{CardPlayer, LocalCard};
use castmux::softcard::SoftCard;
use castmux::ts::{Packet, Pid};
use csa::{ControlWord, KeyContext};

const TARGET_BYTES: usize = 200 * 1000 * 1000;
const BATCH: usize = 512;
const CAID: u16 = 0x4AE1;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn keys() -> Vec<ServiceKey> {
    vec![ServiceKey {
        bit: PackageBit::new(0).expect("bit 0"),
        version: 1,
        key: Key128::from_bytes([0x42; 16]),
    }]
}

/// The sample scrambled for package 0, repeated to [`TARGET_BYTES`].
fn scrambled_stream() -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let clear = std::fs::read(root.join("samples/spts.ts")).expect("samples/spts.ts");
    let pkts: Vec<Packet> = clear
        .chunks_exact(188)
        .map(|c| c.try_into().expect("188"))
        .collect();
    let ring = ServiceKeyRing::from_keys(keys()).shared();
    let ecmg = BuiltinEcmg::new(ring, AccessCriteria(1), CAID);
    let config = ScrambleConfig {
        keys: KeyMode::Rotating,
        crypto_period: Duration::from_secs(1),
        ca_systems: vec![CaSystem::new(CAID, Pid::new(0x1FF0))],
        ..ScrambleConfig::default()
    };
    let mut s = Scrambler::new(config, None, vec![Box::new(ecmg)]).expect("scrambler");
    let mut one = Vec::with_capacity(clear.len() * 2);
    for batch in pkts.chunks(256) {
        one.extend_from_slice(s.process(batch).expect("scramble"));
    }
    let mut v = Vec::with_capacity(TARGET_BYTES + one.len());
    while v.len() < TARGET_BYTES {
        v.extend_from_slice(&one);
    }
    v
}

fn player() -> CardPlayer {
    let serial = CardSerial(2_100_000_001);
    let card = SoftCard::from_card_file(CardFile {
        format: CARD_FILE_FORMAT,
        serial,
        ca_system_id: CAID,
        card_key: derive_card_key(&Key128::from_bytes([9; 16]), serial),
        entitlements: Entitlements {
            access: AccessCriteria(1),
            start: now() - 3600,
            finish: now() + 86_400,
            pair: 0,
            enabled: true,
            events: vec![],
        },
        service_keys: keys(),
        issued_at: now() - 3600,
    })
    .expect("card");
    CardPlayer::new(
        csa::Algorithm::Csa2,
        CAID,
        Box::new(LocalCard::new(card, None)),
    )
    .expect("player")
}

/// Best of `runs` passes of `f` over `data` in copied batches, in seconds.
fn time(runs: usize, data: &[u8], mut f: impl FnMut(&mut [u8])) -> f64 {
    let mut buf = vec![0u8; BATCH * 188];
    let mut best = f64::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        for chunk in data.chunks(BATCH * 188) {
            let b = &mut buf[..chunk.len()];
            b.copy_from_slice(chunk);
            f(b);
            black_box(&b[..]);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn as_packets(b: &mut [u8]) -> &mut [Packet] {
    let (pkts, rest) = b.as_chunks_mut::<188>();
    debug_assert!(rest.is_empty());
    pkts
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is ignored
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 1 } else { 5 };
    let data = scrambled_stream();
    let scrambled = data
        .chunks_exact(188)
        .filter(|p| p[3] >> 6 != 0 && (p[1] & 0x1F) != 0x1F)
        .count() as u64;

    // the player must really descramble everything before its speed means anything
    let mut p = player();
    let mut check = data.clone();
    for chunk in check.chunks_mut(BATCH * 188) {
        p.process(as_packets(chunk)).expect("process");
    }
    let c = p.counters().clone();
    assert_eq!(c.refusals, 0, "{c:?}");
    assert_eq!(c.no_key, 0, "{c:?}");
    assert_eq!(c.descrambled, scrambled, "{c:?}");
    drop(check);

    let cw = ControlWord::from_bytes([1, 2, 3, 6, 4, 5, 6, 15]);
    let ctx = KeyContext::csa2(&cw, &cw);
    let raw = time(runs, &data, |b| {
        ctx.descramble(b).expect("descramble");
    });
    let mut p = player();
    let play = time(runs, &data, |b| {
        p.process(as_packets(b)).expect("process");
    });

    let bits = data.len() as f64 * 8.0;
    let mb = data.len() as f64 / 1e6;
    println!(
        "softcard_play: {mb:.0} MB, {scrambled} scrambled packets, batches of {BATCH}, one thread, best of {runs}"
    );
    println!(
        "  raw-csa      {:6.3} s  {:6.2} Gbit/s",
        raw,
        bits / raw / 1e9
    );
    println!(
        "  card-player  {:6.3} s  {:6.2} Gbit/s  ({:.0} % of raw-csa; ECMs {}, answers {})",
        play,
        bits / play / 1e9,
        100.0 * raw / play,
        p.counters().ecms,
        p.counters().answers
    );
}
