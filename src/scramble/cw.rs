//! Control words: the key type, OS-random generation, parsing, and the CW log file.
//!
//! The CW log is one control word per line, one line per crypto period in order,
//! as hex (16 digits for CSA2, 32 for the AES modes): the format TSDuck's
//! descrambler reads with `--cw-file`. Lines that are empty or start with `#`
//! are ignored when reading, and spaces or tabs between the digits are too: TSDuck's
//! scrambler writes its `--output-cw-file` as hex bytes separated by spaces
//! (`01 23 45 67 89 ab cd ef`).

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use csa::Algorithm;

use super::error::ScrambleError;
use crate::io::private_file::open_key_log;

/// The longest key of any algorithm (AES modes).
pub const MAX_CW_LEN: usize = 16;

/// One control word of 8 (CSA2) or 16 (CISSA, IDSA) bytes. Its Debug output is
/// redacted and it is wiped when dropped; only the CW log prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Cw {
    bytes: [u8; MAX_CW_LEN],
    len: usize,
}

impl fmt::Debug for Cw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cw(<{} bytes, redacted>)", self.len)
    }
}

impl Drop for Cw {
    fn drop(&mut self) {
        self.bytes.fill(0);
    }
}

impl Cw {
    /// A CW from raw bytes (8 or 16).
    pub fn from_slice(bytes: &[u8]) -> Result<Cw, ScrambleError> {
        if bytes.len() != 8 && bytes.len() != 16 {
            return Err(ScrambleError::BadControlWord(format!(
                "{} bytes; a CW is 8 (csa2) or 16 (cissa, idsa)",
                bytes.len()
            )));
        }
        let mut cw = Cw {
            bytes: [0; MAX_CW_LEN],
            len: bytes.len(),
        };
        cw.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(cw)
    }

    /// A CW from hex digits (spaces, `0x` prefix and `-`/`:` separators are not accepted:
    /// `:` separates the even and odd CW on the command line).
    pub fn from_hex(text: &str) -> Result<Cw, ScrambleError> {
        let t = text.trim();
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        if t.len() != 16 && t.len() != 32 {
            return Err(ScrambleError::BadControlWord(format!(
                "{} hex digits; a CW is 16 (csa2) or 32 (cissa, idsa)",
                t.len()
            )));
        }
        let mut out = [0u8; MAX_CW_LEN];
        for (i, pair) in t.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]);
            let lo = hex_digit(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => out[i] = (h << 4) | l,
                _ => {
                    return Err(ScrambleError::BadControlWord(
                        "not a hex digit in the CW".to_owned(),
                    ))
                }
            }
        }
        let cw = Cw::from_slice(&out[..t.len() / 2]);
        out.fill(0);
        cw
    }

    /// Lower-case hex of the key (for the CW log only).
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(self.len * 2);
        for b in self.as_bytes() {
            s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            s.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
        }
        s
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Key length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (a CW has 8 or 16 bytes); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A fresh CW for `algorithm` from the OS CSPRNG; CSA2 CWs get the checksum
    /// bytes (byte 3 = b0+b1+b2, byte 7 = b4+b5+b6) when `checksum` is set.
    pub fn random(algorithm: Algorithm, checksum: bool) -> Result<Cw, ScrambleError> {
        let mut cw = Cw {
            bytes: [0; MAX_CW_LEN],
            len: algorithm.key_len(),
        };
        getrandom::getrandom(&mut cw.bytes[..cw.len])
            .map_err(|e| ScrambleError::Random(e.to_string()))?;
        if algorithm == Algorithm::Csa2 && checksum {
            cw.apply_checksum();
        }
        Ok(cw)
    }

    /// Set the CSA2 checksum bytes 3 and 7 (no-op on a 16-byte key).
    pub fn apply_checksum(&mut self) {
        if self.len == 8 {
            let b = &mut self.bytes;
            b[3] = b[0].wrapping_add(b[1]).wrapping_add(b[2]);
            b[7] = b[4].wrapping_add(b[5]).wrapping_add(b[6]);
        }
    }

    /// Check the length against `algorithm`.
    pub fn check_for(&self, algorithm: Algorithm) -> Result<(), ScrambleError> {
        if self.len == algorithm.key_len() {
            Ok(())
        } else {
            Err(ScrambleError::BadControlWord(format!(
                "{} takes {}-byte CWs ({} hex digits); got {} bytes",
                algorithm.name(),
                algorithm.key_len(),
                algorithm.key_len() * 2,
                self.len
            )))
        }
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Writes one CW per line, flushed after each line so a live descrambler can follow it.
#[derive(Debug)]
pub struct CwLogWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl CwLogWriter {
    /// Start the log at `path`: a new file of mode 0600 (it holds keys) replacing any
    /// regular file there, or an existing FIFO / character device written as it is (see
    /// [`crate::io::private_file::open_key_log`]).
    pub fn create(path: &Path) -> Result<Self, ScrambleError> {
        let file = open_key_log(path).map_err(|e| ScrambleError::CwLog {
            path: path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        Ok(CwLogWriter {
            path: path.to_owned(),
            out: BufWriter::new(file),
        })
    }

    /// Append the CW of the next crypto period.
    pub fn append(&mut self, cw: &Cw) -> Result<(), ScrambleError> {
        let mut line = cw.to_hex();
        line.push('\n');
        let res = self
            .out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.flush());
        // wipe the text copy of the key
        line.into_bytes().fill(0);
        res.map_err(|source| ScrambleError::CwLog {
            path: self.path.display().to_string(),
            source,
        })
    }
}

/// Read a CW log: line N is the CW of crypto period N.
pub fn read_cw_log(path: &Path) -> Result<Vec<Cw>, ScrambleError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| ScrambleError::CwLog {
        path: name.clone(),
        source,
    })?;
    let mut cws = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| ScrambleError::CwLog {
            path: name.clone(),
            source,
        })?;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let digits: String = t.chars().filter(|c| *c != ' ' && *c != '\t').collect();
        let cw = Cw::from_hex(&digits).map_err(|e| ScrambleError::CwLogLine {
            path: name.clone(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        // wipe the text copy of the key
        digits.into_bytes().fill(0);
        cws.push(cw);
    }
    if cws.is_empty() {
        return Err(ScrambleError::CwLogLine {
            path: name,
            line: 0,
            reason: "no control word in the file".to_owned(),
        });
    }
    Ok(cws)
}

/// Parse `EVEN[:ODD]` from the command line into one or two CWs.
pub fn parse_cw_pair(text: &str) -> Result<(Cw, Option<Cw>), ScrambleError> {
    match text.split_once(':') {
        Some((e, o)) => Ok((Cw::from_hex(e)?, Some(Cw::from_hex(o)?))),
        None => Ok((Cw::from_hex(text)?, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_checksum() {
        let cw = Cw::from_hex("0102030405060708").unwrap();
        assert_eq!(cw.to_hex(), "0102030405060708");
        let mut c = cw.clone();
        c.apply_checksum();
        assert_eq!(c.to_hex(), "0102030605060712");
        assert!(Cw::from_hex("01020304").is_err());
        assert!(Cw::from_hex("zz02030405060708").is_err());
        assert_eq!(Cw::from_hex(&"ab".repeat(16)).unwrap().len(), 16);
        assert!(!format!("{cw:?}").contains("0102"));
    }

    #[test]
    fn random_has_checksum() {
        let cw = Cw::random(Algorithm::Csa2, true).unwrap();
        let b = cw.as_bytes();
        assert_eq!(b[3], b[0].wrapping_add(b[1]).wrapping_add(b[2]));
        assert_eq!(b[7], b[4].wrapping_add(b[5]).wrapping_add(b[6]));
        assert_eq!(Cw::random(Algorithm::Cissa, true).unwrap().len(), 16);
    }

    #[test]
    fn cw_log_reads_tsduck_spaced_hex_and_plain_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cw.txt");
        std::fs::write(
            &path,
            "# comment\n01 23 45 69 89 AB CD 42\n\n0123456789abcdef\n\t00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff \r\n",
        )
        .unwrap();
        let cws = read_cw_log(&path).unwrap();
        let hex: Vec<String> = cws.iter().map(Cw::to_hex).collect();
        assert_eq!(
            hex,
            [
                "0123456989abcd42",
                "0123456789abcdef",
                "00112233445566778899aabbccddeeff"
            ]
        );
        // a digit short is still refused, and the line is named
        std::fs::write(&path, "01 23 45 67 89 ab cd e\n").unwrap();
        let err = read_cw_log(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn pair() {
        let (e, o) = parse_cw_pair("0000000000000000:1111111111111111").unwrap();
        assert_eq!(e.to_hex(), "0000000000000000");
        assert_eq!(o.unwrap().to_hex(), "1111111111111111");
    }
}
