//! The data path on three plain OS threads, no async:
//!
//! ```text
//!  input thread ──batches──▶ cipher thread (caller) ──bytes──▶ output thread
//!        ▲                        │    ▲                            │
//!        └──── empty batches ─────┘    └──── empty buffers ─────────┘
//! ```
//!
//! Buffers circulate between the threads (a fixed pool, nothing allocated per packet or
//! per batch) and every channel is bounded. A live input never waits on the stages after
//! it for long: when the queue stays full for [`LIVE_QUEUE_WAIT`] its batch is dropped and
//! counted (`queue_drops`), so the socket keeps being drained; a file or pipe waits
//! instead (no loss). The stop flag
//! (Ctrl-C) is read by the input thread between reads: the run then drains, flushes and
//! returns normally, so the counters get reported.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::io::{Input, IoError, PacketBatch, PacketSink, PacketSource, ReadStatus};

use super::descrambler::Descrambler;
use super::error::ScrambleError;
use super::scrambler::Scrambler;

/// Batches in flight between two threads. Live batches are small (what came within the
/// 2 ms flush interval), so the depth covers a scheduling stall of the cipher thread.
const QUEUE_DEPTH: usize = 16;
/// How long a live input waits for room in a full queue before it drops the batch: long
/// enough for a stall, short enough that the socket's own buffer does not overflow first.
const LIVE_QUEUE_WAIT: Duration = Duration::from_millis(100);

/// Settings of the loop. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Packets per batch. Default 512.
    pub batch_packets: usize,
    /// Longest wait for a live input before a partial batch is processed. Default 2 ms.
    pub flush_interval: Duration,
    /// Stop when a live input has sent nothing for this long. Default: never.
    pub idle_timeout: Option<Duration>,
    /// Set (by a signal handler) to stop the run cleanly. Default: a flag nobody sets.
    pub stop: Arc<AtomicBool>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            batch_packets: 512,
            flush_interval: Duration::from_millis(2),
            idle_timeout: None,
            stop: Arc::default(),
        }
    }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The file or pipe ended.
    EndOfStream,
    /// A live input was idle for the idle timeout.
    Idle,
    /// The stop flag was set (Ctrl-C, SIGTERM).
    Stopped,
}

/// A stage of the data path between input and output: the scrambler, a descrambler,
/// the software card's player.
pub trait PacketStage {
    /// Process the packets of `batch` (which may be changed in place) and append the
    /// packets to send to `out`.
    fn process_batch(
        &mut self,
        batch: &mut PacketBatch,
        out: &mut Vec<u8>,
    ) -> Result<(), ScrambleError>;

    /// No packet came within the flush interval (live inputs): move clocks on.
    fn idle(&mut self) -> Result<(), ScrambleError> {
        Ok(())
    }
}

impl PacketStage for Scrambler {
    fn process_batch(
        &mut self,
        batch: &mut PacketBatch,
        out: &mut Vec<u8>,
    ) -> Result<(), ScrambleError> {
        if out.is_empty() {
            // the usual case (the run loop hands over an empty buffer): no copy
            return self.process_into(batch.packets(), out);
        }
        if self.is_deferred() {
            // fail closed: the pending cipher ranges count from the start of `out`; after
            // other bytes they would name the wrong packets
            return Err(ScrambleError::Config(
                "deferred cipher: the output buffer must be empty".to_owned(),
            ));
        }
        out.extend_from_slice(self.process(batch.packets())?);
        Ok(())
    }

    fn idle(&mut self) -> Result<(), ScrambleError> {
        Scrambler::idle(self)
    }
}

impl PacketStage for Descrambler {
    fn process_batch(
        &mut self,
        batch: &mut PacketBatch,
        out: &mut Vec<u8>,
    ) -> Result<(), ScrambleError> {
        self.process(batch.packets_mut())?;
        out.extend_from_slice(batch.as_bytes());
        Ok(())
    }
}

/// From the input thread to the cipher thread.
enum InMsg {
    Batch(PacketBatch),
    /// No packet within the flush interval: move clocks on, flush the output.
    Idle,
    End(RunEnd),
    Failed(IoError),
}

/// From the cipher thread to the output thread.
enum OutMsg {
    Bytes(Vec<u8>),
    Flush,
}

/// Scramble `input` into `output` (an `Output`, or an `OutputSet` for several) until the
/// input ends (or idles out, or is stopped).
pub fn run_scramble(
    input: &mut Input,
    output: &mut impl PacketSink,
    scrambler: &mut Scrambler,
    opts: &RunOptions,
) -> Result<RunEnd, ScrambleError> {
    run_stage(input, output, scrambler, opts)
}

/// Descramble `input` into `output` until the input ends (or idles out, or is stopped).
pub fn run_descramble(
    input: &mut Input,
    output: &mut impl PacketSink,
    descrambler: &mut Descrambler,
    opts: &RunOptions,
) -> Result<RunEnd, ScrambleError> {
    run_stage(input, output, descrambler, opts)
}

/// Run `stage` from `input` to `output` until the input ends (or idles out, or is stopped).
pub fn run_stage(
    input: &mut impl PacketSource,
    output: &mut impl PacketSink,
    stage: &mut dyn PacketStage,
    opts: &RunOptions,
) -> Result<RunEnd, ScrambleError> {
    let batch_packets = opts.batch_packets.max(1);
    let (in_tx, in_rx) = mpsc::sync_channel::<InMsg>(QUEUE_DEPTH);
    let (free_batch_tx, free_batch_rx) = mpsc::sync_channel::<PacketBatch>(QUEUE_DEPTH + 2);
    let (out_tx, out_rx) = mpsc::sync_channel::<OutMsg>(QUEUE_DEPTH);
    let (free_buf_tx, free_buf_rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE_DEPTH + 2);
    for _ in 0..QUEUE_DEPTH + 2 {
        // cannot fail: the channels have room for the whole pool
        let _ = free_batch_tx.send(PacketBatch::with_capacity(batch_packets));
        // room for a batch plus what the mux adds to it (PMT, ECM, CAT, EMM packets)
        let _ = free_buf_tx.send(Vec::with_capacity((batch_packets + 64) * 188));
    }

    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("castmux-input".to_owned())
            .spawn_scoped(scope, || read_loop(input, opts, in_tx, free_batch_rx))
            .map_err(|e| ScrambleError::Config(format!("cannot start the input thread: {e}")))?;
        let writer = std::thread::Builder::new()
            .name("castmux-output".to_owned())
            .spawn_scoped(scope, || write_loop(output, out_rx, free_buf_tx))
            .map_err(|e| ScrambleError::Config(format!("cannot start the output thread: {e}")))?;

        let res = cipher_loop(stage, &in_rx, &free_batch_tx, &out_tx, &free_buf_rx);
        // hang up: the output thread ends when its queue does; the input thread ends when
        // it next finds its queue gone
        drop(out_tx);
        drop(in_rx);
        drop(free_batch_tx);
        let wrote = writer.join().unwrap_or_else(|_| {
            Err(IoError::Closed {
                url: "output".to_owned(),
                reason: "the output thread panicked".to_owned(),
            })
        });
        let _ = reader.join();
        let end = res?;
        wrote?;
        Ok(end)
    })
}

fn cipher_loop(
    stage: &mut dyn PacketStage,
    in_rx: &Receiver<InMsg>,
    free_batch_tx: &SyncSender<PacketBatch>,
    out_tx: &SyncSender<OutMsg>,
    free_buf_rx: &Receiver<Vec<u8>>,
) -> Result<RunEnd, ScrambleError> {
    loop {
        let Ok(msg) = in_rx.recv() else {
            return Ok(RunEnd::EndOfStream);
        };
        match msg {
            InMsg::Batch(mut batch) => {
                // the output thread returns every buffer it gets; gone means it failed
                let Ok(mut buf) = free_buf_rx.recv() else {
                    return Ok(RunEnd::EndOfStream);
                };
                buf.clear();
                stage.process_batch(&mut batch, &mut buf)?;
                let _ = free_batch_tx.send(batch);
                if out_tx.send(OutMsg::Bytes(buf)).is_err() {
                    return Ok(RunEnd::EndOfStream);
                }
            }
            InMsg::Idle => {
                stage.idle()?;
                let _ = out_tx.send(OutMsg::Flush);
            }
            InMsg::End(end) => return Ok(end),
            InMsg::Failed(e) => return Err(e.into()),
        }
    }
}

fn read_loop(
    input: &mut impl PacketSource,
    opts: &RunOptions,
    in_tx: SyncSender<InMsg>,
    free_batch_rx: Receiver<PacketBatch>,
) {
    let live = input.is_live();
    let mut last_data = Instant::now();
    // a live input keeps one spare batch of its own, so a full queue never makes it wait
    let mut spare: Option<PacketBatch> = None;
    loop {
        if opts.stop.load(Ordering::Relaxed) {
            let _ = in_tx.send(InMsg::End(RunEnd::Stopped));
            return;
        }
        let mut batch = match spare.take() {
            Some(b) => b,
            None => match free_batch_rx.recv() {
                Ok(b) => b,
                Err(_) => return,
            },
        };
        let status = match input.read_batch(&mut batch, opts.flush_interval) {
            Ok(s) => s,
            Err(e) => {
                let _ = in_tx.send(InMsg::Failed(e));
                return;
            }
        };
        match status {
            ReadStatus::Packets(_) => {
                last_data = Instant::now();
                if !live {
                    if in_tx.send(InMsg::Batch(batch)).is_err() {
                        return;
                    }
                    continue;
                }
                match send_within(&in_tx, InMsg::Batch(batch), LIVE_QUEUE_WAIT) {
                    Ok(()) => spare = free_batch_rx.try_recv().ok(),
                    Err(TrySendError::Full(InMsg::Batch(b))) => {
                        input.stats().queue_drops.fetch_add(1, Ordering::Relaxed);
                        spare = Some(b);
                    }
                    Err(_) => return,
                }
            }
            ReadStatus::TimedOut => {
                spare = Some(batch);
                if opts
                    .idle_timeout
                    .is_some_and(|limit| last_data.elapsed() >= limit)
                {
                    let _ = in_tx.send(InMsg::End(RunEnd::Idle));
                    return;
                }
                // a tick that finds the queue full is not needed: work is pending anyway
                if let Err(TrySendError::Disconnected(_)) = in_tx.try_send(InMsg::Idle) {
                    return;
                }
            }
            ReadStatus::EndOfStream => {
                let _ = in_tx.send(InMsg::End(RunEnd::EndOfStream));
                return;
            }
        }
    }
}

/// Send, waiting at most `limit` for room (std channels have no timed send).
fn send_within<T>(tx: &SyncSender<T>, mut msg: T, limit: Duration) -> Result<(), TrySendError<T>> {
    let deadline = Instant::now() + limit;
    loop {
        match tx.try_send(msg) {
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                msg = m;
                std::thread::sleep(Duration::from_micros(200));
            }
            other => return other,
        }
    }
}

fn write_loop(
    output: &mut impl PacketSink,
    out_rx: Receiver<OutMsg>,
    free_buf_tx: SyncSender<Vec<u8>>,
) -> Result<(), IoError> {
    // on an error this returns at once: the hung-up channels end the other threads
    while let Ok(msg) = out_rx.recv() {
        match msg {
            OutMsg::Bytes(buf) => {
                let res = output.write_batch(&buf);
                let _ = free_buf_tx.send(buf);
                res?;
            }
            OutMsg::Flush => output.flush()?,
        }
    }
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{InputOptions, InputUrl, Output, OutputOptions, OutputUrl};
    use crate::scramble::{Cw, KeyMode, ScrambleConfig};
    use crate::ts::packet::PACKET_SIZE;

    fn config() -> ScrambleConfig {
        ScrambleConfig {
            keys: KeyMode::FixedPair(
                Cw::from_hex("0102030604050615").unwrap(),
                Cw::from_hex("1112131614151655").unwrap(),
            ),
            // many key switches, some inside batches
            crypto_period: Duration::from_millis(100),
            ..ScrambleConfig::default()
        }
    }

    /// The threaded file path (direct reads into the batch, the scrambler writing into the
    /// loop's buffer, direct writes) gives the bytes `Scrambler::process` gives in memory.
    #[test]
    fn file_to_file_matches_the_scrambler_in_memory() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let one = std::fs::read(root.join("samples/spts.ts")).unwrap();
        let one = &one[..one.len() / PACKET_SIZE * PACKET_SIZE];
        let data = one.repeat(3);
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("in.ts"), dir.path().join("out.ts"));
        std::fs::write(&src, &data).unwrap();

        let batch_packets = 512;
        let mut want = Vec::new();
        let mut s = Scrambler::new(config(), None, Vec::new()).unwrap();
        let (packets, _) = data.as_chunks::<PACKET_SIZE>();
        for batch in packets.chunks(batch_packets) {
            want.extend_from_slice(s.process(batch).unwrap());
        }
        assert!(s.counters().stream.key_switches > 10);

        let mut s = Scrambler::new(config(), None, Vec::new()).unwrap();
        let mut input = Input::open(&InputUrl::File(src), &InputOptions::default()).unwrap();
        let mut output =
            Output::open(&OutputUrl::File(dst.clone()), &OutputOptions::default()).unwrap();
        let opts = RunOptions {
            batch_packets,
            ..RunOptions::default()
        };
        let end = run_scramble(&mut input, &mut output, &mut s, &opts).unwrap();
        output.close(Duration::from_secs(1)).unwrap();
        assert_eq!(end, RunEnd::EndOfStream);
        let got = std::fs::read(&dst).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(
            got == want,
            "the file path differs from the scrambler in memory"
        );
    }

    /// Deferred cipher (the data plane's mode): the output with the pending segments
    /// scrambled by a shared engine pass is the output of the ordinary mode, byte for byte,
    /// with key switches inside batches; and a batch whose pending segment was not
    /// scrambled stops the next one.
    #[test]
    fn deferred_cipher_gives_the_same_bytes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let one = std::fs::read(root.join("samples/spts.ts")).unwrap();
        let data = one[..one.len() / PACKET_SIZE * PACKET_SIZE].repeat(2);
        let (packets, _) = data.as_chunks::<PACKET_SIZE>();
        let mut want = Vec::new();
        let mut s = Scrambler::new(config(), None, Vec::new()).unwrap();
        for batch in packets.chunks(37) {
            want.extend_from_slice(s.process(batch).unwrap());
        }
        let mut d = Scrambler::new(config(), None, Vec::new()).unwrap();
        d.set_deferred(true);
        assert!(d.is_deferred());
        let mut multi = csa::MultiBatch::new();
        let mut got = Vec::new();
        let mut out = Vec::new();
        let mut pending_seen = 0;
        for batch in packets.chunks(37) {
            d.process_into(batch, &mut out).unwrap();
            {
                let mut run = multi.begin();
                if let Some(p) = d.pending_cipher() {
                    pending_seen += 1;
                    let (sel, parity) = (p.select, p.parity);
                    let bytes =
                        &mut out[p.packets.start * PACKET_SIZE..p.packets.end * PACKET_SIZE];
                    run.scramble_selected(p.ctx, bytes, |i| sel[i].then_some(parity))
                        .unwrap();
                }
                run.finish();
            }
            d.cipher_done();
            got.extend_from_slice(&out);
        }
        assert!(s.counters().stream.key_switches > 10 && pending_seen > 100);
        assert_eq!(
            d.counters().stream.key_switches,
            s.counters().stream.key_switches
        );
        assert!(
            got == want,
            "deferred cipher differs from the ordinary mode"
        );

        // a pending segment nobody scrambled: the next batch is refused
        let mut d = Scrambler::new(config(), None, Vec::new()).unwrap();
        d.set_deferred(true);
        let mut out = Vec::new();
        let mut refused = false;
        for batch in packets.chunks(37) {
            match d.process_into(batch, &mut out) {
                Ok(()) => {}
                Err(_) => {
                    refused = true;
                    break;
                }
            }
        }
        assert!(
            refused,
            "an unscrambled pending batch must stop the scrambler"
        );

        // deferred, the stage refuses to append to bytes already in the output: the
        // pending ranges would name the wrong packets
        let mut d = Scrambler::new(config(), None, Vec::new()).unwrap();
        d.set_deferred(true);
        let mut batch = PacketBatch::with_capacity(4);
        for p in &packets[..4] {
            batch.push(p);
        }
        let mut out = vec![0u8; PACKET_SIZE];
        assert!(PacketStage::process_batch(&mut d, &mut batch, &mut out).is_err());
        assert_eq!(out.len(), PACKET_SIZE);
    }
}
