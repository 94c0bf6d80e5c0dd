//! Control words per crypto period: generated in order, logged in order, kept for a few
//! periods (the ECM of period N carries CW(N) and CW(N+1), and a negative delay_start
//! needs CW(N+2) while period N is still on).

use std::collections::VecDeque;

use csa::{Algorithm, Parity};

use super::config::KeyMode;
use super::cw::{Cw, CwLogWriter};
use super::error::ScrambleError;

/// A crypto period number, counted from 0 at the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CryptoPeriod(pub u64);

impl CryptoPeriod {
    /// Even periods use the even key (TSC 10), odd ones the odd key (TSC 11).
    pub fn parity(self) -> Parity {
        if self.0.is_multiple_of(2) {
            Parity::Even
        } else {
            Parity::Odd
        }
    }

    /// The period after this one.
    pub fn next(self) -> CryptoPeriod {
        CryptoPeriod(self.0 + 1)
    }
}

/// Where a period's CW comes from, and the log of every CW handed out.
#[derive(Debug)]
pub struct KeySource {
    mode: KeyMode,
    algorithm: Algorithm,
    checksum: bool,
    /// CWs of periods `first..first + window.len()`.
    window: VecDeque<Cw>,
    first: u64,
    log: Option<CwLogWriter>,
    /// Random generation failures that made a period reuse the previous CW.
    pub random_failures: u64,
}

impl KeySource {
    /// A source for `mode`; CWs are checked against `algorithm`.
    pub fn new(
        mode: KeyMode,
        algorithm: Algorithm,
        checksum: bool,
        log: Option<CwLogWriter>,
    ) -> Result<Self, ScrambleError> {
        match &mode {
            KeyMode::Rotating => {}
            KeyMode::Fixed(cw) => cw.check_for(algorithm)?,
            KeyMode::FixedPair(e, o) => {
                e.check_for(algorithm)?;
                o.check_for(algorithm)?;
            }
        }
        let mut src = KeySource {
            mode,
            algorithm,
            checksum,
            window: VecDeque::with_capacity(4),
            first: 0,
            log,
            random_failures: 0,
        };
        if let KeyMode::Fixed(cw) = &src.mode {
            // one key for the whole run: one line in the log
            let cw = cw.clone();
            if let Some(log) = &mut src.log {
                log.append(&cw)?;
            }
        }
        Ok(src)
    }

    /// True when the key never changes (one fixed CW): no crypto periods.
    pub fn is_single_fixed(&self) -> bool {
        matches!(self.mode, KeyMode::Fixed(_))
    }

    /// The CW of `period`, generating (and logging) every period up to it in order.
    pub fn cw(&mut self, period: CryptoPeriod) -> Result<&Cw, ScrambleError> {
        if let KeyMode::Fixed(_) = &self.mode {
            return match &self.mode {
                KeyMode::Fixed(cw) => Ok(cw),
                _ => unreachable!("checked above"),
            };
        }
        if period.0 < self.first {
            return Err(ScrambleError::Config(format!(
                "CW of crypto period {} already forgotten",
                period.0
            )));
        }
        while self.first + (self.window.len() as u64) <= period.0 {
            let n = self.first + self.window.len() as u64;
            let cw = self.make(n)?;
            if let Some(log) = &mut self.log {
                log.append(&cw)?;
            }
            self.window.push_back(cw);
        }
        Ok(&self.window[(period.0 - self.first) as usize])
    }

    /// Forget CWs of periods before `period`.
    pub fn forget_before(&mut self, period: CryptoPeriod) {
        while self.first < period.0 && !self.window.is_empty() {
            self.window.pop_front();
            self.first += 1;
        }
    }

    fn make(&mut self, n: u64) -> Result<Cw, ScrambleError> {
        match &self.mode {
            KeyMode::Fixed(cw) => Ok(cw.clone()),
            KeyMode::FixedPair(e, o) => Ok(if n.is_multiple_of(2) {
                e.clone()
            } else {
                o.clone()
            }),
            KeyMode::Rotating => match Cw::random(self.algorithm, self.checksum) {
                Ok(cw) => Ok(cw),
                // fail closed: hold the last CW rather than stop or go clear
                Err(e) => match self.window.back() {
                    Some(last) => {
                        self.random_failures += 1;
                        Ok(last.clone())
                    }
                    None => Err(e),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_pair_alternates() {
        let e = Cw::from_hex("1111111111111111").unwrap();
        let o = Cw::from_hex("2222222222222222").unwrap();
        let mut k = KeySource::new(KeyMode::FixedPair(e, o), Algorithm::Csa2, true, None).unwrap();
        assert_eq!(k.cw(CryptoPeriod(3)).unwrap().to_hex(), "2222222222222222");
        assert_eq!(k.cw(CryptoPeriod(2)).unwrap().to_hex(), "1111111111111111");
        k.forget_before(CryptoPeriod(3));
        assert!(k.cw(CryptoPeriod(2)).is_err());
        let mut r = KeySource::new(KeyMode::Rotating, Algorithm::Csa2, true, None).unwrap();
        let a = r.cw(CryptoPeriod(0)).unwrap().clone();
        let b = r.cw(CryptoPeriod(1)).unwrap().clone();
        assert_ne!(a, b);
        assert_eq!(CryptoPeriod(1).parity(), Parity::Odd);
    }
}
