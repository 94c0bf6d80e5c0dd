//! The scrambling stage fed arbitrary packets in batches of 1..=8, under a configuration
//! the input picks (services, audio, component-level CA, an ECM generator that fails on
//! some periods, an EMM PID, CSA2 or AES). Besides not panicking, it must fail closed:
//! once a PID is scrambled, no packet with a payload leaves on it with TSC 00.
#![no_main]

use std::time::Duration;

use castmux::scramble::config::CaSystem;
use castmux::scramble::{
    ClockMode, Cw, EcmError, EcmGenerator, EcmRequest, KeyMode, ScrambleConfig, Scrambler,
};
use castmux::ts::psi_write::write_private_section;
use castmux::ts::Pid;
use castmux_fuzz::{packets, Cursor, PACKET};
use libfuzzer_sys::fuzz_target;

/// An ECM generator that writes the period number and fails on the periods `fail_mask`
/// names (bit `period % 8`), so degraded mode (holding the current key) is exercised.
struct Generator {
    fail_mask: u8,
}

impl EcmGenerator for Generator {
    fn generate(&mut self, req: &EcmRequest<'_>, out: &mut Vec<u8>) -> Result<(), EcmError> {
        if self.fail_mask & (1 << (req.period.0 % 8)) != 0 {
            return Err(EcmError::Unavailable("fuzz: scheduled failure".to_owned()));
        }
        write_private_section(out, req.table_id(), &req.period.0.to_be_bytes())
            .map(|_| ())
            .map_err(|e| EcmError::Invalid(e.to_string()))
    }
}

fn config(c: &mut Cursor<'_>) -> (ScrambleConfig, Vec<Box<dyn EcmGenerator>>, usize) {
    let flags = c.u8();
    let fail_mask = c.u8();
    let mut cfg = ScrambleConfig {
        clock: ClockMode::Stream,
        crypto_period: Duration::from_millis(100 + 100 * u64::from(flags >> 6)),
        scramble_audio: flags & 1 != 0,
        component_level: flags & 2 != 0,
        ..ScrambleConfig::default()
    };
    if flags & 4 != 0 {
        cfg.services = vec![1];
    }
    if flags & 8 != 0 {
        cfg.algorithm = csa::Algorithm::Cissa;
        cfg.keys = KeyMode::FixedPair(
            Cw::from_slice(&[0x11; 16]).expect("16-byte CW"),
            Cw::from_slice(&[0x22; 16]).expect("16-byte CW"),
        );
    } else {
        cfg.keys = KeyMode::FixedPair(
            Cw::from_slice(&[1, 2, 3, 6, 4, 5, 6, 15]).expect("8-byte CW"),
            Cw::from_slice(&[9, 8, 7, 24, 6, 5, 4, 15]).expect("8-byte CW"),
        );
    }
    let mut generators: Vec<Box<dyn EcmGenerator>> = Vec::new();
    if flags & 16 != 0 {
        cfg.ca_systems = vec![CaSystem::new(0x4AE1, Pid::new(0x1FF0))];
        if flags & 32 != 0 {
            generators.push(Box::new(Generator { fail_mask }));
        }
    }
    if fail_mask & 1 != 0 {
        cfg.emm_pid = Some(Pid::new(0x1FF1));
    }
    let batch = usize::from(c.u8() % 8) + 1;
    (cfg, generators, batch)
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let (cfg, generators, batch) = config(&mut c);
    let Ok(mut s) = Scrambler::new(cfg, None, generators) else {
        return;
    };
    let input = packets(c.rest());
    for chunk in input.chunks(batch) {
        let scrambled_before = s.scrambled_pids();
        let Ok(out) = s.process(chunk) else {
            return;
        };
        assert_eq!(out.len() % PACKET, 0);
        for p in out.chunks_exact(PACKET) {
            assert_eq!(p[0], 0x47, "only whole, synced packets leave");
            let pid = Pid::new(u16::from_be_bytes([p[1], p[2]]));
            let pkt: &[u8; PACKET] = p.try_into().expect("chunks of 188");
            // the cipher's own idea of a payload (an adaptation field may fill the packet)
            let has_payload = csa::payload_offset(pkt).is_some();
            let tsc = p[3] >> 6;
            assert!(
                !(scrambled_before.contains(&pid) && has_payload && tsc == 0),
                "clear payload on scrambled {pid}"
            );
        }
    }
    // scrambled PIDs are never PSI, null, or the mux's own ECM/EMM PIDs
    for pid in s.scrambled_pids() {
        let v = pid.value();
        assert!(v >= 0x20 && v != 0x1FFF && v != 0x1FF0 && v != 0x1FF1);
    }
});
