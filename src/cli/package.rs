//! `castmux package add|list`.

use castmux::cas::store::StoreLocation;

use castmux::cas::store::{time, StoreError};
use castmux::cas::{AccessCriteria, PackageBit};
use clap::{Args, Subcommand};

use super::init::{block_on, open};

/// `castmux package ...`.
#[derive(Debug, Args)]
pub struct PackageArgs {
    #[command(subcommand)]
    command: PackageCommand,
}

#[derive(Debug, Subcommand)]
enum PackageCommand {
    /// Add a package (an access-criteria bit) with fresh current and next service keys.
    Add {
        /// Package name: letters, digits, '_', '-', '.'.
        name: String,
        /// Access-criteria bit 0..=63 (TVCAS's first package is bit 0, the rightmost digit).
        /// Default: the lowest bit no package or event uses.
        #[arg(long, value_name = "N")]
        bit: Option<String>,
    },
    /// List packages: bit, name, access criteria, subscribed cards.
    List {
        /// JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// A `--bit` value.
pub(super) fn parse_bit(text: &str) -> Result<PackageBit, StoreError> {
    text.trim()
        .parse::<u32>()
        .ok()
        .and_then(|b| PackageBit::new(b).ok())
        .ok_or_else(|| {
            StoreError::Bit(format!(
                "--bit {text:?} is not a package bit; expected 0..=63"
            ))
        })
}

pub fn run(db: &StoreLocation, a: PackageArgs) -> anyhow::Result<()> {
    block_on(async {
        let store = open(db).await?;
        match a.command {
            PackageCommand::Add { name, bit } => {
                let bit = bit.as_deref().map(parse_bit).transpose()?;
                let bit = store.add_package(&name, bit, time::now()).await?;
                outln!(
                    "package {name}: bit {} (access criteria {})",
                    bit.get(),
                    AccessCriteria::single(bit)
                )?;
            }
            PackageCommand::List { json } => {
                let list = store.packages(true).await?;
                if json {
                    let v: Vec<_> = list
                        .iter()
                        .map(|p| {
                            serde_json::json!({
                                "name": p.name,
                                "bit": p.bit.get(),
                                "access_criteria": AccessCriteria::single(p.bit).to_string(),
                                "cards": p.cards,
                                "created_at": p.created_at,
                            })
                        })
                        .collect();
                    outln!("{}", serde_json::to_string_pretty(&v)?)?;
                } else {
                    outln!(
                        "{:>3}  {:<20} {:<10} {:>8}",
                        "BIT",
                        "NAME",
                        "CRITERIA",
                        "CARDS"
                    )?;
                    for p in &list {
                        outln!(
                            "{:>3}  {:<20} {:<10} {:>8}",
                            p.bit.get(),
                            p.name,
                            AccessCriteria::single(p.bit).to_string(),
                            p.cards
                        )?;
                    }
                }
            }
        }
        store.close().await;
        anyhow::Ok(())
    })?
}
