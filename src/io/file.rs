//! Files and pipes: file/stdin inputs and file/stdout outputs.
//!
//! Inputs read large chunks into one reused buffer and resynchronise them
//! (files may start mid-packet or carry junk). Once a regular file is locked
//! and aligned, it is read straight into the batch instead (one read() per
//! batch, no copy), with the resync's checks applied in place. Stdin is polled, so a live
//! pipe (`ffmpeg ... -f mpegts - | castmux`) still honours read timeouts.
//! Outputs are buffered; a reader that goes away (EPIPE) is reported as
//! [`IoError::Closed`].

use std::fs::File;
use std::io::{BufWriter, ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::batch::{PacketBatch, TS_PACKET_SIZE, TS_SYNC_BYTE};
use super::error::{IoError, IoResult};
use super::stats::IoStats;
use super::sync::Resync;
use super::{poll_timeout, ReadStatus};

/// Bytes read per read() call (a multiple of 188).
pub const READ_CHUNK: usize = 348 * TS_PACKET_SIZE; // 65,424 bytes
/// Free slots (packets) a batch needs for a regular file to be read straight into it.
/// The last packet of each read has no successor to check its length against (see
/// [`Resync`]), so reads stay long: at least this, as `READ_CHUNK` is for the buffer.
pub const DIRECT_READ_MIN: usize = 128;
/// Output buffer size.
pub const WRITE_BUFFER: usize = 256 * 1024;
/// Writes of at least this many bytes (a file's whole batch) skip the buffer: one
/// write() straight from the caller's bytes, no copy. Smaller ones (live batches of a
/// few packets) are gathered in the buffer.
pub const DIRECT_WRITE: usize = 64 * 1024;

/// A byte-stream input: a file, or stdin.
#[derive(Debug)]
pub struct StreamInput {
    url: String,
    file: File,
    /// Poll before reading (pipes, terminals); regular files are always ready.
    poll: bool,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    finished: bool,
    resync: Resync,
    stats: Arc<IoStats>,
}

impl StreamInput {
    /// The counters this input updates.
    pub fn stats(&self) -> &Arc<IoStats> {
        &self.stats
    }

    /// Open a file for reading.
    pub fn open_file(path: &Path, stats: Arc<IoStats>) -> IoResult<Self> {
        let url = path.display().to_string();
        let file = File::open(path).map_err(|source| IoError::Open {
            url: url.clone(),
            source,
        })?;
        Ok(Self::new(url, file, stats))
    }

    /// Read standard input (a duplicate of fd 0, read without std's buffer).
    pub fn stdin(stats: Arc<IoStats>) -> IoResult<Self> {
        let url = "- (stdin)".to_owned();
        let file = dup_std(std::io::stdin(), &url)?;
        Ok(Self::new(url, file, stats))
    }

    fn new(url: String, file: File, stats: Arc<IoStats>) -> Self {
        Self {
            url,
            poll: !file.metadata().map(|m| m.is_file()).unwrap_or(false),
            file,
            buf: vec![0u8; READ_CHUNK],
            start: 0,
            end: 0,
            eof: false,
            finished: false,
            resync: Resync::new(),
            stats,
        }
    }

    /// Fill `batch` (cleared first) from the stream. Regular files fill the
    /// whole batch unless the file ends; pipes return what arrived within
    /// `timeout`.
    pub fn read_batch(
        &mut self,
        batch: &mut PacketBatch,
        timeout: Duration,
    ) -> IoResult<ReadStatus> {
        batch.clear();
        let mut waited = false;
        while !batch.is_full() {
            if self.start < self.end {
                let used = self
                    .resync
                    .push(&self.buf[self.start..self.end], batch, &self.stats);
                self.start += used;
                continue;
            }
            if self.eof {
                if !self.finished {
                    self.finished = self.resync.finish(batch, &self.stats);
                    continue;
                }
                break;
            }
            if !self.poll
                && self.resync.is_locked()
                && self.resync.pending() == 0
                && batch.remaining() >= DIRECT_READ_MIN
            {
                self.read_direct(batch)?;
                continue;
            }
            if self.poll {
                let wait = if batch.is_empty() && !waited {
                    poll_timeout(timeout)
                } else {
                    PollTimeout::ZERO
                };
                let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
                waited = true;
                match poll(&mut fds, wait) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        return Err(IoError::Read {
                            url: self.url.clone(),
                            source: e.into(),
                        })
                    }
                }
            }
            match self.file.read(&mut self.buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    IoStats::add(&self.stats.bytes_in, n as u64);
                    self.start = 0;
                    self.end = n;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(source) => {
                    return Err(IoError::Read {
                        url: self.url.clone(),
                        source,
                    })
                }
            }
        }
        if batch.is_empty() {
            if self.finished {
                return Ok(ReadStatus::EndOfStream);
            }
            return Ok(ReadStatus::TimedOut);
        }
        IoStats::add(&self.stats.packets_in, batch.len() as u64);
        Ok(ReadStatus::Packets(batch.len()))
    }

    /// Read a regular file straight into the free slots of `batch`, one read() for the
    /// rest of the batch and no copy through `buf`: used once the resync is locked with
    /// nothing held back. Packets pass the checks of the resync's own fast path (sync byte
    /// here, and at the next packet when that byte was read); from the first that fails,
    /// and for a split packet at the end, the bytes go through `buf` and the resync as
    /// usual.
    fn read_direct(&mut self, batch: &mut PacketBatch) -> IoResult<()> {
        let room = batch.spare_mut().as_flattened_mut();
        let n = match self.file.read(room) {
            Ok(0) => {
                self.eof = true;
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(()),
            Err(source) => {
                return Err(IoError::Read {
                    url: self.url.clone(),
                    source,
                })
            }
        };
        IoStats::add(&self.stats.bytes_in, n as u64);
        let got = &room[..n];
        let good = got
            .chunks_exact(TS_PACKET_SIZE)
            .enumerate()
            .take_while(|(i, p)| {
                p[0] == TS_SYNC_BYTE
                    && got
                        .get((i + 1) * TS_PACKET_SIZE)
                        .is_none_or(|b| *b == TS_SYNC_BYTE)
            })
            .count();
        let rest = &got[good * TS_PACKET_SIZE..];
        if !rest.is_empty() {
            // at most the batch's size: bounded by the run options, not by the input
            if self.buf.len() < rest.len() {
                self.buf.resize(rest.len(), 0);
            }
            self.buf[..rest.len()].copy_from_slice(rest);
            self.start = 0;
            self.end = rest.len();
        }
        batch.commit(good);
        Ok(())
    }
}

/// How stdout is named in errors and stats.
pub(crate) const STDOUT_NAME: &str = "- (stdout)";

/// A buffered byte-stream output: a file, or stdout.
#[derive(Debug)]
pub struct StreamOutput {
    url: String,
    out: BufWriter<File>,
    stats: Arc<IoStats>,
}

impl StreamOutput {
    /// Create (truncate) a file.
    pub fn create_file(path: &Path, stats: Arc<IoStats>) -> IoResult<Self> {
        let url = path.display().to_string();
        let file = File::create(path).map_err(|source| IoError::Open {
            url: url.clone(),
            source,
        })?;
        Ok(Self {
            url,
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            stats,
        })
    }

    /// Write to standard output (a duplicate of fd 1, bypassing std's line buffer).
    pub fn stdout(stats: Arc<IoStats>) -> IoResult<Self> {
        let url = STDOUT_NAME.to_owned();
        let file = dup_std(std::io::stdout(), &url)?;
        Ok(Self {
            url,
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            stats,
        })
    }

    fn map_err(&self, source: std::io::Error) -> IoError {
        if source.kind() == ErrorKind::BrokenPipe {
            IoError::Closed {
                url: self.url.clone(),
                reason: source.to_string(),
            }
        } else {
            IoError::Write {
                url: self.url.clone(),
                source,
            }
        }
    }

    /// Buffer (and write when the buffer fills) whole packets; large writes go out at once.
    pub fn write(&mut self, bytes: &[u8]) -> IoResult<()> {
        let res = if bytes.len() >= DIRECT_WRITE {
            // what is buffered goes first, to keep the order
            self.out
                .flush()
                .and_then(|()| self.out.get_mut().write_all(bytes))
        } else {
            self.out.write_all(bytes)
        };
        if let Err(e) = res {
            IoStats::add(&self.stats.send_errors, 1);
            return Err(self.map_err(e));
        }
        IoStats::add(&self.stats.bytes_out, bytes.len() as u64);
        IoStats::add(
            &self.stats.packets_out,
            (bytes.len() / TS_PACKET_SIZE) as u64,
        );
        Ok(())
    }

    /// Write out the buffer.
    pub fn flush(&mut self) -> IoResult<()> {
        self.out.flush().map_err(|e| {
            IoStats::add(&self.stats.send_errors, 1);
            self.map_err(e)
        })
    }
}

/// A `File` on a duplicate of the standard stream `stream` (read or written without std's
/// buffer), named `url` in errors.
fn dup_std(stream: impl AsFd, url: &str) -> IoResult<File> {
    let fd = stream
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| IoError::Open {
            url: url.to_owned(),
            source,
        })?;
    Ok(File::from(fd))
}
