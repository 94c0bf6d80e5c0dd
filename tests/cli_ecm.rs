//! ECM plumbing through the library: a test `EcmGenerator`, the scheduler asking it once
//! per period, repetition every 100 ms of stream time, insertion into null packets or added,
//! the lead time (delay_start), and degraded mode when the generator fails.

mod cli_support;

use std::collections::BTreeMap;
use std::time::Duration;

use castmux::scramble::cw::read_cw_log;
use castmux::scramble::{
    CwLogWriter, EcmError, EcmGenerator, EcmRequest, ScrambleConfig, Scrambler,
};
use castmux::ts::psi_write::write_private_section;
use castmux::ts::SectionAssembler;
use cli_support::*;

const ECM_PID: u16 = 0x1FF0;

/// Writes period (8 bytes) + current CW + next CW; fails from period `fail_from` on.
struct TestEcmg {
    fail_from: u64,
}

impl EcmGenerator for TestEcmg {
    fn generate(&mut self, req: &EcmRequest<'_>, out: &mut Vec<u8>) -> Result<(), EcmError> {
        if req.period.0 >= self.fail_from {
            return Err(EcmError::Unavailable("test".into()));
        }
        let mut payload = req.period.0.to_be_bytes().to_vec();
        payload.extend_from_slice(req.current.as_bytes());
        payload.extend_from_slice(req.next.as_bytes());
        write_private_section(out, req.table_id(), &payload)
            .map_err(|e| EcmError::Invalid(e.to_string()))?;
        Ok(())
    }
}

struct Run {
    out: Vec<Packet>,
    cws: Vec<String>,
    counters: castmux::scramble::Counters,
}

fn run(name: &str, delay_start_ms: i64, fail_from: u64) -> Run {
    let dir = tmp();
    let log = dir.path().join("cw.txt");
    let config = ScrambleConfig {
        crypto_period: Duration::from_secs(1),
        ecm_pid: Some(p(ECM_PID)),
        delay_start_ms,
        ..ScrambleConfig::default()
    };
    let mut s = Scrambler::new(
        config,
        Some(CwLogWriter::create(&log).unwrap()),
        Some(Box::new(TestEcmg { fail_from })),
    )
    .unwrap();
    let input = packets(&sample(name));
    let mut out = Vec::new();
    for batch in input.chunks(512) {
        out.extend(packets_of(s.process(batch).unwrap()));
    }
    let cws = read_cw_log(&log)
        .unwrap()
        .iter()
        .map(|c| c.to_hex())
        .collect();
    Run {
        out,
        cws,
        counters: s.counters().clone(),
    }
}

/// (output index, table_id, period, current hex, next hex) of each ECM section.
fn ecms(out: &[Packet]) -> Vec<(usize, u8, u64, String, String)> {
    let mut asm = SectionAssembler::private();
    let mut v = Vec::new();
    for (i, pk) in out.iter().enumerate() {
        if pid(pk) != ECM_PID {
            continue;
        }
        asm.push(pk, |r| {
            let s = r.expect("good ECM section");
            let b = s.payload();
            let hex = |x: &[u8]| x.iter().map(|b| format!("{b:02x}")).collect::<String>();
            v.push((
                i,
                s.table_id(),
                u64::from_be_bytes(b[..8].try_into().unwrap()),
                hex(&b[8..16]),
                hex(&b[16..24]),
            ));
        });
    }
    v
}

/// Period of each scrambled packet by counting parity flips: (index, period).
fn scrambled_periods(out: &[Packet]) -> Vec<(usize, u64)> {
    let mut period = 0u64;
    let mut last = None;
    let mut v = Vec::new();
    for (i, pk) in out.iter().enumerate() {
        if !matches!(pid(pk), 0x100 | 0x101) || tsc(pk) < 2 {
            continue;
        }
        if last.is_some_and(|l| l != tsc(pk)) {
            period += 1;
        }
        last = Some(tsc(pk));
        v.push((i, period));
    }
    v
}

fn check_keys_on_air_before_use(r: &Run) {
    let ecms = ecms(&r.out);
    assert!(!ecms.is_empty());
    for (_, table_id, period, cur, next) in &ecms {
        assert_eq!(*table_id, if period % 2 == 0 { 0x80 } else { 0x81 });
        assert_eq!(cur, &r.cws[*period as usize], "ECM current CW = log line");
        assert_eq!(
            next,
            &r.cws[*period as usize + 1],
            "ECM next CW = next log line"
        );
    }
    // a scrambled packet of period N comes after an ECM that carried CW(N)
    let mut first_use: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, period) in scrambled_periods(&r.out) {
        first_use.entry(period).or_insert(i);
    }
    for (period, i) in &first_use {
        let on_air = ecms
            .iter()
            .any(|(j, _, p, _, _)| j < i && (p == period || p + 1 == *period));
        assert!(
            on_air,
            "period {period} used at packet {i} before its CW was in an ECM"
        );
    }
    assert!(first_use.len() >= 4, "several periods: {first_use:?}");
}

#[test]
fn ecms_replace_nulls_and_repeat_every_100ms() {
    let r = run("nullpad.ts", 0, u64::MAX);
    check_keys_on_air_before_use(&r);
    let st = r.counters.stream;
    assert!(st.ecm_packets_replacing_null > 0);
    // only the very first ECM, due before any null packet was seen, is added
    assert!(st.ecm_packets_added <= 1, "nullpad has nulls for the ECMs");
    // 5 s of stream at 100 ms, plus one extra send per new period
    let n = ecms(&r.out).len();
    assert!((45..=62).contains(&n), "{n} ECMs in 5 s");
    // ECM PID continuity
    assert_eq!(cc_errors(&r.out).get(&ECM_PID), None);
    // the packet count grows only by the added ECM packets
    let added = usize::try_from(st.ecm_packets_added).unwrap();
    assert_eq!(r.out.len(), packets(&sample("nullpad.ts")).len() + added);
}

#[test]
fn ecms_are_added_when_the_input_has_no_nulls() {
    let r = run("spts.ts", 0, u64::MAX);
    check_keys_on_air_before_use(&r);
    let st = r.counters.stream;
    assert!(st.ecm_packets_added > 0);
    assert_eq!(st.ecm_packets_replacing_null, 0);
    assert_eq!(
        st.ecms_generated as usize,
        r.cws.len() - 1,
        "one ECM per period"
    );
}

#[test]
fn negative_delay_start_sends_the_next_ecm_before_the_key_switch() {
    let r = run("spts.ts", -400, u64::MAX);
    check_keys_on_air_before_use(&r);
    let ecms = ecms(&r.out);
    let first_use: BTreeMap<u64, usize> = scrambled_periods(&r.out)
        .into_iter()
        .rev()
        .map(|(i, p)| (p, i))
        .collect();
    for (period, i) in first_use.iter().skip(1) {
        // the ECM of this very period (as current) is already out before its first packet
        let early = ecms.iter().any(|(j, _, p, _, _)| j < i && p == period);
        assert!(early, "ECM of period {period} not on air before the switch");
    }
}

#[test]
fn failing_generator_holds_the_key_degraded() {
    let r = run("spts.ts", 0, 2);
    let periods: Vec<u64> = scrambled_periods(&r.out).iter().map(|(_, p)| *p).collect();
    assert_eq!(
        periods.iter().max(),
        Some(&2),
        "held at the last period whose CW is on air"
    );
    assert!(r.counters.stream.degraded_holds > 0);
    assert!(r.counters.stream.ecm_failures > 0);
    check_keys_on_air_before_use_partial(&r);
}

fn check_keys_on_air_before_use_partial(r: &Run) {
    for (_, _, period, cur, _) in ecms(&r.out) {
        assert_eq!(cur, r.cws[period as usize]);
    }
}
