//! The one control-plane runtime of a process: SimulCrypt links, the EMMG port, (next) the
//! HTTP server and timers all run on it, instead of a runtime per channel. One shutdown
//! signal reaches every task started with [`ControlPlane::spawn`]; [`ControlPlane::shutdown`]
//! raises it and waits (bounded) until each has confirmed by ending.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Threads of the control-plane runtime: its work is small messages, never packets.
const WORKERS: usize = 1;

/// The runtime, its shutdown signal and the tasks that obey it.
#[derive(Debug)]
pub struct ControlPlane {
    rt: tokio::runtime::Runtime,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<(String, JoinHandle<()>)>>,
}

/// What a task started on the control plane waits on: resolves once shutdown is asked.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Resolves when the process shuts down (at once if it already does).
    pub async fn wait(mut self) {
        // an Err means the sender is gone: that is a shutdown too
        let _ = self.0.wait_for(|down| *down).await;
    }
}

impl ControlPlane {
    /// Start the runtime (one thread, `castmux-control`).
    pub fn start() -> std::io::Result<ControlPlane> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("castmux-control")
            .enable_all()
            .build()?;
        let (shutdown, _) = watch::channel(false);
        Ok(ControlPlane {
            rt,
            shutdown,
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// The runtime's handle, for libraries that spawn their own tasks on it (SimulCrypt
    /// ECMG links end when their last handle is dropped).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.rt.handle()
    }

    /// The shutdown signal, for a task to select on.
    pub fn shutdown_signal(&self) -> Shutdown {
        Shutdown(self.shutdown.subscribe())
    }

    /// Run `fut` on the control plane; `name` is logged if it does not end at shutdown.
    /// The task must end once the signal from [`ControlPlane::shutdown_signal`] fires.
    pub fn spawn(&self, name: &str, fut: impl Future<Output = ()> + Send + 'static) {
        let h = self.rt.spawn(fut);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|(_, t)| !t.is_finished());
        tasks.push((name.to_owned(), h));
    }

    /// Run `fut` to completion on the control plane from a plain thread (setup steps).
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// Raise the shutdown signal and wait up to `limit` for every spawned task to end;
    /// returns how many did not (each logged), then drops the runtime.
    pub fn shutdown(self, limit: Duration) -> usize {
        let _ = self.shutdown.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let deadline = tokio::time::Instant::now() + limit;
        let n = self.rt.block_on(async {
            let mut unconfirmed = 0;
            for (name, mut t) in tasks {
                if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                    unconfirmed += 1;
                    tracing::warn!(task = %name, "control-plane task did not stop in time");
                    t.abort();
                }
            }
            unconfirmed
        });
        self.rt.shutdown_timeout(Duration::from_millis(100));
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn every_task_obeys_the_one_signal() {
        let cp = ControlPlane::start().unwrap();
        let ended = Arc::new(AtomicUsize::new(0));
        for i in 0..5 {
            let sig = cp.shutdown_signal();
            let ended = Arc::clone(&ended);
            cp.spawn(&format!("t{i}"), async move {
                sig.wait().await;
                ended.fetch_add(1, Ordering::Relaxed);
            });
        }
        // one that ignores the signal is reported, not waited for forever
        cp.spawn("stubborn", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let t = std::time::Instant::now();
        assert_eq!(cp.shutdown(Duration::from_millis(300)), 1);
        assert_eq!(ended.load(Ordering::Relaxed), 5);
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
