//! TVCAS CSV in and out: `card import` (all or nothing, every row checked before anything is
//! written) and `card export` / `card list --csv`.

use std::collections::HashMap;

use sqlx::Row;

use super::cards::{CardFilter, CardRecord, CARD_COLUMNS};
use super::csv;
use super::error::StoreError;
use super::fields::{
    check_text, check_window, parse_access, parse_finish, parse_pair, parse_serial, parse_start,
};
use super::{audit, next_change_seq, values_placeholders, Store};

/// The TVCAS CSV columns, in TVCAS's order.
pub const CSV_COLUMNS: [&str; 7] = [
    "serial_no",
    "name",
    "info",
    "access_criteria",
    "pair",
    "start",
    "finish",
];

/// Rows per multi-row statement (11 binds each stays far under SQLite's 32766 and PostgreSQL's 65535).
const ROWS_PER_STATEMENT: usize = 500;

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    /// New cards.
    pub inserted: u64,
    /// Existing cards overwritten.
    pub updated: u64,
}

impl Store {
    /// Import TVCAS CSV (header `serial_no,name,info,access_criteria,pair,start,finish` in any
    /// order, optionally `state`). New serials are added, existing ones overwritten. All or
    /// nothing: any bad row fails the whole import, naming the line and the field.
    pub async fn import_csv(
        &self,
        text: &str,
        label: &str,
        now: i64,
    ) -> Result<ImportSummary, StoreError> {
        let rows = parse_import(text)?;
        let mut tx = self.write_tx().await?;
        let res: Result<ImportSummary, sqlx::Error> = async {
            const COUNT: &str = "SELECT COUNT(*) FROM cards";
            let before: i64 = sqlx::query(COUNT).fetch_one(&mut *tx).await?.try_get(0)?;
            let seq = next_change_seq(&mut tx).await?;
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut sql = format!(
                    "INSERT INTO cards ({CARD_COLUMNS}) VALUES {}",
                    values_placeholders(chunk.len(), 11)
                );
                sql.push_str(
                    " ON CONFLICT (serial) DO UPDATE SET name = excluded.name, \
                     info = excluded.info, access_criteria = excluded.access_criteria, \
                     start_at = excluded.start_at, finish_at = excluded.finish_at, \
                     pair = excluded.pair, updated_at = excluded.updated_at, \
                     change_seq = excluded.change_seq",
                );
                if rows.first().is_some_and(|r| r.has_state) {
                    sql.push_str(", state = excluded.state");
                }
                let mut q = sqlx::query(&sql);
                for r in chunk {
                    q = q
                        .bind(r.card.serial.0 as i64)
                        .bind(r.card.name.clone())
                        .bind(r.card.info.clone())
                        .bind(r.card.access.0 as i64)
                        .bind(r.card.start)
                        .bind(r.card.finish)
                        .bind(i64::from(r.card.pair))
                        .bind(if r.card.enabled {
                            "enabled"
                        } else {
                            "disabled"
                        })
                        .bind(now)
                        .bind(now)
                        .bind(seq);
                }
                q.execute(&mut *tx).await?;
            }
            sqlx::query(
                "DELETE FROM removed_cards WHERE serial IN \
                 (SELECT serial FROM cards WHERE change_seq = $1)",
            )
            .bind(seq)
            .execute(&mut *tx)
            .await?;
            let after: i64 = sqlx::query(COUNT).fetch_one(&mut *tx).await?.try_get(0)?;
            let inserted = (after - before).max(0) as u64;
            let summary = ImportSummary {
                inserted,
                updated: rows.len() as u64 - inserted,
            };
            audit::record(
                &mut tx,
                now,
                "card.import",
                label,
                &format!("{} new, {} updated", summary.inserted, summary.updated),
            )
            .await?;
            Ok(summary)
        }
        .await;
        let summary = res.map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        tracing::info!(
            inserted = summary.inserted,
            updated = summary.updated,
            "cards imported"
        );
        Ok(summary)
    }

    /// TVCAS CSV of the cards matching `filter`, header first.
    pub async fn export_csv(&self, filter: &CardFilter) -> Result<String, StoreError> {
        let cards = self.cards(filter).await?;
        let mut out = String::with_capacity(64 * (cards.len() + 1));
        csv::write_record(&mut out, &CSV_COLUMNS);
        for c in &cards {
            csv::write_record(&mut out, &c.csv_fields());
        }
        Ok(out)
    }
}

/// Check TVCAS CSV as [`Store::import_csv`] does before it writes anything (columns, every
/// row's fields, repeated serials); returns how many cards the text holds. Writes nothing,
/// so the CSV reading can be exercised (fuzzed) without a store.
pub fn check_import_csv(text: &str) -> Result<usize, StoreError> {
    parse_import(text).map(|rows| rows.len())
}

/// A checked import row.
#[derive(Debug)]
struct ImportRow {
    card: CardRecord,
    has_state: bool,
}

fn parse_import(text: &str) -> Result<Vec<ImportRow>, StoreError> {
    let records = csv::parse(text)?;
    let Some((header, body)) = records.split_first() else {
        return Err(StoreError::Csv(
            "the file is empty; expected a header line serial_no,name,info,access_criteria,pair,start,finish".to_owned(),
        ));
    };
    let mut col: HashMap<&str, usize> = HashMap::new();
    for (i, h) in header.fields.iter().enumerate() {
        let h = h.trim();
        let Some(known) = CSV_COLUMNS.iter().chain(&["state"]).find(|c| **c == h) else {
            return Err(StoreError::Csv(format!(
                "line {}: unknown column {h:?}; expected the TVCAS columns {} (and optionally state)",
                header.line,
                CSV_COLUMNS.join(",")
            )));
        };
        if col.insert(known, i).is_some() {
            return Err(StoreError::Csv(format!(
                "line {}: column {h:?} appears twice",
                header.line
            )));
        }
    }
    if let Some(missing) = CSV_COLUMNS.iter().find(|c| !col.contains_key(**c)) {
        return Err(StoreError::Csv(format!(
            "line {}: column {missing:?} is missing; expected the TVCAS columns {}",
            header.line,
            CSV_COLUMNS.join(",")
        )));
    }
    let has_state = col.contains_key("state");
    let width = header.fields.len();
    let mut seen: HashMap<u64, usize> = HashMap::with_capacity(body.len());
    let mut out = Vec::with_capacity(body.len());
    for r in body {
        let line = r.line;
        if r.fields.len() != width {
            return Err(StoreError::Csv(format!(
                "line {line}: {} fields where the header has {width}; nothing was imported",
                r.fields.len()
            )));
        }
        let at = |field: &'static str| -> &str { &r.fields[col[field]] };
        let row_err = |field: &'static str, e: StoreError| StoreError::ImportRow {
            line,
            field,
            reason: Box::new(e),
        };
        let serial = parse_serial(at("serial_no")).map_err(|e| row_err("serial_no", e))?;
        if let Some(first) = seen.insert(serial.0, line) {
            return Err(StoreError::Csv(format!(
                "line {line}: serial {serial} appears again (first on line {first}); nothing was imported"
            )));
        }
        let name = at("name").to_owned();
        check_text("name", &name).map_err(|e| row_err("name", e))?;
        let info = at("info").to_owned();
        check_text("info", &info).map_err(|e| row_err("info", e))?;
        let access =
            parse_access(at("access_criteria")).map_err(|e| row_err("access_criteria", e))?;
        let pair = parse_pair(at("pair")).map_err(|e| row_err("pair", e))?;
        let start = parse_start(at("start")).map_err(|e| row_err("start", e))?;
        let finish = parse_finish(at("finish")).map_err(|e| row_err("finish", e))?;
        check_window(start, finish).map_err(|e| row_err("finish", e))?;
        let enabled = if has_state {
            match at("state").trim() {
                "enabled" | "" => true,
                "disabled" => false,
                s => {
                    return Err(row_err(
                        "state",
                        StoreError::Field(format!("state {s:?} must be enabled or disabled")),
                    ))
                }
            }
        } else {
            true
        };
        out.push(ImportRow {
            card: CardRecord {
                serial,
                name,
                info,
                access,
                start,
                finish,
                pair,
                enabled,
                created_at: 0,
                updated_at: 0,
                change_seq: 0,
                events: Vec::new(),
            },
            has_state,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_rows_are_checked_with_line_and_field() {
        let ok = "serial_no,name,info,access_criteria,pair,start,finish\n\
                  2100000000,\"Petrov, Ivan\",x,00000101,0,1586693700,1589285580\n";
        let rows = parse_import(ok).unwrap();
        assert_eq!(rows[0].card.access.0, 5);
        assert_eq!(rows[0].card.name, "Petrov, Ivan");
        let bad = format!("{ok}2100000001,a,b,0000000x,0,1,2\n");
        let e = parse_import(&bad).unwrap_err();
        assert_eq!(e.code(), "ACCESS_CRITERIA_ERROR");
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = parse_import("serial_no,name\n1,2\n").unwrap_err();
        assert_eq!(e.code(), "CSV_ERROR");
        let dup = format!("{ok}2100000000,a,b,00000001,0,1,2\n");
        assert!(parse_import(&dup)
            .unwrap_err()
            .to_string()
            .contains("line 3"));
    }
}
