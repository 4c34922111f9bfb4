//! The CLI's credentials, through the real binaries: no token over plain
//! text, no credentials redirected by a `./.stormlock.toml` in an untrusted
//! directory, lease ids off the command line, no token for `exec`'s command,
//! and no weak token hashed by `stormlockd hash-token`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::e2e::{Daemon, Run, cli_command, run_cli, stormlockd};

/// A token of 256 bits, as `stormlockd new-token` makes them.
const TOKEN: &str = "5f0c7b4e9a8d2c1b3e6f7a9d0c8b2e4f6a1d3c5b7e9f0a2c4d6b8e1f3a5c7d9e";

/// Runs `command` to its end, feeding it `stdin`.
fn run_with_stdin(mut command: Command, stdin: &str) -> Run {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Everything sent to `listener` so far, one entry per connection; `None`
/// when nobody connected. The CLI has exited by then, so every connection it
/// made is waiting in the backlog.
fn received(listener: &TcpListener) -> Option<Vec<Vec<u8>>> {
    listener.set_nonblocking(true).expect("nonblocking");
    let mut connections = Vec::new();
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                let mut bytes = Vec::new();
                // The peer is gone: this reads what it sent, then EOF or a reset.
                let _ = stream.read_to_end(&mut bytes);
                connections.push(bytes);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("accept: {e}"),
        }
    }
    (!connections.is_empty()).then_some(connections)
}

#[test]
fn no_bearer_token_over_plain_text() {
    let home = tempfile::tempdir().expect("tempdir");
    let home = home.path();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    std::fs::write(home.join("token"), format!("{TOKEN}\n")).expect("token");
    let config = home.join("client.toml");
    std::fs::write(
        &config,
        format!("addr = {addr:?}\ntoken_file = \"token\"\n"),
    )
    .expect("config");
    let token_file = home.join("token").display().to_string();
    let config = config.display().to_string();

    let from_env = {
        let mut command = cli_command(
            &["--addr", &addr, "current", "r"],
            home,
            &home.join("data"),
            None,
        );
        command.env("STORMLOCK_TOKEN", TOKEN);
        run_with_stdin(command, "")
    };
    let from_flag = run_cli(
        &["--addr", &addr, "--token-file", &token_file, "acquire", "r"],
        home,
        &home.join("data"),
        None,
    );
    let from_config = run_cli(&["-c", &config, "watch"], home, &home.join("data"), None);
    for (run, source) in [
        (from_env, "STORMLOCK_TOKEN"),
        (from_flag, "--token-file"),
        (from_config, "token_file in"),
    ] {
        let run = run.exit(64);
        assert!(run.stderr.contains("clear text"), "{run:?}");
        assert!(run.stderr.contains(source), "{run:?}");
        assert!(
            run.stderr.contains("https://127.0.0.1:"),
            "how to fix it: {run:?}"
        );
        assert!(!run.stderr.contains(TOKEN), "{run:?}");
    }
    assert_eq!(received(&listener), None, "nothing reached the socket");

    // The same address without a token is dialled (and, with nobody
    // answering, given up on): the listener does see connections.
    run_cli(
        &["--addr", &addr, "--timeout", "1s", "current", "r"],
        home,
        &home.join("data"),
        None,
    )
    .exit(4);
    assert!(
        received(&listener).is_some(),
        "the CLI connected without a token"
    );
}

#[test]
fn working_dir_config_cannot_redirect_credentials() {
    let d = Daemon::start();
    let project = d.dir.path().join("project");
    std::fs::create_dir_all(&project).expect("mkdir");
    let tls = d.data_dir().join("tls");
    let file = project.join(".stormlock.toml");
    std::fs::write(
        &file,
        format!(
            "addr = \"https://localhost:{}\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            d.port,
            tls.join("ca.crt"),
            tls.join("client.crt"),
            tls.join("client.key"),
        ),
    )
    .expect("write config");
    // HOME is the daemon's directory; the project is elsewhere. No
    // STORMLOCK_ADDR and no development certificates to fall back on.
    let in_project = |args: &[&str]| {
        let mut command = cli_command(args, d.dir.path(), Path::new("/nonexistent"), None);
        command.current_dir(&project);
        run_with_stdin(command, "")
    };

    let refused = in_project(&["acquire", "cwd/r"]).exit(64);
    assert!(
        refused.stderr.contains("sets addr, ca, cert, key,"),
        "{refused:?}"
    );
    assert!(
        refused.stderr.contains(&file.display().to_string()),
        "{refused:?}"
    );
    assert!(refused.stderr.contains("trusted_dirs"), "{refused:?}");
    d.cli(&["current", "cwd/r"]).exit(1);

    // Trusted in the user's own file: the same file is used.
    let user = d.dir.path().join("config/stormlock/config.toml");
    std::fs::create_dir_all(user.parent().expect("dir")).expect("mkdir");
    std::fs::write(
        &user,
        format!("trusted_dirs = [{:?}]\n", project.display().to_string()),
    )
    .expect("write user config");
    let id = in_project(&["acquire", "cwd/r"]).ok().line();
    assert_eq!(id.len(), 32);
    d.cli(&["release", "cwd/r", &id]).ok();

    // Untrusted, a file that redirects nothing still applies.
    std::fs::remove_file(&user).expect("rm");
    std::fs::write(&file, "ttl = \"1h\"\n").expect("write config");
    let mut command = cli_command(
        &["acquire", "cwd/r"],
        d.dir.path(),
        &d.data_dir(),
        Some(d.port),
    );
    command.current_dir(&project);
    run_with_stdin(command, "").ok();
}

#[test]
fn lease_ids_from_the_environment_and_stdin() {
    let d = Daemon::start();
    let lease = |resource: &str| d.cli(&["acquire", resource]).ok().line();
    let with_id = |args: &[&str], id: &str| {
        let mut command = d.command(args);
        command.env("STORMLOCK_LEASE_ID", id);
        run_with_stdin(command, "")
    };
    let from_stdin = |args: &[&str], input: &str| {
        let mut command = d.command(args);
        command.env_remove("STORMLOCK_LEASE_ID");
        run_with_stdin(command, input)
    };

    let id = lease("ids/env");
    with_id(&["is-held", "ids/env"], &id).ok();
    with_id(&["renew", "-t", "1h", "ids/env"], &id).ok();
    with_id(&["release", "ids/env"], &id).ok();
    d.cli(&["current", "ids/env"]).exit(1);
    // A LEASE_ID given wins over the variable.
    let id = lease("ids/env");
    with_id(
        &["is-held", "ids/env", &id],
        "0123456789abcdef0123456789abcdef",
    )
    .ok();

    let id = lease("ids/stdin");
    from_stdin(&["is-held", "ids/stdin", "-"], &format!("{id}\n")).ok();
    from_stdin(&["renew", "ids/stdin", "-"], &format!("  {id}  \n")).ok();
    from_stdin(&["release", "ids/stdin", "-"], &format!("{id}\n")).ok();
    d.cli(&["current", "ids/stdin"]).exit(1);

    let missing = from_stdin(&["release", "ids/env"], "").exit(64);
    assert!(
        missing.stderr.contains("STORMLOCK_LEASE_ID") && missing.stderr.contains('-'),
        "both ways named: {missing:?}"
    );
    let empty = from_stdin(&["release", "ids/env", "-"], "").exit(64);
    assert!(empty.stderr.contains("standard input"), "{empty:?}");
}

#[test]
fn exec_keeps_the_token_from_its_command() {
    let setup = tempfile::tempdir().expect("tempdir");
    let config = setup.path().join("stormlockd.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\nprincipal = \"ci\"\nsha256 = \"{}\"\n",
            stormlockd::auth::hash_token(TOKEN)
        ),
    )
    .expect("config");
    let config = config.display().to_string();
    let d = Daemon::start_with(&["--config", &config]);
    let ca = d.data_dir().join("tls/ca.crt").display().to_string();
    let mut command = d.command(&[
        "--ca",
        &ca,
        "exec",
        "exec/token",
        "--",
        "sh",
        "-c",
        "echo ${STORMLOCK_TOKEN-unset}; echo ${STORMLOCK_LEASE_ID:+lease}",
    ]);
    command.env("STORMLOCK_TOKEN", TOKEN);
    let run = run_with_stdin(command, "").ok();
    assert_eq!(run.stdout, "unset\nlease\n", "{run:?}");
}

#[test]
fn hash_token_refuses_weak_tokens() {
    let hash = |token: &str| {
        let mut command = Command::new(stormlockd());
        command.arg("hash-token").env_remove("STORMLOCKD_CONFIG");
        run_with_stdin(command, &format!("{token}\n"))
    };
    let hex = |n: usize| TOKEN[..n].to_string();
    for weak in [
        String::new(),
        "hunter2".to_string(),
        hex(31),
        "0123456789012345678901234567890123456".to_string(),
        "Zm9vYmFyYmF6cXV4cXV1eA"
            .get(..21)
            .unwrap_or_default()
            .to_string(),
    ] {
        let run = hash(&weak).exit(64);
        assert_eq!(run.stdout, "", "{run:?}");
        assert!(
            weak.is_empty() || run.stderr.contains("stormlockd new-token"),
            "{run:?}"
        );
    }
    for strong in [hex(32), hex(64), "Zm9vYmFyYmF6cXV4cXV1eA".to_string()] {
        let run = hash(&strong).ok();
        assert_eq!(
            run.line(),
            stormlockd::auth::hash_token(&strong),
            "{strong}"
        );
    }
}
