//! Inputs and outputs: UDP (unicast, multicast, SSM, RTP), SRT, HTTP-TS, files and
//! stdin/stdout.
//!
//! Design:
//! - The data path is plain OS threads. [`Input::read_batch`] and
//!   [`Output::write_batch`] never await; SRT runs its tokio runtime on a
//!   thread of its own and meets the data path through bounded channels of
//!   reused buffers. HTTP-TS works the same way: the input on a thread of its own, the
//!   output's clients on a small runtime of their own (see [`http`]).
//! - Packets move in [`PacketBatch`]es: one buffer per batch, allocated once,
//!   reused for every read. UDP receives up to 64 datagrams per recvmmsg and
//!   sends up to 64 per sendmmsg, falling back to one call per datagram when
//!   the kernel refuses the batched calls.
//! - Every byte stream (files, pipes, SRT, odd datagrams) goes through a
//!   [`Resync`]: packets split across reads are joined, garbage is dropped and
//!   counted. RTP-wrapped TS is detected per datagram and unwrapped.
//! - Inputs and outputs are enums (no `Box<dyn>` in the loop). Counters live
//!   in an [`IoStats`] of atomics that can be shared through an `Arc`.
//! - Several outputs of one run form an [`OutputSet`]: every output gets every
//!   packet; one that fails is closed and the others go on. The run loop writes
//!   to any [`PacketSink`] (an [`Output`] or an [`OutputSet`]).
//! - A live input returns [`ReadStatus::TimedOut`] when nothing arrived in
//!   time, so the caller can flush; files and stdin end with
//!   [`ReadStatus::EndOfStream`].

pub mod batch;
pub(crate) mod bridge;
pub mod error;
pub mod file;
pub mod http;
pub mod output_set;
pub mod private_file;
pub mod rtp;
pub mod sink;
pub mod source;
pub mod srt;
pub mod stats;
pub mod sync;
pub mod udp;
pub mod url;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use batch::{PacketBatch, TS_PACKET_SIZE, TS_SYNC_BYTE};
pub use error::{IoError, IoResult};
pub use output_set::{OutputSet, OutputStatus};
pub use sink::PacketSink;
pub use source::PacketSource;
pub use stats::{IoStats, IoStatsSnapshot};
pub use sync::Resync;
pub use url::{
    HttpInputUrl, HttpOutputUrl, InputUrl, OutputUrl, SrtMode, SrtUrl, UdpInputUrl, UdpOutputUrl,
    UrlError,
};

use file::{StreamInput, StreamOutput};
use http::{HttpInput, HttpOutput};
use srt::{SrtConfig, SrtInput, SrtOutput};
use udp::{UdpInput, UdpInputConfig, UdpOutput, UdpOutputConfig};

/// A poll() timeout for `wait`, rounded up to whole milliseconds so a 0.3 ms wait does not
/// become a busy loop (at most u16::MAX ms).
pub(crate) fn poll_timeout(wait: Duration) -> nix::poll::PollTimeout {
    u16::try_from(wait.as_micros().div_ceil(1000))
        .unwrap_or(u16::MAX)
        .into()
}

/// What one [`Input::read_batch`] call produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// This many packets are in the batch (at least one).
    Packets(usize),
    /// Nothing arrived within the timeout (live inputs, pipes): flush and call again.
    TimedOut,
    /// The file or pipe has ended; every packet has been returned.
    EndOfStream,
}

/// Settings for opening an input. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct InputOptions {
    /// Counters to update; share one `Arc` with an output to see both. Default: fresh.
    pub stats: Arc<IoStats>,
    /// UDP SO_RCVBUF request in bytes. Default 8 MiB (capped by net.core.rmem_max).
    pub udp_recv_buffer: usize,
    /// SRT tuning. Default [`SrtConfig::default`].
    pub srt: SrtConfig,
    /// Force one recv per datagram instead of recvmmsg (tests). Default false.
    #[doc(hidden)]
    pub force_single_syscalls: bool,
}

impl Default for InputOptions {
    fn default() -> Self {
        Self {
            stats: Arc::default(),
            udp_recv_buffer: 8 * 1024 * 1024,
            srt: SrtConfig::default(),
            force_single_syscalls: false,
        }
    }
}

/// Settings for opening an output. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct OutputOptions {
    /// Counters to update. Default: fresh.
    pub stats: Arc<IoStats>,
    /// UDP SO_SNDBUF request in bytes. Default 4 MiB.
    pub udp_send_buffer: usize,
    /// IP_MULTICAST_LOOP: local receivers of a group see our datagrams. Default on.
    pub multicast_loop: bool,
    /// SRT tuning. Default [`SrtConfig::default`].
    pub srt: SrtConfig,
    /// Force one send per datagram instead of sendmmsg (tests). Default false.
    #[doc(hidden)]
    pub force_single_syscalls: bool,
}

impl Default for OutputOptions {
    fn default() -> Self {
        Self {
            stats: Arc::default(),
            udp_send_buffer: 4 * 1024 * 1024,
            multicast_loop: true,
            srt: SrtConfig::default(),
            force_single_syscalls: false,
        }
    }
}

/// A source of TS packets.
#[derive(Debug)]
pub enum Input {
    Udp(UdpInput),
    Srt(SrtInput),
    Http(HttpInput),
    /// A file or stdin.
    Stream(StreamInput),
}

impl Input {
    /// Open `url`: bind/join UDP, connect or listen SRT, GET an HTTP stream, open the file
    /// or stdin.
    pub fn open(url: &InputUrl, opts: &InputOptions) -> IoResult<Self> {
        let stats = opts.stats.clone();
        Ok(match url {
            InputUrl::Udp(u) => {
                let cfg = UdpInputConfig {
                    recv_buffer: opts.udp_recv_buffer,
                    force_single: opts.force_single_syscalls,
                };
                Input::Udp(UdpInput::open(u, &cfg, stats)?)
            }
            InputUrl::Srt(u) => Input::Srt(SrtInput::open(u, &opts.srt, stats)?),
            InputUrl::Http(u) => Input::Http(HttpInput::open(u, stats)?),
            InputUrl::File(p) => Input::Stream(StreamInput::open_file(p, stats)?),
            InputUrl::Stdin => Input::Stream(StreamInput::stdin(stats)?),
        })
    }

    /// Clear `batch` and fill it with packets. Live inputs wait at most
    /// `timeout` for the first packet and then return what is ready; files
    /// fill the batch unless they end.
    pub fn read_batch(
        &mut self,
        batch: &mut PacketBatch,
        timeout: Duration,
    ) -> IoResult<ReadStatus> {
        match self {
            Input::Udp(i) => i.read_batch(batch, timeout),
            Input::Srt(i) => i.read_batch(batch, timeout),
            Input::Http(i) => i.read_batch(batch, timeout),
            Input::Stream(i) => i.read_batch(batch, timeout),
        }
    }

    /// The counters this input updates (shared: a monitor may hold them).
    pub fn stats(&self) -> &std::sync::Arc<IoStats> {
        match self {
            Input::Udp(i) => i.stats(),
            Input::Srt(i) => i.stats(),
            Input::Http(i) => i.stats(),
            Input::Stream(i) => i.stats(),
        }
    }

    /// Whether packets arrive in real time (UDP, SRT, HTTP) rather than as fast as
    /// they can be read (files, stdin).
    pub fn is_live(&self) -> bool {
        matches!(self, Input::Udp(_) | Input::Srt(_) | Input::Http(_))
    }

    /// The socket to wait on for a live UDP input (the head-end's data plane multiplexes
    /// these with epoll); None for other inputs.
    pub fn udp_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self {
            Input::Udp(i) => Some(i.as_fd()),
            _ => None,
        }
    }

    /// What to wait on for this input's packets: the UDP socket, or the eventfd an SRT or
    /// HTTP input's thread writes when bytes come; None for files and stdin.
    pub fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self {
            Input::Udp(i) => Some(i.as_fd()),
            Input::Srt(i) => Some(i.wake_fd()),
            Input::Http(i) => Some(i.wake_fd()),
            Input::Stream(_) => None,
        }
    }

    /// The bound UDP address, the SRT local (listener) / peer (caller) address, or the
    /// HTTP server's address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Input::Udp(i) => Some(i.local_addr()),
            Input::Srt(i) => Some(i.addr()),
            Input::Http(i) => Some(i.peer_addr()),
            Input::Stream(_) => None,
        }
    }
}

/// A destination for TS packets.
#[derive(Debug)]
pub enum Output {
    Udp(UdpOutput),
    Srt(SrtOutput),
    Http(HttpOutput),
    /// A file or stdout.
    Stream(StreamOutput),
}

impl Output {
    /// Open `url`: resolve and connect UDP, connect or listen SRT, serve an HTTP path,
    /// create the file.
    pub fn open(url: &OutputUrl, opts: &OutputOptions) -> IoResult<Self> {
        let stats = opts.stats.clone();
        Ok(match url {
            OutputUrl::Udp(u) => {
                let cfg = UdpOutputConfig {
                    send_buffer: opts.udp_send_buffer,
                    multicast_loop: opts.multicast_loop,
                    force_single: opts.force_single_syscalls,
                };
                Output::Udp(UdpOutput::open(u, &cfg, stats)?)
            }
            OutputUrl::Srt(u) => Output::Srt(SrtOutput::open(u, &opts.srt, stats)?),
            OutputUrl::Http(u) => Output::Http(HttpOutput::open(u, stats)?),
            OutputUrl::File(p) => Output::Stream(StreamOutput::create_file(p, stats)?),
            OutputUrl::Stdout => Output::Stream(StreamOutput::stdout(stats)?),
        })
    }

    /// Write whole packets (`bytes.len()` a multiple of 188). UDP may hold a
    /// tail of fewer than `pkt` packets until the next write or [`Output::flush`].
    pub fn write_batch(&mut self, bytes: &[u8]) -> IoResult<()> {
        if !bytes.chunks_exact(TS_PACKET_SIZE).remainder().is_empty() {
            return Err(IoError::PartialPacket {
                url: self.name(),
                len: bytes.len(),
            });
        }
        match self {
            Output::Udp(o) => o.write(bytes),
            Output::Srt(o) => o.write(bytes),
            Output::Http(o) => o.write(bytes),
            Output::Stream(o) => o.write(bytes),
        }
    }

    /// Write the packets of `batch`.
    pub fn write_packets(&mut self, batch: &PacketBatch) -> IoResult<()> {
        self.write_batch(batch.as_bytes())
    }

    /// UDP: gather `burst` datagrams per send, holding none past `max_hold`
    /// ([`UdpOutput::set_coalesce`]); other outputs write as they do.
    pub fn set_udp_coalesce(&mut self, burst: usize, max_hold: Duration) {
        if let Output::Udp(o) = self {
            o.set_coalesce(burst, max_hold);
        }
    }

    /// Send or write out anything held back (a short UDP datagram, the file buffer).
    pub fn flush(&mut self) -> IoResult<()> {
        match self {
            Output::Udp(o) => o.flush(),
            Output::Srt(_) => Ok(()),
            Output::Http(o) => o.flush(),
            Output::Stream(o) => o.flush(),
        }
    }

    /// Flush, then close: SRT sends what is queued and says goodbye (waiting
    /// at most `limit`).
    pub fn close(mut self, limit: Duration) -> IoResult<()> {
        let res = self.flush();
        if let Output::Srt(o) = &mut self {
            o.close(limit);
        }
        res
    }

    fn name(&self) -> String {
        match self {
            Output::Udp(o) => o.peer_addr().to_string(),
            Output::Srt(o) => o.addr().to_string(),
            Output::Http(o) => o.url().to_owned(),
            Output::Stream(_) => "file/stdout".to_owned(),
        }
    }
}
