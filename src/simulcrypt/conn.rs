//! Whole messages on a TCP stream, both ways, for every client and server of both interfaces.
//!
//! Reading is `frame_len` first (complete? bounded?), then the frame: the buffer never holds
//! more than one bounded message plus one read. Writing encodes into one buffer reused
//! between messages and wiped after each (a CW_provision carries control words).
//! [`connect`] opens a client link: TCP within a time limit, Nagle off, split in two.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::ecmg_messages::EcmgMessage;
use super::emmg_messages::EmmgMessage;
use super::tlv::{frame_len, CodecError, HEADER_LEN, MAX_MESSAGE_LEN};

/// Why a connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent a message that cannot be framed (too long): the stream is lost.
    #[error("{0}")]
    Codec(#[from] CodecError),
    /// The peer closed in the middle of a message.
    #[error("the peer closed the connection in the middle of a message")]
    Truncated,
    /// Nothing came in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The peer said something that ends the link (error message, wrong answer).
    #[error("{0}")]
    Peer(String),
}

/// Splits a byte stream into messages.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `inner`.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(4096),
        }
    }

    /// The next whole message, `Ok(None)` on a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Bytes>, LinkError> {
        loop {
            if let Some(n) = frame_len(&self.buf)? {
                return Ok(Some(self.buf.split_to(n).freeze()));
            }
            // never more than one bounded message plus one read in memory
            debug_assert!(self.buf.len() <= HEADER_LEN + MAX_MESSAGE_LEN);
            self.buf.reserve(4096);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(LinkError::Truncated)
                };
            }
        }
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// The next whole message within `timeout`; the end of the stream is an error here
    /// (`peer` names the other side, `what` the message waited for).
    pub async fn expect(
        &mut self,
        timeout: Duration,
        peer: &str,
        what: &'static str,
    ) -> Result<Bytes, LinkError> {
        tokio::time::timeout(timeout, self.next())
            .await
            .map_err(|_| LinkError::Timeout(what))??
            .ok_or_else(|| LinkError::Peer(format!("{peer} closed before sending {what}")))
    }
}

/// A message of either interface that can be written.
pub trait Encode {
    /// Append the message to `out` in protocol `version`.
    fn encode_to(&self, version: u8, out: &mut Vec<u8>) -> Result<(), CodecError>;
}

impl Encode for EcmgMessage {
    fn encode_to(&self, version: u8, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.encode(version, out)
    }
}

impl Encode for EmmgMessage {
    fn encode_to(&self, version: u8, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.encode(version, out)
    }
}

/// Writes whole messages, one `write_all` each.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer over `inner`.
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buf: Vec::with_capacity(256),
        }
    }

    /// Encode `m` in `version` and write it. The buffer is wiped afterwards: it may have held
    /// control words.
    pub async fn send(&mut self, version: u8, m: &impl Encode) -> Result<(), LinkError> {
        self.buf.clear();
        m.encode_to(version, &mut self.buf)?;
        let res = self.inner.write_all(&self.buf).await;
        self.buf.fill(0);
        res.map_err(LinkError::Io)
    }

    /// Write bytes as they are (a test peer's garbage, a pre-encoded message).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.inner.write_all(bytes).await.map_err(LinkError::Io)
    }
}

/// Connect to `addr` within `timeout` (`what` names the peer in the error), Nagle off (one
/// message is one small write that must leave at once), and split the stream into a reader
/// and a writer of whole messages.
pub async fn connect(
    addr: &str,
    timeout: Duration,
    what: &'static str,
) -> Result<(FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>), LinkError> {
    let sock = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| LinkError::Timeout(what))??;
    let _ = sock.set_nodelay(true);
    let (rd, wr) = sock.into_split();
    Ok((FrameReader::new(rd), FrameWriter::new(wr)))
}
