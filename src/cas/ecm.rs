//! The castmux ECM, format version 1 (docs/cas-formats.md, "ECM").
//!
//! One short private section, table_id 0x80 (even crypto period) or 0x81 (odd). A fresh
//! random content key seals the period number, a timestamp and the even/odd CW pair with
//! AES-128-GCM; the content key is wrapped once under the current service key of every
//! package of the access criteria, so a card holding any one of them opens it. Everything
//! in clear (section header, CA_system_ID, access criteria, wraps, nonce) is the GCM's
//! associated data: a changed byte anywhere fails the tag.
//!
//! ```text
//! table_id 0x80|0x81, 0x70|len_hi, len_lo
//! version=1 (1) | CA_system_ID (2) | access_criteria (8) | n (1)
//! n x { package bit (1) | key version (4) | wrapped content key (16) }   ascending bits
//! nonce (12)
//! GCM( period (8) | timestamp (8) | cw_len (1) | even CW | odd CW )  + tag (16)
//! ```
//! With 4 packages and 16-byte CWs that is 176 bytes: one TS packet.

use std::fmt;

use csa::Parity;

use super::codec::{self, Reader, NONCE_LEN, TAG_LEN};
use super::keyring::ServiceKeyRing;
use super::refusal::Refusal;
use super::types::{AccessCriteria, Key128, PackageBit};
use crate::scramble::Cw;
use crate::ts::psi::{TABLE_ID_ECM_EVEN, TABLE_ID_ECM_ODD};
use crate::ts::section::MAX_PRIVATE_SECTION;

/// The ECM format version this code writes and reads.
pub const ECM_FORMAT_VERSION: u8 = 1;

/// Bytes of one key wrap: bit, version, wrapped key.
const WRAP_LEN: usize = 1 + 4 + 16;
/// Clear bytes after the section header and before the wraps.
const FIXED_HEAD: usize = 1 + 2 + 8 + 1;

/// Size of the ECM section for `packages` packages and `cw_len`-byte CWs.
pub const fn ecm_section_len(packages: usize, cw_len: usize) -> usize {
    3 + FIXED_HEAD + packages * WRAP_LEN + NONCE_LEN + 17 + 2 * cw_len + TAG_LEN
}

/// What an ECM is built from.
pub struct EcmParams<'a> {
    /// CA_system_ID of the operator.
    pub ca_system_id: u16,
    /// The channel's packages (at least one).
    pub access: AccessCriteria,
    /// Crypto period number; its parity picks the table_id (even: 0x80).
    pub period: u64,
    /// When the ECM was made, Unix seconds (cards check entitlement dates against it).
    pub timestamp: i64,
    /// The even CW (8 bytes CSA2, 16 bytes AES modes).
    pub even: &'a [u8],
    /// The odd CW, same length as `even`.
    pub odd: &'a [u8],
}

impl fmt::Debug for EcmParams<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcmParams")
            .field("ca_system_id", &self.ca_system_id)
            .field("access", &self.access)
            .field("period", &self.period)
            .field("timestamp", &self.timestamp)
            .field("cw_len", &self.even.len())
            .finish_non_exhaustive()
    }
}

/// Why no ECM was built. Nothing is appended to the output then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EcmBuildError {
    /// The access criteria name no package.
    #[error(
        "the channel's access criteria name no package; give it --packages or --access-criteria"
    )]
    NoPackages,
    /// A package of the access criteria has no service key: no card could open the wrap.
    #[error("package bit {0} has no service key; create the package's keys (castmux keys rotate) before scrambling with it")]
    NoServiceKey(u8),
    /// CWs of another length than 8 or 16 bytes, or of two lengths.
    #[error("CW lengths {even} and {odd}: both CWs must be 8 (csa2) or 16 (aes modes) bytes")]
    BadCwLength {
        /// Length of the even CW.
        even: usize,
        /// Length of the odd CW.
        odd: usize,
    },
    /// The OS random generator failed.
    #[error("OS random number generator failed: {0}")]
    Random(String),
}

/// The table_id of period `period`.
pub fn ecm_table_id(period: u64) -> u8 {
    if period.is_multiple_of(2) {
        TABLE_ID_ECM_EVEN
    } else {
        TABLE_ID_ECM_ODD
    }
}

/// Append the ECM section of `params` to `out`, sealed under the current keys of `keys`.
/// Fails closed: if any package of the access criteria has no key, nothing is built.
pub fn build_ecm(
    keys: &ServiceKeyRing,
    params: &EcmParams<'_>,
    out: &mut Vec<u8>,
) -> Result<(), EcmBuildError> {
    let cw_len = params.even.len();
    if (cw_len != 8 && cw_len != 16) || params.odd.len() != cw_len {
        return Err(EcmBuildError::BadCwLength {
            even: cw_len,
            odd: params.odd.len(),
        });
    }
    if params.access.is_empty() {
        return Err(EcmBuildError::NoPackages);
    }
    if let Some(bit) = keys.missing(params.access) {
        return Err(EcmBuildError::NoServiceKey(bit.get()));
    }
    let packages = params.access.0.count_ones() as usize;
    let total = ecm_section_len(packages, cw_len);
    // 64 packages make 1436 bytes, far below the private-section limit
    debug_assert!(total <= MAX_PRIVATE_SECTION);

    let mut content_key = [0u8; 16];
    let mut nonce = [0u8; NONCE_LEN];
    codec::random_bytes(&mut content_key)
        .and_then(|()| codec::random_bytes(&mut nonce))
        .map_err(|e| EcmBuildError::Random(e.to_string()))?;

    let start = out.len();
    out.reserve(total);
    let section_length = (total - 3) as u16;
    out.push(ecm_table_id(params.period));
    out.push(0x70 | (section_length >> 8) as u8);
    out.push(section_length as u8);
    out.push(ECM_FORMAT_VERSION);
    out.extend_from_slice(&params.ca_system_id.to_be_bytes());
    out.extend_from_slice(&params.access.0.to_be_bytes());
    out.push(packages as u8);
    for bit in params.access.bits() {
        // checked by `missing` above
        let Some(sk) = keys.current(bit) else {
            out.truncate(start);
            return Err(EcmBuildError::NoServiceKey(bit.get()));
        };
        out.push(bit.get());
        out.extend_from_slice(&sk.version.to_be_bytes());
        out.extend_from_slice(&codec::wrap_key(&sk.key, &content_key));
    }
    out.extend_from_slice(&nonce);
    let aad_end = out.len();
    out.extend_from_slice(&params.period.to_be_bytes());
    out.extend_from_slice(&params.timestamp.to_be_bytes());
    out.push(cw_len as u8);
    out.extend_from_slice(params.even);
    out.extend_from_slice(params.odd);
    let (aad, body) = out[start..].split_at_mut(aad_end - start);
    let tag = codec::seal(&content_key, &nonce, aad, body);
    out.extend_from_slice(&tag);
    content_key.fill(0);
    debug_assert_eq!(out.len() - start, total);
    Ok(())
}

/// One key wrap of an ECM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyWrap<'a> {
    /// The package whose service key wraps the content key.
    pub bit: PackageBit,
    /// That key's version.
    pub version: u32,
    wrapped: &'a [u8; 16],
}

/// An ECM section checked for shape (not yet for authenticity): its clear fields.
#[derive(Debug, Clone, Copy)]
pub struct EcmRef<'a> {
    section: &'a [u8],
    ca_system_id: u16,
    access: AccessCriteria,
    wraps: &'a [u8],
    nonce: &'a [u8; NONCE_LEN],
    aad_len: usize,
}

/// The opened content of an ECM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcmContent {
    /// CA_system_ID.
    pub ca_system_id: u16,
    /// The channel's packages.
    pub access: AccessCriteria,
    /// Crypto period number.
    pub period: u64,
    /// Parity of the period (from the table_id, which the tag covers).
    pub parity: Parity,
    /// When the ECM was made, Unix seconds.
    pub timestamp: i64,
    /// The even CW.
    pub even: Cw,
    /// The odd CW.
    pub odd: Cw,
}

impl<'a> EcmRef<'a> {
    /// Check the shape of an ECM section (exactly one section; trailing bytes are refused).
    pub fn parse(section: &'a [u8]) -> Result<Self, Refusal> {
        let mut r = Reader::new(section);
        let table_id = r.u8().ok_or(Refusal::Malformed("empty ECM"))?;
        if table_id != TABLE_ID_ECM_EVEN && table_id != TABLE_ID_ECM_ODD {
            return Err(Refusal::Malformed("table_id is not an ECM's (0x80/0x81)"));
        }
        let len = r
            .u16()
            .ok_or(Refusal::Malformed("truncated section header"))?;
        if len & 0x8000 != 0 {
            return Err(Refusal::Malformed("section_syntax_indicator set in an ECM"));
        }
        if usize::from(len & 0x0FFF) != r.remaining() {
            return Err(Refusal::Malformed(
                "section_length does not match the ECM size",
            ));
        }
        if r.u8() != Some(ECM_FORMAT_VERSION) {
            return Err(Refusal::Malformed("unknown ECM format version"));
        }
        let ca_system_id = r.u16().ok_or(Refusal::Malformed("truncated ECM header"))?;
        let access = AccessCriteria(r.u64().ok_or(Refusal::Malformed("truncated ECM header"))?);
        let n = usize::from(r.u8().ok_or(Refusal::Malformed("truncated ECM header"))?);
        if n == 0 || n != access.0.count_ones() as usize {
            return Err(Refusal::Malformed(
                "key wrap count does not match the access criteria",
            ));
        }
        let wraps = r
            .take(n * WRAP_LEN)
            .ok_or(Refusal::Malformed("truncated key wraps"))?;
        for (w, bit) in wraps.chunks_exact(WRAP_LEN).zip(access.bits()) {
            if w[0] != bit.get() {
                return Err(Refusal::Malformed(
                    "key wraps do not follow the access criteria",
                ));
            }
        }
        let nonce: &[u8; NONCE_LEN] = r
            .take(NONCE_LEN)
            .and_then(|n| n.try_into().ok())
            .ok_or(Refusal::Malformed("truncated nonce"))?;
        let aad_len = section.len() - r.remaining();
        let body = r.remaining();
        if body != 17 + 16 + TAG_LEN && body != 17 + 32 + TAG_LEN {
            return Err(Refusal::Malformed(
                "ECM body is not one CW pair of 8 or 16 bytes",
            ));
        }
        Ok(EcmRef {
            section,
            ca_system_id,
            access,
            wraps,
            nonce,
            aad_len,
        })
    }

    /// CA_system_ID (not yet authenticated).
    pub fn ca_system_id(&self) -> u16 {
        self.ca_system_id
    }

    /// The channel's packages (not yet authenticated).
    pub fn access(&self) -> AccessCriteria {
        self.access
    }

    /// The key wraps, lowest bit first.
    pub fn wraps(&self) -> impl Iterator<Item = KeyWrap<'a>> + 'a {
        self.wraps.chunks_exact(WRAP_LEN).filter_map(|w| {
            Some(KeyWrap {
                bit: PackageBit::new(u32::from(w[0])).ok()?,
                version: u32::from_be_bytes(w[1..5].try_into().ok()?),
                wrapped: w[5..].try_into().ok()?,
            })
        })
    }

    /// Open the ECM with the service key of `wrap`. [`Refusal::BadMac`] if anything was
    /// changed or `key` is not the key the wrap names.
    pub fn open(&self, wrap: &KeyWrap<'_>, key: &Key128) -> Result<EcmContent, Refusal> {
        let mut content_key = codec::unwrap_key(key, wrap.wrapped);
        let (aad, rest) = self.section.split_at(self.aad_len);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| Refusal::BadMac)?;
        let mut buf = [0u8; 17 + 32];
        let buf = &mut buf[..body.len()];
        buf.copy_from_slice(body);
        let ok = codec::open(&content_key, self.nonce, aad, buf, tag);
        content_key.fill(0);
        if !ok {
            buf.fill(0);
            return Err(Refusal::BadMac);
        }
        let content = self.content(buf);
        buf.fill(0);
        content
    }

    fn content(&self, plain: &[u8]) -> Result<EcmContent, Refusal> {
        let mut r = Reader::new(plain);
        let bad = Refusal::Malformed("ECM content does not match its length");
        let period = r.u64().ok_or(bad.clone())?;
        let timestamp = r.i64().ok_or(bad.clone())?;
        let cw_len = usize::from(r.u8().ok_or(bad.clone())?);
        if cw_len * 2 != r.remaining() {
            return Err(bad);
        }
        let cw = |b: &[u8]| Cw::from_slice(b).map_err(|_| Refusal::Malformed("CW length"));
        let even = cw(r.take(cw_len).unwrap_or_default())?;
        let odd = cw(r.take(cw_len).unwrap_or_default())?;
        let parity = if self.section[0] == TABLE_ID_ECM_EVEN {
            Parity::Even
        } else {
            Parity::Odd
        };
        if period.is_multiple_of(2) != (parity == Parity::Even) {
            return Err(Refusal::Malformed("period number and table_id disagree"));
        }
        Ok(EcmContent {
            ca_system_id: self.ca_system_id,
            access: self.access,
            period,
            parity,
            timestamp,
            even,
            odd,
        })
    }
}

/// Open an ECM with whichever wrap `key_for(bit, version)` has a key for (the first one).
/// A card with entitlement rules uses [`EcmRef`] directly; this is the plain key check.
pub fn open_ecm<'k>(
    section: &[u8],
    mut key_for: impl FnMut(PackageBit, u32) -> Option<&'k Key128>,
) -> Result<EcmContent, Refusal> {
    let ecm = EcmRef::parse(section)?;
    let mut first_missing = None;
    for w in ecm.wraps() {
        match key_for(w.bit, w.version) {
            Some(k) => return ecm.open(&w, k),
            None => {
                first_missing.get_or_insert(Refusal::UnknownKeyVersion {
                    bit: w.bit.get(),
                    version: w.version,
                });
            }
        }
    }
    Err(first_missing.unwrap_or(Refusal::NotEntitled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::types::ServiceKey;

    fn ring(bits: &[u32]) -> ServiceKeyRing {
        ServiceKeyRing::from_keys(bits.iter().map(|&b| ServiceKey {
            bit: PackageBit::new(b).unwrap(),
            version: 1,
            key: Key128::from_bytes([b as u8 + 1; 16]),
        }))
    }

    fn params(access: u64, cw: usize) -> EcmParams<'static> {
        static EVEN: [u8; 16] = [0xE0; 16];
        static ODD: [u8; 16] = [0x0D; 16];
        EcmParams {
            ca_system_id: 0x4AE1,
            access: AccessCriteria(access),
            period: 7,
            timestamp: 1_700_000_000,
            even: &EVEN[..cw],
            odd: &ODD[..cw],
        }
    }

    #[test]
    fn four_packages_fit_one_ts_packet() {
        let keys = ring(&[0, 3, 17, 63]);
        let mut out = Vec::new();
        build_ecm(&keys, &params(1 | 1 << 3 | 1 << 17 | 1 << 63, 16), &mut out).unwrap();
        assert_eq!(out.len(), ecm_section_len(4, 16));
        assert!(out.len() <= 180, "{} bytes", out.len());
        assert_eq!(out[0], 0x81);
        let c = open_ecm(&out, |b, v| {
            (b.get() == 17 && v == 1).then(|| &keys.current(b).unwrap().key)
        })
        .unwrap();
        assert_eq!(
            (c.period, c.parity, c.timestamp),
            (7, Parity::Odd, 1_700_000_000)
        );
        assert_eq!(c.even.as_bytes(), &[0xE0; 16]);
        assert_eq!(c.odd.as_bytes(), &[0x0D; 16]);
    }

    #[test]
    fn fails_closed_without_a_key() {
        let keys = ring(&[0]);
        let mut out = vec![1, 2];
        assert_eq!(
            build_ecm(&keys, &params(0b11, 8), &mut out),
            Err(EcmBuildError::NoServiceKey(1))
        );
        assert_eq!(
            build_ecm(&keys, &params(0, 8), &mut out),
            Err(EcmBuildError::NoPackages)
        );
        let mut p = params(1, 8);
        p.odd = &[1; 16];
        assert!(matches!(
            build_ecm(&keys, &p, &mut out),
            Err(EcmBuildError::BadCwLength { .. })
        ));
        assert_eq!(out, [1, 2]);
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let keys = ring(&[2, 5]);
        let mut out = Vec::new();
        build_ecm(&keys, &params(0b100100, 8), &mut out).unwrap();
        let key_for = |b: PackageBit, _v: u32| keys.current(b).map(|k| &k.key);
        for i in 0..out.len() {
            for bit in 0..8 {
                let mut bad = out.clone();
                bad[i] ^= 1 << bit;
                assert!(open_ecm(&bad, key_for).is_err(), "byte {i} bit {bit}");
            }
        }
        for n in 0..out.len() {
            assert!(open_ecm(&out[..n], key_for).is_err());
        }
        assert!(open_ecm(&out, key_for).is_ok());
    }
}
