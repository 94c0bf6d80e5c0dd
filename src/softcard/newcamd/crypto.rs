//! newcamd key handling: the 14-byte configured key, its spread to a 16-byte
//! Triple-DES (EDE2) key, the login and session key derivations, the MD5-crypt
//! password form, and 3DES-CBC over whole 8-byte blocks.

use std::fmt;

use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit};
use des::TdesEde2;

use super::error::NewcamdError;

/// Length of the configured key and of the random login nonce.
pub const DES_KEY_LEN: usize = 14;
/// The salt every newcamd peer uses for the password's MD5-crypt form.
pub const PASSWORD_SALT: &[u8] = b"abcdefgh";

/// The 14-byte key both ends are configured with (`DESKEY`/`CWS`). Never used
/// as is: the login and session keys are derived from it. Debug is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct DesKey14([u8; DES_KEY_LEN]);

impl fmt::Debug for DesKey14 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DesKey14(<redacted>)")
    }
}

impl Drop for DesKey14 {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

impl DesKey14 {
    /// The key from its 14 bytes.
    pub fn from_bytes(bytes: [u8; DES_KEY_LEN]) -> DesKey14 {
        DesKey14(bytes)
    }

    /// The key from 28 hex digits, as newcamd and OSCam configs write it
    /// (e.g. `0102030405060708091011121314`).
    pub fn from_hex(text: &str) -> Result<DesKey14, NewcamdError> {
        let t = text.trim();
        if t.len() != 2 * DES_KEY_LEN || !t.is_ascii() {
            return Err(NewcamdError::BadDesKey(format!(
                "{} characters; the newcamd DES key is 28 hex digits",
                t.len()
            )));
        }
        let mut out = [0u8; DES_KEY_LEN];
        for (i, pair) in t.as_bytes().chunks_exact(2).enumerate() {
            let s = std::str::from_utf8(pair).unwrap_or("");
            out[i] = u8::from_str_radix(s, 16).map_err(|_| {
                NewcamdError::BadDesKey("not a hex digit in the newcamd DES key".to_owned())
            })?;
        }
        Ok(DesKey14(out))
    }

    /// The login key: this key XOR the 14 random bytes the server sent first.
    pub fn login_key(&self, nonce: &[u8; DES_KEY_LEN]) -> FrameKey {
        let mut k = self.0;
        for (b, n) in k.iter_mut().zip(nonce) {
            *b ^= n;
        }
        let key = FrameKey::from_spread(&spread(&k));
        k.fill(0);
        key
    }

    /// The session key: this key XOR the MD5-crypt password string, cycled over 14 bytes.
    pub fn session_key(&self, crypt_password: &[u8]) -> FrameKey {
        let mut k = self.0;
        for (i, c) in crypt_password.iter().enumerate() {
            k[i % DES_KEY_LEN] ^= c;
        }
        let key = FrameKey::from_spread(&spread(&k));
        k.fill(0);
        key
    }
}

/// A password in the form newcamd sends it: `crypt(password, "$1$abcdefgh$")`.
pub fn crypt_password(password: &str) -> String {
    let out = md5crypt::md5crypt(password.as_bytes(), PASSWORD_SALT);
    // md5crypt's output alphabet is ASCII, so this never loses anything.
    String::from_utf8_lossy(&out).into_owned()
}

/// Spread 14 bytes (two 56-bit DES keys) over 16 bytes, 7 key bits per byte with
/// the low bit as the DES parity bit (odd parity).
pub fn spread(k: &[u8; DES_KEY_LEN]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for half in 0..2 {
        let src = &k[half * 7..half * 7 + 7];
        let dst = &mut out[half * 8..half * 8 + 8];
        dst[0] = src[0] & 0xfe;
        for i in 1..7 {
            dst[i] = ((src[i - 1] << (8 - i)) | (src[i] >> i)) & 0xfe;
        }
        dst[7] = src[6] << 1;
    }
    for b in &mut out {
        // DES ignores the parity bit; set it anyway so the key is a proper DES key.
        let ones = (*b >> 1).count_ones();
        *b |= u8::from(ones % 2 == 0);
    }
    out
}

/// A ready 3DES-EDE2 key schedule for one direction of framing (login or session).
#[derive(Clone)]
pub struct FrameKey {
    cipher: TdesEde2,
}

impl fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FrameKey(<redacted>)")
    }
}

impl FrameKey {
    /// A key from its 16-byte spread form (K1 || K2; the cipher is K1-K2-K1).
    pub fn from_spread(key: &[u8; 16]) -> FrameKey {
        FrameKey {
            cipher: TdesEde2::new(key.into()),
        }
    }

    /// Encrypt `buf` (a whole number of 8-byte blocks) in place, CBC under `iv`.
    pub fn encrypt_cbc(&self, iv: &[u8; 8], buf: &mut [u8]) -> Result<(), NewcamdError> {
        let len = buf.len();
        if !len.is_multiple_of(8) {
            return Err(NewcamdError::Frame("encrypt: not whole 8-byte blocks"));
        }
        cbc::Encryptor::<TdesEde2>::inner_iv_init(self.cipher.clone(), iv.into())
            .encrypt_padded_mut::<NoPadding>(buf, len)
            .map(|_| ())
            .map_err(|_| NewcamdError::Frame("encrypt: not whole 8-byte blocks"))
    }

    /// Decrypt `buf` (a whole number of 8-byte blocks) in place, CBC under `iv`.
    pub fn decrypt_cbc(&self, iv: &[u8; 8], buf: &mut [u8]) -> Result<(), NewcamdError> {
        if !buf.len().is_multiple_of(8) {
            return Err(NewcamdError::Frame("decrypt: not whole 8-byte blocks"));
        }
        cbc::Decryptor::<TdesEde2>::inner_iv_init(self.cipher.clone(), iv.into())
            .decrypt_padded_mut::<NoPadding>(buf)
            .map(|_| ())
            .map_err(|_| NewcamdError::Frame("decrypt: not whole 8-byte blocks"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_matches_the_protocol_documents_example() {
        // The newcamd protocol document shows user "dummy" sending this string;
        // `openssl passwd -1 -salt abcdefgh dummy` gives the same.
        assert_eq!(
            crypt_password("dummy"),
            "$1$abcdefgh$npSETQsrIm35MQfiUIAdn."
        );
    }

    #[test]
    fn spread_moves_seven_bits_per_byte_and_sets_odd_parity() {
        let k = [0xffu8; 14];
        assert_eq!(spread(&k), [0xfeu8; 16]);
        let z = [0u8; 14];
        assert_eq!(spread(&z), [0x01u8; 16]);
        // One set bit per position walks down the spread bytes: bit 7 of byte 0
        // is key bit 1 (the spread byte's bit 7).
        let mut k = [0u8; 14];
        k[0] = 0x80;
        let s = spread(&k);
        assert_eq!(s[0], 0x80);
        assert!(s[1..].iter().all(|&b| b == 0x01));
        // bit 0 of byte 0 lands at bit 7 of spread byte 1
        let mut k = [0u8; 14];
        k[0] = 0x01;
        let s = spread(&k);
        assert_eq!(s[0], 0x01);
        assert_eq!(s[1], 0x80);
        for b in spread(&[0x5a; 14]) {
            assert_eq!(b.count_ones() % 2, 1, "odd parity");
        }
    }

    #[test]
    fn tdes_cbc_known_answer() {
        // Vector from Python `cryptography` (TripleDES, 16-byte key = K1K2K1, CBC):
        // key 0123456789abcdef fedcba9876543210, iv 0001020304050607,
        // plaintext "newcamd castmux!" -> the ciphertext below.
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        key[8..].copy_from_slice(&[0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10]);
        let k = FrameKey::from_spread(&key);
        let iv = [0, 1, 2, 3, 4, 5, 6, 7];
        let mut buf = *b"newcamd castmux!";
        k.encrypt_cbc(&iv, &mut buf).unwrap();
        assert_eq!(buf, TDES_KAT);
        k.decrypt_cbc(&iv, &mut buf).unwrap();
        assert_eq!(&buf, b"newcamd castmux!");
        assert!(k.encrypt_cbc(&iv, &mut [0u8; 7]).is_err());
    }

    const TDES_KAT: [u8; 16] = [
        0xe2, 0x0f, 0x41, 0x5f, 0x01, 0x16, 0x63, 0x02, 0xa1, 0x67, 0x42, 0xbd, 0xa4, 0xc2, 0xeb,
        0xd4,
    ];

    #[test]
    fn keys_parse_and_redact() {
        let k = DesKey14::from_hex("0102030405060708091011121314").unwrap();
        assert_eq!(format!("{k:?}"), "DesKey14(<redacted>)");
        assert!(DesKey14::from_hex("01020304").is_err());
        assert!(DesKey14::from_hex("zz02030405060708091011121314").is_err());
        // login key with an all-zero nonce equals the session key with an empty password
        let a = k.login_key(&[0; 14]);
        let b = k.session_key(b"");
        let mut x = [7u8; 8];
        let mut y = [7u8; 8];
        a.encrypt_cbc(&[0; 8], &mut x).unwrap();
        b.encrypt_cbc(&[0; 8], &mut y).unwrap();
        assert_eq!(x, y);
    }
}
