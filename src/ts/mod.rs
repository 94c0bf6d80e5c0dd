//! MPEG transport stream: packets, sections, PSI parsing and writing, packetizing.
//!
//! Principles: parsers borrow (`&[u8; 188]`, `&[u8]`) and never panic on any input, returning
//! [`TsError`] instead; builders write into buffers the caller owns and reuses, so the packet
//! path does not allocate per packet; spec numbers are newtypes ([`Pid`], [`StreamType`],
//! [`ContinuityCounter`]). References are to ISO/IEC 13818-1 and ETSI EN 300 468.
//!
//! - [`packet`]: views over one packet (`PacketRef`, `PacketMut`), null and built packets.
//! - [`section`]: section view, CRC32/MPEG-2, per-PID reassembly (`SectionAssembler`).
//! - [`descriptor`]: descriptor loops and the CA_descriptor.
//! - [`psi`]: PAT, PMT and CAT views.
//! - [`psi_write`]: section writer, PAT/PMT/CAT builders, PMT CA rewrite, CAT merge.
//! - [`si_write`]: DVB SI builders (SDT, NIT with LCNs, TDT, TOT).
//! - [`table`]: whole tables from their sections (a PAT in several sections).
//! - [`packetizer`]: sections into packets for one PID, owning its continuity counter.

pub mod descriptor;
mod error;
pub mod packet;
pub mod packetizer;
pub mod psi;
pub mod psi_write;
pub mod section;
pub mod si_write;
pub mod table;
mod types;

pub use descriptor::{CaDescriptor, Descriptor, Descriptors};
pub use error::TsError;
pub use packet::{Packet, PacketMut, PacketRef};
pub use packetizer::Packetizer;
pub use psi::{Cat, Pat, PatEntry, Pmt, PmtStream};
pub use section::{LongHeader, Section, SectionAssembler};
pub use table::TableSections;
pub use types::{ContinuityCounter, EsKind, Pid, StreamType, TransportScramblingControl};

#[cfg(test)]
mod tests;
