//! Card field values as text arrives from the CLI, a CSV row or (later) the HTTP API,
//! checked into store values with the TVCAS error codes.

use super::error::StoreError;
use super::time::parse_time;
use crate::cas::types::{AccessCriteria, CardSerial};

/// Longest name or info accepted, in characters (TVCAS keeps them in 255-char columns).
pub const MAX_TEXT: usize = 255;

/// A serial: decimal digits; TVCAS's displayed form with dashes (`210-000-000-0`) too.
pub fn parse_serial(text: &str) -> Result<CardSerial, StoreError> {
    let digits: String = text.trim().chars().filter(|&c| c != '-').collect();
    let s: CardSerial = digits
        .parse()
        .map_err(|_| StoreError::Serial(text.to_owned()))?;
    // stored as BIGINT
    if s.0 > i64::MAX as u64 {
        return Err(StoreError::Serial(text.to_owned()));
    }
    Ok(s)
}

/// Access criteria in TVCAS form (`00000101`) or `0x` + hex.
pub fn parse_access(text: &str) -> Result<AccessCriteria, StoreError> {
    text.parse::<AccessCriteria>()
        .map_err(|_| StoreError::AccessCriteria(text.to_owned()))
}

/// A start time.
pub fn parse_start(text: &str) -> Result<i64, StoreError> {
    parse_time(text).ok_or_else(|| StoreError::Start(text.to_owned()))
}

/// A finish time.
pub fn parse_finish(text: &str) -> Result<i64, StoreError> {
    parse_time(text).ok_or_else(|| {
        StoreError::Finish(format!(
            "{text:?} is not a finish time; expected Unix seconds (10 digits), YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]Z (UTC)"
        ))
    })
}

/// The pair flag, `0` or `1`.
pub fn parse_pair(text: &str) -> Result<u8, StoreError> {
    match text.trim() {
        "0" => Ok(0),
        "1" => Ok(1),
        _ => Err(StoreError::Pair(text.to_owned())),
    }
}

/// Refuse a finish that is not after the start.
pub fn check_window(start: i64, finish: i64) -> Result<(), StoreError> {
    if finish <= start {
        return Err(StoreError::Finish(format!(
            "finish {finish} is not after start {start}; give a later --finish or --days N"
        )));
    }
    Ok(())
}

/// Name or info text: at most [`MAX_TEXT`] characters, no control characters but tab.
pub fn check_text(what: &str, text: &str) -> Result<(), StoreError> {
    if text.chars().count() > MAX_TEXT {
        return Err(StoreError::Field(format!(
            "{what} is longer than {MAX_TEXT} characters"
        )));
    }
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(StoreError::Field(format!(
            "{what} holds a control character (line break?); give plain text"
        )));
    }
    Ok(())
}

/// A package or event name: 1..=64 of letters, digits, `_`, `-`, `.`.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Name(name.to_owned()))
    }
}

/// `a,b,c` into names (empty items dropped).
pub fn split_names(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tvcas_values() {
        assert_eq!(
            parse_serial("210-000-000-5").unwrap(),
            CardSerial(2100000005)
        );
        assert_eq!(parse_serial("2100000000").unwrap(), CardSerial(2100000000));
        assert_eq!(parse_serial("x").unwrap_err().code(), "SERIAL_ERROR");
        assert_eq!(
            parse_serial("18446744073709551615").unwrap_err().code(),
            "SERIAL_ERROR"
        );
        assert_eq!(parse_access("01010101").unwrap().0, 0x55);
        assert_eq!(
            parse_access("0101010x").unwrap_err().code(),
            "ACCESS_CRITERIA_ERROR"
        );
        assert_eq!(parse_start("1586693700").unwrap(), 1586693700);
        assert_eq!(parse_start("soon").unwrap_err().code(), "START_ERROR");
        assert_eq!(parse_finish("later").unwrap_err().code(), "FINISH_ERROR");
        assert_eq!(parse_pair("2").unwrap_err().code(), "PAIR_ERROR");
        assert_eq!(check_window(10, 5).unwrap_err().code(), "FINISH_ERROR");
        assert!(check_name("sport-hd").is_ok());
        assert!(check_name("a,b").is_err());
        assert!(check_text("name", &"x".repeat(256)).is_err());
        assert!(check_text("name", "Зелёная 38-5").is_ok());
        assert_eq!(split_names("a, b,,c"), ["a", "b", "c"]);
    }
}
