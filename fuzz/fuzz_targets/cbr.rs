//! Any packets, at any arrival times, through the constant-bitrate schedule: the stream's
//! PCRs (jumps, wraps, discontinuities, garbage adaptation fields) date them and are
//! restamped. Nothing may panic, every slot goes out exactly once as a whole packet with
//! the sync byte, and every packet taken in is accounted for: out, dropped, or still queued.
#![no_main]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use castmux::mux::cbr::{Cbr, CbrSettings, CbrStats};
use castmux_fuzz::{packets, Cursor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let settings = CbrSettings {
        bitrate: 100_000 + u64::from(c.u8()) * 200_000,
        delay: Duration::from_millis(u64::from(c.u8()) * 4),
        max_delay: Duration::from_millis(10 + u64::from(c.u8()) * 8),
    };
    let gaps = [c.u8(), c.u8(), c.u8(), c.u8()];
    let rest: Vec<u8> = std::iter::from_fn(|| (!c.is_empty()).then(|| c.u8())).collect();
    let mut pkts = packets(&rest);
    for p in &mut pkts {
        // the schedule sits after the scrambler, which hands on only synced packets
        p[0] = 0x47;
    }
    let stats = Arc::new(CbrStats::default());
    let mut cbr = Cbr::new(settings, stats.clone());
    let mut now = 0u64;
    let mut slots = 0u64;
    let mut pushed = 0u64;
    for (k, p) in pkts.iter().enumerate() {
        // the input picks how far time moves between packets: 0 to about 2.5 s
        now += u64::from(gaps[k % 4]) * u64::from(gaps[(k + 1) % 4]) * 40_000;
        if p[1] & 0x1F != 0x1F || p[2] != 0xFF {
            pushed += 1;
        }
        cbr.push(p, now);
        slots += cbr.emit(now, |o| assert_eq!(o[0], 0x47));
    }
    now += 3_000_000_000;
    slots += cbr.emit(now, |o| assert_eq!(o[0], 0x47));
    let s = stats.snapshot(settings.bitrate);
    assert_eq!(s.packets + s.nulls + s.pcr_inserted, slots);
    assert_eq!(
        s.packets + s.dropped_late + s.dropped_full + cbr.queued() as u64,
        pushed,
        "{s:?}"
    );
    assert_eq!(stats.input_nulls.load(Relaxed) + pushed, pkts.len() as u64);
});
