//! Errors of the newcamd codec, server and client.

use std::io;

/// What went wrong on a newcamd connection or in its configuration.
#[derive(Debug, thiserror::Error)]
pub enum NewcamdError {
    /// The configured DES key is not 28 hex digits.
    #[error("bad newcamd DES key: {0}")]
    BadDesKey(String),
    /// A user entry or users file is malformed.
    #[error("bad newcamd user configuration: {0}")]
    BadUsers(String),
    /// A frame's length prefix is over the protocol's bound (or under its minimum).
    #[error("newcamd frame length {0} is out of bounds (16..={max}, a multiple of 8); the peer is not speaking newcamd or uses another DES key", max = super::frame::MAX_FRAME_LEN - 2)]
    FrameLength(usize),
    /// The decrypted frame's XOR checksum is not zero: wrong DES key or corrupted data.
    #[error(
        "newcamd frame checksum mismatch: the peer uses another DES key (or the data is corrupt)"
    )]
    Checksum,
    /// The frame decrypted but its content is inconsistent.
    #[error("malformed newcamd frame: {0}")]
    Frame(&'static str),
    /// A message is too long to be framed.
    #[error("newcamd message of {0} bytes is too long to send (the protocol's frame is at most 400 bytes)")]
    MessageTooLong(usize),
    /// The peer sent a message that does not fit the protocol state.
    #[error("unexpected newcamd message 0x{got:02x} ({what})")]
    Unexpected { got: u8, what: &'static str },
    /// The server refused the login (MSG_CLIENT_2_SERVER_LOGIN_NAK).
    #[error("newcamd login refused for user '{0}': check the user name and password")]
    LoginRefused(String),
    /// The peer closed the connection.
    #[error("newcamd peer closed the connection{0}")]
    Closed(&'static str),
    /// No answer (or no request) within the allowed time.
    #[error("newcamd {0} timed out")]
    Timeout(&'static str),
    /// The answer's sequence number does not match the request's.
    #[error("newcamd answer has sequence id {got}, expected {want}")]
    Sequence { got: u16, want: u16 },
    /// Socket error.
    #[error("newcamd socket: {0}")]
    Io(#[from] io::Error),
}
