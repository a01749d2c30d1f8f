//! Long control operations run as daemon-side jobs: a request starts one
//! and answers its id at once; `job` reports its progress; `job-cancel`
//! stops it. A job runs on a blocking thread and watches its cancellation
//! token between steps; a daemon shutdown cancels every running job and
//! waits for it (through the daemon's task tracker) so it can leave its
//! work resumable.
//!
//! Limits: RUNNING_MAX jobs at once; finished jobs are kept KEPT_FOR, at
//! most KEPT_MAX of them, then forgotten.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const RUNNING_MAX: usize = 4;
const KEPT_MAX: usize = 64;
const KEPT_FOR: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    Running,
    Done,
    Failed,
}

/// What `job` answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobReport {
    pub id: u64,
    pub kind: String,
    /// What the job works on (for materialize: the output file).
    pub subject: String,
    pub state: JobState,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Over this run of the job (bytes done before a resume do not count).
    pub bytes_per_second: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Progress figures a job updates as it goes.
#[derive(Debug, Default)]
pub struct Progress {
    done_bytes: AtomicU64,
    total_bytes: AtomicU64,
    /// `done_bytes` when this run began (a resumed job starts above zero).
    start_bytes: AtomicU64,
}

impl Progress {
    pub fn begin(&self, done_bytes: u64, total_bytes: u64) {
        self.start_bytes.store(done_bytes, Ordering::Relaxed);
        self.done_bytes.store(done_bytes, Ordering::Relaxed);
        self.total_bytes.store(total_bytes, Ordering::Relaxed);
    }

    pub fn set_done(&self, done_bytes: u64) {
        self.done_bytes.store(done_bytes, Ordering::Relaxed);
    }

    pub fn done(&self) -> u64 {
        self.done_bytes.load(Ordering::Relaxed)
    }
}

/// What a running job sees: its progress and its cancellation.
#[derive(Clone)]
pub struct JobContext {
    pub progress: Arc<Progress>,
    pub cancel: CancellationToken,
    /// Cancelled when the daemon shuts down (so a job can say why it stopped).
    pub shutdown: CancellationToken,
}

struct Job {
    id: u64,
    kind: &'static str,
    subject: String,
    context: JobContext,
    started: Instant,
    outcome: Mutex<Option<(Instant, Result<serde_json::Value, String>)>>,
}

impl Job {
    fn report(&self) -> JobReport {
        let outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        let progress = &self.context.progress;
        let done_bytes = progress.done();
        let end = outcome.as_ref().map_or_else(Instant::now, |(at, _)| *at);
        let seconds = end.duration_since(self.started).as_secs_f64().max(1e-3);
        let this_run = done_bytes.saturating_sub(progress.start_bytes.load(Ordering::Relaxed));
        let (state, result, error) = match &*outcome {
            None => (JobState::Running, None, None),
            Some((_, Ok(value))) => (JobState::Done, Some(value.clone()), None),
            Some((_, Err(error))) => (JobState::Failed, None, Some(error.clone())),
        };
        JobReport {
            id: self.id,
            kind: self.kind.to_string(),
            subject: self.subject.clone(),
            state,
            done_bytes,
            total_bytes: progress.total_bytes.load(Ordering::Relaxed),
            bytes_per_second: (this_run as f64 / seconds) as u64,
            result,
            error,
        }
    }

    fn finished_at(&self) -> Option<Instant> {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(at, _)| *at)
    }
}

pub struct JobRegistry {
    jobs: Mutex<BTreeMap<u64, Arc<Job>>>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl JobRegistry {
    /// `shutdown` is cancelled when the daemon stops; `tracker` is the
    /// daemon's, so the drain waits for running jobs.
    pub fn new(shutdown: CancellationToken, tracker: TaskTracker) -> JobRegistry {
        JobRegistry {
            jobs: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            shutdown,
            tracker,
        }
    }

    /// Starts `work` on a blocking thread; returns the job's id. Refused
    /// when RUNNING_MAX jobs run, or a running job has the same subject.
    pub fn start<F>(&self, kind: &'static str, subject: &str, work: F) -> Result<u64, String>
    where
        F: FnOnce(&JobContext) -> Result<serde_json::Value, String> + Send + 'static,
    {
        self.check_room(subject)?;
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut jobs);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let job = Arc::new(Job {
            id,
            kind,
            subject: subject.to_string(),
            context: JobContext {
                progress: Arc::default(),
                cancel: self.shutdown.child_token(),
                shutdown: self.shutdown.clone(),
            },
            started: Instant::now(),
            outcome: Mutex::new(None),
        });
        jobs.insert(id, job.clone());
        drop(jobs);
        tracing::info!(job = id, kind, subject, "job started");
        self.tracker.spawn(async move {
            let context = job.context.clone();
            let outcome = tokio::task::spawn_blocking(move || work(&context))
                .await
                .unwrap_or_else(|error| Err(format!("the job failed: {error}")));
            match &outcome {
                Ok(_) => tracing::info!(job = job.id, kind = job.kind, "job done"),
                Err(error) => tracing::warn!(job = job.id, kind = job.kind, %error, "job failed"),
            }
            *job.outcome.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now(), outcome));
        });
        Ok(id)
    }

    /// Whether a job on `subject` could start now (checked before a job
    /// prepares its output, so a refusal leaves nothing behind).
    pub fn check_room(&self, subject: &str) -> Result<(), String> {
        if self.shutdown.is_cancelled() {
            return Err("the daemon is shutting down".into());
        }
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let running: Vec<&Arc<Job>> = jobs
            .values()
            .filter(|j| j.finished_at().is_none())
            .collect();
        if let Some(same) = running.iter().find(|j| j.subject == subject) {
            return Err(format!(
                "job {} is already writing {subject}; wait for it or cancel it",
                same.id
            ));
        }
        if running.len() >= RUNNING_MAX {
            return Err(format!(
                "{RUNNING_MAX} jobs are running already; wait for one to finish"
            ));
        }
        Ok(())
    }

    pub fn report(&self, id: u64) -> Result<JobReport, String> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.get(&id)
            .map(|job| job.report())
            .ok_or_else(|| format!("no job {id} (finished jobs are kept for an hour)"))
    }

    /// Asks a running job to stop; it stops at its next step.
    pub fn cancel(&self, id: u64) -> Result<JobReport, String> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let job = jobs.get(&id).ok_or_else(|| format!("no job {id}"))?;
        if job.finished_at().is_none() {
            tracing::info!(job = id, "job cancel requested");
            job.context.cancel.cancel();
        }
        Ok(job.report())
    }
}

/// Forgets finished jobs past KEPT_FOR, and the oldest beyond KEPT_MAX.
fn prune(jobs: &mut BTreeMap<u64, Arc<Job>>) {
    jobs.retain(|_, job| job.finished_at().is_none_or(|at| at.elapsed() < KEPT_FOR));
    let finished: Vec<u64> = jobs
        .iter()
        .filter(|(_, job)| job.finished_at().is_some())
        .map(|(id, _)| *id)
        .collect();
    for id in finished
        .iter()
        .take(finished.len().saturating_sub(KEPT_MAX))
    {
        jobs.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_report_progress_finish_and_cancel() {
        let shutdown = CancellationToken::new();
        let registry = JobRegistry::new(shutdown.clone(), TaskTracker::new());
        let done = registry
            .start("test", "a", |context| {
                context.progress.begin(0, 10);
                context.progress.set_done(10);
                Ok(serde_json::json!({"fine": true}))
            })
            .unwrap();
        let waits = registry
            .start("test", "b", |context| {
                while !context.cancel.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err("cancelled".into())
            })
            .unwrap();
        assert!(registry
            .start("test", "b", |_| Ok(serde_json::Value::Null))
            .is_err());
        registry.cancel(waits).unwrap();
        for _ in 0..400 {
            let (a, b) = (
                registry.report(done).unwrap(),
                registry.report(waits).unwrap(),
            );
            if a.state != JobState::Running && b.state != JobState::Running {
                assert_eq!(a.state, JobState::Done);
                assert_eq!(a.done_bytes, 10);
                assert_eq!(b.state, JobState::Failed);
                assert_eq!(b.error.as_deref(), Some("cancelled"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("jobs did not finish");
    }
}
