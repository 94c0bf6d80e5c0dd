//! newcamd message tags and the bodies castmux reads and writes: login, card data,
//! ECM answers (the CWs, even then odd) and EMM answers.

use std::fmt;

use super::error::NewcamdError;
use super::frame::Message;

/// MSG_CLIENT_2_SERVER_LOGIN: user name and MD5-crypt password, both NUL-terminated.
pub const MSG_CLIENT_2_SERVER_LOGIN: u8 = 0xe0;
/// Login accepted.
pub const MSG_CLIENT_2_SERVER_LOGIN_ACK: u8 = 0xe1;
/// Login refused.
pub const MSG_CLIENT_2_SERVER_LOGIN_NAK: u8 = 0xe2;
/// Ask for the card's data (first message under the session key).
pub const MSG_CARD_DATA_REQ: u8 = 0xe3;
/// The card's CAID, serial and providers.
pub const MSG_CARD_DATA: u8 = 0xe4;
/// Keepalive, echoed by the server.
pub const MSG_KEEPALIVE: u8 = 0xe0 + 0x1d;
/// EMM answer flag (upper nibble of byte 2): the card accepted the EMM.
pub const EMM_ACCEPTED_FLAG: u8 = 0x1;
/// The longest user name or crypted password castmux accepts in a login.
pub const MAX_LOGIN_FIELD: usize = 64;

/// Whether `tag` is an ECM table id (0x80/0x81).
pub fn is_ecm(tag: u8) -> bool {
    tag == 0x80 || tag == 0x81
}

/// Whether `tag` is an EMM table id (0x82..=0x8f).
pub fn is_emm(tag: u8) -> bool {
    (0x82..=0x8f).contains(&tag)
}

/// An even and odd control word as an ECM answer carries them. Debug is redacted;
/// the bytes are wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct CwPair {
    /// The even CW (used for packets with scrambling control 10).
    pub even: [u8; 8],
    /// The odd CW (scrambling control 11).
    pub odd: [u8; 8],
}

impl fmt::Debug for CwPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CwPair(<redacted>)")
    }
}

impl Drop for CwPair {
    fn drop(&mut self) {
        self.even.fill(0);
        self.odd.fill(0);
    }
}

impl CwPair {
    /// The 16 bytes of an ECM answer: even then odd.
    pub fn from_bytes(b: &[u8; 16]) -> CwPair {
        let mut even = [0u8; 8];
        let mut odd = [0u8; 8];
        even.copy_from_slice(&b[..8]);
        odd.copy_from_slice(&b[8..]);
        CwPair { even, odd }
    }

    /// Even then odd, as the ECM answer's body.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.even);
        b[8..].copy_from_slice(&self.odd);
        b
    }
}

/// The login request's body: user name and crypted password.
pub struct Login {
    /// The user name.
    pub user: String,
    /// `crypt(password, "$1$abcdefgh$")`.
    pub crypt_password: String,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Login {
    /// The MSG_CLIENT_2_SERVER_LOGIN message.
    pub fn encode(&self) -> Result<Message, NewcamdError> {
        let mut body = Vec::with_capacity(self.user.len() + self.crypt_password.len() + 2);
        body.extend_from_slice(self.user.as_bytes());
        body.push(0);
        body.extend_from_slice(self.crypt_password.as_bytes());
        body.push(0);
        Message::new(MSG_CLIENT_2_SERVER_LOGIN, 0, &body)
    }

    /// Parse a login message; fields are bounded and must be NUL-terminated UTF-8.
    pub fn parse(msg: &Message) -> Result<Login, NewcamdError> {
        if msg.tag() != MSG_CLIENT_2_SERVER_LOGIN {
            return Err(NewcamdError::Unexpected {
                got: msg.tag(),
                what: "expected a login",
            });
        }
        let mut parts = msg.body().splitn(3, |&b| b == 0);
        let user = parts.next().unwrap_or_default();
        let pw = parts.next();
        let (Some(pw), Some(_)) = (pw, parts.next()) else {
            return Err(NewcamdError::Frame(
                "login: user or password not NUL-terminated",
            ));
        };
        if user.len() > MAX_LOGIN_FIELD || pw.len() > MAX_LOGIN_FIELD {
            return Err(NewcamdError::Frame("login: user or password too long"));
        }
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|_| NewcamdError::Frame("login: user or password is not UTF-8"))
        };
        Ok(Login {
            user: text(user)?,
            crypt_password: text(pw)?,
        })
    }
}

/// MSG_CARD_DATA: what the client learns about the card after login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardData {
    /// 1 for a user allowed to send EMMs (AU); others get a per-session number.
    pub user_id: u8,
    /// CA_system_ID of the card.
    pub caid: u16,
    /// The card's serial (all zero for non-AU users).
    pub serial: u64,
    /// Provider idents (24 bit) with their 8-byte provider data (shared address etc.).
    pub providers: Vec<(u32, [u8; 8])>,
}

/// At most this many providers fit a frame (15 + 11 per provider <= message size).
pub const MAX_PROVIDERS: usize = 16;

impl CardData {
    /// Encode as the MSG_CARD_DATA message.
    pub fn encode(&self) -> Result<Message, NewcamdError> {
        let n = self.providers.len().min(MAX_PROVIDERS);
        let mut body = Vec::with_capacity(12 + 11 * n);
        body.push(self.user_id);
        body.extend_from_slice(&self.caid.to_be_bytes());
        body.extend_from_slice(&self.serial.to_be_bytes());
        body.push(n as u8);
        for (ident, data) in &self.providers[..n] {
            body.extend_from_slice(&ident.to_be_bytes()[1..]);
            body.extend_from_slice(data);
        }
        Message::new(MSG_CARD_DATA, 0, &body)
    }

    /// Parse a MSG_CARD_DATA message.
    pub fn parse(msg: &Message) -> Result<CardData, NewcamdError> {
        if msg.tag() != MSG_CARD_DATA {
            return Err(NewcamdError::Unexpected {
                got: msg.tag(),
                what: "expected card data",
            });
        }
        let b = msg.body();
        if b.len() < 12 {
            return Err(NewcamdError::Frame("card data shorter than 12 bytes"));
        }
        let n = usize::from(b[11]);
        if b.len() < 12 + 11 * n {
            return Err(NewcamdError::Frame(
                "card data: provider list runs past the end",
            ));
        }
        let providers = (0..n)
            .map(|i| {
                let p = &b[12 + 11 * i..12 + 11 * (i + 1)];
                let mut data = [0u8; 8];
                data.copy_from_slice(&p[3..]);
                (u32::from_be_bytes([0, p[0], p[1], p[2]]), data)
            })
            .collect();
        let mut serial = [0u8; 8];
        serial.copy_from_slice(&b[3..11]);
        Ok(CardData {
            user_id: b[0],
            caid: u16::from_be_bytes([b[1], b[2]]),
            serial: u64::from_be_bytes(serial),
            providers,
        })
    }
}

/// The answer to an ECM with table id `table_id`: 16 bytes of CWs, or an empty body
/// when the card refused.
pub fn ecm_answer(table_id: u8, cws: Option<&CwPair>) -> Result<Message, NewcamdError> {
    match cws {
        Some(p) => {
            let mut b = p.to_bytes();
            let m = Message::new(table_id, 0, &b);
            b.fill(0);
            m
        }
        None => Message::new(table_id, 0, &[]),
    }
}

/// Read an ECM answer: `Some` CWs, `None` when refused.
pub fn parse_ecm_answer(msg: &Message) -> Result<Option<CwPair>, NewcamdError> {
    if !is_ecm(msg.tag()) {
        return Err(NewcamdError::Unexpected {
            got: msg.tag(),
            what: "expected an ECM answer",
        });
    }
    match msg.body().len() {
        0 => Ok(None),
        n if n >= 16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&msg.body()[..16]);
            let p = CwPair::from_bytes(&b);
            b.fill(0);
            Ok(Some(p))
        }
        _ => Err(NewcamdError::Frame(
            "ECM answer body is neither empty nor 16 bytes",
        )),
    }
}

/// The answer to an EMM with table id `table_id`.
pub fn emm_answer(table_id: u8, accepted: bool) -> Result<Message, NewcamdError> {
    Message::new(table_id, if accepted { EMM_ACCEPTED_FLAG } else { 0 }, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_data_layout_matches_the_document() {
        let cd = CardData {
            user_id: 1,
            caid: 0x090f,
            serial: 0x0102_0304_0506_0708,
            providers: vec![(0x00ab_cdef, [9; 8])],
        };
        let m = cd.encode().unwrap();
        // byte 1 tag, 2/3 length, 4 user id, 5/6 caid, 7-14 serial, 15 count,
        // 16-18 provider ident, 19-26 provider data (1-based, as the document counts)
        let b = m.as_bytes();
        assert_eq!(b[0], 0xe4);
        assert_eq!(usize::from(b[2]), b.len() - 3);
        assert_eq!(b[3], 1);
        assert_eq!(&b[4..6], &[0x09, 0x0f]);
        assert_eq!(&b[6..14], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(b[14], 1);
        assert_eq!(&b[15..18], &[0xab, 0xcd, 0xef]);
        assert_eq!(&b[18..26], &[9; 8]);
        assert_eq!(CardData::parse(&m).unwrap(), cd);
    }

    #[test]
    fn login_round_trip_and_bounds() {
        let l = Login {
            user: "dummy".into(),
            crypt_password: "$1$abcdefgh$npSETQsrIm35MQfiUIAdn.".into(),
        };
        let m = l.encode().unwrap();
        assert_eq!(&m.as_bytes()[..9], b"\xe0\x00\x29dummy\0");
        let p = Login::parse(&m).unwrap();
        assert_eq!(p.user, "dummy");
        assert_eq!(p.crypt_password, l.crypt_password);
        assert!(!format!("{p:?}").contains("abcdefgh"));
        assert!(Login::parse(&Message::new(0xe0, 0, b"user\0pw").unwrap()).is_err());
        assert!(Login::parse(&Message::new(0xe0, 0, b"user").unwrap()).is_err());
        assert!(Login::parse(&Message::new(0xe0, 0, &[b'a'; 80]).unwrap()).is_err());
    }

    #[test]
    fn ecm_and_emm_answers() {
        let p = CwPair::from_bytes(&[1, 2, 3, 6, 5, 6, 7, 18, 11, 12, 13, 36, 15, 16, 17, 48]);
        let m = ecm_answer(0x81, Some(&p)).unwrap();
        assert_eq!(m.as_bytes()[..3], [0x81, 0x00, 0x10]);
        assert_eq!(parse_ecm_answer(&m).unwrap(), Some(p.clone()));
        assert_eq!(format!("{p:?}"), "CwPair(<redacted>)");
        let r = ecm_answer(0x80, None).unwrap();
        assert_eq!(r.as_bytes(), &[0x80, 0, 0]);
        assert_eq!(parse_ecm_answer(&r).unwrap(), None);
        assert_eq!(emm_answer(0x82, true).unwrap().as_bytes(), &[0x82, 0x10, 0]);
        assert_eq!(emm_answer(0x8f, false).unwrap().as_bytes(), &[0x8f, 0, 0]);
    }
}
