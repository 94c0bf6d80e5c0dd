//! `castmux keys rotate|status|schedule`: service keys by version and age, never the keys.

use castmux::cas::store::StoreLocation;

use castmux::cas::store::time;
use clap::{Args, Subcommand};

use super::init::{block_on, open};

/// `castmux keys ...`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make each next service key the current one and create a new next key (audited).
    /// Cards learn the new next key from their EMMs.
    Rotate {
        /// Only this package. Default: every package and event bit.
        #[arg(long, value_name = "NAME")]
        package: Option<String>,
    },
    /// Per bit: packages/events, current and next key version, and their ages.
    Status,
    /// Set how often the running mux rotates service keys (`30d`, `12h`, `off`; 1s to 3650d).
    Schedule {
        /// The interval, or `off` for rotation by hand only.
        every: String,
    },
}

fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        s if s >= time::DAY => format!("{}d{}h", s / time::DAY, s % time::DAY / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}m{}s", s / 60, s % 60),
    }
}

pub fn run(db: &StoreLocation, a: KeysArgs) -> anyhow::Result<()> {
    block_on(async {
        let store = open(db).await?;
        let now = time::now();
        match a.command {
            KeysCommand::Rotate { package } => {
                let rotated = store.rotate_keys(package.as_deref(), now).await?;
                for (bit, v) in &rotated {
                    outln!("bit {}: current v{v}, next v{}", bit.get(), v + 1)?;
                }
                outln!("rotated {} key(s)", rotated.len())?;
            }
            KeysCommand::Status => {
                let every = store.rotate_every().await?;
                outln!("rotation: {}", time::format_interval(every))?;
                outln!(
                    "{:>3}  {:<24} {:>8} {:>10} {:>8} {:>10}",
                    "BIT",
                    "PACKAGES/EVENTS",
                    "CURRENT",
                    "AGE",
                    "NEXT",
                    "AGE"
                )?;
                for k in store.key_status().await? {
                    outln!(
                        "{:>3}  {:<24} {:>8} {:>10} {:>8} {:>10}",
                        k.bit.get(),
                        k.names.join(","),
                        format!("v{}", k.current_version),
                        age(now - k.current_since),
                        format!("v{}", k.next_version),
                        age(now - k.next_created)
                    )?;
                }
            }
            KeysCommand::Schedule { every } => {
                let secs = super::init::rotation_interval("keys schedule", &every)?;
                store.set_rotate_every(secs, now).await?;
                outln!("key rotation: {}", time::format_interval(secs))?;
            }
        }
        store.close().await;
        anyhow::Ok(())
    })?
}
