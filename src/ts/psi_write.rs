//! Section writing: lengths, version and CRC32 in one pass; PAT/PMT/CAT builders; PMT CA rewrite.

use super::descriptor::{is_ca_for, CaDescriptor, Descriptor, Descriptors};
use super::error::TsError;
use super::psi::{PatEntry, Pmt, PmtStream, TABLE_ID_CAT, TABLE_ID_PAT, TABLE_ID_PMT};
use super::section::{crc32_mpeg2, LongHeader, MAX_PRIVATE_SECTION, MAX_PSI_SECTION};
use super::types::Pid;

/// Appends one section to a caller's buffer; `finish` fills section_length and the CRC.
///
/// If the writer is dropped without a successful `finish`, the buffer is cut back to where
/// the section began, so a failed build leaves no half section behind.
#[derive(Debug)]
pub struct SectionWriter<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    max: usize,
    long: bool,
    done: bool,
}

/// Position of a 12-bit loop length written by [`SectionWriter::open_loop`].
#[derive(Debug)]
#[must_use]
pub struct LoopMark(usize);

impl<'a> SectionWriter<'a> {
    /// Start a long section (section_syntax_indicator 1, CRC) of at most `max` total bytes.
    pub fn long(out: &'a mut Vec<u8>, h: &LongHeader, max: usize) -> Self {
        let start = out.len();
        let [e0, e1] = h.table_id_extension.to_be_bytes();
        out.extend_from_slice(&[
            h.table_id,
            0xB0,
            0,
            e0,
            e1,
            0xC0 | ((h.version & 0x1F) << 1) | u8::from(h.current_next),
            h.section_number,
            h.last_section_number,
        ]);
        SectionWriter {
            out,
            start,
            max,
            long: true,
            done: false,
        }
    }

    /// Start a long DVB SI section (EN 300 468 §5.2): as [`SectionWriter::long`], with the
    /// bit after section_syntax_indicator (reserved_future_use in SI) set.
    pub fn long_si(out: &'a mut Vec<u8>, h: &LongHeader, max: usize) -> Self {
        let w = Self::long(out, h, max);
        let s = w.start;
        w.out[s + 1] |= 0x40;
        w
    }

    /// Start a short private section (syntax 0, private_indicator 1, no CRC), e.g. ECM/EMM.
    pub fn short(out: &'a mut Vec<u8>, table_id: u8, max: usize) -> Self {
        let start = out.len();
        out.extend_from_slice(&[table_id, 0x70, 0]);
        SectionWriter {
            out,
            start,
            max,
            long: false,
            done: false,
        }
    }

    /// Append raw bytes.
    pub fn put(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Append a descriptor.
    pub fn put_descriptor(&mut self, d: &Descriptor<'_>) -> Result<(), TsError> {
        d.write(self.out)
    }

    /// Append a CA_descriptor.
    pub fn put_ca(&mut self, d: &CaDescriptor<'_>) -> Result<(), TsError> {
        d.write(self.out)
    }

    /// Reserve a 12-bit loop length (top 4 bits = `reserved_high`, e.g. 0xF).
    pub fn open_loop(&mut self, reserved_high: u8) -> LoopMark {
        let at = self.out.len();
        self.out
            .extend_from_slice(&[(reserved_high & 0x0F) << 4, 0]);
        LoopMark(at)
    }

    /// Fill the loop length of `mark` with the bytes written since it.
    pub fn close_loop(&mut self, mark: LoopMark) -> Result<(), TsError> {
        let len = self.out.len() - mark.0 - 2;
        if len > 0x0FFF {
            return Err(TsError::LoopTooLong(len));
        }
        self.out[mark.0] = (self.out[mark.0] & 0xF0) | (len >> 8) as u8;
        self.out[mark.0 + 1] = len as u8;
        Ok(())
    }

    /// Fill section_length, append the CRC (long form); returns the section size in bytes.
    pub fn finish(mut self) -> Result<usize, TsError> {
        let total = self.out.len() - self.start + if self.long { 4 } else { 0 };
        if total > self.max {
            return Err(TsError::SectionTooLong {
                len: total,
                max: self.max,
            });
        }
        let section_length = total - 3;
        let s = self.start;
        self.out[s + 1] = (self.out[s + 1] & 0xF0) | (section_length >> 8) as u8;
        self.out[s + 2] = section_length as u8;
        if self.long {
            let crc = crc32_mpeg2(&self.out[s..]);
            self.out.extend_from_slice(&crc.to_be_bytes());
        }
        self.done = true;
        Ok(total)
    }
}

impl Drop for SectionWriter<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.out.truncate(self.start);
        }
    }
}

/// The header of a one-section current table.
pub(crate) fn header(table_id: u8, table_id_extension: u16, version: u8) -> LongHeader {
    LongHeader {
        table_id,
        table_id_extension,
        version,
        current_next: true,
        section_number: 0,
        last_section_number: 0,
    }
}

/// Append a one-section PAT; returns its size.
pub fn write_pat(
    out: &mut Vec<u8>,
    transport_stream_id: u16,
    version: u8,
    entries: &[PatEntry],
) -> Result<usize, TsError> {
    let mut w = SectionWriter::long(
        out,
        &header(TABLE_ID_PAT, transport_stream_id, version),
        MAX_PSI_SECTION,
    );
    for e in entries {
        w.put(&e.program_number.to_be_bytes());
        w.put(&(0xE000 | e.pid.value()).to_be_bytes());
    }
    w.finish()
}

/// Append a one-section PMT; returns its size.
pub fn write_pmt<'s>(
    out: &mut Vec<u8>,
    program_number: u16,
    version: u8,
    pcr_pid: Pid,
    program_info: &Descriptors<'_>,
    streams: impl IntoIterator<Item = PmtStream<'s>>,
) -> Result<usize, TsError> {
    let mut w = SectionWriter::long(
        out,
        &header(TABLE_ID_PMT, program_number, version),
        MAX_PSI_SECTION,
    );
    w.put(&(0xE000 | pcr_pid.value()).to_be_bytes());
    let m = w.open_loop(0xF);
    w.put(program_info.as_bytes());
    w.close_loop(m)?;
    for s in streams {
        w.put(&[s.stream_type.0]);
        w.put(&(0xE000 | s.elementary_pid.value()).to_be_bytes());
        let m = w.open_loop(0xF);
        w.put(s.descriptors.as_bytes());
        w.close_loop(m)?;
    }
    w.finish()
}

/// Where [`rewrite_pmt`] puts the CA_descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaPlacement<'a> {
    /// In the program_info loop (the whole program shares the ECM stream).
    Program,
    /// In the ES_info loop of each listed elementary PID only.
    Components(&'a [Pid]),
}

/// Copy `from` into `w`, leaving out CA_descriptors whose CA_system_ID is in `cas`.
fn copy_without_cas(
    w: &mut SectionWriter<'_>,
    from: &Descriptors<'_>,
    cas: &[CaDescriptor<'_>],
) -> Result<(), TsError> {
    for d in from.iter() {
        if !cas.iter().any(|c| is_ca_for(&d, c.ca_system_id)) {
            w.put_descriptor(&d)?;
        }
    }
    Ok(())
}

/// Append `pmt` rewritten with `cas` placed as asked, under the caller's `version`.
///
/// Existing CA_descriptors with a CA_system_ID in `cas` are removed from every loop first;
/// others are kept. The result is one current section (section_number 0).
pub fn rewrite_pmt(
    out: &mut Vec<u8>,
    pmt: &Pmt<'_>,
    cas: &[CaDescriptor<'_>],
    placement: CaPlacement<'_>,
    version: u8,
) -> Result<usize, TsError> {
    let h = header(TABLE_ID_PMT, pmt.program_number(), version);
    let mut w = SectionWriter::long(out, &h, MAX_PSI_SECTION);
    w.put(&(0xE000 | pmt.pcr_pid.value()).to_be_bytes());
    let m = w.open_loop(0xF);
    copy_without_cas(&mut w, &pmt.descriptors, cas)?;
    if placement == CaPlacement::Program {
        for c in cas {
            w.put_ca(c)?;
        }
    }
    w.close_loop(m)?;
    for s in pmt.streams() {
        w.put(&[s.stream_type.0]);
        w.put(&(0xE000 | s.elementary_pid.value()).to_be_bytes());
        let m = w.open_loop(0xF);
        copy_without_cas(&mut w, &s.descriptors, cas)?;
        if let CaPlacement::Components(pids) = placement {
            if pids.contains(&s.elementary_pid) {
                for c in cas {
                    w.put_ca(c)?;
                }
            }
        }
        w.close_loop(m)?;
    }
    w.finish()
}

/// Append a CAT holding `cas`, merged into the descriptor loops of `input` (the sections of
/// the input CAT, if any; same CA_system_ID replaced).
pub fn write_cat(
    out: &mut Vec<u8>,
    input: &[Descriptors<'_>],
    cas: &[CaDescriptor<'_>],
    version: u8,
) -> Result<usize, TsError> {
    let mut w = SectionWriter::long(out, &header(TABLE_ID_CAT, 0xFFFF, version), MAX_PSI_SECTION);
    // the descriptor loops of every section of the input CAT, merged into one section
    for descriptors in input {
        copy_without_cas(&mut w, descriptors, cas)?;
    }
    for c in cas {
        w.put_ca(c)?;
    }
    w.finish()
}

/// Append a short private section (ECM 0x80/0x81, EMM 0x82..=0x8F) carrying `payload`.
pub fn write_private_section(
    out: &mut Vec<u8>,
    table_id: u8,
    payload: &[u8],
) -> Result<usize, TsError> {
    let mut w = SectionWriter::short(out, table_id, MAX_PRIVATE_SECTION);
    w.put(payload);
    w.finish()
}
