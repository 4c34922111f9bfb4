//! `man`: the man pages (roff) from the same clap definition: `stormlock(1)`
//! for the whole CLI, and `stormlock-CMD(1)` for each command
//! (`stormlock man CMD`), each with an EXIT STATUS section, since scripts
//! branch on the statuses and they differ from command to command.

use clap::CommandFactory;

use super::out;
use crate::args::{Cli, ManArgs};
use crate::error::{CliError, CliResult, Exit};

/// One exit status and what it means.
type Status = (&'static str, &'static str);

/// The statuses of every command that talks to the daemon, after its own.
const REMOTE: [Status; 4] = [
    (
        "4",
        "the daemon or its backend cannot be reached, or did not answer in time",
    ),
    (
        "5",
        "not authenticated, or not allowed (a client certificate, token or declared principal \
         the daemon refuses)",
    ),
    (
        "64",
        "usage error: bad arguments, bad configuration, or a request the daemon refused as \
         invalid",
    ),
    ("70", "the daemon failed in an unexpected way"),
];

/// Statuses of commands that talk to no daemon.
const LOCAL: [Status; 2] = [("0", "success"), ("64", "usage error")];

/// The exit statuses of `command`, most specific first; `None` for a name
/// that is no command.
fn statuses(command: &str) -> Option<Vec<Status>> {
    let own: &[Status] = match command {
        "acquire" => &[
            ("0", "acquired: the lease id is on standard output"),
            (
                "2",
                "held by someone else (also when --wait ran out): \"Lock held\" and the holder \
                 on standard error",
            ),
            (
                "70",
                "also: the lease id could not be written to standard output (closed pipe, full \
                 disk); the lease was released, so nothing is held",
            ),
            (
                "128+N",
                "signal N (130 for Ctrl-C) ended the wait; nothing is held",
            ),
        ],
        "release" => &[(
            "0",
            "released, or the lease was not current any more (expired, released or replaced: \
             one line on standard error says so)",
        )],
        "renew" => &[
            ("0", "renewed"),
            (
                "3",
                "the lease is not current (expired, released or force-released): \"Lock \
                 expired\" on standard error, and who broke it if an administrator did",
            ),
        ],
        "current" => &[
            ("0", "held: the lease is printed"),
            ("1", "free: \"no lock held\" on standard error"),
        ],
        "is-held" => &[
            ("0", "the lease is current"),
            (
                "1",
                "the lease is not current; never when the daemon could not be asked (4, 5, 70)",
            ),
        ],
        "list" => &[("0", "listed (also when no lock is held)")],
        "watch" => &[(
            "0",
            "ended by Ctrl-C, SIGTERM or SIGHUP, or its reader went away; an unreachable daemon \
             is retried, not an exit",
        )],
        "force-release" => &[
            ("0", "the lease was broken"),
            ("1", "the resource was not held"),
        ],
        "reserve" => &[
            ("0", "reserved: the id is on standard output"),
            (
                "2",
                "another reservation overlaps: it is named on standard error",
            ),
        ],
        "reservations" => &[("0", "listed (also when there are none)")],
        "unreserve" => &[
            ("0", "the reservation was cancelled"),
            (
                "1",
                "there was no such reservation (it ended, or was cancelled already)",
            ),
        ],
        "bench" => &[
            ("0", "the run ended and some operations succeeded"),
            ("70", "no operation succeeded"),
        ],
        "exec" => {
            return Some(vec![
                (
                    "any",
                    "the command ran: its own status, unchanged (128+N if signal N killed it)",
                ),
                (
                    "123",
                    "the lease was lost while the command ran (renewal refused, force-released, \
                     or expired); the command was stopped",
                ),
                (
                    "124",
                    "the lock is held (with or without --wait): the holder and reason are on \
                     standard error; the command did not run",
                ),
                (
                    "125",
                    "stormlock failed before the command ran: daemon or backend unreachable, \
                     not authenticated or allowed, usage or configuration error, daemon \
                     failure; standard error says which",
                ),
                ("126", "the command was found but cannot be run"),
                ("127", "the command was not found"),
                ("128+N", "signal N ended the wait before the command ran"),
            ]);
        }
        "completions" | "man" => return Some(LOCAL.to_vec()),
        "migrate-config" => {
            return Some(vec![
                ("0", "the TOML was printed"),
                (
                    "64",
                    "the file cannot be read, or is not a Python stormlock config file (a TOML \
                     file, or INI without backend), or a value in it is invalid",
                ),
            ]);
        }
        _ => return None,
    };
    let mut all = own.to_vec();
    for status in REMOTE {
        // A command that says more about one of them keeps its own line.
        if !all.iter().any(|(code, _)| *code == status.0) {
            all.push(status);
        }
    }
    all.sort_by_key(|(code, _)| code.parse::<u32>().unwrap_or(u32::MAX));
    Some(all)
}

/// The statuses of the CLI as a whole, for `stormlock(1)`.
const ALL: [Status; 14] = [
    ("0", "success"),
    (
        "1",
        "not held, or the resource is free (is-held, current, force-release); no such \
         reservation (unreserve)",
    ),
    (
        "2",
        "held by someone else, or a window refuses you (acquire); another reservation \
         overlaps (reserve)",
    ),
    (
        "3",
        "the lease is not current: expired, released or force-released (renew)",
    ),
    REMOTE[0],
    REMOTE[1],
    REMOTE[2],
    (
        "70",
        "the daemon failed in an unexpected way; or acquire could not write the lease id and \
         released the lease",
    ),
    (
        "123",
        "exec: the lease was lost while the command ran; the command was stopped",
    ),
    (
        "124",
        "exec: the lock is held (with or without --wait); the command did not run",
    ),
    (
        "125",
        "exec: stormlock failed before the command ran (unreachable, refused, usage or \
         configuration error, daemon failure); otherwise exec passes its command's status on",
    ),
    ("126", "exec: the command cannot be run"),
    ("127", "exec: the command was not found"),
    (
        "128+N",
        "interrupted by signal N while waiting (130 for Ctrl-C); nothing is held",
    ),
];

/// Runs `man`.
pub fn run(args: &ManArgs) -> CliResult {
    let text = match &args.command {
        None => page()?,
        Some(name) => command_page(name)?,
    };
    out(&text)?;
    Ok(Exit::Success)
}

/// Escapes text for roff: backslashes and hyphens, and a leading dot or
/// quote that would read as a request.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    if text.starts_with(['.', '\'']) {
        format!("\\&{text}")
    } else {
        text
    }
}

/// An EXIT STATUS section.
fn exit_status_section(statuses: &[Status]) -> String {
    let mut roff = String::from(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in statuses {
        // Codes are written already escaped where they need it.
        roff.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", escape(meaning)));
    }
    roff
}

/// A section of `.TP` entries.
fn section(title: &str, entries: &[(&str, &str)]) -> String {
    let mut roff = format!(".SH \"{title}\"\n");
    for (term, text) in entries {
        roff.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{}\n",
            escape(term),
            escape(text)
        ));
    }
    roff
}

/// One of clap_mangen's section renderers.
type Part = fn(&clap_mangen::Man, &mut dyn std::io::Write) -> std::io::Result<()>;

/// The sections every page opens with: title, name, synopsis, description
/// and options.
const OPENING: [Part; 5] = [
    clap_mangen::Man::render_title,
    clap_mangen::Man::render_name_section,
    clap_mangen::Man::render_synopsis_section,
    clap_mangen::Man::render_description_section,
    clap_mangen::Man::render_options_section,
];

/// The sections `parts` of `man`, in order.
fn render(man: &clap_mangen::Man, parts: &[Part]) -> CliResult<String> {
    let mut roff = Vec::new();
    for part in parts {
        part(man, &mut roff).map_err(|e| CliError::new(Exit::Failure, e))?;
    }
    Ok(String::from_utf8_lossy(&roff).into_owned())
}

/// `stormlock(1)`, starting with its `.TH` title line.
fn page() -> CliResult<String> {
    let man = clap_mangen::Man::new(Cli::command());
    let mut text = render(&man, &OPENING)?;
    text.push_str(&render(
        &man,
        &[clap_mangen::Man::render_subcommands_section],
    )?);
    text.push_str(&exit_status_section(&ALL));
    text.push_str(&section(
        "ENVIRONMENT",
        &[
            ("STORMLOCK_ADDR", "the daemon's address, as --addr"),
            (
                "STORMLOCK_CA, STORMLOCK_CERT, STORMLOCK_KEY",
                "TLS files, as --ca, --cert, --key",
            ),
            ("STORMLOCK_TOKEN", "a bearer token, instead of --token-file"),
            ("STORMLOCK_CONFIG", "the config file, as -c"),
            ("STORMLOCK_PRINCIPAL", "as --principal"),
            ("STORMLOCK_TIMEOUT", "as --timeout"),
            (
                "STORMLOCK_LEASE_ID",
                "the lease id for release, renew and is-held when LEASE_ID is left out",
            ),
            (
                "STORMLOCK_DATA_DIR",
                "the data dir of a daemon on this host whose development certificates \
                 (DIR/tls) the CLI uses for a loopback address when no TLS file is given; \
                 default: the daemon's own default, $XDG_STATE_HOME/stormlock or \
                 ~/.local/state/stormlock",
            ),
            (
                "COLUMNS",
                "the width list fits its table to at a terminal; never used for a pipe or a \
                 file",
            ),
        ],
    ));
    text.push_str(&format!(
        ".SH DURATIONS\n{}\n",
        escape(
            "TTLs, waits and timeouts are written like \"4 seconds\", \"30 min\", \"1 days\" \
             (Python stormlock's syntax), \"4h\", \"30m\", \"1d2h\", or plain seconds."
        )
    ));
    text.push_str(".SH \"SEE ALSO\"\n");
    let pages: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| {
            format!(
                "\\fBstormlock\\-{}\\fR(1)",
                c.get_name().replace('-', "\\-")
            )
        })
        .collect();
    text.push_str(&format!(
        "{}; each printed by \\fBstormlock man\\fR \\fICOMMAND\\fR.\n",
        pages.join(", ")
    ));
    text.push_str(&render(&man, &[clap_mangen::Man::render_version_section])?);
    Ok(title_first(&text))
}

/// `stormlock-NAME(1)`, for one command.
fn command_page(name: &str) -> CliResult<String> {
    let mut cli = Cli::command();
    // Built, the commands carry the global options and their full names.
    cli.build();
    let (Some(command), Some(statuses)) = (cli.find_subcommand(name).cloned(), statuses(name))
    else {
        let names: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
        return Err(CliError::usage(format!(
            "no command {name:?}: man takes one of {}",
            names.join(", ")
        )));
    };
    let version = env!("CARGO_PKG_VERSION");
    let man = clap_mangen::Man::new(command).source(format!("stormlock {version}"));
    let mut text = render(&man, &OPENING)?;
    text.push_str(&exit_status_section(&statuses));
    text.push_str(".SH \"SEE ALSO\"\n\\fBstormlock\\fR(1)\n");
    Ok(title_first(&text))
}

/// The roff writer opens with the definition of the \*(Aq string it uses
/// for apostrophes; tools that sniff man pages expect .TH first, and the
/// definition works as well right after it.
fn title_first(roff: &str) -> String {
    let (title, rest): (Vec<&str>, Vec<&str>) = roff.lines().partition(|l| l.starts_with(".TH "));
    title
        .into_iter()
        .chain(rest)
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_with_the_title_and_keeps_everything() {
        let text = page().unwrap_or_default();
        assert!(
            text.starts_with(".TH stormlock 1"),
            "{}",
            &text[..80.min(text.len())]
        );
        assert_eq!(text.matches(".TH ").count(), 1);
        assert!(
            text.contains(".ds Aq"),
            "the apostrophe string is still defined"
        );
        for command in ["acquire", "current", "force\\-release", "list"] {
            assert!(text.contains(command), "{command} missing");
        }
        assert!(text.contains(".SH \"EXIT STATUS\""), "{text}");
        assert!(text.contains("STORMLOCK_DATA_DIR"), "{text}");
        assert!(
            text.contains("\\fBstormlock\\-migrate\\-config\\fR(1)"),
            "{text}"
        );
    }

    #[test]
    fn every_command_has_a_page_with_its_exit_statuses() {
        for command in Cli::command().get_subcommands() {
            let name = command.get_name();
            let text = command_page(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            let title = format!(".TH stormlock-{name} 1");
            assert!(text.starts_with(&title), "{name}: {}", &text[..80]);
            assert_eq!(text.matches(".SH \"EXIT STATUS\"").count(), 1, "{name}");
            assert!(
                text.contains(".TP\n\\fB0\\fR\n") || name == "exec",
                "{name}"
            );
            // The global options are documented on every page.
            if name != "completions" {
                assert!(text.contains("\\-\\-addr"), "{name}: global options");
            }
        }
        let exec = command_page("exec").unwrap_or_default();
        for code in ["123", "124", "125", "126", "127"] {
            assert!(exec.contains(&format!("\\fB{code}\\fR")), "{code}");
        }
        let acquire = command_page("acquire").unwrap_or_default();
        assert!(acquire.contains("lease was released"), "{acquire}");
        assert!(command_page("nothing").is_err_and(|e| e.exit == Exit::Usage));
    }

    #[test]
    fn roff_escapes() {
        assert_eq!(escape("a-b \\ c"), "a\\-b \\e c");
        assert_eq!(escape(".hidden"), "\\&.hidden");
        assert_eq!(escape("'quote"), "\\&'quote");
    }
}
