//! Input and output URLs as the command line and the head-end file give them
//! (`udp://[SOURCE@]GROUP:PORT?iface=..`, `srt://HOST:PORT?mode=..&passphrase=..`, paths,
//! `-`). Whatever is shown of a URL (its display text, its Debug form, an error about it)
//! must never carry a passphrase written in it.
#![no_main]

use castmux::io::{InputUrl, OutputUrl};
use libfuzzer_sys::fuzz_target;

/// The `passphrase=VALUE` options written in `s`, i.e. right after `?` or `&` (the shown
/// text may keep `passphrase=***`).
fn secrets(s: &str) -> Vec<String> {
    s.match_indices("passphrase=")
        .filter(|(i, _)| matches!(s[..*i].chars().next_back(), Some('?' | '&')))
        .map(|(i, k)| {
            let v = &s[i + k.len()..];
            let v = v.split('&').next().unwrap_or_default();
            format!("passphrase={v}")
        })
        .filter(|p| !p["passphrase=".len()..].chars().all(|c| c == '*'))
        .collect()
}

fn not_shown(secrets: &[String], shown: &str) {
    for p in secrets {
        assert!(!shown.contains(p.as_str()), "{p:?} shown in {shown:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let secrets = secrets(s);
    match InputUrl::parse(s) {
        // a path is shown as given: it is not a URL with options
        Ok(InputUrl::File(_) | InputUrl::Stdin) => {}
        Ok(u) => {
            not_shown(&secrets, &u.display());
            not_shown(&secrets, &format!("{u:?}"));
        }
        Err(e) => not_shown(&secrets, &e.to_string()),
    }
    match OutputUrl::parse(s) {
        Ok(OutputUrl::File(_) | OutputUrl::Stdout) => {}
        Ok(u) => {
            not_shown(&secrets, &u.display());
            not_shown(&secrets, &format!("{u:?}"));
        }
        Err(e) => not_shown(&secrets, &e.to_string()),
    }
});
