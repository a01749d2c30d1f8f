//! `drgw demo`: the whole data path on one machine, with embedded defaults
//! and no config. In a temporary directory it starts a source gateway, a
//! target gateway and a tap (child processes of this binary, on loopback
//! ports), pairs them, writes a workload through the tap's NBD exports
//! while showing live figures, takes an app-consistent bookmark in the
//! middle, and verifies each disk recovered at the bookmark on the target
//! against what was written up to that instant. See `steps.rs` for the
//! sequence and docs/ARCHITECTURE.md for what it does not show yet.
//!
//! | file | what |
//! | --- | --- |
//! | `steps.rs` | the numbered steps, one function each, and the summary's figures |
//! | `sites.rs`, `tap.rs`, `process.rs` | the child processes: configs, pairing, stopping |
//! | `workload.rs` | the writes through the tap and the model of what each disk holds |
//! | `verify.rs` | an image (file or NBD export) compared with a model |
//! | `recovery.rs` | test failover and failover (places for issue 5's requests) |
//! | `live.rs`, `progress.rs`, `summary.rs` | what the person watching sees |
//!
//! Interrupts: SIGINT or SIGTERM at any moment drops the running step,
//! which stops every child (SIGTERM, then SIGKILL), removes the workspace
//! (unless `--keep`) and exits 1 with "interrupted".

mod live;
mod process;
mod progress;
mod recovery;
mod sites;
mod steps;
mod summary;
mod tap;
mod verify;
mod workload;

use anyhow::bail;
use progress::Progress;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// `drgw demo [--keep] [--json]`.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Keep the workspace (configs, state, logs, recovered images).
    pub keep: bool,
    /// Print the summary as JSON on stdout (progress goes to stderr).
    pub json: bool,
}

/// Runs the demo; an error (exit 1) when a step or a verification fails,
/// or when interrupted.
pub fn run(options: Options) -> anyhow::Result<()> {
    let progress = Arc::new(Progress::new(options.json));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Signals first: from here on SIGINT and SIGTERM are ours to handle.
    let (mut interrupt, mut terminate) = {
        let _entered = runtime.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    let workspace = tempfile::Builder::new().prefix("drgw-demo-").tempdir()?;
    progress.line(&format!(
        "drgw demo: source gateway, target gateway and tap on loopback, working in {}",
        workspace.path().display()
    ));
    // Dropping the steps' future on a signal drops its children, which
    // stops them (process.rs) before the workspace goes.
    let outcome = runtime.block_on(async {
        tokio::select! {
            summary = steps::run(workspace.path(), progress.clone(), options) => Some(summary),
            _ = interrupt.recv() => None,
            _ = terminate.recv() => None,
        }
    });
    let Some(summary) = outcome else {
        progress.line("interrupted: the appliances and the tap are stopped");
        finish_workspace(workspace, options.keep, &progress);
        bail!("interrupted");
    };
    let mut summary = match summary {
        Ok(summary) => summary,
        Err(error) => {
            finish_workspace(workspace, options.keep, &progress);
            return Err(error);
        }
    };
    summary.workspace = finish_workspace(workspace, options.keep, &progress);
    if options.json {
        summary.print_json();
    } else {
        summary.print_text();
    }
    match summary.failure {
        None => Ok(()),
        Some(failure) => bail!("{failure}"),
    }
}

/// Keeps or removes the workspace; returns its path when kept.
fn finish_workspace(
    workspace: tempfile::TempDir,
    keep: bool,
    progress: &Progress,
) -> Option<String> {
    if !keep {
        let path = workspace.path().display().to_string();
        if let Err(error) = workspace.close() {
            progress.line(&format!("could not remove {path}: {error}"));
        }
        return None;
    }
    let kept = workspace.keep();
    progress.line(&format!("kept {} (configs, state, logs)", kept.display()));
    Some(kept.display().to_string())
}
