//! castmux: a DVB scrambler, transport-stream muxer and conditional-access head-end.
//!
//! The modules follow the data path, one way:
//! `io` (inputs) -> `ts` (packets, PSI) -> `scramble` (crypto periods, CWs,
//! batches) -> `ts` (PSI rewrite, ECM/EMM insertion) -> `mux` (constant bitrate, PCR
//! restamping) -> `io` (outputs).
//! Beside it, the control plane's servers (`simulcrypt`, `softcard`, `http`) share `net`'s
//! accept loop.
#![forbid(unsafe_code)]

pub mod analyze;
pub mod cas;
pub mod headend;
pub mod http;
pub mod io;
pub mod loadtest;
pub mod mux;
pub mod net;
pub mod scramble;
pub mod simulcrypt;
pub mod softcard;
pub mod ts;
pub mod value;
