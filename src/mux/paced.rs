//! Sending a constant-bitrate output on its schedule: a thread of its own per output set
//! wakes when a datagram's worth of slots (7 packets) is due, fills them from the
//! [`Cbr`] schedule and writes them, so UDP leaves evenly, never in bursts, whatever the
//! data path's wake-ups look like (a shared worker serving 200 channels, a cipher pass).
//!
//! The data path only queues: [`Paced::write_batch`] dates the packets and puts them in
//! the schedule under a lock held for the copy, and never waits for the network. A write
//! error of the outputs ends the thread; the data path gets it on its next write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cbr::{Cbr, CbrSettings, CbrStats};
use crate::io::{IoError, IoResult, PacketSink};
use crate::ts::packet::{Packet, PACKET_SIZE};

/// Packets per datagram, and so per wake-up of the thread.
const DATAGRAM: u64 = 7;
/// The thread's longest sleep, so a stop is seen.
const MAX_SLEEP: Duration = Duration::from_millis(20);

struct Shared {
    cbr: Mutex<Cbr>,
    stop: AtomicBool,
    failed: AtomicBool,
    error: Mutex<Option<IoError>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A sink sent at a constant bitrate by a thread of its own.
pub struct Paced<S: PacketSink + 'static> {
    name: String,
    shared: Arc<Shared>,
    epoch: Instant,
    stats: Arc<CbrStats>,
    settings: CbrSettings,
    thread: Option<JoinHandle<S>>,
}

impl<S: PacketSink + 'static> std::fmt::Debug for Paced<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paced")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S: PacketSink + 'static> Paced<S> {
    /// Start sending `sink` at `settings.bitrate`; `name` names the thread and errors.
    pub fn start(name: &str, settings: CbrSettings, sink: S) -> IoResult<Paced<S>> {
        let stats = Arc::new(CbrStats::default());
        let shared = Arc::new(Shared {
            cbr: Mutex::new(Cbr::new(settings, stats.clone())),
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        });
        let epoch = Instant::now();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("cbr-{name}"))
            .spawn(move || send(&s, epoch, sink))
            .map_err(|source| IoError::Thread {
                url: name.to_owned(),
                source,
            })?;
        Ok(Paced {
            name: name.to_owned(),
            shared,
            epoch,
            stats,
            settings,
            thread: Some(thread),
        })
    }

    /// The counters (live).
    pub fn stats(&self) -> &Arc<CbrStats> {
        &self.stats
    }

    /// The settings it runs with.
    pub fn settings(&self) -> CbrSettings {
        self.settings
    }

    /// Queue whole packets for their slots (now is their arrival time).
    pub fn write_batch(&mut self, bytes: &[u8]) -> IoResult<()> {
        self.check()?;
        if !bytes.len().is_multiple_of(PACKET_SIZE) {
            return Err(IoError::PartialPacket {
                url: self.name.clone(),
                len: bytes.len(),
            });
        }
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut cbr = lock(&self.shared.cbr);
        for p in bytes.chunks_exact(PACKET_SIZE) {
            let p: &Packet = p.try_into().expect("chunks_exact gives 188 bytes");
            cbr.push(p, now);
        }
        Ok(())
    }

    /// Nothing is held back here (the thread sends on its schedule); reports a failure.
    pub fn flush(&mut self) -> IoResult<()> {
        self.check()
    }

    fn check(&self) -> IoResult<()> {
        if !self.shared.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(lock(&self.shared.error)
            .take()
            .unwrap_or_else(|| IoError::Closed {
                url: self.name.clone(),
                reason: "its outputs failed".to_owned(),
            }))
    }

    /// Send what is queued (on schedule, at most the longest delay), stop the thread and
    /// give the sink back; None if the thread panicked.
    pub fn finish(mut self) -> Option<S> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> Option<S> {
        self.shared.stop.store(true, Ordering::Release);
        let t = self.thread.take()?;
        match t.join() {
            Ok(sink) => Some(sink),
            Err(_) => {
                tracing::error!(output = %self.name, "the constant-bitrate thread panicked");
                None
            }
        }
    }
}

impl<S: PacketSink + 'static> Drop for Paced<S> {
    fn drop(&mut self) {
        let _ = self.stop_thread();
    }
}

/// The thread: fill and write the slots as they come due until stopped and drained, or
/// the sink fails. Returns the sink.
fn send<S: PacketSink>(shared: &Shared, epoch: Instant, mut sink: S) -> S {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * PACKET_SIZE);
    let mut drain_until: Option<u64> = None;
    loop {
        let now = epoch.elapsed().as_nanos() as u64;
        buf.clear();
        let (due, queued) = {
            let mut cbr = lock(&shared.cbr);
            cbr.emit(now, |p| buf.extend_from_slice(p));
            (cbr.due_ns(DATAGRAM), cbr.queued())
        };
        if !buf.is_empty() {
            if let Err(e) = sink.write_batch(&buf) {
                tracing::warn!(error = %e, "constant-bitrate output failed");
                *lock(&shared.error) = Some(e);
                shared.failed.store(true, Ordering::Release);
                return sink;
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            // what is queued goes out on schedule, for at most the longest delay
            let max_delay = lock(&shared.cbr).settings().max_delay.as_nanos() as u64;
            let until = *drain_until.get_or_insert(now + max_delay);
            if queued == 0 || now >= until {
                if let Err(e) = sink.flush() {
                    *lock(&shared.error) = Some(e);
                    shared.failed.store(true, Ordering::Release);
                }
                return sink;
            }
        }
        let wait = Duration::from_nanos(due.saturating_sub(epoch.elapsed().as_nanos() as u64));
        if !wait.is_zero() {
            std::thread::sleep(wait.min(MAX_SLEEP));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::packet::PacketRef;

    /// Records what it gets and when.
    #[derive(Default)]
    struct Record {
        writes: Vec<(Instant, usize)>,
        bytes: Vec<u8>,
        fail_after: Option<usize>,
    }

    impl PacketSink for Record {
        fn write_batch(&mut self, bytes: &[u8]) -> IoResult<()> {
            if self.fail_after.is_some_and(|n| self.writes.len() >= n) {
                return Err(IoError::Closed {
                    url: "test".to_owned(),
                    reason: "gone".to_owned(),
                });
            }
            self.writes
                .push((Instant::now(), bytes.len() / PACKET_SIZE));
            self.bytes.extend_from_slice(bytes);
            Ok(())
        }
        fn flush(&mut self) -> IoResult<()> {
            Ok(())
        }
    }

    fn settings(bitrate: u64) -> CbrSettings {
        CbrSettings {
            bitrate,
            delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        }
    }

    #[test]
    fn a_burst_goes_out_evenly_at_the_bitrate() {
        let bitrate = 10_000_000;
        let mut p = Paced::start("test", settings(bitrate), Record::default()).unwrap();
        // 200 packets at once, then nothing: they leave over 30 ms, 7 per write
        let burst: Vec<u8> = (0..200u32)
            .flat_map(|i| {
                let mut pkt = [0u8; PACKET_SIZE];
                pkt[..4].copy_from_slice(&[0x47, 0x01, 0x00, 0x10 | (i as u8 & 15)]);
                pkt
            })
            .collect();
        p.write_batch(&burst).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let rec = p.finish().unwrap();
        let total: usize = rec.writes.iter().map(|w| w.1).sum();
        // 300 ms at 10 Mbit/s is about 2,000 slots: every one went out, nulls between
        assert!((1800..=2300).contains(&total), "{total}");
        let real = rec
            .bytes
            .chunks(PACKET_SIZE)
            .filter(|c| PacketRef::new((*c).try_into().unwrap()).pid().value() == 0x100)
            .count();
        assert_eq!(real, 200);
        // most writes are one datagram; none is a burst of the whole queue
        let max = rec.writes.iter().map(|w| w.1).max().unwrap();
        assert!(max < 100, "largest write {max} packets");
        let sevens = rec.writes.iter().filter(|w| w.1 == 7).count();
        assert!(
            sevens * 2 > rec.writes.len(),
            "{sevens} of {}",
            rec.writes.len()
        );
    }

    #[test]
    fn a_failed_sink_is_reported_to_the_writer() {
        let rec = Record {
            fail_after: Some(3),
            ..Record::default()
        };
        let mut p = Paced::start("test", settings(5_000_000), rec).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let err = p.write_batch(&[]).unwrap_err();
        assert!(err.to_string().contains("closed"), "{err}");
        assert!(p.write_batch(&[]).is_err());
        assert!(p.finish().is_some());
    }

    #[test]
    fn finish_sends_what_is_queued() {
        let mut p = Paced::start("test", settings(20_000_000), Record::default()).unwrap();
        let mut pkt = [0u8; PACKET_SIZE];
        pkt[..4].copy_from_slice(&[0x47, 0x01, 0x00, 0x10]);
        let many: Vec<u8> = std::iter::repeat_n(pkt, 500).flatten().collect();
        p.write_batch(&many).unwrap();
        let rec = p.finish().unwrap();
        let real = rec
            .bytes
            .chunks(PACKET_SIZE)
            .filter(|c| c[2] == 0x00)
            .count();
        assert_eq!(real, 500);
    }
}
