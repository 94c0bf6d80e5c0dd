//! What the HTTP API reads from and writes to the network without the store: the key a
//! request presents (`X-API-Key`, `Authorization: Bearer` or `Basic` base64) and TVCAS's
//! answer encoding (PHP's `json_encode` form). The header reader must take any bytes without
//! panicking; the encoder's output must be ASCII JSON that reads back as the same text.
#![no_main]

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use castmux::http::{presented, tvcas::php_json, Presented};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, value)) = data.split_first() else {
        return;
    };
    let name = match which % 3 {
        0 => HeaderName::from_static("x-api-key"),
        _ => HeaderName::from_static("authorization"),
    };
    if let Ok(v) = HeaderValue::from_bytes(value) {
        let mut h = HeaderMap::new();
        h.insert(name, v);
        match presented(&h) {
            Presented::Missing => assert!(which % 3 != 0, "an X-API-Key is always an attempt"),
            Presented::Key(_) => {}
        }
    }
    let text = String::from_utf8_lossy(value);
    let json = php_json(&text.as_ref());
    assert!(json.is_ascii());
    let back: String = serde_json::from_str(&json).expect("php_json writes JSON");
    assert_eq!(back, text);
});
