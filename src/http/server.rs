//! Serving connections: the shared accept loop admits them, hyper speaks HTTP/1.1 on each,
//! the router answers. Every wait has a bound (see the module doc of [`super`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tower_service::Service;

use super::rest::ApiError;
use super::{HttpLimits, HttpStats};
use crate::net::{AcceptLoop, Handshake, Shutdown};

/// Largest request head (request line and headers). hyper's floor is 8 KiB; a TVCAS call
/// with a long name and info is well under 2 KiB.
const MAX_HEAD: usize = 16 * 1024;

/// Time a connection past its age limit gets to finish its request before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serve `listener` until `shutdown`: one task per admitted connection; on shutdown every
/// connection is dropped and the function returns.
pub(super) async fn run(
    router: Router,
    limits: HttpLimits,
    stats: Arc<HttpStats>,
    listener: TcpListener,
    shutdown: Shutdown,
) {
    let accept = AcceptLoop::new("http", limits.accept, stats.accept.clone());
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, "http: serving");
    }
    accept
        .run(
            &listener,
            JoinSet::new(),
            shutdown.wait(),
            |sock, peer, hs| connection(sock, peer, hs, router.clone(), limits, stats.clone()),
        )
        .await;
    tracing::info!("http: stopped");
}

/// One connection: HTTP/1.1 with keep-alive until the peer closes, goes quiet past the head
/// timeout, or the connection reaches its age limit.
async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    hs: Handshake,
    router: Router,
    limits: HttpLimits,
    stats: Arc<HttpStats>,
) {
    // the first request head ends the accept loop's handshake deadline; hyper's own head
    // timeout covers every later wait for a request
    let hs = Arc::new(Mutex::new(hs));
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        hs.lock().unwrap_or_else(|e| e.into_inner()).done();
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        let stats = stats.clone();
        async move {
            let answer = async {
                futures::future::poll_fn(|cx| {
                    <Router as Service<Request<Incoming>>>::poll_ready(&mut router, cx)
                })
                .await?;
                router.call(req).await
            };
            match tokio::time::timeout(limits.request_timeout, answer).await {
                Ok(res) => res,
                Err(_) => {
                    stats.timeouts.fetch_add(1, Relaxed);
                    Ok(ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "REQUEST_TIMEOUT",
                        "the request did not complete in time",
                    )
                    .into_response())
                }
            }
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(sock), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = tokio::time::sleep(limits.max_connection_age) => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        // a peer that vanished or sent garbage: its business, not the server's
        tracing::debug!(%peer, error = %e, "http: connection ended with an error");
    }
}
