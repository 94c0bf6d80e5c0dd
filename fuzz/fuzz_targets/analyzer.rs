//! Any packets into the ETR 290 analyzer (`castmux probe`'s analysis), in batches of
//! sizes the input picks, then its report as JSON and text: the analyzer reads files and
//! network streams, so nothing in them may make it panic, and its counts must add up.
#![no_main]

use castmux::analyze::{Analyzer, Indicator, Settings};
use castmux_fuzz::packets;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&batch, rest)) = data.split_first() else {
        return;
    };
    let pkts = packets(rest);
    // stream time: the wall clock would make a run depend on the machine's speed
    let mut a = Analyzer::new(Settings::default());
    let batch = usize::from(batch % 32) + 1;
    for chunk in pkts.chunks(batch) {
        assert_eq!(a.process(chunk, None), chunk.len());
    }
    a.finish();
    assert_eq!(a.packets(), pkts.len() as u64);
    let r = a.report();
    let e = a.indicators();
    for p in [1, 2] {
        let sum: u64 = Indicator::ALL
            .iter()
            .filter(|i| i.priority() == p)
            .map(|i| e.get(*i).count)
            .sum();
        assert_eq!(sum, e.priority_total(p));
    }
    assert_eq!(r.etr290.priority1_errors, e.priority_total(1));
    for i in Indicator::ALL {
        let t = e.get(i);
        assert_eq!(t.first.is_some(), t.count > 0, "{}", i.name());
        assert!(t.pids.values().sum::<u64>() <= t.count);
    }
    let counted: u64 = r.pids.iter().map(|p| p.packets).sum();
    let bad_sync = e.get(Indicator::SyncByteError).count;
    assert_eq!(counted + bad_sync, pkts.len() as u64);
    let _ = serde_json::to_string(&r).expect("a report serialises");
    let _ = r.to_string();
});
