//! DVB SimulCrypt (ETSI TS 103 197), both sides of both interfaces castmux needs.
//!
//! - [`tlv`]: the generic message framing (bounded before anything is allocated);
//! - [`types`]: message, parameter and error_status values as enums;
//! - [`ecmg_messages`], [`emmg_messages`]: typed messages with their parameters checked.
//!
//! The control plane runs on tokio; the data path only ever reads what a control task has
//! prepared (an ECM ready for a crypto period, EMM packets in a bounded queue).

pub mod ecmg_messages;
pub mod emmg_messages;
pub mod tlv;
pub mod types;

pub use ecmg_messages::{ChannelStatus, CpCw, CwProvision, EcmgMessage};
pub use emmg_messages::{ChannelIds, EmmgMessage, StreamIds};
pub use tlv::{CodecError, MAX_MESSAGE_LEN};
pub use types::{EcmgErrorStatus, EcmgParam, EmmgErrorStatus, EmmgParam, MessageType};
