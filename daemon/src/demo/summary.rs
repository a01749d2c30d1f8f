//! The demo's summary: what went through, how far behind the target was,
//! what it can recover, and whether the recovered data is right. Printed
//! as text, or as one JSON document with `--json`.

use super::recovery::StepOutcome;
use super::verify::Verdict;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Every verification passed (steps not built yet do not count).
    pub passed: bool,
    /// Why not, when not.
    pub failure: Option<String>,
    pub seconds: f64,
    /// The workspace, when `--keep` kept it.
    pub workspace: Option<String>,
    pub group: String,
    pub disks: Vec<DiskFigures>,
    pub workload: WorkloadSummary,
    pub replication: ReplicationSummary,
    pub bookmark: BookmarkSummary,
    pub points: PointsSummary,
    /// The tap's primaries read back over NBD at the end of the workload.
    pub primaries: Vec<Verdict>,
    /// Each disk materialized at the bookmark on the target.
    pub verification: Vec<Verdict>,
    pub test_failover: StepOutcome,
    pub failover: StepOutcome,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskFigures {
    pub name: String,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkloadSummary {
    pub writes: u64,
    pub bytes: u64,
    /// Time spent writing (both phases).
    pub seconds: f64,
    /// Through the tap: bytes acknowledged / seconds, in MB/s (10^6).
    pub throughput_mb_per_s: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicationSummary {
    /// Staged at the source → durable at the target, over the source's last
    /// appends (up to 20,000), as `drgw status` reports it.
    pub lag_p50_ms: Option<f64>,
    pub lag_p99_ms: Option<f64>,
    pub lag_max_ms: Option<f64>,
    pub lag_samples: usize,
    /// RPO as the target saw it while writing (age of its newest point),
    /// sampled twice a second.
    pub rpo_p50_s: Option<f64>,
    pub rpo_p99_s: Option<f64>,
    pub rpo_max_s: Option<f64>,
    pub rpo_samples: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BookmarkSummary {
    pub name: String,
    pub sequence: u64,
    pub unix_ms: u64,
    /// Bytes written before it (the rest came after).
    pub bytes_before: u64,
    /// From taking it at the source to applied at the target.
    pub seconds_to_target: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PointsSummary {
    /// Recovery points on the target at the end.
    pub total: usize,
    pub bookmarks: usize,
    pub oldest_unix_ms: Option<u64>,
    pub newest_unix_ms: Option<u64>,
}

impl Summary {
    pub fn print_json(&self) {
        println!(
            "{}",
            serde_json::to_string_pretty(self).expect("the summary always serialises")
        );
    }

    pub fn print_text(&self) {
        let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        let disks: Vec<String> = self
            .disks
            .iter()
            .map(|d| format!("{} ({:.0} MiB)", d.name, mib(d.size_bytes)))
            .collect();
        println!();
        println!("== summary ==");
        println!("group         {}: {}", self.group, disks.join(", "));
        println!(
            "workload      {} writes, {:.0} MiB in {:.1} s through the tap: {:.1} MB/s",
            self.workload.writes,
            mib(self.workload.bytes),
            self.workload.seconds,
            self.workload.throughput_mb_per_s
        );
        let r = &self.replication;
        println!(
            "lag           staged -> durable at the target: p50 {}, p99 {}, max {} ({} appends)",
            figure(r.lag_p50_ms, "ms"),
            figure(r.lag_p99_ms, "ms"),
            figure(r.lag_max_ms, "ms"),
            r.lag_samples
        );
        println!(
            "RPO           age of the target's newest point while writing: p50 {}, p99 {}, max {} ({} samples)",
            figure(r.rpo_p50_s, "s"),
            figure(r.rpo_p99_s, "s"),
            figure(r.rpo_max_s, "s"),
            r.rpo_samples
        );
        let b = &self.bookmark;
        println!(
            "bookmark      {} at sequence {}, after {:.0} MiB; applied at the target {:.1} s after it was taken",
            b.name,
            b.sequence,
            mib(b.bytes_before),
            b.seconds_to_target
        );
        self.print_points();
        for verdict in &self.primaries {
            println!("primary       {}", verdict.describe());
        }
        for verdict in &self.verification {
            println!("recovered     {}", verdict.describe());
        }
        println!("test failover {}", self.test_failover.describe());
        println!("failover      {}", self.failover.describe());
        if let Some(workspace) = &self.workspace {
            println!("kept          {workspace} (configs, state, logs)");
        }
        match &self.failure {
            None => println!("demo passed in {:.1} s", self.seconds),
            Some(failure) => println!("demo FAILED in {:.1} s: {failure}", self.seconds),
        }
    }

    fn print_points(&self) {
        let p = &self.points;
        let span = match (p.oldest_unix_ms, p.newest_unix_ms) {
            (Some(oldest), Some(newest)) => {
                format!(", spanning {:.1} s", (newest - oldest) as f64 / 1000.0)
            }
            _ => String::new(),
        };
        println!(
            "points        {} on the target ({} bookmark){span}",
            p.total, p.bookmarks
        );
    }
}

fn figure(value: Option<f64>, unit: &str) -> String {
    value.map_or("-".into(), |v| format!("{v:.1} {unit}"))
}
