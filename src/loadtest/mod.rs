//! `castmux loadtest`: crypto periods under load, every packet checked.
//!
//! `headend` runs a real head-end process over loopback UDP, fed by a generator of synthetic
//! channels ([`stream`]) and read back by a checker ([`check`]) that parses the output with
//! an independent TS parser and descrambles it with a software card.

pub mod check;
pub mod headend;
pub mod stream;
