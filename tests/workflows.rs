//! Operator workflows end to end, real binaries over mutual TLS: `exec`
//! (exit statuses, environment, release on every way out, stopping the
//! command's process group when the lease is lost), Ctrl-C while waiting,
//! `watch`, `list` and `is-held` when nothing can answer.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::e2e::{Daemon, stormlock};

/// A background CLI process; dropping it kills exactly that process.
struct Background {
    child: Child,
}

impl Background {
    fn spawn(mut command: std::process::Command) -> Self {
        let child = command.spawn().expect("spawn stormlock");
        Self { child }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal the CLI");
    }

    /// Waits for the process to exit, at most `limit`.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {limit:?}");
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it holds, at most `limit`.
fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not after {limit:?}");
        sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` is a live process (a zombie waiting for its reaper is not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// The pids a test command wrote to `file` (`echo $$ $! > file`).
fn pids_in(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn exec_runs_the_command_under_the_lease_and_passes_its_status_on() {
    let d = Daemon::start();
    // The command sees the lease in its environment, and the daemon agrees
    // that it is the current one while the command runs.
    let script = r#"echo "$STORMLOCK_RESOURCE $STORMLOCK_LEASE_ID $STORMLOCK_FENCE"; "$0" current -f json "$STORMLOCK_RESOURCE""#;
    let run = d
        .cli(&[
            "exec",
            "--reason",
            "e2e exec",
            "x/one",
            "--",
            "sh",
            "-c",
            script,
            stormlock(),
        ])
        .ok();
    let mut lines = run.stdout.lines();
    let vars: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
    assert_eq!(vars.len(), 3, "{run:?}");
    assert_eq!(vars[0], "x/one");
    assert_eq!(vars[1].len(), 32, "{run:?}");
    let fence: u64 = vars[2].parse().expect("fence is a number");
    assert!(fence > 0);
    let current: serde_json::Value =
        serde_json::from_str(lines.next().unwrap_or_default()).expect("current -f json");
    assert_eq!(current["id"], vars[1]);
    assert_eq!(current["fence"], fence);
    assert_eq!(current["reason"], "e2e exec");
    // Released on success.
    d.cli(&["current", "x/one"]).exit(1);

    // Failure: the command's status, and released.
    d.cli(&["exec", "x/one", "--", "sh", "-c", "exit 7"])
        .exit(7);
    d.cli(&["current", "x/one"]).exit(1);
    // Killed by a signal: 128+N, and released.
    d.cli(&["exec", "x/one", "--", "sh", "-c", "kill -TERM $$"])
        .exit(143);
    d.cli(&["current", "x/one"]).exit(1);
    // No such command: 127 like a shell, and released.
    let missing = d
        .cli(&["exec", "x/one", "--", "/nonexistent/stormlock-test-cmd"])
        .exit(127);
    assert!(missing.stderr.contains("command not found"), "{missing:?}");
    d.cli(&["current", "x/one"]).exit(1);
    // The fence went up with every acquisition.
    let next = d
        .cli(&["exec", "x/one", "--", "sh", "-c", "echo $STORMLOCK_FENCE"])
        .ok();
    assert!(
        next.line().parse::<u64>().is_ok_and(|f| f > fence),
        "{next:?}"
    );

    // Held: exit 124 with the holder, and the command never runs.
    d.cli(&["acquire", "x/one", "--reason", "someone else"])
        .ok();
    let held = d
        .cli(&["exec", "x/one", "--", "sh", "-c", "echo ran"])
        .exit(124);
    assert_eq!(held.stdout, "", "{held:?}");
    assert!(held.stderr.starts_with("Lock held\n"), "{held:?}");
    assert!(held.stderr.contains("someone else"), "{held:?}");

    d.cli(&["exec", "x/two"]).exit(125);
}

/// SIGINT, SIGTERM and SIGHUP sent to exec reach the command, which handles
/// each its own way (its exit status says which one it got); the lease is
/// released after.
#[test]
fn exec_passes_signals_on_and_releases() {
    let d = Daemon::start();
    for (signal, handled) in [
        (Signal::SIGINT, 3),
        (Signal::SIGTERM, 4),
        (Signal::SIGHUP, 5),
    ] {
        let ready = d.dir.path().join(format!("ready-{signal}"));
        let script = format!(
            "trap 'echo INT; exit 3' INT; trap 'echo TERM; exit 4' TERM; \
             trap 'echo HUP; exit 5' HUP; touch {}; while :; do sleep 0.1; done",
            ready.display()
        );
        let mut exec = Background::spawn({
            let mut c = d.command(&["exec", "-t", "1h", "x/sig", "--", "sh", "-c", &script]);
            c.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            c
        });
        eventually(
            "the command has set its traps",
            Duration::from_secs(10),
            || ready.exists(),
        );
        exec.signal(signal);
        let status = exec.wait(Duration::from_secs(20));
        let mut out = String::new();
        if let Some(mut stdout) = exec.child.stdout.take() {
            std::io::Read::read_to_string(&mut stdout, &mut out).expect("stdout");
        }
        assert_eq!(status.code(), Some(handled), "{signal}: {status}, {out:?}");
        assert_eq!(out.trim(), &signal.as_str()[3..], "{signal}");
        d.cli(&["current", "x/sig"]).exit(1);
    }
}

/// A command that runs longer than the TTL keeps its lease: exec renews it
/// (the command checks, after its TTL has passed twice over, that its lease
/// is still the current one).
#[test]
fn exec_renews_the_lease_while_the_command_runs_past_its_ttl() {
    let d = Daemon::start();
    let script = r#"sleep 5 && "$0" is-held "$STORMLOCK_RESOURCE""#;
    let run = d
        .cli(&[
            "exec",
            "-t",
            "2s",
            "x/long",
            "--",
            "sh",
            "-c",
            script,
            stormlock(),
        ])
        .ok();
    assert!(!run.stderr.contains("lost the lock"), "{run:?}");
    d.cli(&["current", "x/long"]).exit(1);
}

/// A command that exists but cannot be run: 126, as a shell says, and the
/// lease is released.
#[test]
fn exec_of_a_command_that_cannot_run_is_126() {
    let d = Daemon::start();
    let script = d.dir.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\necho ran\n").expect("script");
    let script = script.display().to_string();
    let run = d.cli(&["exec", "x/cannot", "--", &script]).exit(126);
    assert_eq!(run.stdout, "", "{run:?}");
    assert!(run.stderr.contains("cannot run the command"), "{run:?}");
    d.cli(&["current", "x/cannot"]).exit(1);
}

/// The daemon refuses the wait for a reason no other status describes (its
/// line is full): exec exits 125 (70 elsewhere) and never runs the command.
#[test]
fn exec_refused_by_a_waiter_limit_is_125() {
    let setup = tempfile::tempdir().expect("tempdir");
    let config = setup.path().join("stormlockd.toml");
    std::fs::write(&config, "[limits]\nmax_waiters_per_resource = 1\n").expect("config");
    let d = Daemon::start_with(&["--config", &config.display().to_string()]);
    d.cli(&["acquire", "-t", "1h", "x/full"]).ok();
    let _waiter = Background::spawn({
        let mut c = d.command(&["acquire", "--wait", "60s", "x/full"]);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    });
    d.until_waiting("x/full", 1);
    let run = d
        .cli(&[
            "exec", "--wait", "60s", "x/full", "--", "sh", "-c", "echo ran",
        ])
        .exit(125);
    assert_eq!(run.stdout, "", "the command never ran: {run:?}");
    assert!(run.stderr.contains("max_waiters_per_resource"), "{run:?}");
}

/// Starts `exec` with a command whose shell writes its pid and its
/// background child's pid to a file, and waits for that file.
fn exec_with_grandchild(d: &Daemon, args: &[&str], script: &str) -> (Background, Vec<i32>) {
    let pids = d.dir.path().join("pids");
    let script = format!("{script}; sleep 60 & echo $$ $! > {}; wait", pids.display());
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--", "sh", "-c", &script]);
    let exec = Background::spawn({
        let mut c = d.command(&all);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.dir.path().join("exec.err")).expect("stderr file"));
        c
    });
    eventually("the command has started", Duration::from_secs(10), || {
        pids_in(&pids).len() == 2
    });
    let pids = pids_in(&pids);
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");
    (exec, pids)
}

/// Force-releases the lease of an `exec` started with `args` and checks that
/// exec stops the command's whole group, says who and why, and exits 123.
fn force_release_stops_exec(d: &Daemon, args: &[&str]) {
    let (mut exec, pids) = exec_with_grandchild(d, args, "true");
    d.cli(&["force-release", "x/forced", "--reason", "incident 7"])
        .ok();
    let status = exec.wait(Duration::from_secs(20));
    let stderr = std::fs::read_to_string(d.dir.path().join("exec.err")).unwrap_or_default();
    assert_eq!(status.code(), Some(123), "{status}: {stderr}");
    assert!(stderr.contains("lost the lock on x/forced"), "{stderr}");
    assert!(stderr.contains("force-released by"), "who: {stderr}");
    assert!(stderr.contains("incident 7"), "why: {stderr}");
    eventually(
        "shell and grandchild are gone",
        Duration::from_secs(5),
        || pids.iter().all(|&p| !alive(p)),
    );
}

/// exec watches its resource and learns of the force-release at once.
#[test]
fn exec_stops_the_process_group_when_the_lease_is_force_released() {
    let d = Daemon::start();
    force_release_stops_exec(&d, &["exec", "-t", "1h", "x/forced"]);
}

/// A caller that may not watch learns from its next renewal instead (a TTL
/// of 3 s renews every second).
#[test]
fn exec_learns_of_a_force_release_from_renewals_without_watch() {
    let setup = tempfile::tempdir().expect("tempdir");
    let config = setup.path().join("stormlockd.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\ndefault = \"deny\"\n\
             [[auth.tokens]]\nprincipal = \"ci\"\nsha256 = \"{}\"\n\
             [[auth.rules]]\nprincipals = [\"ci\"]\nresources = [\"**\"]\n\
             actions = [\"acquire\", \"renew\", \"release\", \"read\"]\n",
            stormlockd::auth::hash_token("ci-token")
        ),
    )
    .expect("config");
    let token = setup.path().join("token");
    std::fs::write(&token, "ci-token\n").expect("token");
    let d = Daemon::start_with(&["--config", &config.display().to_string()]);
    let ca = d.data_dir().join("tls/ca.crt").display().to_string();
    let token = token.display().to_string();
    let denied = d
        .cli(&["--ca", &ca, "--token-file", &token, "watch", "x/forced"])
        .exit(5);
    assert!(denied.stderr.contains("permission denied"), "{denied:?}");
    force_release_stops_exec(
        &d,
        &[
            "--ca",
            &ca,
            "--token-file",
            &token,
            "exec",
            "-t",
            "3s",
            "x/forced",
        ],
    );
}

#[test]
fn exec_stops_the_command_when_renewals_cannot_get_through() {
    let d = Daemon::start();
    // Both the shell and its child ignore SIGTERM: only SIGKILL, after the
    // grace period, stops them.
    let (mut exec, pids) = exec_with_grandchild(
        &d,
        &[
            "--timeout",
            "1s",
            "exec",
            "-t",
            "2s",
            "--grace",
            "1s",
            "x/frozen",
        ],
        "trap '' TERM",
    );
    let daemon = Pid::from_raw(i32::try_from(d.child.id()).expect("pid"));
    kill(daemon, Signal::SIGSTOP).expect("freeze the daemon");
    let status = exec.wait(Duration::from_secs(20));
    kill(daemon, Signal::SIGCONT).expect("thaw the daemon");
    let stderr = std::fs::read_to_string(d.dir.path().join("exec.err")).unwrap_or_default();
    assert_eq!(status.code(), Some(123), "{status}: {stderr}");
    assert!(stderr.contains("lost the lock on x/frozen"), "{stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
    eventually(
        "shell and grandchild are gone",
        Duration::from_secs(5),
        || pids.iter().all(|&p| !alive(p)),
    );
}

/// Ctrl-C, SIGTERM or SIGHUP while waiting ends the wait with 128+N and
/// leaves no lease: once the holder lets go, the next caller gets the very
/// next fence, so nothing was granted to a waiter that gave up.
#[test]
fn interrupted_waits_leave_no_lease() {
    let d = Daemon::start();
    let holder = d.cli(&["acquire", "-t", "1h", "x/wait"]).ok().line();
    let fence = d.fence("x/wait").expect("held");
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        for command in [
            &["acquire", "-t", "1h", "--wait", "60s", "x/wait"][..],
            &[
                "exec", "-t", "1h", "--wait", "60s", "x/wait", "--", "sh", "-c", "echo ran",
            ],
        ] {
            let mut waiter = Background::spawn({
                let mut c = d.command(command);
                c.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null());
                c
            });
            d.until_waiting("x/wait", 1);
            waiter.signal(signal);
            let status = waiter.wait(Duration::from_secs(20));
            assert_eq!(
                status.code(),
                Some(128 + signal as i32),
                "{signal} {command:?}: {status}"
            );
            let mut out = String::new();
            if let Some(mut stdout) = waiter.child.stdout.take() {
                std::io::Read::read_to_string(&mut stdout, &mut out).expect("stdout");
            }
            assert_eq!(out, "", "{command:?}: nothing acquired, nothing ran");
            d.until_waiting("x/wait", 0);
        }
    }
    d.cli(&["release", "x/wait", &holder]).ok();
    d.cli(&["acquire", "-t", "1h", "x/wait"]).ok();
    assert_eq!(
        d.fence("x/wait"),
        Some(fence + 1),
        "a lease was granted to a waiter that gave up"
    );
}

/// A `watch` in the background, its output lines on a channel.
struct Watching {
    process: Background,
    lines: mpsc::Receiver<String>,
}

impl Watching {
    fn start(d: &Daemon, args: &[&str]) -> Self {
        let mut process = Background::spawn({
            let mut c = d.command(args);
            c.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(d.dir.path().join("watch.err")).expect("stderr"));
            c
        });
        let (tx, lines) = mpsc::channel();
        let stdout = process.child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { process, lines }
    }

    /// Changes `resource` until the watch prints something: the stream is
    /// open then. Returns the first line.
    fn until_streaming(&mut self, d: &Daemon, resource: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            assert!(Instant::now() < deadline, "watch printed nothing");
            if let Some(status) = self.process.child.try_wait().expect("try_wait") {
                panic!("watch exited early: {status}");
            }
            let id = d.cli(&["acquire", resource, "-t", "1h"]).ok().line();
            d.cli(&["release", resource, &id]).ok();
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
                return line;
            }
        }
    }
}

#[test]
fn watch_prints_one_line_per_event() {
    let d = Daemon::start();
    let mut watch = Watching::start(&d, &["watch", "--prefix", "w/", "-f", "json"]);
    watch.until_streaming(&d, "w/probe", Duration::from_secs(15));
    let id = d
        .cli(&["acquire", "w/a", "--reason", "watch me", "-t", "1h"])
        .ok()
        .line();
    // Moves the expiry by an hour (the daemon does not report moves of
    // less than its engines' rounding).
    d.cli(&["renew", "w/a", &id, "-t", "2h"]).ok();
    d.cli(&["force-release", "w/a", "--reason", "incident 9"])
        .ok();
    d.cli(&["acquire", "other", "-t", "1h"]).ok();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut events: Vec<serde_json::Value> = Vec::new();
    while events.len() < 3 {
        let line = watch
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("events so far: {events:?}"));
        let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        assert_ne!(event["resource"], "other", "outside the prefix");
        if event["resource"] == "w/a" {
            events.push(event);
        }
    }
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(
        kinds,
        ["acquired", "renewed", "force-released"],
        "{events:?}"
    );
    assert_eq!(events[0]["reason"], "watch me");
    assert!(events[2]["actor"].as_str().is_some_and(|a| !a.is_empty()));
    assert_eq!(events[2]["actor_reason"], "incident 9");
    watch.process.signal(Signal::SIGINT);
    let status = watch.process.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "Ctrl-C ends a watch: {status}");
}

#[test]
fn watch_reconnects_when_the_daemon_restarts() {
    let mut d = Daemon::start();
    let mut watch = Watching::start(&d, &["watch", "w/r"]);
    let first = watch.until_streaming(&d, "w/r", Duration::from_secs(15));
    // The stream may open between the probe's acquire and its release.
    assert!(
        first.contains(" acquired ") || first.contains(" released "),
        "{first}"
    );
    assert!(first.contains(" w/r "), "{first}");
    d.restart();
    let stderr = || std::fs::read_to_string(d.dir.path().join("watch.err")).unwrap_or_default();
    // Backoff is at most 10 s between attempts.
    eventually("watch reconnects", Duration::from_secs(30), || {
        stderr().contains("watching again")
    });
    assert!(stderr().contains("reconnecting"), "{}", stderr());
    // Events from before the restart are behind us; new ones flow.
    while watch.lines.try_recv().is_ok() {}
    let next = watch.until_streaming(&d, "w/r", Duration::from_secs(15));
    assert!(next.contains(" w/r "), "{next}");
}

#[test]
fn list_fits_columns_and_pages_through() {
    let d = Daemon::start();
    d.cli(&[
        "acquire",
        "list/long",
        "--reason",
        "a very long reason that goes on and on and on and on",
    ])
    .ok();
    // Piped, COLUMNS cuts nothing: a script reads whole lines (the width
    // of a terminal is tested in first_hour, in a pseudo-terminal).
    let piped = d
        .command(&["list"])
        .env("COLUMNS", "60")
        .output()
        .expect("list");
    let table = String::from_utf8_lossy(&piped.stdout);
    assert!(piped.status.success(), "{piped:?}");
    assert!(
        table.contains("a very long reason that goes on and on and on and on"),
        "the reason is whole: {table}"
    );
    assert!(!table.contains('…'), "{table}");
    assert!(table.contains("list/long"), "{table}");

    // More than one page (the daemon's default page is 100 leases).
    for i in 0..105 {
        d.cli(&["acquire", &format!("list/many/{i:03}")]).ok();
    }
    let all = d.cli(&["list", "list/many/"]).ok().stdout;
    assert_eq!(all.lines().count(), 1 + 105, "header and every lease");
    let json = d.cli(&["list", "list/many/", "-f", "json"]).ok().stdout;
    let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(value.as_array().map(Vec::len), Some(105));
}

/// `is-held` says 4, never 1 ("not held"), when it cannot know.
#[test]
fn is_held_cannot_tell_when_the_daemon_does_not_answer() {
    let d = Daemon::start();
    let id = d.cli(&["acquire", "-t", "1h", "x/held"]).ok().line();
    d.cli(&["is-held", "x/held", &id]).ok();
    d.cli(&["is-held", "x/held", "0123456789abcdef0123456789abcdef"])
        .exit(1);
    let daemon = Pid::from_raw(i32::try_from(d.child.id()).expect("pid"));
    kill(daemon, Signal::SIGSTOP).expect("freeze the daemon");
    let frozen = d.cli(&["--timeout", "1s", "is-held", "x/held", &id]);
    kill(daemon, Signal::SIGCONT).expect("thaw the daemon");
    let frozen = frozen.exit(4);
    assert!(frozen.stderr.starts_with("stormlock: "), "{frozen:?}");
    d.cli(&["is-held", "x/held", &id]).ok();
}

/// The daemon answers, its backend does not: `is-held` says 4, not 1.
#[cfg(feature = "redis")]
#[test]
fn is_held_cannot_tell_when_the_backend_does_not_answer() {
    let Some(redis) = crate::support::PrivateEngine::start("redis") else {
        return;
    };
    let setup = tempfile::tempdir().expect("tempdir");
    let config = setup.path().join("stormlockd.toml");
    std::fs::write(
        &config,
        format!(
            "[defaults]\nbackend = \"shared\"\nbackend_timeout = \"1s\"\n\
             [backends.shared]\ntype = \"redis\"\nurl = \"{}\"\nconnect_timeout = \"1s\"\n",
            redis.url
        ),
    )
    .expect("config");
    let d = Daemon::start_with(&["--config", &config.display().to_string()]);
    let id = d.cli(&["acquire", "-t", "1h", "x/backend"]).ok().line();
    d.cli(&["is-held", "x/backend", &id]).ok();
    redis.freeze();
    let frozen = d.cli(&["is-held", "x/backend", &id]);
    redis.thaw();
    let frozen = frozen.exit(4);
    assert!(frozen.stderr.contains("unavailable"), "{frozen:?}");
    eventually("the backend answers again", Duration::from_secs(10), || {
        d.cli(&["is-held", "x/backend", &id]).code == 0
    });
}

#[test]
fn new_commands_are_documented() {
    let d = Daemon::start();
    for shell in ["bash", "zsh", "fish"] {
        let script = d.cli(&["completions", shell]).ok().stdout;
        for command in ["exec", "watch", "list", "is-held"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
        assert!(script.contains("grace"), "{shell} lacks exec --grace");
    }
    let man = d.cli(&["man"]).ok().stdout;
    for text in [
        "exec",
        "Run a command while holding a lock",
        "watch",
        "123",
        "124",
    ] {
        assert!(man.contains(text), "the man page lacks {text}");
    }
    let help = d.cli(&["exec", "--help"]).ok().stdout;
    for text in [
        "STORMLOCK_LEASE_ID",
        "STORMLOCK_FENCE",
        "--grace",
        "123",
        "125",
    ] {
        assert!(help.contains(text), "exec --help lacks {text}: {help}");
    }
}

/// On a terminal (a pseudo-terminal from `script`): the spinner shows the
/// holder and its reason, and a command that reads the terminal, as
/// `terraform apply` does, gets it (it would be stopped by SIGTTIN if exec
/// left it in a background process group).
#[test]
fn on_a_terminal() {
    let has_script = std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_script {
        crate::support::skip_for_want_of("script(1), to make a pseudo-terminal,");
        return;
    }
    let d = Daemon::start();
    let in_terminal = |command: String, input: &'static str| {
        let mut c = d.with_env("script");
        c.args(["-qec", &command, "/dev/null"])
            .env("SHELL", "/bin/sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut run = Background::spawn(c);
        // Kept open until the end: script(1) ends the session when its
        // input ends.
        let mut stdin = run.child.stdin.take().expect("stdin");
        std::io::Write::write_all(&mut stdin, input.as_bytes()).expect("input");
        let status = run.wait(Duration::from_secs(20));
        drop(stdin);
        let mut out = String::new();
        if let Some(mut stdout) = run.child.stdout.take() {
            std::io::Read::read_to_string(&mut stdout, &mut out).expect("output");
        }
        (status, out)
    };

    d.cli(&["acquire", "-t", "2s", "--reason", "db migration", "tty/r"])
        .ok();
    // Someone else waits too, ahead of us, so that the spinner has a line
    // to show.
    let other = Background::spawn({
        let mut c = d.command(&["acquire", "-t", "1s", "--wait", "20s", "tty/r"]);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    });
    d.until_waiting("tty/r", 1);
    let (status, out) = in_terminal(
        format!(
            "stty rows 50 cols 250; {} acquire --wait 20s -t 1h tty/r; echo exit=$?",
            stormlock()
        ),
        "",
    );
    assert!(status.success(), "{status}: {out}");
    assert!(out.contains("waiting for tty/r"), "{out}");
    assert!(out.contains("held by "), "{out}");
    assert!(out.contains(": db migration"), "{out}");
    // "2nd of 2 in line" while the other waiter is ahead, then "next in line".
    assert!(out.contains(" in line"), "{out}");
    assert!(out.contains("exit=0"), "{out}");
    drop(other);
    let id = d.cli(&["current", "-f", "id", "tty/r"]).ok().line();
    assert!(out.contains(&id), "the new lease id is printed: {out}");
    d.cli(&["release", "tty/r", &id]).ok();

    let (status, out) = in_terminal(
        format!(
            "{} exec tty/r -- sh -c 'printf \"Apply? \"; read answer; echo \"got $answer\"'; \
             echo exit=$?",
            stormlock()
        ),
        "yes\n",
    );
    assert!(status.success(), "{status}: {out}");
    assert!(out.contains("got yes"), "{out}");
    assert!(out.contains("exit=0"), "{out}");
    d.cli(&["current", "tty/r"]).exit(1);
}

/// Ctrl-Z stops the command and exec with it, so that an interactive shell
/// gets its prompt back; `fg` gives the terminal back to the command.
#[test]
fn ctrl_z_suspends_exec_and_fg_resumes_it() {
    let tools = ["script", "bash"].iter().all(|tool| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !tools {
        crate::support::skip_for_want_of(
            "script(1) or bash, for a shell with job control on a pseudo-terminal,",
        );
        return;
    }
    let d = Daemon::start();
    let mut c = d.with_env("script");
    c.args(["-qec", "bash --norc --noprofile -i", "/dev/null"])
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut shell = Background::spawn(c);
    let mut stdin = shell.child.stdin.take().expect("stdin");
    let mut stdout = shell.child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut chunk = [0; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut chunk) {
            if tx
                .send(String::from_utf8_lossy(&chunk[..n]).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    // What the terminal showed so far; each step waits for what the one
    // before it makes the terminal show.
    let mut out = String::new();
    let mut type_then_see = |keys: &str, wanted: &str| {
        std::io::Write::write_all(&mut stdin, keys.as_bytes()).expect("type");
        let from = out.len();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !out[from..].contains(wanted) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => out.push_str(&chunk),
                Err(_) => panic!("{wanted:?} never showed after {keys:?}: {out}"),
            }
        }
    };
    type_then_see(
        &format!(
            "{} exec z/r -- sh -c 'echo reading; read x; echo got $x'\n",
            stormlock()
        ),
        "reading\r\n",
    );
    type_then_see("\x1a", "Stopped");
    type_then_see("jobs\n", "Stopped");
    type_then_see("fg\n", "exec z/r");
    type_then_see("yes\n", "got yes");
    type_then_see("echo status=$?\n", "status=0");
    type_then_see("exit\n", "exit");
    let status = shell.wait(Duration::from_secs(30));
    drop(stdin);
    assert!(status.success(), "{status}: {out}");
    d.cli(&["current", "z/r"]).exit(1);
}

/// A daemon that grants everything and whose watch reports, at once, that
/// the lease just granted has expired, while `IsHeld` says it is current:
/// a false alarm, like a stale or reordered watch event.
mod false_alarm {
    use std::pin::Pin;

    use futures::{Stream, StreamExt as _};
    use stormlock_api::pb::{self, lock_service_server::LockService};
    use tonic::{Request, Response, Status};

    pub struct FalseAlarm;

    fn lease(resource: &str) -> pb::Lease {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970");
        let at = |secs: u64| prost_types::Timestamp {
            seconds: i64::try_from(now.as_secs() + secs).expect("seconds"),
            nanos: 0,
        };
        pb::Lease {
            resource: resource.to_string(),
            lease_id: "0".repeat(32),
            principal: "alice".to_string(),
            reason: String::new(),
            acquired_at: Some(at(0)),
            expires_at: Some(at(3600)),
            fence: 7,
        }
    }

    type Events = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

    #[tonic::async_trait]
    impl LockService for FalseAlarm {
        async fn acquire(
            &self,
            request: Request<pb::AcquireRequest>,
        ) -> Result<Response<pb::AcquireResponse>, Status> {
            Ok(Response::new(pb::AcquireResponse {
                acquired: true,
                lease: Some(lease(&request.into_inner().resource)),
                ..Default::default()
            }))
        }
        async fn release(
            &self,
            _: Request<pb::ReleaseRequest>,
        ) -> Result<Response<pb::ReleaseResponse>, Status> {
            Ok(Response::new(pb::ReleaseResponse { released: true }))
        }
        async fn renew(
            &self,
            request: Request<pb::RenewRequest>,
        ) -> Result<Response<pb::RenewResponse>, Status> {
            Ok(Response::new(pb::RenewResponse {
                lease: Some(lease(&request.into_inner().resource)),
                ..Default::default()
            }))
        }
        async fn current(
            &self,
            _: Request<pb::CurrentRequest>,
        ) -> Result<Response<pb::CurrentResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn is_held(
            &self,
            _: Request<pb::IsHeldRequest>,
        ) -> Result<Response<pb::IsHeldResponse>, Status> {
            Ok(Response::new(pb::IsHeldResponse { held: true }))
        }
        async fn list(
            &self,
            _: Request<pb::ListRequest>,
        ) -> Result<Response<pb::ListResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn force_release(
            &self,
            _: Request<pb::ForceReleaseRequest>,
        ) -> Result<Response<pb::ForceReleaseResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn reserve(
            &self,
            _: Request<pb::ReserveRequest>,
        ) -> Result<Response<pb::ReserveResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn unreserve(
            &self,
            _: Request<pb::UnreserveRequest>,
        ) -> Result<Response<pb::UnreserveResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn list_reservations(
            &self,
            _: Request<pb::ListReservationsRequest>,
        ) -> Result<Response<pb::ListReservationsResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        type WatchStream = Events;
        async fn watch(
            &self,
            request: Request<pb::WatchRequest>,
        ) -> Result<Response<Events>, Status> {
            let event = pb::WatchResponse {
                r#type: pb::EventType::Expired as i32,
                lease: Some(lease(&request.into_inner().resource)),
                ..Default::default()
            };
            let events = futures::stream::iter([Ok(event)]).chain(futures::stream::pending());
            Ok(Response::new(Box::pin(events)))
        }
    }
}

/// `exec` stops its command on a watch event only once `IsHeld` confirms
/// that the lease is gone: here the watch says "expired" at once and IsHeld
/// says "held", and the command runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_does_not_stop_its_command_on_a_false_alarm() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                stormlock_api::pb::lock_service_server::LockServiceServer::new(
                    false_alarm::FalseAlarm,
                ),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let home = tempfile::tempdir().expect("tempdir");
    let mut command = crate::e2e::cli_command(
        &[
            "--addr",
            &format!("http://127.0.0.1:{port}"),
            "exec",
            "-t",
            "1h",
            "x/alarm",
            "--",
            "sh",
            "-c",
            "sleep 2; echo finished",
        ],
        home.path(),
        &home.path().join("data"),
        None,
    );
    let out = tokio::task::spawn_blocking(move || command.output().expect("run stormlock"))
        .await
        .expect("join");
    server.abort();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains("finished"), "{stdout}\n{stderr}");
    assert!(!stderr.contains("lost the lock"), "{stderr}");
}
