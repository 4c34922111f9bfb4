//! A spinner on stderr for commands that wait, drawn on one line that is
//! cleared when the wait ends (or the spinner is dropped). Used only when
//! stderr is a terminal.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::output::truncate;

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// The spinner's state.
#[derive(Debug)]
pub struct Spinner {
    started: Instant,
    frame: usize,
    drawn: bool,
}

impl Spinner {
    /// How often to redraw.
    pub const TICK: Duration = Duration::from_millis(100);

    /// A spinner that has not drawn anything yet.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            frame: 0,
            drawn: false,
        }
    }

    /// Time since the spinner was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The columns a label may take: the terminal's width less the frame,
    /// the space after it and the last column (a line that wraps could not
    /// be redrawn in place).
    pub fn label_width(&self) -> usize {
        terminal_size::terminal_size_of(io::stderr())
            .map_or(80, |(w, _)| usize::from(w.0))
            .saturating_sub(3)
    }

    /// Draws the next frame with `label`, cut with "…" if it is wider than
    /// [`Spinner::label_width`] (callers shorten it better first).
    pub fn draw(&mut self, label: &str) {
        let label = truncate(label, self.label_width());
        let line = format!("{} {label}", FRAMES[self.frame % FRAMES.len()]);
        self.frame += 1;
        let mut err = io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        self.drawn = true;
    }

    /// Erases the spinner's line, if it drew one.
    pub fn clear(&mut self) {
        if self.drawn {
            let mut err = io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

/// A wait cut short (Ctrl-C drops the future that owns the spinner) leaves
/// no half-drawn line behind.
impl Drop for Spinner {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Default for Spinner {
    fn default() -> Self {
        Self::new()
    }
}
