//! The castmux group EMM, format version 1 (docs/cas-formats.md, "Group EMM"): the
//! service keys (current and next) of a group's packages, once for the 256 cards of a
//! group (an Irdeto/Conax-style shared address) instead of once in every card's EMM.
//!
//! Sealed with AES-128-GCM under the group key ([`super::types::derive_group_key`]),
//! which a card learns from its unique EMM of format 2 ([`super::emm2`]). The head-end
//! puts in it only the packages some live card of the group watches; a card applies only
//! the keys of packages it is entitled to (its access criteria and events), and none when
//! it is disabled.
//!
//! ```text
//! 0x84, 0x70|len_hi, len_lo
//! version=1 (1) | CA_system_ID (2) | group (8) | sequence (8) | part (1) | parts (1)
//! | nonce (12)
//! GCM( k (1) | k x { bit (1) | version (4) | key (16) } )  + tag (16)
//! ```

use super::codec::{self, Reader, NONCE_LEN, TAG_LEN};
use super::emm::{open_section, MAX_EMM_SECTION};
use super::refusal::Refusal;
use super::types::{GroupId, Key128, PackageBit, ServiceKey};

/// table_id of a castmux group EMM.
pub const GROUP_EMM_TABLE_ID: u8 = 0x84;
/// The group EMM format version this code writes and reads.
pub const GROUP_EMM_FORMAT_VERSION: u8 = 1;
/// Most parts one group EMM may be split into (64 packages, current and next: 3 parts).
pub const MAX_GROUP_EMM_PARTS: usize = 8;

const HEADER_LEN: usize = 3 + 1 + 2 + 8 + 8 + 1 + 1 + NONCE_LEN;
const KEY_LEN: usize = 1 + 4 + 16;
/// Keys one section holds.
const KEYS_PER_PART: usize = (MAX_EMM_SECTION - HEADER_LEN - 1 - TAG_LEN) / KEY_LEN;

/// Why no group EMM was built. Nothing is appended to the output then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupEmmBuildError {
    /// More keys than [`MAX_GROUP_EMM_PARTS`] sections hold.
    #[error("group {group}: {keys} keys do not fit {MAX_GROUP_EMM_PARTS} group EMM sections")]
    TooLarge {
        /// The group.
        group: GroupId,
        /// Its keys.
        keys: usize,
    },
    /// The OS random generator failed.
    #[error("OS random number generator failed: {0}")]
    Random(String),
}

/// Append the group EMM section(s) of `group` to `out`; returns how many sections.
///
/// `sequence` must grow with every change of the keys sent to the group.
pub fn build_group_emm<'k>(
    ca_system_id: u16,
    group: GroupId,
    group_key: &Key128,
    sequence: u64,
    keys: impl IntoIterator<Item = &'k ServiceKey>,
    out: &mut Vec<u8>,
) -> Result<usize, GroupEmmBuildError> {
    let keys: Vec<&ServiceKey> = keys.into_iter().collect();
    let parts = keys.len().div_ceil(KEYS_PER_PART).max(1);
    if parts > MAX_GROUP_EMM_PARTS {
        return Err(GroupEmmBuildError::TooLarge {
            group,
            keys: keys.len(),
        });
    }
    let start = out.len();
    let mut body = [0u8; MAX_EMM_SECTION];
    for part in 0..parts {
        let ks = &keys
            [(part * KEYS_PER_PART).min(keys.len())..((part + 1) * KEYS_PER_PART).min(keys.len())];
        let mut len = 0;
        body[len] = ks.len() as u8;
        len += 1;
        for k in ks {
            body[len] = k.bit.get();
            body[len + 1..len + 5].copy_from_slice(&k.version.to_be_bytes());
            body[len + 5..len + KEY_LEN].copy_from_slice(k.key.as_bytes());
            len += KEY_LEN;
        }
        let mut nonce = [0u8; NONCE_LEN];
        if let Err(e) = codec::random_bytes(&mut nonce) {
            body.fill(0);
            out.truncate(start);
            return Err(GroupEmmBuildError::Random(e.to_string()));
        }
        let section_start = out.len();
        let section_length = (HEADER_LEN - 3 + len + TAG_LEN) as u16;
        out.push(GROUP_EMM_TABLE_ID);
        out.push(0x70 | (section_length >> 8) as u8);
        out.push(section_length as u8);
        out.push(GROUP_EMM_FORMAT_VERSION);
        out.extend_from_slice(&ca_system_id.to_be_bytes());
        out.extend_from_slice(&group.0.to_be_bytes());
        out.extend_from_slice(&sequence.to_be_bytes());
        out.push(part as u8);
        out.push(parts as u8);
        out.extend_from_slice(&nonce);
        let tag = codec::seal(
            group_key.as_bytes(),
            &nonce,
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

/// The clear header of a group EMM section, checked for shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupEmmHeader {
    /// CA_system_ID of the operator.
    pub ca_system_id: u16,
    /// The group it is for.
    pub group: GroupId,
    /// Its sequence (grows with each change of the group's keys).
    pub sequence: u64,
    /// Which part, 0-based.
    pub part: u8,
    /// Of how many.
    pub parts: u8,
}

impl GroupEmmHeader {
    /// Read the clear header of a group EMM section (exactly one section).
    pub fn parse(section: &[u8]) -> Result<GroupEmmHeader, Refusal> {
        let mut r = open_section(
            section,
            GROUP_EMM_TABLE_ID,
            "table_id is not a castmux group EMM's (0x84)",
            GROUP_EMM_FORMAT_VERSION,
            "unknown group EMM format version",
        )?;
        let short = Refusal::Malformed("truncated group EMM header");
        let ca_system_id = r.u16().ok_or(short.clone())?;
        let group = GroupId(r.u64().ok_or(short.clone())?);
        let sequence = r.u64().ok_or(short.clone())?;
        let part = r.u8().ok_or(short.clone())?;
        let parts = r.u8().ok_or(short)?;
        if parts == 0 || usize::from(parts) > MAX_GROUP_EMM_PARTS || part >= parts {
            return Err(Refusal::Malformed("group EMM part number out of range"));
        }
        if r.remaining() < NONCE_LEN + 1 + TAG_LEN {
            return Err(Refusal::Malformed("group EMM too short for its content"));
        }
        Ok(GroupEmmHeader {
            ca_system_id,
            group,
            sequence,
            part,
            parts,
        })
    }
}

/// One opened group EMM section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEmmPart {
    /// The clear header.
    pub header: GroupEmmHeader,
    /// The service keys of this part.
    pub keys: Vec<ServiceKey>,
}

/// Verify and decrypt a group EMM section with the group key.
pub fn open_group_emm(section: &[u8], group_key: &Key128) -> Result<GroupEmmPart, Refusal> {
    let header = GroupEmmHeader::parse(section)?;
    let nonce: &[u8; NONCE_LEN] = section[HEADER_LEN - NONCE_LEN..HEADER_LEN]
        .try_into()
        .map_err(|_| Refusal::Malformed("truncated nonce"))?;
    let (body, tag) = section[HEADER_LEN..].split_at(section.len() - HEADER_LEN - TAG_LEN);
    let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| Refusal::BadMac)?;
    let mut buf = [0u8; MAX_EMM_SECTION];
    let buf = &mut buf[..body.len()];
    buf.copy_from_slice(body);
    if !codec::open(
        group_key.as_bytes(),
        nonce,
        &section[..HEADER_LEN],
        buf,
        tag,
    ) {
        buf.fill(0);
        return Err(Refusal::BadMac);
    }
    let keys = parse_keys(buf);
    buf.fill(0);
    Ok(GroupEmmPart {
        header,
        keys: keys?,
    })
}

fn parse_keys(body: &[u8]) -> Result<Vec<ServiceKey>, Refusal> {
    let bad = || Refusal::Malformed("group EMM content does not match its length");
    let mut r = Reader::new(body);
    let n = usize::from(r.u8().ok_or_else(bad)?);
    if n * KEY_LEN != r.remaining() {
        return Err(bad());
    }
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        let bit = PackageBit::new(u32::from(r.u8().ok_or_else(bad)?))
            .map_err(|_| Refusal::Malformed("package bit above 63"))?;
        let version = r.u32().ok_or_else(bad)?;
        let key = Key128::from_bytes(r.array::<16>().ok_or_else(bad)?);
        keys.push(ServiceKey { bit, version, key });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<ServiceKey> {
        (0..n)
            .map(|i| ServiceKey {
                bit: PackageBit::new((i / 2 % 64) as u32).unwrap(),
                version: i as u32,
                key: Key128::from_bytes([i as u8; 16]),
            })
            .collect()
    }

    #[test]
    fn round_trip_four_packages_in_two_packets() {
        let gk = Key128::from_bytes([0x11; 16]);
        let k = keys(8);
        let mut out = Vec::new();
        let g = GroupId(8203125);
        assert_eq!(build_group_emm(0x4AE1, g, &gk, 9, &k, &mut out), Ok(1));
        assert_eq!(out.len(), HEADER_LEN + 1 + 8 * KEY_LEN + TAG_LEN);
        let p = open_group_emm(&out, &gk).unwrap();
        assert_eq!(
            p.header,
            GroupEmmHeader {
                ca_system_id: 0x4AE1,
                group: g,
                sequence: 9,
                part: 0,
                parts: 1
            }
        );
        assert_eq!(p.keys, k);
        assert_eq!(
            open_group_emm(&out, &Key128::from_bytes([0x12; 16])),
            Err(Refusal::BadMac)
        );
    }

    #[test]
    fn every_package_current_and_next_splits_into_parts() {
        let gk = Key128::from_bytes([0x22; 16]);
        let k = keys(128);
        let mut out = Vec::new();
        let parts = build_group_emm(1, GroupId(3), &gk, 1, &k, &mut out).unwrap();
        assert_eq!(parts, 3);
        let mut rest = &out[..];
        let mut got = Vec::new();
        for i in 0..parts {
            let len = crate::ts::section::section_total_len(rest).unwrap();
            assert!(len <= MAX_EMM_SECTION);
            let p = open_group_emm(&rest[..len], &gk).unwrap();
            assert_eq!(
                (usize::from(p.header.part), usize::from(p.header.parts)),
                (i, parts)
            );
            got.extend(p.keys);
            rest = &rest[len..];
        }
        assert_eq!(got, k);
        let mut out = vec![7];
        assert!(matches!(
            build_group_emm(
                1,
                GroupId(3),
                &gk,
                1,
                &keys(KEYS_PER_PART * 8 + 1),
                &mut out
            ),
            Err(GroupEmmBuildError::TooLarge { .. })
        ));
        assert_eq!(out, [7]);
    }

    #[test]
    fn every_change_and_truncation_is_refused() {
        let gk = Key128::from_bytes([0x33; 16]);
        let mut out = Vec::new();
        build_group_emm(7, GroupId(77), &gk, 3, &keys(3), &mut out).unwrap();
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x40;
            assert!(open_group_emm(&bad, &gk).is_err(), "byte {i}");
        }
        for n in 0..out.len() {
            assert!(open_group_emm(&out[..n], &gk).is_err());
        }
    }
}
