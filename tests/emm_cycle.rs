//! One full turn of the EMM carousel over many cards, old layout (a unique EMM of format 1
//! per card, carrying its keys) against the grouped one (a group EMM per 256 cards with
//! the keys, and a unique EMM of format 2 per card): the TS packets and bytes of the cycle,
//! its air time at 1 Mbit/s, and the time the carousel took to build it (wall time of the
//! one thread that builds, on whatever machine runs it; printed, never asserted).
//!
//! Cards: `CASTMUX_EMM_CYCLE_CARDS`, by default 1,000,000 in a release build and 20,000 in
//! a debug one (AES without optimisation is slow); 4 packages each, current and next key
//! of each, no events. The figures for 1,000,000 cards:
//! `cargo test --release --test emm_cycle -- --nocapture`.

use std::time::{Duration, Instant};

use castmux::cas::emmg::{EmmCarousel, EmmLayout};
use castmux::cas::types::GROUP_SIZE;
use castmux::cas::{
    derive_card_key, derive_group_key, AccessCriteria, CardFile, CardSerial, Entitlements, GroupId,
    Key128, PackageBit, ServiceKey, CARD_FILE_FORMAT,
};
use castmux::softcard::{EmmOutcome, SoftCard};

const CAID: u16 = 0x4AE1;
const FIRST_SERIAL: u64 = 2_100_000_000;
const AIR_BPS: f64 = 1_000_000.0;

fn cards() -> u64 {
    std::env::var("CASTMUX_EMM_CYCLE_CARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            20_000
        } else {
            1_000_000
        })
}

fn root() -> Key128 {
    Key128::from_bytes([0x5A; 16])
}

fn entitlements() -> Entitlements {
    Entitlements {
        access: AccessCriteria(0b1111),
        start: 0,
        finish: i64::MAX,
        pair: 0,
        enabled: true,
        events: vec![],
    }
}

fn service_keys() -> Vec<ServiceKey> {
    (0..4)
        .flat_map(|bit| {
            [1, 2].map(|version| ServiceKey {
                bit: PackageBit::new(bit).unwrap(),
                version,
                key: Key128::from_bytes([(bit * 16 + version) as u8; 16]),
            })
        })
        .collect()
}

#[derive(Debug)]
struct Cycle {
    packets: u64,
    sections: u64,
    group_sections: u64,
    build: Duration,
    /// The first sections of the cycle, to hand to a card.
    head: Vec<u8>,
}

/// Run `layout` over `n` cards until the carousel has passed every card once.
fn one_cycle(layout: EmmLayout, n: u64) -> Cycle {
    // a bitrate no cycle reaches: the bucket never holds the carousel back
    let mut c = EmmCarousel::with_layout(100_000_000_000, layout);
    c.set_service_keys(service_keys());
    let root = root();
    for i in 0..n {
        let serial = CardSerial(FIRST_SERIAL + i);
        if i == 0 || serial.0.is_multiple_of(GROUP_SIZE) {
            let g = GroupId::of(serial);
            c.set_group_key(g, derive_group_key(&root, g));
        }
        c.upsert_card(
            serial,
            derive_card_key(&root, serial),
            entitlements(),
            false,
        );
    }
    let mut out = Vec::with_capacity(4096);
    let mut head = Vec::new();
    let mut t = Duration::ZERO;
    let started = Instant::now();
    // the cycle counter turns when the carousel comes back to the first card; the chunk
    // that holds the turn may carry up to one chunk (20 packets) of the next cycle
    while c.counters().cycles == 0 {
        t += Duration::from_millis(10);
        while c.counters().cycles == 0 && c.poll(t, &mut out) {
            if head.len() < 16_384 {
                head.extend_from_slice(&out);
            }
            out.clear();
        }
    }
    let build = started.elapsed();
    let got = c.counters();
    assert_eq!(got.build_errors, 0);
    Cycle {
        packets: got.air_bytes / 188,
        sections: got.emitted,
        group_sections: got.group_sections,
        build,
        head,
    }
}

fn report(name: &str, n: u64, c: &Cycle) -> f64 {
    let bytes = c.packets * 188;
    let air = bytes as f64 * 8.0 / AIR_BPS;
    let per_million = air * 1_000_000.0 / n as f64;
    println!(
        "{name:>8}: {n} cards, {} sections ({} group), {} TS packets, {} bytes, \
         {air:.1} s at 1 Mbit/s ({:.1} min per 1,000,000 cards); built in {:.2?} ({:.2} µs per card)",
        c.sections,
        c.group_sections,
        c.packets,
        bytes,
        per_million / 60.0,
        c.build,
        c.build.as_secs_f64() * 1e6 / n as f64,
    );
    per_million
}

/// The card of the first serial, as exported before it heard any EMM.
fn first_card() -> SoftCard {
    let serial = CardSerial(FIRST_SERIAL);
    SoftCard::from_card_file(CardFile {
        format: CARD_FILE_FORMAT,
        serial,
        ca_system_id: CAID,
        card_key: derive_card_key(&root(), serial),
        entitlements: Entitlements {
            access: AccessCriteria::NONE,
            ..entitlements()
        },
        service_keys: vec![],
        issued_at: 0,
    })
    .unwrap()
}

/// The sections of `bytes` a card of the first serial takes in, applied.
fn feed(card: &mut SoftCard, mut bytes: &[u8]) -> usize {
    let mut applied = 0;
    while let Some(len) = castmux::ts::section::section_total_len(bytes) {
        if card.process_emm(&bytes[..len], 1_700_000_000) == Ok(EmmOutcome::Applied) {
            applied += 1;
        }
        bytes = &bytes[len..];
    }
    applied
}

#[test]
fn grouped_cycle_of_a_million_cards_fits_ten_minutes_at_1_mbit() {
    let n = cards();
    let old = one_cycle(EmmLayout::Unique, n);
    let old_min = report("unique", n, &old);
    let new = one_cycle(EmmLayout::Grouped { ca_system_id: CAID }, n);
    let new_min = report("grouped", n, &new);
    println!(
        "grouped / unique air time: {:.3}",
        new.packets as f64 / old.packets as f64
    );

    // one section per card and one per group; the poll that turns the cycle may carry a
    // few sections of the next one
    assert!((n..=n + 1).contains(&old.sections), "{old:?}");
    assert!((n..=n + 60).contains(&(new.sections - new.group_sections)));
    assert_eq!(new.group_sections, n.div_ceil(GROUP_SIZE));
    // the old layout: two packets per card (a 249-byte EMM)
    assert!((2 * n..=2 * n + 2).contains(&old.packets));
    assert!(
        new_min <= 600.0,
        "{new_min:.0} s per million cards, more than 10 minutes"
    );
    assert!(old_min > 2.0 * new_min);

    // the first card gets its entitlements and all 4 packages' keys from either cycle
    for (head, layout) in [(&old.head, "unique"), (&new.head, "grouped")] {
        let mut card = first_card();
        assert!(feed(&mut card, head) > 0, "{layout}");
        assert_eq!(
            card.entitlements().access,
            AccessCriteria(0b1111),
            "{layout}"
        );
        assert_eq!(
            card.key_versions().len(),
            8,
            "{layout}: {:?}",
            card.key_versions()
        );
    }
}
