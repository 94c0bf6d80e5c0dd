//! Spec numbers as newtypes (ISO/IEC 13818-1 §2.4.3, Table 2-34; ETSI EN 300 468 §6).

use super::descriptor::Descriptors;

/// A 13-bit packet identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pid(u16);

impl Pid {
    /// Program Association Table.
    pub const PAT: Pid = Pid(0x0000);
    /// Conditional Access Table.
    pub const CAT: Pid = Pid(0x0001);
    /// Null packets (stuffing).
    pub const NULL: Pid = Pid(0x1FFF);
    /// The largest PID value.
    pub const MAX: u16 = 0x1FFF;

    /// A PID from the low 13 bits of `v` (higher bits are dropped).
    pub const fn new(v: u16) -> Pid {
        Pid(v & Self::MAX)
    }

    /// A PID if `v` fits in 13 bits.
    pub const fn try_new(v: u16) -> Option<Pid> {
        if v <= Self::MAX {
            Some(Pid(v))
        } else {
            None
        }
    }

    /// The numeric value.
    pub const fn value(self) -> u16 {
        self.0
    }

    /// True for 0x0000..=0x001F, the PIDs reserved for PSI/SI tables.
    pub const fn is_psi_reserved(self) -> bool {
        self.0 <= 0x1F
    }
}

impl From<Pid> for u16 {
    fn from(p: Pid) -> u16 {
        p.0
    }
}

impl core::fmt::Display for Pid {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}

/// A 4-bit continuity_counter, wrapping 15 -> 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ContinuityCounter(u8);

impl ContinuityCounter {
    /// A counter from the low 4 bits of `v`.
    pub const fn new(v: u8) -> Self {
        ContinuityCounter(v & 0x0F)
    }

    /// The numeric value, 0..=15.
    pub const fn value(self) -> u8 {
        self.0
    }

    /// The counter that follows this one.
    pub const fn next(self) -> Self {
        ContinuityCounter((self.0 + 1) & 0x0F)
    }
}

/// transport_scrambling_control (ETSI EN 300 468 / TS 100 289 use of the 2 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportScramblingControl {
    /// `00`: not scrambled.
    Clear,
    /// `01`: reserved.
    Reserved,
    /// `10`: scrambled with the even key.
    Even,
    /// `11`: scrambled with the odd key.
    Odd,
}

impl TransportScramblingControl {
    /// From the two bits (higher bits ignored).
    pub const fn from_bits(b: u8) -> Self {
        match b & 3 {
            0 => Self::Clear,
            1 => Self::Reserved,
            2 => Self::Even,
            _ => Self::Odd,
        }
    }

    /// The two bits.
    pub const fn bits(self) -> u8 {
        match self {
            Self::Clear => 0,
            Self::Reserved => 1,
            Self::Even => 2,
            Self::Odd => 3,
        }
    }
}

/// What an elementary stream carries, as far as the mux cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EsKind {
    /// Video of any codec.
    Video,
    /// Audio of any codec.
    Audio,
    /// DVB subtitles (subtitling_descriptor).
    Subtitle,
    /// Teletext (teletext or VBI descriptor).
    Teletext,
    /// Sections, DSM-CC, metadata, SCTE-35 and the like.
    Data,
    /// Anything not recognised.
    Other,
}

/// stream_type from the PMT (ISO/IEC 13818-1 Table 2-34); holds reserved and private values too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamType(pub u8);

impl StreamType {
    /// ISO/IEC 11172-2 video.
    pub const MPEG1_VIDEO: StreamType = StreamType(0x01);
    /// ISO/IEC 13818-2 video.
    pub const MPEG2_VIDEO: StreamType = StreamType(0x02);
    /// ISO/IEC 11172-3 audio.
    pub const MPEG1_AUDIO: StreamType = StreamType(0x03);
    /// ISO/IEC 13818-3 audio.
    pub const MPEG2_AUDIO: StreamType = StreamType(0x04);
    /// PES packets with private data (DVB AC-3, subtitles, teletext, ...).
    pub const PRIVATE_PES: StreamType = StreamType(0x06);
    /// ADTS AAC audio.
    pub const AAC_ADTS: StreamType = StreamType(0x0F);
    /// H.264 / AVC video.
    pub const H264: StreamType = StreamType(0x1B);
    /// H.265 / HEVC video.
    pub const H265: StreamType = StreamType(0x24);

    /// The kind from the stream_type alone (`Other` for private PES and unknown values).
    pub const fn kind(self) -> EsKind {
        match self.0 {
            0x01 | 0x02 | 0x10 | 0x1B | 0x1E | 0x1F | 0x20 | 0x24 | 0x33 | 0x42 | 0xD1 | 0xEA => {
                EsKind::Video
            }
            0x03 | 0x04 | 0x0F | 0x11 | 0x1C | 0x2D | 0x2E | 0x81 | 0x82 | 0x83 | 0x84 | 0x85
            | 0x87 | 0x8A => EsKind::Audio,
            0x05 | 0x0A..=0x0D | 0x15 | 0x86 => EsKind::Data,
            _ => EsKind::Other,
        }
    }

    /// The kind from the stream_type and the ES_info descriptors (needed for private PES 0x06).
    pub fn es_kind(self, descriptors: &Descriptors<'_>) -> EsKind {
        self.es_kind_from(descriptors.iter().map(|d| (d.tag, d.data)))
    }

    /// [`Self::es_kind`] from (tag, payload) pairs, for a reader that parsed the ES_info
    /// loop with another parser (the analyzer reads PMTs with mpeg2ts-reader).
    pub fn es_kind_from<'d>(self, descriptors: impl IntoIterator<Item = (u8, &'d [u8])>) -> EsKind {
        let base = self.kind();
        if base != EsKind::Other {
            return base;
        }
        for (tag, data) in descriptors {
            match tag {
                // AC-3, E-AC-3, DTS, AAC (EN 300 468 Annex D/G/H)
                0x6A | 0x7A | 0x7B | 0x7C => return EsKind::Audio,
                0x59 => return EsKind::Subtitle,
                0x56 | 0x46 => return EsKind::Teletext,
                // extension_descriptor: AC-4 (0x15), DTS-HD (0x0E), DTS Neural (0x0F), DTS-UHD (0x21)
                0x7F => {
                    if let Some(0x0E | 0x0F | 0x15 | 0x21) = data.first() {
                        return EsKind::Audio;
                    }
                }
                // registration_descriptor: format_identifier
                0x05 => match data.get(..4) {
                    // BSSD: SMPTE 302M (AES3 PCM)
                    Some(
                        b"AC-3" | b"EAC3" | b"DTS1" | b"DTS2" | b"DTS3" | b"Opus" | b"AC-4"
                        | b"BSSD",
                    ) => return EsKind::Audio,
                    Some(b"HEVC" | b"VC-1" | b"AVSV") => return EsKind::Video,
                    _ => {}
                },
                _ => {}
            }
        }
        EsKind::Other
    }
}
