//! DVB SI section writing (ETSI EN 300 468): SDT actual (§5.2.3), NIT actual (§5.2.1), TDT
//! (§5.2.5) and TOT (§5.2.6), with the descriptors a multiplex needs: service (0x48),
//! network_name (0x40), service_list (0x41), cable_delivery_system (0x44),
//! local_time_offset (0x58) and the EACEM/NorDig logical_channel descriptor (0x83, read alike as EACEM's and NorDig v1's).
//!
//! Like [`super::psi_write`], every table is one section appended to a caller's buffer, with
//! lengths and CRC filled by [`SectionWriter`]; a table that does not fit one section is an
//! error, never a half section.

use super::descriptor::Descriptor;
use super::error::TsError;
use super::psi_write::{header, SectionWriter};
use super::section::{crc32_mpeg2, MAX_PSI_SECTION};
use super::types::Pid;

/// table_id of the NIT of the actual network.
pub const TABLE_ID_NIT_ACTUAL: u8 = 0x40;
/// table_id of the SDT of the actual transport stream.
pub const TABLE_ID_SDT_ACTUAL: u8 = 0x42;
/// table_id of the TDT.
pub const TABLE_ID_TDT: u8 = 0x70;
/// table_id of the TOT.
pub const TABLE_ID_TOT: u8 = 0x73;
/// PID of the NIT (EN 300 468 §5.1.3).
pub const PID_NIT: Pid = Pid::new(0x0010);
/// PID of the SDT (and BAT).
pub const PID_SDT: Pid = Pid::new(0x0011);
/// PID of the TDT and TOT.
pub const PID_TDT: Pid = Pid::new(0x0014);
/// SI sections are at most 1024 bytes (section_length <= 1021), as PSI sections.
const MAX_SI_SECTION: usize = MAX_PSI_SECTION;
/// MJD of 1970-01-01 (EN 300 468 Annex C).
const MJD_UNIX_EPOCH: u64 = 40_587;

/// running_status (EN 300 468 table 6).
pub const RUNNING: u8 = 4;
/// service_type of a digital television service (EN 300 468 table 87).
pub const SERVICE_TYPE_TV: u8 = 0x01;

/// One service of an SDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdtService<'a> {
    /// service_id (the program_number).
    pub service_id: u16,
    pub eit_schedule: bool,
    pub eit_present_following: bool,
    /// running_status, 0..=7 ([`RUNNING`] for a service on air).
    pub running_status: u8,
    /// free_CA_mode: one or more streams are scrambled.
    pub free_ca_mode: bool,
    /// service_type of the service_descriptor.
    pub service_type: u8,
    pub provider_name: &'a str,
    pub service_name: &'a str,
}

/// One service of a NIT transport stream: its service_list and LCN entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NitService {
    pub service_id: u16,
    pub service_type: u8,
    /// logical_channel_number (10 bits); None: not in the logical_channel descriptor.
    pub lcn: Option<u16>,
    /// visible_service_flag of the logical_channel descriptor.
    pub visible: bool,
}

/// cable_delivery_system_descriptor fields (EN 300 468 §6.2.13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CableDelivery {
    /// Centre frequency in Hz (coded in 100 Hz units, 8 BCD digits).
    pub frequency_hz: u64,
    /// modulation code: 1 16-QAM, 2 32-QAM, 3 64-QAM, 4 128-QAM, 5 256-QAM.
    pub modulation: u8,
    /// Symbols per second (coded in 100 symbol/s units, 7 BCD digits).
    pub symbol_rate: u64,
    /// FEC_outer: 0 not defined, 1 none, 2 RS(204/188).
    pub fec_outer: u8,
    /// FEC_inner: 0 not defined, 1 1/2, 2 2/3, 3 3/4, 4 5/6, 5 7/8, 0xF none.
    pub fec_inner: u8,
}

/// One transport stream of a NIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NitStream<'a> {
    pub transport_stream_id: u16,
    pub original_network_id: u16,
    pub services: &'a [NitService],
    pub delivery: Option<CableDelivery>,
}

/// local_time_offset_descriptor entry (EN 300 468 §6.2.20).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTimeOffset {
    /// ISO 3166 alpha-3 country code, e.g. `*b"DEU"`.
    pub country: [u8; 3],
    /// country_region_id, 0..=63.
    pub region: u8,
    /// Offset from UTC in minutes (negative: west).
    pub offset_minutes: i16,
    /// When the offset next changes, seconds since the Unix epoch (UTC).
    pub time_of_change: u64,
    /// The offset after that change, minutes.
    pub next_offset_minutes: i16,
}

/// A text field: ASCII as it is (the default table), anything else as UTF-8 with its
/// selector byte 0x15 (EN 300 468 Annex A.2).
fn put_text(body: &mut Vec<u8>, text: &str) -> Result<(), TsError> {
    let utf8 = !text.is_ascii();
    let len = text.len() + usize::from(utf8);
    let len = u8::try_from(len).map_err(|_| TsError::DescriptorTooLong(len))?;
    body.push(len);
    if utf8 {
        body.push(0x15);
    }
    body.extend_from_slice(text.as_bytes());
    Ok(())
}

fn put_descriptor(w: &mut SectionWriter<'_>, tag: u8, data: &[u8]) -> Result<(), TsError> {
    w.put_descriptor(&Descriptor { tag, data })
}

/// Append a one-section SDT actual; returns its size.
pub fn write_sdt(
    out: &mut Vec<u8>,
    transport_stream_id: u16,
    original_network_id: u16,
    version: u8,
    services: &[SdtService<'_>],
) -> Result<usize, TsError> {
    let mut w = SectionWriter::long_si(
        out,
        &header(TABLE_ID_SDT_ACTUAL, transport_stream_id, version),
        MAX_SI_SECTION,
    );
    w.put(&original_network_id.to_be_bytes());
    w.put(&[0xFF]);
    let mut body = Vec::with_capacity(64);
    for s in services {
        w.put(&s.service_id.to_be_bytes());
        w.put(&[0xFC | u8::from(s.eit_schedule) << 1 | u8::from(s.eit_present_following)]);
        let m = w.open_loop(((s.running_status & 7) << 1) | u8::from(s.free_ca_mode));
        body.clear();
        body.push(s.service_type);
        put_text(&mut body, s.provider_name)?;
        put_text(&mut body, s.service_name)?;
        put_descriptor(&mut w, 0x48, &body)?;
        w.close_loop(m)?;
    }
    w.finish()
}

/// `v` as `digits` BCD digits, most significant first, right-aligned in a u32/u64.
fn bcd(mut v: u64, digits: u32) -> u64 {
    let mut out = 0;
    for k in 0..digits {
        out |= (v % 10) << (4 * k);
        v /= 10;
    }
    out
}

fn put_cable(body: &mut Vec<u8>, c: &CableDelivery) {
    body.extend_from_slice(&(bcd(c.frequency_hz / 100, 8) as u32).to_be_bytes());
    body.extend_from_slice(&[0xFF, 0xF0 | (c.fec_outer & 0x0F), c.modulation]);
    let sr = (bcd(c.symbol_rate / 100, 7) as u32) << 4 | u32::from(c.fec_inner & 0x0F);
    body.extend_from_slice(&sr.to_be_bytes());
}

/// Append a one-section NIT actual; returns its size.
pub fn write_nit(
    out: &mut Vec<u8>,
    network_id: u16,
    version: u8,
    network_name: &str,
    streams: &[NitStream<'_>],
) -> Result<usize, TsError> {
    let mut w = SectionWriter::long_si(
        out,
        &header(TABLE_ID_NIT_ACTUAL, network_id, version),
        MAX_SI_SECTION,
    );
    let mut body = Vec::with_capacity(64);
    let m = w.open_loop(0xF);
    if !network_name.is_empty() {
        put_text(&mut body, network_name)?;
        // the name is the whole body: no length byte of its own
        put_descriptor(&mut w, 0x40, &body[1..])?;
    }
    w.close_loop(m)?;
    let ts_loop = w.open_loop(0xF);
    for t in streams {
        w.put(&t.transport_stream_id.to_be_bytes());
        w.put(&t.original_network_id.to_be_bytes());
        let m = w.open_loop(0xF);
        if let Some(c) = &t.delivery {
            body.clear();
            put_cable(&mut body, c);
            put_descriptor(&mut w, 0x44, &body)?;
        }
        // 85 services of 3 bytes fill a descriptor: more go into another one
        for chunk in t.services.chunks(85) {
            body.clear();
            for s in chunk {
                body.extend_from_slice(&s.service_id.to_be_bytes());
                body.push(s.service_type);
            }
            put_descriptor(&mut w, 0x41, &body)?;
        }
        let lcns: Vec<&NitService> = t.services.iter().filter(|s| s.lcn.is_some()).collect();
        for chunk in lcns.chunks(63) {
            body.clear();
            for s in chunk {
                body.extend_from_slice(&s.service_id.to_be_bytes());
                // EACEM reads visible, 5 reserved bits, a 10-bit LCN; NorDig v1 (and
                // tshark) visible, 1 reserved bit, a 14-bit LCN: with bits 10-13 zero
                // both read the same number
                let lcn = s.lcn.unwrap_or(0) & 0x03FF;
                let v = u16::from(s.visible) << 15 | 0x4000 | lcn;
                body.extend_from_slice(&v.to_be_bytes());
            }
            put_descriptor(&mut w, 0x83, &body)?;
        }
        w.close_loop(m)?;
    }
    w.close_loop(ts_loop)?;
    w.finish()
}

/// UTC_time as SI codes it: 16-bit MJD, then hours, minutes, seconds in BCD (Annex C).
pub fn utc_time(unix_secs: u64) -> [u8; 5] {
    let mjd = (MJD_UNIX_EPOCH + unix_secs / 86_400) as u16;
    let s = unix_secs % 86_400;
    let [m0, m1] = mjd.to_be_bytes();
    [
        m0,
        m1,
        bcd(s / 3600, 2) as u8,
        bcd(s / 60 % 60, 2) as u8,
        bcd(s % 60, 2) as u8,
    ]
}

/// Append a TDT (a short section, no CRC); returns its size.
pub fn write_tdt(out: &mut Vec<u8>, unix_secs: u64) -> Result<usize, TsError> {
    let mut w = SectionWriter::short(out, TABLE_ID_TDT, MAX_SI_SECTION);
    w.put(&utc_time(unix_secs));
    w.finish()
}

/// An offset in minutes as hhmm BCD, and its polarity bit (1: west of Greenwich).
fn offset_bcd(minutes: i16) -> (u16, u8) {
    let m = u64::from(minutes.unsigned_abs());
    (
        bcd((m / 60) * 100 + m % 60, 4) as u16,
        u8::from(minutes < 0),
    )
}

/// Append a TOT (a short section that still ends in a CRC_32); returns its size.
pub fn write_tot(
    out: &mut Vec<u8>,
    unix_secs: u64,
    offsets: &[LocalTimeOffset],
) -> Result<usize, TsError> {
    let start = out.len();
    let mut w = SectionWriter::short(out, TABLE_ID_TOT, MAX_SI_SECTION);
    w.put(&utc_time(unix_secs));
    let m = w.open_loop(0xF);
    if !offsets.is_empty() {
        let mut body = Vec::with_capacity(13 * offsets.len());
        for o in offsets {
            body.extend_from_slice(&o.country);
            let (now, polarity) = offset_bcd(o.offset_minutes);
            body.push((o.region & 0x3F) << 2 | 0x02 | polarity);
            body.extend_from_slice(&now.to_be_bytes());
            body.extend_from_slice(&utc_time(o.time_of_change));
            body.extend_from_slice(&offset_bcd(o.next_offset_minutes).0.to_be_bytes());
        }
        put_descriptor(&mut w, 0x58, &body)?;
    }
    w.close_loop(m)?;
    // room for the CRC, counted in section_length, filled once the length is
    w.put(&[0; 4]);
    let total = w.finish()?;
    let end = start + total;
    let crc = crc32_mpeg2(&out[start..end - 4]);
    out[end - 4..end].copy_from_slice(&crc.to_be_bytes());
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::descriptor::Descriptors;
    use crate::ts::section::Section;

    /// The descriptors of a loop whose 12-bit length starts at `b[0]`; and what follows.
    fn loop_at(b: &[u8]) -> (Vec<(u8, Vec<u8>)>, &[u8]) {
        let len = usize::from(b[0] & 0x0F) << 8 | usize::from(b[1]);
        let d = Descriptors::new(&b[2..2 + len]).unwrap();
        (
            d.iter().map(|d| (d.tag, d.data.to_vec())).collect(),
            &b[2 + len..],
        )
    }

    #[test]
    fn the_sdt_reads_back() {
        let mut out = vec![0xAA];
        let services = [
            SdtService {
                service_id: 101,
                eit_schedule: false,
                eit_present_following: true,
                running_status: RUNNING,
                free_ca_mode: true,
                service_type: SERVICE_TYPE_TV,
                provider_name: "castmux",
                service_name: "News",
            },
            SdtService {
                service_id: 102,
                eit_schedule: true,
                eit_present_following: false,
                running_status: 1,
                free_ca_mode: false,
                service_type: 0x19,
                provider_name: "",
                service_name: "Größe",
            },
        ];
        let n = write_sdt(&mut out, 10, 1, 7, &services).unwrap();
        assert_eq!(n, out.len() - 1);
        let s = Section::parse(&out[1..], 1024).unwrap();
        let h = s.long_header().unwrap();
        assert_eq!(
            (s.table_id(), h.table_id_extension, h.version),
            (0x42, 10, 7)
        );
        assert_eq!(out[2] & 0xF0, 0xF0, "syntax 1, reserved_future_use 1");
        let p = s.payload();
        assert_eq!(&p[..3], &[0, 1, 0xFF]);
        let mut rest = &p[3..];
        let mut got = Vec::new();
        while !rest.is_empty() {
            let id = u16::from_be_bytes([rest[0], rest[1]]);
            let flags = rest[2];
            let running = rest[3] >> 5;
            let free_ca = rest[3] & 0x10 != 0;
            let (d, r) = loop_at(&rest[3..]);
            rest = r;
            let body = &d[0].1;
            assert_eq!(d[0].0, 0x48);
            let pl = usize::from(body[1]);
            let provider = body[2..2 + pl].to_vec();
            let name = body[3 + pl..].to_vec();
            assert_eq!(usize::from(body[2 + pl]), name.len());
            got.push((id, flags & 3, running, free_ca, body[0], provider, name));
        }
        assert_eq!(
            got,
            [
                (101, 1, 4, true, 1, b"castmux".to_vec(), b"News".to_vec()),
                (
                    102,
                    2,
                    1,
                    false,
                    0x19,
                    Vec::new(),
                    [&[0x15][..], "Größe".as_bytes()].concat()
                ),
            ]
        );
    }

    #[test]
    fn the_nit_reads_back_with_its_lcns_and_delivery() {
        let mut out = Vec::new();
        let services = [
            NitService {
                service_id: 101,
                service_type: 1,
                lcn: Some(1),
                visible: true,
            },
            NitService {
                service_id: 102,
                service_type: 2,
                lcn: Some(1000),
                visible: false,
            },
            NitService {
                service_id: 103,
                service_type: 1,
                lcn: None,
                visible: true,
            },
        ];
        let cable = CableDelivery {
            frequency_hz: 346_000_000,
            modulation: 5,
            symbol_rate: 6_875_000,
            fec_outer: 2,
            fec_inner: 0xF,
        };
        write_nit(
            &mut out,
            0x3001,
            31,
            "castmux",
            &[NitStream {
                transport_stream_id: 10,
                original_network_id: 1,
                services: &services,
                delivery: Some(cable),
            }],
        )
        .unwrap();
        let s = Section::parse(&out, 1024).unwrap();
        let h = s.long_header().unwrap();
        assert_eq!(
            (s.table_id(), h.table_id_extension, h.version),
            (0x40, 0x3001, 31)
        );
        let (net, rest) = loop_at(s.payload());
        assert_eq!(net, [(0x40, b"castmux".to_vec())]);
        let ts_len = usize::from(rest[0] & 0x0F) << 8 | usize::from(rest[1]);
        assert_eq!(ts_len, rest.len() - 2);
        let t = &rest[2..];
        assert_eq!(&t[..4], &[0, 10, 0, 1]);
        let (d, tail) = loop_at(&t[4..]);
        assert!(tail.is_empty());
        assert_eq!(d[0].0, 0x44);
        // 0346.0000 MHz, 256-QAM, 006.8750 Msym/s, FEC none, RS outer
        assert_eq!(
            d[0].1,
            [0x03, 0x46, 0x00, 0x00, 0xFF, 0xF2, 0x05, 0x00, 0x68, 0x75, 0x0F]
        );
        assert_eq!(
            d[1],
            (0x41, vec![0, 101, 1, 0, 102, 2, 0, 103, 1]),
            "service_list"
        );
        // visible 1, reserved 1, LCN 1; not visible, reserved 1, LCN 1000 (0x3E8)
        assert_eq!(d[2], (0x83, vec![0, 101, 0xC0, 0x01, 0, 102, 0x43, 0xE8]));
    }

    #[test]
    fn utc_time_is_mjd_and_bcd() {
        // EN 300 468 Annex C's example: 1993-10-13 12:45:00 is MJD 49273 (0xC079)
        assert_eq!(utc_time(750_516_300), [0xC0, 0x79, 0x12, 0x45, 0x00]);
        // 2026-12-01 10:00:00 UTC is 1_796_119_200 s: day 20788 after 1970-01-01, MJD 61375
        assert_eq!(61375, 40587 + 20788);
        assert_eq!(utc_time(1_796_119_200), [0xEF, 0xBF, 0x10, 0x00, 0x00]);
        assert_eq!(
            utc_time(1_796_119_200 + 13 * 3600 + 59 * 60 + 59)[2..],
            [0x23, 0x59, 0x59]
        );
    }

    #[test]
    fn tdt_and_tot_read_back_and_the_tot_crc_checks() {
        let mut out = Vec::new();
        assert_eq!(write_tdt(&mut out, 750_516_300).unwrap(), 8);
        assert_eq!(out, [0x70, 0x70, 0x05, 0xC0, 0x79, 0x12, 0x45, 0x00]);
        let mut tot = Vec::new();
        write_tot(&mut tot, 750_516_300, &[]).unwrap();
        assert_eq!(
            // section_length 11: UTC_time 5, the loop length 2, the CRC 4
            tot[..10],
            [0x73, 0x70, 0x0B, 0xC0, 0x79, 0x12, 0x45, 0x00, 0xF0, 0]
        );
        assert_eq!(tot.len(), 14);
        assert_eq!(
            crc32_mpeg2(&tot),
            0,
            "CRC over the section, CRC included, is 0"
        );
        tot.clear();
        write_tot(
            &mut tot,
            750_516_300,
            &[LocalTimeOffset {
                country: *b"DEU",
                region: 0,
                offset_minutes: 60,
                time_of_change: 750_516_300,
                next_offset_minutes: -150,
            }],
        )
        .unwrap();
        assert_eq!(crc32_mpeg2(&tot), 0);
        let (d, rest) = loop_at(&tot[8..]);
        assert_eq!(rest.len(), 4, "then the CRC");
        assert_eq!(
            d,
            [(
                0x58,
                vec![b'D', b'E', b'U', 0x02, 0x01, 0x00, 0xC0, 0x79, 0x12, 0x45, 0x00, 0x02, 0x30]
            )]
        );
        // a west offset sets the polarity bit
        tot.clear();
        write_tot(
            &mut tot,
            0,
            &[LocalTimeOffset {
                country: *b"USA",
                region: 5,
                offset_minutes: -300,
                time_of_change: 0,
                next_offset_minutes: -240,
            }],
        )
        .unwrap();
        assert_eq!(tot[15..18], [5 << 2 | 0x03, 0x05, 0x00]);
    }
}
