//! The card writer: group commit of card changes.
//!
//! With synchronous=FULL every commit waits for the WAL's fsync, and the process's write
//! transactions take one connection in turn, so one transaction per card change caps the
//! changes a second at about one per fsync (800-880/s measured). Callers of
//! [`Store::set_card`](super::Store::set_card) therefore queue their change to one task,
//! which takes what is queued (at most [`MAX_BATCH`]) and applies it in one transaction:
//!
//! - each change in its own SAVEPOINT, in arrival order: a change that fails (bad field,
//!   no such card) is rolled back alone and its caller gets its own error; the others go on;
//! - each change keeps its own change sequence number and its own audit row, exactly as a
//!   transaction of its own would write them, so the change feed and the audit log cannot
//!   tell a batch from single commits;
//! - every caller is answered only after COMMIT has returned (durable); if COMMIT (or the
//!   transaction) fails, every caller of the batch gets the error and nothing was written.
//!
//! The queue is bounded ([`QUEUE`]); a full queue makes callers wait. [`CardWriter::close`]
//! finishes what is queued before the store closes; a change sent after that is refused
//! with [`StoreError::WriterStopped`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use sqlx::AnyPool;

use super::location::Backend;
use tokio::sync::{mpsc, oneshot};

use super::cards::{set_card_in, CardChanges, CardRecord};
use super::error::StoreError;
use crate::cas::types::CardSerial;

/// Most changes one transaction carries: enough to absorb a burst of clients, few enough
/// that a batch holds the write lock for milliseconds, not seconds.
pub(super) const MAX_BATCH: usize = 64;

/// Changes that may wait in the queue; further callers wait for room.
pub(super) const QUEUE: usize = 4 * MAX_BATCH;

type Reply = oneshot::Sender<Result<CardRecord, StoreError>>;

/// One queued change.
struct Job {
    serial: CardSerial,
    changes: CardChanges,
    now: i64,
    reply: Reply,
}

enum Msg {
    Set(Job),
    /// Finish what is queued before this, refuse what comes after, then confirm.
    Close(oneshot::Sender<()>),
}

/// What the writer has done (for tests and the close log line).
#[derive(Debug, Default)]
pub(super) struct WriterStats {
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Changes committed.
    pub changes: AtomicU64,
}

/// The handle of the card writer task. Cheap to clone: clones queue to the same task.
#[derive(Debug, Clone)]
pub(super) struct CardWriter {
    queue: mpsc::Sender<Msg>,
    path: Arc<PathBuf>,
    pub(super) stats: Arc<WriterStats>,
}

/// Statements run just before COMMIT, for tests that make COMMIT fail.
#[cfg(test)]
pub(super) type BeforeCommit = &'static [&'static str];

impl CardWriter {
    /// Start the writer task on the current tokio runtime, writing through `pool` (the
    /// store's one writer connection).
    pub(super) fn spawn(pool: AnyPool, backend: Backend, path: Arc<PathBuf>) -> CardWriter {
        Self::spawn_inner(
            pool,
            backend,
            path,
            #[cfg(test)]
            &[],
        )
    }

    #[cfg(test)]
    pub(super) fn spawn_failing(
        pool: AnyPool,
        backend: Backend,
        path: Arc<PathBuf>,
        before_commit: BeforeCommit,
    ) -> CardWriter {
        Self::spawn_inner(pool, backend, path, before_commit)
    }

    fn spawn_inner(
        pool: AnyPool,
        backend: Backend,
        path: Arc<PathBuf>,
        #[cfg(test)] before_commit: BeforeCommit,
    ) -> CardWriter {
        let (queue, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(WriterStats::default());
        let task = Task {
            rx,
            pool,
            backend,
            path: Arc::clone(&path),
            stats: Arc::clone(&stats),
            #[cfg(test)]
            before_commit,
        };
        tokio::spawn(task.run());
        CardWriter { queue, path, stats }
    }

    fn stopped(&self, maybe_applied: bool) -> StoreError {
        StoreError::WriterStopped {
            path: self.path.as_ref().clone(),
            maybe_applied,
        }
    }

    /// Queue a change and wait for its result (after the commit).
    pub(super) async fn set(
        &self,
        serial: CardSerial,
        changes: CardChanges,
        now: i64,
    ) -> Result<CardRecord, StoreError> {
        let (reply, result) = oneshot::channel();
        let job = Job {
            serial,
            changes,
            now,
            reply,
        };
        if self.queue.send(Msg::Set(job)).await.is_err() {
            return Err(self.stopped(false));
        }
        // a dropped reply: the task ended (the runtime shut down) with the change taken, maybe
        // while its COMMIT was under way
        result.await.unwrap_or_else(|_| Err(self.stopped(true)))
    }

    /// Commit what is queued, then stop taking changes. Returns once the writer confirms.
    pub(super) async fn close(&self) {
        let (done, confirmed) = oneshot::channel();
        if self.queue.send(Msg::Close(done)).await.is_ok() {
            let _ = confirmed.await;
        }
        tracing::debug!(
            batches = self.stats.batches.load(Relaxed),
            changes = self.stats.changes.load(Relaxed),
            "card writer stopped"
        );
    }
}

struct Task {
    rx: mpsc::Receiver<Msg>,
    pool: AnyPool,
    backend: Backend,
    path: Arc<PathBuf>,
    stats: Arc<WriterStats>,
    #[cfg(test)]
    before_commit: BeforeCommit,
}

impl Task {
    async fn run(mut self) {
        let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        // ends when every handle is gone, or at a Close
        while let Some(first) = self.rx.recv().await {
            let mut close = None;
            match first {
                Msg::Set(job) => batch.push(job),
                Msg::Close(done) => close = Some(done),
            }
            while close.is_none() && batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(Msg::Set(job)) => batch.push(job),
                    Ok(Msg::Close(done)) => close = Some(done),
                    Err(_) => break,
                }
            }
            // a caller that gave up (its request timed out) before its turn is not applied
            batch.retain(|j| !j.reply.is_closed());
            if !batch.is_empty() {
                self.commit(&mut batch).await;
            }
            if let Some(done) = close {
                self.rx.close();
                while let Ok(msg) = self.rx.try_recv() {
                    match msg {
                        Msg::Set(job) => {
                            let _ = job.reply.send(Err(StoreError::WriterStopped {
                                path: self.path.as_ref().clone(),
                                maybe_applied: false,
                            }));
                        }
                        Msg::Close(other) => {
                            let _ = other.send(());
                        }
                    }
                }
                let _ = done.send(());
                return;
            }
        }
    }

    /// Apply and commit `batch`, then answer each caller (emptying `batch`).
    async fn commit(&self, batch: &mut Vec<Job>) {
        match self.apply(batch).await {
            Ok(results) => {
                self.stats.batches.fetch_add(1, Relaxed);
                let ok = results.iter().filter(|r| r.is_ok()).count();
                self.stats.changes.fetch_add(ok as u64, Relaxed);
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                let e = StoreError::db(&self.path, e);
                tracing::warn!(error = %e, changes = batch.len(),
                    "a batch of card changes was not committed; each caller is told");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(for_each_caller(&e, &self.path)));
                }
            }
        }
    }

    /// One transaction: each job in its savepoint. Err when the transaction as a whole failed
    /// (nothing written); else each job's own result, all committed.
    async fn apply(
        &self,
        batch: &[Job],
    ) -> Result<Vec<Result<CardRecord, StoreError>>, sqlx::Error> {
        let mut tx = super::begin_write(&self.pool, self.backend).await?;
        let mut results = Vec::with_capacity(batch.len());
        for job in batch {
            // savepoints by hand on the one transaction: sqlx's nested transactions borrow it
            // and make this task's future lose its Send. Each change pushes one more of the
            // same name and none is released (COMMIT ends them all): ROLLBACK TO names the
            // newest, so it undoes this change alone, and a round trip per change is saved
            // (the write lock is held meanwhile)
            sqlx::query("SAVEPOINT card_change")
                .execute(&mut *tx)
                .await?;
            let result = set_card_in(&mut tx, &self.path, job.serial, &job.changes, job.now).await;
            if result.is_err() {
                // a rollback that fails leaves the transaction in doubt: the whole batch
                // fails (the ? below) rather than commit something unknown
                sqlx::query("ROLLBACK TO card_change")
                    .execute(&mut *tx)
                    .await?;
            }
            results.push(result);
        }
        #[cfg(test)]
        for sql in self.before_commit {
            sqlx::query(sql).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(results)
    }
}

/// The error of a failed batch, for one of its callers (a driver error cannot be cloned).
fn for_each_caller(e: &StoreError, store: &Path) -> StoreError {
    match e {
        StoreError::Locked { path } => StoreError::Locked { path: path.clone() },
        StoreError::Corrupt { path, detail } => StoreError::Corrupt {
            path: path.clone(),
            detail: detail.clone(),
        },
        StoreError::Db { source, .. } => StoreError::NotCommitted {
            path: store.to_owned(),
            detail: source.to_string(),
        },
        other => StoreError::NotCommitted {
            path: store.to_owned(),
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;

    use super::*;
    use crate::cas::store::{AccessSpec, AuditQuery, FinishSpec, InitOptions, Store};

    const T0: i64 = 1_700_000_000;

    /// A store with cards 100 and 101 (named "card"), and its change sequence number.
    async fn store_with_cards(dir: &Path) -> (Store, u64) {
        store_with_cards_on(Backend::Sqlite, dir).await
    }

    async fn store_with_cards_on(backend: Backend, dir: &Path) -> (Store, u64) {
        let store = Store::init(
            crate::cas::store::test_location(backend, dir),
            InitOptions {
                now: T0,
                ..InitOptions::default()
            },
        )
        .await
        .unwrap();
        let fields = CardChanges {
            name: Some("card".into()),
            ..CardChanges::default()
        };
        store
            .add_cards(2, Some(CardSerial(100)), &fields, T0)
            .await
            .unwrap();
        let (_, seq) = store.emm_cards().await.unwrap();
        (store, seq)
    }

    fn name(n: &str) -> CardChanges {
        CardChanges {
            name: Some(n.to_owned()),
            ..CardChanges::default()
        }
    }

    /// The `card.set` audit rows of `serial`, oldest first.
    async fn set_rows(store: &Store, serial: u64) -> Vec<String> {
        let mut rows = store
            .audit_log(&AuditQuery {
                action: Some("card.set".into()),
                subject: Some(serial.to_string()),
                limit: 1000,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        rows.reverse();
        rows.into_iter().map(|r| r.detail).collect()
    }

    type Pending<'a> = Pin<Box<dyn Future<Output = Result<CardRecord, StoreError>> + 'a>>;

    /// Queue every change in the order given (each future polled once: that sends it), then
    /// wait for all. The test runtime has one thread, so the writer runs only after all
    /// are queued.
    async fn queue_in_order(mut calls: Vec<Pending<'_>>) -> Vec<Result<CardRecord, StoreError>> {
        for c in &mut calls {
            assert!(futures::poll!(c.as_mut()).is_pending());
        }
        futures::future::join_all(calls).await
    }

    #[tokio::test]
    async fn a_failing_change_rolls_back_alone_and_the_rest_of_its_batch_commits() {
        a_failing_change_rolls_back_alone_and_the_rest_of_its_batch_commits_on(Backend::Sqlite)
            .await
    }

    #[tokio::test]
    async fn a_failing_change_rolls_back_alone_and_the_rest_of_its_batch_commits_on_postgres() {
        a_failing_change_rolls_back_alone_and_the_rest_of_its_batch_commits_on(Backend::Postgres)
            .await
    }

    async fn a_failing_change_rolls_back_alone_and_the_rest_of_its_batch_commits_on(
        backend: Backend,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (store, seq0) = store_with_cards_on(backend, dir.path()).await;
        let batches0 = store.card_writer.stats.batches.load(Relaxed);
        let bad_window = CardChanges {
            start: Some(2_000_000_000),
            finish: Some(FinishSpec::At(1_000_000_000)),
            ..CardChanges::default()
        };
        let no_package = CardChanges {
            name: Some("lost".into()),
            access: Some(AccessSpec::Packages(vec!["nope".into()])),
            ..CardChanges::default()
        };
        let long_name = name(&"x".repeat(300));
        // past the field checks (the CLI and HTTP parsers refuse it): the UPDATE fails on
        // the table's CHECK after the change number was taken, so only the savepoint's
        // rollback gives that number back
        let bad_pair = CardChanges {
            pair: Some(2),
            ..CardChanges::default()
        };
        let (a, b, c, d, e, g, f) = (
            name("A"),
            name("ghost"),
            bad_window,
            no_package,
            long_name,
            bad_pair,
            name("E"),
        );
        let r = queue_in_order(vec![
            Box::pin(store.set_card(CardSerial(100), &a, T0 + 1)),
            Box::pin(store.set_card(CardSerial(999), &b, T0 + 1)),
            Box::pin(store.set_card(CardSerial(101), &c, T0 + 1)),
            Box::pin(store.set_card(CardSerial(101), &d, T0 + 1)),
            Box::pin(store.set_card(CardSerial(101), &e, T0 + 1)),
            Box::pin(store.set_card(CardSerial(101), &g, T0 + 1)),
            Box::pin(store.set_card(CardSerial(101), &f, T0 + 1)),
        ])
        .await;
        assert_eq!(
            store.card_writer.stats.batches.load(Relaxed),
            batches0 + 1,
            "one transaction"
        );
        let codes: Vec<&str> = r
            .iter()
            .map(|r| r.as_ref().map(|_| "OK").unwrap_or_else(|e| e.code()))
            .collect();
        assert_eq!(
            codes,
            [
                "OK",
                "SMARTCARD_NOT_FOUND",
                "FINISH_ERROR",
                "PACKAGE_NOT_FOUND",
                "FIELD_ERROR",
                "DB_ERROR",
                "OK"
            ]
        );
        // each caller got its card as stored by its own change
        let a = r[0].as_ref().unwrap();
        let e = r[6].as_ref().unwrap();
        assert_eq!((a.name.as_str(), a.updated_at), ("A", T0 + 1));
        assert_eq!(e.name, "E");
        assert_eq!(store.card(CardSerial(100)).await.unwrap(), *a);
        assert_eq!(store.card(CardSerial(101)).await.unwrap(), *e);
        // the failed changes left no audit row and no change number: two changes, two numbers
        assert_eq!(set_rows(&store, 100).await, ["name"]);
        assert_eq!(set_rows(&store, 101).await, ["name"]);
        assert_eq!((a.change_seq, e.change_seq), (seq0 + 1, seq0 + 2));
        let (changed, seq) = store.cards_changed_since(seq0).await.unwrap();
        assert_eq!(seq, seq0 + 2);
        let serials: Vec<u64> = changed.iter().map(|c| c.serial.0).collect();
        assert_eq!(serials, [100, 101]);
        store.close().await;
    }

    #[tokio::test]
    async fn changes_to_one_card_apply_in_arrival_order_across_batches() {
        changes_to_one_card_apply_in_arrival_order_across_batches_on(Backend::Sqlite).await
    }

    #[tokio::test]
    async fn changes_to_one_card_apply_in_arrival_order_across_batches_on_postgres() {
        changes_to_one_card_apply_in_arrival_order_across_batches_on(Backend::Postgres).await
    }

    async fn changes_to_one_card_apply_in_arrival_order_across_batches_on(backend: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let (store, seq0) = store_with_cards_on(backend, dir.path()).await;
        let batches0 = store.card_writer.stats.batches.load(Relaxed);
        let n = MAX_BATCH + 36;
        let changes: Vec<CardChanges> = (0..n).map(|i| name(&format!("n{i}"))).collect();
        let calls: Vec<Pending<'_>> = changes
            .iter()
            .map(|c| Box::pin(store.set_card(CardSerial(100), c, T0 + 1)) as Pending<'_>)
            .collect();
        let r = queue_in_order(calls).await;
        assert_eq!(store.card_writer.stats.batches.load(Relaxed), batches0 + 2);
        for (i, r) in r.iter().enumerate() {
            let card = r.as_ref().unwrap();
            assert_eq!(
                card.name,
                format!("n{i}"),
                "each caller sees its own change"
            );
            assert_eq!(card.change_seq, seq0 + 1 + i as u64, "in arrival order");
        }
        // the last one wins; the audit shows every change
        assert_eq!(
            store.card(CardSerial(100)).await.unwrap().name,
            format!("n{}", n - 1)
        );
        assert_eq!(set_rows(&store, 100).await.len(), n);
        store.close().await;
    }

    /// Callers are answered after COMMIT: when COMMIT fails (here a deferred foreign key
    /// that a test hook breaks), every caller of the batch gets the error and nothing of the
    /// batch is in the store.
    #[tokio::test]
    async fn callers_are_answered_only_after_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (store, seq0) = store_with_cards(dir.path()).await;
        let failing = CardWriter::spawn_failing(
            store.writer.clone(),
            store.backend,
            Arc::clone(&store.path),
            &[
                "PRAGMA defer_foreign_keys = ON",
                "INSERT INTO card_events (serial, event_id, granted_at) VALUES (-1, -1, 0)",
            ],
        );
        let (a, b) = (name("A"), name("B"));
        let (ra, rb) = tokio::join!(
            failing.set(CardSerial(100), a, T0 + 1),
            failing.set(CardSerial(101), b, T0 + 1)
        );
        for r in [ra, rb] {
            let e = r.unwrap_err();
            assert!(matches!(e, StoreError::NotCommitted { .. }), "{e}");
            assert!(e.to_string().contains("FOREIGN KEY"), "{e}");
        }
        assert_eq!(failing.stats.batches.load(Relaxed), 0);
        assert_eq!(store.card(CardSerial(100)).await.unwrap().name, "card");
        assert!(set_rows(&store, 100).await.is_empty());
        assert_eq!(store.cards_changed_since(seq0).await.unwrap().1, seq0);
        // the writer connection is usable again afterwards
        failing.close().await;
        assert_eq!(
            store
                .set_card(CardSerial(100), &name("after"), T0 + 2)
                .await
                .unwrap()
                .name,
            "after"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn a_closed_writer_refuses_changes_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_with_cards(dir.path()).await;
        let other = store.clone();
        store.close().await;
        let e = other
            .set_card(CardSerial(100), &name("late"), T0 + 1)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::WriterStopped {
                    maybe_applied: false,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.code(), "STORE_CLOSED");
        assert!(e.to_string().contains("send it again"), "{e}");
    }
}
