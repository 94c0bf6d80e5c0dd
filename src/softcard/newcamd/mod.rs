//! The newcamd protocol (cardserver v5.25 framing) on both sides: the card server that
//! lets OSCam, tvheadend or `softcard play --newcamd` use a castmux card, and a client.
//!
//! Wire facts followed here (the protocol document, and what OSCam's server sends and
//! its client expects):
//! - the server opens with 14 random bytes; the login key is the configured 14-byte key
//!   XOR those bytes, spread to a 16-byte 3DES-EDE2 key;
//! - the login carries the user name and `crypt(password, "$1$abcdefgh$")`; the session
//!   key is the configured key XOR that string (cycled over 14 bytes);
//! - frames are 3DES-CBC with a random IV appended, an XOR checksum and padding
//!   ([`frame`]); a frame is at most 400 bytes;
//! - an ECM answer is the ECM's table id with a 16-byte body (even CW, then odd), or an
//!   empty body when the card refused; an EMM answer sets bit 4 of byte 2 when accepted.

pub mod backend;
pub mod client;
mod conn;
pub mod crypto;
pub mod error;
pub mod frame;
pub mod limits;
pub mod messages;
pub mod server;
mod soft_backend;
pub mod stats;
pub mod users;

pub use backend::{CardBackend, EcmRefusal, EcmStamp, EmmResult};
pub use client::NewcamdClient;
pub use crypto::DesKey14;
pub use error::NewcamdError;
pub use messages::{CardData, CwPair};
pub use server::{NewcamdServer, ServerConfig};
pub use soft_backend::SoftCardBackend;
pub use stats::StatsSnapshot;
pub use users::{User, Users};
