//! `castmux backup FILE`: a consistent copy of the card store while it is in use.

use castmux::cas::store::StoreLocation;
use std::path::PathBuf;

use castmux::cas::store::time;
use clap::Args;

use super::init::{block_on, open};

/// Options of `castmux backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The copy to write: a new file (an existing path is never overwritten), created
    /// readable by the owner only, because it holds the root key. Open it later with
    /// `--db FILE`.
    file: PathBuf,
}

pub fn run(db: &StoreLocation, a: BackupArgs) -> anyhow::Result<()> {
    block_on(async {
        let store = open(db).await?;
        let res = store.backup(&a.file, time::now()).await;
        store.close().await;
        let bytes = res?;
        super::out::line(format_args!(
            "backed up {} to {} ({bytes} bytes); keep it as secret as the store",
            db,
            a.file.display()
        ))?;
        Ok(())
    })?
}
