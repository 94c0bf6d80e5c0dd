//! ECM/EMM datagrams as sections or TS packets (section_TSpkt_flag): conversion both ways.

use crate::ts::packet::PACKET_SIZE;
use crate::ts::{Packet, Packetizer, Pid, SectionAssembler};

/// The PID written in datagram packets an ECMG/EMMG sends; the mux puts its own PID and
/// continuity counter on them.
pub const DATAGRAM_PID: Pid = Pid::NULL;

/// Why a datagram is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// Not a whole number of sections.
    #[error("not whole sections: {0}")]
    BadSections(String),
    /// Not a whole number of 188-byte packets, or packets that give no section.
    #[error("not whole TS packets carrying sections: {0}")]
    BadPackets(String),
}

/// Check that `bytes` are whole sections (at least one) and return their count.
pub fn check_sections(bytes: &[u8]) -> Result<usize, DatagramError> {
    if bytes.is_empty() {
        return Err(DatagramError::BadSections("empty".to_owned()));
    }
    crate::ts::section::check_sections(bytes, 0x00..=0xFE)
        .map_err(|e| DatagramError::BadSections(e.to_string()))
}

/// Append `sections` as TS packets on [`DATAGRAM_PID`] to `out`.
pub fn sections_to_packets(sections: &[u8], out: &mut Vec<u8>) -> Result<(), DatagramError> {
    check_sections(sections)?;
    let mut p = Packetizer::new(DATAGRAM_PID);
    p.packetize(sections, |pkt| out.extend_from_slice(pkt))
        .map_err(|e| DatagramError::BadPackets(e.to_string()))?;
    Ok(())
}

/// The sections carried by `packets` (whole 188-byte packets), appended to `out`.
pub fn packets_to_sections(packets: &[u8], out: &mut Vec<u8>) -> Result<(), DatagramError> {
    if packets.is_empty() || !packets.len().is_multiple_of(PACKET_SIZE) {
        return Err(DatagramError::BadPackets(format!(
            "{} bytes is not a whole number of 188-byte packets",
            packets.len()
        )));
    }
    let mut asm = SectionAssembler::private();
    let mut err = None;
    let start = out.len();
    for chunk in packets.chunks_exact(PACKET_SIZE) {
        let mut pkt: Packet = [0; PACKET_SIZE];
        pkt.copy_from_slice(chunk);
        asm.push(&pkt, |r| match r {
            Ok(s) => out.extend_from_slice(s.bytes()),
            Err(e) => err = Some(e.to_string()),
        });
    }
    if let Some(e) = err {
        out.truncate(start);
        return Err(DatagramError::BadPackets(e));
    }
    if out.len() == start {
        return Err(DatagramError::BadPackets("no complete section".to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut sec = vec![0x80, 0x70, 200];
        sec.extend((0..200).map(|i| i as u8));
        sec.extend_from_slice(&[0x81, 0x70, 1, 9]);
        assert_eq!(check_sections(&sec), Ok(2));
        let mut pk = Vec::new();
        sections_to_packets(&sec, &mut pk).unwrap();
        assert_eq!(pk.len() % 188, 0);
        let mut back = Vec::new();
        packets_to_sections(&pk, &mut back).unwrap();
        assert_eq!(back, sec);
        assert!(packets_to_sections(&pk[..100], &mut back).is_err());
        assert!(check_sections(&sec[..10]).is_err());
        assert!(check_sections(&[]).is_err());
    }
}
