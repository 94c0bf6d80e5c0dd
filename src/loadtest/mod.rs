//! `castmux loadtest`: load a peer the way production does, measure every answer, and say
//! pass or fail against criteria an operator can hand to a CAS vendor (issue 13).
//!
//! - [`ecmg`]: SimulCrypt ECMG load, TSDuck `tstestecmg`'s knobs (channels × streams per
//!   channel × crypto period against any ECMG), response times, late answers against the
//!   announced max_comp_time, errors by error_status;
//! - [`headend`]: a real head-end process over loopback UDP, fed by a generator of synthetic
//!   channels ([`stream`]) and read back by a checker ([`check`]) that parses the output
//!   with an independent TS parser (`mpeg2ts-reader`) and descrambles it with a software
//!   card: no clear payload, every packet under the key its ECM carried, loss, latency, ECM
//!   intervals, key-switch lead;
//! - [`flood`]: the head-end test's EMMG flood (castmux's EMMG client sending far above
//!   its allocation to the `[emmg]` port) and the port's counters read from `/metrics`;
//! - [`report`]: what every load test reports with: the progress bar, the interval lines,
//!   the summary table, the JSON file, the plot (named time series, one chart per metric)
//!   and the verdict against pass criteria.
//!
//! The library does the work; `castmux loadtest ...` (src/cli/loadtest.rs) only parses,
//! calls and prints.

pub mod check;
pub mod ecmg;
pub mod flood;
pub mod headend;
pub mod report;
pub mod stream;
