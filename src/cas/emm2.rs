//! The castmux unique EMM, format version 2 (docs/cas-formats.md, "Unique EMM, format 2"):
//! the slim per-card EMM that goes with group EMMs ([`super::group_emm`]).
//!
//! It carries what differs per card — entitlements, events, and the key of the card's
//! group — and no service keys: those reach the card in its group's EMM. It is sized so
//! that about three go in one TS packet (67 bytes for a card without events), which is
//! what lets a carousel of a million cards turn in under ten minutes at 1 Mbit/s.
//!
//! ```text
//! 0x83, 0x70|len_hi, len_lo
//! version=2 (1) | serial (8) | sequence (8) | part<<4 | (parts-1) (1)
//! GCM96( access (8) | start (4) | finish (4) | flags (1) | e (1)
//!        | e x { event id (4) | bit (1) | start (4) | end (4) }
//!        | group key (16, when flags bit 2) )  + tag (12)
//! nonce (not sent) = sequence (8) | 0x83 | part byte | 0x00 0x00
//! ```
//!
//! The nonce is the sequence: the carousel never builds two different contents under
//! one (card, sequence), so a repeat of an EMM is the same bytes again. That saves the
//! 12 nonce bytes of format 1, and the 96-bit tag saves 4 more.

use super::codec::{self, Reader, NONCE_LEN, SHORT_TAG_LEN};
use super::emm::{open_section, EmmBuildError, MAX_EMM_SECTION};
use super::refusal::Refusal;
use super::types::{AccessCriteria, CardSerial, Entitlements, EventGrant, Key128, PackageBit};

/// table_id of a castmux unique EMM of format 2.
pub const EMM2_TABLE_ID: u8 = 0x83;
/// The format version byte of a unique EMM on table 0x83.
pub const EMM2_FORMAT_VERSION: u8 = 2;
/// Most parts one card's format-2 EMM may be split into.
pub const MAX_EMM2_PARTS: usize = 16;

/// flags bit 0: the card is enabled.
const FLAG_ENABLED: u8 = 1;
/// flags bit 1: TVCAS's pair flag.
const FLAG_PAIR: u8 = 2;
/// flags bit 2: the group key follows the events.
const FLAG_GROUP_KEY: u8 = 4;

const HEADER_LEN: usize = 3 + 1 + 8 + 8 + 1;
const CORE_LEN: usize = 8 + 4 + 4 + 1 + 1;
const EVENT_LEN: usize = 4 + 1 + 4 + 4;
const GROUP_KEY_LEN: usize = 16;
/// Events one section holds (with the group key).
const EVENTS_PER_PART: usize =
    (MAX_EMM_SECTION - HEADER_LEN - CORE_LEN - GROUP_KEY_LEN - SHORT_TAG_LEN) / EVENT_LEN;

/// A time as 32 bits: Unix seconds clamped to `0..=u32::MAX`; `u32::MAX` reads back as
/// "never" (`i64::MAX`). Every time up to 2106 keeps its meaning for the card's checks.
fn time32(t: i64) -> u32 {
    t.clamp(0, i64::from(u32::MAX)) as u32
}

fn time64(t: u32) -> i64 {
    if t == u32::MAX {
        i64::MAX
    } else {
        i64::from(t)
    }
}

fn nonce(sequence: u64, part_byte: u8) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..8].copy_from_slice(&sequence.to_be_bytes());
    n[8] = EMM2_TABLE_ID;
    n[9] = part_byte;
    n
}

/// The entitlements as a format-2 EMM carries them (times in 32 bits, see [`time32`]):
/// what a card that applied it holds.
pub fn as_carried(ent: &Entitlements) -> Entitlements {
    Entitlements {
        access: ent.access,
        start: time64(time32(ent.start)),
        finish: time64(time32(ent.finish)),
        pair: u8::from(ent.pair != 0),
        enabled: ent.enabled,
        events: ent
            .events
            .iter()
            .map(|e| EventGrant {
                id: e.id,
                bit: e.bit,
                start: time64(time32(e.start)),
                end: time64(time32(e.end)),
            })
            .collect(),
    }
}

/// Append the format-2 EMM section(s) of one card to `out`; returns how many sections.
///
/// `group_key` is the key of the card's group (none for a disabled card: it is given
/// nothing it could misuse). The content under one `sequence` must never change: the
/// sequence is the nonce (see the module docs).
pub fn build_emm2(
    serial: CardSerial,
    card_key: &Key128,
    sequence: u64,
    ent: &Entitlements,
    group_key: Option<&Key128>,
    out: &mut Vec<u8>,
) -> Result<usize, EmmBuildError> {
    let parts = ent.events.len().div_ceil(EVENTS_PER_PART).max(1);
    if parts > MAX_EMM2_PARTS {
        return Err(EmmBuildError::TooLarge {
            serial,
            events: ent.events.len(),
            keys: 0,
        });
    }
    let mut flags = 0;
    if ent.enabled {
        flags |= FLAG_ENABLED;
    }
    if ent.pair != 0 {
        flags |= FLAG_PAIR;
    }
    if group_key.is_some() {
        flags |= FLAG_GROUP_KEY;
    }
    let mut body = [0u8; MAX_EMM_SECTION];
    for (part, events) in ent
        .events
        .chunks(EVENTS_PER_PART)
        .chain(ent.events.is_empty().then_some(&[][..]))
        .enumerate()
    {
        let mut len = 0;
        let mut put = |bytes: &[u8]| {
            body[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        };
        put(&ent.access.0.to_be_bytes());
        put(&time32(ent.start).to_be_bytes());
        put(&time32(ent.finish).to_be_bytes());
        put(&[flags, events.len() as u8]);
        for e in events {
            put(&e.id.to_be_bytes());
            put(&[e.bit.get()]);
            put(&time32(e.start).to_be_bytes());
            put(&time32(e.end).to_be_bytes());
        }
        if let Some(k) = group_key {
            put(k.as_bytes());
        }
        let part_byte = ((part as u8) << 4) | (parts as u8 - 1);
        let section_start = out.len();
        let section_length = (HEADER_LEN - 3 + len + SHORT_TAG_LEN) as u16;
        out.push(EMM2_TABLE_ID);
        out.push(0x70 | (section_length >> 8) as u8);
        out.push(section_length as u8);
        out.push(EMM2_FORMAT_VERSION);
        out.extend_from_slice(&serial.0.to_be_bytes());
        out.extend_from_slice(&sequence.to_be_bytes());
        out.push(part_byte);
        let tag = codec::seal_short(
            card_key.as_bytes(),
            &nonce(sequence, part_byte),
            &out[section_start..],
            &mut body[..len],
        );
        out.extend_from_slice(&body[..len]);
        out.extend_from_slice(&tag);
        debug_assert!(out.len() - section_start <= MAX_EMM_SECTION);
    }
    body.fill(0);
    Ok(parts)
}

/// The clear header of a format-2 EMM section, checked for shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emm2Header {
    /// The card it is for.
    pub serial: CardSerial,
    /// Its sequence (grows with each change of the card).
    pub sequence: u64,
    /// Which part, 0-based.
    pub part: u8,
    /// Of how many.
    pub parts: u8,
}

impl Emm2Header {
    /// Read the clear header of a format-2 EMM section (exactly one section).
    pub fn parse(section: &[u8]) -> Result<Emm2Header, Refusal> {
        let mut r = open_section(
            section,
            EMM2_TABLE_ID,
            "table_id is not a castmux unique EMM's of format 2 (0x83)",
            EMM2_FORMAT_VERSION,
            "unknown EMM format version",
        )?;
        let short = Refusal::Malformed("truncated EMM header");
        let serial = CardSerial(r.u64().ok_or(short.clone())?);
        let sequence = r.u64().ok_or(short.clone())?;
        let part_byte = r.u8().ok_or(short)?;
        let (part, parts) = (part_byte >> 4, (part_byte & 0x0F) + 1);
        if part >= parts {
            return Err(Refusal::Malformed("EMM part number out of range"));
        }
        if r.remaining() < CORE_LEN + SHORT_TAG_LEN {
            return Err(Refusal::Malformed("EMM too short for its content"));
        }
        Ok(Emm2Header {
            serial,
            sequence,
            part,
            parts,
        })
    }
}

/// One opened format-2 EMM section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emm2Part {
    /// The clear header.
    pub header: Emm2Header,
    /// Entitlements, with the events of this part only.
    pub entitlements: Entitlements,
    /// The key of the card's group, when the card is given it.
    pub group_key: Option<Key128>,
}

/// Verify and decrypt a format-2 EMM section with the card's key.
pub fn open_emm2(section: &[u8], card_key: &Key128) -> Result<Emm2Part, Refusal> {
    let header = Emm2Header::parse(section)?;
    let (clear, rest) = section.split_at(HEADER_LEN);
    let (body, tag) = rest.split_at(rest.len() - SHORT_TAG_LEN);
    let tag: &[u8; SHORT_TAG_LEN] = tag.try_into().map_err(|_| Refusal::BadMac)?;
    let mut buf = [0u8; MAX_EMM_SECTION];
    let buf = &mut buf[..body.len()];
    buf.copy_from_slice(body);
    let n = nonce(header.sequence, clear[HEADER_LEN - 1]);
    if !codec::open_short(card_key.as_bytes(), &n, clear, buf, tag) {
        buf.fill(0);
        return Err(Refusal::BadMac);
    }
    let part = parse_body(header, buf);
    buf.fill(0);
    part
}

fn parse_body(header: Emm2Header, body: &[u8]) -> Result<Emm2Part, Refusal> {
    let bad = || Refusal::Malformed("EMM content does not match its length");
    let mut r = Reader::new(body);
    let access = AccessCriteria(r.u64().ok_or_else(bad)?);
    let start = time64(r.u32().ok_or_else(bad)?);
    let finish = time64(r.u32().ok_or_else(bad)?);
    let flags = r.u8().ok_or_else(bad)?;
    if flags & !(FLAG_ENABLED | FLAG_PAIR | FLAG_GROUP_KEY) != 0 {
        return Err(Refusal::Malformed("unknown EMM flags"));
    }
    let n_events = usize::from(r.u8().ok_or_else(bad)?);
    let key_len = if flags & FLAG_GROUP_KEY != 0 {
        GROUP_KEY_LEN
    } else {
        0
    };
    if n_events * EVENT_LEN + key_len != r.remaining() {
        return Err(bad());
    }
    let mut events = Vec::with_capacity(n_events);
    for _ in 0..n_events {
        let id = r.u32().ok_or_else(bad)?;
        let bit = PackageBit::new(u32::from(r.u8().ok_or_else(bad)?))
            .map_err(|_| Refusal::Malformed("package bit above 63"))?;
        let start = time64(r.u32().ok_or_else(bad)?);
        let end = time64(r.u32().ok_or_else(bad)?);
        events.push(EventGrant {
            id,
            bit,
            start,
            end,
        });
    }
    let group_key = if key_len > 0 {
        Some(Key128::from_bytes(r.array::<16>().ok_or_else(bad)?))
    } else {
        None
    };
    Ok(Emm2Part {
        header,
        entitlements: Entitlements {
            access,
            start,
            finish,
            pair: u8::from(flags & FLAG_PAIR != 0),
            enabled: flags & FLAG_ENABLED != 0,
            events,
        },
        group_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(events: usize) -> Entitlements {
        Entitlements {
            access: AccessCriteria(0b1011),
            start: 1_700_000_000,
            finish: i64::MAX,
            pair: 1,
            enabled: true,
            events: (0..events as u32)
                .map(|i| EventGrant {
                    id: i,
                    bit: PackageBit::new(i % 64).unwrap(),
                    start: 1_700_000_000 + i64::from(i),
                    end: 1_700_000_100 + i64::from(i),
                })
                .collect(),
        }
    }

    #[test]
    fn a_card_without_events_is_67_bytes_and_round_trips() {
        let ck = Key128::from_bytes([0x11; 16]);
        let gk = Key128::from_bytes([0x22; 16]);
        let e = ent(0);
        let mut out = Vec::new();
        assert_eq!(
            build_emm2(CardSerial(2100000001), &ck, 9, &e, Some(&gk), &mut out),
            Ok(1)
        );
        assert_eq!(out.len(), 67);
        let p = open_emm2(&out, &ck).unwrap();
        assert_eq!(
            p.header,
            Emm2Header {
                serial: CardSerial(2100000001),
                sequence: 9,
                part: 0,
                parts: 1
            }
        );
        assert_eq!(p.entitlements, e);
        assert_eq!(p.group_key.as_ref(), Some(&gk));
        // the same card, sequence and content: the same bytes (the nonce is the sequence)
        let mut again = Vec::new();
        build_emm2(CardSerial(2100000001), &ck, 9, &e, Some(&gk), &mut again).unwrap();
        assert_eq!(again, out);
        assert_eq!(
            open_emm2(&out, &Key128::from_bytes([0x12; 16])),
            Err(Refusal::BadMac)
        );
    }

    #[test]
    fn times_are_carried_in_32_bits() {
        let mut e = ent(1);
        e.start = -5;
        e.finish = 5_000_000_000;
        e.events[0].end = i64::MAX;
        let ck = Key128::from_bytes([3; 16]);
        let mut out = Vec::new();
        build_emm2(CardSerial(1), &ck, 1, &e, None, &mut out).unwrap();
        let p = open_emm2(&out, &ck).unwrap();
        assert_eq!(p.entitlements.start, 0);
        assert_eq!(p.entitlements.finish, i64::MAX);
        assert_eq!(p.entitlements.events[0].end, i64::MAX);
        assert_eq!(p.entitlements, as_carried(&e));
        assert_eq!(p.group_key, None);
    }

    #[test]
    fn many_events_split_into_parts() {
        let ck = Key128::from_bytes([0x44; 16]);
        let gk = Key128::from_bytes([0x55; 16]);
        let e = ent(200);
        let mut out = Vec::new();
        let parts = build_emm2(CardSerial(5), &ck, 7, &e, Some(&gk), &mut out).unwrap();
        assert_eq!(parts, 200usize.div_ceil(EVENTS_PER_PART));
        let mut rest = &out[..];
        let mut events = Vec::new();
        for i in 0..parts {
            let len = crate::ts::section::section_total_len(rest).unwrap();
            assert!(len <= MAX_EMM_SECTION);
            let p = open_emm2(&rest[..len], &ck).unwrap();
            assert_eq!(
                (usize::from(p.header.part), usize::from(p.header.parts)),
                (i, parts)
            );
            assert_eq!(p.group_key.as_ref(), Some(&gk));
            events.extend(p.entitlements.events);
            rest = &rest[len..];
        }
        assert!(rest.is_empty());
        assert_eq!(events, e.events);
        let mut out = vec![7];
        assert!(matches!(
            build_emm2(
                CardSerial(5),
                &ck,
                1,
                &ent(EVENTS_PER_PART * 16 + 1),
                None,
                &mut out
            ),
            Err(EmmBuildError::TooLarge { .. })
        ));
        assert_eq!(out, [7]);
    }

    #[test]
    fn every_change_and_truncation_is_refused() {
        let ck = Key128::from_bytes([0x33; 16]);
        let gk = Key128::from_bytes([0x66; 16]);
        let mut out = Vec::new();
        build_emm2(CardSerial(77), &ck, 3, &ent(2), Some(&gk), &mut out).unwrap();
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x40;
            assert!(open_emm2(&bad, &ck).is_err(), "byte {i}");
        }
        for n in 0..out.len() {
            assert!(open_emm2(&out[..n], &ck).is_err());
        }
        // a format-1 EMM is not read as format 2, nor the other way round
        let mut v1 = Vec::new();
        super::super::emm::build_emm(CardSerial(77), &ck, 3, &ent(0), [], &mut v1).unwrap();
        assert!(matches!(open_emm2(&v1, &ck), Err(Refusal::Malformed(_))));
        assert!(matches!(
            super::super::emm::open_emm(&out, &ck),
            Err(Refusal::Malformed(_))
        ));
    }
}
