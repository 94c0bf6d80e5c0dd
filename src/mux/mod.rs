//! The multiplex stages after scrambling, before the outputs: constant bitrate with PCR
//! restamping ([`cbr`]), packets dated by the stream's clock ([`dating`]) and the thread that sends it on its schedule ([`paced`]).

pub mod cbr;
pub mod dating;
mod follow;
pub mod paced;

/// Packets the stages' unit tests feed in.
#[cfg(test)]
pub(crate) mod test_packets {
    use crate::ts::packet::{Packet, PacketMut};

    /// A payload-only packet on `pid` with counter `cc`.
    pub fn es(pid: u16, cc: u8) -> Packet {
        let mut p = [0u8; 188];
        p[..4].copy_from_slice(&[0x47, (pid >> 8) as u8, pid as u8, 0x10 | (cc & 15)]);
        p
    }

    /// The same with an adaptation field carrying `pcr`.
    pub fn with_pcr(pid: u16, pcr: u64, cc: u8) -> Packet {
        let mut p = es(pid, cc);
        p[3] |= 0x20;
        p[4] = 7;
        p[5] = 0x10;
        assert!(PacketMut::new(&mut p).set_pcr(pcr));
        p
    }
}
