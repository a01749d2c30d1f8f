//! `materialize`: writes a disk as it was at a recovery point to an image
//! file (raw or qcow2), as a daemon-side job (control/jobs.rs).
//!
//! Everything that can be refused is checked before the job starts, so a
//! bad request fails at once: the group, disk and point; an output path
//! that is not absolute or whose directory is missing; an existing output
//! (refused without `--force` or `--resume`); a sidecar that does not match
//! (`--resume`). While the job runs, a sidecar beside the output records
//! how much of the image is durable (sidecar.rs); it is removed once the
//! image is complete and fsynced, which is when the job reports success.
//! See docs/formats/materialize.md.

mod copy;
mod image;
mod qcow2;
mod sidecar;

pub use image::ImageFormat;

use crate::appliance::Appliance;
use crate::control::jobs::JobContext;
use copy::{Copy, Stop};
use drgw_replica::{PointSpec, PointView, RecoveryPoint};
use image::{ImageFiles, Layout};
use sidecar::Sidecar;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to materialize, as the control request names it.
#[derive(Debug, Clone, PartialEq)]
pub struct MaterializeRequest {
    pub group: String,
    pub point: String,
    pub disk: String,
    pub out: String,
    pub format: ImageFormat,
    /// Continue an interrupted materialize of the same point (its sidecar).
    pub resume: bool,
    /// Replace an existing output.
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Materialized {
    pub group: String,
    pub disk: String,
    pub point: RecoveryPoint,
    pub out: String,
    pub format: ImageFormat,
    pub size_bytes: u64,
    /// Disk bytes written (all-zero grains are left out: holes in a raw
    /// image, unallocated clusters in a qcow2 one).
    pub data_bytes: u64,
    /// Length of the image file (qcow2: with its tables).
    pub file_bytes: u64,
    /// Where this run started: 0, or how far an interrupted run had got.
    pub resumed_from_bytes: u64,
    /// Whether the image was written with O_DIRECT.
    pub direct_io: bool,
    pub seconds: f64,
}

/// Everything a job needs, checked and opened.
struct Plan {
    view: PointView,
    group: String,
    disk: String,
    point: RecoveryPoint,
    out: PathBuf,
    format: ImageFormat,
    files: ImageFiles,
    layout: Layout,
    sidecar: Sidecar,
    sidecar_path: PathBuf,
}

/// Checks the request and starts the job; returns its id.
pub fn start(appliance: &Appliance, request: MaterializeRequest) -> Result<u64, String> {
    let plan = prepare(appliance, &request)?;
    let subject = plan.out.display().to_string();
    appliance
        .jobs
        .start("materialize", &subject, move |context| {
            let result = run(plan, context)?;
            serde_json::to_value(result).map_err(|e| format!("cannot encode the result: {e}"))
        })
}

/// Starts the job and waits for it (the `materialize` request).
pub fn blocking(
    appliance: &Appliance,
    request: MaterializeRequest,
) -> Result<serde_json::Value, String> {
    let id = start(appliance, request)?;
    loop {
        let report = appliance.jobs.report(id)?;
        match (report.result, report.error) {
            (Some(result), _) => return Ok(result),
            (None, Some(error)) => return Err(error),
            (None, None) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

fn prepare(appliance: &Appliance, request: &MaterializeRequest) -> Result<Plan, String> {
    let out = PathBuf::from(&request.out);
    if !out.is_absolute() {
        return Err(format!("--out {} must be an absolute path", request.out));
    }
    if !out.parent().is_some_and(Path::is_dir) {
        return Err(format!("the directory of {} does not exist", out.display()));
    }
    if out.is_dir() {
        return Err(format!("{} is a directory", out.display()));
    }
    appliance.jobs.check_room(&out.display().to_string())?;
    let target = appliance
        .targets
        .find(&request.group)
        .map_err(|e| e.to_string())?;
    let replica = target
        .disks()
        .into_iter()
        .find(|d| d.name == request.disk)
        .ok_or_else(|| format!("group {} has no disk {}", request.group, request.disk))?;
    let spec = PointSpec::parse(&request.point).map_err(|e| e.to_string())?;
    let point = target.resolve(&spec).map_err(|e| e.to_string())?;
    let (peer, _) = target.key();
    let wanted = Sidecar {
        format: sidecar::FORMAT,
        group: format!("{peer}/{}", target.name()),
        point_sequence: point.sequence,
        disk: request.disk.clone(),
        disk_size_bytes: replica.size_bytes,
        image_format: request.format.as_str().into(),
        done_bytes: 0,
        allocated_bytes: 0,
        file_device: 0,
        file_inode: 0,
        updated_unix_s: drgw_io::clock::unix_seconds(),
    };
    let runtime = tokio::runtime::Handle::current();
    let view = runtime
        .block_on(PointView::open(target.clone(), replica.id, point.sequence))
        .map_err(|e| e.to_string())?;
    let sidecar_path = sidecar::path_of(&out);
    let (files, layout, sidecar) = open_output(&out, &sidecar_path, wanted, request)?;
    Ok(Plan {
        view,
        group: target.name(),
        disk: request.disk.clone(),
        point,
        out,
        format: request.format,
        files,
        layout,
        sidecar,
        sidecar_path,
    })
}

/// Opens the output as the request says: fresh, replaced (`force`), or
/// continued (`resume`, when its sidecar matches).
fn open_output(
    out: &Path,
    sidecar_path: &Path,
    mut wanted: Sidecar,
    request: &MaterializeRequest,
) -> Result<(ImageFiles, Layout, Sidecar), String> {
    let found = Sidecar::load(sidecar_path).map_err(|e| e.to_string())?;
    let exists = out.exists();
    let io = |e: std::io::Error| copy::io_error_text(out, &e);
    if request.resume && !request.force && (exists || found.is_some()) {
        let found = found.ok_or_else(|| {
            format!(
                "{} exists and has no sidecar {}: nothing to resume (it is complete, or not \
                 written by drgw); use --force to replace it",
                out.display(),
                sidecar_path.display()
            )
        })?;
        if let Some(reason) = found.mismatch(&wanted) {
            return Err(format!("cannot resume {}: {reason}", out.display()));
        }
        if !exists {
            return Err(format!(
                "cannot resume {}: the image is gone (its sidecar is there); use --force to start over",
                out.display()
            ));
        }
        return resume_output(out, found, request.format);
    }
    if (exists || found.is_some()) && !request.force {
        let hint = match found {
            Some(_) => "an interrupted materialize left it: continue with --resume, or replace it with --force",
            None => "replace it with --force",
        };
        return Err(format!("{} exists: {hint}", out.display()));
    }
    if found.is_some() {
        std::fs::remove_file(sidecar_path)
            .map_err(|e| format!("{}: {e}", sidecar_path.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(io)?;
    let size = wanted.disk_size_bytes;
    let layout = match request.format {
        ImageFormat::Raw => {
            file.set_len(size).map_err(io)?;
            Layout::Raw { size_bytes: size }
        }
        ImageFormat::Qcow2 => Layout::Qcow2(qcow2::Qcow2Layout::new(size)),
    };
    (wanted.file_device, wanted.file_inode) = sidecar::identity(&file).map_err(io)?;
    wanted.allocated_bytes = layout.allocated();
    wanted.store(sidecar_path).map_err(|e| e.to_string())?;
    let files = ImageFiles::open(out).map_err(io)?;
    Ok((files, layout, wanted))
}

/// Reopens an interrupted image at its sidecar's checkpoint.
fn resume_output(
    out: &Path,
    found: Sidecar,
    format: ImageFormat,
) -> Result<(ImageFiles, Layout, Sidecar), String> {
    let io = |e: std::io::Error| copy::io_error_text(out, &e);
    let files = ImageFiles::open(out).map_err(io)?;
    let identity = sidecar::identity(&files.plain).map_err(io)?;
    if identity != (found.file_device, found.file_inode) {
        return Err(format!(
            "cannot resume {}: the file was replaced since the sidecar was written; use --force to start over",
            out.display()
        ));
    }
    let length = files.plain.metadata().map_err(io)?.len();
    let layout = match format {
        ImageFormat::Raw => {
            if length != found.disk_size_bytes {
                return Err(format!(
                    "cannot resume {}: it is {length} bytes, not the disk's {}; use --force to start over",
                    out.display(),
                    found.disk_size_bytes
                ));
            }
            // Past the checkpoint, make it a hole again: what a killed run
            // wrote there is not known to be complete.
            drgw_replica::discard(&files.plain, found.done_bytes, length - found.done_bytes)
                .map_err(io)?;
            Layout::Raw {
                size_bytes: found.disk_size_bytes,
            }
        }
        ImageFormat::Qcow2 => {
            if length < found.allocated_bytes {
                return Err(format!(
                    "cannot resume {}: it is shorter ({length} bytes) than its sidecar records; use --force",
                    out.display()
                ));
            }
            let layout = qcow2::Qcow2Layout::resume(
                &files.plain,
                found.disk_size_bytes,
                found.done_bytes,
                found.allocated_bytes,
            )
            .map_err(|e| format!("cannot resume {}: {e}; use --force", out.display()))?;
            Layout::Qcow2(layout)
        }
    };
    tracing::info!(out = %out.display(), done_bytes = found.done_bytes, "materialize resumes");
    Ok((files, layout, found))
}

fn run(mut plan: Plan, context: &JobContext) -> Result<Materialized, String> {
    let started = Instant::now();
    let resumed_from_bytes = plan.sidecar.done_bytes;
    let size = plan.sidecar.disk_size_bytes;
    context.progress.begin(resumed_from_bytes, size);
    tracing::info!(out = %plan.out.display(), group = %plan.group, disk = %plan.disk,
        sequence = plan.point.sequence, format = plan.format.as_str(), direct_io = plan.files.direct_io,
        "materialize starts");
    let copy = Copy {
        files: &plan.files,
        layout: &mut plan.layout,
        sidecar: &mut plan.sidecar,
        sidecar_path: &plan.sidecar_path,
        out: &plan.out,
        context,
    };
    let outcome = copy.run(plan.view).map_err(|stop| match stop {
        Stop::Failed(error) => error,
        Stop::Cancelled => format!(
            "{}: materialize {} after {} of {} bytes; the image is incomplete (its sidecar \
             records the progress): continue with --resume",
            plan.out.display(),
            match context.shutdown.is_cancelled() {
                true => "stopped by the daemon's shutdown",
                false => "cancelled",
            },
            plan.sidecar.done_bytes,
            size
        ),
    })?;
    let io = |e: std::io::Error| copy::io_error_text(&plan.out, &e);
    let file_bytes = plan.layout.finish(&plan.files.plain).map_err(io)?;
    plan.files.plain.sync_all().map_err(io)?;
    std::fs::remove_file(&plan.sidecar_path)
        .map_err(|e| format!("{}: {e}", plan.sidecar_path.display()))?;
    if let Some(directory) = plan.out.parent() {
        std::fs::File::open(directory)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("{}: {e}", directory.display()))?;
    }
    Ok(Materialized {
        group: plan.group,
        disk: plan.disk,
        point: plan.point,
        out: plan.out.display().to_string(),
        format: plan.format,
        size_bytes: size,
        data_bytes: outcome.data_bytes,
        file_bytes,
        resumed_from_bytes,
        direct_io: plan.files.direct_io,
        seconds: started.elapsed().as_secs_f64(),
    })
}
