//! Live figures while the workload runs: every [`TICK`], the source's and
//! the target's status (over their control sockets, as `drgw status`
//! would), drawn as one line and kept as samples for the summary.
//!
//! Cost: two status requests per tick (each reads the mount table once),
//! 2 per second; samples are 40 bytes each, at most [`SAMPLES_MAX`].

use super::progress::Progress;
use crate::control::{self, Request};
use crate::status::Status;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_millis(500);
/// The write rate shown is over this many ticks (2 s).
const RATE_TICKS: usize = 4;
/// An hour of ticks; a demo lasts a minute.
const SAMPLES_MAX: usize = 7200;

/// One reading of the pipeline.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Bytes the tap acknowledged so far.
    pub bytes_written: u64,
    /// The group's last sequence durable in staging at the source.
    pub sequence_staged: u64,
    /// The last sequence the target applied.
    pub sequence_applied: u64,
    /// Age of the newest recovery point durable at the target.
    pub rpo_s: Option<f64>,
    /// The source's replication lag (staged → durable at the target), p99
    /// of its recent appends.
    pub lag_p99_ms: Option<f64>,
    pub points: usize,
}

pub struct Monitor {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

/// Where the monitor reads from.
pub struct Sources {
    pub source_socket: PathBuf,
    pub target_socket: PathBuf,
    pub bytes_written: Arc<AtomicU64>,
}

impl Monitor {
    pub fn start(progress: Arc<Progress>, sources: Sources) -> Monitor {
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch(progress, sources, stop.clone()));
        Monitor { stop, task }
    }

    /// Stops it; returns its samples.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

async fn watch(progress: Arc<Progress>, sources: Sources, stop: CancellationToken) -> Vec<Sample> {
    let mut samples = Vec::new();
    // (when, bytes written) of the last ticks: the rate shown is over them.
    let mut recent: VecDeque<(Instant, u64)> = VecDeque::with_capacity(RATE_TICKS + 1);
    loop {
        if let Some(sample) = read_sample(&sources).await {
            let now = Instant::now();
            recent.push_back((now, sample.bytes_written));
            if recent.len() > RATE_TICKS {
                recent.pop_front();
            }
            let rate = recent
                .front()
                .filter(|(at, _)| *at < now)
                .map(|(at, bytes)| {
                    (sample.bytes_written - bytes) as f64 / now.duration_since(*at).as_secs_f64()
                });
            progress.live(&line(&sample, rate));
            if samples.len() < SAMPLES_MAX {
                samples.push(sample);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
    progress.end_live();
    samples
}

async fn read_sample(sources: &Sources) -> Option<Sample> {
    let source = status(&sources.source_socket).await?;
    let target = status(&sources.target_socket).await?;
    let staging = source.groups.first();
    let replica = target.target_groups.first();
    Some(Sample {
        bytes_written: sources.bytes_written.load(Ordering::Relaxed),
        sequence_staged: staging.map_or(0, |g| g.sequence_last_durable),
        sequence_applied: replica.map_or(0, |g| g.applied_through),
        rpo_s: replica.and_then(|g| g.rpo_s),
        lag_p99_ms: staging.and_then(|g| g.lag_p99_ms),
        points: replica.map_or(0, |g| g.points),
    })
}

async fn status(socket: &std::path::Path) -> Option<Status> {
    let value = control::request(socket, Request::Status).await.ok()?;
    serde_json::from_value(value).ok()
}

fn line(sample: &Sample, rate_bytes_per_s: Option<f64>) -> String {
    let rate = rate_bytes_per_s.map_or("-".into(), |r| format!("{:.0} MB/s", r / 1e6));
    let optional = |value: Option<f64>, unit: &str, scale: f64| {
        value.map_or("-".into(), |v| format!("{:.1} {unit}", v * scale))
    };
    format!(
        "written {} MiB ({rate}) | staged #{} -> applied #{} | lag p99 {} | RPO {} | {} points",
        sample.bytes_written >> 20,
        sample.sequence_staged,
        sample.sequence_applied,
        optional(sample.lag_p99_ms, "ms", 1.0),
        optional(sample.rpo_s, "s", 1.0),
        sample.points
    )
}

/// p50, p99 and max of some figures (None when there are none).
pub fn percentiles(mut values: Vec<f64>) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = |fraction: f64| values[((values.len() - 1) as f64 * fraction).round() as usize];
    Some((at(0.5), at(0.99), values[values.len() - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_hundred() {
        let values = (1..=100).map(f64::from).collect();
        assert_eq!(percentiles(values), Some((51.0, 99.0, 100.0)));
        assert_eq!(percentiles(Vec::new()), None);
    }
}
