//! The one store follower: what every process that serves the CAS from a card store runs
//! (`scramble --cas builtin`, `castmux ecmg`, `castmux emmg`), so `castmux card ...`,
//! `castmux keys rotate` and `castmux keys schedule` in another terminal take effect in each
//! of them the same way.
//!
//! Every [`REFRESH`] it
//! 1. rotates the service keys whose rotation is due (`keys schedule`). Several processes may
//!    follow one store: [`Store::rotate_due`] re-checks the due time inside its write
//!    transaction, so a bit rotates once whichever process gets there first, and the others
//!    simply see new keys;
//! 2. reads the service keys; when they changed, it swaps the shared key ring (ECMs are
//!    sealed under it from the next crypto period) and tells its [`StoreSink`] (the EMM
//!    carousel sends new keys to every card);
//! 3. when it follows cards, hands the cards changed since its last look to the sink
//!    (their EMMs go first).
//!
//! A failed store read never changes what is on air: the keys and cards already loaded stay,
//! the failure is counted, and the degraded state is logged when entered and when left.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use super::keyring::{ServiceKeyRing, SharedKeyRing};
use super::store::{time, CardKeyRecord, Store, StoreError};
use super::types::ServiceKey;
use crate::scramble::stats::monotonic_ms;

/// How often the store is read for changes (and rotation checked).
pub const REFRESH: Duration = Duration::from_secs(1);

/// Where the follower's findings go, besides the key ring it keeps itself. Both methods
/// return false when the receiver is gone: the follower then stops.
pub trait StoreSink: Send {
    /// The service keys changed (every bit's current and next key, as the store has them).
    fn keys_changed(&mut self, keys: &[ServiceKey]) -> bool {
        let _ = keys;
        true
    }

    /// These cards changed or were removed (removed ones come disabled, with no package).
    fn cards_changed(&mut self, cards: Vec<CardKeyRecord>) -> bool {
        let _ = cards;
        true
    }
}

/// A sink that wants nothing but the key ring (`castmux ecmg`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RingOnly;

impl StoreSink for RingOnly {}

/// Counters of a follower (live).
#[derive(Debug, Default)]
pub struct FollowerStats {
    /// Rounds done.
    pub polls: AtomicU64,
    /// Package bits this follower rotated on schedule (the other processes' rotations are
    /// not counted here; they show as key changes).
    pub rotations: AtomicU64,
    /// Times new service keys were loaded.
    pub key_changes: AtomicU64,
    /// Changed cards handed on.
    pub card_updates: AtomicU64,
    /// Store reads or rotation checks that failed (what was loaded stayed on air).
    pub store_errors: AtomicU64,
    /// When the store was last read whole, in ms of [`monotonic_ms`] (0: never). A
    /// monitor shows its age: keys and cards on air are at most that old.
    pub last_read_ms: AtomicU64,
}

impl FollowerStats {
    /// Seconds since the store was last read whole (None: never).
    pub fn age_seconds(&self) -> Option<f64> {
        match self.last_read_ms.load(Relaxed) {
            0 => None,
            t => Some(monotonic_ms().saturating_sub(t) as f64 / 1000.0),
        }
    }
}

/// What was in the store when the follower started.
#[derive(Debug)]
pub struct StoreSnapshot {
    /// Every bit's current and next service key.
    pub keys: Vec<ServiceKey>,
    /// Every card, when cards are followed (else empty).
    pub cards: Vec<CardKeyRecord>,
}

/// Follows one store; see the module docs.
#[derive(Debug)]
pub struct StoreFollower {
    store: Store,
    ring: SharedKeyRing,
    keys: Vec<ServiceKey>,
    /// The card change sequence seen so far; None when cards are not followed.
    card_seq: Option<u64>,
    stats: Arc<FollowerStats>,
    /// In a failing streak (logged once when entered, once when left).
    failing: bool,
}

impl StoreFollower {
    /// Start following `store`: rotate what is due, load the keys (and every card with
    /// `follow_cards`). Fails when the store cannot be read at all.
    pub async fn start(
        store: Store,
        follow_cards: bool,
    ) -> Result<(StoreFollower, StoreSnapshot), StoreError> {
        let stats = Arc::<FollowerStats>::default();
        // a process started long after the last rotation catches up before its first ECM
        match store.rotate_due(time::now()).await {
            Ok(bits) => {
                stats.rotations.fetch_add(bits.len() as u64, Relaxed);
            }
            Err(e) => {
                stats.store_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "key rotation check failed; trying again in a second");
            }
        }
        let keys = store.service_keys().await?;
        let (cards, card_seq) = if follow_cards {
            let (cards, seq) = store.emm_cards().await?;
            (cards, Some(seq))
        } else {
            (Vec::new(), None)
        };
        stats.last_read_ms.store(monotonic_ms(), Relaxed);
        let ring = ServiceKeyRing::from_keys(keys.iter().cloned()).shared();
        let follower = StoreFollower {
            store,
            ring,
            keys: keys.clone(),
            card_seq,
            stats,
            failing: false,
        };
        Ok((follower, StoreSnapshot { keys, cards }))
    }

    /// The key ring the follower keeps current (shared: ECM builders read it).
    pub fn ring(&self) -> SharedKeyRing {
        Arc::clone(&self.ring)
    }

    /// The counters.
    pub fn stats(&self) -> Arc<FollowerStats> {
        Arc::clone(&self.stats)
    }

    /// The store followed.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Follow every [`REFRESH`] until `shutdown` completes or the sink is gone.
    pub async fn run(mut self, sink: &mut impl StoreSink, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(REFRESH) => {}
            }
            if !self.poll(sink, time::now()).await {
                return;
            }
        }
    }

    /// One round at `now` (Unix seconds); false when the sink is gone.
    pub async fn poll(&mut self, sink: &mut impl StoreSink, now: i64) -> bool {
        self.stats.polls.fetch_add(1, Relaxed);
        let mut failed: Option<StoreError> = None;
        match self.store.rotate_due(now).await {
            Ok(bits) => {
                self.stats.rotations.fetch_add(bits.len() as u64, Relaxed);
            }
            Err(e) => failed = Some(e),
        }
        match self.store.service_keys().await {
            Ok(keys) if keys != self.keys => {
                let mut versions: Vec<String> = keys
                    .iter()
                    .map(|k| format!("{}:v{}", k.bit.get(), k.version))
                    .collect();
                versions.dedup();
                tracing::info!(keys = %versions.join(","), "service keys changed in the store");
                let ring = ServiceKeyRing::from_keys(keys.iter().cloned());
                *self.ring.write().unwrap_or_else(|e| e.into_inner()) = ring;
                self.stats.key_changes.fetch_add(1, Relaxed);
                if !sink.keys_changed(&keys) {
                    return false;
                }
                self.keys = keys;
            }
            Ok(_) => {}
            Err(e) => failed = Some(e),
        }
        if let Some(seq) = self.card_seq {
            match self.store.cards_changed_since(seq).await {
                Ok((changed, now_seq)) => {
                    self.card_seq = Some(now_seq);
                    if !changed.is_empty() {
                        tracing::info!(cards = changed.len(), "cards changed: their EMMs go first");
                        self.stats
                            .card_updates
                            .fetch_add(changed.len() as u64, Relaxed);
                        if !sink.cards_changed(changed) {
                            return false;
                        }
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => {
                self.stats.store_errors.fetch_add(1, Relaxed);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(error = %e,
                        "cannot read the card store; the keys and cards loaded stay on air");
                }
            }
            None if self.failing => {
                self.stats.last_read_ms.store(monotonic_ms(), Relaxed);
                self.failing = false;
                tracing::info!(
                    failures = self.stats.store_errors.load(Relaxed),
                    "the card store reads again"
                );
            }
            None => self.stats.last_read_ms.store(monotonic_ms(), Relaxed),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::store::{Backend, InitOptions};

    #[derive(Default)]
    struct Seen {
        keys: Vec<Vec<ServiceKey>>,
        cards: usize,
    }

    impl StoreSink for Seen {
        fn keys_changed(&mut self, keys: &[ServiceKey]) -> bool {
            self.keys.push(keys.to_vec());
            true
        }

        fn cards_changed(&mut self, cards: Vec<CardKeyRecord>) -> bool {
            self.cards += cards.len();
            true
        }
    }

    async fn store_with_package(dir: &std::path::Path, now: i64) -> Store {
        store_with_package_on(Backend::Sqlite, dir, now).await
    }

    async fn store_with_package_on(backend: Backend, dir: &std::path::Path, now: i64) -> Store {
        let store = Store::init(
            crate::cas::store::test_location(backend, dir),
            InitOptions {
                now,
                ..InitOptions::default()
            },
        )
        .await
        .unwrap();
        store.add_package("sport", None, now).await.unwrap();
        store
    }

    /// Two followers of one store (two processes) at the same due time: the bit rotates
    /// once, and both load the same new keys.
    #[tokio::test]
    async fn a_due_rotation_happens_once_for_several_followers() {
        a_due_rotation_happens_once_for_several_followers_on(Backend::Sqlite).await
    }

    /// The same with the two followers on one PostgreSQL store.
    #[tokio::test]
    async fn a_due_rotation_happens_once_for_several_followers_on_postgres() {
        a_due_rotation_happens_once_for_several_followers_on(Backend::Postgres).await
    }

    async fn a_due_rotation_happens_once_for_several_followers_on(backend: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_700_000_000;
        let store = store_with_package_on(backend, dir.path(), t0).await;
        store.set_rotate_every(60, t0).await.unwrap();
        let other = Store::open(store.location()).await.unwrap();
        let (mut a, _) = StoreFollower::start(store.clone(), false).await.unwrap();
        let (mut b, _) = StoreFollower::start(other, true).await.unwrap();
        let (mut sa, mut sb) = (Seen::default(), Seen::default());

        // not due yet: nothing changes
        assert!(a.poll(&mut sa, t0 + 59).await);
        assert!(sa.keys.is_empty());

        let due = t0 + 60;
        let (ra, rb) = tokio::join!(a.poll(&mut sa, due), b.poll(&mut sb, due));
        assert!(ra && rb);
        let rotated = a.stats.rotations.load(Relaxed) + b.stats.rotations.load(Relaxed);
        assert_eq!(rotated, 1, "one rotation for the two followers");
        let status = store.key_status().await.unwrap();
        assert_eq!(status[0].current_version, 2);
        // the one that lost the race sees the new keys on its next round at the latest
        assert!(b.poll(&mut sb, due).await);
        assert!(a.poll(&mut sa, due).await);
        assert_eq!(sa.keys.last(), sb.keys.last());
        let ring = a.ring();
        let current = ring
            .read()
            .unwrap()
            .slot(status[0].bit)
            .unwrap()
            .current
            .version;
        assert_eq!(current, 2);
        assert_eq!(b.stats.store_errors.load(Relaxed), 0);
    }

    /// A card added after the start reaches the sink of a follower of cards, once.
    #[tokio::test]
    async fn changed_cards_reach_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_700_000_000;
        let store = store_with_package(dir.path(), t0).await;
        let (mut f, snap) = StoreFollower::start(store.clone(), true).await.unwrap();
        assert!(snap.cards.is_empty());
        assert_eq!(snap.keys.len(), 2, "current and next of the package");
        let mut seen = Seen::default();
        let fields = crate::cas::store::CardChanges {
            access: Some(crate::cas::store::AccessSpec::Packages(vec![
                "sport".to_owned()
            ])),
            ..Default::default()
        };
        store.add_cards(1, None, &fields, t0).await.unwrap();
        assert!(f.poll(&mut seen, t0 + 1).await);
        assert_eq!(seen.cards, 1);
        assert!(f.poll(&mut seen, t0 + 2).await);
        assert_eq!(seen.cards, 1, "a card is handed on once per change");
    }
}
