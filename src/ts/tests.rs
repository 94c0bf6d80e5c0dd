//! Round trips and hostile-input tests across the `ts` module.

use super::descriptor::CA_DESCRIPTOR_TAG;
use super::packet::{build_packet, null_packet, Stuffing, PACKET_SIZE};
use super::psi::PatEntry;
use super::psi_write::{
    rewrite_pmt, write_cat, write_pat, write_pmt, write_private_section, CaPlacement,
};
use super::section::{crc32_mpeg2, MAX_PRIVATE_SECTION};
use super::*;
use crate::ts::psi::PmtStream;

/// Deterministic xorshift64* so the garbage tests are reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }
}

/// CRC-32/MPEG-2 bit by bit (poly 0x04C11DB7, init all ones, no reflection, no final xor).
fn crc_bitwise(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Run packets through a PSI assembler; collect the good sections and the errors.
fn reassemble(packets: &[Packet], asm: &mut SectionAssembler) -> (Vec<Vec<u8>>, Vec<TsError>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for p in packets {
        asm.push(p, |r| match r {
            Ok(s) => good.push(s.bytes().to_vec()),
            Err(e) => bad.push(e),
        });
    }
    (good, bad)
}

fn ca(id: u16, pid: u16, private: &[u8]) -> CaDescriptor<'_> {
    CaDescriptor {
        ca_system_id: id,
        ca_pid: Pid::new(pid),
        private_data: private,
    }
}

/// The PAT ffmpeg's mpegts muxer writes by default (tsid 1, program 1 -> PMT PID 0x1000).
const FFMPEG_PAT: [u8; 16] = [
    0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01, 0xF0, 0x00, 0x2A, 0xB1, 0x04, 0xB2,
];

#[test]
fn crc_matches_known_pat_and_bitwise_reference() {
    assert_eq!(crc32_mpeg2(&FFMPEG_PAT[..12]), 0x2AB1_04B2);
    assert_eq!(crc_bitwise(&FFMPEG_PAT[..12]), 0x2AB1_04B2);
    assert_eq!(crc32_mpeg2(&FFMPEG_PAT), 0, "residue over data + CRC");
    let mut rng = Rng(7);
    for n in [0, 1, 3, 100, 1021] {
        let mut b = vec![0; n];
        rng.fill(&mut b);
        assert_eq!(crc32_mpeg2(&b), crc_bitwise(&b));
    }
}

#[test]
fn pat_writer_reproduces_ffmpeg_pat_and_parses() {
    let mut out = Vec::new();
    let entries = [PatEntry {
        program_number: 1,
        pid: Pid::new(0x1000),
    }];
    assert_eq!(write_pat(&mut out, 1, 0, &entries).unwrap(), 16);
    assert_eq!(out, FFMPEG_PAT);
    let s = Section::parse(&out, 1024).unwrap();
    let pat = Pat::parse(&s).unwrap();
    assert_eq!(pat.transport_stream_id(), 1);
    assert_eq!(pat.pmt_pid(1), Some(Pid::new(0x1000)));
    assert_eq!(pat.pmt_pid(0), None);
    assert_eq!(pat.nit_pid(), None);
    assert!(pat.header.current_next);
}

#[test]
fn packet_header_fields_and_setters() {
    let mut p = null_packet();
    let r = PacketRef::new(&p);
    assert!(r.sync_ok() && !r.tei() && !r.pusi() && r.has_payload());
    assert_eq!(r.pid(), Pid::NULL);
    assert_eq!(r.payload().unwrap().len(), 184);
    let mut m = PacketMut::new(&mut p);
    m.set_pid(Pid::new(0x0100));
    m.set_cc(ContinuityCounter::new(13));
    m.set_tsc(TransportScramblingControl::Odd);
    let r = m.as_ref();
    assert_eq!(r.pid(), Pid::new(0x100));
    assert_eq!(r.cc().value(), 13);
    assert_eq!(r.tsc(), TransportScramblingControl::Odd);
    m.set_tsc(TransportScramblingControl::Clear);
    assert_eq!(m.as_ref().tsc(), TransportScramblingControl::Clear);
    assert_eq!(m.as_ref().cc().value(), 13);
    assert!(Pid::new(0x1F).is_psi_reserved() && !Pid::new(0x20).is_psi_reserved());
    assert_eq!(Pid::try_new(0x2000), None);
}

#[test]
fn es_layout_names_every_adaptation_field_control_and_length() {
    use super::packet::{es_layout, EsLayout};
    let pkt = |afc: u8, afl: u8| {
        let mut p = null_packet();
        p[3] = afc << 4;
        p[4] = afl;
        p
    };
    assert_eq!(es_layout(&pkt(0b01, 0)), EsLayout::Payload(4));
    assert_eq!(es_layout(&pkt(0b11, 0)), EsLayout::Payload(5));
    assert_eq!(es_layout(&pkt(0b11, 7)), EsLayout::Payload(12));
    assert_eq!(es_layout(&pkt(0b11, 182)), EsLayout::Payload(187));
    assert_eq!(es_layout(&pkt(0b11, 183)), EsLayout::NoPayload);
    assert_eq!(es_layout(&pkt(0b10, 183)), EsLayout::NoPayload);
    assert_eq!(es_layout(&pkt(0b10, 7)), EsLayout::StrayAfter(12));
    assert_eq!(es_layout(&pkt(0b10, 0)), EsLayout::StrayAfter(5));
    for afl in [184, 200, 255] {
        assert_eq!(es_layout(&pkt(0b10, afl)), EsLayout::Invalid);
        assert_eq!(es_layout(&pkt(0b11, afl)), EsLayout::Invalid);
    }
    for afl in [0, 183, 255] {
        assert_eq!(es_layout(&pkt(0b00, afl)), EsLayout::Invalid);
    }
}

#[test]
fn adaptation_field_bounds_and_pcr() {
    let mut p = [0u8; PACKET_SIZE];
    p[0] = 0x47;
    p[3] = 0x30;
    p[4] = 184;
    assert_eq!(
        PacketRef::new(&p).payload(),
        Err(TsError::AdaptationFieldTooLong(184))
    );
    assert_eq!(PacketRef::new(&p).pcr(), None);
    p[4] = 183;
    assert_eq!(PacketRef::new(&p).payload().unwrap(), &[] as &[u8]);
    // PCR base 0x1_2345_6789, extension 0x123
    p[4] = 7;
    p[5] = 0x10;
    let base: u64 = 0x1_2345_6789;
    let ext: u64 = 0x123;
    p[6] = (base >> 25) as u8;
    p[7] = (base >> 17) as u8;
    p[8] = (base >> 9) as u8;
    p[9] = (base >> 1) as u8;
    p[10] = ((base & 1) << 7) as u8 | 0x7E | (ext >> 8) as u8;
    p[11] = ext as u8;
    let r = PacketRef::new(&p);
    assert_eq!(r.pcr(), Some(base * 300 + ext));
    assert_eq!(r.payload_offset().unwrap(), Some(12));
    p[0] = 0x46;
    assert_eq!(PacketRef::new(&p).payload(), Err(TsError::BadSync(0x46)));
}

#[test]
fn build_packet_stuffing_round_trips_every_length() {
    let data: Vec<u8> = (0..200u8).collect();
    let mut p = [0u8; PACKET_SIZE];
    for n in 0..=184 {
        for st in [Stuffing::AdaptationField, Stuffing::Padding] {
            let used = build_packet(
                &mut p,
                Pid::new(0x44),
                true,
                ContinuityCounter::new(5),
                &data[..n],
                st,
            );
            assert_eq!(used, n);
            let r = PacketRef::new(&p);
            assert!(r.pusi() && r.pid() == Pid::new(0x44) && r.cc().value() == 5);
            let pl = r.payload().unwrap();
            match st {
                Stuffing::AdaptationField => assert_eq!(pl, &data[..n]),
                Stuffing::Padding => {
                    assert_eq!(&pl[..n], &data[..n]);
                    assert!(pl[n..].iter().all(|&b| b == 0xFF));
                }
            }
        }
    }
    assert_eq!(
        build_packet(
            &mut p,
            Pid::NULL,
            false,
            ContinuityCounter::new(0),
            &data,
            Stuffing::Padding
        ),
        184
    );
}

/// A PMT with `n` streams, each with a descriptor of `desc_len` bytes.
fn big_pmt(out: &mut Vec<u8>, n: u16, desc_len: usize, version: u8) -> usize {
    let mut descs = Vec::new();
    for i in 0..n {
        let mut d = vec![0x52, 1, i as u8]; // stream_identifier
        d.push(0x0A); // ISO_639_language, padded with a private descriptor
        d.push(4);
        d.extend_from_slice(b"eng\0");
        d.push(0xF0);
        d.push(desc_len as u8);
        d.extend((0..desc_len).map(|k| (k as u8) ^ (i as u8)));
        descs.push(d);
    }
    let streams: Vec<PmtStream<'_>> = descs
        .iter()
        .enumerate()
        .map(|(i, d)| PmtStream {
            stream_type: if i == 0 {
                StreamType::H264
            } else {
                StreamType::AAC_ADTS
            },
            elementary_pid: Pid::new(0x100 + i as u16),
            descriptors: Descriptors::new(d).unwrap(),
        })
        .collect();
    let prog = [0x0E, 3, 0xC0, 0x12, 0x34]; // maximum_bitrate
    write_pmt(
        out,
        7,
        version,
        Pid::new(0x100),
        &Descriptors::new(&prog).unwrap(),
        streams,
    )
    .unwrap()
}

#[test]
fn pmt_spanning_three_packets_round_trips() {
    let mut sec = Vec::new();
    let len = big_pmt(&mut sec, 12, 20, 3);
    assert!(len > 2 * 183 && len <= 3 * 183, "len {len}");
    let mut pz = Packetizer::new(Pid::new(0x1000));
    let mut packets = Vec::new();
    assert_eq!(pz.packetize_into(&sec, &mut packets).unwrap(), 3);
    assert_eq!(Packetizer::packet_count(&sec).unwrap(), 3);
    assert!(PacketRef::new(&packets[0]).pusi() && !PacketRef::new(&packets[1]).pusi());
    let mut asm = SectionAssembler::psi();
    let (good, bad) = reassemble(&packets, &mut asm);
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(good, vec![sec.clone()]);
    let s = Section::parse(&good[0], 1024).unwrap();
    let pmt = Pmt::parse(&s).unwrap();
    assert_eq!(pmt.program_number(), 7);
    assert_eq!(pmt.header.version, 3);
    assert_eq!(pmt.pcr_pid, Pid::new(0x100));
    assert_eq!(pmt.descriptors.iter().next().unwrap().tag, 0x0E);
    let streams: Vec<_> = pmt.streams().collect();
    assert_eq!(streams.len(), 12);
    assert_eq!(
        streams[0].stream_type.es_kind(&streams[0].descriptors),
        EsKind::Video
    );
    assert_eq!(streams[11].elementary_pid, Pid::new(0x10B));
    assert_eq!(streams[11].descriptors.iter().count(), 3);
    // writing the parsed PMT back gives the same bytes
    let mut again = Vec::new();
    write_pmt(
        &mut again,
        7,
        3,
        pmt.pcr_pid,
        &pmt.descriptors,
        pmt.streams(),
    )
    .unwrap();
    assert_eq!(again, sec);
    assert_eq!(asm.stats().sections, 1);
}

#[test]
fn two_sections_in_one_packet() {
    let mut secs = Vec::new();
    write_pat(
        &mut secs,
        1,
        0,
        &[PatEntry {
            program_number: 1,
            pid: Pid::new(0x1000),
        }],
    )
    .unwrap();
    let first = secs.len();
    write_cat(&mut secs, &[], &[ca(0x4AE1, 0x20, &[])], 0).unwrap();
    let mut pz = Packetizer::new(Pid::new(0x30));
    let mut packets = Vec::new();
    assert_eq!(pz.packetize_into(&secs, &mut packets).unwrap(), 1);
    let (good, bad) = reassemble(&packets, &mut SectionAssembler::psi());
    assert!(bad.is_empty());
    assert_eq!(good, vec![secs[..first].to_vec(), secs[first..].to_vec()]);
}

#[test]
fn many_sections_back_to_back_with_every_split() {
    // sections of varying size so headers land split across packet boundaries, pointer
    // fields carry previous tails, and packets hold several starts
    let mut secs = Vec::new();
    let mut bounds = Vec::new();
    let mut body = Vec::new();
    for i in 0..120usize {
        body.clear();
        body.extend((0..(i * 7) % 300).map(|k| k as u8));
        let table_id = 0x80 + (i % 16) as u8;
        let start = secs.len();
        write_private_section(&mut secs, table_id, &body).unwrap();
        bounds.push(start..secs.len());
    }
    let mut pz = Packetizer::with_cc(Pid::new(0x200), ContinuityCounter::new(9));
    let mut packets = Vec::new();
    pz.packetize_into(&secs, &mut packets).unwrap();
    let (good, bad) = reassemble(&packets, &mut SectionAssembler::private());
    assert!(bad.is_empty(), "{bad:?}");
    let want: Vec<Vec<u8>> = bounds.iter().map(|r| secs[r.clone()].to_vec()).collect();
    assert_eq!(good, want);
    // packing is tight: only the last packet has trailing stuffing, and at most one per packet
    assert!(packets.len() <= secs.len() / 183 + 2);
}

#[test]
fn bad_crc_is_rejected_and_counted() {
    let mut sec = Vec::new();
    big_pmt(&mut sec, 2, 4, 0);
    sec[20] ^= 0x01;
    let mut packets = Vec::new();
    Packetizer::new(Pid::new(0x100))
        .packetize_into(&sec, &mut packets)
        .unwrap();
    let mut asm = SectionAssembler::psi();
    let (good, bad) = reassemble(&packets, &mut asm);
    assert!(good.is_empty());
    assert_eq!(bad, vec![TsError::CrcMismatch]);
    assert_eq!(asm.stats().crc_errors, 1);
    assert_eq!(Section::parse(&sec, 1024), Err(TsError::CrcMismatch));
}

#[test]
fn lost_packet_drops_partial_section_then_recovers() {
    let mut sec = Vec::new();
    big_pmt(&mut sec, 12, 20, 0);
    let mut packets = Vec::new();
    let mut pz = Packetizer::new(Pid::new(0x100));
    pz.packetize_into(&sec, &mut packets).unwrap();
    pz.packetize_into(&sec, &mut packets).unwrap();
    packets.remove(1);
    let mut asm = SectionAssembler::psi();
    let (good, bad) = reassemble(&packets, &mut asm);
    assert_eq!(good, vec![sec]);
    assert_eq!(
        bad,
        vec![TsError::Discontinuity {
            expected: 1,
            got: 2
        }]
    );
    assert_eq!(asm.stats().cc_errors, 1);
}

#[test]
fn repeated_packet_is_ignored() {
    let mut sec = Vec::new();
    big_pmt(&mut sec, 12, 20, 0);
    let mut packets = Vec::new();
    Packetizer::new(Pid::new(0x100))
        .packetize_into(&sec, &mut packets)
        .unwrap();
    let dup = packets[1];
    packets.insert(1, dup);
    let (good, bad) = reassemble(&packets, &mut SectionAssembler::psi());
    assert_eq!((good.len(), bad.len()), (1, 0));
}

#[test]
fn oversized_section_is_rejected() {
    // a PSI assembler refuses a 2000-byte private section, a private one takes it
    let mut sec = Vec::new();
    write_private_section(&mut sec, 0x82, &[0x55; 2000]).unwrap();
    let mut packets = Vec::new();
    Packetizer::new(Pid::new(0x300))
        .packetize_into(&sec, &mut packets)
        .unwrap();
    let (good, bad) = reassemble(&packets, &mut SectionAssembler::psi());
    assert!(good.is_empty());
    assert_eq!(
        bad,
        vec![TsError::SectionTooLong {
            len: 2003,
            max: 1024
        }]
    );
    let (good, bad) = reassemble(&packets, &mut SectionAssembler::private());
    assert_eq!((good.len(), bad.len()), (1, 0));
    // writers: PSI limit 1024, private 4096
    let mut out = vec![1, 2, 3];
    let r = write_private_section(&mut out, 0x82, &[0; MAX_PRIVATE_SECTION]);
    assert!(matches!(r, Err(TsError::SectionTooLong { .. })));
    assert_eq!(out, [1, 2, 3], "failed write leaves the buffer as it was");
    let mut o = Vec::new();
    // 8 header + 4 PCR/info + 4 * (5 + 252) + 4 CRC = 1044 bytes
    let mut desc = vec![0xF0, 250];
    desc.resize(252, 0);
    let descs = Descriptors::new(&desc).unwrap();
    let streams = (0..4).map(|i| PmtStream {
        stream_type: StreamType::H264,
        elementary_pid: Pid::new(0x100 + i),
        descriptors: descs,
    });
    assert!(matches!(
        write_pmt(&mut o, 1, 0, Pid::NULL, &Descriptors::default(), streams),
        Err(TsError::SectionTooLong {
            len: 1044,
            max: 1024
        })
    ));
    assert!(o.is_empty());
}

#[test]
fn packetizer_cc_is_continuous_across_wraps() {
    let mut sec = Vec::new();
    big_pmt(&mut sec, 12, 20, 0);
    let mut pz = Packetizer::new(Pid::new(0x100));
    let mut packets = Vec::new();
    for _ in 0..11 {
        pz.packetize_into(&sec, &mut packets).unwrap();
    }
    assert_eq!(packets.len(), 33);
    for (i, p) in packets.iter().enumerate() {
        assert_eq!(usize::from(PacketRef::new(p).cc().value()), i % 16);
    }
    assert_eq!(pz.next_cc().value(), (33 % 16) as u8);
    let mut asm = SectionAssembler::psi();
    let (good, bad) = reassemble(&packets, &mut asm);
    assert_eq!((good.len(), bad.len()), (11, 0));
}

#[test]
fn ca_descriptor_parse_and_build() {
    let mut out = Vec::new();
    ca(0x0B00, 0x1234, &[1, 2, 3]).write(&mut out).unwrap();
    assert_eq!(out, [0x09, 7, 0x0B, 0x00, 0xF2, 0x34, 1, 2, 3]);
    let loop_ = Descriptors::new(&out).unwrap();
    let d = loop_.iter().next().unwrap();
    let c = CaDescriptor::parse(&d).unwrap();
    assert_eq!(c, ca(0x0B00, 0x1234, &[1, 2, 3]));
    assert_eq!(c.wire_len(), out.len());
    let short = Descriptor {
        tag: CA_DESCRIPTOR_TAG,
        data: &[1, 2, 3],
    };
    assert_eq!(
        CaDescriptor::parse(&short),
        Err(TsError::Truncated("CA_descriptor"))
    );
    assert!(Descriptors::new(&[0x09, 5, 1]).is_err());
    assert!(ca(1, 1, &[0; 252]).write(&mut Vec::new()).is_err());
}

/// PMT with an old CA_descriptor of system 0x4AE1 at program level and on the video,
/// and one of another system (0x0B00) that must survive.
fn pmt_with_old_cas(out: &mut Vec<u8>) {
    let mut prog = Vec::new();
    ca(0x4AE1, 0x1FF0, &[9]).write(&mut prog).unwrap();
    ca(0x0B00, 0x1FF1, &[]).write(&mut prog).unwrap();
    let mut video = Vec::new();
    ca(0x4AE1, 0x1FF2, &[]).write(&mut video).unwrap();
    video.extend_from_slice(&[0x52, 1, 1]);
    let audio = [0x0A, 4, b'e', b'n', b'g', 0];
    let streams = [
        PmtStream {
            stream_type: StreamType::H264,
            elementary_pid: Pid::new(0x100),
            descriptors: Descriptors::new(&video).unwrap(),
        },
        PmtStream {
            stream_type: StreamType::MPEG2_AUDIO,
            elementary_pid: Pid::new(0x101),
            descriptors: Descriptors::new(&audio).unwrap(),
        },
        PmtStream {
            stream_type: StreamType::PRIVATE_PES,
            elementary_pid: Pid::new(0x102),
            descriptors: Descriptors::new(&[0x59, 0]).unwrap(),
        },
    ];
    write_pmt(
        out,
        5,
        4,
        Pid::new(0x100),
        &Descriptors::new(&prog).unwrap(),
        streams,
    )
    .unwrap();
}

fn cas_of(d: &Descriptors<'_>) -> Vec<(u16, u16)> {
    d.ca_descriptors()
        .map(|c| (c.ca_system_id, c.ca_pid.value()))
        .collect()
}

#[test]
fn pmt_rewrite_program_level() {
    let mut src = Vec::new();
    pmt_with_old_cas(&mut src);
    let s = Section::parse(&src, 1024).unwrap();
    let pmt = Pmt::parse(&s).unwrap();
    let mut out = Vec::new();
    let ours = [ca(0x4AE1, 0x0500, &[0xAA, 0xBB])];
    rewrite_pmt(&mut out, &pmt, &ours, CaPlacement::Program, 17).unwrap();
    let s2 = Section::parse(&out, 1024).unwrap();
    let new = Pmt::parse(&s2).unwrap();
    assert_eq!(new.header.version, 17);
    assert_eq!(new.program_number(), 5);
    assert_eq!(new.pcr_pid, pmt.pcr_pid);
    assert_eq!(
        cas_of(&new.descriptors),
        vec![(0x0B00, 0x1FF1), (0x4AE1, 0x0500)]
    );
    let c = new.descriptors.ca_descriptors().last().unwrap();
    assert_eq!(c.private_data, &[0xAA, 0xBB]);
    let streams: Vec<_> = new.streams().collect();
    assert_eq!(streams.len(), 3);
    assert!(streams.iter().all(|s| cas_of(&s.descriptors).is_empty()));
    assert_eq!(streams[0].descriptors.as_bytes(), &[0x52, 1, 1]);
    assert_eq!(
        streams[2].stream_type.es_kind(&streams[2].descriptors),
        EsKind::Subtitle
    );
}

#[test]
fn pmt_rewrite_component_level() {
    let mut src = Vec::new();
    pmt_with_old_cas(&mut src);
    let s = Section::parse(&src, 1024).unwrap();
    let pmt = Pmt::parse(&s).unwrap();
    let mut out = Vec::new();
    let ours = [ca(0x4AE1, 0x0500, &[]), ca(0x0B01, 0x0501, &[])];
    let pids = [Pid::new(0x100), Pid::new(0x101)];
    rewrite_pmt(&mut out, &pmt, &ours, CaPlacement::Components(&pids), 0).unwrap();
    let s2 = Section::parse(&out, 1024).unwrap();
    let new = Pmt::parse(&s2).unwrap();
    assert_eq!(cas_of(&new.descriptors), vec![(0x0B00, 0x1FF1)]);
    let streams: Vec<_> = new.streams().collect();
    assert_eq!(
        cas_of(&streams[0].descriptors),
        vec![(0x4AE1, 0x500), (0x0B01, 0x501)]
    );
    assert_eq!(
        cas_of(&streams[1].descriptors),
        vec![(0x4AE1, 0x500), (0x0B01, 0x501)]
    );
    assert!(cas_of(&streams[2].descriptors).is_empty());
    assert_eq!(
        streams[1].descriptors.iter().next().unwrap().tag,
        0x0A,
        "others kept, first"
    );
}

#[test]
fn cat_built_fresh_and_merged() {
    let mut fresh = Vec::new();
    write_cat(&mut fresh, &[], &[ca(0x4AE1, 0x0600, &[1])], 2).unwrap();
    let s = Section::parse(&fresh, 1024).unwrap();
    let cat = Cat::parse(&s).unwrap();
    assert_eq!(cat.header.version, 2);
    assert_eq!(cas_of(&cat.descriptors), vec![(0x4AE1, 0x600)]);

    // an input CAT with another CAS and an old entry of ours, plus a non-CA descriptor
    let mut input_loop = Vec::new();
    ca(0x0500, 0x0700, &[]).write(&mut input_loop).unwrap();
    ca(0x4AE1, 0x0701, &[]).write(&mut input_loop).unwrap();
    input_loop.extend_from_slice(&[0xF0, 1, 0x42]);
    let mut input = Vec::new();
    let mut w = psi_write::SectionWriter::long(
        &mut input,
        &section::LongHeader {
            table_id: 0x01,
            table_id_extension: 0xFFFF,
            version: 9,
            current_next: true,
            section_number: 0,
            last_section_number: 0,
        },
        1024,
    );
    w.put(&input_loop);
    w.finish().unwrap();
    let si = Section::parse(&input, 1024).unwrap();
    let cin = Cat::parse(&si).unwrap();
    let mut merged = Vec::new();
    write_cat(
        &mut merged,
        &[cin.descriptors],
        &[ca(0x4AE1, 0x0600, &[])],
        10,
    )
    .unwrap();
    let sm = Section::parse(&merged, 1024).unwrap();
    let cm = Cat::parse(&sm).unwrap();
    assert_eq!(cm.header.version, 10);
    assert_eq!(
        cas_of(&cm.descriptors),
        vec![(0x0500, 0x700), (0x4AE1, 0x600)]
    );
    assert_eq!(cm.descriptors.iter().count(), 3);
    // the merged CAT still goes through the packetizer and assembler
    let mut packets = Vec::new();
    Packetizer::new(Pid::CAT)
        .packetize_into(&merged, &mut packets)
        .unwrap();
    let (good, _) = reassemble(&packets, &mut SectionAssembler::psi());
    assert_eq!(good, vec![merged]);
}

#[test]
fn table_parsers_check_table_id_and_syntax() {
    let s = Section::parse(&FFMPEG_PAT, 1024).unwrap();
    assert!(matches!(
        Pmt::parse(&s),
        Err(TsError::WrongTableId {
            expected: 2,
            got: 0
        })
    ));
    assert!(matches!(Cat::parse(&s), Err(TsError::WrongTableId { .. })));
    let mut ecm = Vec::new();
    write_private_section(&mut ecm, 0x80, &[1, 2, 3]).unwrap();
    assert_eq!(ecm, [0x80, 0x70, 3, 1, 2, 3]);
    let s = Section::parse(&ecm, 4096).unwrap();
    assert!(s.long_header().is_none());
    assert_eq!(s.payload(), &[1, 2, 3]);
    let mut fake_pat = ecm.clone();
    fake_pat[0] = 0;
    let s = Section::parse(&fake_pat, 4096).unwrap();
    assert_eq!(Pat::parse(&s).unwrap_err(), TsError::NotLongSection);
}

#[test]
fn es_kind_classification() {
    let none = Descriptors::default();
    for st in [0x01, 0x02, 0x10, 0x1B, 0x24, 0x42, 0xEA] {
        assert_eq!(StreamType(st).es_kind(&none), EsKind::Video, "{st:#x}");
    }
    for st in [0x03, 0x04, 0x0F, 0x11, 0x81, 0x87] {
        assert_eq!(StreamType(st).es_kind(&none), EsKind::Audio, "{st:#x}");
    }
    assert_eq!(StreamType(0x86).es_kind(&none), EsKind::Data);
    assert_eq!(StreamType(0x06).es_kind(&none), EsKind::Other);
    let cases: [(&[u8], EsKind); 7] = [
        (&[0x6A, 1, 0], EsKind::Audio),
        (&[0x7A, 1, 0], EsKind::Audio),
        (&[0x7B, 0], EsKind::Audio),
        (
            &[0x59, 8, b'e', b'n', b'g', 0x10, 0, 1, 0, 1],
            EsKind::Subtitle,
        ),
        (&[0x56, 5, b'e', b'n', b'g', 0x09, 0], EsKind::Teletext),
        (&[0x05, 4, b'A', b'C', b'-', b'3'], EsKind::Audio),
        (&[0x7F, 1, 0x15], EsKind::Audio),
    ];
    for (d, kind) in cases {
        assert_eq!(
            StreamType::PRIVATE_PES.es_kind(&Descriptors::new(d).unwrap()),
            kind,
            "{d:x?}"
        );
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let mut psi = SectionAssembler::psi();
    let mut private = SectionAssembler::private();
    let mut p = [0u8; PACKET_SIZE];
    let mut sink = 0usize;
    for i in 0..5000 {
        rng.fill(&mut p);
        if i % 2 == 0 {
            p[0] = 0x47;
        }
        if i % 4 == 0 {
            p[1] &= 0x7F; // no TEI, so the section path runs
            p[3] &= 0x3F; // clear
        }
        let r = PacketRef::new(&p);
        let _ = (
            r.pid(),
            r.tsc(),
            r.cc(),
            r.pusi(),
            r.pcr(),
            r.discontinuity(),
        );
        let _ = (r.payload(), r.payload_offset(), r.adaptation_field());
        let _ = PacketMut::new(&mut p).payload_mut().map(|b| b.len());
        for asm in [&mut psi, &mut private] {
            asm.push(&p, |s| {
                if let Ok(s) = s {
                    sink += s.bytes().len();
                    let _ = (
                        Pat::parse(&s).map(|t| t.entries().count()),
                        Cat::parse(&s).is_ok(),
                    );
                    if let Ok(t) = Pmt::parse(&s) {
                        sink += t.streams().count();
                    }
                }
            });
        }
        // every parser directly on random slices, with a CRC made valid half the time
        let n = (rng.next() % 188) as usize;
        let mut buf = p[..n].to_vec();
        if n >= 12 && i % 2 == 1 {
            buf[0] = (i % 3) as u8;
            buf[1] = 0xB0 | (buf[1] & 0x0F);
            let total = section::section_total_len(&buf).unwrap().min(n);
            let sl = total - 3;
            buf[1] = 0xB0 | (sl >> 8) as u8;
            buf[2] = sl as u8;
            if total >= 12 {
                let crc = crc32_mpeg2(&buf[..total - 4]);
                buf[total - 4..total].copy_from_slice(&crc.to_be_bytes());
            }
        }
        if let Ok(s) = Section::parse(&buf, 4096) {
            let _ = (s.long_header(), s.payload());
            if let Ok(t) = Pmt::parse(&s) {
                sink += t
                    .streams()
                    .map(|st| st.stream_type.es_kind(&st.descriptors) as usize)
                    .sum::<usize>();
                let mut out = Vec::new();
                let _ = rewrite_pmt(&mut out, &t, &[ca(1, 2, &[3])], CaPlacement::Program, 1);
            }
            if let Ok(t) = Pat::parse(&s) {
                sink += t.entries().count();
            }
            if let Ok(t) = Cat::parse(&s) {
                let mut out = Vec::new();
                let _ = write_cat(&mut out, &[t.descriptors], &[ca(1, 2, &[3])], 1);
            }
        }
        if let Ok(d) = Descriptors::new(&buf) {
            sink += d
                .iter()
                .filter_map(|d| CaDescriptor::parse(&d).ok())
                .count();
        }
        let _ = Packetizer::packet_count(&buf);
    }
    assert!(psi.stats().packets == 5000 && sink < usize::MAX);
}

#[test]
fn bit_flipped_stream_never_panics() {
    let mut sec = Vec::new();
    big_pmt(&mut sec, 12, 20, 0);
    let mut packets = Vec::new();
    let mut pz = Packetizer::new(Pid::new(0x100));
    for _ in 0..50 {
        pz.packetize_into(&sec, &mut packets).unwrap();
    }
    let mut rng = Rng(99);
    for p in packets.iter_mut() {
        for _ in 0..(rng.next() % 3) {
            let bit = (rng.next() % (188 * 8)) as usize;
            p[bit / 8] ^= 1 << (bit % 8);
        }
    }
    let mut asm = SectionAssembler::psi();
    let (good, _) = reassemble(&packets, &mut asm);
    for g in &good {
        // anything delivered passed the CRC
        assert_eq!(crc32_mpeg2(g), 0);
    }
    let st = asm.stats();
    assert_eq!(st.packets, 150);
    assert!(st.crc_errors + st.cc_errors + st.other_errors > 0);
}

#[test]
fn section_boundaries_around_packet_edges() {
    // first section sizes that end just before, at, and just after a packet edge, so the
    // second section's header is split, starts at pointer 0, or follows a 0xFF-padded packet
    for first in (179..=187).chain(364..=368) {
        let mut secs = Vec::new();
        write_private_section(&mut secs, 0x80, &vec![0x11; first - 3]).unwrap();
        write_private_section(&mut secs, 0x81, &[0x22; 40]).unwrap();
        write_private_section(&mut secs, 0x82, &[0x33; 200]).unwrap();
        assert_eq!(secs.len(), first + 43 + 203);
        let mut packets = Vec::new();
        let n = Packetizer::new(Pid::new(0x50))
            .packetize_into(&secs, &mut packets)
            .unwrap();
        assert_eq!(n, Packetizer::packet_count(&secs).unwrap());
        let (good, bad) = reassemble(&packets, &mut SectionAssembler::private());
        assert!(bad.is_empty(), "first={first}: {bad:?}");
        assert_eq!(good.len(), 3, "first={first}");
        assert_eq!(good.concat(), secs, "first={first}");
    }
}

fn section_packet(pusi: bool, cc: u8, payload: &[u8]) -> Packet {
    let mut p = [0u8; PACKET_SIZE];
    build_packet(
        &mut p,
        Pid::new(0x100),
        pusi,
        ContinuityCounter::new(cc),
        payload,
        Stuffing::Padding,
    );
    p
}

#[test]
fn bad_pointers_and_scrambled_packets_are_errors() {
    let mut asm = SectionAssembler::psi();
    // pointer 200 is past the 183 bytes that follow it
    let (good, bad) = reassemble(&[section_packet(true, 0, &[200, 0, 0])], &mut asm);
    assert!(good.is_empty());
    assert_eq!(bad, vec![TsError::PointerTooLong(200)]);

    // a section cut short: the next PUSI's pointer says 5 bytes remain, but more are needed
    let mut sec = Vec::new();
    big_pmt(&mut sec, 12, 20, 0);
    let mut first = vec![0u8];
    first.extend_from_slice(&sec[..183]);
    let mut second = vec![5u8, 1, 2, 3, 4, 5];
    second.extend_from_slice(&FFMPEG_PAT);
    let packets = [
        section_packet(true, 1, &first),
        section_packet(true, 2, &second),
    ];
    let (good, bad) = reassemble(&packets, &mut asm);
    assert_eq!(
        good,
        vec![FFMPEG_PAT.to_vec()],
        "the new section still comes out"
    );
    assert!(matches!(bad[..], [TsError::SectionTruncated { .. }]));

    // scrambled PSI
    let mut p = section_packet(true, 3, &[0, 0]);
    PacketMut::new(&mut p).set_tsc(TransportScramblingControl::Even);
    let (_, bad) = reassemble(&[p], &mut asm);
    assert_eq!(bad, vec![TsError::Scrambled]);

    // TEI and bad sync
    let mut p = section_packet(true, 4, &[0]);
    p[1] |= 0x80;
    let mut q = p;
    q[0] = 0;
    let (_, bad) = reassemble(&[p, q], &mut asm);
    assert_eq!(bad, vec![TsError::TransportError, TsError::BadSync(0)]);
    assert_eq!(asm.stats().other_errors, 5);
}

#[test]
fn packetizer_rejects_malformed_input() {
    let mut pz = Packetizer::new(Pid::new(0x50));
    let mut out = Vec::new();
    assert!(pz.packetize_into(&FFMPEG_PAT[..10], &mut out).is_err());
    assert!(pz.packetize_into(&[0xFF, 0x00, 0x00], &mut out).is_err());
    assert!(pz.packetize_into(&[0x80, 0x70], &mut out).is_err());
    assert_eq!(pz.packetize_into(&[], &mut out).unwrap(), 0);
    assert!(out.is_empty());
    assert_eq!(pz.next_cc().value(), 0, "errors do not consume counters");
}

#[test]
fn assembler_buffer_is_reused_and_crc_field_exposed() {
    let mut asm = SectionAssembler::private();
    let cap = asm.buffer_capacity();
    assert!(cap >= MAX_PRIVATE_SECTION);
    let mut secs = Vec::new();
    write_private_section(&mut secs, 0x82, &[7; 4000]).unwrap();
    write_pat(
        &mut secs,
        1,
        0,
        &[PatEntry {
            program_number: 1,
            pid: Pid::new(0x1000),
        }],
    )
    .unwrap();
    let mut packets = Vec::new();
    Packetizer::new(Pid::new(0x40))
        .packetize_into(&secs, &mut packets)
        .unwrap();
    let mut crcs = Vec::new();
    for p in &packets {
        asm.push(p, |s| crcs.push(s.unwrap().crc32()));
    }
    assert_eq!(crcs, vec![None, Some(0x2AB1_04B2)]);
    assert_eq!(asm.buffer_capacity(), cap);
}

#[test]
fn sections_back_to_back_are_checked_and_split() {
    use super::section::{check_sections, split_sections};
    let mut two = Vec::new();
    write_private_section(&mut two, 0x82, &[1, 2, 3]).unwrap();
    write_private_section(&mut two, 0x83, &[4; 40]).unwrap();
    assert_eq!(check_sections(&two, 0x82..=0x8F), Ok(2));
    let parts: Vec<&[u8]> = split_sections(&two).collect();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].len() + parts[1].len(), two.len());
    assert!(matches!(
        check_sections(&two, 0x82..=0x82),
        Err(TsError::WrongTableId { got: 0x83, .. })
    ));
    assert!(matches!(
        check_sections(&two[..two.len() - 1], 0x82..=0x8F),
        Err(TsError::SectionTruncated { .. })
    ));
    assert!(check_sections(&[0xFF, 0xFF, 0xFF], 0x00..=0xFF).is_err());
    assert!(check_sections(&two[..9], 0x82..=0x8F).is_err());
    // the incomplete tail is left out
    assert_eq!(split_sections(&two[..two.len() - 1]).count(), 1);
    assert!(super::packet::is_whole_packets(&[0x47; 376]));
    assert!(!super::packet::is_whole_packets(&[0x47; 375]));
    assert!(!super::packet::is_whole_packets(&[]));
}
