//! Sections into transport packets for one PID (ISO/IEC 13818-1 §2.4.4.2: pointer_field, stuffing).

use super::error::TsError;
use super::packet::{build_packet, Packet, Stuffing, MAX_PAYLOAD, PACKET_SIZE};
use super::section::section_total_len;
use super::types::{ContinuityCounter, Pid};

/// Carries sections on one PID and owns its continuity counter, so the PID stays continuous.
///
/// Works for PSI (rewritten PMT, CAT) and private sections (ECM, EMM) alike.
#[derive(Debug, Clone)]
pub struct Packetizer {
    pid: Pid,
    cc: ContinuityCounter,
}

impl Packetizer {
    /// A packetizer for `pid` whose first packet has continuity_counter 0.
    pub fn new(pid: Pid) -> Self {
        Self::with_cc(pid, ContinuityCounter::new(0))
    }

    /// A packetizer for `pid` whose next packet has continuity_counter `next`.
    pub fn with_cc(pid: Pid, next: ContinuityCounter) -> Self {
        Packetizer { pid, cc: next }
    }

    /// The PID written.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The continuity_counter the next packet will carry.
    pub fn next_cc(&self) -> ContinuityCounter {
        self.cc
    }

    /// Packets `sections` (complete sections back to back) would take; errors like `packetize`.
    pub fn packet_count(sections: &[u8]) -> Result<usize, TsError> {
        check_sections(sections)?;
        let mut n = 0;
        walk(sections, |_, _, _| n += 1);
        Ok(n)
    }

    /// Emit `sections` (complete sections back to back) as packets; returns the packet count.
    ///
    /// A packet where a section begins gets PUSI and a pointer_field; a section may begin right
    /// after the previous one in the same packet; the last packet is padded with 0xFF.
    pub fn packetize<F>(&mut self, sections: &[u8], mut emit: F) -> Result<usize, TsError>
    where
        F: FnMut(&Packet),
    {
        check_sections(sections)?;
        let mut pkt = [0xFF; PACKET_SIZE];
        let mut n = 0;
        let pid = self.pid;
        let cc = &mut self.cc;
        walk(sections, |pointer, chunk, pusi| {
            match pointer {
                Some(p) => {
                    // the pointer byte then the chunk; build_packet pads after it
                    let mut payload = [0xFF; MAX_PAYLOAD];
                    payload[0] = p;
                    payload[1..1 + chunk.len()].copy_from_slice(chunk);
                    build_packet(
                        &mut pkt,
                        pid,
                        pusi,
                        *cc,
                        &payload[..1 + chunk.len()],
                        Stuffing::Padding,
                    );
                }
                None => {
                    build_packet(&mut pkt, pid, pusi, *cc, chunk, Stuffing::Padding);
                }
            }
            *cc = cc.next();
            n += 1;
            emit(&pkt);
        });
        Ok(n)
    }

    /// Like `packetize`, appending the packets to `out` (reuse it to avoid allocating).
    pub fn packetize_into(
        &mut self,
        sections: &[u8],
        out: &mut Vec<Packet>,
    ) -> Result<usize, TsError> {
        self.packetize(sections, |p| out.push(*p))
    }
}

/// Check that `sections` is a whole number of sections, none starting with 0xFF.
fn check_sections(sections: &[u8]) -> Result<(), TsError> {
    super::section::check_sections(sections, 0x00..=0xFE).map(|_| ())
}

/// Split checked `sections` into packet payloads: (pointer_field, bytes, PUSI) per packet.
fn walk(sections: &[u8], mut packet: impl FnMut(Option<u8>, &[u8], bool)) {
    let len = sections.len();
    let mut pos = 0;
    // start of the first section not yet begun in an emitted packet
    let mut next_start = 0;
    while pos < len {
        let to_start = next_start - pos;
        let take;
        if next_start < len && to_start < MAX_PAYLOAD - 1 {
            take = (MAX_PAYLOAD - 1).min(len - pos);
            packet(Some(to_start as u8), &sections[pos..pos + take], true);
        } else {
            // no section may begin here: stop at the next start (0xFF pads the packet)
            take = MAX_PAYLOAD.min(len - pos).min(to_start);
            packet(None, &sections[pos..pos + take], false);
        }
        pos += take;
        while next_start < pos {
            next_start += section_total_len(&sections[next_start..]).unwrap_or(len);
        }
    }
}
