//! Freeze windows through the service (`[[freezes]]`): refused like a held
//! lock, exempt principals served, leases and renewals cut short at a
//! window's start, waiters served when it ends.

use std::time::{Duration, SystemTime};

use stormlock_api::pb;
use tonic::Code;

use crate::support::{TestDaemon, secs};

/// Now, in whole seconds (as the windows are written).
fn now() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// `t` in RFC 3339 (UTC).
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .expect("time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

/// A memory backend and one freeze of `deploy/prod/**` from `start` for
/// `length`, exempting `oncall`.
fn config(start: SystemTime, length: &str) -> String {
    format!(
        r#"[backends.main]
type = "memory"

[[freezes]]
name = "release-freeze"
match = ["deploy/prod/**"]
start = "{}"
duration = "{length}"
reason = "release week: ask #ops"
exempt = ["oncall"]
"#,
        rfc3339(start)
    )
}

fn acquire(resource: &str, ttl: i64, wait: i64) -> pb::AcquireRequest {
    pb::AcquireRequest {
        resource: resource.to_string(),
        ttl: secs(ttl),
        wait: (wait > 0).then(|| secs(wait)).flatten(),
        ..Default::default()
    }
}

fn at(t: Option<prost_types::Timestamp>) -> SystemTime {
    let t = t.expect("timestamp");
    SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

#[tokio::test]
async fn a_freeze_refuses_like_a_held_lock_and_spares_the_exempt() {
    let start = now() - Duration::from_secs(60);
    let daemon = TestDaemon::start(&config(start, "1h"), false).await;
    let mut alice = daemon.client_as("alice").await;
    let refused = alice
        .acquire(acquire("deploy/prod/api", 60, 0))
        .await
        .expect("acquire")
        .into_inner();
    assert!(!refused.acquired);
    assert_eq!(refused.lease, None);
    assert_eq!(refused.holder, None, "no lease holds it");
    let window = refused.window.expect("the window that refuses");
    assert_eq!(window.name, "release-freeze");
    assert_eq!(window.reason, "release week: ask #ops");
    assert_eq!(window.kind(), pb::window::Kind::Freeze);
    let ends = at(window.ends_at);
    let expected = start + Duration::from_secs(3600);
    assert_eq!(
        ends.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok(),
        expected
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok()
    );

    // Current says so, to those it refuses.
    let current = |resource: &str| pb::CurrentRequest {
        resource: resource.to_string(),
        ..Default::default()
    };
    let seen = alice
        .current(current("deploy/prod/api"))
        .await
        .expect("current")
        .into_inner();
    assert_eq!(seen.lease, None);
    assert_eq!(
        seen.window.map(|w| w.name).as_deref(),
        Some("release-freeze")
    );

    // Outside the globs: as usual.
    let other = alice
        .acquire(acquire("deploy/staging/api", 60, 0))
        .await
        .expect("acquire")
        .into_inner();
    assert!(other.acquired);
    assert_eq!(other.cut_short_by, None);

    // An exempt principal acquires, for the whole TTL.
    let mut oncall = daemon.client_as("oncall").await;
    let granted = oncall
        .acquire(acquire("deploy/prod/api", 60, 0))
        .await
        .expect("acquire")
        .into_inner();
    assert!(granted.acquired, "exempt");
    let seen = oncall
        .current(current("deploy/prod/api"))
        .await
        .expect("current")
        .into_inner();
    assert_eq!(seen.window, None, "not refused: nothing to say");
    assert_eq!(granted.cut_short_by, None);
    let lease = granted.lease.expect("lease");
    assert_eq!(
        lease.expires_at.map(|t| t.seconds),
        lease.acquired_at.map(|t| t.seconds + 60)
    );
}

#[tokio::test]
async fn a_lease_is_never_granted_or_renewed_past_the_start_of_a_window() {
    let start = now() + Duration::from_secs(30);
    let daemon = TestDaemon::start(&config(start, "1h"), false).await;
    let mut alice = daemon.client_as("alice").await;
    let granted = alice
        .acquire(acquire("deploy/prod/api", 600, 0))
        .await
        .expect("acquire")
        .into_inner();
    assert!(granted.acquired, "the window has not started");
    let cut = granted.cut_short_by.expect("cut short");
    assert_eq!(cut.name, "release-freeze");
    let lease = granted.lease.expect("lease");
    let expires = at(lease.expires_at);
    assert!(
        expires <= start,
        "expires {expires:?} after the start {start:?}"
    );
    assert!(
        expires + Duration::from_secs(3) > start,
        "ends at the start (whole seconds), not long before"
    );

    // A renewal is cut short too; one that ends before the start is not.
    let renewed = alice
        .renew(pb::RenewRequest {
            resource: lease.resource.clone(),
            lease_id: lease.lease_id.clone(),
            ttl: secs(600),
        })
        .await
        .expect("renew")
        .into_inner();
    assert_eq!(
        renewed.cut_short_by.map(|w| w.name).as_deref(),
        Some("release-freeze")
    );
    assert!(at(renewed.lease.and_then(|l| l.expires_at)) <= start);
    let short = alice
        .renew(pb::RenewRequest {
            resource: lease.resource.clone(),
            lease_id: lease.lease_id.clone(),
            ttl: secs(5),
        })
        .await
        .expect("renew")
        .into_inner();
    assert_eq!(short.cut_short_by, None, "ends before the window");

    // The exempt are not cut short.
    let mut oncall = daemon.client_as("oncall").await;
    let full = oncall
        .acquire(acquire("deploy/prod/db", 600, 0))
        .await
        .expect("acquire")
        .into_inner();
    assert!(full.acquired);
    assert_eq!(full.cut_short_by, None);
}

#[tokio::test]
async fn a_renewal_while_a_window_is_in_force_is_refused_with_the_window() {
    // The lease is taken by the exempt, renewed by someone the window
    // refuses: an administrator, here the development client.
    let start = now() - Duration::from_secs(1);
    let daemon = TestDaemon::start(&config(start, "1h"), false).await;
    let mut oncall = daemon.client_as("oncall").await;
    let lease = oncall
        .acquire(acquire("deploy/prod/api", 60, 0))
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("exempt");
    let mut admin = daemon.client().await;
    let refused = admin
        .renew(pb::RenewRequest {
            resource: lease.resource.clone(),
            lease_id: lease.lease_id.clone(),
            ttl: secs(60),
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("release-freeze"), "{refused:?}");
    let window = stormlock_api::details::window(&refused).expect("typed detail");
    assert_eq!(window.name, "release-freeze");
    // The lease itself is untouched.
    let held = oncall
        .is_held(pb::IsHeldRequest {
            resource: lease.resource,
            lease_id: lease.lease_id,
        })
        .await
        .expect("is_held")
        .into_inner();
    assert!(held.held);
}

#[tokio::test]
async fn a_waiter_waits_through_a_window_and_is_served_when_it_ends() {
    let start = now() - Duration::from_secs(1);
    let daemon = TestDaemon::start(&config(start, "4s"), false).await;
    let end = start + Duration::from_secs(4);
    let mut alice = daemon.client_as("alice").await;
    let call = alice.acquire(acquire("deploy/prod/api", 60, 30));
    let granted = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("hang guard")
        .expect("acquire")
        .into_inner();
    assert!(granted.acquired, "served once the window ended");
    let lease = granted.lease.expect("lease");
    assert!(
        at(lease.acquired_at) >= end,
        "granted at {:?}, before the window's end {end:?}",
        at(lease.acquired_at)
    );

    // A wait that ends inside the window is answered with the window.
    let start = now() - Duration::from_secs(1);
    let daemon = TestDaemon::start(&config(start, "1h"), false).await;
    let mut alice = daemon.client_as("alice").await;
    let refused = alice
        .acquire(acquire("deploy/prod/api", 60, 1))
        .await
        .expect("acquire")
        .into_inner();
    assert!(!refused.acquired);
    assert_eq!(
        refused.window.map(|w| w.name).as_deref(),
        Some("release-freeze")
    );
}

#[test]
fn check_config_names_the_freeze_and_the_mistake() {
    let cases = [
        (
            "schedule = \"0 17 * FRI\"\nduration = \"1h\"",
            "has 4 fields",
        ),
        (
            "schedule = \"0 17 * * FRI\"\nduration = \"1h\"\ntimezone = \"Europe/Berln\"",
            "not an IANA time zone",
        ),
        (
            "start = \"2026-12-02T10:00:00Z\"\nend = \"2026-12-01T10:00:00Z\"",
            "is before start",
        ),
    ];
    for (body, expected) in cases {
        let text = format!("[[freezes]]\nname = \"weekend\"\nmatch = [\"deploy/**\"]\n{body}\n");
        let err = stormlockd::config::Config::parse(&text, "stormlockd.toml")
            .expect_err(&text)
            .to_string();
        assert!(err.contains(expected), "{err}");
        assert!(err.contains("weekend"), "names the freeze: {err}");
        assert!(err.contains("line"), "says where: {err}");
    }
    let twice = "[[freezes]]\nname = \"w\"\nmatch = [\"x\"]\nstart = \"2026-12-02T10:00:00Z\"\nduration = \"1h\"\n"
        .repeat(2);
    let err = stormlockd::config::Config::parse(&twice, "stormlockd.toml")
        .expect_err("duplicate")
        .to_string();
    assert!(err.contains("freezes[1].name"), "{err}");
}

/// Through the real binaries over mutual TLS: a freeze added by SIGHUP
/// refuses `stormlock acquire` like a held lock (exit 2, the window on
/// stderr), a lease taken before it is cut short on renewal, and removing
/// the freeze by another SIGHUP lets the acquisition through.
#[test]
fn the_cli_is_refused_by_a_freeze_put_in_force_by_a_reload() {
    use crate::e2e::Daemon;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("stormlockd.toml");
    let plain = "[backends.main]\ntype = \"memory\"\n";
    std::fs::write(&file, plain).expect("config");
    let config_arg = file.display().to_string();
    let daemon = Daemon::start_with(&["--config", &config_arg]);
    let id = daemon
        .cli(&["acquire", "deploy/prod/api", "-t", "10m"])
        .ok()
        .line();

    // In force from a minute ago for an hour; the development client is
    // not exempt.
    let start = now() - Duration::from_secs(60);
    std::fs::write(&file, config(start, "1h")).expect("config");
    let log = daemon.reload();
    assert!(log.contains("[freezes]"), "{log}");

    let refused = daemon.cli(&["acquire", "deploy/prod/db"]).exit(2);
    assert!(refused.stdout.is_empty(), "{refused:?}");
    let lines: Vec<&str> = refused.stderr.lines().collect();
    assert_eq!(lines.first(), Some(&"Lock held"), "{refused:?}");
    assert!(
        refused.stderr.contains("Window: freeze \"release-freeze\""),
        "{refused:?}"
    );
    assert!(
        refused.stderr.contains("Reason: release week: ask #ops"),
        "{refused:?}"
    );
    assert!(refused.stderr.contains("Until: "), "{refused:?}");
    // Outside the window's globs: as usual.
    daemon.cli(&["acquire", "deploy/staging/api"]).ok();
    // `current` keeps its output and exit status, and says why on stderr.
    let current = daemon.cli(&["current", "deploy/prod/db"]).exit(1);
    assert!(
        current
            .stderr
            .contains("acquiring deploy/prod/db is refused until ")
            && current
                .stderr
                .contains("freeze \"release-freeze\" (release week: ask #ops)"),
        "{current:?}"
    );

    // The lease taken before the freeze cannot be renewed into it.
    let renew = daemon
        .cli(&["renew", "deploy/prod/api", &id, "-t", "10m"])
        .exit(2);
    assert!(renew.stderr.starts_with("Lock not renewed\n"), "{renew:?}");
    assert!(renew.stderr.contains("release-freeze"), "{renew:?}");

    // The freeze removed: served again.
    std::fs::write(&file, plain).expect("config");
    daemon.reload();
    daemon.cli(&["acquire", "deploy/prod/db"]).ok();
}

/// `exec` under a lease cut short by a window: renews up to the start,
/// then stops its command as on a lost lease (exit 123), naming the window.
#[test]
fn exec_stops_its_command_when_a_window_starts() {
    use crate::e2e::Daemon;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("stormlockd.toml");
    // Far enough ahead that a slow start still finds the window ahead.
    std::fs::write(&file, config(now() + Duration::from_secs(8), "1h")).expect("config");
    let config_arg = file.display().to_string();
    let daemon = Daemon::start_with(&["--config", &config_arg]);
    let run = daemon
        .cli(&["exec", "-t", "60s", "deploy/prod/api", "--", "sleep", "60"])
        .exit(123);
    assert!(
        run.stderr.contains("ends at") && run.stderr.contains("freeze \"release-freeze\" starts"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("lost the lock on deploy/prod/api: freeze \"release-freeze\" starts"),
        "{run:?}"
    );
    // Less than a minute ahead when it began: one warning, at once.
    assert_eq!(
        run.stderr
            .matches("stormlock exec: freeze \"release-freeze\" starts in ")
            .count(),
        1,
        "{run:?}"
    );
    assert!(
        run.stderr.contains(": the command will be stopped then"),
        "{run:?}"
    );
}
