//! Input and output URLs as the command line and the head-end file give them
//! (`udp://[SOURCE@]GROUP:PORT?iface=..`, `srt://HOST:PORT?mode=..&passphrase=..`, paths,
//! `-`). Whatever is shown of a URL (its display text, its Debug form, an error about it)
//! must never carry a passphrase written in it.
#![no_main]

use castmux::io::{InputUrl, OutputUrl};
use libfuzzer_sys::fuzz_target;

/// The `passphrase=VALUE` options of `s` as the parser splits them (after the first `?`,
/// at `&`); an empty value, or one starting with `*`, could be read into the mask (`passphrase=***`) and
/// the text after it, so it is left out.
fn secrets(s: &str) -> Vec<String> {
    let query = s.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter(|kv| kv.len() > 11 && kv.starts_with("passphrase=") && !kv[11..].starts_with('*'))
        .map(str::to_owned)
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
    // elsewhere in the URL (an address, another option's value) the text may be shown as
    // written, so the check takes URLs whose only `passphrase=` are real options
    let options = s.split_once('?').map_or(0, |(_, q)| {
        q.split('&')
            .filter(|kv| kv.starts_with("passphrase="))
            .count()
    });
    if s.matches("passphrase=").count() != options {
        return;
    }
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
