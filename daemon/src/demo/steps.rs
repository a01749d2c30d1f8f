//! The demo's numbered steps, one function each; `run` keeps the order.
//!
//! Sizes, for a 2-core machine in under a minute: two disks of 256 MiB;
//! before the bookmark up to 384 MiB of writes (or 12 s), after it up to
//! 128 MiB (or 6 s). Disk use in the workspace: the primaries, the
//! replicas, staging and journal (compressed), and one recovered image at
//! a time: about 2 GiB at most, all sparse files.

use super::live::{self, Monitor, Sample, Sources};
use super::progress::Progress;
use super::recovery::{self, RecoveryContext};
use super::sites::Site;
use super::summary::{
    BookmarkSummary, DiskFigures, PointsSummary, ReplicationSummary, Summary, WorkloadSummary,
};
use super::tap::DemoTap;
use super::verify::{self, Verdict};
use super::workload::{DiskModel, Workload};
use super::Options;
use crate::control::{BookmarkTaken, Materialized, PointList, Request};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GROUP: &str = "demo";
const DISK_NAMES: [&str; 2] = ["disk-a", "disk-b"];
const DISK_BYTES: u64 = 256 << 20;
const BOOKMARK: &str = "demo-bookmark";
/// Writing before the bookmark: at most this many bytes, or this long.
const BEFORE_BYTES: u64 = 384 << 20;
const BEFORE_TIME: Duration = Duration::from_secs(12);
/// Writing after it.
const AFTER_BYTES: u64 = 128 << 20;
const AFTER_TIME: Duration = Duration::from_secs(6);
/// How long the target may take to have the bookmark applied.
const BOOKMARK_WAIT: Duration = Duration::from_secs(60);
/// Bookmark requests tried (each waits up to 30 s for the tap's barrier).
const BOOKMARK_ATTEMPTS: u32 = 3;

/// The bookmark, and what every disk held when it was taken.
struct Bookmark {
    taken: BookmarkTaken,
    expected: Vec<DiskModel>,
    bytes_before: u64,
    at: Instant,
}

/// Runs every step; returns the summary, failed or not (an error is a
/// step that could not be carried out at all).
pub async fn run(
    root: &Path,
    progress: Arc<Progress>,
    options: Options,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let (source, target) = start_appliances(root, &progress).await?;
    pair(root, &progress, &source, &target).await?;
    let tap = start_tap(root, &progress, &source).await?;
    let mut workload = Workload::connect(&tap).await?;
    let monitor = Monitor::start(
        progress.clone(),
        Sources {
            source_socket: source.socket.clone(),
            target_socket: target.socket.clone(),
            bytes_written: workload.bytes_counter.clone(),
        },
    );
    write_before_bookmark(&progress, &mut workload).await?;
    let bookmark = take_bookmark(&progress, &source, &mut workload).await?;
    let arrival = tokio::spawn(watch_arrival(
        target.socket.clone(),
        bookmark.taken.sequence,
        bookmark.at,
    ));
    write_after_bookmark(&progress, &mut workload).await?;
    let samples = monitor.stop().await;
    let primaries = read_back_primaries(&progress, &tap, &workload).await?;
    let written = workload_figures(&workload);
    let disks = tap
        .disks
        .iter()
        .map(|disk| DiskFigures {
            name: disk.name.clone(),
            size_bytes: disk.size_bytes,
        })
        .collect();
    workload.disconnect().await?;
    let seconds_to_target = wait_for_bookmark(&progress, &target, &bookmark, arrival).await?;
    let verification =
        verify_at_bookmark(&progress, root, &target, &bookmark, options.keep).await?;
    let point = format!("bookmark:{BOOKMARK}");
    let context = RecoveryContext {
        progress: &progress,
        target: &target,
        group: GROUP,
        point: &point,
        expected: &bookmark.expected,
    };
    progress.step(9, "test failover at the bookmark");
    let test_failover = recovery::test_failover_at_bookmark(&context).await?;
    progress.step(10, "failover to the bookmark");
    let failover = recovery::failover_to_bookmark(&context).await?;
    let replication = replication_figures(&source, &samples).await?;
    let points = points_figures(&target).await?;
    stop_all(&progress, tap, source, target).await?;
    let mut summary = Summary {
        passed: false,
        failure: None,
        seconds: started.elapsed().as_secs_f64(),
        workspace: None,
        group: GROUP.into(),
        disks,
        workload: written,
        replication,
        bookmark: BookmarkSummary {
            name: bookmark.taken.name.clone(),
            sequence: bookmark.taken.sequence,
            unix_ms: bookmark.taken.unix_ms,
            bytes_before: bookmark.bytes_before,
            seconds_to_target,
        },
        points,
        primaries,
        verification,
        test_failover,
        failover,
    };
    judge(&mut summary);
    Ok(summary)
}

/// Sets `passed` and `failure` from the verifications.
fn judge(summary: &mut Summary) {
    let mut failures: Vec<String> = Vec::new();
    for (what, verdicts) in [
        ("read back through the tap", &summary.primaries),
        ("recovered at the bookmark", &summary.verification),
    ] {
        for verdict in verdicts.iter().filter(|v| !v.passed) {
            failures.push(format!("{} {what}: {}", verdict.disk, verdict.describe()));
        }
    }
    for (what, outcome) in [
        ("test failover", &summary.test_failover),
        ("failover", &summary.failover),
    ] {
        if !outcome.passed() {
            failures.push(format!("{what}: {}", outcome.describe()));
        }
    }
    summary.passed = failures.is_empty();
    summary.failure =
        (!failures.is_empty()).then(|| format!("verification failed: {}", failures.join("; ")));
}

/// Step 1.
async fn start_appliances(root: &Path, progress: &Progress) -> anyhow::Result<(Site, Site)> {
    progress.step(1, "start two appliances (drgw serve) on loopback");
    let source = Site::start(root, "site-a").await?;
    let target = Site::start(root, "site-b").await?;
    for (site, role) in [(&source, "source"), (&target, "target")] {
        progress.detail(&format!(
            "{} ({role} of group {GROUP}): replication listener {}, pairing code {}",
            site.name,
            site.address,
            site.fingerprint.pairing_code()
        ));
    }
    Ok((source, target))
}

/// Step 2: each pins the other's fingerprint; an unpaired client is refused.
async fn pair(
    root: &Path,
    progress: &Progress,
    source: &Site,
    target: &Site,
) -> anyhow::Result<()> {
    progress.step(
        2,
        "pair them: each pins the other's certificate fingerprint",
    );
    // The side whose fingerprint sorts first dials: pin on the other first,
    // so that the first dial is already welcome.
    let (dialer, listener) = if source.fingerprint < target.fingerprint {
        (source, target)
    } else {
        (target, source)
    };
    listener.pin(dialer).await?;
    dialer.pin(listener).await?;
    let linked = Instant::now();
    let status = source.wait_for_link(&target.name).await?;
    target.wait_for_link(&source.name).await?;
    let link = &status.peers[0].link;
    progress.detail(&format!(
        "link up in {} ms: TLS 1.3, mutual authentication, protocol v{}, round trip {}",
        linked.elapsed().as_millis(),
        link.protocol_version.unwrap_or(0),
        link.round_trip_us
            .map_or("-".into(), |us| format!("{:.2} ms", us as f64 / 1000.0)),
    ));
    let reason = source.knock_unpaired(root).await?;
    progress.detail(&format!("an unpaired client is refused: {reason}"));
    Ok(())
}

/// Step 3.
async fn start_tap(root: &Path, progress: &Progress, source: &Site) -> anyhow::Result<DemoTap> {
    progress.step(
        3,
        &format!(
            "start the tap (drgw tap) with {} file-backed disks of {} MiB, protected in group {GROUP}",
            DISK_NAMES.len(),
            DISK_BYTES >> 20
        ),
    );
    let tap = DemoTap::start(root, source, GROUP, &DISK_NAMES, DISK_BYTES).await?;
    for disk in &tap.disks {
        progress.detail(&format!(
            "nbd://{}/{} -> {} (primary {})",
            tap.nbd_address,
            disk.name,
            source.name,
            disk.primary.display()
        ));
    }
    Ok(tap)
}

/// Step 4.
async fn write_before_bookmark(progress: &Progress, workload: &mut Workload) -> anyhow::Result<()> {
    progress.step(
        4,
        &format!(
            "write through the tap: 4 KiB to 1 MiB writes on both disks at once, up to {} MiB or {} s",
            BEFORE_BYTES >> 20,
            BEFORE_TIME.as_secs()
        ),
    );
    let before = workload.figures;
    workload.run_phase(BEFORE_TIME, BEFORE_BYTES).await?;
    progress.end_live();
    describe_phase(progress, before, workload);
    Ok(())
}

/// Step 5: freeze (flush), bookmark, thaw — what an agent does around
/// `fsfreeze`. No write is in flight, so the model is the contents.
async fn take_bookmark(
    progress: &Progress,
    source: &Site,
    workload: &mut Workload,
) -> anyhow::Result<Bookmark> {
    progress.step(
        5,
        &format!("freeze writes, take the app-consistent bookmark {BOOKMARK} on the source, thaw"),
    );
    let frozen = Instant::now();
    workload.flush().await?;
    let expected = workload.models();
    let request = Request::Bookmark {
        group: GROUP.into(),
        name: BOOKMARK.into(),
    };
    let mut attempt = 1;
    let value = loop {
        match source.request(request.clone()).await {
            Ok(value) => break value,
            Err(error) if attempt < BOOKMARK_ATTEMPTS => {
                progress.detail(&format!("bookmark attempt {attempt} failed: {error:#}"));
                attempt += 1;
            }
            Err(error) => return Err(error.context("taking the bookmark")),
        }
    };
    let taken: BookmarkTaken = serde_json::from_value(value).context("reading the bookmark")?;
    let bytes_before = workload.figures.bytes;
    progress.detail(&format!(
        "bookmark {} at sequence {} after {} MiB, writes paused {} ms; each disk's contents at this instant are remembered",
        taken.name,
        taken.sequence,
        bytes_before >> 20,
        frozen.elapsed().as_millis()
    ));
    Ok(Bookmark {
        taken,
        expected,
        bytes_before,
        at: Instant::now(),
    })
}

/// Step 6.
async fn write_after_bookmark(progress: &Progress, workload: &mut Workload) -> anyhow::Result<()> {
    progress.step(
        6,
        &format!(
            "keep writing after the bookmark, up to {} MiB or {} s",
            AFTER_BYTES >> 20,
            AFTER_TIME.as_secs()
        ),
    );
    let before = workload.figures;
    workload.run_phase(AFTER_TIME, AFTER_BYTES).await?;
    workload.flush().await?;
    progress.end_live();
    describe_phase(progress, before, workload);
    Ok(())
}

fn describe_phase(
    progress: &Progress,
    before: super::workload::WorkloadFigures,
    workload: &Workload,
) {
    let bytes = workload.figures.bytes - before.bytes;
    let seconds = (workload.figures.writing - before.writing).as_secs_f64();
    progress.detail(&format!(
        "{} writes, {} MiB in {seconds:.1} s ({:.0} MB/s), acknowledged by the tap",
        workload.figures.writes - before.writes,
        bytes >> 20,
        bytes as f64 / 1e6 / seconds.max(1e-3)
    ));
}

/// End of step 6: the primaries, read back over NBD, hold the last writes.
async fn read_back_primaries(
    progress: &Progress,
    tap: &DemoTap,
    workload: &Workload,
) -> anyhow::Result<Vec<Verdict>> {
    let mut verdicts = Vec::new();
    for model in workload.models() {
        let verdict = verify::verify_export(&tap.nbd_address, &model.name, &model).await?;
        progress.detail(&format!(
            "read back through the tap: {}",
            verdict.describe()
        ));
        verdicts.push(verdict);
    }
    Ok(verdicts)
}

/// From the moment the bookmark is taken, while writing goes on: polls
/// the target until it lists the bookmark and has applied through it.
/// Returns the seconds that took, or None after [`BOOKMARK_WAIT`].
async fn watch_arrival(target_socket: PathBuf, sequence: u64, taken: Instant) -> Option<f64> {
    let request = Request::Points {
        group: GROUP.into(),
    };
    while taken.elapsed() < BOOKMARK_WAIT {
        let answer = crate::control::request(&target_socket, request.clone()).await;
        let list = answer
            .ok()
            .and_then(|v| serde_json::from_value::<PointList>(v).ok());
        let arrived = list.is_some_and(|list| {
            list.applied_through >= sequence
                && list
                    .points
                    .iter()
                    .any(|p| p.bookmark.as_deref() == Some(BOOKMARK))
        });
        if arrived {
            return Some(taken.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Step 7: the target has the bookmark applied (watched since it was
/// taken). Returns the seconds from taking it to applied at the target.
async fn wait_for_bookmark(
    progress: &Progress,
    target: &Site,
    bookmark: &Bookmark,
    arrival: tokio::task::JoinHandle<Option<f64>>,
) -> anyhow::Result<f64> {
    progress.step(
        7,
        &format!("wait until {} has applied the bookmark", target.name),
    );
    let Some(seconds) = arrival.await? else {
        bail!(
            "{} did not apply bookmark {BOOKMARK} (sequence {}) within {} s; see {}",
            target.name,
            bookmark.taken.sequence,
            BOOKMARK_WAIT.as_secs(),
            target.process.log_path.display()
        );
    };
    let list = points(target).await?;
    progress.detail(&format!(
        "applied {seconds:.1} s after it was taken, while writing went on; now applied through sequence {}, {} points",
        list.applied_through,
        list.points.len()
    ));
    Ok(seconds)
}

async fn points(target: &Site) -> anyhow::Result<PointList> {
    let value = target
        .request(Request::Points {
            group: GROUP.into(),
        })
        .await?;
    Ok(serde_json::from_value(value)?)
}

/// Step 8: each disk written at the bookmark to an image on the target,
/// compared with what it held when the bookmark was taken.
async fn verify_at_bookmark(
    progress: &Progress,
    root: &Path,
    target: &Site,
    bookmark: &Bookmark,
    keep: bool,
) -> anyhow::Result<Vec<Verdict>> {
    progress.step(
        8,
        &format!("verify: materialize each disk at bookmark:{BOOKMARK} on the target, compare with what was written by then"),
    );
    let directory = root.join("recovered");
    std::fs::create_dir_all(&directory)?;
    let mut verdicts = Vec::new();
    for model in &bookmark.expected {
        let out = directory.join(format!("{}-at-{BOOKMARK}.img", model.name));
        let request = Request::Materialize {
            group: GROUP.into(),
            point: format!("bookmark:{BOOKMARK}"),
            disk: model.name.clone(),
            out: out.display().to_string(),
            format: Default::default(),
            resume: false,
            force: true,
        };
        let value = target.request(request).await?;
        let materialized: Materialized = serde_json::from_value(value)?;
        let (path, expected) = (out.clone(), model.clone());
        let read_from = format!("materialize bookmark:{BOOKMARK}");
        let verdict = tokio::task::spawn_blocking(move || {
            verify::verify_image_file(&path, &expected, read_from)
        })
        .await??;
        progress.detail(&format!(
            "{} (materialized in {:.1} s)",
            verdict.describe(),
            materialized.seconds
        ));
        if !keep {
            std::fs::remove_file(&out)?;
        }
        verdicts.push(verdict);
    }
    Ok(verdicts)
}

/// Step 11: the tap first (it drains its forwards), then both appliances.
async fn stop_all(
    progress: &Progress,
    mut tap: DemoTap,
    mut source: Site,
    mut target: Site,
) -> anyhow::Result<()> {
    progress.step(
        11,
        "stop the tap and both appliances with SIGTERM: drain and exit 0",
    );
    let mut took = Vec::new();
    for process in [&mut tap.process, &mut source.process, &mut target.process] {
        let elapsed = process.stop().await?;
        took.push(format!("{} in {} ms", process.name, elapsed.as_millis()));
    }
    progress.detail(&format!("exited 0: {}", took.join(", ")));
    Ok(())
}

fn workload_figures(workload: &Workload) -> WorkloadSummary {
    let figures = workload.figures;
    let seconds = figures.writing.as_secs_f64();
    WorkloadSummary {
        writes: figures.writes,
        bytes: figures.bytes,
        seconds,
        throughput_mb_per_s: figures.bytes as f64 / 1e6 / seconds.max(1e-3),
    }
}

/// The source's lag figures now, and the RPO the live samples saw.
async fn replication_figures(
    source: &Site,
    samples: &[Sample],
) -> anyhow::Result<ReplicationSummary> {
    let status = source.status().await?;
    let group = status
        .groups
        .iter()
        .find(|g| g.name == GROUP)
        .with_context(|| format!("{} shows no group {GROUP}", source.name))?;
    let rpo: Vec<f64> = samples.iter().filter_map(|s| s.rpo_s).collect();
    let rpo_samples = rpo.len();
    let rpo = live::percentiles(rpo);
    Ok(ReplicationSummary {
        lag_p50_ms: group.lag_p50_ms,
        lag_p99_ms: group.lag_p99_ms,
        lag_max_ms: group.lag_max_ms,
        lag_samples: group.lag_samples,
        rpo_p50_s: rpo.map(|r| r.0),
        rpo_p99_s: rpo.map(|r| r.1),
        rpo_max_s: rpo.map(|r| r.2),
        rpo_samples,
    })
}

async fn points_figures(target: &Site) -> anyhow::Result<PointsSummary> {
    let list = points(target).await?;
    Ok(PointsSummary {
        total: list.points.len(),
        bookmarks: list.points.iter().filter(|p| p.bookmark.is_some()).count(),
        oldest_unix_ms: list.points.iter().map(|p| p.unix_ms).min(),
        newest_unix_ms: list.points.iter().map(|p| p.unix_ms).max(),
    })
}
