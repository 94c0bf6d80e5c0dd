//! The load test's synthetic channel: a single-program TS (PAT, PMT, H.264 video with PCR,
//! AAC audio) whose every ES payload says who sent it and when, so the checker can prove
//! each output packet equal to its input without keeping a copy of the input.
//!
//! An ES payload is `[PES header at a unit start] TAG FILLER`: the tag is magic, channel,
//! sequence number (per PID) and send time; the filler is a pseudo-random function of
//! (channel, PID, sequence), so a packet descrambled under the wrong key, moved to another
//! PID or channel, or altered anywhere fails [`verify_es`].

use crate::ts::psi::PatEntry;
use crate::ts::psi::PmtStream;
use crate::ts::psi_write::{write_pat, write_pmt};
use crate::ts::{ContinuityCounter, Descriptors, Packetizer, Pid, StreamType};

/// The program every synthetic channel carries.
pub const PROGRAM: u16 = 1;
/// Its PMT PID.
pub const PMT_PID: u16 = 0x1000;
/// Its H.264 video PID, which also carries the PCR.
pub const VIDEO_PID: u16 = 0x100;
/// Its AAC audio PID.
pub const AUDIO_PID: u16 = 0x101;
/// The ES PIDs, in the order of [`SyntheticStream::sent`].
pub const ES_PIDS: [u16; 2] = [VIDEO_PID, AUDIO_PID];
/// TS packets per UDP datagram, as every IPTV sender does.
pub const PER_DATAGRAM: usize = 7;

const PACKET: usize = 188;
const TAG_MAGIC: [u8; 2] = [0xCA, 0x57];
/// magic, channel, sequence, send time
pub const TAG_LEN: usize = 2 + 2 + 4 + 8;
const PSI_EVERY_NS: u64 = 100_000_000;
const PCR_EVERY_NS: u64 = 40_000_000;
/// One ES packet in this many is audio.
const AUDIO_EVERY: u64 = 8;
/// ES packets per PES packet: video, audio.
const PES_EVERY: [u32; 2] = [24, 4];
const PES_STREAM_ID: [u8; 2] = [0xE0, 0xC0];
/// A PES header with a PTS: 9 fixed bytes and 5 of PTS.
const PES_HEADER_LEN: usize = 14;

/// Who sent an ES packet, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    /// The channel (its index in the load test).
    pub channel: u16,
    /// The packet's number on its PID, from 0.
    pub seq: u32,
    /// Send time, nanoseconds on the load test's clock.
    pub sent_ns: u64,
}

/// Why an ES payload is not one the generator sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// No tag where the payload should start: not ours, or not (rightly) descrambled.
    #[error("no tag")]
    NoTag,
    /// A tag of another channel.
    #[error("tag of channel {0}")]
    OtherChannel(u16),
    /// The tag is right, the bytes after it are not.
    #[error("payload differs from what was sent")]
    Filler,
}

/// One channel's generator state.
#[derive(Debug)]
pub struct SyntheticStream {
    channel: u16,
    pat: [u8; PACKET],
    pmt: [u8; PACKET],
    cc: [ContinuityCounter; 4],
    seq: [u32; 2],
    es_packets: u64,
    next_psi_ns: u64,
    next_pcr_ns: u64,
}

impl SyntheticStream {
    /// Channel `channel`'s stream, starting with PSI.
    pub fn new(channel: u16) -> SyntheticStream {
        SyntheticStream {
            channel,
            pat: psi_packet(0, true),
            pmt: psi_packet(PMT_PID, false),
            cc: [ContinuityCounter::default(); 4],
            seq: [0; 2],
            es_packets: 0,
            next_psi_ns: 0,
            next_pcr_ns: 0,
        }
    }

    /// ES packets sent so far on each of [`ES_PIDS`].
    pub fn sent(&self) -> [u32; 2] {
        self.seq
    }

    /// Appends one datagram of [`PER_DATAGRAM`] packets stamped `now_ns`.
    pub fn datagram(&mut self, now_ns: u64, out: &mut Vec<u8>) {
        let mut n = 0;
        if now_ns >= self.next_psi_ns {
            self.next_psi_ns = now_ns + PSI_EVERY_NS;
            let (pat, pmt) = (self.pat, self.pmt);
            self.push_psi(pat, 2, out);
            self.push_psi(pmt, 3, out);
            n += 2;
        }
        while n < PER_DATAGRAM {
            self.push_es(now_ns, out);
            n += 1;
        }
    }

    fn push_psi(&mut self, mut p: [u8; PACKET], cc: usize, out: &mut Vec<u8>) {
        p[3] = (p[3] & 0xF0) | self.cc[cc].value();
        self.cc[cc] = self.cc[cc].next();
        out.extend_from_slice(&p);
    }

    fn push_es(&mut self, now_ns: u64, out: &mut Vec<u8>) {
        let es = usize::from(self.es_packets % AUDIO_EVERY == AUDIO_EVERY - 1);
        self.es_packets += 1;
        let pid = ES_PIDS[es];
        let seq = self.seq[es];
        self.seq[es] += 1;
        let pusi = seq.is_multiple_of(PES_EVERY[es]);
        let pcr = es == 0 && now_ns >= self.next_pcr_ns;
        let mut p = [0u8; PACKET];
        p[0] = 0x47;
        p[1] = if pusi { 0x40 } else { 0 } | (pid >> 8) as u8;
        p[2] = pid as u8;
        let mut at = 4;
        if pcr {
            self.next_pcr_ns = now_ns + PCR_EVERY_NS;
            p[3] = 0x30;
            // adaptation_field_length 7: flags (PCR) and the 6-byte PCR
            p[4] = 7;
            p[5] = 0x10;
            let pcr27 = now_ns.wrapping_mul(27) / 1000;
            let (base, ext) = ((pcr27 / 300) & ((1 << 33) - 1), pcr27 % 300);
            p[6] = (base >> 25) as u8;
            p[7] = (base >> 17) as u8;
            p[8] = (base >> 9) as u8;
            p[9] = (base >> 1) as u8;
            p[10] = ((base & 1) << 7) as u8 | 0x7E | (ext >> 8) as u8;
            p[11] = ext as u8;
            at = 12;
        } else {
            p[3] = 0x10;
        }
        p[3] |= self.cc[es].value();
        self.cc[es] = self.cc[es].next();
        if pusi {
            // PTS 0.5 s after the send time, 90 kHz
            let pts = (now_ns / 1000 * 9 / 100 + 45_000) & ((1 << 33) - 1);
            p[at..at + 9].copy_from_slice(&[0, 0, 1, PES_STREAM_ID[es], 0, 0, 0x80, 0x80, 5]);
            p[at + 9] = 0x21 | ((pts >> 29) & 0x0E) as u8;
            p[at + 10] = (pts >> 22) as u8;
            p[at + 11] = 0x01 | ((pts >> 14) & 0xFE) as u8;
            p[at + 12] = (pts >> 7) as u8;
            p[at + 13] = 0x01 | ((pts << 1) & 0xFE) as u8;
            at += PES_HEADER_LEN;
        }
        write_tag(
            Tag {
                channel: self.channel,
                seq,
                sent_ns: now_ns,
            },
            pid,
            &mut p[at..],
        );
        out.extend_from_slice(&p);
    }
}

/// One packet of the PAT (`pat`) or the PMT, CC to be set.
fn psi_packet(pid: u16, pat: bool) -> [u8; PACKET] {
    let mut section = Vec::new();
    let built = if pat {
        write_pat(
            &mut section,
            1,
            0,
            &[PatEntry {
                program_number: PROGRAM,
                pid: Pid::new(PMT_PID),
            }],
        )
    } else {
        let stream = |st: u8, pid: u16| PmtStream {
            stream_type: StreamType(st),
            elementary_pid: Pid::new(pid),
            descriptors: Descriptors::new(&[]).expect("empty"),
        };
        write_pmt(
            &mut section,
            PROGRAM,
            0,
            Pid::new(VIDEO_PID),
            &Descriptors::new(&[]).expect("empty"),
            [stream(0x1B, VIDEO_PID), stream(0x0F, AUDIO_PID)],
        )
    };
    built.expect("a one-program PAT/PMT fits a section");
    let mut out = [0xFF; PACKET];
    Packetizer::new(Pid::new(pid))
        .packetize(&section, |p| out = *p)
        .expect("whole sections");
    out
}

/// The filler's generator: splitmix64 over (channel, PID, sequence).
fn filler_state(channel: u16, pid: u16, seq: u32) -> u64 {
    (u64::from(channel) << 48) ^ (u64::from(pid) << 32) ^ u64::from(seq)
}

fn splitmix(state: &mut u64) -> [u8; 8] {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).to_le_bytes()
}

fn write_tag(tag: Tag, pid: u16, out: &mut [u8]) {
    out[..2].copy_from_slice(&TAG_MAGIC);
    out[2..4].copy_from_slice(&tag.channel.to_be_bytes());
    out[4..8].copy_from_slice(&tag.seq.to_be_bytes());
    out[8..16].copy_from_slice(&tag.sent_ns.to_be_bytes());
    let mut state = filler_state(tag.channel, pid, tag.seq);
    for chunk in out[TAG_LEN..].chunks_mut(8) {
        let bytes = splitmix(&mut state);
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Checks an ES payload (after any descrambling) of `pid` against what channel `channel`
/// sent, and says which packet it is.
pub fn verify_es(channel: u16, pid: u16, payload: &[u8]) -> Result<Tag, Mismatch> {
    let body = match payload {
        // a PES start: skip its header (9 bytes and PES_header_data_length)
        [0, 0, 1, _, _, _, _, _, len, ..] => payload.get(9 + usize::from(*len)..).unwrap_or(&[]),
        _ => payload,
    };
    if body.len() < TAG_LEN || body[..2] != TAG_MAGIC {
        return Err(Mismatch::NoTag);
    }
    let tag = Tag {
        channel: u16::from_be_bytes([body[2], body[3]]),
        seq: u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        sent_ns: u64::from_be_bytes(body[8..16].try_into().expect("8 bytes")),
    };
    if tag.channel != channel {
        return Err(Mismatch::OtherChannel(tag.channel));
    }
    let mut state = filler_state(channel, pid, tag.seq);
    for chunk in body[TAG_LEN..].chunks(8) {
        if splitmix(&mut state)[..chunk.len()] != *chunk {
            return Err(Mismatch::Filler);
        }
    }
    Ok(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn es_payload(p: &[u8]) -> &[u8] {
        let start = if p[3] & 0x20 != 0 {
            5 + usize::from(p[4])
        } else {
            4
        };
        &p[start..]
    }

    #[test]
    fn every_es_packet_verifies_and_nothing_else_does() {
        let mut s = SyntheticStream::new(7);
        let mut out = Vec::new();
        for i in 0..200u64 {
            s.datagram(i * 5_000_000, &mut out);
        }
        let mut seen = [0u32; 2];
        for p in out.chunks(PACKET) {
            let pid = u16::from_be_bytes([p[1], p[2]]) & 0x1FFF;
            let Some(es) = ES_PIDS.iter().position(|&e| e == pid) else {
                assert!(pid == 0 || pid == PMT_PID, "pid {pid:#x}");
                continue;
            };
            let tag = verify_es(7, pid, es_payload(p)).unwrap();
            assert_eq!(tag.seq, seen[es]);
            seen[es] += 1;
            assert_eq!(
                verify_es(8, pid, es_payload(p)),
                Err(Mismatch::OtherChannel(7))
            );
            let other = ES_PIDS[1 - es];
            assert_eq!(verify_es(7, other, es_payload(p)), Err(Mismatch::Filler));
            let mut bad = p.to_vec();
            bad[187] ^= 1;
            assert_eq!(verify_es(7, pid, es_payload(&bad)), Err(Mismatch::Filler));
        }
        assert_eq!(seen, s.sent());
        assert!(seen[0] > 7 * seen[1] / 2 && seen[1] > 0);
    }
}
