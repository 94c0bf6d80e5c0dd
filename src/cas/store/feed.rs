//! What leaves the store for cards: the change feed the EMM carousel follows (every card with
//! its derived key, or those changed since a sequence number, removals included) and the
//! card.json personalization.

use sqlx::Row;

use super::cards::{attach_events, fetch_cards, CARD_COLUMNS};
use super::error::StoreError;
use super::{audit, CardKeyRecord, Store};
use crate::cas::types::{
    derive_card_key, AccessCriteria, CardFile, CardSerial, Entitlements, CARD_FILE_FORMAT,
};

impl Store {
    /// The software card's personalization: its key, entitlements and the current and next
    /// service keys of every bit it is entitled to (packages and events). Audited, with
    /// `origin` (who took it, e.g. `over HTTP to 192.0.2.1`) when it is not the CLI.
    pub async fn export_card(
        &self,
        serial: CardSerial,
        now: i64,
        origin: Option<&str>,
    ) -> Result<CardFile, StoreError> {
        let card = self.card(serial).await?;
        let mut bits = card.access.0;
        for e in &card.events {
            bits |= 1 << e.bit.get();
        }
        let service_keys = self
            .service_keys()
            .await?
            .into_iter()
            .filter(|k| bits & (1 << k.bit.get()) != 0)
            .collect::<Vec<_>>();
        let file = CardFile {
            format: CARD_FILE_FORMAT,
            serial,
            ca_system_id: self.ca_system_id(),
            card_key: derive_card_key(self.root_key(), serial),
            entitlements: card.entitlements(),
            service_keys,
            issued_at: now,
        };
        let mut tx = self.write_tx().await?;
        audit::record(
            &mut tx,
            now,
            "card.export-key",
            &serial.to_string(),
            &format!(
                "card key and {} service key(s) exported{}",
                file.service_keys.len(),
                origin.map(|o| format!(" {o}")).unwrap_or_default()
            ),
        )
        .await
        .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(file)
    }

    /// Every card with its key and entitlements, and the change sequence number they are
    /// current as of (pass it to [`Store::cards_changed_since`] later).
    pub async fn emm_cards(&self) -> Result<(Vec<CardKeyRecord>, u64), StoreError> {
        self.changed(None).await
    }

    /// Cards changed (or removed) after `seq`, and the sequence number now.
    pub async fn cards_changed_since(
        &self,
        seq: u64,
    ) -> Result<(Vec<CardKeyRecord>, u64), StoreError> {
        self.changed(Some(seq)).await
    }

    async fn changed(&self, since: Option<u64>) -> Result<(Vec<CardKeyRecord>, u64), StoreError> {
        let mut tx = self.read_tx().await?;
        let res: Result<_, sqlx::Error> = async {
            let now_seq: i64 = sqlx::query("SELECT change_seq FROM settings WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            let after = since.map(|s| s.min(i64::MAX as u64) as i64).unwrap_or(-1);
            let sql =
                format!("SELECT {CARD_COLUMNS} FROM cards WHERE change_seq > $1 ORDER BY serial");
            let mut cards = fetch_cards(&mut tx, sqlx::query(&sql).bind(after)).await?;
            attach_events(&mut tx, &mut cards, None).await?;
            let removed: Vec<i64> = if since.is_some() {
                sqlx::query(
                    "SELECT serial FROM removed_cards WHERE change_seq > $1 ORDER BY serial",
                )
                .bind(after)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?
            } else {
                Vec::new()
            };
            Ok((cards, removed, now_seq))
        }
        .await;
        let (cards, removed, now_seq) = res.map_err(|e| self.err(e))?;
        drop(tx);
        let root = self.root_key();
        let mut out: Vec<CardKeyRecord> = cards
            .iter()
            .map(|c| CardKeyRecord {
                serial: c.serial,
                card_key: derive_card_key(root, c.serial),
                entitlements: c.entitlements(),
            })
            .collect();
        out.extend(removed.into_iter().map(|s| {
            let serial = CardSerial(s as u64);
            CardKeyRecord {
                serial,
                card_key: derive_card_key(root, serial),
                entitlements: Entitlements {
                    access: AccessCriteria::NONE,
                    start: 0,
                    finish: 0,
                    pair: 0,
                    enabled: false,
                    events: Vec::new(),
                },
            }
        }));
        Ok((out, now_seq.max(0) as u64))
    }
}
