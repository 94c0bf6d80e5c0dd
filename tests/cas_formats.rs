//! The built-in CAS end to end in the library: ECMG -> ECM -> software card, EMM carousel
//! -> EMM -> software card, key rotation, refusals, and the carousel's bitrate and queue.

use std::collections::HashSet;
use std::time::Duration;

use castmux::cas::ecm::{ecm_section_len, EcmParams};
use castmux::cas::emm::{build_emm, EmmHeader};
use castmux::cas::emmg::EmmCarousel;
use castmux::cas::{
    build_ecm, derive_card_key, AccessCriteria, BuiltinEcmg, CardFile, CardSerial, Entitlements,
    EventGrant, Key128, PackageBit, Refusal, ServiceKey, ServiceKeyRing, CARD_FILE_FORMAT,
};
use castmux::scramble::{CryptoPeriod, Cw, EcmGenerator, EcmRequest};
use castmux::softcard::{EmmOutcome, SoftCard};
use castmux::ts::Pid;
use csa::Parity;

const CAID: u16 = 0x4AE1;
const NOW: i64 = 1_750_000_000;
const DAY: i64 = 86_400;

fn bit(b: u32) -> PackageBit {
    PackageBit::new(b).unwrap()
}

fn root() -> Key128 {
    Key128::from_bytes([0x5C; 16])
}

fn sk(b: u32, version: u32) -> ServiceKey {
    let mut k = [0xA5u8; 16];
    k[0] = b as u8;
    k[1] = version as u8;
    ServiceKey {
        bit: bit(b),
        version,
        key: Key128::from_bytes(k),
    }
}

fn ent(access: u64) -> Entitlements {
    Entitlements {
        access: AccessCriteria(access),
        start: NOW - DAY,
        finish: NOW + DAY,
        pair: 0,
        enabled: true,
        events: vec![],
    }
}

/// Entitlements the carousel (which judges expiry by the wall clock) treats as live.
fn live(access: u64) -> Entitlements {
    Entitlements {
        finish: i64::MAX,
        ..ent(access)
    }
}

fn card(serial: u64, ent: Entitlements, keys: Vec<ServiceKey>) -> SoftCard {
    SoftCard::from_card_file(CardFile {
        format: CARD_FILE_FORMAT,
        serial: CardSerial(serial),
        ca_system_id: CAID,
        card_key: derive_card_key(&root(), CardSerial(serial)),
        entitlements: ent,
        service_keys: keys,
        issued_at: NOW - DAY,
    })
    .unwrap()
}

fn ecm(ring: &ServiceKeyRing, access: u64, period: u64, ts: i64) -> Vec<u8> {
    let mut out = Vec::new();
    build_ecm(
        ring,
        &EcmParams {
            ca_system_id: CAID,
            access: AccessCriteria(access),
            period,
            timestamp: ts,
            even: &[0xE1; 8],
            odd: &[0x0D; 8],
        },
        &mut out,
    )
    .unwrap();
    out
}

fn emm(serial: u64, seq: u64, ent: &Entitlements, keys: &[ServiceKey]) -> Vec<u8> {
    let mut out = Vec::new();
    let key = derive_card_key(&root(), CardSerial(serial));
    build_emm(CardSerial(serial), &key, seq, ent, keys, &mut out).unwrap();
    out
}

#[test]
fn ecmg_to_card_gives_the_cw_pair() {
    let ring = ServiceKeyRing::from_keys([sk(0, 1), sk(2, 1)]).shared();
    let mut g = BuiltinEcmg::new(ring, AccessCriteria(0b101), CAID);
    let cur = Cw::from_slice(&[1, 2, 3, 6, 4, 5, 6, 15]).unwrap();
    let next = Cw::from_slice(&[9, 9, 9, 27, 8, 8, 8, 24]).unwrap();
    // the ECMG stamps wall-clock time: the card answers at wall-clock time
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut e = ent(0b100);
    (e.start, e.finish) = (now - 60, now + 3600);
    let mut c = card(2100000000, e, vec![sk(2, 1)]);
    for (n, parity) in [(4u64, Parity::Even), (5, Parity::Odd)] {
        let req = EcmRequest {
            period: CryptoPeriod(n),
            parity,
            current: &cur,
            next: &next,
            ecm_pid: Pid::new(0x1FF0),
            ca_system_id: CAID,
        };
        let mut section = Vec::new();
        g.generate(&req, &mut section).unwrap();
        let a = c.process_ecm(&section, now).unwrap();
        assert_eq!((a.period, a.parity, a.cw_len), (n, parity, 8));
        let (even, odd) = if n.is_multiple_of(2) {
            (&cur, &next)
        } else {
            (&next, &cur)
        };
        assert_eq!((&a.even, &a.odd), (even, odd));
    }
    assert_eq!(c.counters().ecm_answered, 2);
}

#[test]
fn four_packages_fit_one_ts_packet() {
    let ring = ServiceKeyRing::from_keys([sk(0, 1), sk(1, 1), sk(30, 1), sk(63, 1)]);
    let access = 1 | 1 << 1 | 1 << 30 | 1 << 63;
    let mut out = Vec::new();
    for cw in [8usize, 16] {
        out.clear();
        let p = EcmParams {
            ca_system_id: CAID,
            access: AccessCriteria(access),
            period: 0,
            timestamp: NOW,
            even: &[7; 16][..cw],
            odd: &[8; 16][..cw],
        };
        build_ecm(&ring, &p, &mut out).unwrap();
        assert_eq!(out.len(), ecm_section_len(4, cw));
        // 184 payload bytes less the pointer_field
        assert!(out.len() <= 180, "{cw}-byte CWs: {} bytes", out.len());
    }
    let mut c = card(1, ent(1 << 63), vec![sk(63, 1)]);
    assert_eq!(c.process_ecm(&out, NOW).unwrap().cw_len, 16);
}

#[test]
fn refusals_are_typed() {
    let ring = ServiceKeyRing::from_keys([sk(0, 1), sk(1, 1), sk(5, 1)]);
    let section = ecm(&ring, 0b10, 1, NOW);

    let mut not_entitled = card(1, ent(0b1), vec![sk(0, 1)]);
    assert_eq!(
        not_entitled.process_ecm(&section, NOW),
        Err(Refusal::NotEntitled)
    );

    let mut e = ent(0b10);
    e.finish = NOW - 1;
    assert_eq!(
        card(2, e, vec![sk(1, 1)]).process_ecm(&section, NOW),
        Err(Refusal::Expired)
    );

    let mut e = ent(0b10);
    e.start = NOW + 1;
    let mut c = card(3, e, vec![sk(1, 1)]);
    assert_eq!(c.process_ecm(&section, NOW), Err(Refusal::NotYetValid));

    let mut e = ent(0b10);
    e.enabled = false;
    assert_eq!(
        card(4, e, vec![sk(1, 1)]).process_ecm(&section, NOW),
        Err(Refusal::Disabled)
    );

    let mut c = card(5, ent(0b10), vec![sk(1, 2)]);
    assert_eq!(
        c.process_ecm(&section, NOW),
        Err(Refusal::UnknownKeyVersion { bit: 1, version: 1 })
    );

    // same bit and version, other key bytes: the tag fails
    let mut forged_key = sk(1, 1);
    forged_key.key = Key128::from_bytes([0x77; 16]);
    let mut c = card(6, ent(0b10), vec![forged_key]);
    assert_eq!(c.process_ecm(&section, NOW), Err(Refusal::BadMac));

    let other_ca = {
        let mut out = Vec::new();
        let p = EcmParams {
            ca_system_id: 0x0B00,
            access: AccessCriteria(0b10),
            period: 1,
            timestamp: NOW,
            even: &[1; 8],
            odd: &[2; 8],
        };
        build_ecm(&ring, &p, &mut out).unwrap();
        out
    };
    let mut c = card(7, ent(0b10), vec![sk(1, 1)]);
    assert_eq!(
        c.process_ecm(&other_ca, NOW),
        Err(Refusal::WrongCaSystem {
            got: 0x0B00,
            card: CAID
        })
    );
    assert!(c.process_ecm(&section, NOW).is_ok());
    let counts = c.counters().refusals;
    assert_eq!((counts.wrong_ca_system, counts.total()), (1, 1));

    // every message names the cause
    for r in [
        Refusal::NotEntitled,
        Refusal::Expired,
        Refusal::Replay,
        Refusal::BadMac,
    ] {
        assert!(r.to_string().len() > 20, "{r}");
    }
}

#[test]
fn events_grant_a_window() {
    let ring = ServiceKeyRing::from_keys([sk(9, 1)]);
    let mut e = ent(0b1);
    e.events.push(EventGrant {
        id: 1,
        bit: bit(9),
        start: NOW,
        end: NOW + 3600,
    });
    let mut c = card(8, e, vec![sk(9, 1)]);
    c.set_replay_tolerance(10 * DAY);
    assert!(c
        .process_ecm(&ecm(&ring, 1 << 9, 0, NOW + 60), NOW + 60)
        .is_ok());
    assert_eq!(
        c.process_ecm(&ecm(&ring, 1 << 9, 0, NOW + 3600), NOW + 3600),
        Err(Refusal::Expired)
    );
    let mut c = card(8, c.entitlements().clone(), vec![sk(9, 1)]);
    assert_eq!(
        c.process_ecm(&ecm(&ring, 1 << 9, 0, NOW - 60), NOW - 60),
        Err(Refusal::NotYetValid)
    );
}

#[test]
fn replays_are_refused_and_repeats_answered() {
    let ring = ServiceKeyRing::from_keys([sk(0, 1)]);
    let mut c = card(9, ent(1), vec![sk(0, 1)]);
    let hour_ago = ecm(&ring, 1, 0, NOW - 3600);
    assert_eq!(c.process_ecm(&hour_ago, NOW), Err(Refusal::Replay));
    let fresh = ecm(&ring, 1, 1, NOW);
    // the same ECM repeated for a whole crypto period keeps being answered
    for t in 0..120 {
        assert!(c.process_ecm(&fresh, NOW + t).is_ok());
    }
    // an older ECM after a newer one: answered within the tolerance, refused beyond it
    c.set_replay_tolerance(60);
    let newer = ecm(&ring, 1, 2, NOW + 100);
    assert!(c.process_ecm(&newer, NOW + 100).is_ok());
    assert!(c
        .process_ecm(&ecm(&ring, 1, 1, NOW + 50), NOW + 100)
        .is_ok());
    let stale = ecm(&ring, 1, 1, NOW + 30);
    // even with a card clock that went back, the newest accepted ECM rules
    assert_eq!(c.process_ecm(&stale, NOW + 30), Err(Refusal::Replay));
    assert_eq!(c.counters().refusals.replay, 2);
}

#[test]
fn tampered_truncated_and_garbage_ecms_are_refused_without_panic() {
    let ring = ServiceKeyRing::from_keys([sk(0, 1), sk(1, 1), sk(2, 1)]);
    let section = ecm(&ring, 0b111, 3, NOW);
    let mut c = card(10, ent(0b111), vec![sk(1, 1)]);
    assert!(c.process_ecm(&section, NOW).is_ok());
    let nonce_at = section.len() - 16 - (17 + 16) - 12;
    for i in 0..section.len() {
        for b in 0..8 {
            let mut bad = section.clone();
            bad[i] ^= 1 << b;
            let r = c.process_ecm(&bad, NOW);
            if i == 1 && b >= 4 {
                // the flag bits newcamd clients may rewrite: the card checks castmux's
                assert!(r.is_ok(), "byte 1 bit {b}: {r:?}");
                continue;
            }
            assert!(r.is_err(), "byte {i} bit {b} accepted");
            // past the clear structure fields, any change is a MAC failure
            if i >= nonce_at || (i >= 15 && (i - 15) % 21 != 0) {
                assert!(
                    matches!(
                        r,
                        Err(Refusal::BadMac) | Err(Refusal::UnknownKeyVersion { .. })
                    ),
                    "byte {i}: {r:?}"
                );
            }
        }
    }
    for n in 0..section.len() {
        assert!(matches!(
            c.process_ecm(&section[..n], NOW),
            Err(Refusal::Malformed(_))
        ));
    }
    let mut long = section.clone();
    long.push(0);
    assert!(c.process_ecm(&long, NOW).is_err());
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let len = (rng.next() % 300) as usize;
        let mut g: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if len >= 3 && rng.next().is_multiple_of(2) {
            // well-formed enough to get past the header checks
            g[0] = 0x80 | (rng.next() % 2) as u8;
            g[1] = 0x70 | ((len - 3) >> 8) as u8;
            g[2] = (len - 3) as u8;
            if len > 3 {
                g[3] = 1;
            }
        }
        assert!(c.process_ecm(&g, NOW).is_err());
        let _ = c.process_emm(&g, NOW);
    }
    assert!(c.process_ecm(&section, NOW).is_ok());
}

/// What Cesbo Astra 4's newcamd client does to a section: byte 1 keeps only the 12
/// length bits.
fn astra_header(section: &[u8]) -> Vec<u8> {
    let mut s = section.to_vec();
    s[1] &= 0x0F;
    s
}

#[test]
fn sections_whose_flag_bits_a_client_cleared_are_checked_as_castmux_wrote_them() {
    let ring = ServiceKeyRing::from_keys([sk(0, 1)]);
    let mut c = card(11, ent(1), vec![sk(0, 1)]);
    let section = ecm(&ring, 1, 4, NOW);
    assert_eq!(section[1] & 0xF0, 0x70, "castmux writes 0111");
    let a = c.process_ecm(&astra_header(&section), NOW).unwrap();
    assert_eq!(a.period, 4);
    // every other bit still counts
    let mut bad = astra_header(&section);
    bad[20] ^= 1;
    assert!(c.process_ecm(&bad, NOW).is_err());
    let mut short = astra_header(&section);
    short[2] = short[2].wrapping_sub(1);
    assert!(matches!(
        c.process_ecm(&short, NOW),
        Err(Refusal::Malformed(_))
    ));

    // EMMs the same: applied, then a repeat is recognised
    let serial = 11;
    let e = emm(serial, 900, &ent(0b11), &[sk(0, 1), sk(1, 1)]);
    assert_eq!(
        c.process_emm(&astra_header(&e), NOW),
        Ok(EmmOutcome::Applied)
    );
    assert_eq!(c.key_versions(), vec![(0, 1), (1, 1)]);
    assert_eq!(c.process_emm(&e, NOW), Ok(EmmOutcome::AlreadyApplied));
    let mut forged = astra_header(&emm(serial, 901, &ent(u64::MAX), &[]));
    let n = forged.len();
    forged[n - 1] ^= 1;
    assert_eq!(c.process_emm(&forged, NOW), Err(Refusal::BadMac));
}

#[test]
fn an_older_ecm_of_the_held_parity_is_refused_and_the_keys_kept() {
    let ring = ServiceKeyRing::from_keys([sk(0, 1)]);
    let mut c = card(12, ent(1), vec![sk(0, 1)]);
    // a live stream: periods 20 (even) and 21 (odd), ten seconds apart
    let live_even = ecm(&ring, 1, 20, NOW);
    let live_odd = ecm(&ring, 1, 21, NOW + 10);
    assert!(c.process_ecm(&live_even, NOW + 1).is_ok());
    assert!(c.process_ecm(&live_odd, NOW + 11).is_ok());
    // recorded 5 minutes earlier (well inside the 10-minute window) and spliced in
    let old_even = ecm(&ring, 1, 2, NOW - 300);
    let old_odd = ecm(&ring, 1, 3, NOW - 290);
    for _ in 0..3 {
        assert_eq!(c.process_ecm(&old_even, NOW + 12), Err(Refusal::Replay));
        assert_eq!(c.process_ecm(&old_odd, NOW + 12), Err(Refusal::Replay));
        // the live ECMs keep being answered: repeats are equal, not older
        assert_eq!(c.process_ecm(&live_odd, NOW + 12).unwrap().period, 21);
        assert_eq!(c.process_ecm(&live_even, NOW + 12).unwrap().period, 20);
    }
    assert_eq!(c.counters().refusals.replay, 6);
    // within one second (a file scrambled faster than real time) the period decides
    let same_second_older = ecm(&ring, 1, 18, NOW);
    assert_eq!(
        c.process_ecm(&same_second_older, NOW + 12),
        Err(Refusal::Replay)
    );
    assert!(c
        .process_ecm(&ecm(&ring, 1, 22, NOW + 20), NOW + 21)
        .is_ok());

    // another stream (a second service over newcamd) has its own newest ECMs
    let other = castmux::softcard::EcmStream(7);
    assert!(c.process_ecm_on(other, &old_even, NOW + 12).is_ok());
    assert_eq!(
        c.process_ecm_on(other, &ecm(&ring, 1, 0, NOW - 320), NOW + 12),
        Err(Refusal::Replay)
    );
    // a cached answer goes through the same rule
    assert_eq!(
        c.admit_answered(other, Parity::Even, NOW - 320, 0, NOW + 12),
        Err(Refusal::Replay)
    );
    assert!(c
        .admit_answered(other, Parity::Even, NOW - 300, 2, NOW + 12)
        .is_ok());
    // the window still holds for a stream the card has not seen
    let fresh_stream = castmux::softcard::EcmStream(8);
    assert_eq!(
        c.process_ecm_on(fresh_stream, &ecm(&ring, 1, 1, NOW - 700), NOW),
        Err(Refusal::Replay)
    );
}

#[test]
fn ecm_streams_are_bounded_and_the_least_recently_used_is_forgotten() {
    use castmux::softcard::{EcmStream, MAX_ECM_STREAMS};
    let ring = ServiceKeyRing::from_keys([sk(0, 1)]);
    let mut c = card(13, ent(1), vec![sk(0, 1)]);
    let new = ecm(&ring, 1, 10, NOW);
    let old = ecm(&ring, 1, 8, NOW - 20);
    assert!(c.process_ecm_on(EcmStream(0), &new, NOW).is_ok());
    for s in 1..MAX_ECM_STREAMS as u64 {
        assert!(c.process_ecm_on(EcmStream(s), &new, NOW).is_ok());
    }
    // stream 0 is still remembered (the table is exactly full)
    assert_eq!(
        c.process_ecm_on(EcmStream(0), &old, NOW),
        Err(Refusal::Replay)
    );
    // one more stream evicts the least recently used (stream 1), not stream 0
    assert!(c
        .process_ecm_on(EcmStream(MAX_ECM_STREAMS as u64), &new, NOW)
        .is_ok());
    assert_eq!(
        c.process_ecm_on(EcmStream(0), &old, NOW),
        Err(Refusal::Replay)
    );
    // stream 1 was forgotten: only the time window holds it now
    assert!(c.process_ecm_on(EcmStream(1), &old, NOW).is_ok());
}

#[test]
fn csa2_cws_are_reduced_as_cams_do_unless_full_keys_are_asked_for() {
    use castmux::softcard::CwReduction;
    let ring = ServiceKeyRing::from_keys([sk(0, 1)]);
    // a full 64-bit CW pair, as TSDuck's scrambler gives its ECMG by default
    let even = [0x11, 0x22, 0x33, 0x00, 0x44, 0x55, 0x66, 0x00];
    let odd = [0xF0, 0x20, 0x01, 0xAB, 0x80, 0x90, 0xA0, 0xCD];
    let mut section = Vec::new();
    build_ecm(
        &ring,
        &EcmParams {
            ca_system_id: CAID,
            access: AccessCriteria(1),
            period: 6,
            timestamp: NOW,
            even: &even,
            odd: &odd,
        },
        &mut section,
    )
    .unwrap();
    let mut c = card(14, ent(1), vec![sk(0, 1)]);
    let a = c.process_ecm(&section, NOW).unwrap();
    assert_eq!(
        a.even.as_bytes(),
        &[0x11, 0x22, 0x33, 0x66, 0x44, 0x55, 0x66, 0xFF]
    );
    assert_eq!(
        a.odd.as_bytes(),
        &[0xF0, 0x20, 0x01, 0x11, 0x80, 0x90, 0xA0, 0xB0]
    );
    c.set_cw_reduction(CwReduction::Full);
    let a = c.process_ecm(&section, NOW).unwrap();
    assert_eq!(a.even.as_bytes(), &even);
    assert_eq!(a.odd.as_bytes(), &odd);
}

#[test]
fn emms_update_the_card() {
    let serial = 2100000042;
    let keys = vec![sk(0, 1), sk(3, 1)];
    let ring = ServiceKeyRing::from_keys(keys.clone());
    let section = ecm(&ring, 1 << 3, 0, NOW);
    let mut c = card(serial, ent(0), vec![]);
    assert_eq!(c.process_ecm(&section, NOW), Err(Refusal::NotEntitled));

    // entitled to package 3 by its EMM, with the key
    let e3 = ent(1 << 3);
    let first = emm(serial, 100, &e3, &[sk(3, 1)]);
    assert_eq!(c.process_emm(&first, NOW), Ok(EmmOutcome::Applied));
    assert_eq!(c.process_emm(&first, NOW), Ok(EmmOutcome::AlreadyApplied));
    assert!(c.process_ecm(&section, NOW).is_ok());

    // another card's EMM is not for this one
    let other = emm(serial + 1, 200, &ent(u64::MAX), &keys);
    assert_eq!(c.process_emm(&other, NOW), Ok(EmmOutcome::NotForThisCard));

    // tampered: refused, nothing changes
    let mut bad = emm(serial, 300, &ent(0), &[]);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(c.process_emm(&bad, NOW), Err(Refusal::BadMac));
    assert!(c.process_ecm(&section, NOW).is_ok());

    // disabled
    let mut off = e3.clone();
    off.enabled = false;
    assert_eq!(
        c.process_emm(&emm(serial, 400, &off, &[]), NOW),
        Ok(EmmOutcome::Applied)
    );
    assert_eq!(c.process_ecm(&section, NOW), Err(Refusal::Disabled));
    assert!(
        c.key_versions().is_empty(),
        "a disabled card drops its keys"
    );

    // the old EMM replayed does not switch it back on
    assert_eq!(c.process_emm(&first, NOW), Err(Refusal::Replay));

    // enabled again, but expired
    let mut expired = e3.clone();
    expired.finish = NOW - 10;
    let m = emm(serial, 500, &expired, &[sk(3, 1)]);
    assert_eq!(c.process_emm(&m, NOW), Ok(EmmOutcome::Applied));
    assert_eq!(c.process_ecm(&section, NOW), Err(Refusal::Expired));

    // a new package, renewed
    let both = ent(1 | 1 << 3);
    let m = emm(serial, 600, &both, &keys);
    assert_eq!(c.process_emm(&m, NOW), Ok(EmmOutcome::Applied));
    assert!(c.process_ecm(&section, NOW).is_ok());
    assert!(c.process_ecm(&ecm(&ring, 1, 0, NOW), NOW).is_ok());
    assert_eq!(c.key_versions(), [(0, 1), (3, 1)]);
    let n = c.counters();
    assert_eq!(
        (
            n.emm_applied,
            n.emm_already_applied,
            n.emm_not_for_this_card
        ),
        (4, 1, 1)
    );
    assert_eq!((n.refusals.bad_mac, n.refusals.replay), (1, 1));
}

#[test]
fn split_emm_parts_apply_in_any_order() {
    let serial = 77;
    let keys: Vec<ServiceKey> = (0..40).flat_map(|b| [sk(b, 1), sk(b, 2)]).collect();
    let mut e = ent((1u64 << 40) - 1);
    e.events = (0..20)
        .map(|i| EventGrant {
            id: i,
            bit: bit(50),
            start: NOW,
            end: NOW + DAY,
        })
        .collect();
    let all = emm(serial, 5, &e, &keys);
    let mut parts = Vec::new();
    let mut rest = &all[..];
    while !rest.is_empty() {
        let len = castmux::ts::section::section_total_len(rest).unwrap();
        parts.push(&rest[..len]);
        rest = &rest[len..];
    }
    assert!(parts.len() >= 2);
    let mut c = card(serial, ent(0), vec![]);
    for p in parts.iter().rev() {
        assert_eq!(c.process_emm(p, NOW), Ok(EmmOutcome::Applied));
    }
    for p in &parts {
        assert_eq!(c.process_emm(p, NOW), Ok(EmmOutcome::AlreadyApplied));
    }
    assert_eq!(c.entitlements(), &e);
    assert_eq!(c.key_versions().len(), 80);
}

#[test]
fn rotation_keeps_working_with_next_keys() {
    let serial = 31337;
    let mut c = card(serial, ent(1 << 4), vec![sk(4, 1)]);
    // the store rotates: v2 appears as "next", ECMs still use v1
    let mut carousel = EmmCarousel::new(1_000_000);
    carousel.upsert_card(
        CardSerial(serial),
        derive_card_key(&root(), CardSerial(serial)),
        live(1 << 4),
        false,
    );
    carousel.set_service_keys(vec![sk(4, 1), sk(4, 2)]);
    let mut out = Vec::new();
    let mut t = Duration::ZERO;
    while out.is_empty() {
        t += Duration::from_millis(10);
        carousel.poll(t, &mut out);
    }
    assert_eq!(c.process_emm(&out, NOW), Ok(EmmOutcome::Applied));
    assert_eq!(c.key_versions(), [(4, 1), (4, 2)]);
    // next rotation: v2 is current; the card opens it without another EMM
    let ring = ServiceKeyRing::from_keys([sk(4, 1), sk(4, 2), sk(4, 3)]);
    assert_eq!(ring.current(bit(4)).unwrap().version, 2);
    assert!(c.process_ecm(&ecm(&ring, 1 << 4, 8, NOW), NOW).is_ok());
    // a card that missed the EMM cannot
    let mut late = card(serial, ent(1 << 4), vec![sk(4, 1)]);
    assert_eq!(
        late.process_ecm(&ecm(&ring, 1 << 4, 8, NOW), NOW),
        Err(Refusal::UnknownKeyVersion { bit: 4, version: 2 })
    );
}

#[test]
fn saved_card_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    let serial = 2100000005;
    let mut c = card(serial, ent(0), vec![]);
    c.save(&path).unwrap();
    let m = emm(serial, 900, &ent(1 << 7), &[sk(7, 3)]);
    assert_eq!(c.process_emm(&m, NOW), Ok(EmmOutcome::Applied));
    c.save(&path).unwrap();
    let mut again = SoftCard::load(&path).unwrap();
    assert_eq!(again.entitlements(), c.entitlements());
    assert_eq!(again.key_versions(), [(7, 3)]);
    assert_eq!(again.process_emm(&m, NOW), Ok(EmmOutcome::AlreadyApplied));
    let older = emm(serial, 800, &ent(u64::MAX), &[]);
    assert_eq!(again.process_emm(&older, NOW), Err(Refusal::Replay));
    // still a plain card.json for anything reading CardFile
    let plain: CardFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(plain.serial, CardSerial(serial));
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() == 1,
        "no temp file left"
    );

    std::fs::write(&path, b"{\"serial\": 5}").unwrap();
    let err = SoftCard::load(&path).unwrap_err().to_string();
    assert!(err.contains("card.json"), "{err}");
    assert!(SoftCard::load(&dir.path().join("missing.json")).is_err());
}

#[test]
fn debug_output_shows_no_key_bytes() {
    let ring = ServiceKeyRing::from_keys([sk(0, 1)]);
    let mut c = card(1, ent(1), vec![sk(0, 1)]);
    let a = c.process_ecm(&ecm(&ring, 1, 0, NOW), NOW).unwrap();
    let text = format!("{c:?} {a:?} {ring:?} {:?} {:?}", sk(0, 1), c.card_file()).to_lowercase();
    for needle in ["a5a5", "165, 165", "e1e1", "225, 225", "0d0d", "13, 13"] {
        assert!(!text.contains(needle), "{needle} in {text}");
    }
}

#[test]
fn carousel_respects_the_bitrate_and_cycles_every_card() {
    let bitrate = 50_000;
    let mut c = EmmCarousel::new(bitrate);
    c.set_service_keys(vec![sk(0, 1), sk(0, 2), sk(1, 1)]);
    for s in 0..1000u64 {
        c.upsert_card(
            CardSerial(s),
            Key128::from_bytes([s as u8; 16]),
            live(0b11),
            false,
        );
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut t = Duration::ZERO;
    while t < Duration::from_secs(60) {
        t += Duration::from_millis(10);
        out.clear();
        while c.poll(t, &mut out) {}
        let mut rest = &out[..];
        while let Some(len) = castmux::ts::section::section_total_len(rest) {
            seen.insert(EmmHeader::parse(&rest[..len]).unwrap().serial);
            rest = &rest[len..];
        }
    }
    let rate = c.counters().air_bytes as f64 * 8.0 / 60.0;
    assert!(
        (rate - bitrate as f64).abs() <= bitrate as f64 * 0.05,
        "{rate} bit/s"
    );
    assert_eq!(seen.len(), 1000, "every card on air");
    assert!(c.counters().cycles >= 1);
    println!("50 kbit/s over 60 s: {rate:.0} bit/s, {:?}", c.counters());
}

#[test]
fn urgent_card_is_on_air_within_two_seconds() {
    let mut c = EmmCarousel::new(50_000);
    c.set_service_keys(vec![sk(0, 1)]);
    for s in 0..10_000u64 {
        c.upsert_card(CardSerial(s), Key128::from_bytes([1; 16]), live(1), false);
    }
    let mut out = Vec::new();
    let mut t = Duration::ZERO;
    while t < Duration::from_secs(5) {
        t += Duration::from_millis(10);
        while c.poll(t, &mut out) {}
    }
    let changed = CardSerial(9_999);
    c.upsert_card(changed, Key128::from_bytes([2; 16]), ent(0), true);
    let asked = t;
    loop {
        t += Duration::from_millis(10);
        out.clear();
        while c.poll(t, &mut out) {}
        if !out.is_empty()
            && EmmHeader::parse(&out[..castmux::ts::section::section_total_len(&out).unwrap()])
                .unwrap()
                .serial
                == changed
        {
            break;
        }
        assert!(
            t - asked < Duration::from_secs(2),
            "urgent card not on air in 2 s"
        );
    }
    assert!(
        t - asked <= Duration::from_millis(200),
        "took {:?}",
        t - asked
    );
    assert_eq!(c.counters().urgent, 1);
}

#[test]
fn carousel_memory_is_bounded_with_100k_cards() {
    let mut c = EmmCarousel::new(200_000_000);
    c.set_service_keys((0..8).map(|b| sk(b, 1)).collect());
    for s in 0..100_000u64 {
        c.upsert_card(
            CardSerial(2_100_000_000 + s),
            Key128::from_bytes([3; 16]),
            live(0xFF),
            false,
        );
    }
    let mut out = Vec::new();
    let mut t = Duration::ZERO;
    let mut most_pending = 0;
    let started = std::time::Instant::now();
    while c.counters().cycles == 0 {
        t += Duration::from_millis(10);
        out.clear();
        while c.poll(t, &mut out) {
            most_pending = most_pending.max(c.pending_bytes());
        }
        most_pending = most_pending.max(c.pending_bytes());
    }
    let built = c.counters().emitted;
    println!(
        "100k cards: {built} EMMs in {:?} ({:.0}/s), most held {most_pending} bytes",
        started.elapsed(),
        built as f64 / started.elapsed().as_secs_f64()
    );
    assert!(built >= 100_000);
    assert!(most_pending <= 1024, "{most_pending} bytes held");
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn card_keeps_three_versions_per_package() {
    let serial = 4242;
    let mut c = card(serial, ent(1 << 2), vec![sk(2, 1), sk(2, 2)]);
    let m = emm(serial, 10, &ent(1 << 2), &[sk(2, 3), sk(2, 4)]);
    assert_eq!(c.process_emm(&m, NOW), Ok(EmmOutcome::Applied));
    assert_eq!(c.key_versions(), [(2, 2), (2, 3), (2, 4)]);
}

/// Rough speeds (the criterion benches are the reference); bounds are loose for a busy
/// 2-core machine: the issue asks for 20,000 ECMs/s, 50,000 EMMs/s and < 50 µs per card ECM.
#[test]
fn speeds() {
    let ring = ServiceKeyRing::from_keys((0..4).map(|b| sk(b, 1)));
    let params = EcmParams {
        ca_system_id: CAID,
        access: AccessCriteria(0b1111),
        period: 1,
        timestamp: NOW,
        even: &[1; 8],
        odd: &[2; 8],
    };
    let n: u32 = 20_000;
    let mut out = Vec::with_capacity(256);
    let t = std::time::Instant::now();
    for _ in 0..n {
        out.clear();
        build_ecm(&ring, &params, &mut out).unwrap();
    }
    let ecm_rate = f64::from(n) / t.elapsed().as_secs_f64();

    let key = Key128::from_bytes([4; 16]);
    let keys = [sk(0, 1), sk(0, 2), sk(1, 1), sk(1, 2)];
    let e = ent(0b11);
    let t = std::time::Instant::now();
    for s in 0..n {
        out.clear();
        build_emm(CardSerial(u64::from(s)), &key, 1, &e, &keys, &mut out).unwrap();
    }
    let emm_rate = f64::from(n) / t.elapsed().as_secs_f64();

    let mut c = card(1, ent(1 << 3), vec![sk(3, 1)]);
    let section = ecm(&ring, 0b1111, 1, NOW);
    let t = std::time::Instant::now();
    for _ in 0..n {
        c.process_ecm(&section, NOW).unwrap();
    }
    let card_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!("ECM build {ecm_rate:.0}/s, EMM build {emm_rate:.0}/s, card ECM {card_us:.2} µs");
    assert!(ecm_rate > 2_000.0 && emm_rate > 5_000.0 && card_us < 500.0);
}
