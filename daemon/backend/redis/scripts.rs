//! The Lua scripts the operations run, one atomic step each on the engine.
//! They live in `.lua` files beside this one, so that they read (and diff) as
//! Lua; each file's header names its `KEYS`, `ARGV` and reply.

use redis::Script;

/// `lease_at(key)`, the reader of a lease hash; prepended to every script
/// about leases.
const LEASE_AT: &str = include_str!("lease_at.lua");

/// The readers and writers of Python stormlock's locks
/// (`python_stormlock = true`); prepended to every script about leases.
const PYTHON: &str = include_str!("python.lua");

/// The scripts, compiled (hashed) once; `invoke_async` runs them by SHA and
/// loads them again after a Redis restart (`NOSCRIPT`).
pub(super) struct Scripts {
    /// `acquire.lua`: grant, or report the holder (or Python stormlock's).
    pub acquire: Script,
    /// `release.lua`: end the lease if it is current.
    pub release: Script,
    /// `renew.lua`: extend the lease if it is current, else its eviction.
    pub renew: Script,
    /// `read.lua`: the lease, eviction record and Python stormlock lock, one
    /// snapshot.
    pub read: Script,
    /// `force_release.lua`: break the lease and record who and why.
    pub force_release: Script,
    /// `list.lua`: one batch of live leases in name order.
    pub list: Script,
    /// `book.lua`: a resource's reservation book.
    pub book: Script,
    /// `write_book.lua`: store a book over the version it was read at.
    pub write_book: Script,
    /// `books.lua`: one batch of books in name order.
    pub books: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let with_helpers = |body: &str| Script::new(&format!("{LEASE_AT}{PYTHON}{body}"));
        Self {
            acquire: with_helpers(include_str!("acquire.lua")),
            release: with_helpers(include_str!("release.lua")),
            renew: with_helpers(include_str!("renew.lua")),
            read: with_helpers(include_str!("read.lua")),
            force_release: with_helpers(include_str!("force_release.lua")),
            list: with_helpers(include_str!("list.lua")),
            // Books have nothing to do with leases or Python stormlock.
            book: Script::new(include_str!("book.lua")),
            write_book: Script::new(include_str!("write_book.lua")),
            books: Script::new(include_str!("books.lua")),
        }
    }
}
