//! DVB SimulCrypt (ETSI TS 103 197), both sides of both interfaces castmux needs.
//!
//! - [`tlv`]: the generic message framing (bounded before anything is allocated);
//! - [`types`]: message, parameter and error_status values as enums;
//! - [`ecmg_messages`], [`emmg_messages`]: typed messages with their parameters checked;
//! - [`conn`]: whole messages off a TCP stream;
//! - [`access`]: how castmux reads access_criteria bytes (TVCAS/Astra nibbles or a mask);
//! - [`datagram`]: ECM/EMM datagrams as sections or TS packets;
//! - [`ecmg_server`]: the ECMG side (`castmux ecmg`), ECMs made by an [`EcmBuilder`];
//! - [`scs_client`]: the mux side, [`SimulcryptEcmg`] (an `EcmGenerator` that never blocks);
//! - [`mux_server`]: the MUX side of EMMG<->MUX, EMMs to the pipeline as an `EmmSource`,
//!   cloned to every subscribed pipeline (`emm_fanout`);
//! - [`emmg_client`]: the EMMG side (`castmux emmg`), paced at the allocated bandwidth.
//!
//! The control plane runs on tokio; the data path only ever reads what a control task has
//! prepared (an ECM ready for a crypto period, EMM packets in a bounded queue).

pub mod access;
pub mod builtin;
pub mod conn;
pub mod datagram;
pub mod ecmg_messages;
pub mod ecmg_server;
pub mod emm_fanout;
pub mod emmg_client;
pub mod emmg_messages;
pub mod mux_server;
pub mod scs_client;
pub mod tlv;
pub mod types;

pub use builtin::RingEcmBuilder;
pub use ecmg_messages::{ChannelStatus, CpCw, CwProvision, EcmgMessage};
pub use ecmg_server::{
    EcmBuildError, EcmBuildRequest, EcmBuilder, EcmgServer, EcmgServerConfig, EcmgServerStats,
};
pub use emmg_client::{run_emmg, EmmgConfig, EmmgPace, EmmgStats};
pub use emmg_messages::{ChannelIds, EmmgMessage, StreamIds};
pub use mux_server::{EmmMuxConfig, EmmMuxServer, EmmMuxStats, EmmQueueSource, EmmSubscribers};
pub use scs_client::{ScsConfig, ScsError, ScsStats, SimulcryptEcmg};
pub use tlv::{CodecError, MAX_MESSAGE_LEN};
pub use types::{EcmgErrorStatus, EcmgParam, EmmgErrorStatus, EmmgParam, MessageType};
