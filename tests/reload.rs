//! SIGHUP through the real `stormlockd`: the configuration reloaded while
//! serving (tokens, TTLs), an invalid file refused without a change, what
//! needs a restart reported and left alone, and the audit file reopened for
//! log rotation without losing or repeating a line.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use stormlock_api::pb;

use crate::e2e::Daemon;
use crate::support::{
    acquire_request, free_port, metric_sample as sample, scrape_metrics_blocking,
};

/// A configuration with one token for `principal`, the daemon's defaults
/// and whatever `extra` adds.
fn config_with_token(token: &str, principal: &str, extra: &str) -> String {
    format!(
        "{extra}\n[[auth.tokens]]\nprincipal = \"{principal}\"\nsha256 = \"{}\"\n",
        stormlockd::auth::hash_token(token)
    )
}

/// The CLI with a bearer token from a file.
fn with_token(daemon: &Daemon, dir: &Path, token: &str, args: &[&str]) -> crate::e2e::Run {
    let file = dir.join(format!("token-{token}"));
    std::fs::write(&file, format!("{token}\n")).expect("token file");
    let ca = daemon.data_dir().join("tls/ca.crt").display().to_string();
    let file = file.display().to_string();
    let mut all = vec!["--ca", &ca, "--token-file", &file];
    all.extend_from_slice(args);
    daemon.cli(&all)
}

/// SIGHUP puts a new token list and new TTLs in force at once (a revoked
/// token is refused from the next call), never ends the daemon, and keeps
/// a waiter in its place.
#[test]
fn sighup_revokes_a_token_and_changes_ttls_while_waiters_keep_their_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stormlockd.toml");
    let (old, new) = ("1".repeat(32), "2".repeat(32));
    std::fs::write(&config, config_with_token(&old, "ci", "")).expect("config");
    let config_arg = config.display().to_string();
    let daemon = Daemon::start_with(&["--config", &config_arg]);

    let id = with_token(
        &daemon,
        dir.path(),
        &old,
        &["acquire", "-t", "1h", "r/held"],
    )
    .ok()
    .line();
    let waiter = daemon
        .command(&["acquire", "--wait", "2m", "r/held"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn waiter");
    daemon.until_waiting("r/held", 1);

    std::fs::write(
        &config,
        config_with_token(&new, "ci", "[defaults]\nttl = \"5m\"\n"),
    )
    .expect("config");
    let log = daemon.reload();
    assert!(log.contains("changes in force"), "{log}");
    assert!(
        log.contains("[auth]") && log.contains("[defaults]"),
        "{log}"
    );

    let revoked = with_token(&daemon, dir.path(), &old, &["acquire", "r/other"]).exit(5);
    assert!(revoked.stdout.is_empty(), "{revoked:?}");
    let fresh = with_token(&daemon, dir.path(), &new, &["acquire", "r/ttl"])
        .ok()
        .line();
    assert_eq!(fresh.len(), 32);
    let lease = daemon.grpc(|mut client| async move {
        client
            .current(pb::CurrentRequest {
                resource: "r/ttl".into(),
                ..Default::default()
            })
            .await
            .expect("current")
            .into_inner()
            .lease
            .expect("held")
    });
    let seconds = |t: Option<prost_types::Timestamp>| t.map_or(0, |t| t.seconds);
    assert_eq!(
        seconds(lease.expires_at) - seconds(lease.acquired_at),
        300,
        "the new default TTL"
    );

    // The waiter kept its place through the reload, and the daemon runs.
    daemon.until_waiting("r/held", 1);
    with_token(&daemon, dir.path(), &new, &["release", "r/held", &id]).ok();
    let waited = waiter.wait_with_output().expect("waiter");
    assert_eq!(
        waited.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    assert!(!daemon.log().contains("shutting down"), "{}", daemon.log());
}

/// An invalid file is refused as a whole (the daemon says why and keeps
/// the previous configuration); a change only a restart applies is
/// reported and not applied, while the live part of the same file is; the
/// metrics say so.
#[test]
fn an_invalid_reload_changes_nothing_and_restart_only_changes_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stormlockd.toml");
    let token = "3".repeat(32);
    let other = "4".repeat(32);
    std::fs::write(&config, config_with_token(&token, "ci", "")).expect("config");
    let config_arg = config.display().to_string();
    let metrics_port = free_port();
    let metrics_arg = format!("127.0.0.1:{metrics_port}");
    let daemon = Daemon::start_with(&["--config", &config_arg, "--metrics-listen", &metrics_arg]);
    let before = scrape_metrics_blocking(([127, 0, 0, 1], metrics_port).into());
    assert_eq!(sample(&before, "stormlock_config_generation"), 0.0);

    // Invalid: a TTL above its maximum, and the token list emptied with it.
    std::fs::write(&config, "[defaults]\nttl = \"2h\"\nmax_ttl = \"1h\"\n").expect("config");
    let log = daemon.reload();
    assert!(log.contains("reload refused"), "{log}");
    assert!(log.contains("max_ttl"), "says why: {log}");
    with_token(&daemon, dir.path(), &token, &["acquire", "r/a"]).ok();
    let refused = scrape_metrics_blocking(([127, 0, 0, 1], metrics_port).into());
    assert_eq!(
        sample(
            &refused,
            "stormlock_config_reloads_total{result=\"refused\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&refused, "stormlock_config_last_reload_success"),
        0.0
    );
    assert_eq!(sample(&refused, "stormlock_config_generation"), 0.0);

    // A new backend and a routing rule to it need a restart; the new token
    // in the same file does not.
    std::fs::write(
        &config,
        config_with_token(
            &other,
            "ci",
            "[backends.main]\ntype = \"embedded\"\n[backends.extra]\ntype = \"memory\"\n[[resources]]\nmatch = \"x/**\"\nbackend = \"extra\"\n[limits]\nmax_waiters_per_resource = 7\n",
        ),
    )
    .expect("config");
    let log = daemon.reload();
    let warning = log
        .lines()
        .rev()
        .find(|l| l.contains("need a restart"))
        .unwrap_or_else(|| panic!("no restart warning:\n{log}"));
    for part in ["[backends]", "[limits]", "[[resources]] routing"] {
        assert!(warning.contains(part), "{part} in {warning}");
    }
    with_token(&daemon, dir.path(), &other, &["acquire", "x/new"]).ok();
    with_token(&daemon, dir.path(), &token, &["acquire", "r/b"]).exit(5);
    // Still routed as at start: the lease is on the default backend, where
    // a List over every backend finds it once.
    let listed = daemon.cli(&["list", "-f", "json", "x/"]).ok();
    assert_eq!(listed.stdout.matches("x/new").count(), 1, "{listed:?}");
    let applied = scrape_metrics_blocking(([127, 0, 0, 1], metrics_port).into());
    assert_eq!(
        sample(
            &applied,
            "stormlock_config_reloads_total{result=\"applied\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&applied, "stormlock_config_last_reload_success"),
        1.0
    );
    assert_eq!(sample(&applied, "stormlock_config_generation"), 1.0);
    assert_eq!(sample(&applied, "stormlock_config_restart_pending"), 1.0);
}

/// logrotate's way: the audit file renamed under load, then SIGHUP; every
/// acquire and release is in exactly one of the two files, and the lines
/// after the reopen are in the new one.
#[test]
fn the_audit_file_is_reopened_on_sighup_without_losing_or_repeating_a_line() {
    const PAIRS: u64 = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log.1");
    let config = dir.path().join("stormlockd.toml");
    std::fs::write(
        &config,
        format!("[audit]\npath = {:?}\n", audit.display().to_string()),
    )
    .expect("config");
    let config_arg = config.display().to_string();
    let daemon = Daemon::start_with(&["--config", &config_arg]);
    let lines = |file: &Path| -> Vec<String> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };

    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            daemon.grpc(|mut client| async move {
                for _ in 0..PAIRS {
                    let lease = client
                        .acquire(acquire_request("audit/r", 60, 0))
                        .await
                        .expect("acquire")
                        .into_inner()
                        .lease
                        .expect("granted");
                    client
                        .release(pb::ReleaseRequest {
                            resource: lease.resource,
                            lease_id: lease.lease_id,
                        })
                        .await
                        .expect("release");
                }
            });
        });
        // Rotate once the load is under way, while it goes on.
        let deadline = Instant::now() + Duration::from_secs(60);
        while lines(&audit).len() < 20 {
            assert!(Instant::now() < deadline, "no audit lines");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::rename(&audit, &rotated).expect("rotate");
        let log = daemon.reload();
        assert!(log.contains("audit log reopened"), "{log}");
        load.join().expect("load");
    });

    // Every line reaches one file or the other (the writer lingers a few
    // milliseconds). Each lease is named by a short hash of its id.
    let leases = |event: &str| -> Vec<String> {
        let mut seen: Vec<String> = lines(&rotated)
            .iter()
            .chain(&lines(&audit))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("whole JSON line"))
            .filter(|l| l["event"] == event)
            .map(|l| l["lease"].as_str().expect("lease").to_string())
            .collect();
        seen.sort_unstable();
        seen
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while leases("release").len() < PAIRS as usize && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let acquired = leases("acquire");
    let mut distinct = acquired.clone();
    distinct.dedup();
    assert_eq!(distinct.len() as u64, PAIRS, "each acquire once");
    assert_eq!(acquired, distinct, "no acquire twice");
    assert_eq!(
        leases("release"),
        acquired,
        "each release once, of those leases"
    );
    assert!(!lines(&rotated).is_empty() && !lines(&audit).is_empty());
}

/// The file's `log_level` is in force from the start and changes on
/// SIGHUP; an invalid one is refused with its key.
#[test]
fn sighup_changes_the_log_level_of_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stormlockd.toml");
    std::fs::write(&config, "log_level = \"info\"\n").expect("config");
    let config_arg = config.display().to_string();
    let daemon = Daemon::start_with(&["--config", &config_arg]);
    // Each call ends with a `finished` line at debug level only.
    let finished = |log: &str| log.lines().filter(|l| l.contains("finished")).count();
    daemon.cli(&["acquire", "log/a"]).ok();
    assert_eq!(finished(&daemon.log()), 0, "{}", daemon.log());

    std::fs::write(&config, "log_level = \"debug\"\n").expect("config");
    let log = daemon.reload();
    assert!(log.contains("[log_level]"), "{log}");
    daemon.cli(&["acquire", "log/b"]).ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    while finished(&daemon.log()) == 0 {
        assert!(
            Instant::now() < deadline,
            "no debug line:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    std::fs::write(&config, "log_level = \"stormlock=loud\"\n").expect("config");
    let log = daemon.reload();
    let refused = log
        .lines()
        .rev()
        .find(|l| l.contains("reload refused"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(refused.contains("log_level"), "{refused}");
}
