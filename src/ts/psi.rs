//! PAT, PMT and CAT views over checked sections (ISO/IEC 13818-1 §2.4.4.3, §2.4.4.6, §2.4.4.8).

use super::descriptor::Descriptors;
use super::error::TsError;
use super::section::{LongHeader, Section};
use super::types::{EsKind, Pid, StreamType};

/// table_id of the PAT.
pub const TABLE_ID_PAT: u8 = 0x00;
/// table_id of the CAT.
pub const TABLE_ID_CAT: u8 = 0x01;
/// table_id of the PMT.
pub const TABLE_ID_PMT: u8 = 0x02;

/// table_id of an ECM for the even crypto period (ETSI TS 100 289; alternates with 0x81).
pub const TABLE_ID_ECM_EVEN: u8 = 0x80;
/// table_id of an ECM for the odd crypto period.
pub const TABLE_ID_ECM_ODD: u8 = 0x81;

/// True for the table_ids CA systems use for EMMs, 0x82..=0x8F.
pub const fn is_emm_table_id(table_id: u8) -> bool {
    matches!(table_id, 0x82..=0x8F)
}

fn long_header(s: &Section<'_>, table_id: u8) -> Result<LongHeader, TsError> {
    if s.table_id() != table_id {
        return Err(TsError::WrongTableId {
            expected: table_id,
            got: s.table_id(),
        });
    }
    s.long_header().ok_or(TsError::NotLongSection)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// One PAT section: program_number -> program_map_PID (program 0 names the network PID).
#[derive(Debug, Clone, Copy)]
pub struct Pat<'a> {
    /// The long header (table_id_extension is the transport_stream_id).
    pub header: LongHeader,
    entries: &'a [u8],
}

/// One program loop entry of a PAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatEntry {
    /// program_number (0 = network_PID).
    pub program_number: u16,
    /// program_map_PID, or network_PID for program 0.
    pub pid: Pid,
}

impl<'a> Pat<'a> {
    /// Read a PAT section.
    pub fn parse(s: &Section<'a>) -> Result<Self, TsError> {
        let header = long_header(s, TABLE_ID_PAT)?;
        let entries = s.payload();
        if entries.len() & 3 != 0 {
            return Err(TsError::Truncated("PAT program loop"));
        }
        Ok(Pat { header, entries })
    }

    /// transport_stream_id.
    pub fn transport_stream_id(&self) -> u16 {
        self.header.table_id_extension
    }

    /// The program loop in order.
    pub fn entries(&self) -> impl Iterator<Item = PatEntry> + 'a {
        self.entries.chunks_exact(4).map(|c| PatEntry {
            program_number: u16::from_be_bytes([c[0], c[1]]),
            pid: Pid::new(u16::from_be_bytes([c[2], c[3]])),
        })
    }

    /// The PMT PID of `program_number` (never matches program 0).
    pub fn pmt_pid(&self, program_number: u16) -> Option<Pid> {
        if program_number == 0 {
            return None;
        }
        self.entries()
            .find(|e| e.program_number == program_number)
            .map(|e| e.pid)
    }

    /// The network PID (NIT), if program 0 is listed.
    pub fn nit_pid(&self) -> Option<Pid> {
        self.entries()
            .find(|e| e.program_number == 0)
            .map(|e| e.pid)
    }
}

/// One elementary stream of a PMT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmtStream<'a> {
    /// stream_type.
    pub stream_type: StreamType,
    /// elementary_PID.
    pub elementary_pid: Pid,
    /// ES_info descriptors.
    pub descriptors: Descriptors<'a>,
}

impl PmtStream<'_> {
    /// What the stream carries, from stream_type and ES_info.
    pub fn kind(&self) -> EsKind {
        self.stream_type.es_kind(&self.descriptors)
    }
}

/// A PMT section whose loops were checked on parse.
#[derive(Debug, Clone, Copy)]
pub struct Pmt<'a> {
    /// The long header (table_id_extension is the program_number).
    pub header: LongHeader,
    /// PCR_PID.
    pub pcr_pid: Pid,
    /// Program-level descriptors (program_info).
    pub descriptors: Descriptors<'a>,
    streams: &'a [u8],
}

/// Split an ES loop entry off `b`: the stream and the rest.
fn split_stream(b: &[u8]) -> Result<(PmtStream<'_>, &[u8]), TsError> {
    let (st, pid, len) = match b {
        [st, p0, p1, l0, l1, ..] => (
            *st,
            u16::from_be_bytes([*p0, *p1]),
            usize::from(u16::from_be_bytes([*l0, *l1]) & 0x0FFF),
        ),
        _ => return Err(TsError::Truncated("PMT ES loop")),
    };
    let info = b.get(5..5 + len).ok_or(TsError::Truncated("ES_info"))?;
    let stream = PmtStream {
        stream_type: StreamType(st),
        elementary_pid: Pid::new(pid),
        descriptors: Descriptors::new(info)?,
    };
    Ok((stream, &b[5 + len..]))
}

impl<'a> Pmt<'a> {
    /// Read a PMT section, checking the program_info and every ES_info loop.
    pub fn parse(s: &Section<'a>) -> Result<Self, TsError> {
        let header = long_header(s, TABLE_ID_PMT)?;
        let p = s.payload();
        let pcr_pid = Pid::new(be16(p, 0).ok_or(TsError::Truncated("PMT header"))?);
        let info_len = usize::from(be16(p, 2).ok_or(TsError::Truncated("PMT header"))? & 0x0FFF);
        let info = p
            .get(4..4 + info_len)
            .ok_or(TsError::Truncated("program_info"))?;
        let descriptors = Descriptors::new(info)?;
        let streams = &p[4 + info_len..];
        let mut rest = streams;
        while !rest.is_empty() {
            rest = split_stream(rest)?.1;
        }
        Ok(Pmt {
            header,
            pcr_pid,
            descriptors,
            streams,
        })
    }

    /// program_number.
    pub fn program_number(&self) -> u16 {
        self.header.table_id_extension
    }

    /// The elementary streams in order.
    pub fn streams(&self) -> PmtStreams<'a> {
        PmtStreams { rest: self.streams }
    }
}

/// Iterator over the (already checked) ES loop of a PMT.
#[derive(Debug, Clone)]
pub struct PmtStreams<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for PmtStreams<'a> {
    type Item = PmtStream<'a>;
    fn next(&mut self) -> Option<PmtStream<'a>> {
        let (s, rest) = split_stream(self.rest).ok()?;
        self.rest = rest;
        Some(s)
    }
}

/// A CAT section: a descriptor loop (CA_descriptors name the EMM PIDs).
#[derive(Debug, Clone, Copy)]
pub struct Cat<'a> {
    /// The long header.
    pub header: LongHeader,
    /// The descriptors.
    pub descriptors: Descriptors<'a>,
}

impl<'a> Cat<'a> {
    /// Read a CAT section.
    pub fn parse(s: &Section<'a>) -> Result<Self, TsError> {
        let header = long_header(s, TABLE_ID_CAT)?;
        Ok(Cat {
            header,
            descriptors: Descriptors::new(s.payload())?,
        })
    }
}
