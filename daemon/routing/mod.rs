//! Routing: which backend holds a resource, and its default and maximum TTL.
//! Rules are tried in order; the first whose pattern matches wins, else the
//! `[defaults]` apply.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
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
    /// The TTLs, which a reload may change ([`Router::retime`]); the
    /// backend may not change while the daemon runs.
    ttls: RwLock<Ttls>,
}

impl Route {
    /// The TTLs in force.
    pub fn ttls(&self) -> Ttls {
        // A panic while holding this lock cannot leave it half-written: the
        // value is replaced whole.
        *self.ttls.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How long a resource's leases last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    /// TTL when the request sets none.
    pub ttl: Duration,
    /// Largest TTL a request may ask for.
    pub max_ttl: Duration,
}

impl Ttls {
    /// The `[defaults]` of `config`.
    fn defaults(config: &Config) -> Self {
        Self {
            ttl: config.defaults.ttl,
            max_ttl: config.defaults.max_ttl,
        }
    }

    /// A rule's: its own where set, else the defaults; a rule without
    /// `max_ttl` allows at least its own TTL.
    fn of_rule(config: &Config, rule: &crate::config::ResourceRule) -> Self {
        let d = &config.defaults;
        let ttl = rule.ttl.unwrap_or(d.ttl);
        Self {
            ttl,
            max_ttl: rule.max_ttl.unwrap_or(d.max_ttl.max(ttl)),
        }
    }
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

/// A reload that would route resources differently ([`Router::retime`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingChanged;

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
            ttls: RwLock::new(Ttls::defaults(config)),
        });
        let mut rules = Vec::new();
        for rule in &config.resources {
            let matcher = rule.pattern.clone();
            let name = rule.backend.clone().unwrap_or_else(|| d.backend.clone());
            rules.push((
                matcher,
                Arc::new(Route {
                    backend: lookup(&name)?,
                    backend_name: name,
                    ttls: RwLock::new(Ttls::of_rule(config, rule)),
                }),
            ));
        }
        Ok(Self {
            rules,
            default,
            backends,
        })
    }

    /// Takes the TTLs of `config`, whose routing must be this router's:
    /// the same rules in the same order, to the same backends, and the same
    /// default backend (a daemon routing a resource elsewhere than its peers
    /// could grant it twice: that takes a restart, see RELIABILITY.md). Returns
    /// whether any TTL changed; refuses, changing nothing, when the routing
    /// differs.
    pub fn retime(&self, config: &Config) -> Result<bool, RoutingChanged> {
        let d = &config.defaults;
        let same_rules = self.rules.len() == config.resources.len()
            && self
                .rules
                .iter()
                .zip(&config.resources)
                .all(|((pattern, route), rule)| {
                    pattern.as_str() == rule.pattern.as_str()
                        && route.backend_name == *rule.backend.as_ref().unwrap_or(&d.backend)
                });
        if !same_rules || self.default.backend_name != d.backend {
            return Err(RoutingChanged);
        }
        let mut changed = false;
        let wanted = self
            .rules
            .iter()
            .map(|(_, route)| route)
            .zip(
                config
                    .resources
                    .iter()
                    .map(|rule| Ttls::of_rule(config, rule)),
            )
            .chain(std::iter::once((&self.default, Ttls::defaults(config))));
        for (route, ttls) in wanted {
            let mut current = route.ttls.write().unwrap_or_else(PoisonError::into_inner);
            changed |= *current != ttls;
            *current = ttls;
        }
        Ok(changed)
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
        assert_eq!(db.ttls().ttl, Duration::from_secs(4 * 3600));
        assert_eq!(db.ttls().max_ttl, Duration::from_secs(86400));
        let deep = router.route("prod/db/main");
        assert_eq!(deep.backend_name, "main");
        assert_eq!(deep.ttls().ttl, Duration::from_secs(2 * 3600));
        let other = router.route("staging/db");
        assert_eq!(other.backend_name, "main");
        assert_eq!(other.ttls().ttl, Duration::from_secs(3600));
        assert_eq!(other.ttls().max_ttl, config.defaults.max_ttl);
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

    /// A reload takes new TTLs for the same routing, and refuses, changing
    /// nothing, a config that routes anything differently.
    #[test]
    fn retime_takes_ttls_and_refuses_other_routing() {
        let base = |ttl: &str, rules: &str| {
            format!(
                "[defaults]\nttl = \"{ttl}\"\nmax_ttl = \"1d\"\n\
                 [backends.main]\ntype = \"memory\"\n[backends.other]\ntype = \"memory\"\n{rules}"
            )
        };
        let rule = "[[resources]]\nmatch = \"db/*\"\nttl = \"10m\"\n";
        let (router, _) = routed(&base("1h", rule));
        let parse = |text: &str| Config::parse(text, "test").expect("config");
        let minutes = |m: u64| Duration::from_secs(m * 60);

        let same = parse(&base("1h", rule));
        assert_eq!(router.retime(&same), Ok(false), "nothing changed");
        let longer = parse(&base(
            "2h",
            "[[resources]]\nmatch = \"db/*\"\nttl = \"20m\"\nmax_ttl = \"30m\"\n",
        ));
        assert_eq!(router.retime(&longer), Ok(true));
        assert_eq!(
            router.route("db/x").ttls(),
            Ttls {
                ttl: minutes(20),
                max_ttl: minutes(30)
            }
        );
        assert_eq!(router.route("x").ttls().ttl, minutes(120));

        for other_routing in [
            base("5h", ""),
            base("5h", "[[resources]]\nmatch = \"db/**\"\nttl = \"10m\"\n"),
            base(
                "5h",
                "[[resources]]\nmatch = \"db/*\"\nbackend = \"other\"\n",
            ),
            base("5h", &format!("{rule}{rule}")),
            base("5h", rule).replacen("[defaults]\n", "[defaults]\nbackend = \"other\"\n", 1),
        ] {
            let config = parse(&other_routing);
            assert_eq!(
                router.retime(&config),
                Err(RoutingChanged),
                "{other_routing}"
            );
            assert_eq!(router.route("x").ttls().ttl, minutes(120), "unchanged");
            assert_eq!(router.route("db/x").ttls().ttl, minutes(20), "unchanged");
        }
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
        assert_eq!((long.ttls().ttl, long.ttls().max_ttl), (hours(3), hours(3)));
        let short = router.route("short/x");
        assert_eq!(
            (short.ttls().ttl, short.ttls().max_ttl),
            (hours(1) / 2, hours(2))
        );
        let other = router.route("other");
        assert_eq!(
            (other.ttls().ttl, other.ttls().max_ttl),
            (hours(1), hours(2))
        );
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
