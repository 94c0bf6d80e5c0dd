//! A small RFC 4180 CSV reader and writer for TVCAS card files: comma separated, fields
//! quoted with `"` when they hold a comma, quote or line break, `""` for a quote inside.
//! Records keep the line they start on so errors can name it.

use super::error::StoreError;

/// Longest record accepted, in bytes; a card row is far shorter.
pub const MAX_RECORD: usize = 64 * 1024;

/// One parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 1-based line the record starts on.
    pub line: usize,
    /// The fields.
    pub fields: Vec<String>,
}

/// Split `text` into records. Blank lines are skipped; a UTF-8 BOM is ignored.
pub fn parse(text: &str) -> Result<Vec<Record>, StoreError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    let mut line = 1usize;
    while chars.peek().is_some() {
        let start_line = line;
        let mut start_byte = None;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut was_quoted = false;
        loop {
            let Some((i, c)) = chars.next() else {
                if quoted {
                    return Err(StoreError::Csv(format!(
                        "line {start_line}: a quoted field is not closed"
                    )));
                }
                break;
            };
            let first = *start_byte.get_or_insert(i);
            if i - first > MAX_RECORD {
                return Err(StoreError::Csv(format!(
                    "line {start_line}: record longer than {MAX_RECORD} bytes"
                )));
            }
            if quoted {
                match c {
                    '"' if chars.peek().map(|p| p.1) == Some('"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => quoted = false,
                    '\n' => {
                        line += 1;
                        field.push('\n');
                    }
                    c => field.push(c),
                }
                continue;
            }
            match c {
                '"' if field.is_empty() && !was_quoted => {
                    quoted = true;
                    was_quoted = true;
                }
                '"' => {
                    return Err(StoreError::Csv(format!(
                        "line {line}: a quote inside an unquoted field; quote the field and double the quote"
                    )))
                }
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    was_quoted = false;
                }
                '\r' if chars.peek().map(|p| p.1) == Some('\n') => {}
                '\n' => {
                    line += 1;
                    break;
                }
                c if was_quoted => {
                    return Err(StoreError::Csv(format!(
                        "line {line}: {c:?} after a closing quote; expected a comma or end of line"
                    )))
                }
                c => field.push(c),
            }
        }
        fields.push(field);
        if fields.len() == 1 && fields[0].is_empty() {
            continue;
        }
        out.push(Record {
            line: start_line,
            fields,
        });
    }
    Ok(out)
}

/// Append one record to `out`, quoting where needed, ending with `\n`.
pub fn write_record<S: AsRef<str>>(out: &mut String, fields: &[S]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let f = f.as_ref();
        // a leading U+FEFF is quoted too: bare at the start of a file, the reader would
        // take it for a byte order mark and drop it
        if f.contains([',', '"', '\n', '\r'])
            || f.starts_with([' ', '\u{feff}'])
            || f.ends_with(' ')
        {
            out.push('"');
            out.push_str(&f.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(f);
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_quotes_and_newlines() {
        let rows = vec![
            vec!["serial_no", "name", "info"],
            vec!["1", "Ivan, Petrov", "say \"hi\""],
            vec!["2", "multi\nline", ""],
        ];
        let mut text = String::new();
        for r in &rows {
            write_record(&mut text, r);
        }
        let got = parse(&text).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].fields, rows[1]);
        assert_eq!(got[2].fields, rows[2]);
        assert_eq!(got[2].line, 3);
    }

    #[test]
    fn lines_counted_across_quoted_newlines_and_blank_lines() {
        let text = "a,b\r\n\"x\ny\",1\n\n3,4\n";
        let got = parse(text).unwrap();
        assert_eq!(got.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 2, 5]);
        assert_eq!(got[1].fields, ["x\ny", "1"]);
    }

    #[test]
    fn a_leading_feff_in_the_first_field_survives() {
        // found by the csv_import fuzz target: written bare, it read back as a BOM
        let mut text = String::new();
        write_record(&mut text, &["\u{feff}s", "t"]);
        assert_eq!(parse(&text).unwrap()[0].fields, ["\u{feff}s", "t"]);
    }

    #[test]
    fn malformed_is_refused() {
        assert!(parse("a,\"b\n").is_err());
        assert!(parse("a,b\"c\n").is_err());
        assert!(parse("a,\"b\"c\n").is_err());
        let long = format!("{}\n", "x".repeat(MAX_RECORD + 10));
        assert!(parse(&long).is_err());
    }
}
