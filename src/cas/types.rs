//! Value types shared by the store, the ECMG/EMMG and the software card: keys, serials,
//! access criteria, entitlements, and the card personalization file (`card.json`).

use std::fmt;
use std::str::FromStr;

use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Version of the `card.json` layout written by `castmux card export-key`.
pub const CARD_FILE_FORMAT: u8 = 1;

/// Highest package bit (64 packages: bits 0..=63).
pub const MAX_PACKAGE_BIT: u8 = 63;

/// Why a value could not be parsed. Variant names follow TVCAS's error codes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CasTypeError {
    /// Access criteria that are not a string of `0`/`1` (at most 64) or `0x` + hex.
    #[error("ACCESS_CRITERIA_ERROR: {0:?} is not access criteria; expected 0/1 digits like 00000101 (rightmost = package bit 0) or 0x + hex")]
    AccessCriteria(String),
    /// A package bit outside 0..=63.
    #[error("BIT_ERROR: package bit {0} is out of range; expected 0..=63")]
    PackageBit(u32),
    /// A serial that is not 1..=20 decimal digits.
    #[error("SERIAL_ERROR: {0:?} is not a card serial; expected decimal digits like 2100000000")]
    Serial(String),
    /// A key that is not 32 hex digits.
    #[error("KEY_ERROR: a key is 32 hex digits (16 bytes)")]
    Key,
    /// A pair flag other than 0 or 1.
    #[error("PAIR_ERROR: pair {0:?} must be 0 or 1")]
    Pair(String),
}

/// A 128-bit AES key. Its `Debug` is redacted and it is wiped on drop; only
/// [`Key128::expose_hex`] (used by explicit exports) prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key128([u8; 16]);

impl Key128 {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Key128 {
        Key128(bytes)
    }

    /// A fresh key from the OS CSPRNG.
    pub fn random() -> Key128 {
        let mut k = [0u8; 16];
        // the OS CSPRNG failing is not recoverable for a key generator
        getrandom::getrandom(&mut k).expect("OS random number generator failed");
        Key128(k)
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parse 32 hex digits.
    pub fn from_hex(text: &str) -> Result<Key128, CasTypeError> {
        let t = text.trim();
        if t.len() != 32 {
            return Err(CasTypeError::Key);
        }
        let mut out = [0u8; 16];
        for (i, pair) in t.as_bytes().chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16).ok_or(CasTypeError::Key)?;
            let lo = (pair[1] as char).to_digit(16).ok_or(CasTypeError::Key)?;
            out[i] = (hi << 4 | lo) as u8;
        }
        Ok(Key128(out))
    }

    /// Lower-case hex of the key. Only explicit exports may call this.
    pub fn expose_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Key128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key128(<redacted>)")
    }
}

impl Drop for Key128 {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

/// serde as hex, for the fields of explicit exports (`card.json`) only.
pub mod key_hex {
    use super::Key128;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize as 32 hex digits.
    pub fn serialize<S: Serializer>(k: &Key128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&k.expose_hex())
    }

    /// Deserialize from 32 hex digits.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Key128, D::Error> {
        let s = String::deserialize(d)?;
        Key128::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// serde of an optional key as hex (or null), for saved card state only.
pub mod key_hex_opt {
    use super::Key128;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize as 32 hex digits, or null.
    pub fn serialize<S: Serializer>(k: &Option<Key128>, s: S) -> Result<S::Ok, S::Error> {
        match k {
            Some(k) => s.serialize_str(&k.expose_hex()),
            None => s.serialize_none(),
        }
    }

    /// Deserialize from 32 hex digits, or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Key128>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| Key128::from_hex(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The per-card unique key: HKDF-SHA256 (RFC 5869) with the operator root key as input
/// keying material, salt `castmux card key v1`, and the serial as 8 big-endian bytes for info.
pub fn derive_card_key(root: &Key128, serial: CardSerial) -> Key128 {
    let hk = Hkdf::<Sha256>::new(Some(b"castmux card key v1"), root.as_bytes());
    let mut okm = [0u8; 16];
    // 16 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail
    hk.expand(&serial.0.to_be_bytes(), &mut okm)
        .expect("HKDF output length is valid");
    Key128(okm)
}

/// Cards per group (shared address): serials `g·256 ..= g·256 + 255` form group `g`.
pub const GROUP_SIZE: u64 = 1 << GROUP_SHIFT;
/// `serial >> GROUP_SHIFT` is a card's group.
pub const GROUP_SHIFT: u32 = 8;

/// A group of [`GROUP_SIZE`] consecutive card serials that share a group key and hear the
/// same group EMMs (an Irdeto/Conax-style shared address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u64);

impl GroupId {
    /// The group of `serial`.
    pub fn of(serial: CardSerial) -> GroupId {
        GroupId(serial.0 >> GROUP_SHIFT)
    }

    /// The first serial of the group.
    pub fn first_serial(self) -> CardSerial {
        CardSerial(self.0 << GROUP_SHIFT)
    }

    /// The last serial of the group.
    pub fn last_serial(self) -> CardSerial {
        CardSerial((self.0 << GROUP_SHIFT) | (GROUP_SIZE - 1))
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The key of a group: HKDF-SHA256 (RFC 5869) with the operator root key as input keying
/// material, salt `castmux group key v1`, and the group number as 8 big-endian bytes for
/// info. Seals the group's EMMs; a card learns it from its unique EMM (format 2).
pub fn derive_group_key(root: &Key128, group: GroupId) -> Key128 {
    let hk = Hkdf::<Sha256>::new(Some(b"castmux group key v1"), root.as_bytes());
    let mut okm = [0u8; 16];
    // 16 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail
    hk.expand(&group.0.to_be_bytes(), &mut okm)
        .expect("HKDF output length is valid");
    Key128(okm)
}

/// A card serial number (TVCAS style: decimal, like 2100000000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CardSerial(pub u64);

impl fmt::Display for CardSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for CardSerial {
    type Err = CasTypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CasTypeError::Serial(s.to_owned()));
        }
        t.parse()
            .map(CardSerial)
            .map_err(|_| CasTypeError::Serial(s.to_owned()))
    }
}

impl TryFrom<String> for CardSerial {
    type Error = CasTypeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<CardSerial> for String {
    fn from(s: CardSerial) -> String {
        s.to_string()
    }
}

/// A package's bit in the access criteria (0..=63; TVCAS's "first package" is bit 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct PackageBit(u8);

impl PackageBit {
    /// A bit, checked.
    pub fn new(bit: u32) -> Result<PackageBit, CasTypeError> {
        if bit > u32::from(MAX_PACKAGE_BIT) {
            return Err(CasTypeError::PackageBit(bit));
        }
        Ok(PackageBit(bit as u8))
    }

    /// The bit number.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u32> for PackageBit {
    type Error = CasTypeError;
    fn try_from(b: u32) -> Result<Self, Self::Error> {
        PackageBit::new(b)
    }
}

impl From<PackageBit> for u32 {
    fn from(b: PackageBit) -> u32 {
        u32::from(b.0)
    }
}

/// Access criteria: a set of package bits. Written as TVCAS writes them, a string of
/// `0`/`1` with the rightmost digit for bit 0 (`00000101` = bits 0 and 2), at least 8
/// digits; `0x` + hex is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccessCriteria(pub u64);

impl AccessCriteria {
    /// No packages.
    pub const NONE: AccessCriteria = AccessCriteria(0);

    /// One package.
    pub fn single(bit: PackageBit) -> AccessCriteria {
        AccessCriteria(1u64 << bit.0)
    }

    /// The set of `bits`.
    pub fn from_bits(bits: impl IntoIterator<Item = PackageBit>) -> AccessCriteria {
        AccessCriteria(bits.into_iter().fold(0, |m, b| m | 1u64 << b.0))
    }

    /// Whether `bit` is set.
    pub fn contains(self, bit: PackageBit) -> bool {
        self.0 & (1u64 << bit.0) != 0
    }

    /// Whether the two share a package.
    pub fn intersects(self, other: AccessCriteria) -> bool {
        self.0 & other.0 != 0
    }

    /// The set bits, lowest first.
    pub fn bits(self) -> impl Iterator<Item = PackageBit> {
        (0..=MAX_PACKAGE_BIT)
            .filter(move |b| self.0 & (1u64 << b) != 0)
            .map(PackageBit)
    }

    /// Whether no bit is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for AccessCriteria {
    /// TVCAS form: 0/1 digits, rightmost = bit 0, at least 8 digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = (64 - self.0.leading_zeros()).max(8) as usize;
        write!(f, "{:0width$b}", self.0, width = width)
    }
}

impl FromStr for AccessCriteria {
    type Err = CasTypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || CasTypeError::AccessCriteria(s.to_owned());
        if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            if hex.is_empty() || hex.len() > 16 {
                return Err(bad());
            }
            return u64::from_str_radix(hex, 16)
                .map(AccessCriteria)
                .map_err(|_| bad());
        }
        if t.is_empty() || t.len() > 64 || !t.bytes().all(|b| b == b'0' || b == b'1') {
            return Err(bad());
        }
        u64::from_str_radix(t, 2)
            .map(AccessCriteria)
            .map_err(|_| bad())
    }
}

impl TryFrom<String> for AccessCriteria {
    type Error = CasTypeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AccessCriteria> for String {
    fn from(a: AccessCriteria) -> String {
        a.to_string()
    }
}

/// A pay-per-view event granted to a card: a package bit that is valid only in `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventGrant {
    /// Event id in the store.
    pub id: u32,
    /// The bit channels of this event carry in their access criteria.
    pub bit: PackageBit,
    /// Start, Unix seconds.
    pub start: i64,
    /// End (exclusive), Unix seconds.
    pub end: i64,
}

/// What a card may watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlements {
    /// Subscribed packages.
    pub access: AccessCriteria,
    /// Valid from, Unix seconds.
    pub start: i64,
    /// Valid until (exclusive), Unix seconds.
    pub finish: i64,
    /// TVCAS's pair flag (card paired to one receiver): 0 or 1.
    pub pair: u8,
    /// False when the operator disabled the card.
    pub enabled: bool,
    /// Pay-per-view events.
    pub events: Vec<EventGrant>,
}

/// One version of a package's service key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceKey {
    /// The package.
    pub bit: PackageBit,
    /// Key version, increasing by one per rotation.
    pub version: u32,
    /// The key.
    #[serde(with = "key_hex")]
    pub key: Key128,
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceKey")
            .field("bit", &self.bit)
            .field("version", &self.version)
            .field("key", &self.key)
            .finish()
    }
}

/// The software card's personalization (`card.json`), written by `castmux card export-key`:
/// its unique key plus a snapshot of entitlements and current service keys, so a fresh
/// card works from the first ECM. EMMs keep it current afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardFile {
    /// [`CARD_FILE_FORMAT`].
    pub format: u8,
    /// The card's serial.
    pub serial: CardSerial,
    /// CA_system_ID of the operator (the CAID a newcamd client sees).
    pub ca_system_id: u16,
    /// The per-card unique key ([`derive_card_key`]).
    #[serde(with = "key_hex")]
    pub card_key: Key128,
    /// Entitlements at export time.
    pub entitlements: Entitlements,
    /// Service keys (current and next of each entitled package) at export time.
    pub service_keys: Vec<ServiceKey>,
    /// When it was exported, Unix seconds.
    pub issued_at: i64,
}

impl CardFile {
    /// The card.json text: pretty JSON and a final line break, as `castmux card export-key`
    /// writes it and the HTTP export answers it.
    pub fn to_json_text(&self) -> Result<String, serde_json::Error> {
        let mut json = serde_json::to_string_pretty(self)?;
        json.push('\n');
        Ok(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_criteria_tvcas_form() {
        let a: AccessCriteria = "00000101".parse().unwrap();
        assert_eq!(a.0, 0b101);
        assert_eq!(a.to_string(), "00000101");
        assert!(a.contains(PackageBit::new(0).unwrap()));
        assert!(!a.contains(PackageBit::new(1).unwrap()));
        assert_eq!(
            "0x8000000000000001".parse::<AccessCriteria>().unwrap().0,
            1 | 1 << 63
        );
        assert_eq!(AccessCriteria(1 << 40).to_string().len(), 41);
        for bad in ["", "0000002", "x", "0x", &"1".repeat(65)] {
            assert!(bad.parse::<AccessCriteria>().is_err(), "{bad}");
        }
    }

    #[test]
    fn card_key_depends_on_root_and_serial() {
        let root = Key128::from_bytes([7; 16]);
        let a = derive_card_key(&root, CardSerial(2100000000));
        let b = derive_card_key(&root, CardSerial(2100000001));
        let c = derive_card_key(&Key128::from_bytes([8; 16]), CardSerial(2100000000));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, derive_card_key(&root, CardSerial(2100000000)));
    }

    #[test]
    fn group_key_depends_on_root_and_group() {
        let root = Key128::from_bytes([7; 16]);
        let g = GroupId::of(CardSerial(2100000000));
        assert_eq!(g, GroupId(2100000000 >> 8));
        assert_eq!(GroupId::of(g.first_serial()), g);
        assert_eq!(GroupId::of(g.last_serial()), g);
        assert_eq!(
            GroupId::of(CardSerial(g.last_serial().0 + 1)),
            GroupId(g.0 + 1)
        );
        let a = derive_group_key(&root, g);
        assert_ne!(a, derive_group_key(&root, GroupId(g.0 + 1)));
        assert_ne!(a, derive_group_key(&Key128::from_bytes([8; 16]), g));
        // not the card key of a serial that happens to equal the group number
        assert_ne!(a, derive_card_key(&root, CardSerial(g.0)));
        assert_eq!(a, derive_group_key(&root, g));
    }

    #[test]
    fn keys_are_redacted() {
        let k = Key128::from_bytes([0xAB; 16]);
        let sk = ServiceKey {
            bit: PackageBit::new(3).unwrap(),
            version: 1,
            key: k.clone(),
        };
        assert!(!format!("{k:?}{sk:?}").to_lowercase().contains("abab"));
        assert_eq!(k.expose_hex(), "ab".repeat(16));
    }

    #[test]
    fn card_file_round_trips_through_json() {
        let f = CardFile {
            format: CARD_FILE_FORMAT,
            serial: CardSerial(2100000007),
            ca_system_id: 0x4AE1,
            card_key: Key128::from_bytes([1; 16]),
            entitlements: Entitlements {
                access: AccessCriteria(0b11),
                start: 0,
                finish: 10,
                pair: 0,
                enabled: true,
                events: vec![],
            },
            service_keys: vec![],
            issued_at: 5,
        };
        let j = serde_json::to_string(&f).unwrap();
        assert!(j.contains("\"serial\":\"2100000007\""));
        assert!(j.contains("\"access\":\"00000011\""));
        assert_eq!(serde_json::from_str::<CardFile>(&j).unwrap(), f);
    }
}
