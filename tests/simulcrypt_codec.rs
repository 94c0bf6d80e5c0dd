//! Fuzz-style tests of the SimulCrypt codec: random bytes, every truncation and every single-byte
//! mutation of valid messages, oversize lengths. Each gives a message or a typed error, never a
//! panic, and nothing is allocated for a length over the bound.

use castmux::scramble::Cw;
use castmux::simulcrypt::tlv::{frame_len, RawMessage, MAX_MESSAGE_LEN};
use castmux::simulcrypt::{
    ChannelIds, CodecError, CpCw, CwProvision, EcmgMessage, EmmgMessage, StreamIds,
};

/// xorshift64*: reproducible noise without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 24) as u8
    }
}

fn valid_messages() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for v in [2u8, 3] {
        let mut buf = Vec::new();
        EcmgMessage::CwProvision(CwProvision {
            channel_id: 1,
            stream_id: 1,
            cp_number: 7,
            cw_encryption: None,
            cp_cw: vec![
                CpCw {
                    cp_number: 7,
                    cw: Cw::from_slice(&[1; 8]).unwrap(),
                },
                CpCw {
                    cp_number: 8,
                    cw: Cw::from_slice(&[2; 8]).unwrap(),
                },
            ],
            cp_duration: Some(10),
            access_criteria: Some(vec![0, 0, 0, 1]),
        })
        .encode(v, &mut buf)
        .unwrap();
        out.push(buf);
        let mut buf = Vec::new();
        EcmgMessage::ChannelSetup {
            channel_id: 1,
            super_cas_id: 0x0B00_0001,
        }
        .encode(v, &mut buf)
        .unwrap();
        out.push(buf);
        let mut buf = Vec::new();
        EmmgMessage::DataProvision {
            client_id: 0x0B00_0001,
            channel_id: Some(1),
            stream_id: Some(1),
            data_id: 1,
            datagrams: vec![vec![0x82, 0x70, 2, 0, 0]],
        }
        .encode(v, &mut buf)
        .unwrap();
        out.push(buf);
        let mut buf = Vec::new();
        EmmgMessage::StreamBwRequest {
            ids: StreamIds {
                client_id: 1,
                channel_id: 1,
                stream_id: 1,
            },
            bandwidth: Some(64),
        }
        .encode(v, &mut buf)
        .unwrap();
        out.push(buf);
        let mut buf = Vec::new();
        EmmgMessage::ChannelTest(ChannelIds {
            client_id: 1,
            channel_id: 1,
        })
        .encode(v, &mut buf)
        .unwrap();
        out.push(buf);
    }
    out
}

/// Run every decoder on `bytes` the way a connection would.
fn feed(bytes: &[u8]) {
    match frame_len(bytes) {
        Ok(Some(n)) => {
            let frame = &bytes[..n];
            let _ = RawMessage::parse(frame);
            let _ = EcmgMessage::decode(frame);
            let _ = EmmgMessage::decode(frame);
        }
        Ok(None) => {
            // incomplete: a decoder given it anyway must still fail cleanly
            assert!(EcmgMessage::decode(bytes).is_err() || bytes.len() >= 5);
        }
        Err(e) => assert!(matches!(e, CodecError::TooLong(_))),
    }
    let _ = EcmgMessage::decode(bytes);
    let _ = EmmgMessage::decode(bytes);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let len = (rng.next() % 96) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        // half the time make the header plausible so the parameter parser is reached
        if rng.next().is_multiple_of(2) && b.len() >= 5 {
            b[0] = 2 + (rng.next() % 2) as u8;
            let body = (b.len() - 5) as u16;
            b[3..5].copy_from_slice(&body.to_be_bytes());
        }
        feed(&b);
    }
}

#[test]
fn every_truncation_and_mutation_of_valid_messages() {
    for msg in valid_messages() {
        assert!(EcmgMessage::decode(&msg).is_ok() || EmmgMessage::decode(&msg).is_ok());
        for cut in 0..msg.len() {
            assert_eq!(frame_len(&msg[..cut]), Ok(None), "cut at {cut}");
            assert!(EcmgMessage::decode(&msg[..cut]).is_err());
            assert!(EmmgMessage::decode(&msg[..cut]).is_err());
        }
        for i in 0..msg.len() {
            for x in [0x00u8, 0x01, 0x7F, 0x80, 0xFF] {
                let mut m = msg.clone();
                m[i] ^= x;
                feed(&m);
            }
        }
    }
}

#[test]
fn oversize_lengths_are_refused_before_reading_the_body() {
    for len in [MAX_MESSAGE_LEN + 1, 40_000, 65_535] {
        let mut m = vec![2u8, 0x02, 0x01];
        m.extend_from_slice(&(len as u16).to_be_bytes());
        assert_eq!(frame_len(&m), Err(CodecError::TooLong(len)));
        assert!(matches!(
            EcmgMessage::decode(&m),
            Err(CodecError::TooLong(_))
        ));
    }
    // a parameter length running past the message
    let m = [2u8, 0, 2, 0, 6, 0, 0x0E, 0xFF, 0xFF, 0, 1];
    assert!(matches!(
        EcmgMessage::decode(&m),
        Err(CodecError::InconsistentLength { ptype: 0x0E, .. })
    ));
    // the error codes sent back for it
    let e = EcmgMessage::decode(&m).unwrap_err();
    assert_eq!(e.ecmg_status().value(), 0x000F);
    assert_eq!(e.emmg_status().value(), 0x000B);
}
