//! `type = "embedded"` (the default): leases in one redb file in the data
//! directory. Zero set-up, survives restarts, single daemon: redb holds an
//! exclusive lock on the file, so a second daemon on the same file refuses to
//! start. Judged on the daemon's clock.
//!
//! Every resource keeps one [`Record`] (JSON in a redb table) that outlives
//! its leases, so fences survive release, expiry and restarts. Writes are
//! durable (fsync) before the call returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::record::Record;
use super::{Backend, BackendError, Book, Result};
use crate::lease::{AcquireRequest, Acquisition, Lease, LeaseId, LeaseStatus};

/// resource name → JSON-encoded [`Record`].
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// resource name → the version of its reservation book (8 bytes, big
/// endian) followed by the book.
const BOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new("books");

/// redb's page cache. Its default (1 GiB) would let a long-lived daemon grow
/// past a container's memory limit (the Helm chart's is 256 MiB); a lock
/// table of a few thousand records fits many times over in this.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// `[backends.NAME]` with `type = "embedded"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Path of the database file; relative paths are under the data
    /// directory. Default: `locks.redb`.
    pub path: Option<PathBuf>,
}

/// The database file of `config`: relative paths under `data_dir`.
fn store_path(config: &EmbeddedConfig, data_dir: &Path) -> PathBuf {
    data_dir.join(config.path.as_deref().unwrap_or(Path::new("locks.redb")))
}

/// How many read transactions run at once. Reads do not block each other
/// (redb keeps snapshots), so a few cover two cores; more would only park
/// threads.
const READERS: usize = 4;

/// A redb database shared by blocking tasks.
///
/// Each transaction runs on tokio's blocking pool, but only once it can
/// proceed: redb runs one write transaction at a time (and a durable commit
/// waits for the disk), so a call waits for its turn as a task, not as a
/// parked thread. Without the gates a burst of writes parked one pool
/// thread each on `begin_write`: about 40 threads under a steady 125 calls
/// a second, each with its own allocator arena (RELIABILITY.md, "Resource
/// soak").
pub struct EmbeddedBackend {
    name: String,
    db: Arc<Database>,
    writer: Arc<Semaphore>,
    readers: Arc<Semaphore>,
}

impl EmbeddedBackend {
    /// Opens (creating if needed) the database file of `config`.
    pub async fn open(name: &str, config: &EmbeddedConfig, data_dir: &Path) -> Result<Self> {
        let path = store_path(config, data_dir);
        let owner = name.to_string();
        let db = tokio::task::spawn_blocking(move || -> Result<Database> {
            // Every lease id is in the store: private, like its directory.
            if let Some(parent) = path.parent() {
                crate::private::create_dir(parent).map_err(|e| {
                    BackendError::config(&owner, format!("cannot create {}: {e}", parent.display()))
                })?;
            }
            crate::private::check_file(&path, "the embedded store")
                .map_err(|e| BackendError::config(&owner, e))?;
            if !path.exists() {
                create_whole(&path).map_err(|e| {
                    BackendError::config(&owner, format!("cannot create {}: {e}", path.display()))
                })?;
            }
            crate::private::create_file(&path).map_err(|e| {
                BackendError::config(&owner, format!("cannot create {}: {e}", path.display()))
            })?;
            let db = redb::Builder::new()
                .set_cache_size(CACHE_BYTES)
                .create(&path)
                .map_err(|e| {
                    BackendError::config(&owner, format!("cannot open {}: {e}", path.display()))
                })?;
            let txn = db
                .begin_write()
                .map_err(|e| BackendError::internal(&owner, e))?;
            txn.open_table(RECORDS)
                .map_err(|e| BackendError::internal(&owner, e))?;
            txn.open_table(BOOKS)
                .map_err(|e| BackendError::internal(&owner, e))?;
            txn.commit()
                .map_err(|e| BackendError::internal(&owner, e))?;
            Ok(db)
        })
        .await
        .map_err(|e| BackendError::internal(name, e))??;
        Ok(Self {
            name: name.to_string(),
            db: Arc::new(db),
            writer: Arc::new(Semaphore::new(1)),
            readers: Arc::new(Semaphore::new(READERS)),
        })
    }

    /// What `check-config` says of the store of `config`, creating and
    /// changing nothing: an existing file is opened (its permissions
    /// checked, its records readable); a missing one must be creatable,
    /// under a directory the daemon could write to.
    pub async fn check(name: &str, config: &EmbeddedConfig, data_dir: &Path) -> Result<String> {
        let path = store_path(config, data_dir);
        let owner = name.to_string();
        tokio::task::spawn_blocking(move || -> Result<String> {
            let refuse = |e: String| BackendError::config(&owner, e);
            crate::private::check_file(&path, "the embedded store").map_err(refuse)?;
            if path.exists() {
                let db = redb::Builder::new()
                    .set_cache_size(CACHE_BYTES)
                    .open(&path)
                    .map_err(|e| refuse(format!("cannot open {}: {e}", path.display())))?;
                let read = db
                    .begin_read()
                    .map_err(|e| BackendError::internal(&owner, e))?;
                match read.open_table(RECORDS) {
                    Ok(_) | Err(redb::TableError::TableDoesNotExist(_)) => {}
                    Err(e) => return Err(refuse(format!("cannot read {}: {e}", path.display()))),
                }
                return Ok(format!("{}: opened", path.display()));
            }
            // The first directory up the path that exists is where the
            // daemon would create the rest.
            let existing = path
                .ancestors()
                .skip(1)
                .find(|dir| dir.exists())
                .unwrap_or(Path::new("/"));
            if !existing.is_dir() {
                return Err(refuse(format!(
                    "cannot create {}: {} is not a directory",
                    path.display(),
                    existing.display()
                )));
            }
            nix::unistd::access(
                existing,
                nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            )
            .map_err(|e| {
                refuse(format!(
                    "cannot create {}: {} is not writable: {e}",
                    path.display(),
                    existing.display()
                ))
            })?;
            Ok(format!(
                "{}: does not exist yet; the daemon creates it at its first start",
                path.display()
            ))
        })
        .await
        .map_err(|e| BackendError::internal(name, e))?
    }

    /// Waits for a place at `gate`. The permit moves into the blocking task
    /// and is returned when the transaction ends, also when the call that
    /// started it has gone (its deadline passed): the next transaction
    /// cannot start before this one is done anyway.
    async fn turn(&self, gate: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit> {
        gate.clone()
            .acquire_owned()
            .await
            .map_err(|e| BackendError::internal(&self.name, e))
    }

    /// Runs `f` on the record of `resource` in one write transaction and
    /// stores the record back if `f` changed it.
    async fn update<T: Send + 'static>(
        &self,
        resource: &str,
        f: impl FnOnce(&mut Record, SystemTime) -> T + Send + 'static,
    ) -> Result<T> {
        let (db, name, resource) = (self.db.clone(), self.name.clone(), resource.to_string());
        let turn = self.turn(&self.writer).await?;
        tokio::task::spawn_blocking(move || -> Result<T> {
            let _turn = turn;
            let err = |e: &dyn std::fmt::Display| BackendError::internal(&name, e);
            let txn = db.begin_write().map_err(|e| err(&e))?;
            let out = {
                let mut table = txn.open_table(RECORDS).map_err(|e| err(&e))?;
                let before = table
                    .get(resource.as_str())
                    .map_err(|e| err(&e))?
                    .map(|bytes| bytes.value().to_vec());
                let mut record = match &before {
                    Some(bytes) => decode(&name, bytes)?,
                    None => Record::default(),
                };
                let out = f(&mut record, SystemTime::now());
                let after = serde_json::to_vec(&record).map_err(|e| err(&e))?;
                if before.as_deref() != Some(after.as_slice()) {
                    table
                        .insert(resource.as_str(), after.as_slice())
                        .map_err(|e| err(&e))?;
                }
                out
            };
            txn.commit().map_err(|e| err(&e))?;
            Ok(out)
        })
        .await
        .map_err(|e| BackendError::internal(&self.name, e))?
    }

    /// Runs `f` over the records in a read transaction.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static str, &'static [u8]>, &str) -> Result<T>
        + Send
        + 'static,
    ) -> Result<T> {
        self.read_table(RECORDS, f).await
    }

    /// Runs `f` over `table` in a read transaction.
    async fn read_table<T: Send + 'static>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static str, &'static [u8]>, &str) -> Result<T>
        + Send
        + 'static,
    ) -> Result<T> {
        let (db, name) = (self.db.clone(), self.name.clone());
        let turn = self.turn(&self.readers).await?;
        tokio::task::spawn_blocking(move || -> Result<T> {
            let _turn = turn;
            let txn = db
                .begin_read()
                .map_err(|e| BackendError::internal(&name, e))?;
            let table = txn
                .open_table(table)
                .map_err(|e| BackendError::internal(&name, e))?;
            f(&table, &name)
        })
        .await
        .map_err(|e| BackendError::internal(&self.name, e))?
    }

    async fn record(&self, resource: &str) -> Result<Option<Record>> {
        let resource = resource.to_string();
        self.read(move |table, name| {
            match table
                .get(resource.as_str())
                .map_err(|e| BackendError::internal(name, e))?
            {
                Some(bytes) => decode(name, bytes.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }
}

/// A stored book: its version, then its body.
fn decode_book(name: &str, resource: &str, bytes: &[u8]) -> Result<Book> {
    let (version, body) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| BackendError::internal(name, "corrupt reservation book"))?;
    Ok(Book {
        resource: resource.to_string(),
        body: body.to_vec(),
        version: u64::from_be_bytes(*version),
    })
}

fn decode(name: &str, bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes)
        .map_err(|e| BackendError::internal(name, format!("corrupt record: {e}")))
}

#[async_trait]
impl Backend for EmbeddedBackend {
    async fn acquire(&self, req: &AcquireRequest) -> Result<Acquisition> {
        let req = req.clone();
        self.update(&req.resource.clone(), move |rec, now| {
            rec.acquire(&req, now)
        })
        .await
    }

    async fn release(&self, resource: &str, id: &LeaseId) -> Result<bool> {
        let id = id.clone();
        self.update(resource, move |rec, now| rec.release(&id, now))
            .await
    }

    async fn renew(&self, resource: &str, id: &LeaseId, ttl: Duration) -> Result<Lease> {
        let id = id.clone();
        self.update(resource, move |rec, now| rec.renew(&id, ttl, now))
            .await?
    }

    async fn book(&self, resource: &str) -> Result<Option<Book>> {
        let resource = resource.to_string();
        self.read_table(BOOKS, move |table, name| {
            match table
                .get(resource.as_str())
                .map_err(|e| BackendError::internal(name, e))?
            {
                Some(bytes) => decode_book(name, &resource, bytes.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn write_book(&self, resource: &str, expected: u64, body: &[u8]) -> Result<bool> {
        let (db, name) = (self.db.clone(), self.name.clone());
        let (resource, body) = (resource.to_string(), body.to_vec());
        let turn = self.turn(&self.writer).await?;
        tokio::task::spawn_blocking(move || -> Result<bool> {
            let _turn = turn;
            let err = |e: &dyn std::fmt::Display| BackendError::internal(&name, e);
            let txn = db.begin_write().map_err(|e| err(&e))?;
            {
                let mut table = txn.open_table(BOOKS).map_err(|e| err(&e))?;
                let version = match table.get(resource.as_str()).map_err(|e| err(&e))? {
                    Some(bytes) => decode_book(&name, &resource, bytes.value())?.version,
                    None => 0,
                };
                if version != expected {
                    return Ok(false);
                }
                let mut stored = (version + 1).to_be_bytes().to_vec();
                stored.extend_from_slice(&body);
                table
                    .insert(resource.as_str(), stored.as_slice())
                    .map_err(|e| err(&e))?;
            }
            txn.commit().map_err(|e| err(&e))?;
            Ok(true)
        })
        .await
        .map_err(|e| BackendError::internal(&self.name, e))?
    }

    async fn books(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Book>> {
        // A cursor before the prefix starts at the prefix.
        let after = after.filter(|a| *a >= prefix);
        let (prefix, after) = (prefix.to_string(), after.map(str::to_string));
        self.read_table(BOOKS, move |table, name| {
            let err = |e: redb::StorageError| BackendError::internal(name, e);
            let range = match &after {
                Some(a) => table.range::<&str>((
                    std::ops::Bound::Excluded(a.as_str()),
                    std::ops::Bound::Unbounded,
                )),
                None => table.range::<&str>(prefix.as_str()..),
            }
            .map_err(err)?;
            let mut books = Vec::new();
            for entry in range.take(limit) {
                let (key, value) = entry.map_err(err)?;
                if !key.value().starts_with(prefix.as_str()) {
                    break;
                }
                books.push(decode_book(name, key.value(), value.value())?);
            }
            Ok(books)
        })
        .await
    }

    async fn current(&self, resource: &str) -> Result<Option<Lease>> {
        let now = SystemTime::now();
        Ok(self
            .record(resource)
            .await?
            .and_then(|rec| rec.live(now).cloned()))
    }

    async fn status(&self, resource: &str, id: &LeaseId) -> Result<LeaseStatus> {
        let now = SystemTime::now();
        Ok(match self.record(resource).await? {
            Some(rec) => rec.status(id, now),
            None => LeaseStatus::NotCurrent { evicted: None },
        })
    }

    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Lease>> {
        let (prefix, after) = (prefix.to_string(), after.map(str::to_string));
        let now = SystemTime::now();
        self.read(move |table, name| {
            let err = |e: redb::StorageError| BackendError::internal(name, e);
            let range = match &after {
                Some(a) => table.range::<&str>((
                    std::ops::Bound::Excluded(a.as_str()),
                    std::ops::Bound::Unbounded,
                )),
                None => table.range::<&str>(prefix.as_str()..),
            }
            .map_err(err)?;
            let mut leases = Vec::new();
            for entry in range {
                let (key, value) = entry.map_err(err)?;
                if !key.value().starts_with(prefix.as_str()) {
                    break;
                }
                if let Some(lease) = decode(name, value.value())?.live(now) {
                    leases.push(lease.clone());
                    if leases.len() == limit {
                        break;
                    }
                }
            }
            Ok(leases)
        })
        .await
    }

    async fn force_release(
        &self,
        resource: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Option<Lease>> {
        let (actor, reason) = (actor.to_string(), reason.to_string());
        self.update(resource, move |rec, now| {
            rec.force_release(&actor, &reason, now)
        })
        .await
    }

    async fn health(&self) -> Result<()> {
        self.read(|_, _| Ok(())).await
    }
}

/// Creates the store at `path` whole or not at all: made and committed
/// under a temporary name (`….new`), then renamed into place, so that a
/// daemon stopped during its first start leaves no half-made store that the
/// next start could not open.
fn create_whole(path: &Path) -> std::result::Result<(), String> {
    let mut fresh = path.as_os_str().to_owned();
    fresh.push(".new");
    let fresh = PathBuf::from(fresh);
    // Left by a start that was stopped: never in use.
    match std::fs::remove_file(&fresh) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.to_string()),
        _ => {}
    }
    crate::private::create_file(&fresh).map_err(|e| e.to_string())?;
    {
        let db = redb::Builder::new()
            .create(&fresh)
            .map_err(|e| e.to_string())?;
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(RECORDS).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
    }
    std::fs::rename(&fresh, path).map_err(|e| e.to_string())?;
    // The rename itself survives a crash once its directory is synced.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads of this process whose name is `name`.
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks
                    .filter_map(|task| task.ok())
                    .filter(|task| {
                        std::fs::read_to_string(task.path().join("comm"))
                            .is_ok_and(|comm| comm.trim_end() == name)
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// A burst of writes waits for its turn as tasks: it does not park a
    /// blocking-pool thread per write on redb's single writer.
    #[test]
    fn a_burst_of_writes_does_not_park_a_thread_each() {
        const NAME: &str = "embedded-burst";
        const BURST: usize = 64;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(NAME)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let most = runtime.block_on(async {
            let backend = Arc::new(
                EmbeddedBackend::open("burst", &EmbeddedConfig::default(), dir.path())
                    .await
                    .expect("open"),
            );
            let mut calls = tokio::task::JoinSet::new();
            for n in 0..BURST {
                let backend = backend.clone();
                calls.spawn(async move {
                    let req = AcquireRequest {
                        resource: format!("burst/{n}"),
                        id: LeaseId::generate(),
                        principal: "tester".into(),
                        reason: String::new(),
                        ttl: Duration::from_secs(60),
                    };
                    let granted =
                        matches!(backend.acquire(&req).await, Ok(Acquisition::Granted(_)));
                    let read = backend
                        .current(&req.resource)
                        .await
                        .is_ok_and(|l| l.is_some());
                    granted && read
                });
            }
            let mut most = 0;
            let mut all = 0;
            loop {
                most = most.max(threads_named(NAME));
                match tokio::time::timeout(Duration::from_millis(1), calls.join_next()).await {
                    Ok(Some(done)) => all += usize::from(done.expect("call")),
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
            assert_eq!(all, BURST, "every acquisition granted and read back");
            most
        });
        // 2 workers, 1 writer, READERS readers, and the one opening the store.
        assert!(
            most <= 2 + 1 + READERS + 1,
            "{most} threads for a burst of {BURST} writes"
        );
    }
}
