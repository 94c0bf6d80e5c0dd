//! The error type of the `ts` module: everything a packet, section or PSI parser/builder rejects.

/// Why a packet, section, descriptor or table was rejected (or could not be built).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TsError {
    /// The first byte is not the sync byte 0x47.
    #[error("sync byte is {0:#04x}, not 0x47")]
    BadSync(u8),
    /// transport_error_indicator is set: the packet is known to be damaged.
    #[error("transport_error_indicator is set")]
    TransportError,
    /// adaptation_field_length does not fit in the packet.
    #[error("adaptation_field_length {0} does not fit in the packet")]
    AdaptationFieldTooLong(u8),
    /// pointer_field points past the end of the payload.
    #[error("pointer_field {0} points past the payload")]
    PointerTooLong(u8),
    /// A payload-carrying packet arrived with an unexpected continuity_counter.
    #[error("continuity counter {got}, expected {expected}")]
    Discontinuity {
        /// The counter that should have come.
        expected: u8,
        /// The counter that came.
        got: u8,
    },
    /// A scrambled packet on a PID that carries sections.
    #[error("scrambled packet on a section PID")]
    Scrambled,
    /// Fewer bytes than a section header (or the long header plus CRC) needs.
    #[error("section too short: {0} bytes")]
    SectionTooShort(usize),
    /// The section (3 + section_length bytes) is larger than allowed.
    #[error("section of {len} bytes exceeds the limit of {max}")]
    SectionTooLong {
        /// Total section size in bytes.
        len: usize,
        /// The limit for this kind of section.
        max: usize,
    },
    /// The buffer ends before the section_length says the section ends.
    #[error("section truncated: needs {need} bytes, has {have}")]
    SectionTruncated {
        /// Bytes the section header announces.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// CRC_32 (MPEG-2) over the section does not check.
    #[error("CRC32 mismatch")]
    CrcMismatch,
    /// The section is not the table the caller asked for.
    #[error("table_id {got:#04x}, expected {expected:#04x}")]
    WrongTableId {
        /// The table_id wanted.
        expected: u8,
        /// The table_id found.
        got: u8,
    },
    /// The descriptor is not the kind the caller asked for.
    #[error("descriptor_tag {got:#04x}, expected {expected:#04x}")]
    WrongDescriptorTag {
        /// The descriptor_tag wanted.
        expected: u8,
        /// The descriptor_tag found.
        got: u8,
    },
    /// The table needs section_syntax_indicator = 1 (the long header) and it is 0.
    #[error("section_syntax_indicator is 0 where a long section is required")]
    NotLongSection,
    /// A structure inside a section (named) runs past its end.
    #[error("{0} truncated")]
    Truncated(&'static str),
    /// A descriptor body is longer than 255 bytes.
    #[error("descriptor body of {0} bytes exceeds 255")]
    DescriptorTooLong(usize),
    /// A 12-bit loop length (descriptor or ES loop) would exceed 4095 bytes.
    #[error("loop of {0} bytes exceeds the 12-bit length field")]
    LoopTooLong(usize),
}
