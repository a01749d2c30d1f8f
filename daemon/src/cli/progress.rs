//! Progress of a long daemon-side operation (materialize, resync): a bar on
//! stderr when it is a terminal, otherwise a plain line every few seconds.

use super::print;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub enum Display {
    Bar(ProgressBar),
    Plain {
        what: &'static str,
        last: Option<Instant>,
    },
}

impl Display {
    /// `what` names the operation in plain lines.
    pub fn new(what: &'static str) -> Display {
        if !std::io::stderr().is_terminal() {
            return Display::Plain { what, last: None };
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {msg} ETA {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        Display::Bar(bar)
    }

    /// `done` of `total` bytes at `bytes_per_second`; `note` follows the rate.
    pub fn show(
        &mut self,
        done: u64,
        total: u64,
        bytes_per_second: f64,
        running: bool,
        note: &str,
    ) {
        let mut rate = format!("{}/s", print::bytes(bytes_per_second as u64));
        if !note.is_empty() {
            rate = format!("{rate}, {note}");
        }
        match self {
            Display::Bar(bar) => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(rate);
            }
            Display::Plain { what, last } => {
                if last.is_some_and(|at| at.elapsed() < PLAIN_EVERY) || !running || total == 0 {
                    return;
                }
                *last = Some(Instant::now());
                let percent = done as f64 * 100.0 / total.max(1) as f64;
                eprintln!(
                    "{what}: {} of {} ({percent:.0} %), {rate}",
                    print::bytes(done),
                    print::bytes(total)
                );
            }
        }
    }

    pub fn note(&self, text: &str) {
        match self {
            Display::Bar(bar) => bar.println(text),
            Display::Plain { .. } => eprintln!("{text}"),
        }
    }

    pub fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
