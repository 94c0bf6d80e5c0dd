//! The newcamd card server: one card, many clients.
//!
//! Each connection runs as a tokio task: 14 random bytes, login under the login key,
//! ACK/NAK, then requests under the session key until the peer leaves, goes idle or
//! sends a frame that does not decrypt. Connections come through the shared accept loop
//! ([`crate::net::accept`]): at most `max_connections`, a share of them per address, and
//! the login within the handshake timeout. The card sits behind one mutex together with
//! the service limiter and the ECM cache; the lock is held only for the card call
//! (microseconds), never across an await.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::backend::{CardBackend, EmmResult};
use super::conn::{read_frame, write_frame};
use super::crypto::{DesKey14, DES_KEY_LEN};
use super::error::NewcamdError;
use super::frame::{FrameHeader, Message};
use super::limits::{CachedAnswer, EcmCache, ServiceLimiter, ServiceVerdict};
use super::messages::{self as msgs, CardData, CwPair, Login};
use super::stats::{bump, NewcamdStats, StatsSnapshot};
use super::users::{User, Users};
use crate::net::{AcceptLimits, AcceptLoop, Handshake};

/// Settings of a newcamd server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The configured 14-byte DES key (shared with the clients).
    pub des_key: DesKey14,
    /// Who may log in.
    pub users: Users,
    /// Services (customData service ids) the card decrypts at once. Default 2.
    pub max_services: usize,
    /// A service with no ECM for this long frees its slot. Default 10 s.
    pub service_idle: Duration,
    /// A session with no message for this long is closed. Default 120 s.
    pub idle_timeout: Duration,
    /// Delay before a login refusal is sent (slows password guessing). Default 1 s.
    pub login_fail_delay: Duration,
    /// Connection bounds: at most 256 open, 192 from one address, and 5 s from connect to
    /// a successful login (the handshake). Default [`AcceptLimits::with_max`]`(256)`.
    pub accept: AcceptLimits,
    /// How long an ECM answer is served from the cache. Default 10 s.
    pub ecm_cache_ttl: Duration,
    /// ECM answers the cache holds at most. Default 1024.
    pub ecm_cache_entries: usize,
}

impl ServerConfig {
    /// Defaults for everything but the key and users.
    pub fn new(des_key: DesKey14, users: Users) -> ServerConfig {
        ServerConfig {
            des_key,
            users,
            max_services: 2,
            service_idle: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            login_fail_delay: Duration::from_secs(1),
            accept: AcceptLimits::with_max(256),
            ecm_cache_ttl: Duration::from_secs(10),
            ecm_cache_entries: 1024,
        }
    }
}

/// The card and what guards its use.
struct CardState<B> {
    card: B,
    limiter: ServiceLimiter,
    cache: EcmCache,
    /// When a refused service was last logged, so a client retrying every 100 ms
    /// does not flood the log (the counter still counts each).
    refusal_logged: Vec<(u16, Instant)>,
}

struct Shared<B> {
    cfg: ServerConfig,
    card: Mutex<CardState<B>>,
    stats: NewcamdStats,
    caid: u16,
    serial: u64,
    providers: Vec<u32>,
    session_no: AtomicU32,
    /// Numbers the logged-in sessions; with the service id it names an ECM stream.
    sessions: AtomicU64,
}

/// A newcamd server for one card.
pub struct NewcamdServer<B: CardBackend> {
    shared: Arc<Shared<B>>,
}

impl<B: CardBackend> NewcamdServer<B> {
    /// A server for `card` with `cfg`.
    pub fn new(cfg: ServerConfig, card: B) -> NewcamdServer<B> {
        let caid = card.caid();
        let serial = card.serial();
        let mut providers = card.provider_ids();
        if providers.is_empty() {
            providers.push(0);
        }
        providers.truncate(msgs::MAX_PROVIDERS);
        let state = CardState {
            card,
            limiter: ServiceLimiter::new(cfg.max_services, cfg.service_idle),
            cache: EcmCache::new(cfg.ecm_cache_entries, cfg.ecm_cache_ttl),
            refusal_logged: Vec::new(),
        };
        NewcamdServer {
            shared: Arc::new(Shared {
                cfg,
                card: Mutex::new(state),
                stats: NewcamdStats::default(),
                caid,
                serial,
                providers,
                session_no: AtomicU32::new(0),
                sessions: AtomicU64::new(0),
            }),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Accept clients on `listener` until `shutdown` completes; then close all sessions.
    pub async fn run(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), NewcamdError> {
        let acceptor = AcceptLoop::new(
            "newcamd",
            self.shared.cfg.accept,
            self.shared.stats.accept.clone(),
        );
        acceptor
            .run(
                &listener,
                JoinSet::new(),
                shutdown,
                |stream, peer, handshake| session(self.shared.clone(), stream, peer, handshake),
            )
            .await;
        Ok(())
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn session<B: CardBackend>(
    sh: Arc<Shared<B>>,
    stream: TcpStream,
    peer: SocketAddr,
    handshake: Handshake,
) {
    match serve(&sh, stream, peer, handshake).await {
        Ok(()) => debug!(%peer, "newcamd: session closed"),
        Err(NewcamdError::Closed(_)) => debug!(%peer, "newcamd: client left"),
        Err(NewcamdError::Timeout(what)) => {
            bump(&sh.stats.idle_timeouts);
            info!(%peer, "newcamd: {what} timed out, session closed");
        }
        Err(
            e @ (NewcamdError::Checksum
            | NewcamdError::FrameLength(_)
            | NewcamdError::Frame(_)
            | NewcamdError::Unexpected { .. }),
        ) => {
            bump(&sh.stats.bad_frames);
            warn!(%peer, "newcamd: {e}; connection closed");
        }
        Err(e) => debug!(%peer, "newcamd: session ended: {e}"),
    }
}

/// Log in, then serve requests until the client goes.
async fn serve<B: CardBackend>(
    sh: &Shared<B>,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut handshake: Handshake,
) -> Result<(), NewcamdError> {
    let mut nonce = [0u8; DES_KEY_LEN];
    getrandom::getrandom(&mut nonce)
        .map_err(|e| NewcamdError::Io(std::io::Error::other(e.to_string())))?;
    stream.write_all(&nonce).await?;
    let login_key = sh.cfg.des_key.login_key(&nonce);

    // the accept loop closes a connection that has not logged in within the handshake
    // timeout; the idle timeout here only backs it up
    let (hdr, msg) = match read_frame(&mut stream, &login_key, sh.cfg.idle_timeout, "login").await {
        Ok(f) => f,
        Err(
            e @ (NewcamdError::Checksum | NewcamdError::FrameLength(_) | NewcamdError::Frame(_)),
        ) => {
            // most likely another DES key; slow down a peer trying keys
            tokio::time::sleep(sh.cfg.login_fail_delay).await;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let reply_hdr = FrameHeader {
        msg_id: hdr.msg_id,
        ..FrameHeader::default()
    };
    let login = Login::parse(&msg)?;
    let user = match sh.cfg.users.get(&login.user) {
        Some(u) if u.password_matches(&login.crypt_password) => u.clone(),
        found => {
            bump(&sh.stats.login_failures);
            let why = if found.is_some() {
                "wrong password"
            } else {
                "unknown user"
            };
            warn!(%peer, user = %login.user, "newcamd: login refused ({why})");
            tokio::time::sleep(sh.cfg.login_fail_delay).await;
            let nak = Message::new(msgs::MSG_CLIENT_2_SERVER_LOGIN_NAK, 0, &[])?;
            write_frame(&mut stream, &reply_hdr, &nak, &login_key).await?;
            return Ok(());
        }
    };
    let ack = Message::new(msgs::MSG_CLIENT_2_SERVER_LOGIN_ACK, 0, &[])?;
    write_frame(&mut stream, &reply_hdr, &ack, &login_key).await?;
    handshake.done();
    bump(&sh.stats.logins);
    let user_id = if user.au {
        1
    } else {
        // non-AU users get a per-session number, as cardservers do
        10 + (sh.session_no.fetch_add(1, Ordering::Relaxed) % 240) as u8
    };
    info!(%peer, user = %user.name, au = user.au, "newcamd: login");
    let session = sh.sessions.fetch_add(1, Ordering::Relaxed);
    let key = sh.cfg.des_key.session_key(user.crypt_password().as_bytes());
    loop {
        let (hdr, msg) = read_frame(&mut stream, &key, sh.cfg.idle_timeout, "idle session").await?;
        if let Some(answer) = handle(sh, &user, user_id, session, &hdr, &msg, peer)? {
            let h = FrameHeader {
                msg_id: hdr.msg_id,
                ..FrameHeader::default()
            };
            write_frame(&mut stream, &h, &answer, &key).await?;
        }
    }
}

/// The answer to one request (none for unknown commands).
fn handle<B: CardBackend>(
    sh: &Shared<B>,
    user: &User,
    user_id: u8,
    session: u64,
    hdr: &FrameHeader,
    msg: &Message,
    peer: SocketAddr,
) -> Result<Option<Message>, NewcamdError> {
    let tag = msg.tag();
    if msgs::is_ecm(tag) {
        let cws = ecm(sh, session, hdr.service_id, msg.as_bytes(), user, peer);
        return msgs::ecm_answer(tag, cws.as_ref()).map(Some);
    }
    if msgs::is_emm(tag) {
        bump(&sh.stats.emm_requests);
        let accepted = if !user.au {
            bump(&sh.stats.emm_not_allowed);
            debug!(%peer, user = %user.name, "newcamd: EMM from a user without AU, not given to the card");
            false
        } else {
            let mut st = lock(&sh.card);
            let result = st.card.emm(msg.as_bytes(), unix_now());
            if result == EmmResult::Applied {
                // entitlements may have changed: no cached answer may outlive them
                st.cache.clear();
            }
            let ok = result != EmmResult::Rejected;
            if ok {
                bump(&sh.stats.emm_accepted);
            } else {
                bump(&sh.stats.emm_rejected);
                debug!(%peer, table_id = tag, "newcamd: EMM rejected by the card");
            }
            ok
        };
        return msgs::emm_answer(tag, accepted).map(Some);
    }
    match tag {
        msgs::MSG_CARD_DATA_REQ => {
            bump(&sh.stats.card_data_requests);
            let cd = CardData {
                user_id,
                caid: sh.caid,
                serial: if user.au { sh.serial } else { 0 },
                providers: sh.providers.iter().map(|&p| (p, [0u8; 8])).collect(),
            };
            cd.encode().map(Some)
        }
        msgs::MSG_KEEPALIVE => {
            bump(&sh.stats.keepalives);
            Message::new(msgs::MSG_KEEPALIVE, 0, &[]).map(Some)
        }
        _ => {
            bump(&sh.stats.unknown_commands);
            debug!(%peer, "newcamd: ignoring command 0x{tag:02x}");
            Ok(None)
        }
    }
}

fn lock<B>(m: &Mutex<CardState<B>>) -> std::sync::MutexGuard<'_, CardState<B>> {
    // a panic elsewhere must not take the card down with it
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decide one ECM: service limit, cache, then the card.
fn ecm<B: CardBackend>(
    sh: &Shared<B>,
    session: u64,
    service_id: u16,
    section: &[u8],
    user: &User,
    peer: SocketAddr,
) -> Option<CwPair> {
    bump(&sh.stats.ecm_requests);
    let now = Instant::now();
    let mut st = lock(&sh.card);
    if st.limiter.check(service_id, now) == ServiceVerdict::Refused {
        bump(&sh.stats.ecm_refused_service_limit);
        let logged = st.refusal_logged.iter().position(|(s, _)| *s == service_id);
        let due = logged.is_none_or(|i| {
            now.saturating_duration_since(st.refusal_logged[i].1) >= sh.cfg.service_idle
        });
        if due {
            warn!(%peer, user = %user.name, service_id, max = sh.cfg.max_services,
                "newcamd: service refused, the card already serves its maximum of services");
            match logged {
                Some(i) => st.refusal_logged[i].1 = now,
                None if st.refusal_logged.len() < 256 => st.refusal_logged.push((service_id, now)),
                None => {}
            }
        }
        return None;
    }
    // one stream per service of a session: the card never lets an ECM older than the
    // one it last answered there replace the keys in use
    let stream = (session << 16) | u64::from(service_id);
    let key = EcmCache::key(section);
    if let Some(hit) = st.cache.get(&key, now) {
        let admitted = match &hit.stamp {
            Some(stamp) => st.card.admit_cached(stream, stamp, unix_now()),
            None => Ok(()),
        };
        if let Err(why) = admitted {
            bump(&sh.stats.ecm_refused_card);
            info!(%peer, user = %user.name, service_id, "newcamd: ECM refused by the card: {why}");
            return None;
        }
        bump(&sh.stats.ecm_cache_hits);
        bump(&sh.stats.ecm_answered);
        return Some(hit.cws);
    }
    match st.card.ecm_on(stream, section, unix_now()) {
        Ok((cws, stamp)) => {
            st.cache.insert(
                key,
                CachedAnswer {
                    cws: cws.clone(),
                    stamp,
                },
                now,
            );
            bump(&sh.stats.ecm_answered);
            debug!(%peer, service_id, "newcamd: ECM answered");
            Some(cws)
        }
        Err(why) => {
            bump(&sh.stats.ecm_refused_card);
            info!(%peer, user = %user.name, service_id, "newcamd: ECM refused by the card: {why}");
            None
        }
    }
}
