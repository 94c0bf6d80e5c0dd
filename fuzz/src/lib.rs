//! Helpers shared by the fuzz targets.
//!
//! Random bytes almost never carry a good CRC-32, GCM tag or newcamd checksum, so a plain
//! target would only ever exercise the first check of each parser. The helpers here let a
//! target repair those fields on purpose (when the input asks for it), so the fuzzer also
//! reaches the code behind them; the unrepaired inputs still test the checks themselves.

use castmux::ts::section::crc32_mpeg2;

/// Size of a TS packet.
pub const PACKET: usize = 188;

/// Reads an input front to back; every read succeeds (short reads give what is left, or
/// zeros), so a target never needs to bail out on a short input.
#[derive(Debug)]
pub struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A cursor over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { rest: data }
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next byte, 0 at the end.
    pub fn u8(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((b, rest)) => {
                self.rest = rest;
                *b
            }
            None => 0,
        }
    }

    /// The next two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// The next eight bytes, big-endian.
    pub fn u64(&mut self) -> u64 {
        (u64::from(self.u16()) << 48)
            | (u64::from(self.u16()) << 32)
            | (u64::from(self.u16()) << 16)
            | u64::from(self.u16())
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = b;
        a
    }

    /// A chunk whose length is the next u16 (so one input holds several messages).
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.take(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }
}

/// Make the long-form section at the start of `s` carry a good CRC-32, if it is whole
/// and long enough to have one; returns whether it did.
pub fn fix_section_crc(s: &mut [u8]) -> bool {
    let Some(total) = castmux::ts::section::section_total_len(s) else {
        return false;
    };
    if s[1] & 0x80 == 0 || total < 12 || total > s.len() {
        return false;
    }
    let crc = crc32_mpeg2(&s[..total - 4]);
    s[total - 4..total].copy_from_slice(&crc.to_be_bytes());
    true
}

/// Set section_length of the section at the start of `s` to the bytes that are there
/// (capped at 12 bits).
pub fn fix_section_length(s: &mut [u8]) {
    if s.len() >= 3 {
        let len = (s.len() - 3).min(0x0FFF) as u16;
        s[1] = (s[1] & 0xF0) | (len >> 8) as u8;
        s[2] = len as u8;
    }
}

/// When the packet's transport_priority bit is set (a bit the parsers ignore), give the
/// first section starting in it a good CRC. The fuzzer can then turn the repair on or
/// off per packet, and reach PAT/PMT/CAT parsing past the CRC check.
pub fn fix_packet_psi(pkt: &mut [u8; PACKET]) {
    let pusi = pkt[1] & 0x40 != 0;
    let priority = pkt[1] & 0x20 != 0;
    if !pusi || !priority {
        return;
    }
    let start = match (pkt[3] >> 4) & 0b11 {
        0b01 => 4,
        0b11 => 5 + usize::from(pkt[4]),
        _ => return,
    };
    let Some(&pointer) = pkt.get(start) else {
        return;
    };
    let at = start + 1 + usize::from(pointer);
    if at < PACKET {
        fix_section_crc(&mut pkt[at..]);
    }
}

/// Split `data` into TS packets: each 188-byte chunk (the last one padded with 0xFF) with
/// its sync byte forced to 0x47 unless the chunk's first byte is 0x00 (so damaged packets
/// still occur), and its PSI CRC repaired as [`fix_packet_psi`] says.
pub fn packets(data: &[u8]) -> Vec<[u8; PACKET]> {
    data.chunks(PACKET)
        .map(|c| {
            let mut p = [0xFFu8; PACKET];
            p[..c.len()].copy_from_slice(c);
            if p[0] != 0x00 {
                p[0] = 0x47;
            }
            fix_packet_psi(&mut p);
            p
        })
        .collect()
}

/// The software card the CAS targets (and their seeds) use.
pub mod card {
    use castmux::cas::{
        AccessCriteria, CardFile, CardSerial, Entitlements, EventGrant, Key128, PackageBit,
        ServiceKey, CARD_FILE_FORMAT,
    };
    use castmux::softcard::card::{SoftCard, KEY_VERSIONS_KEPT};

    /// The card's serial.
    pub const SERIAL: u64 = 2_100_000_007;
    /// The operator's CA_system_ID.
    pub const CAS: u16 = 0x4AE1;
    /// The card's unique key.
    pub const CARD_KEY: [u8; 16] = [0x5A; 16];
    /// The time the targets run at, Unix seconds.
    pub const NOW: i64 = 1_700_000_000;

    fn key(bit: u32, version: u32, byte: u8) -> ServiceKey {
        ServiceKey {
            bit: PackageBit::new(bit).expect("bit below 64"),
            version,
            key: Key128::from_bytes([byte; 16]),
        }
    }

    /// The card's service keys: packages 0 and 1 (version 1), 5 (version 2).
    pub fn service_keys() -> Vec<ServiceKey> {
        vec![key(0, 1, 0x10), key(1, 1, 0x11), key(5, 2, 0x15)]
    }

    /// The card's entitlements: packages 0 and 1 for a day either side of [`NOW`], and
    /// the pay-per-view event on package 5 for an hour either side.
    pub fn entitlements() -> Entitlements {
        Entitlements {
            access: AccessCriteria(0b11),
            start: NOW - 86_400,
            finish: NOW + 86_400,
            pair: 0,
            enabled: true,
            events: vec![EventGrant {
                id: 1,
                bit: PackageBit::new(5).expect("bit below 64"),
                start: NOW - 3600,
                end: NOW + 3600,
            }],
        }
    }

    /// A fresh copy of the card.
    pub fn test_card() -> SoftCard {
        SoftCard::from_card_file(CardFile {
            format: CARD_FILE_FORMAT,
            serial: CardSerial(SERIAL),
            ca_system_id: CAS,
            card_key: Key128::from_bytes(CARD_KEY),
            entitlements: entitlements(),
            service_keys: service_keys(),
            issued_at: NOW - 86_400,
        })
        .expect("the test card is well formed")
    }

    /// What a card must hold whatever it was fed: at most [`KEY_VERSIONS_KEPT`] key
    /// versions per package bit.
    pub fn check_card(card: &SoftCard) {
        let versions = card.key_versions();
        for bit in 0..64u8 {
            let n = versions.iter().filter(|(b, _)| *b == bit).count();
            assert!(n <= KEY_VERSIONS_KEPT, "bit {bit} holds {n} key versions");
        }
    }
}

/// The newcamd session key the newcamd target (and its seeds) use.
pub fn newcamd_key() -> castmux::softcard::newcamd::crypto::FrameKey {
    let des = castmux::softcard::newcamd::DesKey14::from_bytes([
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x10, 0x11, 0x12, 0x13, 0x14,
    ]);
    des.session_key(b"$1$abcdefgh$XJbbSvfWrv8yKMEcVKvbl/")
}
