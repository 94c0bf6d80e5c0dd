//! A card on a newcamd server as a [`CwSource`] (what tsdecrypt does): ECMs go to the
//! server from a control thread on tokio, answers come back through a channel, so the
//! data path never waits on the network. The connection is kept alive and re-made with
//! backoff when it drops; an ECM that finds no connection is answered as refused.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use csa::Parity;

use super::newcamd::{DesKey14, NewcamdClient, NewcamdError};
use super::player::{CwAnswer, CwSource};
use crate::scramble::cw::Cw;

/// Requests waiting for the server, per kind; more are dropped (the newest ECM matters).
/// ECMs and EMMs wait apart and ECMs go first: an EMM carousel sends tens of EMMs a
/// second, which must not crowd out the ECM the picture waits for.
const QUEUE: usize = 16;
/// How often an idle connection is kept alive.
const KEEPALIVE: Duration = Duration::from_secs(30);

enum Request {
    Ecm(Vec<u8>, u16),
    Emm(Vec<u8>),
}

/// Where and how to log in.
#[derive(Clone)]
pub struct NewcamdLogin {
    /// HOST:PORT of the server.
    pub addr: String,
    /// User name.
    pub user: String,
    /// Password (clear; the protocol sends its MD5-crypt).
    pub password: String,
    /// The 14-byte DES key.
    pub des_key: DesKey14,
    /// Limit for each network step.
    pub timeout: Duration,
}

impl std::fmt::Debug for NewcamdLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewcamdLogin")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A newcamd server's card as a CW source.
pub struct NewcamdSource {
    ecms: Option<tokio::sync::mpsc::Sender<Request>>,
    emms: Option<tokio::sync::mpsc::Sender<Request>>,
    answers: mpsc::Receiver<CwAnswer>,
    service_id: Arc<AtomicU16>,
    caid: u16,
    thread: Option<JoinHandle<()>>,
    /// Requests dropped because the queue to the server was full.
    pub dropped: u64,
}

impl std::fmt::Debug for NewcamdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewcamdSource")
            .field("caid", &self.caid)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl NewcamdSource {
    /// Log in now (so a wrong key or password is an error at start), then serve requests
    /// from a control thread.
    pub fn connect(login: NewcamdLogin) -> Result<NewcamdSource, NewcamdError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(NewcamdError::Io)?;
        let client = rt.block_on(connect(&login))?;
        let caid = client.card_data().caid;
        let (ecm_tx, ecm_rx) = tokio::sync::mpsc::channel(QUEUE);
        let (emm_tx, emm_rx) = tokio::sync::mpsc::channel(QUEUE);
        let (ans_tx, ans_rx) = mpsc::sync_channel(QUEUE);
        let service_id = Arc::new(AtomicU16::new(0));
        let thread = std::thread::Builder::new()
            .name("castmux-newcamd".to_owned())
            .spawn(move || rt.block_on(serve(client, login, ecm_rx, emm_rx, ans_tx)))
            .map_err(NewcamdError::Io)?;
        Ok(NewcamdSource {
            ecms: Some(ecm_tx),
            emms: Some(emm_tx),
            answers: ans_rx,
            service_id,
            caid,
            thread: Some(thread),
            dropped: 0,
        })
    }

    /// The CAID the server's card announced.
    pub fn caid(&self) -> u16 {
        self.caid
    }

    /// Queue a request; false if it was dropped (queue full or the thread gone).
    fn send(&mut self, r: Request) -> bool {
        let tx = match r {
            Request::Ecm(..) => &self.ecms,
            Request::Emm(..) => &self.emms,
        };
        let Some(tx) = tx else {
            return false;
        };
        if tx.try_send(r).is_err() {
            self.dropped += 1;
            return false;
        }
        true
    }
}

impl Drop for NewcamdSource {
    fn drop(&mut self) {
        self.ecms = None;
        self.emms = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl CwSource for NewcamdSource {
    fn submit_ecm(&mut self, section: &[u8], _now: i64) -> bool {
        let sid = self.service_id.load(Ordering::Relaxed);
        self.send(Request::Ecm(section.to_vec(), sid))
    }

    fn submit_emm(&mut self, section: &[u8], _now: i64) {
        self.send(Request::Emm(section.to_vec()));
    }

    fn poll(&mut self) -> Option<CwAnswer> {
        self.answers.try_recv().ok()
    }

    fn wait(&mut self, timeout: Duration) -> Option<CwAnswer> {
        self.answers.recv_timeout(timeout).ok()
    }

    fn set_service(&mut self, service_id: u16) {
        self.service_id.store(service_id, Ordering::Relaxed);
    }
}

async fn connect(login: &NewcamdLogin) -> Result<NewcamdClient, NewcamdError> {
    NewcamdClient::connect(
        login.addr.as_str(),
        &login.user,
        &login.password,
        &login.des_key,
        login.timeout,
    )
    .await
}

async fn serve(
    client: NewcamdClient,
    login: NewcamdLogin,
    mut ecms: tokio::sync::mpsc::Receiver<Request>,
    mut emms: tokio::sync::mpsc::Receiver<Request>,
    answers: mpsc::SyncSender<CwAnswer>,
) {
    let mut client = Some(client);
    let mut backoff = Duration::from_millis(500);
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    loop {
        let req = tokio::select! {
            biased;
            r = ecms.recv() => match r {
                Some(r) => r,
                None => return,
            },
            r = emms.recv() => match r {
                Some(r) => r,
                None => return,
            },
            _ = keepalive.tick() => {
                if let Some(c) = &mut client {
                    if c.keepalive().await.is_err() {
                        client = None;
                    }
                }
                continue;
            }
        };
        if client.is_none() {
            match connect(&login).await {
                Ok(c) => {
                    tracing::info!(addr = %login.addr, "newcamd: connected again");
                    client = Some(c);
                    backoff = Duration::from_millis(500);
                }
                Err(e) => {
                    tracing::warn!(addr = %login.addr, error = %e, "newcamd: reconnect failed");
                    if matches!(req, Request::Ecm(..)) {
                        let _ = answers.try_send(CwAnswer::refused(format!(
                            "newcamd server {} unreachable: {e}",
                            login.addr
                        )));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
        }
        let Some(c) = &mut client else {
            continue;
        };
        match req {
            Request::Ecm(section, sid) => {
                let answer = match c.ecm(sid, &section).await {
                    Ok(Some(pair)) => {
                        let parity = if section.first() == Some(&0x81) {
                            Parity::Odd
                        } else {
                            Parity::Even
                        };
                        match (Cw::from_slice(&pair.even), Cw::from_slice(&pair.odd)) {
                            (Ok(even), Ok(odd)) => CwAnswer::Cws { parity, even, odd },
                            _ => CwAnswer::refused("newcamd answer with bad CWs"),
                        }
                    }
                    Ok(None) => CwAnswer::refused(
                        "the newcamd server refused the ECM (card not entitled, expired, a replay, or at its service limit)",
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "newcamd: connection lost");
                        client = None;
                        CwAnswer::refused(format!("newcamd: {e}"))
                    }
                };
                let _ = answers.try_send(answer);
            }
            Request::Emm(section) => {
                if let Err(e) = c.emm(&section).await {
                    tracing::debug!(error = %e, "newcamd: EMM not taken");
                    if matches!(e, NewcamdError::Io(_) | NewcamdError::Closed(_)) {
                        client = None;
                    }
                }
            }
        }
    }
}
