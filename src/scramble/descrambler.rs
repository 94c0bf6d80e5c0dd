//! The descrambling stage: clear TS back from a fixed CW (pair) or a CW log.
//!
//! With a CW log, line N is the CW of crypto period N. The stream starts in period 0
//! (or 1 if its first scrambled packet is odd); each time the TSC parity of the
//! scrambled packets flips, the next line is used. The key context holds the CWs of
//! the current and the next period; a batch is cut where the parity flips so every
//! engine call sees one key pair that is right for all its packets.

use std::path::PathBuf;

use csa::{Algorithm, KeyContext, Parity};

use super::cw::{read_cw_log, Cw};
use super::error::ScrambleError;
use super::stats::Counters;
use crate::ts::packet::{Packet, PACKET_SIZE};
use crate::ts::{PacketRef, Pid};

/// Where the descrambler's keys come from.
#[derive(Debug, Clone)]
pub enum DescrambleKeys {
    /// One CW for both parities.
    Fixed(Cw),
    /// An even and an odd CW.
    Pair(Cw, Cw),
    /// One CW per crypto period, in order (a CW log).
    Log(Vec<Cw>),
    /// A CW log file, read now and read again when the stream gets past its end (so a
    /// live descrambler can follow the log of a live scrambler).
    LogFile(PathBuf),
}

/// Descrambles a transport stream in place, batch by batch.
#[derive(Debug)]
pub struct Descrambler {
    ctx: KeyContext,
    log: Option<Vec<Cw>>,
    log_path: Option<PathBuf>,
    /// Period (line) in use, once the first scrambled packet was seen.
    period: Option<usize>,
    parity: Option<Parity>,
    counters: Counters,
    /// Periods past the end of the CW log (the last keys were kept).
    pub missing_cws: u64,
    warned_missing: bool,
}

impl Descrambler {
    /// A descrambler for `algorithm` with `keys`.
    pub fn new(algorithm: Algorithm, keys: DescrambleKeys) -> Result<Self, ScrambleError> {
        let mut log_path = None;
        let keys = match keys {
            DescrambleKeys::LogFile(path) => {
                let cws = read_cw_log(&path)?;
                log_path = Some(path);
                DescrambleKeys::Log(cws)
            }
            k => k,
        };
        let (ctx, log) = match keys {
            DescrambleKeys::Fixed(cw) => {
                cw.check_for(algorithm)?;
                (
                    KeyContext::from_bytes(algorithm, cw.as_bytes(), cw.as_bytes())?,
                    None,
                )
            }
            DescrambleKeys::Pair(e, o) => {
                e.check_for(algorithm)?;
                o.check_for(algorithm)?;
                (
                    KeyContext::from_bytes(algorithm, e.as_bytes(), o.as_bytes())?,
                    None,
                )
            }
            DescrambleKeys::Log(cws) => {
                for cw in &cws {
                    cw.check_for(algorithm)?;
                }
                let first = cws.first().ok_or_else(|| {
                    ScrambleError::Config("the CW log has no control word".to_owned())
                })?;
                let second = cws.get(1).unwrap_or(first);
                (
                    KeyContext::from_bytes(algorithm, first.as_bytes(), second.as_bytes())?,
                    Some(cws),
                )
            }
            DescrambleKeys::LogFile(_) => unreachable!("read above"),
        };
        Ok(Descrambler {
            ctx,
            log,
            log_path,
            period: None,
            parity: None,
            counters: Counters::default(),
            missing_cws: 0,
            warned_missing: false,
        })
    }

    /// The counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Descramble `packets` in place (PSI-range and null PIDs are never touched).
    pub fn process(&mut self, packets: &mut [Packet]) -> Result<(), ScrambleError> {
        let mut seg_start = 0;
        for i in 0..packets.len() {
            let p = PacketRef::new(&packets[i]);
            self.counters.stream.packets_in += 1;
            if !p.sync_ok() {
                continue;
            }
            let pid = p.pid();
            let c = self.counters.pid_mut(pid);
            c.input += 1;
            let tsc = packets[i][3] >> 6;
            let parity = match tsc {
                0b10 => Parity::Even,
                0b11 => Parity::Odd,
                _ => {
                    c.passed += 1;
                    continue;
                }
            };
            if pid.is_psi_reserved() || pid == Pid::NULL {
                c.passed += 1;
                continue;
            }
            c.scrambled += 1;
            if self.parity != Some(parity) {
                // descramble what came before under the old keys, then move on
                self.run(&mut packets[seg_start..i])?;
                seg_start = i;
                self.flip(parity)?;
            }
        }
        self.run(&mut packets[seg_start..])?;
        self.counters.stream.packets_out += packets.len() as u64;
        Ok(())
    }

    fn run(&mut self, packets: &mut [Packet]) -> Result<(), ScrambleError> {
        if packets.is_empty() {
            return Ok(());
        }
        // leave PSI-range and null PIDs alone even if their TSC bits are set
        let flat = packets.as_flattened_mut();
        let mut start = 0;
        let n = flat.len() / PACKET_SIZE;
        for i in 0..n {
            let pid = PacketRef::new(
                flat[i * PACKET_SIZE..][..PACKET_SIZE]
                    .try_into()
                    .expect("188"),
            )
            .pid();
            if pid.is_psi_reserved() || pid == Pid::NULL {
                self.ctx
                    .descramble(&mut flat[start * PACKET_SIZE..i * PACKET_SIZE])?;
                start = i + 1;
            }
        }
        self.ctx.descramble(&mut flat[start * PACKET_SIZE..])?;
        Ok(())
    }

    /// Read the log file again if it has no line `line` yet (a live scrambler appends).
    fn reload_if_short(&mut self, line: usize) {
        let short = self.log.as_ref().is_some_and(|l| l.len() <= line);
        if let (true, Some(path)) = (short, &self.log_path) {
            if let Ok(cws) = read_cw_log(path) {
                if cws.len() > self.log.as_ref().map_or(0, Vec::len) {
                    self.log = Some(cws);
                }
            }
        }
    }

    /// The scrambled packets now use `parity`.
    fn flip(&mut self, parity: Parity) -> Result<(), ScrambleError> {
        self.parity = Some(parity);
        if self.log.is_none() {
            return Ok(());
        }
        let period = match self.period {
            None => usize::from(parity == Parity::Odd),
            Some(p) => p + 1,
        };
        self.period = Some(period);
        self.reload_if_short(period + 1);
        let Some(log) = &self.log else {
            return Ok(());
        };
        match log.get(period) {
            Some(cw) => {
                self.ctx.set_key(parity, cw.as_bytes())?;
                if let Some(next) = log.get(period + 1) {
                    self.ctx.set_key(parity.flip(), next.as_bytes())?;
                }
            }
            None => {
                self.missing_cws += 1;
                if !self.warned_missing {
                    self.warned_missing = true;
                    tracing::warn!(
                        period,
                        lines = log.len(),
                        "the CW log ends before the stream; keeping the last keys"
                    );
                }
            }
        }
        Ok(())
    }
}
