//! The group EMM (table 0x84) and the unique EMM of format 2 (table 0x83) parsers, and the
//! software card fed a run of them: raw bytes (the clear checks before the tag), sections
//! the harness seals itself from the fuzzer's plaintext under the card key or the group
//! key (docs/cas-formats.md), so the fuzzer reaches the content parsers and the card's
//! rules behind the GCM tag, and round trips of the builders. A card may take from a
//! group EMM only keys of packages it is entitled to, and keeps at most three versions.
#![no_main]

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, AesGcm, KeyInit, Nonce};
use castmux::cas::emm2::{as_carried, build_emm2, open_emm2, Emm2Header};
use castmux::cas::group_emm::{build_group_emm, open_group_emm, GroupEmmHeader};
use castmux::cas::{
    AccessCriteria, CardSerial, Entitlements, EventGrant, GroupId, Key128, PackageBit,
    ServiceKey,
};
use castmux::softcard::card::{EmmOutcome, SoftCard};
use castmux_fuzz::card::{check_card, test_card, CARD_KEY, CAS, NOW, SERIAL};
use castmux_fuzz::Cursor;
use libfuzzer_sys::fuzz_target;

/// The key the harness gives the card's group.
const GROUP_KEY: [u8; 16] = [0x6B; 16];

fn finish_length(out: &mut [u8]) {
    let len = out.len() - 3;
    out[1] = 0x70 | (len >> 8) as u8 & 0x0F;
    out[2] = len as u8;
}

/// A unique EMM of format 2 for this card (or another serial), its content as the fuzzer
/// wrote it (with the group key appended when asked), sealed under the card key.
fn sealed_unique(c: &mut Cursor<'_>, op: u8) -> Vec<u8> {
    let serial = if op & 0x80 != 0 { c.u64() } else { SERIAL };
    let sequence = u64::from(c.u8());
    let part_byte = c.u8();
    let mut body = c.chunk().to_vec();
    body.truncate(900);
    if op & 0x40 != 0 {
        body.extend_from_slice(&GROUP_KEY);
    }
    let mut out = vec![0x83, 0x70, 0, 2];
    out.extend_from_slice(&serial.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    out.push(part_byte);
    let total = out.len() + body.len() + 12;
    out[1] = 0x70 | ((total - 3) >> 8) as u8 & 0x0F;
    out[2] = (total - 3) as u8;
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&sequence.to_be_bytes());
    nonce[8] = 0x83;
    nonce[9] = part_byte;
    let tag = AesGcm::<aes::Aes128, U12, U12>::new(&CARD_KEY.into())
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &out, &mut body)
        .expect("small input");
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    out
}

/// A group EMM for the card's group (or another, or another CA system), its content as
/// the fuzzer wrote it, sealed under the group key.
fn sealed_group(c: &mut Cursor<'_>, op: u8) -> Vec<u8> {
    let caid = if op & 0x80 != 0 { c.u16() } else { CAS };
    let group = if op & 0x40 != 0 {
        c.u64()
    } else {
        GroupId::of(CardSerial(SERIAL)).0
    };
    let sequence = u64::from(c.u8());
    let (part, parts) = (c.u8() % 4, c.u8() % 4);
    let nonce: [u8; 12] = c.take(12).try_into().unwrap_or([7; 12]);
    let mut body = c.chunk().to_vec();
    body.truncate(900);
    let mut out = vec![0x84, 0x70, 0, 1];
    out.extend_from_slice(&caid.to_be_bytes());
    out.extend_from_slice(&group.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&[part, parts]);
    out.extend_from_slice(&nonce);
    let total = out.len() + body.len() + 16;
    out[1] = 0x70 | ((total - 3) >> 8) as u8 & 0x0F;
    out[2] = (total - 3) as u8;
    let tag = Aes128Gcm::new(&GROUP_KEY.into())
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &out, &mut body)
        .expect("small input");
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    out
}

fn allowed(ent: &Entitlements) -> u64 {
    if !ent.enabled {
        return 0;
    }
    ent.events
        .iter()
        .fold(ent.access.0, |m, e| m | 1u64 << e.bit.get())
}

fn bit(c: &mut Cursor<'_>) -> PackageBit {
    PackageBit::new(u32::from(c.u8() % 64)).expect("below 64")
}

/// Builders then openers give back what went in (times as format 2 carries them).
fn round_trip(c: &mut Cursor<'_>) {
    let ent = Entitlements {
        access: AccessCriteria(c.u64()),
        start: c.u64() as i64,
        finish: c.u64() as i64,
        pair: c.u8() & 1,
        enabled: c.u8() & 1 != 0,
        events: (0..c.u8() % 100)
            .map(|_| EventGrant {
                id: u32::from(c.u16()),
                bit: bit(c),
                start: c.u64() as i64,
                end: c.u64() as i64,
            })
            .collect(),
    };
    let card_key = Key128::from_bytes(CARD_KEY);
    let group_key = Key128::from_bytes(GROUP_KEY);
    let sequence = c.u64();
    let mut out = Vec::new();
    let parts = build_emm2(
        CardSerial(SERIAL),
        &card_key,
        sequence,
        &ent,
        (c.u8() & 1 != 0).then_some(&group_key),
        &mut out,
    )
    .expect("at most 99 events fit");
    let mut rest = &out[..];
    let mut events = Vec::new();
    for _ in 0..parts {
        let len = castmux::ts::section::section_total_len(rest).expect("a section");
        let p = open_emm2(&rest[..len], &card_key).expect("opens");
        assert_eq!(p.header.sequence, sequence);
        events.extend(p.entitlements.events.iter().cloned());
        assert_eq!(
            Entitlements {
                events: vec![],
                ..p.entitlements
            },
            Entitlements {
                events: vec![],
                ..as_carried(&ent)
            }
        );
        rest = &rest[len..];
    }
    assert_eq!(events, as_carried(&ent).events);

    let keys: Vec<ServiceKey> = (0..c.u8() % 130)
        .map(|i| ServiceKey {
            bit: bit(c),
            version: u32::from(c.u16()),
            key: Key128::from_bytes([i; 16]),
        })
        .collect();
    let mut out = Vec::new();
    let group = GroupId(c.u64());
    let parts = build_group_emm(CAS, group, &group_key, sequence, &keys, &mut out)
        .expect("at most 129 keys fit");
    let mut rest = &out[..];
    let mut got = Vec::new();
    for _ in 0..parts {
        let len = castmux::ts::section::section_total_len(rest).expect("a section");
        let p = open_group_emm(&rest[..len], &group_key).expect("opens");
        assert_eq!((p.header.group, p.header.ca_system_id), (group, CAS));
        got.extend(p.keys);
        rest = &rest[len..];
    }
    assert_eq!(got, keys);
}

fuzz_target!(|data: &[u8]| {
    let mut card: SoftCard = test_card();
    let mut c = Cursor::new(data);
    let mut steps = 0;
    while !c.is_empty() && steps < 64 {
        steps += 1;
        let op = c.u8();
        let now = NOW + i64::from(c.u8() as i8) * 60;
        match op & 3 {
            0 => {
                let mut s = c.chunk().to_vec();
                if op & 4 != 0 && s.len() >= 3 {
                    finish_length(&mut s);
                }
                let _ = Emm2Header::parse(&s);
                let _ = GroupEmmHeader::parse(&s);
                let _ = open_emm2(&s, &Key128::from_bytes(CARD_KEY));
                let _ = open_group_emm(&s, &Key128::from_bytes(GROUP_KEY));
                let _ = card.process_emm(&s, now);
            }
            1 => {
                let s = sealed_unique(&mut c, op);
                let _ = card.process_emm(&s, now);
            }
            2 => {
                let s = sealed_group(&mut c, op);
                let before = card.key_versions();
                let may = allowed(card.entitlements());
                let r = card.process_emm(&s, now);
                for (b, v) in card.key_versions() {
                    if !before.contains(&(b, v)) {
                        assert_eq!(r, Ok(EmmOutcome::Applied));
                        assert!(may & (1u64 << b) != 0, "took key {b}/v{v} unentitled");
                    }
                }
            }
            _ => round_trip(&mut c),
        }
        check_card(&card);
    }
});
