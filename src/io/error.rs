//! The I/O error type.

use std::net::SocketAddr;

use super::url::UrlError;

impl IoError {
    /// stdout's reader went away (EPIPE on `-o -`, as in `castmux descramble -o - | head`):
    /// the end the pipeline chose, which a command may treat as a normal end.
    pub fn is_stdout_closed(&self) -> bool {
        matches!(self, IoError::Closed { url, .. } if url == super::file::STDOUT_NAME)
    }
}

/// Everything that can go wrong opening, reading or writing an input or output.
///
/// Each message names the URL (or path) and says what to check.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error(transparent)]
    Url(#[from] UrlError),

    #[error("cannot open {url}: {source}; check that the path exists and is readable/writable")]
    Open {
        url: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "cannot resolve host `{host}` in {url}: {reason}; check the name or use an IP address"
    )]
    Resolve {
        url: String,
        host: String,
        reason: String,
    },

    #[error("cannot bind {addr} for {url}: {source}; is another program using the port, or is the address not local?")]
    Bind {
        url: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot join multicast group {group} for {url}: {source}; check iface= names a local interface with multicast enabled and that a route for the group exists")]
    Join {
        url: String,
        group: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot set {option} on the socket for {url}: {source}")]
    SocketOption {
        url: String,
        option: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{url}: interface `{iface}` not found; give an interface name (ip link) or index")]
    NoSuchInterface { url: String, iface: String },

    #[error("{url}: {what} is not supported: {hint}")]
    Unsupported {
        url: String,
        what: &'static str,
        hint: &'static str,
    },

    #[error("read from {url} failed: {source}")]
    Read {
        url: String,
        #[source]
        source: std::io::Error,
    },

    #[error("write to {url} failed: {source}; check free space and permissions")]
    Write {
        url: String,
        #[source]
        source: std::io::Error,
    },

    #[error("output {url} was closed by the reader ({reason}); start the receiver again, then restart castmux")]
    Closed { url: String, reason: String },

    #[error("SRT connection for {url} failed: {reason}; check that the peer runs, the mode (caller/listener) and the passphrase match")]
    SrtConnect { url: String, reason: String },

    #[error("SRT peer of {url} went away ({reason})")]
    SrtClosed { url: String, reason: String },

    #[error("{url}: the path {path} is already served on {addr} by another output; give each output its own path")]
    HttpPathTaken {
        url: String,
        addr: SocketAddr,
        path: String,
    },

    #[error("cannot fetch {url}: {reason}; check that the server runs and the URL is right")]
    HttpConnect { url: String, reason: String },

    #[error("{url}: the server answered {status} {reason}; check the path{hint}")]
    HttpStatus {
        url: String,
        status: u16,
        reason: String,
        /// More to check for some statuses (credentials for 401/403).
        hint: &'static str,
    },

    #[error("{url}: {what}; give the final URL instead")]
    HttpRedirect { url: String, what: String },

    #[error("{url}: a batch of {len} bytes is not whole 188-byte TS packets")]
    PartialPacket { url: String, len: usize },

    #[error("every one of the {count} outputs failed; the last: {last}")]
    AllOutputsFailed {
        count: usize,
        /// Shown in the message (not as a source, so chains print it once).
        last: Box<IoError>,
    },

    #[error("cannot start the I/O thread for {url}: {source}")]
    Thread {
        url: String,
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand for results in this module.
pub type IoResult<T> = Result<T, IoError>;
