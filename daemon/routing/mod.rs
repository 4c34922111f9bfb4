//! Routing: which backend holds a resource, and its default and maximum TTL.
//! Rules are tried in order; the first whose pattern matches wins, else the
//! `[defaults]` apply.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{self, Backend, BackendError};
use crate::config::Config;
use crate::glob::ResourcePattern;
use crate::lease::Lease;
use crate::metrics::Metrics;

mod deferred;
mod timeout;

pub use deferred::Deferred;
pub use timeout::WithTimeout;

/// Where a resource lives and how long its leases may last.
pub struct Route {
    /// The backend's configured name.
    pub backend_name: String,
    /// The backend, each call bounded by the configured timeout.
    pub backend: Arc<dyn Backend>,
    /// TTL when the request sets none.
    pub ttl: Duration,
    /// Largest TTL a request may ask for.
    pub max_ttl: Duration,
}

/// What [`Router::connect`] does with a backend whose engine cannot be
/// reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Fail: `check-config`, which must say whether every engine answers.
    Fail,
    /// Start without it and keep connecting: the daemon.
    ConnectLater,
}

/// Resource → [`Route`].
pub struct Router {
    rules: Vec<(ResourcePattern, Arc<Route>)>,
    default: Arc<Route>,
    backends: BTreeMap<String, Arc<dyn Backend>>,
}

impl Router {
    /// Connects every configured backend (in parallel) and compiles the rules.
    /// A backend whose engine cannot be reached yet fails the call or is
    /// connected in the background ([`Deferred`]), as `unreachable` says; any
    /// other failure is returned. `config` must have been validated. Backend calls are recorded in
    /// `metrics` when given.
    pub async fn connect(
        config: &Config,
        data_dir: &Path,
        metrics: Option<&Arc<Metrics>>,
        unreachable: Unreachable,
    ) -> Result<Self, BackendError> {
        let timeout = config.defaults.backend_timeout;
        let connects = config
            .backends
            .iter()
            .map(|(name, backend_config)| async move {
                let inner = match backend::connect(name, backend_config, data_dir).await {
                    Ok(inner) => inner,
                    // Not there yet: start anyway and keep connecting.
                    Err(e @ BackendError::Unavailable { .. })
                        if unreachable == Unreachable::ConnectLater =>
                    {
                        Arc::new(Deferred::start(
                            name,
                            backend_config.clone(),
                            data_dir.to_path_buf(),
                            &e,
                        ))
                    }
                    Err(e) => return Err(e),
                };
                let mut bounded = WithTimeout::new(name, inner, timeout);
                if let Some(metrics) = metrics {
                    bounded = bounded.with_metrics(metrics.clone());
                }
                let bounded: Arc<dyn Backend> = Arc::new(bounded);
                Ok::<_, BackendError>((name.clone(), bounded))
            });
        let backends: BTreeMap<_, _> = futures::future::try_join_all(connects)
            .await?
            .into_iter()
            .collect();
        Self::new(config, backends)
    }

    /// Builds the routes of `config` over already connected `backends`.
    pub fn new(
        config: &Config,
        backends: BTreeMap<String, Arc<dyn Backend>>,
    ) -> Result<Self, BackendError> {
        let d = &config.defaults;
        let lookup = |name: &str| {
            backends.get(name).cloned().ok_or_else(|| {
                BackendError::config(name, "referenced by the routing rules but not configured")
            })
        };
        let default = Arc::new(Route {
            backend_name: d.backend.clone(),
            backend: lookup(&d.backend)?,
            ttl: d.ttl,
            max_ttl: d.max_ttl,
        });
        let mut rules = Vec::new();
        for rule in &config.resources {
            let matcher = rule.pattern.clone();
            let name = rule.backend.clone().unwrap_or_else(|| d.backend.clone());
            let ttl = rule.ttl.unwrap_or(d.ttl);
            rules.push((
                matcher,
                Arc::new(Route {
                    backend: lookup(&name)?,
                    backend_name: name,
                    ttl,
                    max_ttl: rule.max_ttl.unwrap_or(d.max_ttl.max(ttl)),
                }),
            ));
        }
        Ok(Self {
            rules,
            default,
            backends,
        })
    }

    /// The route of `resource`.
    pub fn route(&self, resource: &str) -> &Arc<Route> {
        self.rules
            .iter()
            .find(|(matcher, _)| matcher.is_match(resource))
            .map(|(_, route)| route)
            .unwrap_or(&self.default)
    }

    /// Every configured backend by name.
    pub fn backends(&self) -> &BTreeMap<String, Arc<dyn Backend>> {
        &self.backends
    }

    /// Up to `limit` unexpired leases whose resource starts with `prefix`
    /// and sorts after `after`, in resource order, over every backend, each
    /// lease taken only from the backend its resource routes to. The flag is
    /// true when more may follow.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Lease>, bool), BackendError> {
        // Each backend returns its own sorted page, with the leases routed
        // elsewhere (left behind by a routing change) filtered out. A
        // backend that returned a full page may have more after its last
        // lease, so only what sorts up to the smallest such last lease is
        // known to be complete across backends; past it, read again from
        // there. Every round moves that bound forward, so this ends, and a
        // page of stale leases never ends the listing early.
        let mut cursor = after.map(str::to_string);
        let mut leases: Vec<Lease> = Vec::new();
        loop {
            let pages =
                futures::future::try_join_all(self.backends.iter().map(|(name, backend)| {
                    let cursor = cursor.as_deref();
                    async move {
                        let page = backend.list(prefix, cursor, limit).await?;
                        Ok::<_, BackendError>((name, page))
                    }
                }))
                .await?;
            let bound: Option<String> = pages
                .iter()
                .filter(|(_, page)| page.len() >= limit)
                .filter_map(|(_, page)| page.last().map(|l| l.resource.clone()))
                .min();
            let mut round: Vec<Lease> = pages
                .into_iter()
                .flat_map(|(name, page)| {
                    page.into_iter()
                        .filter(move |l| &self.route(&l.resource).backend_name == name)
                })
                .filter(|l| bound.as_ref().is_none_or(|b| l.resource <= *b))
                .collect();
            round.sort_by(|a, b| a.resource.cmp(&b.resource));
            leases.extend(round);
            if leases.len() > limit || (leases.len() == limit && bound.is_some()) {
                leases.truncate(limit);
                return Ok((leases, true));
            }
            match bound {
                None => return Ok((leases, false)),
                Some(bound) => cursor = Some(bound),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;

    /// An engine that is not there (a closed port) fails `check-config`'s
    /// connect and is connected later by the daemon's, whose other backends
    /// serve meanwhile.
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn an_unreachable_engine_fails_or_is_connected_later_as_asked() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let config = Config::parse(
            &format!(
                "[backends.main]\ntype = \"memory\"\n\
                 [backends.gone]\ntype = \"redis\"\nurl = \"redis://{closed}/\"\n\
                 [[resources]]\nmatch = \"gone/**\"\nbackend = \"gone\"\n"
            ),
            "test",
        )
        .expect("config");
        let dir = std::env::temp_dir();
        let failed = Router::connect(&config, &dir, None, Unreachable::Fail).await;
        assert!(
            matches!(failed, Err(BackendError::Unavailable { ref backend, .. }) if backend == "gone"),
            "{:?}",
            failed.err()
        );
        let router = Router::connect(&config, &dir, None, Unreachable::ConnectLater)
            .await
            .expect("starts without the engine");
        let waiting = router.route("gone/x").backend.current("gone/x").await;
        assert!(
            matches!(&waiting, Err(BackendError::Unavailable { message, .. }) if message.contains("not connected yet")),
            "{waiting:?}"
        );
        assert_eq!(
            router
                .route("x")
                .backend
                .current("x")
                .await
                .expect("served"),
            None
        );
    }

    #[test]
    fn first_matching_rule_wins_and_star_stays_in_one_level() {
        let config = Config::parse(
            r#"
            [defaults]
            ttl = "1h"
            [backends.main]
            type = "memory"
            [backends.shared]
            type = "memory"
            [[resources]]
            match = "prod/*"
            backend = "shared"
            ttl = "4h"
            max_ttl = "1d"
            [[resources]]
            match = "prod/**"
            ttl = "2h"
            "#,
            "test",
        )
        .expect("config");
        let backends = config
            .backends
            .keys()
            .map(|k| {
                (
                    k.clone(),
                    Arc::new(MemoryBackend::new()) as Arc<dyn Backend>,
                )
            })
            .collect();
        let router = Router::new(&config, backends).expect("router");
        let db = router.route("prod/db");
        assert_eq!(db.backend_name, "shared");
        assert_eq!(db.ttl, Duration::from_secs(4 * 3600));
        assert_eq!(db.max_ttl, Duration::from_secs(86400));
        let deep = router.route("prod/db/main");
        assert_eq!(deep.backend_name, "main");
        assert_eq!(deep.ttl, Duration::from_secs(2 * 3600));
        let other = router.route("staging/db");
        assert_eq!(other.backend_name, "main");
        assert_eq!(other.ttl, Duration::from_secs(3600));
        assert_eq!(other.max_ttl, config.defaults.max_ttl);
    }

    fn routed(text: &str) -> (Router, BTreeMap<String, Arc<dyn Backend>>) {
        let config = Config::parse(text, "test").expect("config");
        let backends: BTreeMap<String, Arc<dyn Backend>> = config
            .backends
            .keys()
            .map(|k| {
                (
                    k.clone(),
                    Arc::new(MemoryBackend::new()) as Arc<dyn Backend>,
                )
            })
            .collect();
        (
            Router::new(&config, backends.clone()).expect("router"),
            backends,
        )
    }

    /// A rule without `max_ttl` allows at least its own TTL: the default
    /// maximum, or the rule's TTL when that is longer.
    #[test]
    fn a_rule_allows_at_least_its_own_ttl() {
        let (router, _) = routed(
            r#"
            [defaults]
            ttl = "1h"
            max_ttl = "2h"
            [backends.main]
            type = "memory"
            [[resources]]
            match = "long/*"
            ttl = "3h"
            [[resources]]
            match = "short/*"
            ttl = "30m"
            "#,
        );
        let hours = |h: u64| Duration::from_secs(h * 3600);
        let long = router.route("long/x");
        assert_eq!((long.ttl, long.max_ttl), (hours(3), hours(3)));
        let short = router.route("short/x");
        assert_eq!((short.ttl, short.max_ttl), (hours(1) / 2, hours(2)));
        let other = router.route("other");
        assert_eq!((other.ttl, other.max_ttl), (hours(1), hours(2)));
    }

    async fn hold(backend: &Arc<dyn Backend>, resource: &str) {
        let request = crate::lease::AcquireRequest {
            resource: resource.to_string(),
            id: crate::lease::LeaseId::generate(),
            principal: "p".to_string(),
            reason: String::new(),
            ttl: Duration::from_secs(60),
        };
        assert!(matches!(
            backend.acquire(&request).await,
            Ok(crate::lease::Acquisition::Granted(_))
        ));
    }

    /// List merges the backends' pages in name order, cut to the limit,
    /// says when more may follow, and shows each lease only from the
    /// backend its resource routes to (a lease left on another backend by
    /// a routing change is not the lock any more).
    #[tokio::test]
    async fn list_merges_backends_and_keeps_each_lease_to_its_route() {
        let (router, backends) = routed(
            r#"
            [backends.main]
            type = "memory"
            [backends.other]
            type = "memory"
            [[resources]]
            match = "b/**"
            backend = "other"
            "#,
        );
        let (main, other) = (&backends["main"], &backends["other"]);
        for name in ["a/1", "c/1"] {
            hold(main, name).await;
        }
        for name in ["b/1", "b/2"] {
            hold(other, name).await;
        }
        // Stale: held where their resources no longer route.
        hold(main, "b/0").await;
        hold(other, "a/0").await;

        let names = |leases: &[Lease]| -> Vec<String> {
            leases.iter().map(|l| l.resource.clone()).collect()
        };
        let (all, more) = router.list("", None, 10).await.expect("list");
        assert_eq!(names(&all), ["a/1", "b/1", "b/2", "c/1"]);
        assert!(!more, "everything fits");
        let (page, more) = router.list("", None, 2).await.expect("list");
        assert_eq!(names(&page), ["a/1", "b/1"]);
        assert!(more, "more follow");
        let (page, more) = router.list("", Some("b/1"), 2).await.expect("list");
        assert_eq!(names(&page), ["b/2", "c/1"]);
        assert!(!more, "no backend returned a full page: nothing follows");
        let (page, more) = router.list("", Some("c/1"), 2).await.expect("list");
        assert!(page.is_empty() && !more, "{page:?}");
        let (page, _) = router.list("b/", None, 10).await.expect("list");
        assert_eq!(names(&page), ["b/1", "b/2"]);
        // One backend with more than a page: more follow.
        let (single, backends) = routed("[backends.main]\ntype = \"memory\"\n");
        for name in ["x/1", "x/2", "x/3"] {
            hold(&backends["main"], name).await;
        }
        let (page, more) = single.list("x/", None, 2).await.expect("list");
        assert_eq!(names(&page), ["x/1", "x/2"]);
        assert!(more);
    }

    /// A page whose leases all turn out stale on every backend is empty,
    /// but the listing is not over: leases after it must still be found.
    #[tokio::test]
    async fn a_page_of_stale_leases_does_not_end_the_listing() {
        let names = |leases: &[Lease]| -> Vec<String> {
            leases.iter().map(|l| l.resource.clone()).collect()
        };
        let (router, backends) = routed(
            r#"
            [backends.main]
            type = "memory"
            [backends.other]
            type = "memory"
            [[resources]]
            match = "b/**"
            backend = "other"
            "#,
        );
        hold(&backends["main"], "b/0").await;
        hold(&backends["other"], "a/5").await;
        hold(&backends["other"], "b/1").await;
        let (page, more) = router.list("", None, 1).await.expect("list");
        assert_eq!(
            names(&page),
            ["b/1"],
            "the stale b/0 and a/5 are skipped, not the end"
        );
        let (page, more) = if more {
            router.list("", Some("b/1"), 1).await.expect("list")
        } else {
            (Vec::new(), false)
        };
        assert!(page.is_empty() && !more, "{page:?}");
    }
}
