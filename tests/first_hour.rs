//! What teams moving from Python stormlock 0.4.1, and newcomers, run into
//! in their first hour, end to end with the real binaries (over mutual TLS
//! with the development certificates, unless said otherwise): `exec`'s own
//! exit statuses, kept apart from its command's; `STORMLOCK_CONFIG` still
//! pointing at Python stormlock's INI file; `exec` without `--`; negative
//! durations; `list --prefix`; output cut short by a closed pipe.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::e2e::{Daemon, Run, run_cli, stormlockd};
use crate::support::{acquire_request, free_port};

/// Runs `command` to the end, its standard input empty.
fn run(command: Command) -> Run {
    run_reading(command, Stdio::null())
}

/// Runs `command` with `stdin` as its standard input.
fn run_reading(mut command: Command, stdin: Stdio) -> Run {
    let out = command.stdin(stdin).output().expect("run the binary");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The CLI with no daemon anywhere (usage errors).
fn cli_alone(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    run_cli(args, dir.path(), &dir.path().join("data"), None)
}

/// Polls until `check` holds; the limit only stops a stuck test.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not after 30 s");
        sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit; the limit only stops a stuck test.
fn wait(child: &mut Child) -> ExitStatus {
    let mut status = None;
    eventually("the process exits", || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    status.expect("exited")
}

#[test]
fn exec_passes_its_commands_status_on_and_keeps_its_own_apart() {
    let d = Daemon::start();
    // `terraform plan -detailed-exitcode` exits 2 for "changes present",
    // which must not read as "lock held".
    let plan = d
        .cli(&["exec", "tf/prod", "--", "sh", "-c", "echo planned; exit 2"])
        .exit(2);
    assert_eq!(plan.stdout, "planned\n", "{plan:?}");
    assert_eq!(plan.stderr, "", "{plan:?}");
    d.cli(&["current", "tf/prod"]).exit(1);

    let missing = d
        .cli(&["exec", "tf/prod", "--", "/nonexistent/terraform", "plan"])
        .exit(127);
    assert!(missing.stderr.contains("command not found"), "{missing:?}");
    d.cli(&["current", "tf/prod"]).exit(1);

    // Held, with or without a wait: 124, the holder and reason on stderr,
    // and the command does not run.
    d.cli(&["acquire", "-t", "1h", "--reason", "INC-1 apply", "tf/prod"])
        .ok();
    for wait in [&[][..], &["--wait", "1s"]] {
        let mut args = vec!["exec"];
        args.extend(wait);
        args.extend(["tf/prod", "--", "sh", "-c", "echo ran"]);
        let held = d.cli(&args).exit(124);
        assert_eq!(held.stdout, "", "never ran: {held:?}");
        assert!(held.stderr.starts_with("Lock held\n"), "{held:?}");
        assert!(held.stderr.contains("INC-1 apply"), "{held:?}");
    }
    // Every other command keeps Python stormlock's statuses.
    d.cli(&["acquire", "tf/prod"]).exit(2);
}

#[test]
fn exec_is_125_when_stormlock_fails_before_the_command_runs() {
    let d = Daemon::start();
    // Certificates present, nothing listening.
    let args = ["exec", "r", "--", "sh", "-c", "echo ran"];
    let unreachable = run_cli(&args, d.dir.path(), &d.data_dir(), Some(free_port())).exit(125);
    assert_eq!(unreachable.stdout, "", "{unreachable:?}");
    assert!(
        unreachable.stderr.starts_with("stormlock: cannot connect"),
        "says what: {unreachable:?}"
    );
    // Refused (no client certificate), and usage errors, clap's and ours.
    let ca = d.data_dir().join("tls/ca.crt").display().to_string();
    let denied = d.cli(&["--ca", &ca, "exec", "r", "--", "true"]).exit(125);
    assert!(denied.stderr.contains("client certificate"), "{denied:?}");
    let bad_ttl = d
        .cli(&["exec", "-t", "4 weeks", "r", "--", "true"])
        .exit(125);
    assert!(bad_ttl.stderr.contains("weeks"), "{bad_ttl:?}");
    let bad_config = d.dir.path().join("bad.toml");
    std::fs::write(&bad_config, "adress = 'h:1'\n").expect("config");
    let config = bad_config.display().to_string();
    let bad_config = d.cli(&["-c", &config, "exec", "r", "--", "true"]).exit(125);
    assert!(bad_config.stderr.contains("adress"), "{bad_config:?}");
    d.cli(&["current", "r"]).exit(1);
}

/// An administrator force-releases the lease while the command (`sleep`)
/// runs: exec stops it, says who and why, and exits 123.
#[test]
fn exec_that_loses_its_lease_is_123() {
    let d = Daemon::start();
    let started = d.dir.path().join("started");
    let errors = d.dir.path().join("exec.err");
    // A short TTL: renewals every second notice the loss even if the watch
    // is not established yet.
    let mut exec = d
        .command(&[
            "exec",
            "-t",
            "3s",
            "--grace",
            "5s",
            "lost/r",
            "--",
            "sh",
            "-c",
            &format!("touch {}; exec sleep 60", started.display()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errors).expect("stderr file"))
        .spawn()
        .expect("spawn stormlock exec");
    eventually("the command runs", || started.exists());
    d.cli(&["force-release", "lost/r", "--reason", "INC-2"])
        .ok();
    let status = wait(&mut exec);
    let stderr = std::fs::read_to_string(&errors).unwrap_or_default();
    assert_eq!(status.code(), Some(123), "{status}: {stderr}");
    assert!(stderr.contains("lost the lock on lost/r"), "{stderr}");
    assert!(stderr.contains("INC-2"), "why: {stderr}");
}

const PYTHON_CONFIG: &str = "\
# Python stormlock 0.4.1
[default]
backend = redis
principal = py-alice
ttl = 2 hours

[deploy/prod]
ttl = 90 seconds

[backend.redis]
url = redis://redis.internal:6379/0
";

/// The lease's length in seconds, from `current -f json`.
fn ttl_of(d: &Daemon, resource: &str) -> i64 {
    let json = d.cli(&["current", "-f", "json", resource]).ok().stdout;
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let clock = |key: &str| -> i64 {
        let t = value[key].as_str().unwrap_or_default();
        t.get(11..19)
            .unwrap_or_default()
            .split(':')
            .filter_map(|p| p.parse::<i64>().ok())
            .fold(0, |acc, p| acc * 60 + p)
    };
    (clock("expires") - clock("created")).rem_euclid(86_400)
}

/// Asserts that `run` printed the one-line note about a Python file.
fn noted_python(run: &Run, config: &Path) {
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {run:?}");
    assert!(lines[0].contains(&config.display().to_string()), "{run:?}");
    assert!(lines[0].contains("Python stormlock"), "{run:?}");
    assert!(lines[0].contains("MIGRATING.md"), "{run:?}");
    assert!(lines[0].contains("TOML"), "{run:?}");
}

#[test]
fn a_python_stormlock_config_file_still_works() {
    let d = Daemon::start();
    let config = d.dir.path().join(".stormlock.cfg");
    std::fs::write(&config, PYTHON_CONFIG).expect("config");
    let with_config = |args: &[&str]| {
        let mut command = d.command(args);
        command.env("STORMLOCK_CONFIG", &config);
        run(command)
    };
    // The resource's own section's TTL.
    let acquired = with_config(&["acquire", "deploy/prod"]).ok();
    assert_eq!(acquired.line().len(), 32, "{acquired:?}");
    noted_python(&acquired, &config);
    assert_eq!(ttl_of(&d, "deploy/prod"), 90);
    // [default]'s, and with --addr given too.
    let addr = format!("127.0.0.1:{}", d.port);
    let other = with_config(&["--addr", &addr, "acquire", "deploy/staging"]).ok();
    noted_python(&other, &config);
    assert_eq!(ttl_of(&d, "deploy/staging"), 7200);
    let listed = with_config(&["list", "--prefix", "deploy/"]).ok();
    assert_eq!(listed.stdout.lines().count(), 3, "{listed:?}");
    noted_python(&listed, &config);
}

/// Python stormlock's principal is declared where a declared name still
/// counts: to a daemon that authenticates nobody (plain text here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_stormlock_principal_names_a_client_without_credentials() {
    let daemon = crate::support::DaemonProcess::start("", &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join(".stormlock.cfg");
    std::fs::write(&config, PYTHON_CONFIG).expect("config");
    let addr = format!("http://127.0.0.1:{}", daemon.port);
    let cli = |args: &[&str]| {
        let mut command = crate::e2e::cli_command(args, dir.path(), &dir.path().join("data"), None);
        command
            .env("STORMLOCK_CONFIG", &config)
            .env("STORMLOCK_ADDR", &addr);
        run(command)
    };
    let acquired = cli(&["acquire", "deploy/prod"]).ok();
    noted_python(&acquired, &config);
    let current = cli(&["current", "-f", "json", "deploy/prod"]).ok();
    let value: serde_json::Value = serde_json::from_str(&current.stdout).expect("valid JSON");
    assert_eq!(value["principal"], "py-alice", "{current:?}");
}

#[test]
fn exec_without_the_separator_says_where_it_goes() {
    let run = cli_alone(&[
        "exec",
        "-t",
        "5m",
        "tf/prod",
        "terraform",
        "plan",
        "-no-color",
    ])
    .exit(125);
    assert!(
        run.stderr
            .contains("put `--` before the command: stormlock exec tf/prod -- terraform …"),
        "{run:?}"
    );
    let run = cli_alone(&["exec", "tf/prod"]).exit(125);
    assert!(
        run.stderr.contains("put `--` before the command"),
        "{run:?}"
    );
}

#[test]
fn negative_durations_are_duration_errors() {
    for args in [
        &["acquire", "-t", "-1", "r"][..],
        &["acquire", "r", "--wait", "-5m"],
        &["renew", "-t", "-1", "r", "id"],
        &["--timeout", "-1", "current", "r"],
    ] {
        let run = cli_alone(args).exit(64);
        assert!(
            run.stderr.contains("cannot be negative"),
            "{args:?}: {run:?}"
        );
        assert!(!run.stderr.contains("unexpected argument"), "{run:?}");
    }
    let run = cli_alone(&["exec", "-t", "-1", "r", "--", "true"]).exit(125);
    assert!(run.stderr.contains("cannot be negative"), "{run:?}");
}

#[test]
fn list_takes_prefix_as_watch_does() {
    let d = Daemon::start();
    for r in ["team/a", "team/b", "other"] {
        d.cli(&["acquire", "-t", "1h", r]).ok();
    }
    let flag = d.cli(&["list", "--prefix", "team/", "-f", "json"]).ok();
    let positional = d.cli(&["list", "team/", "-f", "json"]).ok();
    let value: serde_json::Value = serde_json::from_str(&flag.stdout).expect("valid JSON");
    let resources: Vec<&str> = value
        .as_array()
        .map(|a| a.iter().filter_map(|l| l["resource"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(resources, ["team/a", "team/b"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&positional.stdout).expect("valid JSON"),
        value
    );
    d.cli(&["list", "team/", "--prefix", "other"]).exit(64);
}

/// `command` with its standard output already closed by its reader, as
/// `| head -1` leaves it: every write fails with EPIPE.
fn to_a_closed_pipe(command: Command) -> Run {
    to_a_closed_pipe_reading(command, Stdio::null())
}

/// Like [`to_a_closed_pipe`], with `stdin` as the standard input.
fn to_a_closed_pipe_reading(mut command: Command, stdin: Stdio) -> Run {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    command.stdout(writer);
    run_reading(command, stdin)
}

/// A 256-bit token in a file, for `hash-token` to read.
fn write_token(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{}\n", "ab".repeat(32))).expect("token");
    path
}

/// The printing commands of both binaries end quietly with 0 when their
/// reader has gone: the reader took what it wanted.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    let mut new_token = Command::new(stormlockd());
    new_token
        .args(["new-token", "ci"])
        .env_remove("STORMLOCKD_CONFIG");
    let run = to_a_closed_pipe(new_token).exit(0);
    assert_eq!(run.stderr, "", "{run:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stormlockd.toml");
    std::fs::write(&config, "[backends.main]\ntype = \"memory\"\n").expect("config");
    for offline in [false, true] {
        let mut check = Command::new(stormlockd());
        check.arg("check-config");
        if offline {
            check.arg("--offline");
        }
        check.arg(&config).env_remove("STORMLOCKD_CONFIG");
        let run = to_a_closed_pipe(check).exit(0);
        assert_eq!(run.stderr, "", "check-config (offline {offline}): {run:?}");
    }
    let mut hash = Command::new(stormlockd());
    hash.arg("hash-token").env_remove("STORMLOCKD_CONFIG");
    let token = std::fs::File::open(write_token(dir.path())).expect("token");
    let run = to_a_closed_pipe_reading(hash, token.into()).exit(0);
    assert_eq!(run.stderr, "", "hash-token: {run:?}");

    let d = Daemon::start();
    d.grpc(|mut client| async move {
        for n in 0..200 {
            client
                .acquire(acquire_request(&format!("pipe/{n:03}"), 3600, 0))
                .await
                .expect("acquire");
        }
    });
    for args in [
        &["list"][..],
        &["list", "-f", "json"],
        &["completions", "bash"],
        &["man"],
    ] {
        let run = to_a_closed_pipe(d.command(args)).exit(0);
        assert_eq!(run.stderr, "", "{args:?}: {run:?}");
    }
}

/// The daemon's first lines say what it runs on: version, config file (or
/// the embedded default), data directory, backends, the TLS files, and, on
/// the first start only, that it created a development CA.
#[test]
fn the_start_up_lines_say_what_the_daemon_runs_on() {
    let mut d = Daemon::start();
    let log = d.log();
    let data = d.dir.path().join("data");
    for want in [
        format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        "config=none: the embedded default".to_string(),
        format!("data_dir={}", data.display()),
        "backends=main (embedded)".to_string(),
        "created a development CA".to_string(),
        format!("cert={}", data.join("tls").join("server.crt").display()),
        format!("client_ca={}", data.join("tls").join("ca.crt").display()),
    ] {
        assert!(log.contains(&want), "{want:?} not in:\n{log}");
    }
    d.restart();
    let log = d.log();
    assert_eq!(
        log.matches("starting stormlockd").count(),
        2,
        "one start-up line per start:\n{log}"
    );
    assert_eq!(
        log.matches("created a development CA").count(),
        1,
        "the CA is created once, and said so once:\n{log}"
    );
}
