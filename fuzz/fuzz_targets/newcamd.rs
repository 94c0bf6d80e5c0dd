//! newcamd frames (protocol 5.25) as a server or client reads them off TCP: the length
//! prefix checked, the 3DES-CBC body opened, the message read as a login, card data or an
//! ECM answer. Half the inputs are sealed by the harness first (its plaintext encrypted
//! under the session key with a good checksum), so the fuzzer reaches the header and
//! message parsing behind the cipher; `seal` and `open` must then agree.
#![no_main]

use castmux::softcard::newcamd::crypto::FrameKey;
use castmux::softcard::newcamd::frame::{
    check_prefix, open, seal, Message, MAX_FRAME_LEN, MAX_MESSAGE_LEN,
};
use castmux::softcard::newcamd::messages::{parse_ecm_answer, Login};
use castmux::softcard::newcamd::{CardData, NewcamdError};
use castmux_fuzz::{newcamd_key, Cursor};
use libfuzzer_sys::fuzz_target;

fn read_message(msg: &Message, key: &FrameKey) {
    let _ = (msg.tag(), msg.flags(), msg.body());
    let _ = Login::parse(msg);
    let _ = CardData::parse(msg);
    let _ = parse_ecm_answer(msg);
    // a message read from a frame is one a sender could have built; `open` takes up to
    // the frame's room (379 bytes when no padding is needed), a little more than
    // MAX_MESSAGE_LEN, which leaves room for the worst-case padding
    if msg.as_bytes().len() <= MAX_MESSAGE_LEN {
        let again = Message::from_bytes(msg.as_bytes()).expect("an opened message re-reads");
        assert_eq!(&again, msg);
    }
    // and sealing it again opens to the same message
    if let Ok(frame) = seal(&Default::default(), msg, key, &[7; 15]) {
        let len = check_prefix([frame[0], frame[1]]).expect("our prefix is good");
        assert_eq!(len + 2, frame.len());
        let mut body = frame[2..].to_vec();
        let (_, back) = open(&mut body, key).expect("our frame opens");
        assert_eq!(&back, msg);
    }
}

fuzz_target!(|data: &[u8]| {
    let key = newcamd_key();
    let mut c = Cursor::new(data);
    let mode = c.u8();
    if mode & 1 == 0 {
        // the bytes as they come off the wire
        let prefix = [c.u8(), c.u8()];
        let Ok(len) = check_prefix(prefix) else {
            return;
        };
        let mut body = c.take(len).to_vec();
        if body.len() == len {
            if let Ok((_, msg)) = open(&mut body, &key) {
                read_message(&msg, &key);
            }
        }
        return;
    }
    // sealed by the harness: IV, then plaintext (header + message), padded to whole
    // blocks with the checksum last
    let iv: [u8; 8] = c.take(8).try_into().unwrap_or([0; 8]);
    let mut plain = c.take(MAX_FRAME_LEN - 2 - 8 - 1).to_vec();
    while (plain.len() + 1) % 8 != 0 || plain.len() < 15 {
        plain.push(0);
    }
    let sum = plain.iter().fold(0u8, |a, b| a ^ b);
    plain.push(sum);
    if plain.len() + 8 > MAX_FRAME_LEN - 2 {
        return;
    }
    let mut body = plain.clone();
    key.encrypt_cbc(&iv, &mut body).expect("whole blocks");
    body.extend_from_slice(&iv);
    match open(&mut body, &key) {
        Ok((h, msg)) => {
            assert_eq!(h.msg_id, u16::from_be_bytes([plain[0], plain[1]]));
            assert_eq!(h.service_id, u16::from_be_bytes([plain[2], plain[3]]));
            read_message(&msg, &key);
        }
        // the cipher and the checksum were right: only the message's own length may be off
        Err(NewcamdError::Frame(_)) => {}
        Err(e) => panic!("a well-sealed frame was refused: {e}"),
    }
});
