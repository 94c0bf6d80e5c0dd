//! `castmux card ...`: provisioning cards (add, list, show, set, enable/disable/remove,
//! CSV import/export, card.json export, event grants).

use castmux::cas::store::StoreLocation;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use castmux::cas::store::{
    fields, time, AccessSpec, CardChanges, CardFilter, CardRecord, FinishSpec, Store, StoreError,
};
use castmux::io::private_file::{Existing, PrivateFile};
use clap::{Args, Subcommand};

use super::init::{block_on, open};

/// `castmux card ...`.
#[derive(Debug, Args)]
pub struct CardArgs {
    #[command(subcommand)]
    command: CardCommand,
}

/// The card fields `add` and `set` take. Times: Unix seconds, YYYY-MM-DD or
/// YYYY-MM-DDTHH:MM[:SS]Z (UTC).
#[derive(Debug, Args)]
struct FieldArgs {
    /// Subscriber name (at most 255 characters).
    #[arg(long)]
    name: Option<String>,
    /// Free text: address, contract (at most 255 characters).
    #[arg(long)]
    info: Option<String>,
    /// Packages by name, comma separated. Default for a new card: none.
    #[arg(long, value_name = "A,B", conflicts_with = "access_criteria")]
    packages: Option<String>,
    /// Packages as TVCAS access criteria: 0/1 digits, rightmost = bit 0 (00000101), or 0x+hex.
    #[arg(long, value_name = "BITS")]
    access_criteria: Option<String>,
    /// Valid from. Default for a new card: now.
    #[arg(long, value_name = "T")]
    start: Option<String>,
    /// Valid until (exclusive). Default for a new card: start + 30 days.
    #[arg(long, value_name = "T", conflicts_with = "days")]
    finish: Option<String>,
    /// Valid for N days after the start (instead of --finish).
    #[arg(long, value_name = "N")]
    days: Option<String>,
    /// TVCAS pair flag, 0 or 1. Default for a new card: 0.
    #[arg(long, value_name = "0|1")]
    pair: Option<String>,
}

impl FieldArgs {
    fn changes(&self) -> Result<CardChanges, StoreError> {
        let access = match (&self.packages, &self.access_criteria) {
            (Some(p), _) => Some(AccessSpec::Packages(fields::split_names(p))),
            (None, Some(a)) => Some(AccessSpec::Criteria(fields::parse_access(a)?)),
            (None, None) => None,
        };
        let finish = match (&self.finish, &self.days) {
            (Some(f), _) => Some(FinishSpec::At(fields::parse_finish(f)?)),
            (None, Some(d)) => Some(FinishSpec::Days(d.trim().parse().map_err(|_| {
                StoreError::Finish(format!(
                    "--days {d:?} is not a number of days; expected a whole number like 30"
                ))
            })?)),
            (None, None) => None,
        };
        Ok(CardChanges {
            name: self.name.clone(),
            info: self.info.clone(),
            access,
            start: self.start.as_deref().map(fields::parse_start).transpose()?,
            finish,
            pair: self.pair.as_deref().map(fields::parse_pair).transpose()?,
        })
    }
}

#[derive(Debug, Subcommand)]
enum CardCommand {
    /// Add cards; serials come from the store's prefix (next free) unless --serial is given.
    Add {
        /// How many cards, all with the same fields. Default 1.
        #[arg(long, value_name = "N", default_value = "1")]
        count: String,
        /// First serial to use (all of serial..serial+count-1 must be free).
        #[arg(long, value_name = "S")]
        serial: Option<String>,
        #[command(flatten)]
        fields: FieldArgs,
    },
    /// List cards.
    List {
        /// JSON array (TVCAS field names, plus state, packages and events).
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// TVCAS CSV: serial_no,name,info,access_criteria,pair,start,finish.
        #[arg(long)]
        csv: bool,
        /// Only cards whose serial, name or info contains this text; or `state=disabled`,
        /// `state=enabled`, `package=NAME`.
        #[arg(long, value_name = "TEXT")]
        filter: Option<String>,
    },
    /// Show one card.
    Show {
        /// The card's serial.
        serial: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change fields of a card (only those given).
    Set {
        /// The card's serial.
        serial: String,
        #[command(flatten)]
        fields: FieldArgs,
    },
    /// Disable a card: it keeps its record but gets no CWs.
    Disable {
        /// The card's serial.
        serial: String,
    },
    /// Enable a disabled card.
    Enable {
        /// The card's serial.
        serial: String,
    },
    /// Remove a card.
    Remove {
        /// The card's serial.
        serial: String,
    },
    /// Import TVCAS CSV (serial_no,name,info,access_criteria,pair,start,finish); existing
    /// serials are overwritten. All or nothing.
    Import {
        /// The CSV file.
        file: PathBuf,
    },
    /// Export all cards as TVCAS CSV to FILE, or to stdout.
    Export {
        /// Output file. Default: stdout.
        file: Option<PathBuf>,
    },
    /// Write the software card's personalization (card.json: its unique key, entitlements and
    /// current service keys). Audited; the file is created readable by the owner only.
    ExportKey {
        /// The card's serial.
        serial: String,
        /// Output file.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Grant a pay-per-view event to a card.
    GrantEvent {
        /// The card's serial.
        serial: String,
        /// The event's name.
        event: String,
    },
}

/// Largest CSV file `card import` reads.
const MAX_IMPORT_BYTES: u64 = 1 << 30;

pub fn run(db: &StoreLocation, a: CardArgs) -> anyhow::Result<()> {
    block_on(async {
        let store = open(db).await?;
        let res = dispatch(&store, a.command).await;
        store.close().await;
        res
    })?
}

async fn dispatch(store: &Store, cmd: CardCommand) -> anyhow::Result<()> {
    let now = time::now();
    match cmd {
        CardCommand::Add {
            count,
            serial,
            fields,
        } => {
            let count: u64 = count.trim().parse().map_err(|_| {
                StoreError::Count(format!("--count {count:?} is not a whole number"))
            })?;
            let serial = serial.as_deref().map(fields::parse_serial).transpose()?;
            let changes = fields.changes()?;
            let t0 = Instant::now();
            let runs = store.add_cards(count, serial, &changes, now).await?;
            let took = t0.elapsed();
            if count == 1 {
                outln!("added card {}", runs[0].0)?;
            } else {
                let spans: Vec<String> = runs
                    .iter()
                    .map(|(a, b)| {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("{a}..{b}")
                        }
                    })
                    .collect();
                outln!(
                    "added {count} cards: {} in {:.2} s",
                    spans.join(", "),
                    took.as_secs_f64()
                )?;
            }
        }
        CardCommand::List { json, csv, filter } => {
            let filter = match &filter {
                Some(f) => CardFilter::parse(f)?,
                None => CardFilter::All,
            };
            // everything is read from the store first, so printing cannot fail half-way
            // through a query
            if csv {
                let text = store.export_csv(&filter).await?;
                super::out::text(&text)?;
            } else {
                let cards = store.cards(&filter).await?;
                let names = package_names(store).await?;
                super::out::with(|out| {
                    if json {
                        let v: Vec<_> = cards.iter().map(|c| card_json(c, &names)).collect();
                        serde_json::to_writer_pretty(&mut *out, &v)?;
                        writeln!(out)
                    } else {
                        print_list(out, &cards)
                    }
                })?;
            }
        }
        CardCommand::Show { serial, json } => {
            let card = store.card(fields::parse_serial(&serial)?).await?;
            let names = package_names(store).await?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&card_json(&card, &names))?
                )?;
            } else {
                print_card(&card, &names)?;
            }
        }
        CardCommand::Set { serial, fields } => {
            let serial = fields::parse_serial(&serial)?;
            let changes = fields.changes()?;
            let card = store.set_card(serial, &changes, now).await?;
            print_card(&card, &package_names(store).await?)?;
        }
        CardCommand::Disable { serial } => {
            let s = fields::parse_serial(&serial)?;
            store.set_enabled(s, false, now).await?;
            outln!("card {s} disabled")?;
        }
        CardCommand::Enable { serial } => {
            let s = fields::parse_serial(&serial)?;
            store.set_enabled(s, true, now).await?;
            outln!("card {s} enabled")?;
        }
        CardCommand::Remove { serial } => {
            let s = fields::parse_serial(&serial)?;
            store.remove_card(s, now).await?;
            outln!("card {s} removed")?;
        }
        CardCommand::Import { file } => {
            let text = read_bounded(&file)?;
            let t0 = Instant::now();
            let label = file.display().to_string();
            let sum = store.import_csv(&text, &label, now).await?;
            outln!(
                "imported {} cards from {} ({} new, {} updated) in {:.2} s",
                sum.inserted + sum.updated,
                file.display(),
                sum.inserted,
                sum.updated,
                t0.elapsed().as_secs_f64()
            )?;
        }
        CardCommand::Export { file } => {
            let text = store.export_csv(&CardFilter::All).await?;
            match file {
                Some(path) => {
                    std::fs::write(&path, text.as_bytes())
                        .with_context(|| format!("IO_ERROR: writing {}", path.display()))?;
                    // a note beside the result, not the result: a closed stderr is no failure
                    let _ = writeln!(
                        std::io::stderr(),
                        "exported {} cards to {}",
                        text.lines().count().saturating_sub(1),
                        path.display()
                    );
                }
                None => super::out::text(&text)?,
            }
        }
        CardCommand::ExportKey { serial, output } => {
            let serial = fields::parse_serial(&serial)?;
            // refuse a device, directory or symlink before the export is audited; the
            // temporary file beside the target shows it can be created
            let mut f = PrivateFile::create(&output, Existing::Replace)
                .with_context(|| format!("IO_ERROR: card.json {}", output.display()))?;
            let card = store.export_card(serial, now, None).await?;
            let json = card.to_json_text()?;
            f.file()
                .write_all(json.as_bytes())
                .with_context(|| format!("IO_ERROR: writing {}", output.display()))?;
            f.commit()
                .with_context(|| format!("IO_ERROR: card.json {}", output.display()))?;
            outln!(
                "wrote {} for card {serial} ({} service key(s)); keep it secret",
                output.display(),
                card.service_keys.len()
            )?;
        }
        CardCommand::GrantEvent { serial, event } => {
            let serial = fields::parse_serial(&serial)?;
            store.grant_event(serial, &event, now).await?;
            outln!("card {serial}: event {event} granted")?;
        }
    }
    Ok(())
}

/// The text table of `card list`.
fn print_list(out: &mut dyn Write, cards: &[CardRecord]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<12} {:<24} {:<24} {:<10} {:<4} {:<20} {:<20} STATE",
        "SERIAL", "NAME", "INFO", "CRITERIA", "PAIR", "START", "FINISH"
    )?;
    for c in cards {
        writeln!(
            out,
            "{:<12} {:<24} {:<24} {:<10} {:<4} {:<20} {:<20} {}",
            c.serial,
            c.name,
            c.info,
            c.access.to_string(),
            c.pair,
            time::format_time(c.start),
            time::format_time(c.finish),
            state(c)
        )?;
    }
    Ok(())
}

fn state(c: &CardRecord) -> &'static str {
    if c.enabled {
        "enabled"
    } else {
        "disabled"
    }
}

async fn package_names(store: &Store) -> Result<BTreeMap<u8, String>, StoreError> {
    Ok(store
        .packages(false)
        .await?
        .into_iter()
        .map(|p| (p.bit.get(), p.name))
        .collect())
}

fn packages_of(c: &CardRecord, names: &BTreeMap<u8, String>) -> Vec<String> {
    c.access
        .bits()
        .map(|b| {
            names
                .get(&b.get())
                .cloned()
                .unwrap_or_else(|| format!("bit{}", b.get()))
        })
        .collect()
}

/// TVCAS's API shape (strings), plus state, packages and events.
fn card_json(c: &CardRecord, names: &BTreeMap<u8, String>) -> serde_json::Value {
    serde_json::json!({
        "serial_no": c.serial.to_string(),
        "name": c.name,
        "info": c.info,
        "access_criteria": c.access.to_string(),
        "pair": c.pair.to_string(),
        "start": c.start.to_string(),
        "finish": c.finish.to_string(),
        "state": state(c),
        "packages": packages_of(c, names),
        "events": c.events,
        "updated_at": c.updated_at,
        "change_seq": c.change_seq,
    })
}

fn print_card(c: &CardRecord, names: &BTreeMap<u8, String>) -> Result<(), super::out::StdoutError> {
    outln!("serial_no:       {}", c.serial)?;
    outln!("name:            {}", c.name)?;
    outln!("info:            {}", c.info)?;
    outln!(
        "access_criteria: {} ({})",
        c.access,
        packages_of(c, names).join(",")
    )?;
    outln!("pair:            {}", c.pair)?;
    outln!(
        "start:           {} ({})",
        c.start,
        time::format_time(c.start)
    )?;
    outln!(
        "finish:          {} ({})",
        c.finish,
        time::format_time(c.finish)
    )?;
    outln!("state:           {}", state(c))?;
    for e in &c.events {
        outln!(
            "event:           #{} bit {} {} .. {}",
            e.id,
            e.bit.get(),
            time::format_time(e.start),
            time::format_time(e.end)
        )?;
    }
    outln!("updated:         {}", time::format_time(c.updated_at))?;
    Ok(())
}

fn read_bounded(path: &Path) -> Result<String, StoreError> {
    let io = |e| StoreError::Io {
        path: path.to_owned(),
        source: e,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_IMPORT_BYTES {
        return Err(StoreError::Csv(format!(
            "{} is {len} bytes; the limit is {MAX_IMPORT_BYTES}",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    String::from_utf8(bytes)
        .map_err(|e| StoreError::Csv(format!("{} is not UTF-8 text: {e}", path.display())))
}
