//! The slate: a TS file looped in real time, the last resort of a channel with backup
//! inputs when none is on air (a "technical difficulties" card, Astra's looped file).
//!
//! The file is read whole at open (bounded) and checked: whole packets, a PAT and a PMT, a
//! PCR to pace it by. While it is the active input a timerfd in the data plane's epoll set
//! wakes the channel every few milliseconds and the packets due by then go out, at the
//! file's own rate (from its PCRs); while it is not, the timer is disarmed and it costs
//! nothing.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use super::judge::{Judge, JudgeLimits};
use crate::io::{IoError, IoStats};
use crate::ts::packet::{Packet, PACKET_SIZE};
use crate::ts::PacketRef;

/// The largest slate file read into memory.
pub const MAX_SLATE_BYTES: u64 = 64 << 20;
/// How often the timer wakes the channel while the slate is on air.
const TICK: Duration = Duration::from_millis(5);

/// A looped file.
#[derive(Debug)]
pub struct Slate {
    pub display: String,
    data: Vec<u8>,
    pos: usize,
    /// Bytes a second, from the file's PCRs.
    rate: u64,
    /// When it went on air, and the bytes sent since.
    started: Option<Instant>,
    sent: u64,
    timer: TimerFd,
    pub judge: Judge,
    pub stats: Arc<IoStats>,
}

impl Slate {
    /// Read and check `path`.
    pub fn open(path: &Path, limits: &JudgeLimits) -> Result<Slate, IoError> {
        let display = format!("slate:{}", path.display());
        let bad = |reason: String| IoError::Closed {
            url: display.clone(),
            reason,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| bad(format!("cannot read the slate file: {e}")))?
            .len();
        if len > MAX_SLATE_BYTES {
            return Err(bad(format!(
                "the slate is {len} bytes; at most {MAX_SLATE_BYTES} (a loop of a few seconds is enough)"
            )));
        }
        let data =
            std::fs::read(path).map_err(|e| bad(format!("cannot read the slate file: {e}")))?;
        if data.is_empty()
            || data.len() % PACKET_SIZE != 0
            || data.chunks(PACKET_SIZE).any(|p| p[0] != 0x47)
        {
            return Err(bad(
                "the slate is not whole 188-byte TS packets (give an MPEG-TS file, e.g. ffmpeg … -f mpegts)".to_owned(),
            ));
        }
        let rate = pcr_rate(&data).ok_or_else(|| {
            bad(
                "the slate has no two PCRs to pace it by (give a file with video or a PCR PID)"
                    .to_owned(),
            )
        })?;
        // its PAT and PMT must be there: the judge reads it once
        let mut judge = Judge::new();
        let now = Instant::now();
        for p in data.chunks_exact(PACKET_SIZE) {
            if let Ok(p) = <&Packet>::try_from(p) {
                judge.observe(p, now, limits);
            }
        }
        if !judge.psi_known() {
            return Err(bad("the slate has no PAT and PMT".to_owned()));
        }
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(|e| bad(format!("timerfd: {e}")))?;
        Ok(Slate {
            display,
            data,
            pos: 0,
            rate,
            started: None,
            sent: 0,
            timer,
            judge: Judge::new(),
            stats: Arc::default(),
        })
    }

    /// The timer to wait on.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.timer.as_fd()
    }

    /// On air from `now`: the timer runs.
    pub fn start(&mut self, now: Instant) {
        self.started = Some(now);
        self.sent = 0;
        let tick = TimeSpec::from_duration(TICK);
        if let Err(e) = self
            .timer
            .set(Expiration::Interval(tick), TimerSetTimeFlags::empty())
        {
            tracing::error!(error = %e, "the slate's timer cannot be armed");
        }
    }

    /// Off air: the timer stops.
    pub fn stop(&mut self) {
        self.started = None;
        let _ = self.timer.unset();
        self.clear_timer();
    }

    fn clear_timer(&self) {
        let mut buf = [0u8; 8];
        // nonblocking: nothing to read just means no tick since the last one
        let _ = nix::unistd::read(self.timer.as_fd().as_raw_fd(), &mut buf);
    }

    /// Give `f` the packets due by `now` (at most `max`) with the slate's judge, looping at
    /// the end; `f` is told when the file starts over before a packet.
    pub fn take(&mut self, now: Instant, max: usize, mut f: impl FnMut(&Packet, bool, &mut Judge)) {
        self.clear_timer();
        let Some(start) = self.started else {
            return;
        };
        let due = (now.duration_since(start).as_secs_f64() * self.rate as f64) as u64;
        let n = (due.saturating_sub(self.sent) / PACKET_SIZE as u64).min(max as u64);
        IoStats::add(&self.stats.packets_in, n);
        IoStats::add(&self.stats.bytes_in, n * PACKET_SIZE as u64);
        for _ in 0..n {
            let wrapped = self.pos >= self.data.len();
            if wrapped {
                self.pos = 0;
            }
            let p: &Packet = match self.data[self.pos..self.pos + PACKET_SIZE].try_into() {
                Ok(p) => p,
                Err(_) => return,
            };
            f(p, wrapped, &mut self.judge);
            self.pos += PACKET_SIZE;
            self.sent += PACKET_SIZE as u64;
        }
    }
}

/// Bytes a second of `data`, from the first and last PCR of its first PCR PID.
fn pcr_rate(data: &[u8]) -> Option<u64> {
    let mut first: Option<(u16, usize, u64)> = None;
    let mut last: Option<(usize, u64)> = None;
    for (k, p) in data.chunks_exact(PACKET_SIZE).enumerate() {
        let p: &Packet = p.try_into().ok()?;
        let r = PacketRef::new(p);
        let Some(pcr) = r.pcr() else {
            continue;
        };
        let pid = r.pid().value();
        match first {
            None => first = Some((pid, k, pcr)),
            Some((fpid, _, _)) if fpid == pid => last = Some((k, pcr)),
            _ => {}
        }
    }
    let ((_, k0, pcr0), (k1, pcr1)) = (first?, last?);
    let ticks = pcr1.checked_sub(pcr0).filter(|t| *t > 0)?;
    let bytes = ((k1 - k0) * PACKET_SIZE) as u64;
    Some((bytes as u128 * 27_000_000 / u128::from(ticks)) as u64).filter(|r| *r > 0)
}
