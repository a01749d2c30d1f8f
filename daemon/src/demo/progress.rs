//! What the demo tells the person watching: numbered steps, detail lines,
//! and one live line of figures. On a terminal the live line is redrawn in
//! place; otherwise (a pipe, a log, a test) it is printed as plain lines,
//! at most one every [`PLAIN_LIVE_INTERVAL`]. With `--json` all of it goes
//! to stderr, leaving stdout to the summary.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Least time between two plain (not in place) live lines.
const PLAIN_LIVE_INTERVAL: Duration = Duration::from_secs(2);

pub struct Progress {
    to_stderr: bool,
    in_place: bool,
    state: Mutex<LiveState>,
}

#[derive(Default)]
struct LiveState {
    /// A live line is drawn and not yet ended by a newline.
    open: bool,
    last_plain: Option<Instant>,
}

impl Progress {
    pub fn new(json: bool) -> Progress {
        let in_place = if json {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        Progress {
            to_stderr: json,
            in_place,
            state: Mutex::new(LiveState::default()),
        }
    }

    /// `[n] text`: a step begins.
    pub fn step(&self, number: u32, text: &str) {
        self.line(&format!("[{number}] {text}"));
    }

    /// An indented detail of the current step.
    pub fn detail(&self, text: &str) {
        self.line(&format!("    {text}"));
    }

    /// A whole line, after closing the live line if one is drawn.
    pub fn line(&self, text: &str) {
        let mut state = self.state.lock().expect("progress lock");
        let clear = if std::mem::take(&mut state.open) {
            "\r\x1b[2K"
        } else {
            ""
        };
        self.emit(&format!("{clear}{text}\n"));
    }

    /// The live figures: redrawn in place on a terminal, else a plain line
    /// now and then.
    pub fn live(&self, text: &str) {
        let mut state = self.state.lock().expect("progress lock");
        if self.in_place {
            state.open = true;
            self.emit(&format!("\r\x1b[2K    {text}"));
            return;
        }
        let due = state
            .last_plain
            .is_none_or(|last| last.elapsed() >= PLAIN_LIVE_INTERVAL);
        if due {
            state.last_plain = Some(Instant::now());
            self.emit(&format!("    {text}\n"));
        }
    }

    /// Ends the live line, keeping its last figures on screen; the next
    /// live phase starts a plain line at once.
    pub fn end_live(&self) {
        let mut state = self.state.lock().expect("progress lock");
        state.last_plain = None;
        if std::mem::take(&mut state.open) {
            self.emit("\n");
        }
    }

    fn emit(&self, text: &str) {
        // A closed pipe must not kill the demo halfway: ignore write errors.
        if self.to_stderr {
            let mut out = std::io::stderr().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        } else {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }
}
