//! The data-path loop: read a batch, process it, write it. Plain thread, no async.

use std::time::{Duration, Instant};

use crate::io::{Input, Output, PacketBatch, ReadStatus};

use super::descrambler::Descrambler;
use super::error::ScrambleError;
use super::scrambler::Scrambler;

/// Settings of the loop. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Packets per batch. Default 512.
    pub batch_packets: usize,
    /// Longest wait for a live input before a partial batch is processed. Default 2 ms.
    pub flush_interval: Duration,
    /// Stop when a live input has sent nothing for this long. Default: never.
    pub idle_timeout: Option<Duration>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            batch_packets: 512,
            flush_interval: Duration::from_millis(2),
            idle_timeout: None,
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
}

enum Stage<'a> {
    Scramble(&'a mut Scrambler),
    Descramble(&'a mut Descrambler),
}

/// Scramble `input` into `output` until the input ends (or idles out).
pub fn run_scramble(
    input: &mut Input,
    output: &mut Output,
    scrambler: &mut Scrambler,
    opts: &RunOptions,
) -> Result<RunEnd, ScrambleError> {
    run(input, output, Stage::Scramble(scrambler), opts)
}

/// Descramble `input` into `output` until the input ends (or idles out).
pub fn run_descramble(
    input: &mut Input,
    output: &mut Output,
    descrambler: &mut Descrambler,
    opts: &RunOptions,
) -> Result<RunEnd, ScrambleError> {
    run(input, output, Stage::Descramble(descrambler), opts)
}

fn run(
    input: &mut Input,
    output: &mut Output,
    mut stage: Stage<'_>,
    opts: &RunOptions,
) -> Result<RunEnd, ScrambleError> {
    let mut batch = PacketBatch::with_capacity(opts.batch_packets.max(1));
    let mut last_data = Instant::now();
    let end = loop {
        match input.read_batch(&mut batch, opts.flush_interval)? {
            ReadStatus::Packets(_) => {
                last_data = Instant::now();
                match &mut stage {
                    Stage::Scramble(s) => {
                        let out = s.process(batch.packets())?;
                        output.write_batch(out)?;
                    }
                    Stage::Descramble(d) => {
                        d.process(batch.packets_mut())?;
                        output.write_packets(&batch)?;
                    }
                }
            }
            ReadStatus::TimedOut => {
                if let Stage::Scramble(s) = &mut stage {
                    s.idle()?;
                }
                output.flush()?;
                if opts
                    .idle_timeout
                    .is_some_and(|limit| last_data.elapsed() >= limit)
                {
                    break RunEnd::Idle;
                }
            }
            ReadStatus::EndOfStream => break RunEnd::EndOfStream,
        }
    };
    output.flush()?;
    Ok(end)
}
