//! `castmux event add|list`: pay-per-view events (a bit valid only in a time window).

use castmux::cas::store::StoreLocation;

use castmux::cas::store::{fields, time, StoreError};
use clap::{Args, Subcommand};

use super::init::{block_on, open};
use super::package::parse_bit;

/// `castmux event ...`.
#[derive(Debug, Args)]
pub struct EventArgs {
    #[command(subcommand)]
    command: EventCommand,
}

#[derive(Debug, Subcommand)]
enum EventCommand {
    /// Add an event; grant it with `castmux card grant-event SERIAL EVENT`.
    Add {
        /// Event name: letters, digits, '_', '-', '.'.
        name: String,
        /// Start: Unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]Z (UTC).
        #[arg(long, value_name = "T")]
        start: String,
        /// End (exclusive), same forms.
        #[arg(long, value_name = "T")]
        end: String,
        /// The bit the event's channels carry in their access criteria. Default: the
        /// lowest bit no package or event uses; a package's bit may be shared.
        #[arg(long, value_name = "N")]
        bit: Option<String>,
    },
    /// List events.
    List,
}

pub fn run(db: &StoreLocation, a: EventArgs) -> anyhow::Result<()> {
    block_on(async {
        let store = open(db).await?;
        match a.command {
            EventCommand::Add {
                name,
                start,
                end,
                bit,
            } => {
                let start = fields::parse_start(&start)?;
                let end = time::parse_time(&end).ok_or_else(|| {
                    StoreError::Finish(format!(
                        "--end {end:?} is not a time; expected Unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]Z"
                    ))
                })?;
                let bit = bit.as_deref().map(parse_bit).transpose()?;
                let bit = store.add_event(&name, start, end, bit, time::now()).await?;
                outln!(
                    "event {name}: bit {} from {} to {}",
                    bit.get(),
                    time::format_time(start),
                    time::format_time(end)
                )?;
            }
            EventCommand::List => {
                outln!(
                    "{:>4}  {:<20} {:>3}  {:<20}  {:<20}",
                    "ID",
                    "NAME",
                    "BIT",
                    "START",
                    "END"
                )?;
                for e in store.events().await? {
                    outln!(
                        "{:>4}  {:<20} {:>3}  {:<20}  {:<20}",
                        e.id,
                        e.name,
                        e.bit.get(),
                        time::format_time(e.start),
                        time::format_time(e.end)
                    )?;
                }
            }
        }
        store.close().await;
        anyhow::Ok(())
    })?
}
