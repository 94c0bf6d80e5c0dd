//! How castmux reads the access_criteria bytes an SCS sends in CW_provision.
//!
//! The parameter is opaque in TS 103 197; each CAS gives it a meaning. castmux accepts:
//! - exactly 8 bytes: a big-endian 64-bit package mask (bit 0 = package 1) — what castmux's
//!   own SCS sends for `--access-criteria 0x...` with 16 hex digits;
//! - any other length up to 32 bytes where every nibble is 0 or 1: the TVCAS/Astra form.
//!   Astra sends the hex digits typed in "ACCESS CRITERIA (HEX)" as bytes, so `00000001` is
//!   4 bytes `00 00 00 01`; each nibble is one package, the rightmost nibble package 1
//!   (bit 0); `01010101` = packages 1, 3, 5, 7;
//! - otherwise up to 8 bytes: a big-endian mask, shorter than 8 bytes;
//! - empty: no package (the ECM is then for no subscriber; the stream's previous access
//!   criteria are kept when a CW_provision carries none).

use crate::cas::AccessCriteria;

/// The longest access_criteria accepted (64 packages in nibble form).
pub const MAX_ACCESS_CRITERIA: usize = 32;

/// Read access_criteria bytes; `None` when they fit no form above.
pub fn access_criteria_from_bytes(b: &[u8]) -> Option<AccessCriteria> {
    if b.len() > MAX_ACCESS_CRITERIA {
        return None;
    }
    let nibble_form = b.iter().all(|x| x >> 4 <= 1 && x & 0x0F <= 1);
    if b.len() != 8 && nibble_form {
        let mut mask = 0u64;
        for x in b {
            mask = mask << 2 | u64::from(x >> 4) << 1 | u64::from(x & 1);
        }
        return Some(AccessCriteria(mask));
    }
    if b.len() <= 8 {
        return Some(AccessCriteria(
            b.iter().fold(0u64, |m, &x| m << 8 | u64::from(x)),
        ));
    }
    None
}

/// The bytes castmux's SCS sends for `ac`: 8 bytes, big-endian mask.
pub fn access_criteria_to_bytes(ac: AccessCriteria) -> [u8; 8] {
    ac.0.to_be_bytes()
}

/// Parse the hex digits of an `--access-criteria` option into the bytes sent as they are
/// (like Astra's "ACCESS CRITERIA (HEX)"); an odd count gets a leading 0.
pub fn parse_access_criteria_hex(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if t.is_empty() || t.len() > 2 * MAX_ACCESS_CRITERIA {
        return None;
    }
    let padded = if t.len() % 2 == 1 {
        format!("0{t}")
    } else {
        t.to_owned()
    };
    padded
        .as_bytes()
        .chunks_exact(2)
        .map(|p| {
            let s = std::str::from_utf8(p).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tvcas_form_and_mask_form() {
        // Astra "00000001": package 1
        let b = parse_access_criteria_hex("00000001").unwrap();
        assert_eq!(b, [0, 0, 0, 1]);
        assert_eq!(access_criteria_from_bytes(&b), Some(AccessCriteria(1)));
        // "01010101": packages 1, 3, 5, 7
        let b = parse_access_criteria_hex("01010101").unwrap();
        assert_eq!(
            access_criteria_from_bytes(&b),
            Some(AccessCriteria(0b0101_0101))
        );
        // "10000000": package 8
        let b = parse_access_criteria_hex("10000000").unwrap();
        assert_eq!(access_criteria_from_bytes(&b), Some(AccessCriteria(0x80)));
        // 8 bytes: a mask
        let m = access_criteria_to_bytes(AccessCriteria(0x8000_0000_0000_0011));
        assert_eq!(
            access_criteria_from_bytes(&m),
            Some(AccessCriteria(0x8000_0000_0000_0011))
        );
        // short mask with other nibbles
        assert_eq!(
            access_criteria_from_bytes(&[0x00, 0xFF]),
            Some(AccessCriteria(0xFF))
        );
        assert_eq!(access_criteria_from_bytes(&[]), Some(AccessCriteria(0)));
        assert_eq!(access_criteria_from_bytes(&[0x22; 9]), None);
        assert!(parse_access_criteria_hex("zz").is_none());
        assert_eq!(parse_access_criteria_hex("0x1").unwrap(), [1]);
    }
}
