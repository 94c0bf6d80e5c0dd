//! Datagrams as a UDP input receives them: RTP-wrapped or raw TS, then the byte-stream
//! resynchroniser (also what files, pipes and SRT go through) into packet batches of any
//! size. Every packet handed out starts with 0x47, the resynchroniser always makes
//! progress, and every byte fed is accounted for: handed out in a packet, or counted as
//! dropped.
#![no_main]

use castmux::io::rtp::{parse_rtp_ts, RtpTracker};
use castmux::io::{IoStats, PacketBatch, Resync, TS_PACKET_SIZE};
use castmux_fuzz::Cursor;
use libfuzzer_sys::fuzz_target;

#[derive(Default)]
struct Tally {
    fed: u64,
    packets: u64,
}

fn drain(out: &mut PacketBatch, tally: &mut Tally) -> usize {
    let n = out.len();
    for p in out.packets() {
        assert_eq!(p[0], 0x47, "a packet without its sync byte was handed out");
    }
    tally.packets += n as u64;
    out.clear();
    n
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let cap = usize::from(c.u8() % 16) + 1;
    let stats = IoStats::default();
    let mut rs = Resync::new();
    let mut out = PacketBatch::with_capacity(cap);
    let mut rtp = RtpTracker::default();
    let mut tally = Tally::default();
    while !c.is_empty() {
        let dgram = c.chunk();
        let mut piece = match parse_rtp_ts(dgram) {
            Some(h) => {
                assert!(h.payload_offset < h.payload_end && h.payload_end <= dgram.len());
                assert_eq!(dgram[h.payload_offset], 0x47);
                let _ = rtp.observe(&h);
                &dgram[h.payload_offset..h.payload_end]
            }
            None => dgram,
        };
        while !piece.is_empty() {
            let used = rs.push(piece, &mut out, &stats);
            assert!(used <= piece.len());
            tally.fed += used as u64;
            let emitted = drain(&mut out, &mut tally);
            assert!(used > 0 || emitted > 0, "no progress");
            piece = &piece[used..];
        }
    }
    let mut rounds = 0;
    while !rs.finish(&mut out, &stats) {
        assert!(drain(&mut out, &mut tally) > 0, "finish made no progress");
        rounds += 1;
        assert!(rounds < 1000);
    }
    drain(&mut out, &mut tally);
    assert_eq!(rs.pending(), 0);
    let dropped = stats.snapshot().dropped_bytes;
    assert_eq!(
        tally.fed,
        tally.packets * TS_PACKET_SIZE as u64 + dropped,
        "bytes lost without being counted"
    );
});
