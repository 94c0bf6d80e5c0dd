//! The shared data plane: a fixed set of worker threads serves every channel whose input
//! is a UDP socket, instead of three threads per channel.
//!
//! Each worker owns a share of the channels and waits on all their sockets at once with
//! epoll. A wake-up reads what every ready socket holds (recvmmsg, into the channel's
//! batch) and runs it through the channel's scrambler, which leaves the cipher work undone
//! (deferred mode); then one engine pass scrambles the packets of every channel of the
//! wake-up together, each under its own key (`csa::MultiBatch`), so the SIMD kernel sees
//! full lane sets even though each channel brings a datagram's worth; then every output
//! is written. Nothing is written before its pass has run.
//! While traffic flows, a worker reads once per read interval (3 ms): it sleeps between
//! reads and then takes at once what every socket gathered meanwhile, so a receive call,
//! a pass and a send each carry what several arrivals brought (at 5 Mbit/s a datagram
//! comes every 2.1 ms); when nothing came in a round it waits on epoll again.
//! An idle channel costs nothing: no thread, no timer, no poll of its own. A channel whose
//! outputs keep a short datagram back gets it sent once the channel has been quiet for the
//! flush interval, so the added latency is bounded. A channel that fails (its outputs all
//! gone, its ECMG refusing a file run) leaves the epoll set; the others go on.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};

use csa::MultiBatch;

use super::channel::Channel;
use super::error::{Context, ErrorChain, HeadendError};
use super::supervise::Event;
use crate::io::{PacketBatch, PacketSink, PacketSource, ReadStatus};
use crate::scramble::{PacketStage, RunEnd};
use crate::ts::packet::PACKET_SIZE;

/// The longest sleep, so the stop flag and idle timeouts are seen.
const TICK: Duration = Duration::from_millis(100);
/// Ended channels are given back at least this often.
const REAP: Duration = Duration::from_millis(10);
/// Events taken per epoll_wait.
const EVENTS: usize = 256;

/// Settings of the data plane.
#[derive(Debug, Clone)]
pub struct PlaneOptions {
    /// Worker threads. Default: the cores.
    pub workers: usize,
    /// Longest time a short output datagram is held while its channel is quiet. Default 2 ms.
    pub flush_interval: Duration,
    /// Whole UDP datagrams a channel's output gathers per send (one UDP GSO send for them
    /// all), holding none past the flush interval. Default 1: the read interval already
    /// hands each output what several arrivals brought, and the whole datagrams of a write
    /// go out in one send. 2 (the default before the read interval) saves a send for
    /// every second datagram when reading at every arrival, for up to a datagram's spacing.
    pub udp_burst: usize,
    /// While traffic flows, a worker reads its sockets once per this interval instead of at
    /// every arrival, so each receive call, each pass and each send takes what several
    /// arrivals brought (a 5 Mbit/s channel sends a datagram every 2.1 ms). Adds up to this
    /// to a packet's latency. Default 3 ms (measured at 200 channels × 5 Mbit/s: 5 points
    /// of a core less than reading at every arrival with `udp_burst` 2, p99 latency under
    /// 10 ms; 4 ms saved 17 points with p99 at 10 ms). Zero reads at every wake-up.
    pub read_interval: Duration,
}

impl Default for PlaneOptions {
    fn default() -> Self {
        PlaneOptions {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            flush_interval: Duration::from_millis(2),
            udp_burst: 1,
            read_interval: Duration::from_millis(3),
        }
    }
}

/// A channel on a worker, with its buffers.
struct Slot {
    /// The head-end's id of this run of the channel.
    id: u64,
    ch: Channel,
    /// Packets a read takes at most (the worker's scratch batch of that size).
    batch_packets: usize,
    out: Vec<u8>,
    last_data: Instant,
    /// Written since the last flush.
    dirty: bool,
    idle_timeout: Option<Duration>,
    end: Option<Result<RunEnd, HeadendError>>,
    /// `out` waits for this wake-up's cipher pass.
    in_pass: bool,
    /// The pass refused this channel's batch: it must not be written.
    cipher_failed: bool,
    /// In the worker's list of channels to read.
    queued: bool,
}

impl Slot {
    fn new(id: u64, mut ch: Channel, now: Instant, cx: &WorkerCx) -> Slot {
        ch.parts_mut().1.scrambler_mut().set_deferred(true);
        ch.parts_mut()
            .2
            .set_udp_coalesce(cx.udp_burst, cx.flush_interval);
        let opts = ch.run_options(Arc::default());
        let (batch_packets, idle_timeout) = (opts.batch_packets.max(1), opts.idle_timeout);
        Slot {
            id,
            ch,
            batch_packets,
            // a batch plus what the mux adds to it (PMT, ECM, CAT, EMM packets)
            out: Vec::with_capacity((batch_packets + 64) * 188),
            last_data: now,
            dirty: false,
            idle_timeout,
            end: None,
            in_pass: false,
            cipher_failed: false,
            // (an edge-triggered add reports a socket that already holds datagrams)
            queued: false,
        }
    }
}

/// A channel that left the data plane or its thread (ended, failed, removed or
/// stopped), with how.
#[derive(Debug)]
pub struct Ended {
    pub id: u64,
    pub channel: Channel,
    pub end: Result<RunEnd, HeadendError>,
}

/// What a worker is told.
enum Command {
    Add(u64, Box<Channel>),
    Remove(u64),
}

/// A worker thread, its inbox and the eventfd that wakes it for the inbox.
struct Worker {
    tx: std::sync::mpsc::Sender<Command>,
    wake: Arc<EventFd>,
    channels: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The running data plane: channels are added and removed while it runs; each one that
/// leaves it comes back on the `ended` sender given to [`Plane::start`].
pub(crate) struct Plane {
    workers: Vec<Worker>,
    /// Which worker serves a channel id.
    placed: std::collections::HashMap<u64, usize>,
    /// Where a channel that cannot be placed goes back.
    ended: std::sync::mpsc::Sender<Event>,
}

/// The eventfd's token in a worker's epoll set (slot indexes are below it).
const WAKE: u64 = u64::MAX;

impl Plane {
    /// Start `opts.workers` worker threads; they run until `stop` is set or the plane is
    /// dropped, and give back every channel on `ended`.
    pub(crate) fn start(
        opts: &PlaneOptions,
        stop: &Arc<AtomicBool>,
        log_failures: bool,
        ended: std::sync::mpsc::Sender<Event>,
    ) -> Result<Plane, HeadendError> {
        let mut workers = Vec::with_capacity(opts.workers.max(1));
        let ended_back = ended.clone();
        for k in 0..opts.workers.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            let wake = Arc::new(
                EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                    .context("eventfd")?,
            );
            let channels = Arc::new(AtomicUsize::new(0));
            let w = WorkerCx {
                rx,
                wake: Arc::clone(&wake),
                channels: Arc::clone(&channels),
                ended: ended.clone(),
                flush_interval: opts.flush_interval,
                udp_burst: opts.udp_burst,
                read_interval: opts.read_interval,
                stop: Arc::clone(stop),
                log_failures,
            };
            let thread = std::thread::Builder::new()
                .name(format!("castmux-plane-{k}"))
                .spawn(move || worker(w))
                .context("starting a data-plane worker")?;
            workers.push(Worker {
                tx,
                wake,
                channels,
                thread: Some(thread),
            });
        }
        Ok(Plane {
            workers,
            placed: Default::default(),
            ended: ended_back,
        })
    }

    /// Serve `ch` (a UDP channel) as run `id`, on the worker with the fewest channels (a
    /// worker that has stopped counts as full).
    pub(crate) fn add(&mut self, id: u64, ch: Channel) {
        let k = (0..self.workers.len())
            .min_by_key(|k| self.workers[*k].channels.load(Ordering::Relaxed))
            .unwrap_or(0);
        let w = &self.workers[k];
        w.channels.fetch_add(1, Ordering::Relaxed);
        self.placed.insert(id, k);
        // a worker that is gone has sent back what it had; this channel goes back failed,
        // so the supervisor sees it end (and restarts it) instead of taking it as on air
        if let Err(std::sync::mpsc::SendError(Command::Add(id, ch))) =
            w.tx.send(Command::Add(id, Box::new(ch)))
        {
            tracing::error!("a data-plane worker is gone; the channel cannot start");
            self.placed.remove(&id);
            give_back_failed(&self.ended, id, *ch, WORKER_STOPPED.to_owned());
            return;
        }
        let _ = w.wake.write(1);
    }

    /// Stop run `id`: its worker gives it back on `ended` (as stopped).
    pub(crate) fn remove(&mut self, id: u64) {
        if let Some(k) = self.placed.remove(&id) {
            let w = &self.workers[k];
            let _ = w.tx.send(Command::Remove(id));
            let _ = w.wake.write(1);
        }
    }

    /// Run `id` has left the plane (it came back on `ended`).
    pub(crate) fn forget(&mut self, id: u64) {
        self.placed.remove(&id);
    }

    /// Wait for every worker to end (after `stop` was set): each gives back its channels.
    pub(crate) fn join(mut self) {
        for w in &mut self.workers {
            let _ = w.wake.write(1);
            if let Some(t) = w.thread.take() {
                if t.join().is_err() {
                    tracing::error!("a data-plane worker panicked; its channels are lost");
                }
            }
        }
    }
}

/// What one worker thread owns.
struct WorkerCx {
    rx: std::sync::mpsc::Receiver<Command>,
    wake: Arc<EventFd>,
    channels: Arc<AtomicUsize>,
    ended: std::sync::mpsc::Sender<Event>,
    flush_interval: Duration,
    udp_burst: usize,
    read_interval: Duration,
    stop: Arc<AtomicBool>,
    log_failures: bool,
}

fn worker(cx: WorkerCx) {
    let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).and_then(|e| {
        e.add(
            cx.wake.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, WAKE),
        )?;
        Ok(e)
    }) {
        Ok(e) => e,
        Err(e) => {
            // nothing can be served: every channel sent here goes back failed
            tracing::error!(error = %e, "a data-plane worker cannot start epoll");
            cx.channels.store(usize::MAX, Ordering::Relaxed);
            while let Ok(cmd) = cx.rx.recv() {
                if let Command::Add(id, ch) = cmd {
                    give_back_failed(&cx.ended, id, *ch, format!("epoll: {e}"));
                }
            }
            return;
        }
    };
    let mut slots: Vec<Option<Slot>> = Vec::new();
    serve(&epoll, &mut slots, &cx);
    // no channel is placed here any more; one sent meanwhile goes back failed
    cx.channels.store(usize::MAX, Ordering::Relaxed);
    for s in slots.iter_mut().filter_map(Option::as_mut) {
        if s.end.is_none() {
            finish_output(s);
            s.end = Some(Ok(RunEnd::Stopped));
        }
    }
    reap(&epoll, &mut slots, &cx, &mut []);
    while let Ok(cmd) = cx.rx.try_recv() {
        if let Command::Add(id, ch) = cmd {
            give_back_failed(&cx.ended, id, *ch, WORKER_STOPPED.to_owned());
        }
    }
}

/// Give channel `ch` (run `id`) back on `ended` as failed, for `why`: it never reached a
/// worker that serves it.
fn give_back_failed(ended: &std::sync::mpsc::Sender<Event>, id: u64, ch: Channel, why: String) {
    let _ = ended.send(Event::Ended(Ended {
        id,
        channel: ch,
        end: Err(HeadendError::Config(why)),
    }));
}

/// Why a channel sent to a worker that has stopped goes back.
const WORKER_STOPPED: &str = "the data-plane worker serving it has stopped";

/// Take the commands waiting in the inbox; false when the plane is gone.
fn take_commands(epoll: &Epoll, slots: &mut Vec<Option<Slot>>, cx: &WorkerCx) -> bool {
    let _ = cx.wake.read();
    loop {
        match cx.rx.try_recv() {
            Ok(Command::Add(id, ch)) => {
                let i = slots.iter().position(Option::is_none).unwrap_or_else(|| {
                    slots.push(None);
                    slots.len() - 1
                });
                let mut s = Slot::new(id, *ch, Instant::now(), cx);
                let added = if s.ch.plane_served() {
                    // every input of the channel (a primary and its backups) wakes it
                    s.ch.parts_mut().0.fds().into_iter().try_for_each(|fd| {
                        epoll
                            .add(
                                fd,
                                EpollEvent::new(
                                    EpollFlags::EPOLLIN | EpollFlags::EPOLLET,
                                    i as u64,
                                ),
                            )
                            .context("epoll_ctl")
                    })
                } else {
                    Err(HeadendError::Config(
                        "the data plane serves UDP inputs only".to_owned(),
                    ))
                };
                if let Err(e) = added {
                    s.end = Some(Err(e));
                }
                slots[i] = Some(s);
            }
            Ok(Command::Remove(id)) => {
                if let Some(s) = slots.iter_mut().flatten().find(|s| s.id == id) {
                    if s.end.is_none() {
                        finish_output(s);
                        unwatch(epoll, s);
                        s.end = Some(Ok(RunEnd::Stopped));
                    }
                }
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => return true,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return false,
        }
    }
}

/// Give back every channel that has ended and is not waiting for a pass; its index is
/// dropped from the lists that may still name it.
fn reap(epoll: &Epoll, slots: &mut [Option<Slot>], cx: &WorkerCx, lists: &mut [&mut Vec<usize>]) {
    for (i, slot) in slots.iter_mut().enumerate() {
        if !slot.as_ref().is_some_and(|s| s.end.is_some() && !s.in_pass) {
            continue;
        }
        let Some(mut s) = slot.take() else {
            continue;
        };
        unwatch(epoll, &mut s);
        for l in lists.iter_mut() {
            l.retain(|&k| k != i);
        }
        cx.channels.fetch_sub(1, Ordering::Relaxed);
        let _ = cx.ended.send(Event::Ended(Ended {
            id: s.id,
            channel: s.ch,
            end: s.end.take().unwrap_or(Ok(RunEnd::Stopped)),
        }));
    }
}

fn serve(epoll: &Epoll, slots: &mut Vec<Option<Slot>>, cx: &WorkerCx) {
    let (flush_interval, log_failures) = (cx.flush_interval, cx.log_failures);
    let mut events = [EpollEvent::empty(); EVENTS];
    let mut engines = Engines::calibrate();
    let mut last_tick = Instant::now();
    let mut last_reap = Instant::now();
    let mut dirty: Vec<usize> = Vec::new();
    // channels that may have input to read: epoll said so (edge-triggered), or their last
    // read filled the batch, or they were skipped while their batch waited for the pass
    let mut ready: Vec<usize> = Vec::new();
    let mut next_ready: Vec<usize> = Vec::new();
    let mut in_pass: Vec<usize> = Vec::new();
    let mut scratch: Vec<PacketBatch> = Vec::new();
    let mut pass_payloads = 0usize;
    let mut pass_since: Option<Instant> = None;
    let mut inbox = true;
    let gathering = !cx.read_interval.is_zero();
    let mut next_read: Option<Instant> = None;
    // the last epoll_wait filled `events`: more sockets may be ready
    let mut events_left = false;
    let failed = loop {
        if inbox && !take_commands(epoll, slots, cx) {
            // the plane is gone: stop as on the stop flag
            cx.stop.store(true, Ordering::Relaxed);
        }
        if cx.stop.load(Ordering::Relaxed) {
            break None;
        }
        let now = Instant::now();
        // ended channels go back every few ms, not every round: the scan touches every
        // channel's state (an ended one is out of epoll, and the lists skip it already)
        if inbox || now.duration_since(last_reap) >= REAP {
            reap(epoll, slots, cx, &mut [&mut ready, &mut dirty]);
            last_reap = now;
        }
        inbox = false;
        let takeable = ready
            .iter()
            .any(|&i| slots[i].as_ref().is_some_and(|s| !s.in_pass));
        // while traffic flows and a read interval is set, the worker sleeps to its next
        // read and then takes at once everything epoll gathered meanwhile
        let cadence = next_read.filter(|_| !takeable && !events_left);
        if let Some(t) = cadence {
            let now = Instant::now();
            if t > now {
                std::thread::sleep(t - now);
            }
        }
        let round = Instant::now();
        let wait = if takeable || cadence.is_some() {
            Duration::ZERO
        } else if let Some(t) = pass_since {
            flush_interval.saturating_sub(now.duration_since(t))
        } else if dirty.is_empty() {
            TICK
        } else {
            flush_interval
        };
        let n = match epoll.wait(&mut events, crate::io::poll_timeout(wait)) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => {
                tracing::error!(error = %e, "epoll_wait failed; the worker's channels stop");
                break Some(e);
            }
        };
        events_left = n == EVENTS;
        for ev in &events[..n] {
            if ev.data() == WAKE {
                inbox = true;
                continue;
            }
            let i = ev.data() as usize;
            if let Some(Some(s)) = slots.get_mut(i) {
                if !s.queued {
                    s.queued = true;
                    ready.push(i);
                }
            }
        }
        let now = Instant::now();
        next_ready.clear();
        for &i in &ready {
            let Some(s) = slots[i].as_mut() else {
                continue;
            };
            if s.end.is_some() {
                s.queued = false;
                continue;
            }
            if s.in_pass {
                // its batch waits for the pass; read it after
                next_ready.push(i);
                continue;
            }
            match take_input(s, now, &mut scratch) {
                Ok(Some((payloads, full))) => {
                    s.in_pass = true;
                    in_pass.push(i);
                    pass_payloads += payloads;
                    pass_since.get_or_insert(now);
                    if full || s.ch.parts_mut().0.more_pending() {
                        // the input may hold more than the socket shows
                        next_ready.push(i);
                    } else {
                        s.queued = false;
                    }
                }
                Ok(None) => s.queued = false,
                Err(e) => {
                    s.queued = false;
                    fail(epoll, s, e, log_failures);
                }
            }
        }
        std::mem::swap(&mut ready, &mut next_ready);
        next_read = (gathering && !in_pass.is_empty()).then(|| round + cx.read_interval);
        // one engine pass for every channel waiting: once there are enough payloads to
        // fill the engine, or the oldest has waited the flush interval, or every channel
        // of the worker is in it already (nobody else could add to it), or at every read
        // when reading on a cadence (nothing more comes before the next)
        let due = gathering || pass_since.is_some_and(|t| now.duration_since(t) >= flush_interval);
        // (reading on a cadence, the pass is due at every read anyway: no count needed)
        let all_in = !gathering
            && in_pass.len() >= slots.iter().flatten().filter(|s| s.end.is_none()).count();
        if !in_pass.is_empty() && (pass_payloads >= engines.target || due || all_in) {
            finish_pass(
                epoll,
                slots,
                &mut engines,
                &mut in_pass,
                &mut dirty,
                pass_payloads,
                log_failures,
            );
            pass_payloads = 0;
            pass_since = None;
        }
        // channels quiet for the flush interval: move their clocks on, send what is held
        dirty.retain(|&i| {
            let Some(s) = slots[i].as_mut() else {
                return false;
            };
            if s.end.is_some() {
                return false;
            }
            if s.in_pass || now.duration_since(s.last_data) < flush_interval {
                return true;
            }
            let (_, stage, output) = s.ch.parts_mut();
            let res = stage
                .idle()
                .map_err(HeadendError::from)
                .and_then(|()| output.flush().context("output"));
            s.dirty = false;
            if let Err(e) = res {
                fail(epoll, s, e, log_failures);
            }
            false
        });
        if now.duration_since(last_tick) >= TICK {
            last_tick = now;
            for s in slots
                .iter_mut()
                .flatten()
                .filter(|s| s.end.is_none() && !s.in_pass)
            {
                // a silent input is judged off air without a packet to wake its channel
                s.ch.parts_mut().0.tick(now);
                if s.idle_timeout
                    .is_some_and(|limit| now.duration_since(s.last_data) >= limit)
                {
                    finish_output(s);
                    unwatch(epoll, s);
                    s.end = Some(Ok(RunEnd::Idle));
                }
            }
        }
    };
    // the batches read are scrambled and written before the worker ends, so every channel
    // can go back (one still in a pass would not be reaped, and would be lost)
    if !in_pass.is_empty() {
        finish_pass(
            epoll,
            slots,
            &mut engines,
            &mut in_pass,
            &mut dirty,
            pass_payloads,
            log_failures,
        );
    }
    if let Some(e) = failed {
        for s in slots.iter_mut().flatten().filter(|s| s.end.is_none()) {
            finish_output(s);
            s.end = Some(Err(HeadendError::Config(format!("epoll_wait: {e}"))));
        }
    }
}

/// Run the engine pass over every channel in `in_pass`, then write their outputs.
fn finish_pass(
    epoll: &Epoll,
    slots: &mut [Option<Slot>],
    engines: &mut Engines,
    in_pass: &mut Vec<usize>,
    dirty: &mut Vec<usize>,
    payloads: usize,
    log_failures: bool,
) {
    in_pass.sort_unstable();
    cipher_pass(engines.for_payloads(payloads), slots, in_pass);
    for &i in in_pass.iter() {
        let Some(s) = slots[i].as_mut() else {
            continue;
        };
        s.in_pass = false;
        if s.cipher_failed {
            // fail closed: its packets were never scrambled
            let e = HeadendError::Config("the cipher pass refused its batch".to_owned());
            fail(epoll, s, e, log_failures);
            continue;
        }
        let (_, stage, output) = s.ch.parts_mut();
        stage.scrambler_mut().cipher_done();
        match output.write_batch(&s.out).context("output") {
            Ok(()) => {
                if !s.dirty {
                    s.dirty = true;
                    dirty.push(i);
                }
            }
            Err(e) => fail(epoll, s, e, log_failures),
        }
    }
    in_pass.clear();
}

/// Calibration: the backends take turns this many times, each timing this many calls in
/// a row (the fastest counts); about 10 ms in all on AVX-512.
const CALIBRATION_SWEEPS: usize = 3;
const CALIBRATION_CALLS: usize = 6;

/// The engine's backends this CPU has, each with what one kernel call costs here, so a
/// pass of a few payloads takes the narrow backend that does them cheapest (a call costs
/// about the same for 1 payload as for a full lane set).
struct Engines {
    /// (lanes, cost of a call in ns, its batch), narrowest first.
    backends: Vec<(usize, u64, MultiBatch)>,
    /// Payloads worth waiting for: the lanes of the backend cheapest per payload.
    target: usize,
}

impl Engines {
    fn calibrate() -> Engines {
        let mut backends = Vec::new();
        let ctx = csa::KeyContext::csa2(
            // a timing key, nothing is scrambled with it
            &csa::ControlWord::from_bytes([1, 2, 3, 6, 5, 6, 7, 18]),
            &csa::ControlWord::from_bytes([17, 18, 19, 54, 21, 22, 23, 66]),
        );
        for b in csa::Backend::supported() {
            if b == csa::Backend::Scalar {
                continue;
            }
            let multi = MultiBatch::new().with_backend(Some(b));
            backends.push((multi.lanes(), u64::MAX, multi));
        }
        // Each backend keeps its fastest call of a run of calls in a row (what a pass does;
        // the first ones pay for cold caches), and the backends take turns at it more than
        // once: the plane calibrates while the channels start on the same core, and a run
        // timed during a burst of that must not make a 2.6x dearer kernel look cheaper.
        let mut packets = Vec::new();
        for _ in 0..CALIBRATION_SWEEPS {
            for (lanes, best, multi) in backends.iter_mut() {
                packets.resize(*lanes * PACKET_SIZE, 0);
                for _ in 0..CALIBRATION_CALLS {
                    // fresh clear packets each call: the last call left them scrambled
                    for p in packets.chunks_exact_mut(PACKET_SIZE) {
                        p.fill(0x5A);
                        p[0] = 0x47;
                        p[3] = 0x10;
                    }
                    let t = Instant::now();
                    let mut run = multi.begin();
                    let _ = run.scramble(&ctx, &mut packets, csa::Parity::Even);
                    run.finish();
                    *best = (*best).min(t.elapsed().as_nanos() as u64).max(1);
                }
            }
        }
        if backends.is_empty() {
            backends.push((1, 1, MultiBatch::new()));
        }
        backends.sort_by_key(|b| b.0);
        let target = backends
            .iter()
            .min_by_key(|b| b.1 * 1024 / b.0 as u64)
            .map_or(1, |b| b.0);
        tracing::debug!(
            backends = ?backends.iter().map(|b| (b.0, b.1)).collect::<Vec<_>>(),
            target,
            "data plane: engine calls calibrated (lanes, ns)"
        );
        Engines { backends, target }
    }

    /// The batch that scrambles `payloads` payloads cheapest.
    fn for_payloads(&mut self, payloads: usize) -> &mut MultiBatch {
        let n = payloads.max(1);
        let best = self
            .backends
            .iter()
            .enumerate()
            .min_by_key(|(_, b)| n.div_ceil(b.0) as u64 * b.1)
            .map_or(0, |(i, _)| i);
        &mut self.backends[best].2
    }
}

/// Read what the channel's socket holds and run it through the scrambler (its cipher
/// deferred to the pass); gives the payloads left for the pass when a batch came, and
/// whether the read filled the batch. The packets pass through one of the worker's
/// scratch batches (one per batch size): the scrambler copies them into the channel's
/// output at once, and a batch every channel reuses stays in cache.
fn take_input(
    s: &mut Slot,
    now: Instant,
    scratch: &mut Vec<PacketBatch>,
) -> Result<Option<(usize, bool)>, HeadendError> {
    let k = match scratch.iter().position(|b| b.capacity() == s.batch_packets) {
        Some(k) => k,
        None => {
            scratch.push(PacketBatch::with_capacity(s.batch_packets));
            scratch.len() - 1
        }
    };
    let batch = &mut scratch[k];
    let (input, stage, _) = s.ch.parts_mut();
    let status = PacketSource::read_batch(input, batch, Duration::ZERO).context("input")?;
    match status {
        ReadStatus::Packets(_) => {
            s.last_data = now;
            s.out.clear();
            let full = batch.is_full();
            stage.process_batch(batch, &mut s.out)?;
            let payloads = stage
                .scrambler()
                .pending_cipher()
                .map_or(0, |p| p.select.iter().filter(|x| **x).count());
            Ok(Some((payloads, full)))
        }
        ReadStatus::TimedOut | ReadStatus::EndOfStream => Ok(None),
    }
}

/// Scramble the pending packets of every channel waiting for the pass (`in_pass`, its
/// slot indexes in order), in one engine pass. Only those slots are looked at: every
/// channel's state is a cache miss.
fn cipher_pass(multi: &mut MultiBatch, slots: &mut [Option<Slot>], in_pass: &[usize]) {
    let mut run = multi.begin();
    let mut wanted = in_pass.iter().copied().peekable();
    for (i, slot) in slots.iter_mut().enumerate() {
        match wanted.peek() {
            None => break,
            Some(&k) if k != i => continue,
            Some(_) => {
                wanted.next();
            }
        }
        let Some(s) = slot.as_mut().filter(|s| s.in_pass) else {
            continue;
        };
        let Slot {
            ch,
            out,
            cipher_failed,
            ..
        } = s;
        let ch: &Channel = ch;
        let Some(p) = ch.scrambler().pending_cipher() else {
            continue;
        };
        let (select, parity) = (p.select, p.parity);
        let bytes = &mut out[p.packets.start * PACKET_SIZE..p.packets.end * PACKET_SIZE];
        // the range is whole packets of the channel's own output: this cannot fail
        if let Err(e) = run.scramble_selected(p.ctx, bytes, |i| select[i].then_some(parity)) {
            tracing::error!(channel = %ch.name(), error = %e, "cipher pass refused a batch");
            *cipher_failed = true;
        }
    }
    run.finish();
}

fn finish_output(s: &mut Slot) {
    if let Err(e) = s.ch.parts_mut().2.flush() {
        tracing::debug!(error = %e, "flush at the end");
    }
}

fn fail(epoll: &Epoll, s: &mut Slot, e: HeadendError, log: bool) {
    if log {
        tracing::error!(channel = %s.ch.name(), error = %ErrorChain(&e), "channel failed");
    }
    unwatch(epoll, s);
    s.end = Some(Err(e));
}

/// Take the channel's sockets out of the epoll set.
fn unwatch(epoll: &Epoll, s: &mut Slot) {
    for fd in s.ch.parts_mut().0.fds() {
        let _ = epoll.delete(fd.as_fd());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::store::StoreLocation;
    use crate::headend::{ChannelEnv, ChannelSpec};
    use crate::net::control::ControlPlane;

    #[test]
    fn a_channel_sent_to_a_stopped_worker_comes_back_failed() {
        let control = ControlPlane::start().unwrap();
        let db = StoreLocation::File(std::env::temp_dir().join("castmux-plane-unused.db"));
        let spec = ChannelSpec {
            input: "udp://127.0.0.1:0".to_owned(),
            output: vec!["udp://127.0.0.1:9".to_owned()],
            cw: Some("0102030405060708:1112131415161718".to_owned()),
            ..ChannelSpec::default()
        };
        let env = ChannelEnv {
            db: &db,
            control: &control,
            emm: None,
            emm_pid: None,
        };
        let ch = Channel::open("one", &spec, env).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(true));
        let opts = PlaneOptions {
            workers: 1,
            ..PlaneOptions::default()
        };
        let mut plane = Plane::start(&opts, &stop, false, tx).unwrap();
        // the worker sees the stop flag at once and ends
        plane.workers[0].thread.take().unwrap().join().unwrap();
        assert_eq!(
            plane.workers[0].channels.load(Ordering::Relaxed),
            usize::MAX
        );
        plane.add(7, ch);
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Event::Ended(e)) => {
                assert_eq!(e.id, 7);
                let err = e.end.expect_err("a channel no worker serves has failed");
                assert!(err.to_string().contains("worker"), "{err}");
            }
            other => panic!("expected the channel back, got {:?}", other.map(|_| ())),
        }
        assert!(plane.placed.is_empty());
    }
}
