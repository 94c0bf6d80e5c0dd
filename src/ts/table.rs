//! Whole long-form tables from their sections (ISO/IEC 13818-1 §2.4.4.3: a table may span
//! section_number 0..=last_section_number).
//!
//! A PAT (or CAT, SDT, ...) in several sections is only known once every section of one
//! version is in; taking one section as the whole table drops the programs of the others
//! (fail open for a scrambler: their PIDs look unreferenced). [`TableSections`] keeps the
//! sections of the version being collected and says when the table is complete and its
//! content differs from the last complete one.

use super::section::Section;

/// Collects the sections of one table (one table_id) until a version is complete.
#[derive(Debug, Default)]
pub struct TableSections {
    /// (table_id_extension, version, last_section_number) of the sections being collected.
    current: Option<(u16, u8, u8)>,
    /// The collected sections by section_number (empty: not yet seen).
    sections: Vec<Vec<u8>>,
    /// CRC_32 per collected section, to see a repeat without comparing bytes.
    crcs: Vec<Option<u32>>,
    /// The content identity of the last complete table.
    complete: Option<u64>,
}

impl TableSections {
    /// An empty collector.
    pub fn new() -> Self {
        TableSections::default()
    }

    /// Whether a complete table has been seen.
    pub fn is_complete(&self) -> bool {
        self.complete.is_some()
    }

    /// Forget everything (e.g. after a stream discontinuity).
    pub fn reset(&mut self) {
        self.current = None;
        self.sections.iter_mut().for_each(Vec::clear);
        self.crcs.iter_mut().for_each(|c| *c = None);
        self.complete = None;
    }

    /// Add a checked long section. Returns true when, with it, every section of its version
    /// is in and the table's content differs from the last complete table: then
    /// [`TableSections::sections`] gives the new table. Short sections and sections with
    /// current_next_indicator 0 are ignored.
    pub fn push(&mut self, section: &Section<'_>) -> bool {
        let Some(h) = section.long_header() else {
            return false;
        };
        if !h.current_next || h.section_number > h.last_section_number {
            return false;
        }
        let key = (h.table_id_extension, h.version, h.last_section_number);
        if self.current != Some(key) {
            // a new version (or table): start over; the last complete table stays in force
            self.current = Some(key);
            let n = usize::from(h.last_section_number) + 1;
            self.sections
                .resize_with(n.max(self.sections.len()), Vec::new);
            self.crcs.resize(n.max(self.crcs.len()), None);
            self.sections.iter_mut().for_each(Vec::clear);
            self.crcs.iter_mut().for_each(|c| *c = None);
        }
        let i = usize::from(h.section_number);
        let crc = section.crc32();
        if self.sections[i].is_empty() || self.crcs[i] != crc {
            self.sections[i].clear();
            self.sections[i].extend_from_slice(section.bytes());
            self.crcs[i] = crc;
        }
        let n = usize::from(h.last_section_number) + 1;
        if self.sections[..n].iter().any(Vec::is_empty) {
            return false;
        }
        let id = self.identity(n);
        if self.complete == Some(id) {
            return false;
        }
        self.complete = Some(id);
        true
    }

    /// The sections of the table being collected, in section_number order (complete when
    /// [`TableSections::push`] has just returned true).
    pub fn sections(&self) -> impl Iterator<Item = &[u8]> {
        let n = self
            .current
            .map_or(0, |(_, _, last)| usize::from(last) + 1)
            .min(self.sections.len());
        self.sections[..n].iter().map(Vec::as_slice)
    }

    /// One number for the content: the version and every section's CRC folded in order.
    fn identity(&self, n: usize) -> u64 {
        let (ext, version, _) = self.current.unwrap_or_default();
        let mut h = (u64::from(ext) << 8 | u64::from(version)) ^ 0x9E37_79B9_7F4A_7C15;
        for c in &self.crcs[..n] {
            h = (h ^ u64::from(c.unwrap_or(0))).wrapping_mul(0x0100_0000_01B3);
            h = h.rotate_left(17);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::psi::Pat;
    use crate::ts::psi_write::SectionWriter;
    use crate::ts::section::{LongHeader, MAX_PSI_SECTION};

    fn pat_section(version: u8, number: u8, last: u8, programs: &[(u16, u16)]) -> Vec<u8> {
        let mut out = Vec::new();
        let h = LongHeader {
            table_id: 0,
            table_id_extension: 1,
            version,
            current_next: true,
            section_number: number,
            last_section_number: last,
        };
        let mut w = SectionWriter::long(&mut out, &h, MAX_PSI_SECTION);
        for (p, pid) in programs {
            w.put(&p.to_be_bytes());
            w.put(&(0xE000 | pid).to_be_bytes());
        }
        w.finish().unwrap();
        out
    }

    fn programs(t: &TableSections) -> Vec<u16> {
        t.sections()
            .flat_map(|b| {
                let s = Section::parse(b, b.len()).unwrap();
                let pat = Pat::parse(&s).unwrap();
                pat.entries().map(|e| e.program_number).collect::<Vec<_>>()
            })
            .collect()
    }

    fn push(t: &mut TableSections, b: &[u8]) -> bool {
        t.push(&Section::parse(b, b.len()).unwrap())
    }

    #[test]
    fn two_sections_make_one_table() {
        let s0 = pat_section(3, 0, 1, &[(1, 0x100)]);
        let s1 = pat_section(3, 1, 1, &[(2, 0x200)]);
        let mut t = TableSections::new();
        assert!(!push(&mut t, &s0), "half a table is not a table");
        assert!(!t.is_complete());
        assert!(push(&mut t, &s1));
        assert_eq!(programs(&t), vec![1, 2]);
        // repeats change nothing
        assert!(!push(&mut t, &s0));
        assert!(!push(&mut t, &s1));
        assert_eq!(programs(&t), vec![1, 2]);
    }

    #[test]
    fn a_new_version_is_complete_only_with_all_its_sections() {
        let mut t = TableSections::new();
        push(&mut t, &pat_section(3, 0, 1, &[(1, 0x100)]));
        assert!(push(&mut t, &pat_section(3, 1, 1, &[(2, 0x200)])));
        assert!(!push(&mut t, &pat_section(4, 1, 1, &[(3, 0x300)])));
        assert!(t.is_complete(), "the old table stays in force");
        assert!(push(&mut t, &pat_section(4, 0, 1, &[(1, 0x100)])));
        assert_eq!(programs(&t), vec![1, 3]);
        // fewer sections in the next version
        assert!(push(&mut t, &pat_section(5, 0, 0, &[(7, 0x700)])));
        assert_eq!(programs(&t), vec![7]);
    }

    #[test]
    fn next_sections_and_bad_numbers_are_ignored() {
        let mut t = TableSections::new();
        let mut s = pat_section(1, 0, 0, &[(1, 0x100)]);
        s[5] &= !1; // current_next_indicator 0
        let crc = crate::ts::section::crc32_mpeg2(&s[..s.len() - 4]).to_be_bytes();
        let n = s.len();
        s[n - 4..].copy_from_slice(&crc);
        assert!(!push(&mut t, &s));
        assert!(!push(&mut t, &pat_section(1, 2, 1, &[(1, 0x100)])));
        assert!(!t.is_complete());
    }
}
