//! `type = "memory"`: leases in process memory, lost when the daemon stops.
//! For tests and demos only; judged on the daemon's clock.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use super::record::Record;
use super::{Backend, BackendError, Book, Result};
use crate::lease::{AcquireRequest, Acquisition, Lease, LeaseId, LeaseStatus};

/// `[backends.NAME]` with `type = "memory"`: no settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {}

/// Leases in a map guarded by a mutex; every call is a few map operations.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    records: Mutex<BTreeMap<String, Record>>,
    books: Mutex<BTreeMap<String, Book>>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Record>) -> T) -> Result<T> {
        // A poisoned lock means a panic mid-update elsewhere; the records are
        // plain data updated in one step each, so they are still consistent.
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&mut records))
    }

    fn books(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Book>> {
        // As for the records: each book is replaced in one step.
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn acquire(&self, req: &AcquireRequest) -> Result<Acquisition> {
        self.with(|r| {
            r.entry(req.resource.clone())
                .or_default()
                .acquire(req, SystemTime::now())
        })
    }

    async fn release(&self, resource: &str, id: &LeaseId) -> Result<bool> {
        self.with(|r| {
            r.get_mut(resource)
                .is_some_and(|rec| rec.release(id, SystemTime::now()))
        })
    }

    async fn renew(&self, resource: &str, id: &LeaseId, ttl: Duration) -> Result<Lease> {
        self.with(|r| match r.get_mut(resource) {
            Some(rec) => rec.renew(id, ttl, SystemTime::now()),
            None => Err(BackendError::NotCurrent { evicted: None }),
        })?
    }

    async fn current(&self, resource: &str) -> Result<Option<Lease>> {
        self.with(|r| {
            r.get(resource)
                .and_then(|rec| rec.live(SystemTime::now()).cloned())
        })
    }

    async fn status(&self, resource: &str, id: &LeaseId) -> Result<LeaseStatus> {
        self.with(|r| match r.get(resource) {
            Some(rec) => rec.status(id, SystemTime::now()),
            None => LeaseStatus::NotCurrent { evicted: None },
        })
    }

    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Lease>> {
        let now = SystemTime::now();
        self.with(|r| {
            let start = match after {
                Some(a) => std::ops::Bound::Excluded(a.to_string()),
                None => std::ops::Bound::Included(prefix.to_string()),
            };
            r.range((start, std::ops::Bound::Unbounded))
                .take_while(|(name, _)| name.starts_with(prefix))
                .filter_map(|(_, rec)| rec.live(now).cloned())
                .take(limit)
                .collect()
        })
    }

    async fn force_release(
        &self,
        resource: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Option<Lease>> {
        self.with(|r| {
            r.get_mut(resource)
                .and_then(|rec| rec.force_release(actor, reason, SystemTime::now()))
        })
    }

    async fn book(&self, resource: &str) -> Result<Option<Book>> {
        Ok(self.books().get(resource).cloned())
    }

    async fn write_book(&self, resource: &str, expected: u64, body: &[u8]) -> Result<bool> {
        let mut books = self.books();
        let version = books.get(resource).map_or(0, |b| b.version);
        if version != expected {
            return Ok(false);
        }
        books.insert(
            resource.to_string(),
            Book {
                resource: resource.to_string(),
                body: body.to_vec(),
                version: version + 1,
            },
        );
        Ok(true)
    }

    async fn books(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Book>> {
        // A cursor before the prefix starts at the prefix.
        let start = match after.filter(|a| *a >= prefix) {
            Some(a) => std::ops::Bound::Excluded(a.to_string()),
            None => std::ops::Bound::Included(prefix.to_string()),
        };
        Ok(self
            .books()
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(_, book)| book.clone())
            .take(limit)
            .collect())
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }
}
