//! `drgw materialize`: starts the daemon's job, follows it with a progress
//! bar on a terminal (a plain line every few seconds otherwise), and
//! returns its result. Ctrl-C cancels the job: the daemon stops it at its
//! next chunk, fsyncs what it wrote and keeps the sidecar, so the image is
//! left incomplete *and marked so*, and `--resume` continues it.

use super::print;
use crate::control::{self, JobReport, JobState, Request};
use anyhow::{anyhow, Context};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(250);
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub fn run(socket: &Path, start: Request) -> anyhow::Result<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(follow(socket, start))
}

async fn follow(socket: &Path, start: Request) -> anyhow::Result<serde_json::Value> {
    let started = control::request(socket, start).await?;
    let id = started["job"]
        .as_u64()
        .ok_or_else(|| anyhow!("the daemon answered no job id: {started}"))?;
    let mut display = Display::new();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut cancelled = false;
    loop {
        let report = job(socket, id).await?;
        display.show(&report);
        match report.state {
            JobState::Running => {}
            JobState::Done => {
                display.finish();
                return report
                    .result
                    .ok_or_else(|| anyhow!("job {id} finished without a result"));
            }
            JobState::Failed => {
                display.finish();
                return Err(anyhow!(report
                    .error
                    .unwrap_or_else(|| format!("job {id} failed"))));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut interrupted, if !cancelled => {
                cancelled = true;
                display.note("interrupted: cancelling the job (the image stays resumable)");
                control::request(socket, Request::JobCancel { id }).await?;
            }
        }
    }
}

async fn job(socket: &Path, id: u64) -> anyhow::Result<JobReport> {
    let value = control::request(socket, Request::Job { id }).await?;
    serde_json::from_value(value).context("reading the job's progress")
}

/// A progress bar on a terminal; otherwise a line every PLAIN_EVERY.
enum Display {
    Bar(ProgressBar),
    Plain { last: Option<Instant> },
}

impl Display {
    fn new() -> Display {
        if !std::io::stderr().is_terminal() {
            return Display::Plain { last: None };
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

    fn show(&mut self, report: &JobReport) {
        let rate = format!("{}/s", print::bytes(report.bytes_per_second));
        match self {
            Display::Bar(bar) => {
                bar.set_length(report.total_bytes);
                bar.set_position(report.done_bytes);
                bar.set_message(rate);
            }
            Display::Plain { last } => {
                if last.is_some_and(|at| at.elapsed() < PLAIN_EVERY)
                    || report.state != JobState::Running
                    || report.total_bytes == 0
                {
                    return;
                }
                *last = Some(Instant::now());
                let percent = report.done_bytes as f64 * 100.0 / report.total_bytes.max(1) as f64;
                eprintln!(
                    "materialize: {} of {} ({percent:.0} %), {rate}",
                    print::bytes(report.done_bytes),
                    print::bytes(report.total_bytes)
                );
            }
        }
    }

    fn note(&self, text: &str) {
        match self {
            Display::Bar(bar) => bar.println(text),
            Display::Plain { .. } => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
