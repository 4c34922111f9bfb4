//! Wake-ups for callers waiting on a resource: a release or force-release
//! through this daemon wakes the waiters at once; changes made elsewhere
//! (another daemon, expiry) are noticed by the waiters' own polling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Per-resource notifiers, created while someone waits and dropped after.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<String, Arc<Notify>>>,
    /// Registered waiters, across resources (for metrics).
    count: AtomicUsize,
}

/// A registration as a waiter on one resource; deregisters on drop.
pub struct Waiter<'a> {
    waiters: &'a Waiters,
    resource: String,
    notify: Arc<Notify>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        // The map holds no invariant a panic could break.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers interest in `resource`.
    pub fn register(&self, resource: &str) -> Waiter<'_> {
        let notify = self.lock().entry(resource.to_string()).or_default().clone();
        self.count.fetch_add(1, Ordering::Relaxed);
        Waiter {
            waiters: self,
            resource: resource.to_string(),
            notify,
        }
    }

    /// Wakes everyone waiting on `resource`.
    pub fn wake(&self, resource: &str) {
        if let Some(notify) = self.lock().get(resource) {
            notify.notify_waiters();
        }
    }

    /// Number of resources with waiters (for metrics and tests).
    pub fn resources_waited_on(&self) -> usize {
        self.lock().len()
    }

    /// Number of callers waiting, across resources (for metrics).
    pub fn waiting(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

impl Waiter<'_> {
    /// The notifier; create the `notified()` future before checking the
    /// resource so that a wake-up in between is not lost.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.waiters.count.fetch_sub(1, Ordering::Relaxed);
        let mut map = self.waiters.lock();
        // Two references left: the map's and ours.
        if Arc::strong_count(&self.notify) <= 2 {
            map.remove(&self.resource);
        }
    }
}
