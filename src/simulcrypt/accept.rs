//! The TCP side shared by the ECMG server and the mux's EMMG port: accept connections
//! until shutdown, at most a fixed number at once (more are refused, counted and logged),
//! one task each; on shutdown every connection is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Counters the accept loop updates.
pub(crate) struct AcceptCounters<'a> {
    /// Connections accepted.
    pub accepted: &'a AtomicU64,
    /// Connections refused over the limit.
    pub refused: &'a AtomicU64,
}

/// Serve `listener` until `shutdown`: each accepted socket (with TCP_NODELAY) goes to a
/// task made by `serve`. `tasks` may already hold tasks of the server (a UDP loop); they
/// end with it. `what` names the server in log lines.
pub(crate) async fn accept_loop<F, Fut>(
    listener: &TcpListener,
    max_connections: usize,
    what: &'static str,
    counters: AcceptCounters<'_>,
    mut tasks: JoinSet<()>,
    shutdown: impl Future<Output = ()>,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_connections));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let (sock, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "{what}: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    counters.refused.fetch_add(1, Relaxed);
                    tracing::warn!(%peer, max = max_connections, "{what}: too many connections; refusing");
                    continue;
                };
                counters.accepted.fetch_add(1, Relaxed);
                let _ = sock.set_nodelay(true);
                let task = serve(sock, peer);
                tasks.spawn(async move {
                    let _permit = permit;
                    task.await;
                });
            }
        }
    }
    tasks.shutdown().await;
}
