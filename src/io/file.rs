//! Files and pipes: file/stdin inputs and file/stdout outputs.
//!
//! Inputs read large chunks into one reused buffer and resynchronise them
//! (files may start mid-packet or carry junk). Stdin is polled, so a live
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

use super::batch::{PacketBatch, TS_PACKET_SIZE};
use super::error::{IoError, IoResult};
use super::stats::IoStats;
use super::sync::Resync;
use super::ReadStatus;

/// Bytes read per read() call (a multiple of 188).
pub const READ_CHUNK: usize = 348 * TS_PACKET_SIZE; // 65,424 bytes
/// Output buffer size.
pub const WRITE_BUFFER: usize = 256 * 1024;

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
    pub fn stats(&self) -> &IoStats {
        &self.stats
    }

    /// Open a file for reading.
    pub fn open_file(path: &Path, stats: Arc<IoStats>) -> IoResult<Self> {
        let url = path.display().to_string();
        let file = File::open(path).map_err(|source| IoError::Open {
            url: url.clone(),
            source,
        })?;
        let poll = !file.metadata().map(|m| m.is_file()).unwrap_or(false);
        Ok(Self::new(url, file, poll, stats))
    }

    /// Read standard input (a duplicate of fd 0, read without std's buffer).
    pub fn stdin(stats: Arc<IoStats>) -> IoResult<Self> {
        let url = "- (stdin)".to_owned();
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| IoError::Open {
                url: url.clone(),
                source,
            })?;
        let file = File::from(fd);
        let poll = !file.metadata().map(|m| m.is_file()).unwrap_or(false);
        Ok(Self::new(url, file, poll, stats))
    }

    fn new(url: String, file: File, poll: bool, stats: Arc<IoStats>) -> Self {
        Self {
            url,
            file,
            poll,
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
            if self.poll {
                let ms = if batch.is_empty() && !waited {
                    u16::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(u16::MAX)
                } else {
                    0
                };
                let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
                waited = true;
                match poll(&mut fds, PollTimeout::from(ms)) {
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
}

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
        let url = "- (stdout)".to_owned();
        let fd = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| IoError::Open {
                url: url.clone(),
                source,
            })?;
        Ok(Self {
            url,
            out: BufWriter::with_capacity(WRITE_BUFFER, File::from(fd)),
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

    /// Buffer (and write when the buffer fills) whole packets.
    pub fn write(&mut self, bytes: &[u8]) -> IoResult<()> {
        if let Err(e) = self.out.write_all(bytes) {
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
