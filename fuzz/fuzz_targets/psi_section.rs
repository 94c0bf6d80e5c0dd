//! One PSI section (length and CRC repaired when the input asks), read as PAT, PMT or CAT,
//! then rewritten as the scrambler does (CA_descriptor into the PMT, EMM descriptor merged
//! into the CAT) and read back: the rewrite must keep every program, stream and foreign
//! descriptor, and carry exactly one CA_descriptor of ours where it was put.
#![no_main]

use castmux::ts::psi_write::{rewrite_pmt, write_cat, write_pat, CaPlacement};
use castmux::ts::section::MAX_PSI_SECTION;
use castmux::ts::{CaDescriptor, Cat, Descriptors, Pat, PatEntry, Pid, Pmt, Section};
use castmux_fuzz::{fix_section_crc, fix_section_length, Cursor};
use libfuzzer_sys::fuzz_target;

const OUR_CAS: u16 = 0x4AE1;

/// A CA_descriptor naming our CA_system_ID, as the rewrite recognises one (a CA_descriptor
/// too short for a CA_PID still names a system and is replaced).
fn is_ours(tag: u8, data: &[u8]) -> bool {
    tag == 0x09 && matches!(data, [a, b, ..] if u16::from_be_bytes([*a, *b]) == OUR_CAS)
}

fn ours(d: &Descriptors<'_>) -> usize {
    d.ca_descriptors()
        .filter(|c| c.ca_system_id == OUR_CAS)
        .count()
}

fn pmt_round_trip(pmt: &Pmt<'_>, ca: &CaDescriptor<'_>, component: bool, version: u8) {
    let pids: Vec<Pid> = pmt.streams().map(|s| s.elementary_pid).collect();
    let placement = if component {
        CaPlacement::Components(&pids)
    } else {
        CaPlacement::Program
    };
    let mut out = Vec::new();
    // too big for one section is a legitimate refusal; anything else must read back
    let Ok(n) = rewrite_pmt(&mut out, pmt, std::slice::from_ref(ca), placement, version) else {
        return;
    };
    assert_eq!(n, out.len());
    let s = Section::parse(&out, MAX_PSI_SECTION).expect("rewritten PMT is a good section");
    let back = Pmt::parse(&s).expect("rewritten PMT parses");
    assert_eq!(back.program_number(), pmt.program_number());
    assert_eq!(back.pcr_pid, pmt.pcr_pid);
    assert_eq!(back.header.version, version & 0x1F);
    let before: Vec<_> = pmt
        .streams()
        .map(|s| (s.stream_type, s.elementary_pid))
        .collect();
    let after: Vec<_> = back
        .streams()
        .map(|s| (s.stream_type, s.elementary_pid))
        .collect();
    assert_eq!(before, after);
    // foreign descriptors survive in order
    let foreign = |d: &Descriptors<'_>| -> Vec<(u8, Vec<u8>)> {
        d.iter()
            .filter(|x| !is_ours(x.tag, x.data))
            .map(|x| (x.tag, x.data.to_vec()))
            .collect()
    };
    assert_eq!(foreign(&pmt.descriptors), foreign(&back.descriptors));
    assert_eq!(ours(&back.descriptors), usize::from(!component));
    for (a, b) in pmt.streams().zip(back.streams()) {
        assert_eq!(foreign(&a.descriptors), foreign(&b.descriptors));
        assert_eq!(ours(&b.descriptors), usize::from(component));
    }
}

fn cat_round_trip(cat: &Cat<'_>, ca: &CaDescriptor<'_>, version: u8) {
    let mut out = Vec::new();
    let Ok(_) = write_cat(&mut out, &[cat.descriptors], std::slice::from_ref(ca), version) else {
        return;
    };
    let s = Section::parse(&out, MAX_PSI_SECTION).expect("merged CAT is a good section");
    let back = Cat::parse(&s).expect("merged CAT parses");
    assert_eq!(ours(&back.descriptors), 1);
}

fn pat_round_trip(pat: &Pat<'_>, version: u8) {
    let entries: Vec<PatEntry> = pat.entries().collect();
    let mut out = Vec::new();
    let Ok(_) = write_pat(&mut out, pat.transport_stream_id(), version, &entries) else {
        return;
    };
    let s = Section::parse(&out, MAX_PSI_SECTION).expect("written PAT is a good section");
    let back = Pat::parse(&s).expect("written PAT parses");
    assert_eq!(back.entries().collect::<Vec<_>>(), entries);
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let flags = c.u8();
    let version = c.u8();
    let private_len = usize::from(c.u8() % 8);
    let private = c.take(private_len);
    let mut section = c.rest().to_vec();
    if flags & 1 != 0 {
        fix_section_length(&mut section);
    }
    if flags & 2 != 0 {
        fix_section_crc(&mut section);
    }
    let ca = CaDescriptor {
        ca_system_id: OUR_CAS,
        ca_pid: Pid::new(0x1FF0),
        private_data: private,
    };
    let Ok(s) = Section::parse(&section, MAX_PSI_SECTION) else {
        return;
    };
    if let Ok(pat) = Pat::parse(&s) {
        pat_round_trip(&pat, version);
    }
    if let Ok(pmt) = Pmt::parse(&s) {
        pmt_round_trip(&pmt, &ca, flags & 4 != 0, version);
    }
    if let Ok(cat) = Cat::parse(&s) {
        cat_round_trip(&cat, &ca, version);
    }
});
