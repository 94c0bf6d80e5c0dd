//! HTTP-TS: the stream over plain HTTP/1.1, as Astra, VLC, ffmpeg and curl speak it.
//!
//! - [`server`]: the output, `http://ADDR:PORT/PATH`, a listener serving any number of
//!   clients (listeners shared by address across the process).
//! - [`client`]: the input, `http://HOST:PORT/PATH`, a GET on a thread of its own,
//!   connected again with a backoff when it ends.
//! - [`request`]: the request head parser of the listener (bounded, fuzzed).

pub mod client;
pub mod request;
pub mod server;

pub use client::HttpInput;
pub use server::{listener_stats, HttpOutput, ListenerSnapshot};
