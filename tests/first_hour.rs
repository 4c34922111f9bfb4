//! What teams moving from Python stormlock 0.4.1, and newcomers, run into
//! in their first hour, end to end with the real binaries (over mutual TLS
//! with the development certificates, unless said otherwise): `exec`'s own
//! exit statuses, kept apart from its command's; `STORMLOCK_CONFIG` still
//! pointing at Python stormlock's INI file, and `migrate-config` turning it
//! into TOML; `exec` without `--`; negative durations; `list --prefix`;
//! output cut short by a closed pipe, and an `acquire` whose lease id cannot
//! be delivered; Python's formats next to the real Python CLI's; `$COLUMNS`,
//! narrow terminals and the wait spinner; TLS and connection errors that
//! say which setting to fix; a man page per command.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::e2e::{Daemon, Run, run_cli, stormlock, stormlockd};
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

/// A Python stormlock 0.4.1 file with every engine's section, as Python
/// reads it (`%%` is ConfigParser's `%`), with secrets that must not be
/// printed.
const PYTHON_ALL_ENGINES: &str = "\
[DEFAULT]
principal = py-ops

[default]
backend = redis
ttl = 30 min

[deploy/prod]
ttl = 90 seconds

[jobs/nightly]
backend = postgresql
ttl = 2 hours

[db/migrate]
backend = mysql

[backend.redis]
url = redis://:red%%40cted1@redis.internal:6379/0

[backend.postgresql]
connection = host=db.internal port=5432 dbname=ops user=locker password=redacted2
table = stormlock

[backend.mysql]
host = mysql.internal
user = locker
password = redacted3
database = ops

[backend.etcd]
host = etcd.internal
ca_cert = /etc/etcd/ca.pem
user = root
password = redacted4

[backend.dynamodb]
region = eu-west-1
access_key_id = AKIAREDACTED5
secret_access_key = redacted6
";

/// The venv's Python with Python stormlock 0.4.1, if installed.
fn venv_python() -> Option<std::path::PathBuf> {
    let venv = std::env::var_os("STORMLOCK_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/stormlock/venv")
        });
    let python = venv.join("bin/python3");
    python.is_file().then_some(python)
}

/// What the real Python stormlock reads from `file`: the redis and
/// postgresql backends' keyword arguments, and `deploy/prod`'s TTL in
/// seconds, one per line.
fn python_reads(python: &Path, file: &Path) -> Vec<String> {
    let script = "\
import sys
from configparser import ConfigParser
from inspect import signature
from stormlock._backend_config import _config_for_signature
from stormlock.backend import find_backend
from stormlock.lock import _get_cfg_value, parse_ttl
cfg = ConfigParser()
cfg.read(sys.argv[1])
print(_config_for_signature(cfg, 'backend.redis', signature(find_backend('redis')))['url'])
print(_config_for_signature(cfg, 'backend.postgresql', signature(find_backend('postgresql')))['connection'])
print(int(parse_ttl(_get_cfg_value(cfg, 'deploy/prod', 'ttl')).total_seconds()))
";
    let mut command = Command::new(python);
    command.arg("-c").arg(script).arg(file);
    let run = run(command).ok();
    run.stdout.lines().map(str::to_string).collect()
}

#[test]
fn migrate_config_prints_toml_that_the_daemon_and_this_cli_accept() {
    let d = Daemon::start();
    let file = d.dir.path().join(".stormlock.cfg");
    std::fs::write(&file, PYTHON_ALL_ENGINES).expect("config");
    let path = file.display().to_string();
    if let Some(python) = venv_python() {
        // The file is one the real Python stormlock reads.
        let read = python_reads(&python, &file);
        assert_eq!(
            read,
            [
                "redis://:red%40cted1@redis.internal:6379/0",
                "host=db.internal port=5432 dbname=ops user=locker password=redacted2",
                "90",
            ]
        );
    } else {
        crate::support::skip_for_want_of("Python stormlock's venv (scripts/setup)");
    }
    let secrets = [
        "red%40cted1",
        "redacted2",
        "redacted3",
        "redacted4",
        "AKIAREDACTED5",
        "redacted6",
    ];
    let both = cli_alone(&["migrate-config", &path]).ok();
    for secret in secrets {
        assert!(!both.stdout.contains(secret), "{secret} printed: {both:?}");
    }
    assert_eq!(both.stderr, "", "{both:?}");

    // The daemon's part passes the daemon's own check, with the variables
    // it names set.
    let daemon = cli_alone(&["migrate-config", "--only", "daemon", &path]).ok();
    let daemon_file = d.dir.path().join("stormlockd.toml");
    std::fs::write(&daemon_file, &daemon.stdout).expect("daemon config");
    let mut check = Command::new(stormlockd());
    check
        .args(["check-config", "--offline"])
        .arg(&daemon_file)
        .env_remove("STORMLOCKD_CONFIG");
    for var in [
        "REDIS_PASSWORD",
        "PGPASSWORD",
        "MYSQL_PASSWORD",
        "ETCD_PASSWORD",
    ] {
        assert!(
            daemon.stdout.contains(&format!("${{{var}}}")),
            "{var}: {daemon:?}"
        );
        check.env(var, "from-the-environment");
    }
    let checked = run(check);
    assert_eq!(checked.code, 0, "{checked:?}\n{}", daemon.stdout);

    // This CLI's part is this CLI's config file: no note about Python's.
    let cli = cli_alone(&["migrate-config", "--only", "cli", &path]).ok();
    assert!(!cli.stdout.contains("[backends"), "{cli:?}");
    let cli_file = d.dir.path().join("stormlock.toml");
    std::fs::write(&cli_file, &cli.stdout).expect("cli config");
    let cli_path = cli_file.display().to_string();
    let acquired = d
        .cli(&["-c", &cli_path, "acquire", "-t", "1m", "migrated"])
        .ok();
    assert_eq!(acquired.stderr, "", "{acquired:?}");

    // Not Python's file: a usage error that says so.
    let toml = cli_alone(&["migrate-config", &cli_path]).exit(64);
    assert!(toml.stderr.contains("is TOML"), "{toml:?}");
    let missing = cli_alone(&["migrate-config", "/nonexistent/.stormlock.cfg"]).exit(64);
    assert!(missing.stderr.contains("cannot read"), "{missing:?}");
}

/// The converted Redis table, checked by the daemon against a real Redis
/// (`tests/engines.sh run`): it connects and reads the eviction policy.
#[test]
fn migrate_config_for_a_real_redis_passes_check_config() {
    let Some(url) = crate::support::engine_url("STORMLOCK_TEST_REDIS_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(".stormlock.cfg");
    let python = format!(
        "[default]\nbackend = redis\nprincipal = p\nttl = 1 hours\n[backend.redis]\nurl = {}\n",
        url.replace('%', "%%")
    );
    std::fs::write(&file, python).expect("config");
    let daemon = cli_alone(&[
        "migrate-config",
        "--only",
        "daemon",
        &file.display().to_string(),
    ])
    .ok();
    let daemon_file = dir.path().join("stormlockd.toml");
    std::fs::write(&daemon_file, &daemon.stdout).expect("daemon config");
    let mut check = Command::new(stormlockd());
    check
        .arg("check-config")
        .arg(&daemon_file)
        .env_remove("STORMLOCKD_CONFIG");
    let checked = run(check);
    assert_eq!(checked.code, 0, "{checked:?}\n{}", daemon.stdout);
}

/// An acquire whose lease id cannot reach anyone (its reader is gone, or
/// the disk is full) gives the lease back and exits 70: nothing is held,
/// rather than a lock nobody can release until its TTL ends.
#[test]
fn an_acquire_that_cannot_deliver_its_lease_id_releases_it() {
    let d = Daemon::start();
    let closed = to_a_closed_pipe(d.command(&["acquire", "-t", "1h", "pipe/r"])).exit(70);
    assert!(
        closed.stderr.contains("cannot write the lease id"),
        "{closed:?}"
    );
    assert!(
        closed
            .stderr
            .contains("released the lease on pipe/r: nothing is held"),
        "{closed:?}"
    );
    d.cli(&["current", "pipe/r"]).exit(1);

    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut command = d.command(&["acquire", "-t", "1h", "full/r"]);
    command.stdout(full);
    let run = run(command).exit(70);
    assert!(run.stderr.contains("No space left on device"), "{run:?}");
    assert!(run.stderr.contains("nothing is held"), "{run:?}");
    d.cli(&["current", "full/r"]).exit(1);
    // Free indeed: the next acquire gets it at once.
    d.cli(&["acquire", "full/r"]).ok();
}

/// `current`'s Python formats side by side with the real Python stormlock
/// 0.4.1's, on one lease: a daemon with `python_stormlock = true` mirrors
/// its lease into the Redis both read (`tests/engines.sh run`).
#[test]
fn python_formats_print_python_stormlocks_fields() {
    let Some(url) = crate::support::engine_url("STORMLOCK_TEST_REDIS_URL") else {
        return;
    };
    let Some(python) = venv_python() else {
        crate::support::skip_for_want_of("Python stormlock's venv (scripts/setup)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let unique = crate::support::unique();
    let daemon_config = dir.path().join("stormlockd.toml");
    std::fs::write(
        &daemon_config,
        format!(
            "[defaults]\nbackend = \"shared\"\n[backends.shared]\ntype = \"redis\"\n\
             url = \"{url}\"\nprefix = \"fmt-{unique}:\"\npython_stormlock = true\n"
        ),
    )
    .expect("daemon config");
    let d = Daemon::start_with(&["--config", &daemon_config.display().to_string()]);
    let python_config = dir.path().join(".stormlock.cfg");
    std::fs::write(
        &python_config,
        format!(
            "[default]\nbackend = redis\nprincipal = py\nttl = 1 hours\n\
             [backend.redis]\nurl = {}\n",
            url.replace('%', "%%")
        ),
    )
    .expect("python config");
    let resource = format!("fmt-{unique}/r");
    let id = d
        .cli(&["acquire", "-t", "1h", "--reason", "compare", &resource])
        .ok()
        .line();
    let python_cli = python.with_file_name("stormlock");
    let format = |fmt: &str| -> (String, String) {
        let mut command = Command::new(&python_cli);
        command
            .args(["-c", &python_config.display().to_string()])
            .args(["current", "-f", fmt, &resource])
            // Python prints local time without an offset; in UTC it is this
            // CLI's time without "+00:00".
            .env("TZ", "UTC");
        let theirs = run(command).ok().stdout;
        let ours = d.cli(&["current", "-f", fmt, &resource]).ok().stdout;
        (theirs, ours)
    };
    // Python's timestamp is this CLI's without the offset, to the second
    // (the mirror keeps the grant time as Python does, a float).
    let same_time = |theirs: &str, ours: &str| {
        assert_eq!(ours.len(), theirs.len() + 6, "{theirs:?} {ours:?}");
        assert!(ours.ends_with("+00:00"), "{ours:?}");
        assert_eq!(theirs.get(..19), ours.get(..19), "{theirs:?} {ours:?}");
    };

    let (theirs, ours) = format("id");
    assert_eq!(
        (theirs.as_str(), ours.as_str()),
        (&*format!("{id}\n"), &*format!("{id}\n"))
    );
    for fmt in ["rows", "lines", "oneline"] {
        let (theirs, ours) = format(fmt);
        let split = |text: &str| -> Vec<String> {
            text.trim_end_matches('\n')
                .split(['\n', '\t'])
                .map(|field| {
                    // "Label: value" in rows.
                    field.to_string()
                })
                .collect()
        };
        let (theirs, ours) = (split(&theirs), split(&ours));
        assert_eq!(theirs.len(), 3, "{fmt}: {theirs:?}");
        assert_eq!(ours.len(), 3, "{fmt}: exactly Python's fields: {ours:?}");
        assert_eq!(theirs[0], ours[0], "{fmt}: principal");
        assert_eq!(theirs[2], ours[2], "{fmt}: id");
        let time = |field: &str| field.trim_start_matches("Created: ").to_string();
        same_time(&time(&theirs[1]), &time(&ours[1]));
        if fmt == "rows" {
            assert!(ours[1].starts_with("Created: "), "{ours:?}");
        }
    }
    assert!(format("rows").1.ends_with(&format!("Id: {id}\n")));

    // cols: the same header (the id is the longest value, so the widths
    // agree), and the principal and id at the same columns.
    let (theirs, ours) = format("cols");
    let (theirs, ours): (Vec<&str>, Vec<&str>) = (theirs.lines().collect(), ours.lines().collect());
    assert_eq!(theirs.len(), 2, "{theirs:?}");
    assert_eq!(theirs[0], ours[0], "header");
    assert_eq!(theirs[1].get(..36), ours[1].get(..36), "principal column");
    assert_eq!(theirs[1].get(72..), ours[1].get(72..), "id column");

    // json: Python's keys, in Python's order, then the newer ones.
    let (theirs, ours) = format("json");
    // The keys in the order they are written (serde_json's map sorts them).
    let keys = |text: &str| -> Vec<String> {
        let value: serde_json::Value = serde_json::from_str(text).expect("JSON");
        let mut keys: Vec<String> = value
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort_by_key(|k| text.find(&format!("\"{k}\": ")));
        keys
    };
    assert_eq!(keys(&theirs), ["id", "created", "principal"], "{theirs}");
    assert_eq!(
        keys(&ours),
        [
            "id",
            "created",
            "principal",
            "expires",
            "fence",
            "reason",
            "resource"
        ],
        "{ours}"
    );
    assert!(
        ours.starts_with(&theirs[..theirs.find("\"created\"").unwrap_or(0)]),
        "same text up to created: {theirs} {ours}"
    );

    // long: every field, Python's first.
    let long = d.cli(&["current", "-f", "long", &resource]).ok().stdout;
    let labels: Vec<&str> = long.lines().filter_map(|l| l.split(": ").next()).collect();
    assert_eq!(
        labels,
        [
            "Principal",
            "Created",
            "Id",
            "Expires",
            "Fence",
            "Reason",
            "Resource"
        ]
    );
    assert!(long.contains("Reason: compare\n"), "{long}");
}

/// Runs `command` (a shell command line) in a pseudo-terminal of `columns`
/// columns with `script(1)`; its output with the carriage returns the
/// terminal adds taken out.
fn in_terminal(d: &Daemon, columns: u16, command: &str) -> String {
    let mut script = d.with_env("script");
    script
        .args([
            "-qec",
            &format!("stty rows 50 cols {columns}; {command}"),
            "/dev/null",
        ])
        .env("SHELL", "/bin/sh");
    let run = run(script);
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout.replace('\r', "")
}

const LONG_REASON: &str =
    "INC-4711: terraform apply of the quarterly network change, do not touch until done";

/// Takes `infra/network/prod` for an hour, with [`LONG_REASON`].
fn hold_with_a_long_reason(d: &Daemon) {
    d.cli(&[
        "acquire",
        "-t",
        "1h",
        "--reason",
        LONG_REASON,
        "infra/network/prod",
    ])
    .ok();
}

#[test]
fn columns_never_cut_piped_output_and_a_terminal_keeps_reasons_readable() {
    let d = Daemon::start();
    hold_with_a_long_reason(&d);
    d.cli(&["acquire", "-t", "1h", "--reason", "nightly", "db/backup"])
        .ok();
    // `stormlock list | cat` with COLUMNS=40: whole lines.
    let mut piped = d.command(&["list"]);
    piped.env("COLUMNS", "40");
    let piped = run(piped).ok();
    assert!(piped.stdout.contains(LONG_REASON), "{piped:?}");
    assert!(!piped.stdout.contains('…'), "{piped:?}");
    let header = piped.stdout.lines().next().unwrap_or_default();
    for column in [
        "RESOURCE",
        "PRINCIPAL",
        "REASON",
        "HELD FOR",
        "EXPIRES IN",
        "FENCE",
    ] {
        assert!(header.contains(column), "{column}: {piped:?}");
    }

    // At a real terminal of 80 columns: every line fits, and the reason
    // keeps a readable part, the other columns giving way first.
    let out = in_terminal(&d, 80, &format!("{} list", stormlock()));
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 3, "{out}");
    for line in &lines {
        assert!(line.chars().count() <= 80, "{line:?} is wider than 80");
    }
    let row = lines
        .iter()
        .find(|l| l.starts_with("infra/network/prod"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains(&LONG_REASON[..40]), "{row:?}");
    assert!(row.contains('…'), "{row:?}");
    assert!(!lines[0].contains("FENCE"), "the fence gave way: {out}");
}

#[test]
fn a_narrow_waiting_spinner_keeps_the_holders_name() {
    let d = Daemon::start();
    hold_with_a_long_reason(&d);
    let principal = d
        .cli(&["current", "-f", "oneline", "infra/network/prod"])
        .ok()
        .stdout
        .split('\t')
        .next()
        .unwrap_or_default()
        .to_string();
    // Room for the holder and a dozen characters of the reason, whatever
    // the principal's length here.
    let columns = 62 + principal.chars().count();
    let out = in_terminal(
        &d,
        u16::try_from(columns).unwrap_or(u16::MAX),
        &format!(
            "{} acquire --wait 2s infra/network/prod 2>&1; echo exit=$?",
            stormlock()
        ),
    );
    assert!(out.contains("exit=2"), "still held: {out}");
    // Every frame the spinner drew (each starts by clearing its line).
    let frames: Vec<&str> = out
        .split("\x1b[2K")
        .skip(1)
        .map(|f| f.split('\n').next().unwrap_or_default())
        // A frame starts with a braille dot pattern; what follows the last
        // clearing is the answer ("Lock held").
        .filter(|f| {
            f.chars()
                .next()
                .is_some_and(|c| ('\u{2800}'..='\u{28ff}').contains(&c))
        })
        .collect();
    assert!(!frames.is_empty(), "the spinner was drawn: {out:?}");
    for frame in &frames {
        assert!(frame.chars().count() < columns, "{frame:?} would wrap");
        assert!(frame.contains(&format!("held by {principal}")), "{frame:?}");
        assert!(frame.ends_with('…'), "the reason is cut: {frame:?}");
    }
}

/// A web server on a port of its own that answers every connection with an
/// HTTP/1 error, as a reverse proxy or an application would; its port.
fn web_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 512];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    port
}

/// Development certificates of another daemon are blamed on where they
/// were found, never on a `--ca` nobody gave; the fix is named.
#[test]
fn tls_errors_say_where_the_development_certificates_came_from() {
    let d = Daemon::start();
    let other = Daemon::start();
    let run = run_cli(
        &["current", "r"],
        d.dir.path(),
        &other.data_dir(),
        Some(d.port),
    )
    .exit(5);
    let said = &run.stderr;
    assert!(!said.contains("--ca)"), "{run:?}");
    assert!(said.contains("development CA"), "{run:?}");
    assert!(
        said.contains(&other.data_dir().join("tls").display().to_string()),
        "{run:?}"
    );
    assert!(said.contains("from STORMLOCK_DATA_DIR"), "{run:?}");
    assert!(
        said.contains("set STORMLOCK_DATA_DIR to its data dir"),
        "{run:?}"
    );
    assert!(said.contains("--ca/--cert/--key"), "{run:?}");
    assert_eq!(said.lines().count(), 1, "{run:?}");
}

/// A port where no stormlockd listens is named for what is there, whether
/// TLS or plain text was tried, instead of hints that send one back and
/// forth between https:// and http://.
#[test]
fn a_port_that_is_no_stormlockd_is_named_as_such() {
    let d = Daemon::start();
    let web = web_server();
    let mut targets = vec![(web, "an HTTP/1 web server")];
    if let Some(url) = crate::support::engine_url("STORMLOCK_TEST_REDIS_URL") {
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
            .expect("the Redis URL's port");
        targets.push((port, "a Redis server"));
    }
    for (port, what) in targets {
        for scheme in ["", "http://"] {
            let addr = format!("{scheme}127.0.0.1:{port}");
            let run = d.cli(&["--addr", &addr, "current", "r"]).exit(4);
            assert!(run.stderr.contains(what), "{addr}: {run:?}");
            assert!(run.stderr.contains("not stormlockd"), "{addr}: {run:?}");
            assert!(run.stderr.contains("comes from --addr"), "{addr}: {run:?}");
            assert!(!run.stderr.contains("use http://"), "{addr}: {run:?}");
            assert!(!run.stderr.contains("drop http://"), "{addr}: {run:?}");
        }
    }
    // A stormlockd of the other kind is told apart: this one speaks TLS.
    let plain = d
        .cli(&[
            "--addr",
            &format!("http://127.0.0.1:{}", d.port),
            "current",
            "r",
        ])
        .exit(4);
    assert!(
        plain.stderr.contains("speaks TLS: drop http://"),
        "{plain:?}"
    );
}

/// "Connection refused" says where the address came from: the flag, the
/// environment or the config file.
#[test]
fn a_refused_connection_names_where_the_address_came_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Certificates are not needed to be refused: plain text.
    let plain = format!("http://{addr}");
    let flag = run_cli(&["--addr", &plain, "current", "r"], dir.path(), &data, None).exit(4);
    assert!(flag.stderr.contains("Connection refused"), "{flag:?}");
    assert!(flag.stderr.contains("comes from --addr"), "{flag:?}");
    let mut env = crate::e2e::cli_command(&["current", "r"], dir.path(), &data, None);
    env.env("STORMLOCK_ADDR", &plain);
    let env = run(env).exit(4);
    assert!(env.stderr.contains("comes from STORMLOCK_ADDR"), "{env:?}");
    let config = dir.path().join("client.toml");
    std::fs::write(&config, format!("addr = \"{plain}\"\n")).expect("config");
    let config = config.display().to_string();
    let file = run_cli(&["-c", &config, "current", "r"], dir.path(), &data, None).exit(4);
    assert!(
        file.stderr
            .contains(&format!("comes from addr in {config}")),
        "{file:?}"
    );
}

/// `stormlock man CMD` prints each command's page, with its exit
/// statuses; troff reads every page without a warning.
#[test]
fn every_command_has_a_man_page_with_its_exit_statuses() {
    let top = cli_alone(&["man"]).ok();
    assert!(top.stdout.contains(".SH \"EXIT STATUS\""), "{top:?}");
    let commands = [
        "acquire",
        "release",
        "renew",
        "current",
        "is-held",
        "list",
        "exec",
        "watch",
        "force-release",
        "bench",
        "completions",
        "man",
        "migrate-config",
    ];
    let groff = Path::new("/usr/bin/groff").is_file();
    for command in std::iter::once(None).chain(commands.map(Some)) {
        let args: Vec<&str> = std::iter::once("man").chain(command).collect();
        let page = cli_alone(&args).ok();
        assert_eq!(
            page.stdout.matches(".SH \"EXIT STATUS\"").count(),
            1,
            "{command:?}"
        );
        if let Some(name) = command {
            assert!(
                page.stdout.starts_with(&format!(".TH stormlock-{name} 1")),
                "{name}"
            );
            assert!(
                top.stdout.contains(&format!(
                    "\\fBstormlock\\-{}\\fR(1)",
                    name.replace('-', "\\-")
                )),
                "stormlock(1) refers to {name}'s page"
            );
        }
        if groff {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("page.1");
            std::fs::write(&file, &page.stdout).expect("page");
            let mut check = Command::new("groff");
            // -k: through preconv, as man(1) reads pages.
            check.args(["-k", "-man", "-Tutf8", "-ww", "-z"]).arg(&file);
            let checked = run(check).ok();
            assert_eq!(checked.stderr, "", "{command:?}");
        }
    }
    let exec = cli_alone(&["man", "exec"]).ok();
    for code in ["123", "124", "125", "126", "127"] {
        assert!(exec.stdout.contains(&format!("\\fB{code}\\fR")), "{code}");
    }
    let unknown = cli_alone(&["man", "frobnicate"]).exit(64);
    assert!(unknown.stderr.contains("migrate-config"), "{unknown:?}");
}

/// `check-config` creates nothing: on a new machine it leaves the data
/// directory and the embedded store uncreated and says the daemon creates
/// them; after the daemon ran, it opens the store and leaves it unchanged.
#[test]
fn check_config_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let file = dir.path().join("stormlockd.toml");
    std::fs::write(
        &file,
        format!("data_dir = {:?}\n", data.display().to_string()),
    )
    .expect("config");
    let check = || {
        let mut check = Command::new(stormlockd());
        check
            .arg("check-config")
            .arg(&file)
            .env_remove("STORMLOCKD_CONFIG")
            .env_remove("STORMLOCKD_DATA_DIR");
        run(check)
    };
    let fresh = check();
    assert_eq!(fresh.code, 0, "{fresh:?}");
    assert!(
        fresh.stdout.contains("main (embedded): ")
            && fresh
                .stdout
                .contains("does not exist yet; the daemon creates it at its first start"),
        "{fresh:?}"
    );
    assert!(!data.exists(), "check-config created {}", data.display());

    // A store that cannot be created is found out before the start.
    std::fs::create_dir(&data).expect("data dir");
    let not_a_dir = data.join("a-file");
    std::fs::write(&not_a_dir, "").expect("file");
    std::fs::write(
        &file,
        format!(
            "[backends.main]\ntype = \"embedded\"\npath = {:?}\n",
            not_a_dir.join("sub/locks.redb").display().to_string()
        ),
    )
    .expect("config");
    let refused = check();
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.to_lowercase().contains("not a directory"),
        "{refused:?}"
    );

    // After the daemon ran, the store is opened and left as it was.
    let mut d = Daemon::start();
    d.cli(&["acquire", "-t", "1h", "check/r"]).ok();
    assert!(d.terminate().success());
    std::fs::write(
        &file,
        format!("data_dir = {:?}\n", d.data_dir().display().to_string()),
    )
    .expect("config");
    let store = d.data_dir().join("locks.redb");
    let before = std::fs::read(&store).expect("store");
    let existing = check();
    assert_eq!(existing.code, 0, "{existing:?}");
    assert!(
        existing.stdout.contains("locks.redb: opened"),
        "{existing:?}"
    );
    assert_eq!(std::fs::read(&store).expect("store"), before, "unchanged");
}

/// The first lock `scripts/run-daemon` tells a newcomer to take is the
/// README's, line for line (the PATH line names the build's own directory).
#[test]
fn run_daemon_prints_the_readme_quickstart() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |file: &str| std::fs::read_to_string(root.join(file)).expect(file);
    let readme = read("README.md");
    let script = read("scripts/run-daemon");
    let quickstart: Vec<&str> = readme
        .split("In a second terminal:\n\n```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README's quickstart block")
        .lines()
        .filter(|l| !l.starts_with("export PATH="))
        .collect();
    let printed: Vec<String> = script
        .split("In another terminal:\n\n")
        .nth(1)
        .and_then(|rest| rest.split("\nMSG").next())
        .expect("run-daemon's message")
        .lines()
        .map(|l| l.trim_start().replace("\\$", "$"))
        .filter(|l| !l.is_empty() && !l.starts_with("export PATH="))
        .collect();
    assert!(quickstart.len() >= 3, "{quickstart:?}");
    assert_eq!(printed, quickstart);
}
