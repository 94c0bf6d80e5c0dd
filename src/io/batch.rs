//! A reusable batch of 188-byte TS packets.

/// Size of one MPEG-TS packet (ISO/IEC 13818-1 §2.4.3.2).
pub const TS_PACKET_SIZE: usize = 188;
/// The sync byte every TS packet starts with.
pub const TS_SYNC_BYTE: u8 = 0x47;

/// A contiguous, reusable buffer of whole TS packets.
///
/// The capacity is fixed when the batch is made; nothing here allocates after
/// [`PacketBatch::with_capacity`]. `len` counts the packets in use, from the
/// front of the buffer.
#[derive(Clone, Debug)]
pub struct PacketBatch {
    buf: Vec<[u8; TS_PACKET_SIZE]>,
    len: usize,
}

impl PacketBatch {
    /// A batch that holds up to `packets` packets (at least one).
    pub fn with_capacity(packets: usize) -> Self {
        Self {
            buf: vec![[0u8; TS_PACKET_SIZE]; packets.max(1)],
            len: 0,
        }
    }

    /// How many packets the batch can hold.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Packets in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No packets in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every slot is in use.
    pub fn is_full(&self) -> bool {
        self.len == self.buf.len()
    }

    /// Free slots.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Forget every packet (keeps the memory).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keep only the first `packets` packets.
    pub fn truncate(&mut self, packets: usize) {
        self.len = self.len.min(packets);
    }

    /// The packets in use.
    pub fn packets(&self) -> &[[u8; TS_PACKET_SIZE]] {
        &self.buf[..self.len]
    }

    /// The packets in use, for in-place editing.
    pub fn packets_mut(&mut self) -> &mut [[u8; TS_PACKET_SIZE]] {
        &mut self.buf[..self.len]
    }

    /// The packets in use as one byte slice (`len() * 188` bytes).
    pub fn as_bytes(&self) -> &[u8] {
        self.buf[..self.len].as_flattened()
    }

    /// Append one packet; `false` (and nothing copied) when the batch is full.
    pub fn push(&mut self, packet: &[u8; TS_PACKET_SIZE]) -> bool {
        match self.push_slot() {
            Some(slot) => {
                slot.copy_from_slice(packet);
                true
            }
            None => false,
        }
    }

    /// Claim the next free slot (counted as in use) for the caller to fill.
    pub fn push_slot(&mut self) -> Option<&mut [u8; TS_PACKET_SIZE]> {
        let slot = self.buf.get_mut(self.len)?;
        self.len += 1;
        Some(slot)
    }

    /// The free slots, for a reader to fill in place; [`PacketBatch::commit`] then counts
    /// the ones it filled.
    pub fn spare_mut(&mut self) -> &mut [[u8; TS_PACKET_SIZE]] {
        &mut self.buf[self.len..]
    }

    /// Count the first `packets` free slots as in use (at most the free slots), after
    /// filling them through [`PacketBatch::spare_mut`].
    pub fn commit(&mut self, packets: usize) {
        self.len += packets.min(self.remaining());
    }

    /// Copy as many whole packets from `bytes` as fit; returns bytes consumed
    /// (a multiple of 188). Sync bytes are not checked here.
    pub fn extend_from_bytes(&mut self, bytes: &[u8]) -> usize {
        let n = (bytes.len() / TS_PACKET_SIZE).min(self.remaining());
        let taken = n * TS_PACKET_SIZE;
        self.buf[self.len..self.len + n]
            .as_flattened_mut()
            .copy_from_slice(&bytes[..taken]);
        self.len += n;
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_view() {
        let mut b = PacketBatch::with_capacity(3);
        assert_eq!(b.capacity(), 3);
        assert!(b.is_empty());
        let mut p = [0u8; TS_PACKET_SIZE];
        p[0] = TS_SYNC_BYTE;
        p[1] = 7;
        assert!(b.push(&p));
        let bytes = [p, p].concat();
        assert_eq!(b.extend_from_bytes(&bytes), 2 * TS_PACKET_SIZE);
        assert!(b.is_full());
        assert!(!b.push(&p));
        assert_eq!(b.extend_from_bytes(&bytes), 0);
        assert_eq!(b.as_bytes().len(), 3 * TS_PACKET_SIZE);
        assert_eq!(b.packets()[2][1], 7);
        b.packets_mut()[0][1] = 9;
        assert_eq!(b.as_bytes()[1], 9);
        b.truncate(1);
        assert_eq!(b.len(), 1);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(PacketBatch::with_capacity(0).capacity(), 1);
    }

    #[test]
    fn fill_in_place() {
        let mut b = PacketBatch::with_capacity(4);
        b.push(&[1u8; TS_PACKET_SIZE]);
        assert_eq!(b.spare_mut().len(), 3);
        b.spare_mut()[0][0] = 2;
        b.spare_mut()[1][0] = 3;
        b.commit(2);
        assert_eq!(b.len(), 3);
        assert_eq!(b.packets()[1][0], 2);
        assert_eq!(b.packets()[2][0], 3);
        b.commit(10);
        assert!(b.is_full());
        assert!(b.spare_mut().is_empty());
    }

    #[test]
    fn partial_bytes_leave_tail() {
        let mut b = PacketBatch::with_capacity(4);
        let bytes = vec![TS_SYNC_BYTE; TS_PACKET_SIZE + 100];
        assert_eq!(b.extend_from_bytes(&bytes), TS_PACKET_SIZE);
        assert_eq!(b.len(), 1);
    }
}
