//! Reading and writing newcamd frames on an async byte stream, with a read deadline
//! and the length bound checked before the body is read.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::crypto::FrameKey;
use super::error::NewcamdError;
use super::frame::{self, FrameHeader, Message, MAX_FRAME_LEN};

/// Fresh random IV and padding for one frame.
pub fn random_iv_pad() -> Result<[u8; 15], NewcamdError> {
    let mut b = [0u8; 15];
    getrandom::getrandom(&mut b)
        .map_err(|e| NewcamdError::Io(std::io::Error::other(e.to_string())))?;
    Ok(b)
}

/// Read exactly `buf.len()` bytes, or fail with `Closed` on a clean end of stream.
async fn read_full<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> Result<(), NewcamdError> {
    match s.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(NewcamdError::Closed("")),
        Err(e) => Err(NewcamdError::Io(e)),
    }
}

/// Read one frame within `deadline` and decrypt it with `key`.
pub async fn read_frame<S: AsyncRead + Unpin>(
    s: &mut S,
    key: &FrameKey,
    deadline: Duration,
    what: &'static str,
) -> Result<(FrameHeader, Message), NewcamdError> {
    let fut = async {
        let mut prefix = [0u8; 2];
        read_full(s, &mut prefix).await?;
        let len = frame::check_prefix(prefix)?;
        let mut body = [0u8; MAX_FRAME_LEN];
        read_full(s, &mut body[..len]).await?;
        frame::open(&mut body[..len], key)
    };
    tokio::time::timeout(deadline, fut)
        .await
        .map_err(|_| NewcamdError::Timeout(what))?
}

/// Encrypt and write one frame.
pub async fn write_frame<S: AsyncWrite + Unpin>(
    s: &mut S,
    header: &FrameHeader,
    msg: &Message,
    key: &FrameKey,
) -> Result<(), NewcamdError> {
    let buf = frame::seal(header, msg, key, &random_iv_pad()?)?;
    s.write_all(&buf).await?;
    Ok(())
}
