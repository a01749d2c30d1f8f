//! `drgw resync`: starts a resync in the daemon and follows it with a
//! progress bar until it ends. Ctrl-C only stops following: the resync goes
//! on in the daemon (`--status` shows it, `--cancel` stops it).

use super::progress::Display;
use crate::control::{self, Request};
use crate::resync::ResyncView;
use anyhow::{anyhow, Context};
use drgw_catalog::ResyncPhase;
use std::path::Path;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(500);

pub fn run(socket: &Path, start: Request, follow: bool) -> anyhow::Result<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let started = control::request(socket, start).await?;
        if !follow {
            return Ok(started);
        }
        let view: ResyncView =
            serde_json::from_value(started).context("reading the resync's state")?;
        watch(socket, &view.record.group).await
    })
}

async fn watch(socket: &Path, group: &str) -> anyhow::Result<serde_json::Value> {
    let mut display = Display::new("resync");
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let value = control::request(
            socket,
            Request::ResyncStatus {
                group: group.to_string(),
            },
        )
        .await?;
        let view: ResyncView =
            serde_json::from_value(value.clone()).context("reading the resync's state")?;
        let record = &view.record;
        let running = record.phase == ResyncPhase::Running;
        let note = match &view.waiting {
            Some(reason) => format!("{} differ; {reason}", super::bytes(record.differing_bytes)),
            None => format!("{} differ", super::bytes(record.differing_bytes)),
        };
        display.show(
            record.compared_bytes,
            record.total_bytes,
            view.bytes_per_second,
            running,
            &note,
        );
        match record.phase {
            ResyncPhase::Running => {}
            ResyncPhase::Done => {
                display.finish();
                return Ok(value);
            }
            ResyncPhase::Failed | ResyncPhase::Cancelled => {
                display.finish();
                return Err(anyhow!(
                    "the resync of {group} {}: {}",
                    if record.phase == ResyncPhase::Failed {
                        "failed"
                    } else {
                        "was cancelled"
                    },
                    record.error.clone().unwrap_or_else(|| match record.start_sequence {
                        Some(sequence) => format!(
                            "points from sequence {sequence} on stay unusable until a resync of {group} completes"
                        ),
                        None => "it had not started; nothing changed".into(),
                    })
                ));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut interrupted => {
                display.finish();
                return Err(anyhow!(
                    "stopped following; the resync of {group} goes on in the daemon (`drgw resync {group} --status`, `--cancel`)"
                ));
            }
        }
    }
}
