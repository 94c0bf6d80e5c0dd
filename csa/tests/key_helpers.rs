//! Control-word helpers: hex, checksum bytes, redaction.
use csa::{Algorithm, ControlWord, KeyContext, Parity};

#[test]
fn checksum_bytes() {
    let cw =
        ControlWord::from_bytes([0x11, 0x22, 0x33, 0x00, 0xf0, 0x20, 0x30, 0x00]).with_checksum();
    assert_eq!(
        cw.as_bytes(),
        &[0x11, 0x22, 0x33, 0x66, 0xf0, 0x20, 0x30, 0x40]
    );
    assert!(cw.has_valid_checksum());
    assert!(!ControlWord::from_bytes([1, 2, 3, 4, 5, 6, 7, 8]).has_valid_checksum());
}

#[test]
fn hex_round_trip_and_errors() {
    let cw = ControlWord::from_hex("0x0123456789abcdef").unwrap();
    assert_eq!(cw.to_hex(), "0123456789ABCDEF");
    assert_eq!(
        ControlWord::from_hex("01 23 45 67 89 AB CD EF").unwrap(),
        cw
    );
    for bad in ["", "0123", "0123456789abcdef00", "zz23456789abcdef"] {
        assert!(ControlWord::from_hex(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn keys_never_in_debug_output() {
    let cw = ControlWord::from_hex("DEADBEEFCAFEBABE").unwrap();
    let ctx = KeyContext::csa2(&cw, &cw);
    for text in [
        format!("{cw:?}"),
        format!("{ctx:?}"),
        format!("{:?}", csa::ExpandedKey::new(&cw)),
    ] {
        let upper = text.to_uppercase();
        assert!(
            !upper.contains("DEAD") && !upper.contains("BABE") && !text.contains("222"),
            "{text}"
        );
        assert!(text.contains("redacted"), "{text}");
    }
}

#[test]
fn wrong_key_lengths_are_errors() {
    assert!(KeyContext::from_bytes(Algorithm::Csa2, &[0; 16], &[0; 16]).is_err());
    assert!(KeyContext::from_bytes(Algorithm::Cissa, &[0; 8], &[0; 8]).is_err());
    let mut ctx = KeyContext::from_bytes(Algorithm::Idsa, &[1; 16], &[2; 16]).unwrap();
    assert!(ctx.set_key(Parity::Even, &[0; 8]).is_err());
    assert!(ctx.set_key(Parity::Odd, &[3; 16]).is_ok());
}

#[test]
fn aes_batches_set_and_clear_tsc() {
    for alg in [Algorithm::Cissa, Algorithm::Idsa] {
        let ctx = KeyContext::from_bytes(alg, &[1; 16], &[2; 16]).unwrap();
        let mut pkt = [0u8; 188];
        pkt[0] = 0x47;
        pkt[1] = 0x01;
        pkt[3] = 0x10;
        for (i, b) in pkt[4..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let clear = pkt;
        let stats = ctx.scramble(&mut pkt, Parity::Odd).unwrap();
        assert_eq!(stats.processed, 1);
        assert_eq!(pkt[3] >> 6, 0b11);
        assert_ne!(pkt[4..20], clear[4..20]);
        ctx.descramble(&mut pkt).unwrap();
        assert_eq!(pkt, clear, "{alg:?}");
    }
}
