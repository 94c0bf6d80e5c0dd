//! Descriptor loops (ISO/IEC 13818-1 §2.6) and the CA_descriptor (§2.6.16, tag 0x09).

use super::error::TsError;
use super::types::Pid;

/// descriptor_tag of the CA_descriptor.
pub const CA_DESCRIPTOR_TAG: u8 = 0x09;

/// One descriptor: tag and body (without the tag/length bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor<'a> {
    /// descriptor_tag.
    pub tag: u8,
    /// The descriptor_length bytes that follow the length.
    pub data: &'a [u8],
}

impl Descriptor<'_> {
    /// Size on the wire (tag + length + body).
    pub fn wire_len(&self) -> usize {
        2 + self.data.len()
    }

    /// Append tag, length and body to `out`.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), TsError> {
        let len = u8::try_from(self.data.len())
            .map_err(|_| TsError::DescriptorTooLong(self.data.len()))?;
        out.push(self.tag);
        out.push(len);
        out.extend_from_slice(self.data);
        Ok(())
    }
}

/// A descriptor loop checked to be well formed, so iterating it cannot fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptors<'a> {
    bytes: &'a [u8],
}

impl<'a> Descriptors<'a> {
    /// Check that `bytes` is a whole number of descriptors.
    pub fn new(bytes: &'a [u8]) -> Result<Self, TsError> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let len = *rest.get(1).ok_or(TsError::Truncated("descriptor"))? as usize;
            rest = rest
                .get(2 + len..)
                .ok_or(TsError::Truncated("descriptor"))?;
        }
        Ok(Descriptors { bytes })
    }

    /// The raw loop bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// True if the loop is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Iterate the descriptors in order.
    pub fn iter(&self) -> DescriptorIter<'a> {
        DescriptorIter { rest: self.bytes }
    }

    /// Iterate the CA_descriptors that parse.
    pub fn ca_descriptors(&self) -> impl Iterator<Item = CaDescriptor<'a>> + 'a {
        self.iter().filter_map(|d| CaDescriptor::parse(&d).ok())
    }
}

impl<'a> IntoIterator for &Descriptors<'a> {
    type Item = Descriptor<'a>;
    type IntoIter = DescriptorIter<'a>;
    fn into_iter(self) -> DescriptorIter<'a> {
        self.iter()
    }
}

/// Iterator over a validated descriptor loop.
#[derive(Debug, Clone)]
pub struct DescriptorIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for DescriptorIter<'a> {
    type Item = Descriptor<'a>;
    fn next(&mut self) -> Option<Descriptor<'a>> {
        let (&tag, after) = self.rest.split_first()?;
        let (&len, after) = after.split_first()?;
        let data = after.get(..len as usize)?;
        self.rest = &after[len as usize..];
        Some(Descriptor { tag, data })
    }
}

/// CA_descriptor: CA_system_ID, CA_PID (ECM PID in a PMT, EMM PID in the CAT) and private data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaDescriptor<'a> {
    /// CA_system_ID (ETSI TS 101 162).
    pub ca_system_id: u16,
    /// CA_PID: the ECM or EMM PID.
    pub ca_pid: Pid,
    /// private_data_byte values.
    pub private_data: &'a [u8],
}

impl<'a> CaDescriptor<'a> {
    /// Parse a descriptor with tag 0x09.
    pub fn parse(d: &Descriptor<'a>) -> Result<Self, TsError> {
        if d.tag != CA_DESCRIPTOR_TAG {
            return Err(TsError::WrongDescriptorTag {
                expected: CA_DESCRIPTOR_TAG,
                got: d.tag,
            });
        }
        match d.data {
            [s0, s1, p0, p1, private_data @ ..] => Ok(CaDescriptor {
                ca_system_id: u16::from_be_bytes([*s0, *s1]),
                ca_pid: Pid::new(u16::from_be_bytes([*p0, *p1])),
                private_data,
            }),
            _ => Err(TsError::Truncated("CA_descriptor")),
        }
    }

    /// Size on the wire (2 + 4 + private data).
    pub fn wire_len(&self) -> usize {
        6 + self.private_data.len()
    }

    /// Append the descriptor (tag 0x09, reserved bits set) to `out`.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), TsError> {
        let body = 4 + self.private_data.len();
        let len = u8::try_from(body).map_err(|_| TsError::DescriptorTooLong(body))?;
        out.push(CA_DESCRIPTOR_TAG);
        out.push(len);
        out.extend_from_slice(&self.ca_system_id.to_be_bytes());
        out.extend_from_slice(&(0xE000 | self.ca_pid.value()).to_be_bytes());
        out.extend_from_slice(self.private_data);
        Ok(())
    }
}

/// True if `d` is a CA_descriptor for `ca_system_id`.
pub(crate) fn is_ca_for(d: &Descriptor<'_>, ca_system_id: u16) -> bool {
    d.tag == CA_DESCRIPTOR_TAG
        && matches!(d.data, [a, b, ..] if u16::from_be_bytes([*a, *b]) == ca_system_id)
}
