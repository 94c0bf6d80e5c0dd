//! The systemd notification protocol (sd_notify), spoken without libsystemd: datagrams of
//! `KEY=VALUE` lines to the socket named by `NOTIFY_SOCKET` (a path, or `@name` in the
//! abstract namespace). `READY=1` once the channels are up, `WATCHDOG=1` at half the
//! `WATCHDOG_USEC` the service manager asks for, `STOPPING=1` at the end. Without
//! `NOTIFY_SOCKET` every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// Where notifications go, if a service manager listens.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// Half the watchdog timeout, when the manager runs a watchdog for this process.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (the watchdog is ours only
    /// when the PID is unset or ours).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            } else {
                std::os::unix::net::SocketAddr::from_pathname(&path)
            };
            // never blocking: a manager that stops reading must not stall the supervisor
            let sock = UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s));
            match (sock, addr) {
                (Ok(sock), Ok(addr)) => Some((sock, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(socket = %path, error = %e, "NOTIFY_SOCKET cannot be used");
                    None
                }
            }
        });
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && ours && target.is_some())
            .map(|u| Duration::from_micros(u / 2));
        Notifier { target, watchdog }
    }

    /// Send `state` (newline-separated `KEY=VALUE`); a failure is logged, never fatal.
    pub fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                tracing::debug!(error = %e, "sd_notify send failed");
            }
        }
    }

    /// Whether a watchdog ping is due, the last having gone at `last`.
    pub fn watchdog_due(&self, last: Instant) -> bool {
        self.watchdog.is_some_and(|every| last.elapsed() >= every)
    }
}
