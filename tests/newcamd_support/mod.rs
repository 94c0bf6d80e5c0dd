//! A newcamd client written from the protocol document, independent of castmux's own
//! codec, so the server and the library client are each checked against it. Blocking
//! std sockets; 3DES-EDE2 in outer CBC spelled out block by block.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use des::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use des::TdesEde2;

pub const CONFIG_KEY: [u8; 14] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 0x10, 0x11, 0x12, 0x13, 0x14];
pub const CONFIG_KEY_HEX: &str = "0102030405060708091011121314";

/// The document's key spread with parity adjustment.
pub fn spread(n: &[u8; 14]) -> [u8; 16] {
    let s = [
        n[0] & 0xfe,
        ((n[0] << 7) | (n[1] >> 1)) & 0xfe,
        ((n[1] << 6) | (n[2] >> 2)) & 0xfe,
        ((n[2] << 5) | (n[3] >> 3)) & 0xfe,
        ((n[3] << 4) | (n[4] >> 4)) & 0xfe,
        ((n[4] << 3) | (n[5] >> 5)) & 0xfe,
        ((n[5] << 2) | (n[6] >> 6)) & 0xfe,
        n[6] << 1,
        n[7] & 0xfe,
        ((n[7] << 7) | (n[8] >> 1)) & 0xfe,
        ((n[8] << 6) | (n[9] >> 2)) & 0xfe,
        ((n[9] << 5) | (n[10] >> 3)) & 0xfe,
        ((n[10] << 4) | (n[11] >> 4)) & 0xfe,
        ((n[11] << 3) | (n[12] >> 5)) & 0xfe,
        ((n[12] << 2) | (n[13] >> 6)) & 0xfe,
        n[13] << 1,
    ];
    let mut out = s;
    for b in &mut out {
        let mut parity = 1u8;
        for j in 1..8 {
            if (*b >> j) & 1 == 1 {
                parity ^= 1;
            }
        }
        *b |= parity;
    }
    out
}

pub fn crypt(password: &str) -> String {
    String::from_utf8(md5crypt::md5crypt(password.as_bytes(), b"abcdefgh")).unwrap()
}

/// Frame corruption the tests can ask for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Corrupt {
    None,
    Checksum,
}

pub struct TestClient {
    pub s: TcpStream,
    key: [u8; 16],
    config_key: [u8; 14],
    pub msg_id: u16,
}

/// What a frame carried.
#[derive(Debug)]
pub struct Reply {
    pub msg_id: u16,
    pub sid: u16,
    pub msg: Vec<u8>,
}

impl TestClient {
    /// Connect and read the 14 random bytes; ready to log in.
    pub fn connect(addr: SocketAddr, config_key: [u8; 14]) -> TestClient {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut c = TestClient {
            s,
            key: [0; 16],
            config_key,
            msg_id: 0,
        };
        let mut rnd = [0u8; 14];
        c.s.read_exact(&mut rnd).unwrap();
        let mut k = [0u8; 14];
        for i in 0..14 {
            k[i] = config_key[i] ^ rnd[i];
        }
        c.key = spread(&k);
        c
    }

    /// Send the login; returns the answer's command tag (0xe1 ACK, 0xe2 NAK) or None
    /// when the server closed the connection. Switches to the session key on ACK.
    pub fn login(&mut self, user: &str, password: &str) -> Option<u8> {
        let pw = crypt(password);
        let mut body = user.as_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(pw.as_bytes());
        body.push(0);
        self.send(0xe0, &body, 0, Corrupt::None);
        let r = self.recv()?;
        assert_eq!(r.msg_id, self.msg_id, "login answer echoes the sequence id");
        if r.msg[0] == 0xe1 {
            let mut k = self.config_key;
            for (i, c) in pw.bytes().enumerate() {
                k[i % 14] ^= c;
            }
            self.key = spread(&k);
        }
        Some(r.msg[0])
    }

    /// Log in and fetch the card data; panics unless both succeed.
    pub fn login_ok(addr: SocketAddr, user: &str, password: &str) -> (TestClient, Vec<u8>) {
        let mut c = TestClient::connect(addr, CONFIG_KEY);
        assert_eq!(c.login(user, password), Some(0xe1), "login ACK");
        let cd = c.request(0xe3, &[], 0).expect("card data");
        assert_eq!(cd.msg[0], 0xe4);
        (c, cd.msg)
    }

    /// Build, encrypt and send one frame the way the document's C code does.
    pub fn send(&mut self, cmd: u8, data: &[u8], sid: u16, corrupt: Corrupt) {
        self.msg_id = self.msg_id.wrapping_add(1);
        let mut buf = vec![0u8; 12];
        buf[2..4].copy_from_slice(&self.msg_id.to_be_bytes());
        buf[4..6].copy_from_slice(&sid.to_be_bytes());
        buf.push(cmd);
        buf.push(((data.len() >> 8) & 0x0f) as u8);
        buf.push(data.len() as u8);
        buf.extend_from_slice(data);
        self.send_raw_plain(buf, corrupt);
    }

    /// Send an already built message (e.g. an ECM section) as one frame.
    pub fn send_section(&mut self, section: &[u8], sid: u16) {
        self.msg_id = self.msg_id.wrapping_add(1);
        let mut buf = vec![0u8; 12];
        buf[2..4].copy_from_slice(&self.msg_id.to_be_bytes());
        buf[4..6].copy_from_slice(&sid.to_be_bytes());
        buf.extend_from_slice(section);
        self.send_raw_plain(buf, Corrupt::None);
    }

    fn send_raw_plain(&mut self, mut buf: Vec<u8>, corrupt: Corrupt) {
        let len = buf.len();
        let pad = (8 - ((len - 1) % 8)) % 8;
        buf.extend(std::iter::repeat_n(0x3c, pad));
        let mut checksum = 0u8;
        for b in &buf[2..] {
            checksum ^= b;
        }
        if corrupt == Corrupt::Checksum {
            checksum ^= 0x55;
        }
        buf.push(checksum);
        let iv = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
        let c = TdesEde2::new(&self.key.into());
        let mut chain = iv;
        for i in (2..buf.len()).step_by(8) {
            let mut block = [0u8; 8];
            for j in 0..8 {
                block[j] = buf[i + j] ^ chain[j];
            }
            let mut b = block.into();
            c.encrypt_block(&mut b);
            buf[i..i + 8].copy_from_slice(&b);
            chain.copy_from_slice(&b);
        }
        buf.extend_from_slice(&iv);
        let n = (buf.len() - 2) as u16;
        buf[..2].copy_from_slice(&n.to_be_bytes());
        self.s.write_all(&buf).unwrap();
    }

    /// Receive and decrypt one frame; None when the server closed the connection.
    pub fn recv(&mut self) -> Option<Reply> {
        let mut lenb = [0u8; 2];
        if self.s.read_exact(&mut lenb).is_err() {
            return None;
        }
        let n = u16::from_be_bytes(lenb) as usize;
        assert!(
            (16..=398).contains(&n) && n.is_multiple_of(8),
            "frame length {n}"
        );
        let mut buf = vec![0u8; n];
        self.s.read_exact(&mut buf).ok()?;
        let (enc, iv) = buf.split_at_mut(n - 8);
        let c = TdesEde2::new(&self.key.into());
        let mut chain: [u8; 8] = iv.try_into().unwrap();
        for blk in enc.chunks_mut(8) {
            let ct: [u8; 8] = blk.try_into().unwrap();
            let mut b = ct.into();
            c.decrypt_block(&mut b);
            for j in 0..8 {
                blk[j] = b[j] ^ chain[j];
            }
            chain = ct;
        }
        assert_eq!(enc.iter().fold(0u8, |a, b| a ^ b), 0, "checksum");
        let l = (((enc[11] & 0x0f) as usize) << 8) | enc[12] as usize;
        assert!(l + 3 <= enc.len() - 10, "message length within the frame");
        Some(Reply {
            msg_id: u16::from_be_bytes([enc[0], enc[1]]),
            sid: u16::from_be_bytes([enc[2], enc[3]]),
            msg: enc[10..13 + l].to_vec(),
        })
    }

    /// Send a command and return the answer (checking its sequence id).
    pub fn request(&mut self, cmd: u8, data: &[u8], sid: u16) -> Option<Reply> {
        self.send(cmd, data, sid, Corrupt::None);
        let r = self.recv()?;
        assert_eq!(r.msg_id, self.msg_id, "answer echoes the sequence id");
        Some(r)
    }

    /// Send an ECM section for `sid` and return the answer message.
    pub fn ecm(&mut self, section: &[u8], sid: u16) -> Vec<u8> {
        self.send_section(section, sid);
        let r = self.recv().expect("ECM answer");
        assert_eq!(r.msg_id, self.msg_id, "answer echoes the sequence id");
        r.msg
    }

    /// Whether the server has closed the connection (reads EOF within the timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}
