//! TS packets of any PIDs into per-PID section assemblers (PSI and private sizes), the
//! sections read as PAT, PMT or CAT: what `castmux probe`, the scrambler's demux and the
//! card player do with an input stream.
#![no_main]

use castmux::ts::section::{split_sections, MAX_PRIVATE_SECTION, MAX_PSI_SECTION};
use castmux::ts::{Cat, PacketRef, Pat, Pid, Pmt, Section, SectionAssembler};
use castmux_fuzz::packets;
use libfuzzer_sys::fuzz_target;

/// At most this many PIDs get assemblers: enough for several programs, and bounded.
const MAX_PIDS: usize = 16;

fn read_section(s: &Section<'_>, max: usize) {
    // an assembler hands out only sections that pass Section::parse itself
    let again = Section::parse(s.bytes(), max).expect("a delivered section re-parses");
    assert_eq!(again.bytes().len(), s.bytes().len());
    assert!(s.bytes().len() <= max);
    let _ = (s.long_header(), s.crc32(), s.payload());
    match s.table_id() {
        0x00 => {
            if let Ok(pat) = Pat::parse(s) {
                let _ = pat.transport_stream_id();
                let n = pat.entries().count();
                assert!(n <= s.payload().len() / 4);
                let _ = (pat.pmt_pid(1), pat.nit_pid());
            }
        }
        0x01 => {
            if let Ok(cat) = Cat::parse(s) {
                for d in cat.descriptors.iter() {
                    let _ = d.wire_len();
                }
                let _ = cat.descriptors.ca_descriptors().count();
            }
        }
        0x02 => {
            if let Ok(pmt) = Pmt::parse(s) {
                let _ = (pmt.program_number(), pmt.pcr_pid);
                let _ = pmt.descriptors.ca_descriptors().count();
                for st in pmt.streams() {
                    let _ = st.kind();
                    let _ = st.descriptors.ca_descriptors().count();
                }
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let mut pids: Vec<(Pid, SectionAssembler, SectionAssembler)> = Vec::new();
    for pkt in packets(data) {
        let p = PacketRef::new(&pkt);
        let _ = (
            p.sync_ok(),
            p.tei(),
            p.pusi(),
            p.tsc(),
            p.cc(),
            p.discontinuity(),
        );
        let _ = (p.pcr(), p.adaptation_field(), p.payload_offset());
        if let Ok(payload) = p.payload() {
            assert!(payload.len() <= 184);
        }
        let pid = p.pid();
        let i = match pids.iter().position(|(q, _, _)| *q == pid) {
            Some(i) => i,
            None if pids.len() < MAX_PIDS => {
                pids.push((pid, SectionAssembler::psi(), SectionAssembler::private()));
                pids.len() - 1
            }
            None => continue,
        };
        let (_, psi, private) = &mut pids[i];
        psi.push(&pkt, |r| {
            if let Ok(s) = r {
                read_section(&s, MAX_PSI_SECTION);
            }
        });
        private.push(&pkt, |r| {
            if let Ok(s) = r {
                read_section(&s, MAX_PRIVATE_SECTION);
                assert_eq!(split_sections(s.bytes()).count(), 1);
            }
        });
    }
    for (_, psi, private) in &pids {
        let (a, b) = (psi.stats(), private.stats());
        assert!(a.sections + a.crc_errors <= a.packets * 184);
        assert!(b.sections + b.crc_errors <= b.packets * 184);
    }
});
