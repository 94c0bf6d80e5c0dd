//! The multiplex stages after scrambling, before the outputs: constant bitrate with PCR
//! restamping ([`cbr`]), packets dated by the stream's clock ([`dating`]) and the thread that sends it on its schedule ([`paced`]).

pub mod cbr;
pub mod dating;
pub mod paced;
