//! The TOML files an operator writes: the head-end file of `castmux headend` (read into
//! its typed shape; each channel's words are what the command line then parses) and the
//! newcamd users file of `softcard serve --users`.
#![no_main]

use castmux::headend::{ArgsValue, HeadendFile};
use castmux::softcard::newcamd::Users;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if which & 1 == 0 {
        if let Ok(file) = HeadendFile::parse(&text) {
            if let Some(e) = &file.emmg {
                let _ = e.listen.parse::<std::net::SocketAddr>();
            }
            for c in &file.channels {
                let Some(args) = &c.args else { continue };
                let words = args.words();
                if let ArgsValue::Line(_) = args {
                    // split at whitespace: never an empty or blank word from a line
                    assert!(words
                        .iter()
                        .all(|w| !w.is_empty() && !w.contains(char::is_whitespace)));
                }
            }
        }
    } else {
        let mut users = Users::default();
        if users.add_toml(&text).is_ok() {
            let _ = users.len();
        }
    }
});
