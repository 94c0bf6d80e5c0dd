//! Sections and CA descriptors read with `mpeg2ts-reader`, for the analyzer and the load
//! test's checker: both judge castmux's output with a parser independent of castmux's own
//! `ts/`, so a bug in that PSI layer cannot hide itself.

use mpeg2ts_reader::descriptor::{CoreDescriptors, DescriptorError, DescriptorIter};
use mpeg2ts_reader::packet::Packet;
use mpeg2ts_reader::psi::{
    BufferCompactSyntaxParser, BufferSectionSyntaxParser, CompactSyntaxSectionProcessor,
    SectionCommonHeader, SectionPacketConsumer, SectionSyntaxSectionProcessor, TableSyntaxHeader,
    WholeCompactSyntaxPayloadParser, WholeSectionSyntaxPayloadParser,
};

/// One whole section as it came off a PID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundSection {
    pub table_id: u8,
    /// The whole section, header and (long sections) CRC included.
    pub data: Vec<u8>,
    /// Long sections: the CRC_32 matches (ISO/IEC 13818-1 Annex A). Short sections carry
    /// none and are always true.
    pub crc_ok: bool,
}

impl FoundSection {
    /// A long section's body: after the 8-byte header, before the CRC. `None` when the
    /// section is too short to have one.
    pub fn body(&self) -> Option<&[u8]> {
        (self.data.len() >= 12).then(|| &self.data[8..self.data.len() - 4])
    }

    /// A long section's version_number.
    pub fn version(&self) -> Option<u8> {
        self.data.get(5).map(|b| (b >> 1) & 0x1F)
    }
}

/// Sections found since the caller last took them.
pub type Found = Vec<FoundSection>;

/// Collects long (section_syntax_indicator = 1, CRC-protected) sections.
pub struct LongSections;

impl WholeSectionSyntaxPayloadParser for LongSections {
    type Context = Found;
    fn section<'a>(
        &mut self,
        found: &mut Found,
        header: &SectionCommonHeader,
        _: &TableSyntaxHeader<'a>,
        data: &'a [u8],
    ) {
        let crc_ok = data.len() >= 12 && mpeg2ts_reader::mpegts_crc::sum32(data) == 0;
        found.push(FoundSection {
            table_id: header.table_id,
            data: data.to_vec(),
            crc_ok,
        });
    }
}

/// Collects short (private, no CRC) sections: ECMs, EMMs.
pub struct ShortSections;

impl WholeCompactSyntaxPayloadParser for ShortSections {
    type Context = Found;
    fn section(&mut self, found: &mut Found, header: &SectionCommonHeader, data: &[u8]) {
        found.push(FoundSection {
            table_id: header.table_id,
            data: data.to_vec(),
            crc_ok: true,
        });
    }
}

/// Reassembles the long sections of one PID.
pub struct LongConsumer(
    SectionPacketConsumer<SectionSyntaxSectionProcessor<BufferSectionSyntaxParser<LongSections>>>,
);

/// Reassembles the short sections of one PID.
pub struct ShortConsumer(
    SectionPacketConsumer<CompactSyntaxSectionProcessor<BufferCompactSyntaxParser<ShortSections>>>,
);

impl Default for LongConsumer {
    fn default() -> Self {
        LongConsumer(SectionPacketConsumer::new(
            SectionSyntaxSectionProcessor::new(BufferSectionSyntaxParser::new(LongSections)),
        ))
    }
}

impl Default for ShortConsumer {
    fn default() -> Self {
        ShortConsumer(SectionPacketConsumer::new(
            CompactSyntaxSectionProcessor::new(BufferCompactSyntaxParser::new(ShortSections)),
        ))
    }
}

impl LongConsumer {
    /// Feed one packet of the PID; whole sections are appended to `found`.
    pub fn consume(&mut self, found: &mut Found, pk: &Packet<'_>) {
        // the reader complains (a log line) about a PSI packet without payload; it has
        // nothing to add, so it is not handed over
        if pk.payload().is_some() {
            self.0.consume(found, pk);
        }
    }
}

impl ShortConsumer {
    /// Feed one packet of the PID; whole sections are appended to `found`.
    pub fn consume(&mut self, found: &mut Found, pk: &Packet<'_>) {
        if pk.payload().is_some() {
            self.0.consume(found, pk);
        }
    }
}

/// The (CA_system_ID, CA_PID) pairs of the CA_descriptors (tag 0x09) of a descriptor loop.
pub fn ca_descriptors<'a>(
    loop_: impl Iterator<Item = Result<CoreDescriptors<'a>, DescriptorError>> + 'a,
) -> impl Iterator<Item = (u16, u16)> + 'a {
    loop_.filter_map(|d| match d {
        Ok(CoreDescriptors::CA(d)) => match d.payload {
            [a, b, c, e, ..] => Some((
                u16::from_be_bytes([*a, *b]),
                u16::from_be_bytes([*c, *e]) & 0x1FFF,
            )),
            _ => None,
        },
        _ => None,
    })
}

/// The CA descriptors of a CAT body (its whole body is one descriptor loop).
pub fn cat_ca_descriptors(body: &[u8]) -> impl Iterator<Item = (u16, u16)> + '_ {
    ca_descriptors(DescriptorIter::new(body))
}
