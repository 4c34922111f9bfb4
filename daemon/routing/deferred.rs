//! A backend whose engine could not be reached when the daemon started. A
//! daemon that exited instead would crash-loop through every outage (each
//! pod restarted during one would stay down), and take the resources of its
//! other backends down with it. So the daemon starts, answers `UNAVAILABLE`
//! for this backend's resources, reports it `NOT_SERVING`, and keeps
//! connecting in the background with a capped backoff; once connected, every
//! call goes to the engine. A configuration the engine refuses (a wrong
//! password, a missing table) still stops the start: waiting would not fix
//! it. `check-config` stays the strict check that every engine answers.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tracing::{info, warn};

use crate::backend::{self, Backend, BackendConfig, BackendError, Book, ChangeStream, Result};
use crate::lease::{AcquireRequest, Acquisition, Lease, LeaseId, LeaseStatus};

/// First pause between connection attempts; it doubles up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);
/// Failed attempts between two warnings once the backend keeps failing.
const WARN_EVERY: u32 = 10;

/// A backend that is not connected yet; see the module docs.
pub struct Deferred {
    name: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    connected: OnceLock<Arc<dyn Backend>>,
    /// Why the last attempt failed, for the `UNAVAILABLE` answers.
    last_error: Mutex<String>,
}

impl Deferred {
    /// Starts connecting `name` (described by `config`) in the background,
    /// after `first` failed with [`BackendError::Unavailable`] at start.
    pub fn start(
        name: &str,
        config: BackendConfig,
        data_dir: PathBuf,
        first: &BackendError,
    ) -> Self {
        warn!(
            backend = name,
            error = %first,
            "backend unreachable at start: its resources answer UNAVAILABLE, the other backends are served, and the daemon keeps connecting"
        );
        let state = Arc::new(State {
            connected: OnceLock::new(),
            last_error: Mutex::new(first.to_string()),
        });
        let task = tokio::spawn(keep_connecting(
            name.to_string(),
            config,
            data_dir,
            state.clone(),
        ));
        Self {
            name: name.to_string(),
            state,
            task,
        }
    }

    /// The connected backend, or the `UNAVAILABLE` answer.
    fn inner(&self) -> Result<&Arc<dyn Backend>> {
        self.state.connected.get().ok_or_else(|| {
            let last = self
                .state
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default();
            BackendError::unavailable(&self.name, format!("not connected yet ({last})"))
        })
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_connecting(
    name: String,
    config: BackendConfig,
    data_dir: PathBuf,
    state: Arc<State>,
) {
    let mut pause = FIRST_PAUSE;
    let mut failures: u32 = 1;
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
        match backend::connect(&name, &config, &data_dir).await {
            Ok(connected) => {
                info!(
                    backend = name.as_str(),
                    attempts = failures + 1,
                    "backend connected: serving its resources"
                );
                // Only this task sets it.
                let _ = state.connected.set(connected);
                return;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                // An engine that answers but refuses the configuration will
                // not recover by itself: say so louder, keep trying (someone
                // may fix the engine's side).
                let refused = !matches!(e, BackendError::Unavailable { .. });
                if refused || failures.is_multiple_of(WARN_EVERY) {
                    warn!(backend = name.as_str(), attempts = failures, error = %e, "backend still not connected; retrying");
                }
                if let Ok(mut last) = state.last_error.lock() {
                    *last = e.to_string();
                }
            }
        }
    }
}

#[async_trait]
impl Backend for Deferred {
    async fn acquire(&self, req: &AcquireRequest) -> Result<Acquisition> {
        self.inner()?.acquire(req).await
    }
    async fn release(&self, resource: &str, id: &LeaseId) -> Result<bool> {
        self.inner()?.release(resource, id).await
    }
    async fn renew(&self, resource: &str, id: &LeaseId, ttl: Duration) -> Result<Lease> {
        self.inner()?.renew(resource, id, ttl).await
    }
    async fn current(&self, resource: &str) -> Result<Option<Lease>> {
        self.inner()?.current(resource).await
    }
    async fn status(&self, resource: &str, id: &LeaseId) -> Result<LeaseStatus> {
        self.inner()?.status(resource, id).await
    }
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Lease>> {
        self.inner()?.list(prefix, after, limit).await
    }
    async fn force_release(
        &self,
        resource: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Option<Lease>> {
        self.inner()?.force_release(resource, actor, reason).await
    }
    async fn book(&self, resource: &str) -> Result<Option<Book>> {
        self.inner()?.book(resource).await
    }
    async fn write_book(&self, resource: &str, expected: u64, body: &[u8]) -> Result<bool> {
        self.inner()?.write_book(resource, expected, body).await
    }
    async fn books(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Book>> {
        self.inner()?.books(prefix, after, limit).await
    }
    async fn health(&self) -> Result<()> {
        self.inner()?.health().await
    }
    async fn subscribe(&self) -> Result<Option<ChangeStream>> {
        // An error (not `None`, which means "no notifications"): the
        // follower subscribes again once the engine is connected.
        self.inner()?.subscribe().await
    }
}
