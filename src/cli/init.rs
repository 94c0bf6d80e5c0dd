//! `castmux init`, and how the store commands reach the store: a small tokio runtime per
//! command and `Store::open` on the `--db` path.

use castmux::cas::store::StoreLocation;
use std::future::Future;

use castmux::cas::store::DEFAULT_SERIAL_PREFIX;
use castmux::cas::store::{time, InitOptions, Store, StoreError};
use clap::Args;

use super::args;

/// Options of `castmux init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// First card serial to allocate (TVCAS numbering). Default 2100000000.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SERIAL_PREFIX)]
    serial_prefix: u64,
    /// CA_system_ID written into the PMT/CAT CA descriptors and card.json, hex. Default
    /// 0x5510 (unallocated in ETSI TS 101 162; docs/newcamd.md says how receivers treat it).
    #[arg(long, value_name = "HEX", default_value = "0x5510", value_parser = args::hex_u16)]
    ca_system_id: u16,
    /// Rotate every package's service key this often (`30d`, `12h`, `off`; 1s to 3650d);
    /// the running mux does it. Default off: rotate with `castmux keys rotate`.
    #[arg(long, value_name = "INTERVAL", default_value = "off")]
    rotate_every: String,
}

/// Run a store command's future on a runtime made for it.
pub(super) fn block_on<F: Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = super::runtime(0)?;
    Ok(rt.block_on(f))
}

/// Open the store at `db`.
pub(super) async fn open(db: &StoreLocation) -> Result<Store, StoreError> {
    Store::open(db).await
}

/// The longest key rotation interval taken: about ten years.
const MAX_ROTATE_EVERY: i64 = 3650 * time::DAY;

/// A key rotation interval (`30d`, `12h`, `off` = 0) from the option `option`: 1s to 3650d,
/// or off. Shorter than a second would rotate faster than the store is followed (every
/// second); anything under the time an EMM cycle takes leaves cards behind, which is the
/// operator's call (tests use seconds).
pub(super) fn rotation_interval(option: &str, text: &str) -> Result<i64, StoreError> {
    let secs = time::parse_interval(text).ok_or_else(|| {
        StoreError::Rotate(format!(
            "{option} {text:?} is not an interval; expected like 30d, 12h, 90m or off"
        ))
    })?;
    if secs != 0 && !(1..=MAX_ROTATE_EVERY).contains(&secs) {
        return Err(StoreError::Rotate(format!(
            "{option} {text:?} is out of range; allowed 1s to 3650d, or off"
        )));
    }
    Ok(secs)
}

pub fn run(db: &StoreLocation, a: InitArgs) -> anyhow::Result<()> {
    let rotate_every = rotation_interval("--rotate-every", &a.rotate_every)?;
    let opts = InitOptions {
        serial_prefix: a.serial_prefix,
        ca_system_id: a.ca_system_id,
        rotate_every,
        now: time::now(),
    };
    // one runtime for the store's whole life: its pool is closed where it was opened
    let caid = block_on(async {
        let store = Store::init(db, opts).await?;
        let caid = store.ca_system_id();
        store.close().await;
        Ok::<_, StoreError>(caid)
    })??;
    super::out::line(format_args!(
        "created card store {} (CA_system_ID {:#06X}, serials from {}, key rotation {})",
        db,
        caid,
        a.serial_prefix,
        time::format_interval(rotate_every)
    ))?;
    Ok(())
}
