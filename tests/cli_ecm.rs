//! ECM plumbing through the library: a test `EcmGenerator`, the scheduler asking it once
//! per period, repetition every 100 ms of stream time, insertion into null packets or added,
//! the lead time (delay_start), degraded mode when the generator fails, and several CAS on
//! one service (SimulCrypt).

mod cli_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use castmux::scramble::cw::read_cw_log;
use castmux::scramble::{
    CaSystem, CwLogWriter, EcmError, EcmGenerator, EcmRequest, ScrambleConfig, Scrambler,
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
    let ca = CaSystem {
        delay_start_ms,
        ..CaSystem::new(castmux::scramble::config::DEFAULT_CA_SYSTEM_ID, p(ECM_PID))
    };
    scramble_with(name, vec![(ca, fail_from)])
}

/// Scramble `name` with 1 s periods, each CA system's ECMs from a [`TestEcmg`] failing from
/// its period.
fn scramble_with(name: &str, cas: Vec<(CaSystem, u64)>) -> Run {
    let dir = tmp();
    let log = dir.path().join("cw.txt");
    let generators: Vec<Box<dyn EcmGenerator>> = cas
        .iter()
        .map(|(_, fail_from)| {
            Box::new(TestEcmg {
                fail_from: *fail_from,
            }) as Box<dyn EcmGenerator>
        })
        .collect();
    let config = ScrambleConfig {
        crypto_period: Duration::from_secs(1),
        ca_systems: cas.into_iter().map(|(ca, _)| ca).collect(),
        ..ScrambleConfig::default()
    };
    let mut s =
        Scrambler::new(config, Some(CwLogWriter::create(&log).unwrap()), generators).unwrap();
    let mut out = Vec::new();
    for batch in packets(&sample(name)).chunks(512) {
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
    ecms_on(out, ECM_PID)
}

/// [`ecms`] on `ecm_pid`.
fn ecms_on(out: &[Packet], ecm_pid: u16) -> Vec<(usize, u8, u64, String, String)> {
    let mut asm = SectionAssembler::private();
    let mut v = Vec::new();
    for (i, pk) in out.iter().enumerate() {
        if pid(pk) != ecm_pid {
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
    check_keys_on_air_before_use_on(r, ECM_PID);
}

fn check_keys_on_air_before_use_on(r: &Run, ecm_pid: u16) {
    let ecms = ecms_on(&r.out, ecm_pid);
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
    // the log runs two periods ahead: the last ECM carries CW(N+1), and the generator is
    // told about period N+1 (with CW(N+2)) once that ECM is on air
    assert_eq!(
        st.ecms_generated as usize,
        r.cws.len() - 2,
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
    assert_eq!(
        r.counters.stream.degraded_episodes, 1,
        "one hold, never left"
    );
    assert!(r.counters.stream.ecm_failures > 0);
    check_keys_on_air_before_use_partial(&r);
}

fn check_keys_on_air_before_use_partial(r: &Run) {
    for (_, _, period, cur, _) in ecms(&r.out) {
        assert_eq!(cur, r.cws[period as usize]);
    }
}

/// ('p'repare or 'g'enerate, period, current CW, next CW).
type Call = (char, u64, String, String);

/// Records what it was told ahead of time, then answers like [`TestEcmg`].
struct PreparingEcmg {
    inner: TestEcmg,
    log: Arc<Mutex<Vec<Call>>>,
}

impl EcmGenerator for PreparingEcmg {
    fn prepare(&mut self, req: &EcmRequest<'_>) {
        let e = ('p', req.period.0, req.current.to_hex(), req.next.to_hex());
        self.log.lock().unwrap().push(e);
    }

    fn generate(&mut self, req: &EcmRequest<'_>, out: &mut Vec<u8>) -> Result<(), EcmError> {
        let e = ('g', req.period.0, req.current.to_hex(), req.next.to_hex());
        self.log.lock().unwrap().push(e);
        self.inner.generate(req, out)
    }
}

/// Scramble `name` with one CA system per `(ECM PID, CA_system_ID, fail_from)`.
fn run_simulcrypt(name: &str, cas: &[(u16, u16, u64)]) -> Run {
    let cas = cas
        .iter()
        .map(|(ecm_pid, caid, fail_from)| (CaSystem::new(*caid, p(*ecm_pid)), *fail_from))
        .collect();
    scramble_with(name, cas)
}

/// (CA_system_ID, ECM PID) of every program-level CA_descriptor in the output's PMT
/// (program 1 on 0x1000 in the samples).
fn pmt_ca_descriptors(out: &[Packet]) -> Vec<(u16, u16)> {
    let mut asm = SectionAssembler::psi();
    let mut found = Vec::new();
    for pk in out.iter().filter(|pk| pid(pk) == 0x1000) {
        asm.push(pk, |r| {
            if let Ok(s) = r {
                if found.is_empty() {
                    let pmt = castmux::ts::Pmt::parse(&s).expect("PMT");
                    for d in pmt.descriptors.iter() {
                        if let Ok(ca) = castmux::ts::CaDescriptor::parse(&d) {
                            found.push((ca.ca_system_id, ca.ca_pid.value()));
                        }
                    }
                }
            }
        });
    }
    found
}

#[test]
fn several_cas_carry_the_same_cws_each_on_its_own_pid() {
    let r = run_simulcrypt(
        "spts.ts",
        &[(0x1FF0, 0x4AE1, u64::MAX), (0x1FF2, 0x0B00, u64::MAX)],
    );
    assert_eq!(
        pmt_ca_descriptors(&r.out),
        vec![(0x4AE1, 0x1FF0), (0x0B00, 0x1FF2)],
        "one CA_descriptor per CAS, in order"
    );
    check_keys_on_air_before_use_on(&r, 0x1FF0);
    check_keys_on_air_before_use_on(&r, 0x1FF2);
    let content = |pid| -> BTreeSet<(u64, String, String)> {
        ecms_on(&r.out, pid)
            .into_iter()
            .map(|(_, _, p, c, n)| (p, c, n))
            .collect()
    };
    assert_eq!(content(0x1FF0), content(0x1FF2), "one CW, an ECM per CAS");
    assert!(content(0x1FF0).len() >= 4);
    assert_eq!(cc_errors(&r.out).get(&0x1FF2), None);
}

#[test]
fn the_key_switch_waits_for_every_cas() {
    // the second CAS fails from period 2: the first still has ECMs, but a card of the
    // second could not follow, so the key is held for both
    let r = run_simulcrypt(
        "spts.ts",
        &[(0x1FF0, 0x4AE1, u64::MAX), (0x1FF2, 0x0B00, 2)],
    );
    let periods: Vec<u64> = scrambled_periods(&r.out).iter().map(|(_, p)| *p).collect();
    assert_eq!(
        periods.iter().max(),
        Some(&2),
        "held at period 2 for both CAS"
    );
    assert!(r.counters.stream.degraded_holds > 0);
    assert!(r.counters.stream.ecm_failures > 0);
    let clear_es = r
        .out
        .iter()
        .filter(|pk| matches!(pid(pk), 0x100 | 0x101) && tsc(pk) == 0 && pk[3] & 0x10 != 0)
        .count();
    assert_eq!(clear_es, 0, "never clear while degraded");
}

#[test]
fn the_generator_hears_of_the_next_period_a_period_early() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let config = ScrambleConfig {
        crypto_period: Duration::from_secs(1),
        ca_systems: vec![CaSystem::new(0x4AE1, p(ECM_PID))],
        ..ScrambleConfig::default()
    };
    let g = PreparingEcmg {
        inner: TestEcmg {
            fail_from: u64::MAX,
        },
        log: log.clone(),
    };
    let mut s = Scrambler::new(config, None, vec![Box::new(g)]).unwrap();
    for batch in packets(&sample("spts.ts")).chunks(512) {
        s.process(batch).unwrap();
    }
    let log = log.lock().unwrap();
    let generated: Vec<_> = log.iter().filter(|e| e.0 == 'g').collect();
    assert!(generated.len() >= 4, "{generated:?}");
    for g in generated.iter().skip(1) {
        // the same period with the same CWs was announced before it was asked for
        let asked_at = log.iter().position(|e| std::ptr::eq(e, *g)).unwrap();
        let prepared = log[..asked_at]
            .iter()
            .any(|e| e.0 == 'p' && (e.1, &e.2, &e.3) == (g.1, &g.2, &g.3));
        assert!(prepared, "period {} asked for without being announced", g.1);
    }
}
