//! Bounded byte reading and the AES primitives the ECM and EMM formats share
//! (docs/cas-formats.md): AES-128-GCM with detached 16-byte tags, and the single-block
//! AES-128 wrap of a fresh content key.

use aes::cipher::{BlockDecrypt, BlockEncrypt};
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, AesGcm, KeyInit, Nonce, Tag};

use super::types::Key128;

/// AES-GCM nonce length.
pub(crate) const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub(crate) const TAG_LEN: usize = 16;

/// AES-GCM short tag length (96 bits), for the unique EMM of format 2.
pub(crate) const SHORT_TAG_LEN: usize = 12;

/// AES-128-GCM with a 96-bit nonce and a 96-bit tag (NIST SP 800-38D §5.2.1.2 allows
/// 96..=128-bit tags with no further limits on use).
type Aes128Gcm96 = AesGcm<aes::Aes128, U12, U12>;

/// A cursor that never reads past its slice: every read returns `None` instead.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.array()?))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }
}

/// Fill `buf` from the OS CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::getrandom(buf)
}

/// Encrypt `buf` in place under `key`; returns the tag. `aad` is authenticated, not encrypted.
pub(crate) fn seal(
    key: &[u8; 16],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> [u8; TAG_LEN] {
    let cipher = Aes128Gcm::new(key.into());
    // encryption fails only for inputs beyond GCM's 64 GiB limit; sections are < 4 KiB
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
        .expect("AES-GCM input within limits");
    tag.into()
}

/// Check the tag and decrypt `buf` in place; false (and `buf` unspecified) on a bad tag.
pub(crate) fn open(
    key: &[u8; 16],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> bool {
    let cipher = Aes128Gcm::new(key.into());
    cipher
        .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf, Tag::from_slice(tag))
        .is_ok()
}

/// [`seal`] with a 96-bit tag.
pub(crate) fn seal_short(
    key: &[u8; 16],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> [u8; SHORT_TAG_LEN] {
    let cipher = Aes128Gcm96::new(key.into());
    // encryption fails only for inputs beyond GCM's 64 GiB limit; sections are < 4 KiB
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
        .expect("AES-GCM input within limits");
    tag.into()
}

/// [`open`] with a 96-bit tag.
pub(crate) fn open_short(
    key: &[u8; 16],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; SHORT_TAG_LEN],
) -> bool {
    let cipher = Aes128Gcm96::new(key.into());
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            aad,
            buf,
            aes_gcm::aead::generic_array::GenericArray::from_slice(tag),
        )
        .is_ok()
}

/// Wrap a 16-byte content key under a service key: one AES-128 block encryption. The
/// content key is fresh and uniformly random, and the wrapped bytes are covered by the
/// ECM's GCM tag, so a single block is enough (docs/cas-formats.md, "Key wrap").
pub(crate) fn wrap_key(service_key: &Key128, content_key: &[u8; 16]) -> [u8; 16] {
    let cipher = aes::Aes128::new(service_key.as_bytes().into());
    let mut block = aes::Block::clone_from_slice(content_key);
    cipher.encrypt_block(&mut block);
    block.into()
}

/// The inverse of [`wrap_key`].
pub(crate) fn unwrap_key(service_key: &Key128, wrapped: &[u8; 16]) -> [u8; 16] {
    let cipher = aes::Aes128::new(service_key.as_bytes().into());
    let mut block = aes::Block::clone_from_slice(wrapped);
    cipher.decrypt_block(&mut block);
    block.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_stops_at_the_end() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u16(), None);
        assert_eq!(r.u8(), Some(3));
        assert_eq!(r.u8(), None);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn gcm_detects_changes() {
        let key = [9u8; 16];
        let nonce = [1u8; NONCE_LEN];
        let mut buf = *b"control words!!";
        let tag = seal(&key, &nonce, b"hdr", &mut buf);
        assert_ne!(&buf, b"control words!!");
        let mut ok = buf;
        assert!(open(&key, &nonce, b"hdr", &mut ok, &tag));
        assert_eq!(&ok, b"control words!!");
        let mut bad = buf;
        assert!(!open(&key, &nonce, b"hdR", &mut bad, &tag));
        let mut bad = buf;
        bad[0] ^= 1;
        assert!(!open(&key, &nonce, b"hdr", &mut bad, &tag));
    }

    #[test]
    fn short_tag_gcm_detects_changes() {
        let key = [3u8; 16];
        let nonce = [2u8; NONCE_LEN];
        let mut buf = *b"entitlements";
        let tag = seal_short(&key, &nonce, b"hdr", &mut buf);
        let mut ok = buf;
        assert!(open_short(&key, &nonce, b"hdr", &mut ok, &tag));
        assert_eq!(&ok, b"entitlements");
        let mut bad = buf;
        assert!(!open_short(&key, &[9; NONCE_LEN], b"hdr", &mut bad, &tag));
        let mut bad = buf;
        let mut t = tag;
        t[11] ^= 1;
        assert!(!open_short(&key, &nonce, b"hdr", &mut bad, &t));
        // the short tag is not the full tag cut short: GCM's tag is truncated, and the
        // two agree on the first 12 bytes
        let mut full = *b"entitlements";
        let long = seal(&key, &nonce, b"hdr", &mut full);
        assert_eq!(&long[..SHORT_TAG_LEN], &tag);
    }

    #[test]
    fn wrap_round_trips() {
        let sk = Key128::from_bytes([5; 16]);
        let ck = [0x42u8; 16];
        let w = wrap_key(&sk, &ck);
        assert_ne!(w, ck);
        assert_eq!(unwrap_key(&sk, &w), ck);
    }
}
