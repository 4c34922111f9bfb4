//! The Lua scripts the operations run, one atomic step each on the engine.
//! They live in `.lua` files beside this one, so that they read (and diff) as
//! Lua; each file's header names its `KEYS`, `ARGV` and reply.

use redis::Script;

/// `lease_at(key)`, the reader of a lease hash that every script but
/// `release.lua` calls; prepended to them.
const LEASE_AT: &str = include_str!("lease_at.lua");

/// The scripts, compiled (hashed) once; `invoke_async` runs them by SHA and
/// loads them again after a Redis restart (`NOSCRIPT`).
pub(super) struct Scripts {
    /// `acquire.lua`: grant, or report the holder.
    pub acquire: Script,
    /// `release.lua`: end the lease if it is current.
    pub release: Script,
    /// `renew.lua`: extend the lease if it is current, else its eviction.
    pub renew: Script,
    /// `read.lua`: the lease and eviction record, one snapshot.
    pub read: Script,
    /// `force_release.lua`: break the lease and record who and why.
    pub force_release: Script,
    /// `list.lua`: one batch of live leases in name order.
    pub list: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let with_lease_at = |body: &str| Script::new(&format!("{LEASE_AT}{body}"));
        Self {
            acquire: with_lease_at(include_str!("acquire.lua")),
            release: Script::new(include_str!("release.lua")),
            renew: with_lease_at(include_str!("renew.lua")),
            read: with_lease_at(include_str!("read.lua")),
            force_release: with_lease_at(include_str!("force_release.lua")),
            list: with_lease_at(include_str!("list.lua")),
        }
    }
}
