//! A SimulCrypt TCP byte stream (ETSI TS 103 197) split by the connection's frame reader,
//! each message decoded as ECMG<->SCS and as EMMG<->MUX. A message that decodes must
//! encode again and decode to the same thing; the datagram helpers (sections <-> TS
//! packets) must round-trip whole short sections.
#![no_main]

use std::sync::OnceLock;

use castmux::simulcrypt::conn::FrameReader;
use castmux::simulcrypt::datagram::{check_sections, packets_to_sections, sections_to_packets};
use castmux::simulcrypt::tlv::{frame_len, RawMessage};
use castmux::simulcrypt::{EcmgMessage, EmmgMessage};
use castmux::ts::section::{split_sections, MAX_PRIVATE_SECTION};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fn message(frame: &[u8]) {
    assert_eq!(frame_len(frame).ok().flatten(), Some(frame.len()));
    let _ = RawMessage::parse(frame);
    if let Ok((version, m)) = EcmgMessage::decode(frame) {
        let mut out = Vec::new();
        if m.encode(version, &mut out).is_ok() {
            let again = EcmgMessage::decode(&out).expect("an encoded ECMG message decodes");
            assert_eq!(again, (version, m));
        }
    }
    if let Ok((version, m)) = EmmgMessage::decode(frame) {
        let mut out = Vec::new();
        if m.encode(version, &mut out).is_ok() {
            let again = EmmgMessage::decode(&out).expect("an encoded EMMG message decodes");
            assert_eq!(again, (version, m));
        }
    }
}

/// The datagram helpers on the raw input: as TS packets, and as sections.
fn datagrams(data: &[u8]) {
    let mut sections = Vec::new();
    let _ = packets_to_sections(data, &mut sections);
    if check_sections(data).is_err() {
        return;
    }
    let mut packets = Vec::new();
    if sections_to_packets(data, &mut packets).is_err() {
        return;
    }
    // short sections (no CRC) within the private-section bound come back unchanged
    let plain = split_sections(data).all(|s| s[1] & 0x80 == 0 && s.len() <= MAX_PRIVATE_SECTION);
    if plain {
        let mut back = Vec::new();
        packets_to_sections(&packets, &mut back).expect("our packets give sections back");
        assert_eq!(back, data);
    }
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let mut r = FrameReader::new(data);
        while let Ok(Some(frame)) = r.next().await {
            message(&frame);
        }
    });
    datagrams(data);
});
