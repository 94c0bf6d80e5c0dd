//! Where the data path reads packets from: one [`Input`], or anything built on inputs (a
//! head-end channel's primary and backup inputs), so the run loop serves them the same way.

use std::sync::Arc;
use std::time::Duration;

use super::{Input, IoResult, IoStats, PacketBatch, ReadStatus};

/// A source of whole TS packets for the run loop.
pub trait PacketSource: Send {
    /// Clear `batch` and fill it: live sources wait at most `timeout` for the first
    /// packet and then return what is ready; files fill the batch unless they end.
    fn read_batch(&mut self, batch: &mut PacketBatch, timeout: Duration) -> IoResult<ReadStatus>;
    /// The counters of what the run loop takes (a monitor may hold them).
    fn stats(&self) -> &Arc<IoStats>;
    /// Whether packets arrive in real time rather than as fast as they can be read.
    fn is_live(&self) -> bool;
}

impl PacketSource for Input {
    fn read_batch(&mut self, batch: &mut PacketBatch, timeout: Duration) -> IoResult<ReadStatus> {
        Input::read_batch(self, batch, timeout)
    }

    fn stats(&self) -> &Arc<IoStats> {
        Input::stats(self)
    }

    fn is_live(&self) -> bool {
        Input::is_live(self)
    }
}
