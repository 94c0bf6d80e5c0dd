//! Where the data path writes packets: one [`Output`] or an [`OutputSet`] of several.

use super::{IoResult, Output, OutputSet};

/// A destination the output stage writes whole packets to. Implemented by [`Output`] and
/// [`OutputSet`], so the run loop serves one output or many the same way (static dispatch).
pub trait PacketSink: Send {
    /// Write whole packets (`bytes.len()` a multiple of 188).
    fn write_batch(&mut self, bytes: &[u8]) -> IoResult<()>;
    /// Send or write out anything held back.
    fn flush(&mut self) -> IoResult<()>;
}

impl PacketSink for Output {
    fn write_batch(&mut self, bytes: &[u8]) -> IoResult<()> {
        Output::write_batch(self, bytes)
    }

    fn flush(&mut self) -> IoResult<()> {
        Output::flush(self)
    }
}

impl PacketSink for OutputSet {
    fn write_batch(&mut self, bytes: &[u8]) -> IoResult<()> {
        OutputSet::write_batch(self, bytes)
    }

    fn flush(&mut self) -> IoResult<()> {
        OutputSet::flush(self)
    }
}
