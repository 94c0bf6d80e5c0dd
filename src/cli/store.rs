//! `castmux store copy FROM TO`: a whole card store into a new one, e.g. the embedded SQLite
//! file into PostgreSQL when an operator grows past one box.

use castmux::cas::store::time;
use castmux::cas::store::{Store, StoreLocation};
use clap::{Args, Subcommand};

use super::init::block_on;

/// Options of `castmux store`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Copy a whole store (root key, packages, cards, events, service keys, audit log) into
    /// a new one, in one snapshot of FROM and one transaction of TO. FROM may be in use.
    Copy {
        /// The store to copy: a SQLite file or a postgres:// URL.
        from: StoreLocation,
        /// The new store: a SQLite file that does not exist yet (created readable by the
        /// owner only), or a PostgreSQL database without a castmux store in it.
        to: StoreLocation,
    },
}

pub fn run(a: StoreArgs) -> anyhow::Result<()> {
    match a.command {
        StoreCommand::Copy { from, to } => block_on(async {
            let store = Store::open(&from).await?;
            let res = store.copy_to(&to, time::now()).await;
            store.close().await;
            let summary = res?;
            let rows = summary
                .tables
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            super::out::line(format_args!("copied {from} to {to}: {rows}"))?;
            Ok(())
        })?,
    }
}
