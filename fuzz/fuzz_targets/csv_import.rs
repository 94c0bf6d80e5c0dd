//! A TVCAS card CSV file as `castmux card import` reads it: split into records, then every
//! row checked (columns, serials, access criteria, dates). Records that parse must survive
//! a write and a second read unchanged (what `card export` then `card import` relies on).
#![no_main]

use castmux::cas::store::check_import_csv;
use castmux::cas::store::csv::{parse, write_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = check_import_csv(&text);
    let Ok(records) = parse(&text) else {
        return;
    };
    let mut out = String::new();
    for r in &records {
        assert!(!r.fields.is_empty());
        write_record(&mut out, &r.fields);
    }
    let again = parse(&out).expect("written records read back");
    let a: Vec<&Vec<String>> = records.iter().map(|r| &r.fields).collect();
    let b: Vec<&Vec<String>> = again.iter().map(|r| &r.fields).collect();
    assert_eq!(a, b);
});
