//! `drgw materialize`: starts the daemon's job, follows it with a progress
//! bar on a terminal (a plain line every few seconds otherwise), and
//! returns its result. Ctrl-C cancels the job: the daemon stops it at its
//! next chunk, fsyncs what it wrote and keeps the sidecar, so the image is
//! left incomplete *and marked so*, and `--resume` continues it.

use super::progress::Display;
use crate::control::{self, JobReport, JobState, Request};
use anyhow::{anyhow, Context};
use std::path::Path;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(250);

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
    let mut display = Display::new("materialize");
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut cancelled = false;
    loop {
        let report = job(socket, id).await?;
        let running = report.state == JobState::Running;
        display.show(
            report.done_bytes,
            report.total_bytes,
            report.bytes_per_second as f64,
            running,
            "",
        );
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
