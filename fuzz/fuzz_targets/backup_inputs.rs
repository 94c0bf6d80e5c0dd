//! Any packets from two inputs into a channel's backup-input stages: each input's judge
//! (its PAT/PMT follower and on-air checks) and the renumberer that maps the active input
//! onto the first one's numbering, switching between them where the input says. The inputs
//! come from the network: nothing in them may make these panic, and every packet that goes
//! out starts with the sync byte. The stages sit behind the inputs' `Resync`, which hands
//! on only packets that start with it, so the target's packets do too (the helper leaves
//! some damaged on purpose; here that byte is the reader's, not the network's).
#![no_main]

use std::time::{Duration, Instant};

use castmux::headend::judge::{Judge, JudgeLimits};
use castmux::headend::renumber::Renumber;
use castmux::io::PacketBatch;
use castmux_fuzz::packets;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&switches, rest)) = data.split_first() else {
        return;
    };
    let mut pkts = packets(rest);
    for p in &mut pkts {
        p[0] = 0x47;
    }
    let limits = JudgeLimits {
        timeout: Duration::from_millis(200),
        min_bitrate: 0,
        max_cc_errors: Some(5),
        services: Vec::new(),
    };
    let mut judges = [Judge::new(), Judge::new()];
    let mut r = Renumber::new();
    let t0 = Instant::now();
    let mut out = PacketBatch::with_capacity(64);
    let mut active = 0;
    for (k, chunk) in pkts.chunks(16).enumerate() {
        // the input's first byte picks when the active input changes
        if switches & (1 << (k % 8)) != 0 {
            active = 1 - active;
            r.switch(active);
        }
        out.clear();
        let now = t0 + Duration::from_millis(k as u64 * 10);
        for (n, p) in chunk.iter().enumerate() {
            // both inputs see the packets; the standby's are only judged
            let j = n % 2;
            let ended = judges[j].observe(p, now, &limits);
            if j == active {
                r.process(p, ended, &judges[j], &mut out);
            }
        }
        for p in out.packets() {
            assert_eq!(p[0], 0x47);
        }
        for j in &mut judges {
            let _ = j.on_air(now, &limits);
        }
    }
});
