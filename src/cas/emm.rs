//! The castmux unique EMM, format version 1 (docs/cas-formats.md, "EMM").
//!
//! One or more short private sections, table_id 0x82, each at most 1024 bytes, addressed
//! in clear to one card serial; the rest sealed with AES-128-GCM under the card's unique
//! key, with the clear part as associated data. A card's EMM carries its whole state:
//! entitlements, events, and the current and next service key of each package it may
//! watch. When that does not fit one section it is split into parts (same sequence,
//! part i of n); every part repeats the entitlement core and carries a share of the events
//! and keys.
//!
//! ```text
//! 0x82, 0x70|len_hi, len_lo
//! version=1 (1) | serial (8) | sequence (8) | part (1) | parts (1) | nonce (12)
//! GCM( access (8) | start (8) | finish (8) | pair (1) | flags (1, bit0 = enabled)
//!      | e (1) | e x { event id (4) | bit (1) | start (8) | end (8) }
//!      | k (1) | k x { bit (1) | version (4) | key (16) } )  + tag (16)
//! ```

use super::codec::{self, Reader, NONCE_LEN, TAG_LEN};
use super::refusal::Refusal;
use super::types::{
    AccessCriteria, CardSerial, Entitlements, EventGrant, Key128, PackageBit, ServiceKey,
};

/// table_id of a castmux unique EMM.
pub const EMM_TABLE_ID: u8 = 0x82;
/// The EMM format version this code writes and reads.
pub const EMM_FORMAT_VERSION: u8 = 1;
/// Largest EMM section (ETSI TR 101 290's usual private-section bound for CA messages).
pub const MAX_EMM_SECTION: usize = 1024;
/// Most parts one card's EMM may be split into.
pub const MAX_EMM_PARTS: usize = 64;

const CLEAR_LEN: usize = 1 + 8 + 8 + 1 + 1 + NONCE_LEN;
const CORE_LEN: usize = 8 + 8 + 8 + 1 + 1;
const EVENT_LEN: usize = 4 + 1 + 8 + 8;
const KEY_LEN: usize = 1 + 4 + 16;
/// Events plus keys one section holds (both items are 21 bytes).
const ITEMS_PER_PART: usize = (MAX_EMM_SECTION - 3 - CLEAR_LEN - CORE_LEN - 2 - TAG_LEN) / KEY_LEN;

/// Why no EMM was built. Nothing is appended to the output then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmmBuildError {
    /// More events and keys than [`MAX_EMM_PARTS`] sections hold.
    #[error("card {serial}: {events} events and {keys} keys do not fit {MAX_EMM_PARTS} EMM sections; remove ended events from the card")]
    TooLarge {
        /// The card.
        serial: CardSerial,
        /// Its events.
        events: usize,
        /// Its keys.
        keys: usize,
    },
    /// The OS random generator failed.
    #[error("OS random number generator failed: {0}")]
    Random(String),
}

/// Append the EMM section(s) of one card to `out`; returns how many sections.
///
/// `sequence` must grow with every change of what the card is sent (the card refuses an
/// older one and ignores a repeat of the last one).
pub fn build_emm<'k>(
    serial: CardSerial,
    card_key: &Key128,
    sequence: u64,
    ent: &Entitlements,
    keys: impl IntoIterator<Item = &'k ServiceKey>,
    out: &mut Vec<u8>,
) -> Result<usize, EmmBuildError> {
    let keys: Vec<&ServiceKey> = keys.into_iter().collect();
    let items = ent.events.len() + keys.len();
    let parts = items.div_ceil(ITEMS_PER_PART).max(1);
    if parts > MAX_EMM_PARTS {
        return Err(EmmBuildError::TooLarge {
            serial,
            events: ent.events.len(),
            keys: keys.len(),
        });
    }
    let start = out.len();
    let mut body = Vec::with_capacity(MAX_EMM_SECTION);
    for part in 0..parts {
        let lo = part * ITEMS_PER_PART;
        let hi = (lo + ITEMS_PER_PART).min(items);
        let events = ent
            .events
            .get(lo.min(ent.events.len())..hi.min(ent.events.len()));
        let ks = keys.get(lo.saturating_sub(ent.events.len())..hi.saturating_sub(ent.events.len()));
        let (events, ks) = (events.unwrap_or_default(), ks.unwrap_or_default());

        body.clear();
        body.extend_from_slice(&ent.access.0.to_be_bytes());
        body.extend_from_slice(&ent.start.to_be_bytes());
        body.extend_from_slice(&ent.finish.to_be_bytes());
        body.push(ent.pair);
        body.push(u8::from(ent.enabled));
        body.push(events.len() as u8);
        for e in events {
            body.extend_from_slice(&e.id.to_be_bytes());
            body.push(e.bit.get());
            body.extend_from_slice(&e.start.to_be_bytes());
            body.extend_from_slice(&e.end.to_be_bytes());
        }
        body.push(ks.len() as u8);
        for k in ks {
            body.push(k.bit.get());
            body.extend_from_slice(&k.version.to_be_bytes());
            body.extend_from_slice(k.key.as_bytes());
        }

        let mut nonce = [0u8; NONCE_LEN];
        if let Err(e) = codec::random_bytes(&mut nonce) {
            body.fill(0);
            out.truncate(start);
            return Err(EmmBuildError::Random(e.to_string()));
        }
        let section_start = out.len();
        let section_length = (CLEAR_LEN + body.len() + TAG_LEN) as u16;
        out.push(EMM_TABLE_ID);
        out.push(0x70 | (section_length >> 8) as u8);
        out.push(section_length as u8);
        out.push(EMM_FORMAT_VERSION);
        out.extend_from_slice(&serial.0.to_be_bytes());
        out.extend_from_slice(&sequence.to_be_bytes());
        out.push(part as u8);
        out.push(parts as u8);
        out.extend_from_slice(&nonce);
        let tag = codec::seal(
            card_key.as_bytes(),
            &nonce,
            &out[section_start..],
            &mut body,
        );
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        debug_assert!(out.len() - section_start <= MAX_EMM_SECTION);
    }
    body.fill(0);
    Ok(parts)
}

/// The clear header of an EMM section, checked for shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmmHeader {
    /// The card it is for.
    pub serial: CardSerial,
    /// Its sequence (grows with each change).
    pub sequence: u64,
    /// Which part, 0-based.
    pub part: u8,
    /// Of how many.
    pub parts: u8,
}

/// The opening every castmux EMM section shares, checked in this order: `table_id` (else
/// `wrong_table`), a section_length without section_syntax_indicator that matches the
/// bytes given (one section, at most [`MAX_EMM_SECTION`]), and the format `version` (else
/// `wrong_version`). The reader is left after the version byte.
pub(super) fn open_section<'a>(
    section: &'a [u8],
    table_id: u8,
    wrong_table: &'static str,
    version: u8,
    wrong_version: &'static str,
) -> Result<Reader<'a>, Refusal> {
    let mut r = Reader::new(section);
    if r.u8().ok_or(Refusal::Malformed("empty EMM"))? != table_id {
        return Err(Refusal::Malformed(wrong_table));
    }
    let len = r
        .u16()
        .ok_or(Refusal::Malformed("truncated section header"))?;
    if len & 0x8000 != 0 {
        return Err(Refusal::Malformed("section_syntax_indicator set in an EMM"));
    }
    if usize::from(len & 0x0FFF) != r.remaining() || section.len() > MAX_EMM_SECTION {
        return Err(Refusal::Malformed(
            "section_length does not match the EMM size",
        ));
    }
    if r.u8() != Some(version) {
        return Err(Refusal::Malformed(wrong_version));
    }
    Ok(r)
}

impl EmmHeader {
    /// Read the clear header of an EMM section (exactly one section).
    pub fn parse(section: &[u8]) -> Result<EmmHeader, Refusal> {
        let mut r = open_section(
            section,
            EMM_TABLE_ID,
            "table_id is not a castmux EMM's (0x82)",
            EMM_FORMAT_VERSION,
            "unknown EMM format version",
        )?;
        let short = Refusal::Malformed("truncated EMM header");
        let serial = CardSerial(r.u64().ok_or(short.clone())?);
        let sequence = r.u64().ok_or(short.clone())?;
        let part = r.u8().ok_or(short.clone())?;
        let parts = r.u8().ok_or(short)?;
        if parts == 0 || usize::from(parts) > MAX_EMM_PARTS || part >= parts {
            return Err(Refusal::Malformed("EMM part number out of range"));
        }
        if r.remaining() < NONCE_LEN + CORE_LEN + 2 + TAG_LEN {
            return Err(Refusal::Malformed("EMM too short for its content"));
        }
        Ok(EmmHeader {
            serial,
            sequence,
            part,
            parts,
        })
    }
}

/// One opened EMM section: the card's entitlement core, and this part's events and keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmmPart {
    /// The clear header.
    pub header: EmmHeader,
    /// Entitlements, with the events of this part only.
    pub entitlements: Entitlements,
    /// The service keys of this part.
    pub keys: Vec<ServiceKey>,
}

/// Verify and decrypt an EMM section with the card's key.
pub fn open_emm(section: &[u8], card_key: &Key128) -> Result<EmmPart, Refusal> {
    let header = EmmHeader::parse(section)?;
    let aad_len = 3 + CLEAR_LEN;
    let nonce: &[u8; NONCE_LEN] = section[aad_len - NONCE_LEN..aad_len]
        .try_into()
        .map_err(|_| Refusal::Malformed("truncated nonce"))?;
    let (body, tag) = section[aad_len..].split_at(section.len() - aad_len - TAG_LEN);
    let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| Refusal::BadMac)?;
    let mut buf = [0u8; MAX_EMM_SECTION];
    let buf = &mut buf[..body.len()];
    buf.copy_from_slice(body);
    if !codec::open(card_key.as_bytes(), nonce, &section[..aad_len], buf, tag) {
        buf.fill(0);
        return Err(Refusal::BadMac);
    }
    let part = parse_body(header, buf);
    buf.fill(0);
    part
}

fn parse_body(header: EmmHeader, body: &[u8]) -> Result<EmmPart, Refusal> {
    let bad = || Refusal::Malformed("EMM content does not match its length");
    let mut r = Reader::new(body);
    let access = AccessCriteria(r.u64().ok_or_else(bad)?);
    let start = r.i64().ok_or_else(bad)?;
    let finish = r.i64().ok_or_else(bad)?;
    let pair = r.u8().ok_or_else(bad)?;
    let flags = r.u8().ok_or_else(bad)?;
    let n_events = usize::from(r.u8().ok_or_else(bad)?);
    if n_events * EVENT_LEN > r.remaining() {
        return Err(bad());
    }
    let mut events = Vec::with_capacity(n_events);
    for _ in 0..n_events {
        let id = r.u32().ok_or_else(bad)?;
        let bit = bit(r.u8().ok_or_else(bad)?)?;
        let start = r.i64().ok_or_else(bad)?;
        let end = r.i64().ok_or_else(bad)?;
        events.push(EventGrant {
            id,
            bit,
            start,
            end,
        });
    }
    let n_keys = usize::from(r.u8().ok_or_else(bad)?);
    if n_keys * KEY_LEN != r.remaining() {
        return Err(bad());
    }
    let mut keys = Vec::with_capacity(n_keys);
    for _ in 0..n_keys {
        let bit = bit(r.u8().ok_or_else(bad)?)?;
        let version = r.u32().ok_or_else(bad)?;
        let key = Key128::from_bytes(r.array::<16>().ok_or_else(bad)?);
        keys.push(ServiceKey { bit, version, key });
    }
    Ok(EmmPart {
        header,
        entitlements: Entitlements {
            access,
            start,
            finish,
            pair,
            enabled: flags & 1 != 0,
            events,
        },
        keys,
    })
}

fn bit(b: u8) -> Result<PackageBit, Refusal> {
    PackageBit::new(u32::from(b)).map_err(|_| Refusal::Malformed("package bit above 63"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(events: usize) -> Entitlements {
        Entitlements {
            access: AccessCriteria(0b101),
            start: 100,
            finish: 200,
            pair: 1,
            enabled: true,
            events: (0..events as u32)
                .map(|i| EventGrant {
                    id: i,
                    bit: PackageBit::new(i % 64).unwrap(),
                    start: i64::from(i),
                    end: i64::from(i) + 10,
                })
                .collect(),
        }
    }

    fn keys(n: usize) -> Vec<ServiceKey> {
        (0..n)
            .map(|i| ServiceKey {
                bit: PackageBit::new((i / 2) as u32).unwrap(),
                version: i as u32,
                key: Key128::from_bytes([i as u8; 16]),
            })
            .collect()
    }

    #[test]
    fn round_trip_one_section() {
        let ck = Key128::from_bytes([0x11; 16]);
        let (e, k) = (ent(0), keys(4));
        let mut out = Vec::new();
        assert_eq!(
            build_emm(CardSerial(2100000001), &ck, 9, &e, &k, &mut out),
            Ok(1)
        );
        assert!(out.len() < 184, "one TS packet: {}", out.len());
        let p = open_emm(&out, &ck).unwrap();
        assert_eq!(
            p.header,
            EmmHeader {
                serial: CardSerial(2100000001),
                sequence: 9,
                part: 0,
                parts: 1
            }
        );
        assert_eq!((p.entitlements, p.keys), (e, k));
        assert_eq!(
            open_emm(&out, &Key128::from_bytes([0x12; 16])),
            Err(Refusal::BadMac)
        );
    }

    #[test]
    fn splits_into_parts_that_each_fit() {
        let ck = Key128::from_bytes([0x22; 16]);
        let (e, k) = (ent(30), keys(128));
        let mut out = Vec::new();
        let parts = build_emm(CardSerial(5), &ck, 1, &e, &k, &mut out).unwrap();
        assert!(parts > 1);
        let mut rest = &out[..];
        let (mut events, mut got_keys) = (Vec::new(), Vec::new());
        for i in 0..parts {
            let len = crate::ts::section::section_total_len(rest).unwrap();
            assert!(len <= MAX_EMM_SECTION);
            let p = open_emm(&rest[..len], &ck).unwrap();
            assert_eq!(
                (usize::from(p.header.part), usize::from(p.header.parts)),
                (i, parts)
            );
            events.extend(p.entitlements.events);
            got_keys.extend(p.keys);
            rest = &rest[len..];
        }
        assert!(rest.is_empty());
        assert_eq!((events, &got_keys), (e.events, &k));
        let mut out = vec![7];
        assert!(matches!(
            build_emm(CardSerial(5), &ck, 1, &ent(3000), &k, &mut out),
            Err(EmmBuildError::TooLarge { .. })
        ));
        assert_eq!(out, [7]);
    }

    #[test]
    fn every_change_and_truncation_is_refused() {
        let ck = Key128::from_bytes([0x33; 16]);
        let mut out = Vec::new();
        build_emm(CardSerial(77), &ck, 3, &ent(1), &keys(2), &mut out).unwrap();
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x40;
            assert!(open_emm(&bad, &ck).is_err(), "byte {i}");
        }
        for n in 0..out.len() {
            assert!(open_emm(&out[..n], &ck).is_err());
        }
    }
}
