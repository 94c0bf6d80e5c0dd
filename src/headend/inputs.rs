//! A channel's input: one input, or a primary with backup inputs (Astra's `#backup`) of
//! which the one judged on air is taken.
//!
//! Every input of the list is read all the time (a standby's packets are judged, then
//! dropped), so the choice rests on what each one carries now ([`super::judge`]). The
//! active input going off air hands over, after the start delay, to the first input on air
//! in the list's order; a higher input back on air for the return delay takes over again.
//! The API can pin an input (manual) or give the choice back (auto). What goes on is one
//! continuous stream in the channel's own numbering ([`super::renumber`]). Switches are
//! counted and logged.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags};

use super::judge::{Judge, JudgeLimits};
use super::mpts::{Mpts, MptsShared};
use super::renumber::Renumber;
use super::slate::Slate;
use crate::io::{
    Input, InputOptions, InputUrl, IoError, IoResult, IoStats, IoStatsSnapshot, PacketBatch,
    PacketSource, ReadStatus,
};

/// `InputsShared::request`: nothing asked.
const NO_REQUEST: usize = usize::MAX;
/// `InputsShared::request`: back to the automatic choice.
const AUTO: usize = usize::MAX - 1;
/// Inputs of a channel: the primary, its backups and the slate.
pub const MAX_INPUTS: usize = super::spec::MAX_BACKUPS + 2;
/// Packets kept free in the caller's batch for the PSI we regenerate.
const PSI_ROOM: usize = 16;

/// How the inputs are chosen (the spec's `backup_*` and `input_*` settings).
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub limits: JudgeLimits,
    /// The active input off air this long: the next one on air takes over.
    pub start_delay: Duration,
    /// A higher input on air this long takes over again.
    pub return_delay: Duration,
}

/// What a channel's inputs show the status API and `/metrics`, and how the API asks for a
/// switch (read by the data path when it next reads; it never waits on this).
#[derive(Debug)]
pub struct InputsShared {
    /// The inputs as logs show them (secrets masked), in priority order.
    pub urls: Vec<String>,
    /// Each input's own counters.
    pub stats: Vec<Arc<IoStats>>,
    /// Index of the input in use.
    pub active: AtomicUsize,
    /// Whether each input is judged on air.
    pub on_air: Vec<AtomicBool>,
    /// Input switches (automatic and manual).
    pub switches: AtomicU64,
    /// Packets of the active input with no place in the channel's numbering.
    pub dropped: AtomicU64,
    /// An input is pinned from the API.
    pub manual: AtomicBool,
    request: AtomicUsize,
}

impl InputsShared {
    /// Pin input `index`, or (None) give the choice back to the judges.
    pub fn request(&self, index: Option<usize>) -> Result<(), String> {
        match index {
            Some(k) if k >= self.urls.len() => Err(format!(
                "input {k} does not exist; the channel has inputs 0 to {}",
                self.urls.len() - 1
            )),
            Some(k) => {
                self.request.store(k, Relaxed);
                Ok(())
            }
            None => {
                self.request.store(AUTO, Relaxed);
                Ok(())
            }
        }
    }
}

/// The input side of a channel.
#[derive(Debug)]
pub enum ChannelInput {
    One(Input),
    Backup(Box<Failover>),
    /// An MPTS made of several inputs' programs.
    Mpts(Box<Mpts>),
}

impl ChannelInput {
    /// Open `urls` (the first is the primary); more than one needs `opts`. Backups are UDP
    /// inputs, which the data plane serves.
    pub fn open(
        urls: &[InputUrl],
        slate: Option<&Path>,
        opts: Option<BackupOptions>,
        batch_packets: usize,
    ) -> Result<ChannelInput, IoError> {
        let open = |u: &InputUrl| Input::open(u, &InputOptions::default());
        match (urls, opts) {
            ([one], _) if slate.is_none() => Ok(ChannelInput::One(open(one)?)),
            ([one, ..], None) => Ok(ChannelInput::One(open(one)?)),
            ([], _) => Err(IoError::Closed {
                url: String::new(),
                reason: "no input".to_owned(),
            }),
            (all, Some(opts)) => {
                let mut members = Vec::with_capacity(all.len());
                for u in all {
                    let input = open(u)?;
                    let seen = input.stats().snapshot();
                    members.push(Member {
                        input,
                        judge: Judge::new(),
                        seen,
                    });
                }
                let slate = slate
                    .map(|p| Slate::open(p, &opts.limits).map(Box::new))
                    .transpose()?;
                let mut urls: Vec<String> = all.iter().map(InputUrl::display).collect();
                let mut stats: Vec<Arc<IoStats>> = members
                    .iter()
                    .map(|m| Arc::clone(m.input.stats()))
                    .collect();
                if let Some(s) = &slate {
                    urls.push(s.display.clone());
                    stats.push(Arc::clone(&s.stats));
                }
                let shared = Arc::new(InputsShared {
                    on_air: urls.iter().map(|_| AtomicBool::new(false)).collect(),
                    urls,
                    stats,
                    active: AtomicUsize::new(0),
                    switches: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                    manual: AtomicBool::new(false),
                    request: AtomicUsize::new(NO_REQUEST),
                });
                Ok(ChannelInput::Backup(Box::new(Failover {
                    members,
                    slate,
                    active: 0,
                    opts,
                    renumber: Renumber::new(),
                    scratch: PacketBatch::with_capacity(
                        batch_packets.saturating_sub(PSI_ROOM).max(1),
                    ),
                    shared,
                    stats: Arc::default(),
                    more: false,
                    off_since: None,
                    manual: None,
                })))
            }
        }
    }

    /// The sockets to wait on (the data plane's epoll set): every input's.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            ChannelInput::One(i) => i.udp_fd().into_iter().collect(),
            ChannelInput::Backup(f) => f
                .members
                .iter()
                .filter_map(|m| m.input.wake_fd())
                .chain(f.slate.as_ref().map(|s| s.fd()))
                .collect(),
            ChannelInput::Mpts(m) => m.fds(),
        }
    }

    /// Whether the shared data plane can serve it: a UDP input, or inputs with backups
    /// that all have something to wait on (UDP sockets, SRT and HTTP inputs' eventfds).
    pub fn plane_served(&self) -> bool {
        match self {
            ChannelInput::One(i) => matches!(i, Input::Udp(_)),
            ChannelInput::Backup(f) => f.members.iter().all(|m| m.input.wake_fd().is_some()),
            ChannelInput::Mpts(m) => m.plane_served(),
        }
    }

    /// Whether the last read left packets queued inside the input (read again before
    /// waiting); a read that filled its batch may have left more too, which the caller sees.
    pub fn more_pending(&self) -> bool {
        match self {
            ChannelInput::One(_) => false,
            ChannelInput::Backup(f) => f.more,
            ChannelInput::Mpts(m) => m.more(),
        }
    }

    /// Judge the inputs on the clock alone (no packet came): a silent input goes off air.
    pub fn tick(&mut self, now: Instant) {
        if let ChannelInput::Backup(f) = self {
            f.decide(now);
        }
    }

    /// The inputs' shared view (a channel with backups).
    pub fn shared(&self) -> Option<Arc<InputsShared>> {
        match self {
            ChannelInput::One(_) | ChannelInput::Mpts(_) => None,
            ChannelInput::Backup(f) => Some(Arc::clone(&f.shared)),
        }
    }

    /// An MPTS channel's counters.
    pub fn mpts_shared(&self) -> Option<Arc<MptsShared>> {
        match self {
            ChannelInput::Mpts(m) => Some(m.shared()),
            _ => None,
        }
    }
}

impl PacketSource for ChannelInput {
    fn read_batch(&mut self, batch: &mut PacketBatch, timeout: Duration) -> IoResult<ReadStatus> {
        match self {
            ChannelInput::One(i) => i.read_batch(batch, timeout),
            ChannelInput::Backup(f) => f.read_batch(batch, timeout),
            ChannelInput::Mpts(m) => m.read_batch(batch, timeout),
        }
    }

    fn stats(&self) -> &Arc<IoStats> {
        match self {
            ChannelInput::One(i) => i.stats(),
            ChannelInput::Backup(f) => &f.stats,
            ChannelInput::Mpts(m) => m.stats(),
        }
    }

    fn is_live(&self) -> bool {
        match self {
            ChannelInput::One(i) => i.is_live(),
            ChannelInput::Backup(_) | ChannelInput::Mpts(_) => true,
        }
    }
}

#[derive(Debug)]
struct Member {
    input: Input,
    judge: Judge,
    /// Its counters as last accounted (the channel's counters take the active one's).
    seen: IoStatsSnapshot,
}

/// A primary input and its backups.
#[derive(Debug)]
pub struct Failover {
    members: Vec<Member>,
    /// The last resort, after the members (index `members.len()`).
    slate: Option<Box<Slate>>,
    active: usize,
    opts: BackupOptions,
    renumber: Renumber,
    scratch: PacketBatch,
    shared: Arc<InputsShared>,
    /// What the channel took: the active input's share of the inputs' counters.
    stats: Arc<IoStats>,
    more: bool,
    /// Since when the active input is off air.
    off_since: Option<Instant>,
    manual: Option<usize>,
}

impl Failover {
    fn read_batch(&mut self, batch: &mut PacketBatch, timeout: Duration) -> IoResult<ReadStatus> {
        batch.clear();
        self.more = false;
        self.round(batch, Instant::now())?;
        if batch.is_empty() && !timeout.is_zero() {
            // a run loop of its own: wait on every input at once
            let fds = self
                .members
                .iter()
                .filter_map(|m| m.input.wake_fd())
                .chain(self.slate.as_ref().map(|s| s.fd()));
            wait_any(fds, timeout, &self.shared.urls)?;
            self.round(batch, Instant::now())?;
        }
        if batch.is_empty() {
            return Ok(ReadStatus::TimedOut);
        }
        IoStats::add(&self.stats.packets_in, batch.len() as u64);
        Ok(ReadStatus::Packets(batch.len()))
    }

    /// Read what every input holds: the standbys' packets are judged and dropped, the
    /// active one's go into `batch`, renumbered.
    fn round(&mut self, batch: &mut PacketBatch, now: Instant) -> IoResult<()> {
        for k in 0..self.members.len() {
            if k != self.active {
                self.drain_standby(k, now);
            }
        }
        self.decide(now);
        let a = self.active;
        let room = batch.remaining().saturating_sub(PSI_ROOM).max(1);
        if a == self.members.len() {
            let Failover {
                slate,
                renumber,
                opts,
                ..
            } = self;
            if let Some(sl) = slate {
                let before = batch.len();
                sl.take(now, room, |p, wrapped, judge| {
                    if wrapped {
                        // the loop starts over: counters continue, a new time base
                        renumber.switch(a);
                    }
                    let ended = judge.observe(p, now, &opts.limits);
                    renumber.process(p, ended, judge, batch);
                });
                IoStats::add(
                    &self.stats.bytes_in,
                    ((batch.len() - before) * crate::ts::packet::PACKET_SIZE) as u64,
                );
            }
            self.shared.dropped.store(self.renumber.dropped, Relaxed);
            return Ok(());
        }
        let Failover {
            members,
            renumber,
            scratch,
            opts,
            ..
        } = self;
        let m = &mut members[a];
        if let ReadStatus::Packets(_) = m.input.read_batch(scratch, Duration::ZERO)? {
            for (n, pkt) in scratch.packets().iter().enumerate() {
                if n >= room {
                    // (cannot happen: the scratch batch is smaller than the caller's)
                    renumber.dropped += 1;
                    continue;
                }
                let ended = m.judge.observe(pkt, now, &opts.limits);
                renumber.process(pkt, ended, &m.judge, batch);
            }
            self.more = scratch.is_full();
        }
        self.account(a);
        self.shared.dropped.store(self.renumber.dropped, Relaxed);
        Ok(())
    }

    /// Read and judge everything a standby input holds.
    fn drain_standby(&mut self, k: usize, now: Instant) {
        let Failover {
            members,
            scratch,
            opts,
            ..
        } = self;
        let m = &mut members[k];
        loop {
            match m.input.read_batch(scratch, Duration::ZERO) {
                Ok(ReadStatus::Packets(_)) => {
                    for pkt in scratch.packets() {
                        m.judge.observe(pkt, now, &opts.limits);
                    }
                    if !scratch.is_full() {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    // a standby's socket error does not stop the channel: it is off air
                    tracing::debug!(input = %self.shared.urls[k], error = %e, "standby input");
                    break;
                }
            }
        }
    }

    /// Add what input `a` received since it was last accounted to the channel's counters.
    fn account(&mut self, a: usize) {
        let m = &mut self.members[a];
        account(&self.stats, m.input.stats(), &mut m.seen);
    }

    /// Judge every input and switch if the rules say so.
    fn decide(&mut self, now: Instant) {
        let limits = &self.opts.limits;
        let n = self.members.len();
        // members first, then the slate (on air by construction)
        let mut on = [false; MAX_INPUTS];
        for (k, m) in self.members.iter_mut().enumerate() {
            on[k] = m.judge.on_air(now, limits);
            self.shared.on_air[k].store(on[k], Relaxed);
        }
        if self.slate.is_some() {
            on[n] = true;
            self.shared.on_air[n].store(true, Relaxed);
        }
        let inputs = self.shared.urls.len();
        match self.shared.request.swap(NO_REQUEST, Relaxed) {
            NO_REQUEST => {}
            AUTO => {
                if self.manual.take().is_some() {
                    tracing::info!("input choice back to automatic");
                }
                self.shared.manual.store(false, Relaxed);
            }
            k if k < inputs => {
                self.manual = Some(k);
                self.shared.manual.store(true, Relaxed);
                if k != self.active {
                    self.switch(k, "asked for over the API", now);
                }
            }
            _ => {}
        }
        if self.manual.is_some() {
            return;
        }
        let on_slate = self.active == n;
        if on[self.active] {
            self.off_since = None;
            // a higher input back on air for the return delay; off the slate at once
            let back = (0..self.active).find(|&k| {
                on[k]
                    && (on_slate || self.members[k].judge.on_air_for(now) >= self.opts.return_delay)
            });
            if let Some(k) = back {
                self.switch(k, "a higher input is back on air", now);
            }
            return;
        }
        let since = *self.off_since.get_or_insert(now);
        if now.duration_since(since) < self.opts.start_delay {
            return;
        }
        if let Some(k) = (0..inputs).find(|&k| k != self.active && on[k]) {
            let why = if k == n {
                "no input is on air: the slate"
            } else {
                "the active input is off air"
            };
            self.switch(k, why, now);
        }
    }

    fn switch(&mut self, to: usize, why: &str, now: Instant) {
        let from = self.active;
        tracing::warn!(
            from = %self.shared.urls[from],
            to = %self.shared.urls[to],
            why,
            "input switched"
        );
        let n = self.members.len();
        if let Some(s) = &mut self.slate {
            if from == n {
                s.stop();
            }
            if to == n {
                s.start(now);
            }
        }
        self.active = to;
        self.off_since = None;
        self.renumber.switch(to);
        // its counters count for the channel from now on
        if let Some(m) = self.members.get_mut(to) {
            m.seen = m.input.stats().snapshot();
        }
        self.shared.active.store(to, Relaxed);
        self.shared.switches.fetch_add(1, Relaxed);
    }
}

/// Add what an input's counters `input` gained since `seen` to a channel's counters `into`
/// (the channel counts what it took from its inputs), and move `seen` on.
pub(super) fn account(into: &IoStats, input: &IoStats, seen: &mut IoStatsSnapshot) {
    let now = input.snapshot();
    let was = std::mem::replace(seen, now);
    let s = into;
    for (counter, now, was) in [
        (&s.datagrams_in, now.datagrams_in, was.datagrams_in),
        (&s.bytes_in, now.bytes_in, was.bytes_in),
        (&s.sync_losses, now.sync_losses, was.sync_losses),
        (&s.dropped_bytes, now.dropped_bytes, was.dropped_bytes),
        (&s.rtp_gaps, now.rtp_gaps, was.rtp_gaps),
        (
            &s.truncated_datagrams,
            now.truncated_datagrams,
            was.truncated_datagrams,
        ),
    ] {
        IoStats::add(counter, now.saturating_sub(was));
    }
}

/// Wait at most `timeout` for any of `fds` to be readable (a source of several inputs run
/// on a loop of its own, not the shared data plane).
pub(super) fn wait_any<'a>(
    fds: impl Iterator<Item = BorrowedFd<'a>>,
    timeout: Duration,
    urls: &[String],
) -> IoResult<()> {
    let mut fds: Vec<PollFd<'_>> = fds.map(|fd| PollFd::new(fd, PollFlags::POLLIN)).collect();
    match poll(&mut fds, crate::io::poll_timeout(timeout)) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(IoError::Closed {
            url: urls.join(", "),
            reason: format!("poll: {e}"),
        }),
    }
}
