//! Reading whole messages off a byte stream: `frame_len` first (complete? bounded?), then the
//! frame. The buffer never holds more than one bounded message plus one read.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

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
