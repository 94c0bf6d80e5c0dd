//! Several outputs of one run (`castmux scramble -o A -o B -o C`): every output gets every
//! packet, in the same order, so each carries the same stream.
//!
//! When one output fails the others go on:
//! - UDP never fails a write: a send error drops that datagram and is counted in the
//!   output's `send_errors` (see [`super::udp`]);
//! - a file, stdout or SRT output whose write or flush fails is closed at once, logged with
//!   its name, counted ([`OutputSet::failed`]) and its error kept ([`OutputSet::status`]);
//!   it gets nothing more;
//! - the set fails only when every output has failed: with one output, its own error
//!   (exactly as a bare [`Output`]), with several, [`IoError::AllOutputsFailed`].
//!
//! Opening is all or nothing for what the operator controls: a file that cannot be created,
//! a UDP address that cannot be bound, or the same output named twice (stdout at most once)
//! is a configuration error and fails the whole set. An SRT output that cannot reach its peer
//! at start ([`IoError::SrtConnect`]) is a network failure like one during the run: it is
//! booked failed (logged, in [`OutputSet::status`]) and the others go on; only when no
//! output is left does the open fail.
//! Each output counts in an [`IoStats`] of its own.

use std::sync::Arc;
use std::time::Duration;

use super::TS_PACKET_SIZE;
use super::{IoError, IoResult, IoStats, IoStatsSnapshot, Output, OutputOptions, OutputUrl};

/// How long closing a failed output may wait (an SRT connection already gone).
const FAILED_CLOSE_WAIT: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Slot {
    name: String,
    /// None once closed (failed, or the set closed).
    output: Option<Output>,
    stats: Arc<IoStats>,
    /// Why it failed, if it did.
    error: Option<String>,
}

/// One output's state, for reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutputStatus {
    /// The output as given (passphrases masked).
    pub name: String,
    /// Its counters.
    pub stats: IoStatsSnapshot,
    /// Why it was closed early; None while it works.
    pub error: Option<String>,
}

/// Outputs that all get the same packets; see the module docs for what a failure does.
#[derive(Debug)]
pub struct OutputSet {
    slots: Vec<Slot>,
    /// Outputs that have not failed.
    live: usize,
}

impl OutputSet {
    /// Open every output of `urls` with `opts` (each with a fresh [`IoStats`];
    /// `opts.stats` is not used). Fails if any cannot be opened, if `urls` is empty, or
    /// if one is named twice.
    pub fn open(urls: &[OutputUrl], opts: &OutputOptions) -> IoResult<Self> {
        if urls.is_empty() {
            return Err(IoError::Unsupported {
                url: "(no output)".to_owned(),
                what: "a run without an output",
                hint: "give at least one -o/--output",
            });
        }
        for (i, u) in urls.iter().enumerate() {
            if urls[..i].iter().any(|p| p.display() == u.display()) {
                return Err(IoError::Unsupported {
                    url: u.display(),
                    what: "the same output twice",
                    hint: "give each output once (stdout `-` at most once)",
                });
            }
        }
        let mut slots = Vec::with_capacity(urls.len());
        let mut unreachable = Vec::new();
        for (i, u) in urls.iter().enumerate() {
            let stats = Arc::<IoStats>::default();
            let o = OutputOptions {
                stats: stats.clone(),
                ..opts.clone()
            };
            let output = match Output::open(u, &o) {
                Ok(output) => Some(output),
                Err(e @ IoError::SrtConnect { .. }) => {
                    unreachable.push((i, e));
                    None
                }
                Err(e) => return Err(e),
            };
            slots.push(Slot {
                name: u.display(),
                output,
                stats,
                error: None,
            });
        }
        let mut set = OutputSet {
            live: slots.len(),
            slots,
        };
        let mut last = None;
        for (i, e) in unreachable {
            last = set.record_failure(i, e).or(last);
        }
        match last {
            // no output left: alone, its own error (as a bare Output), else all failed
            Some(e) => Err(e),
            None => Ok(set),
        }
    }

    /// Outputs in the set (failed ones included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the set has no output (never true for an opened set).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Outputs that failed and were closed.
    pub fn failed(&self) -> usize {
        self.slots.len() - self.live
    }

    /// Each output's name and live counters (shared: a monitor may hold them).
    pub fn stats_handles(&self) -> Vec<(String, Arc<IoStats>)> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), Arc::clone(&s.stats)))
            .collect()
    }

    /// Each output's name, counters and error, in the order given.
    pub fn status(&self) -> Vec<OutputStatus> {
        self.slots
            .iter()
            .map(|s| OutputStatus {
                name: s.name.clone(),
                stats: s.stats.snapshot(),
                error: s.error.clone(),
            })
            .collect()
    }

    /// Write whole packets to every working output. Errs only when the last working
    /// output fails (or a batch is not whole packets, a caller's mistake: then nothing is
    /// written anywhere).
    pub fn write_batch(&mut self, bytes: &[u8]) -> IoResult<()> {
        if !bytes.chunks_exact(TS_PACKET_SIZE).remainder().is_empty() {
            return Err(IoError::PartialPacket {
                url: "every output".to_owned(),
                len: bytes.len(),
            });
        }
        self.each(|o| o.write_batch(bytes))
    }

    /// Every UDP output gathers `burst` datagrams per send ([`Output::set_udp_coalesce`]).
    pub fn set_udp_coalesce(&mut self, burst: usize, max_hold: Duration) {
        for o in self.slots.iter_mut().filter_map(|s| s.output.as_mut()) {
            o.set_udp_coalesce(burst, max_hold);
        }
    }

    /// Flush every working output (a held UDP tail, a file buffer).
    pub fn flush(&mut self) -> IoResult<()> {
        self.each(Output::flush)
    }

    /// Flush and close every working output (SRT waits at most `limit` each). Errs only if
    /// this makes the last working output fail; failures earlier in the run were already
    /// returned by the write that saw them.
    pub fn close(mut self, limit: Duration) -> IoResult<()> {
        let mut last = None;
        for i in 0..self.slots.len() {
            let Some(o) = self.slots[i].output.take() else {
                continue;
            };
            if let Err(e) = o.close(limit) {
                last = self.record_failure(i, e).or(last);
            }
        }
        last.map_or(Ok(()), Err)
    }

    fn each(&mut self, mut f: impl FnMut(&mut Output) -> IoResult<()>) -> IoResult<()> {
        if self.live == 0 {
            return Err(IoError::Closed {
                url: "every output".to_owned(),
                reason: "each one failed earlier in the run".to_owned(),
            });
        }
        let mut last = None;
        for i in 0..self.slots.len() {
            let Some(o) = self.slots[i].output.as_mut() else {
                continue;
            };
            if let Err(e) = f(o) {
                if let Some(o) = self.slots[i].output.take() {
                    // it failed already: its close is only to free it (SRT thread, file)
                    let _ = o.close(FAILED_CLOSE_WAIT);
                }
                last = self.record_failure(i, e).or(last);
            }
        }
        last.map_or(Ok(()), Err)
    }

    /// Book output `i` as failed; the error to return if no output is left working.
    fn record_failure(&mut self, i: usize, e: IoError) -> Option<IoError> {
        self.live -= 1;
        let slot = &mut self.slots[i];
        if e.is_stdout_closed() {
            // `castmux scramble -o - | head`: the pipe's reader chose to stop; not a failure
            tracing::info!(
                output = %slot.name,
                working = self.live,
                "stdout's reader went away; the output is closed"
            );
        } else {
            tracing::error!(
                output = %slot.name,
                error = %e,
                working = self.live,
                "output failed and was closed; the other outputs go on"
            );
        }
        slot.error = Some(e.to_string());
        if self.live > 0 {
            None
        } else if self.slots.len() == 1 {
            Some(e)
        } else {
            Some(IoError::AllOutputsFailed {
                count: self.slots.len(),
                last: Box::new(e),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::TS_SYNC_BYTE;

    fn packets(n: u8) -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let mut p = [0xFFu8; TS_PACKET_SIZE];
                p[..4].copy_from_slice(&[TS_SYNC_BYTE, 0x01, 0x00, 0x10 | (i & 0x0F)]);
                p
            })
            .collect()
    }

    fn file(dir: &std::path::Path, name: &str) -> OutputUrl {
        OutputUrl::File(dir.join(name))
    }

    #[test]
    fn every_output_gets_every_packet() {
        let dir = tempfile::tempdir().unwrap();
        let urls = [file(dir.path(), "a.ts"), file(dir.path(), "b.ts")];
        let mut set = OutputSet::open(&urls, &OutputOptions::default()).unwrap();
        let data = packets(10);
        set.write_batch(&data[..3 * TS_PACKET_SIZE]).unwrap();
        set.flush().unwrap();
        set.write_batch(&data[3 * TS_PACKET_SIZE..]).unwrap();
        let status = set.status();
        set.close(Duration::from_secs(1)).unwrap();
        for name in ["a.ts", "b.ts"] {
            assert_eq!(
                std::fs::read(dir.path().join(name)).unwrap(),
                data,
                "{name}"
            );
        }
        assert!(status
            .iter()
            .all(|s| s.stats.packets_out == 10 && s.error.is_none()));
    }

    #[test]
    fn a_failing_output_is_closed_and_the_others_go_on() {
        let dir = tempfile::tempdir().unwrap();
        // writes to /dev/full fail with ENOSPC (at the first flush of its buffer)
        let urls = [
            file(dir.path(), "a.ts"),
            OutputUrl::File("/dev/full".into()),
        ];
        let mut set = OutputSet::open(&urls, &OutputOptions::default()).unwrap();
        let data = packets(20);
        set.write_batch(&data).unwrap();
        set.flush().unwrap();
        assert_eq!(set.failed(), 1);
        set.write_batch(&data).unwrap();
        let status = set.status();
        assert!(status[0].error.is_none());
        assert!(
            status[1].error.as_deref().unwrap().contains("/dev/full"),
            "{status:?}"
        );
        assert!(status[1].stats.send_errors >= 1);
        set.close(Duration::from_secs(1)).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("a.ts")).unwrap().len(),
            2 * data.len()
        );
    }

    #[test]
    fn the_set_fails_when_every_output_has() {
        let one = [OutputUrl::File("/dev/full".into())];
        let mut set = OutputSet::open(&one, &OutputOptions::default()).unwrap();
        set.write_batch(&packets(2)).unwrap();
        // alone, its own error, as a bare Output gives it
        assert!(matches!(set.flush(), Err(IoError::Write { .. })));
        assert!(set.write_batch(&packets(1)).is_err());

        // several: the first failure is absorbed, the last one fails the set
        let two = [
            OutputUrl::File("/dev/full".into()),
            OutputUrl::File("/dev/./full".into()),
        ];
        let mut set = OutputSet::open(&two, &OutputOptions::default()).unwrap();
        set.write_batch(&packets(2)).unwrap();
        match set.flush() {
            Err(IoError::AllOutputsFailed { count: 2, last }) => {
                assert!(last.to_string().contains("/dev/./full"), "{last}")
            }
            other => panic!("expected every output failed, got {other:?}"),
        }
        assert_eq!(set.failed(), 2);
        // nothing left working to fail at close
        set.close(Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn partial_packets_fail_nothing_and_duplicates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let urls = [file(dir.path(), "a.ts")];
        let mut set = OutputSet::open(&urls, &OutputOptions::default()).unwrap();
        assert!(matches!(
            set.write_batch(&[TS_SYNC_BYTE; 100]),
            Err(IoError::PartialPacket { .. })
        ));
        assert_eq!(set.failed(), 0);
        set.write_batch(&packets(1)).unwrap();

        let twice = [OutputUrl::Stdout, OutputUrl::Stdout];
        let e = OutputSet::open(&twice, &OutputOptions::default()).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        assert!(OutputSet::open(&[], &OutputOptions::default()).is_err());
    }
}
