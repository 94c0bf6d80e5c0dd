//! The request head parser of the HTTP-TS listener (`-o http://ADDR:PORT/PATH`), which
//! reads whatever a network peer sends. It must never panic, must say "incomplete" only
//! while the bytes fit its bound, and what it returns must lie inside the bytes it got.
#![no_main]

use castmux::io::http::request::{parse_request, MAX_HEAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(None) => assert!(data.len() < MAX_HEAD, "incomplete past the bound"),
        Ok(Some((head, used))) => {
            assert!(used <= data.len() && used <= MAX_HEAD);
            assert!(head.path.starts_with('/'), "{:?}", head.path);
            let text = String::from_utf8_lossy(&data[..used]);
            assert!(text.contains(head.path) || data.windows(7).any(|w| w == b"http://"));
            // a complete head stays complete (and the same) with more bytes after it
            let mut more = data.to_vec();
            more.extend_from_slice(b"GET /x HTTP/1.1\r\n\r\n");
            let again = parse_request(&more).expect("the same head").expect("complete");
            assert_eq!(again, (head, used));
        }
        Err(e) => {
            let (code, _) = e.status();
            assert!((400..600).contains(&code));
        }
    }
});
