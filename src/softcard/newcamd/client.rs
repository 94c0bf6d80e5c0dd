//! A newcamd client: connect, log in, read the card data, then ask for CWs, send EMMs
//! and keep the connection alive. Used by `softcard play --newcamd` and the tests.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, ToSocketAddrs};
use tracing::debug;

use super::conn::{read_frame, write_frame};
use super::crypto::{crypt_password, DesKey14, FrameKey, DES_KEY_LEN};
use super::error::NewcamdError;
use super::frame::{FrameHeader, Message};
use super::messages::{self as msgs, CardData, CwPair, Login};

/// Answers with another sequence id (late answers to timed-out requests) skipped at most.
const MAX_STALE_ANSWERS: usize = 8;

/// A logged-in newcamd session with one card.
pub struct NewcamdClient {
    stream: TcpStream,
    key: FrameKey,
    msg_id: u16,
    card: CardData,
    timeout: Duration,
}

impl std::fmt::Debug for NewcamdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewcamdClient")
            .field("card", &self.card)
            .field("msg_id", &self.msg_id)
            .finish_non_exhaustive()
    }
}

impl NewcamdClient {
    /// Connect to `addr`, log in as `user` and read the card data. Every step must
    /// finish within `timeout`.
    pub async fn connect(
        addr: impl ToSocketAddrs,
        user: &str,
        password: &str,
        des_key: &DesKey14,
        timeout: Duration,
    ) -> Result<NewcamdClient, NewcamdError> {
        let mut stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| NewcamdError::Timeout("connect"))??;
        let _ = stream.set_nodelay(true);
        let mut nonce = [0u8; DES_KEY_LEN];
        tokio::time::timeout(timeout, stream.read_exact(&mut nonce))
            .await
            .map_err(|_| NewcamdError::Timeout("waiting for the server's 14 bytes"))?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => NewcamdError::Closed(" before login"),
                _ => NewcamdError::Io(e),
            })?;
        let crypted = crypt_password(password);
        let login = Login {
            user: user.to_owned(),
            crypt_password: crypted.clone(),
        }
        .encode()?;
        let mut client = NewcamdClient {
            stream,
            key: des_key.login_key(&nonce),
            msg_id: 0,
            card: CardData {
                user_id: 0,
                caid: 0,
                serial: 0,
                providers: Vec::new(),
            },
            timeout,
        };
        let answer = match client.request(0, &login).await {
            // a server that cannot decrypt the login closes the connection
            Err(NewcamdError::Closed(_)) => {
                return Err(NewcamdError::Closed(" after the login (wrong DES key?)"))
            }
            other => other?,
        };
        match answer.tag() {
            msgs::MSG_CLIENT_2_SERVER_LOGIN_ACK => {}
            msgs::MSG_CLIENT_2_SERVER_LOGIN_NAK => {
                return Err(NewcamdError::LoginRefused(user.to_owned()))
            }
            got => {
                return Err(NewcamdError::Unexpected {
                    got,
                    what: "expected login ACK or NAK",
                })
            }
        }
        client.key = des_key.session_key(crypted.as_bytes());
        let cd = client
            .request(0, &Message::new(msgs::MSG_CARD_DATA_REQ, 0, &[])?)
            .await?;
        client.card = CardData::parse(&cd)?;
        debug!(caid = client.card.caid, "newcamd client: logged in");
        Ok(client)
    }

    /// The card data the server sent after login.
    pub fn card_data(&self) -> &CardData {
        &self.card
    }

    /// Ask for the CWs of an ECM section (table id 0x80/0x81) of service `service_id`:
    /// `Some` even and odd CW, `None` when the card refused.
    pub async fn ecm(
        &mut self,
        service_id: u16,
        section: &[u8],
    ) -> Result<Option<CwPair>, NewcamdError> {
        let m = Message::from_bytes(section)?;
        if !msgs::is_ecm(m.tag()) {
            return Err(NewcamdError::Unexpected {
                got: m.tag(),
                what: "an ECM has table id 0x80 or 0x81",
            });
        }
        let answer = self.request(service_id, &m).await?;
        if answer.tag() != m.tag() {
            return Err(NewcamdError::Unexpected {
                got: answer.tag(),
                what: "ECM answer with another table id",
            });
        }
        msgs::parse_ecm_answer(&answer)
    }

    /// Send an EMM section (table id 0x82..=0x8f); `true` when the card accepted it.
    pub async fn emm(&mut self, section: &[u8]) -> Result<bool, NewcamdError> {
        let m = Message::from_bytes(section)?;
        if !msgs::is_emm(m.tag()) {
            return Err(NewcamdError::Unexpected {
                got: m.tag(),
                what: "an EMM has table id 0x82..=0x8f",
            });
        }
        let answer = self.request(0, &m).await?;
        Ok(answer.tag() == m.tag() && answer.flags() & msgs::EMM_ACCEPTED_FLAG != 0)
    }

    /// Send a keepalive and wait for its echo.
    pub async fn keepalive(&mut self) -> Result<(), NewcamdError> {
        let answer = self
            .request(0, &Message::new(msgs::MSG_KEEPALIVE, 0, &[])?)
            .await?;
        if answer.tag() != msgs::MSG_KEEPALIVE {
            return Err(NewcamdError::Unexpected {
                got: answer.tag(),
                what: "expected the keepalive echo",
            });
        }
        Ok(())
    }

    /// Send `msg` with the next sequence id and wait for the answer carrying it.
    async fn request(&mut self, service_id: u16, msg: &Message) -> Result<Message, NewcamdError> {
        self.msg_id = self.msg_id.wrapping_add(1);
        let hdr = FrameHeader {
            msg_id: self.msg_id,
            service_id,
            ..FrameHeader::default()
        };
        write_frame(&mut self.stream, &hdr, msg, &self.key).await?;
        let mut got = 0;
        for _ in 0..=MAX_STALE_ANSWERS {
            let (h, answer) =
                read_frame(&mut self.stream, &self.key, self.timeout, "newcamd answer").await?;
            if h.msg_id == self.msg_id {
                return Ok(answer);
            }
            got = h.msg_id;
            debug!(
                got,
                want = self.msg_id,
                "newcamd client: skipping a stale answer"
            );
        }
        Err(NewcamdError::Sequence {
            got,
            want: self.msg_id,
        })
    }
}
