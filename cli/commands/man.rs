//! `man`: the man page (roff) from the same clap definition.

use clap::CommandFactory;

use super::out;
use crate::args::Cli;
use crate::error::{CliError, CliResult, Exit};

/// Runs `man`.
pub fn run() -> CliResult {
    out(&page()?)?;
    Ok(Exit::Success)
}

/// The man page, starting with its `.TH` title line.
fn page() -> CliResult<String> {
    let mut roff = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut roff)
        .map_err(|e| CliError::new(Exit::Failure, e))?;
    let roff = String::from_utf8_lossy(&roff);
    // The roff writer opens with the definition of the \*(Aq string it uses
    // for apostrophes; tools that sniff man pages expect .TH first, and the
    // definition works as well right after it.
    let (title, rest): (Vec<&str>, Vec<&str>) = roff.lines().partition(|l| l.starts_with(".TH "));
    Ok(title
        .into_iter()
        .chain(rest)
        .map(|l| format!("{l}\n"))
        .collect())
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
    }
}
