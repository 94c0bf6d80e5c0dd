//! Any packets from three inputs into an MPTS channel's multiplexer: each input's PAT/PMT
//! follower, the programs picked by number (one under a new number, one with an operator's
//! PID map), their PIDs given unique output PIDs, and the PAT, PMTs, SDT, NIT, TDT and TOT
//! regenerated and sent as the clock moves. The inputs come from the network: nothing in
//! them may make it panic; every packet out starts with the sync byte (the stage sits
//! behind `Resync`, so the packets in do too), and no input packet goes out on a PID the
//! multiplex keeps for its own tables (below 0x20) or on the null PID.
#![no_main]

use std::time::{Duration, Instant};

use castmux::headend::judge::JudgeLimits;
use castmux::headend::mpts::{MptsOptions, Mux};
use castmux::headend::spec::ProgramSpec;
use castmux::io::PacketBatch;
use castmux::ts::{PacketRef, Pid};
use castmux_fuzz::packets;
use libfuzzer_sys::fuzz_target;

fn program(input: &str, program: Option<u16>, pnr: Option<u16>) -> ProgramSpec {
    ProgramSpec {
        input: input.to_owned(),
        program,
        pnr,
        name: None,
        provider: None,
        service_type: None,
        lcn: Some(1),
        visible: true,
        pid_map: Vec::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let mut pkts = packets(rest);
    for p in &mut pkts {
        p[0] = 0x47;
    }
    let mut mapped = program("c", None, None);
    mapped.pid_map = vec![(Pid::new(0x100), Pid::new(0x300))];
    let opts = MptsOptions {
        tsid: 10,
        onid: 1,
        network: Some((1, "net".to_owned())),
        provider: "castmux".to_owned(),
        programs: vec![
            program("a", None, None),
            // the input's first byte picks the second input's program number
            program("b", Some(u16::from(pick)), Some(200)),
            mapped,
        ],
        scrambled: vec![false, true, false],
        limits: JudgeLimits {
            timeout: Duration::from_millis(200),
            min_bitrate: 0,
            max_cc_errors: None,
            services: Vec::new(),
        },
    };
    let mut mux = Mux::new(opts, &[0, 1, 2]);
    let t0 = Instant::now();
    let mut out = PacketBatch::with_capacity(64);
    for (k, chunk) in pkts.chunks(16).enumerate() {
        out.clear();
        let now = t0 + Duration::from_millis(k as u64 * 30);
        for (n, p) in chunk.iter().enumerate() {
            let before = out.len();
            mux.push(n % 3, p, now, &mut out);
            for q in &out.packets()[before..] {
                let pid = PacketRef::new(q).pid().value();
                assert!(pid >= 0x20 && pid != 0x1FFF, "input packet on {pid:#x}");
            }
        }
        mux.send_due(&mut out, now, 1_796_119_200 + k as u64);
        for p in out.packets() {
            assert_eq!(p[0], 0x47);
        }
    }
});
