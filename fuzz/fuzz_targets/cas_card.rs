//! The software card fed a run of ECM and EMM sections: raw bytes (the clear checks before
//! the MAC), and sections the harness seals itself under the card's keys from its
//! plaintext (docs/cas-formats.md), so the fuzzer reaches the content parsers and the
//! entitlement, replay and key-rotation logic behind the GCM tag. A card may answer an
//! ECM only when it is enabled, entitled to one of its packages, and the ECM's time is
//! inside the card's validity.
#![no_main]

use aes::cipher::{BlockEncrypt, KeyInit};
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Nonce};
use castmux::cas::ecm::EcmRef;
use castmux::cas::emm::EmmHeader;
use castmux::cas::AccessCriteria;
use castmux::softcard::card::SoftCard;
use castmux_fuzz::card::{check_card, test_card, CARD_KEY, CAS, NOW, SERIAL};
use castmux_fuzz::Cursor;
use libfuzzer_sys::fuzz_target;

fn gcm(key: &[u8; 16], nonce: &[u8; 12], aad: &[u8], buf: &mut Vec<u8>) {
    let tag = Aes128Gcm::new(key.into())
        .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
        .expect("small input");
    buf.extend_from_slice(&tag);
}

fn section_header(out: &mut Vec<u8>, table_id: u8) {
    out.extend_from_slice(&[table_id, 0x70, 0]);
}

fn finish_length(out: &mut [u8]) {
    if out.len() < 3 {
        return;
    }
    let len = (out.len() - 3) as u16;
    out[1] = 0x70 | (len >> 8) as u8 & 0x0F;
    out[2] = len as u8;
}

/// An ECM built as the format says, with the wrap of each package whose key the card
/// holds made with that key (others with a zero key). Returns it and its timestamp.
fn sealed_ecm(c: &mut Cursor<'_>, card: &SoftCard, op: u8) -> (Vec<u8>, AccessCriteria, i64) {
    let access = AccessCriteria(c.u64() & 0x3F);
    let content_key: [u8; 16] = c.take(16).try_into().unwrap_or([3; 16]);
    let nonce: [u8; 12] = c.take(12).try_into().unwrap_or([4; 12]);
    let mut out = Vec::new();
    section_header(&mut out, 0x80 | (op >> 7));
    out.push(1);
    out.extend_from_slice(&CAS.to_be_bytes());
    out.extend_from_slice(&access.0.to_be_bytes());
    out.push(access.0.count_ones() as u8);
    for bit in (0..64u8).filter(|b| access.0 & (1 << b) != 0) {
        let version = u32::from(c.u8() % 4);
        let k = card
            .card_file()
            .service_keys
            .iter()
            .find(|k| k.bit.get() == bit && k.version == version)
            .map_or([0; 16], |k| *k.key.as_bytes());
        let mut block = aes::Block::clone_from_slice(&content_key);
        aes::Aes128::new(&k.into()).encrypt_block(&mut block);
        out.push(bit);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&block);
    }
    out.extend_from_slice(&nonce);
    // period (8) | timestamp (8) | cw_len (1) | CWs: 33 or 49 bytes, as the fuzzer wrote them
    let want = if op & 0x40 != 0 { 49 } else { 33 };
    let mut body = c.take(want).to_vec();
    body.resize(want, 0);
    let ts = i64::from_be_bytes(body[8..16].try_into().expect("8 bytes"));
    let total = out.len() + body.len() + 16;
    out[1] = 0x70 | ((total - 3) >> 8) as u8 & 0x0F;
    out[2] = (total - 3) as u8;
    gcm(&content_key, &nonce, &out.clone(), &mut body);
    out.extend_from_slice(&body);
    (out, access, ts)
}

/// An EMM for this card (or another serial) sealed under the card key, its body as the
/// fuzzer wrote it.
fn sealed_emm(c: &mut Cursor<'_>, op: u8) -> Vec<u8> {
    let serial = if op & 0x80 != 0 { c.u64() } else { SERIAL };
    let sequence = u64::from(c.u8());
    let part = c.u8() % 4;
    let parts = c.u8() % 4;
    let nonce: [u8; 12] = c.take(12).try_into().unwrap_or([5; 12]);
    let mut body = c.chunk().to_vec();
    body.truncate(1024 - 3 - 31 - 16);
    let mut out = Vec::new();
    section_header(&mut out, 0x82);
    out.push(1);
    out.extend_from_slice(&serial.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    out.push(part);
    out.push(parts);
    out.extend_from_slice(&nonce);
    let total = out.len() + body.len() + 16;
    out[1] = 0x70 | ((total - 3) >> 8) as u8 & 0x0F;
    out[2] = (total - 3) as u8;
    gcm(&CARD_KEY, &nonce, &out.clone(), &mut body);
    out.extend_from_slice(&body);
    out
}

fuzz_target!(|data: &[u8]| {
    let mut card = test_card();
    let mut c = Cursor::new(data);
    let mut steps = 0;
    while !c.is_empty() && steps < 64 {
        steps += 1;
        let op = c.u8();
        let now = NOW + i64::from(c.u8() as i8) * 60;
        match op & 3 {
            0 => {
                let mut s = c.chunk().to_vec();
                if op & 4 != 0 {
                    finish_length(&mut s);
                }
                let _ = EcmRef::parse(&s);
                let _ = card.process_ecm(&s, now);
            }
            1 => {
                let mut s = c.chunk().to_vec();
                if op & 4 != 0 {
                    finish_length(&mut s);
                }
                let _ = EmmHeader::parse(&s);
                let _ = card.process_emm(&s, now);
            }
            2 => {
                let ent = card.entitlements().clone();
                let (s, access, ts) = sealed_ecm(&mut c, &card, op);
                if let Ok(a) = card.process_ecm(&s, now) {
                    let allowed = ent
                        .events
                        .iter()
                        .fold(ent.access.0, |m, e| m | 1u64 << e.bit.get());
                    assert!(ent.enabled, "a disabled card answered");
                    assert!(access.0 & allowed != 0, "answered without entitlement");
                    assert!(
                        ent.start <= ts && ts < ent.finish,
                        "answered outside validity"
                    );
                    assert_eq!(a.even.len(), a.cw_len);
                    assert_eq!(a.odd.len(), a.cw_len);
                }
            }
            _ => {
                let s = sealed_emm(&mut c, op);
                let _ = card.process_emm(&s, now);
            }
        }
        check_card(&card);
    }
});
