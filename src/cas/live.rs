//! The built-in CAS inside a running mux: a control thread runs the store follower
//! ([`super::follow`], the same one `castmux ecmg` and `castmux emmg` run), so `castmux card
//! ...`, `castmux keys rotate` and a `keys schedule` take effect on air (a changed card jumps
//! the EMM queue and is on air within about 2 s: a 1 s poll plus its turn).
//!
//! The data path never touches the store: it reads the key ring once per crypto period
//! (a lock, not per packet) and drains card updates from a bounded channel when the EMM
//! inserter polls the carousel.

use crate::cas::store::StoreLocation;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use super::emmg::{EmmCarousel, EmmFormat};
use super::follow::{FollowerStats, StoreFollower, StoreSink};
use super::keyring::SharedKeyRing;
use super::store::{CardKeyRecord, Store, StoreError};
use super::types::{derive_group_key, AccessCriteria, GroupId, Key128, ServiceKey};
use crate::scramble::{EmmData, EmmSource};

pub use super::follow::REFRESH;
/// Card updates in flight to the data path; the control thread waits when it is full.
const UPDATES: usize = 4096;
/// Updates applied per poll, so a burst never holds the data path long.
const UPDATES_PER_POLL: usize = 256;

/// Why the CAS could not start.
#[derive(Debug, thiserror::Error)]
pub enum LiveCasError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The control thread could not run.
    #[error("the CAS control thread: {0}")]
    Thread(String),
}

/// What the channel selects: packages by name, or access criteria as written.
#[derive(Debug, Clone)]
pub enum ChannelAccess {
    /// TVCAS form or 0x hex.
    Criteria(AccessCriteria),
    /// Package names from the store.
    Packages(Vec<String>),
}

enum Update {
    /// A changed card, and the key of its group.
    Card(CardKeyRecord, Key128),
    Keys(Vec<ServiceKey>),
}

/// The EMM carousel as the data path sees it: applies the control thread's updates, then
/// gives EMMs at the carousel's bitrate.
pub struct LiveEmmSource {
    carousel: EmmCarousel,
    updates: mpsc::Receiver<Update>,
}

impl std::fmt::Debug for LiveEmmSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveEmmSource")
            .field("cards", &self.carousel.card_count())
            .finish_non_exhaustive()
    }
}

impl EmmSource for LiveEmmSource {
    fn poll(&mut self, now: Duration, out: &mut Vec<u8>) -> Option<EmmData> {
        for _ in 0..UPDATES_PER_POLL {
            match self.updates.try_recv() {
                Ok(Update::Card(r, group_key)) => {
                    self.carousel
                        .set_group_key(GroupId::of(r.serial), group_key);
                    self.carousel
                        .upsert_card(r.serial, r.card_key, r.entitlements, true)
                }
                Ok(Update::Keys(k)) => self.carousel.set_service_keys(k),
                Err(_) => break,
            }
        }
        self.carousel.poll(now, out).then_some(EmmData::Sections)
    }
}

/// The running feed: stops its thread when dropped.
pub struct LiveCas {
    /// The key ring the ECMG reads.
    pub ring: SharedKeyRing,
    /// The channel's access criteria.
    pub access: AccessCriteria,
    /// CA_system_ID of the store.
    pub ca_system_id: u16,
    /// Cards in the store at start.
    pub cards: usize,
    emm: Option<LiveEmmSource>,
    stats: Arc<FollowerStats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LiveCas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCas")
            .field("access", &self.access)
            .field("ca_system_id", &self.ca_system_id)
            .field("cards", &self.cards)
            .finish_non_exhaustive()
    }
}

impl Drop for LiveCas {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Start {
    keys: Vec<ServiceKey>,
    cards: Vec<CardKeyRecord>,
    /// The key of every group that has cards.
    group_keys: Vec<(GroupId, Key128)>,
    access: AccessCriteria,
    ca_system_id: u16,
    ring: SharedKeyRing,
    stats: Arc<FollowerStats>,
}

/// The follower's findings, sent to the data path's EMM carousel while there is one. The
/// key ring is what the ECMs need, so following goes on without a carousel (none asked
/// for, or the mux dropped it).
struct ToCarousel {
    tx: Option<mpsc::SyncSender<Update>>,
    /// The store's root key, to derive group keys (set once the store is open).
    root: Option<Key128>,
}

impl ToCarousel {
    fn send(&mut self, u: Update) {
        if let Some(tx) = &self.tx {
            if tx.send(u).is_err() {
                self.tx = None;
            }
        }
    }
}

impl StoreSink for ToCarousel {
    fn keys_changed(&mut self, keys: &[ServiceKey]) -> bool {
        self.send(Update::Keys(keys.to_vec()));
        true
    }

    fn cards_changed(&mut self, cards: Vec<CardKeyRecord>) -> bool {
        let Some(root) = self.root.clone() else {
            return true;
        };
        for c in cards {
            let group_key = derive_group_key(&root, GroupId::of(c.serial));
            self.send(Update::Card(c, group_key));
        }
        true
    }
}

impl LiveCas {
    /// Open the store at `db`, load keys and cards, and keep them current. With
    /// `emm_bitrate`, an EMM carousel of all cards sending `emm_format` is made (take it
    /// with [`LiveCas::take_emm_source`]).
    pub fn start(
        db: &StoreLocation,
        access: ChannelAccess,
        emm_bitrate: Option<u64>,
        emm_format: EmmFormat,
    ) -> Result<LiveCas, LiveCasError> {
        let (init_tx, init_rx) = mpsc::sync_channel::<Result<Start, LiveCasError>>(1);
        let (upd_tx, upd_rx) = mpsc::sync_channel::<Update>(UPDATES);
        let (stop, stop_rx) = oneshot::channel();
        let sink = ToCarousel {
            tx: emm_bitrate.is_some().then_some(upd_tx),
            root: None,
        };
        let db = db.clone();
        let thread = std::thread::Builder::new()
            .name("castmux-cas".to_owned())
            .spawn(move || feed_thread(&db, access, init_tx, sink, stop_rx))
            .map_err(|e| LiveCasError::Thread(e.to_string()))?;
        let start = match init_rx.recv() {
            Ok(r) => r?,
            Err(_) => return Err(LiveCasError::Thread("it ended at start".to_owned())),
        };
        let emm = emm_bitrate.map(|bps| {
            let mut carousel = EmmCarousel::with_layout(bps, emm_format.layout(start.ca_system_id));
            carousel.set_service_keys(start.keys.clone());
            for (group, key) in &start.group_keys {
                carousel.set_group_key(*group, key.clone());
            }
            for c in &start.cards {
                carousel.upsert_card(c.serial, c.card_key.clone(), c.entitlements.clone(), false);
            }
            LiveEmmSource {
                carousel,
                updates: upd_rx,
            }
        });
        Ok(LiveCas {
            ring: start.ring,
            access: start.access,
            ca_system_id: start.ca_system_id,
            cards: start.cards.len(),
            emm,
            stats: start.stats,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The store follower's counters (rotations, key changes, store errors, age).
    pub fn follower_stats(&self) -> Arc<FollowerStats> {
        Arc::clone(&self.stats)
    }

    /// The EMM source for the mux (once).
    pub fn take_emm_source(&mut self) -> Option<LiveEmmSource> {
        self.emm.take()
    }
}

fn feed_thread(
    db: &StoreLocation,
    access: ChannelAccess,
    init_tx: mpsc::SyncSender<Result<Start, LiveCasError>>,
    mut sink: ToCarousel,
    stop: oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = init_tx.send(Err(LiveCasError::Thread(format!("tokio runtime: {e}"))));
            return;
        }
    };
    rt.block_on(async move {
        let start = async {
            let store = Store::open(db).await?;
            let access = match &access {
                ChannelAccess::Criteria(a) => *a,
                ChannelAccess::Packages(names) => store.package_bits(names).await?,
            };
            let (follower, snapshot) = StoreFollower::start(store, true).await?;
            Ok::<_, StoreError>((follower, access, snapshot))
        };
        let (follower, access, snapshot) = match start.await {
            Ok(v) => v,
            Err(e) => {
                let _ = init_tx.send(Err(e.into()));
                return;
            }
        };
        let root = follower.store().root_key().clone();
        let mut group_keys: Vec<(GroupId, Key128)> = Vec::new();
        for c in &snapshot.cards {
            let group = GroupId::of(c.serial);
            // the cards come in serial order: one derivation per group
            if group_keys.last().is_none_or(|(g, _)| *g != group) {
                group_keys.push((group, derive_group_key(&root, group)));
            }
        }
        sink.root = Some(root);
        let _ = init_tx.send(Ok(Start {
            keys: snapshot.keys,
            cards: snapshot.cards,
            group_keys,
            access,
            ca_system_id: follower.store().ca_system_id(),
            ring: follower.ring(),
            stats: follower.stats(),
        }));
        let store = follower.store().clone();
        follower
            .run(&mut sink, async {
                let _ = stop.await;
            })
            .await;
        store.close().await;
    });
}
