//! A tap's session on the source gateway: ATTACH its disks, then stage
//! every WRITE, FLUSH and TRIM durably before answering with an ACK of the
//! tap's sequence (docs/wire-protocol.md, "Sequences on a tap connection").
//!
//! One staging step at a time per session: while it runs, no more frames
//! are read (backpressure through the bounded inbox down to TCP), and the
//! frames that arrived meanwhile are staged together in the next step.

use super::liveness::Liveness;
use super::session::{next_frame, Inbox, SessionContext, SessionError};
use drgw_catalog::ProtectedDisk;
use drgw_ingest::{Ingest, StageBatch, TapRequest};
use drgw_staging::RecordBody;
use drgw_wire::{self as wire, Ack, Attach, Frame};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncWrite, WriteHalf};

/// Payload bytes staged in one step at most.
const STEP_BYTES_MAX: usize = 32 << 20;

/// Resolves to the last tap sequence staged and the barriers that came after it.
type Staging = Pin<Box<dyn Future<Output = Result<(u64, Vec<u64>), SessionError>> + Send>>;

pub(super) async fn run<S: AsyncWrite>(
    writer: &mut WriteHalf<S>,
    inbox: &mut Inbox,
    context: &SessionContext,
    liveness: &mut Liveness,
) -> Result<(), SessionError> {
    let (requests, barrier_requests) = tokio::sync::mpsc::unbounded_channel();
    let ingest = context.appliance.ingest.clone();
    let route = ingest.register_barriers(&context.peer.name, requests);
    let mut session = TapSession {
        ingest,
        tap: context.peer.name.clone(),
        attached: HashMap::new(),
        sequence_last: 0,
        route,
        barrier_requests,
        barriers_pending: HashMap::new(),
        sums_pending: HashMap::new(),
    };
    let result = session.serve(writer, inbox, context, liveness).await;
    session.ingest.unregister_barriers(route);
    for disk in session.attached.values() {
        session.ingest.attached(&disk.name, -1);
    }
    result
}

struct TapSession {
    ingest: Arc<Ingest>,
    tap: String,
    /// The tap's disk numbers on this connection → the protected disk.
    attached: HashMap<u32, ProtectedDisk>,
    sequence_last: u64,
    route: u64,
    barrier_requests: tokio::sync::mpsc::UnboundedReceiver<TapRequest>,
    /// Barriers sent to the tap, not yet back.
    barriers_pending: HashMap<u64, tokio::sync::oneshot::Sender<()>>,
    /// SUM_REQUESTs sent to the tap, not yet answered.
    sums_pending: HashMap<u64, tokio::sync::oneshot::Sender<wire::Sums>>,
}

impl TapSession {
    async fn serve<S: AsyncWrite>(
        &mut self,
        writer: &mut WriteHalf<S>,
        inbox: &mut Inbox,
        context: &SessionContext,
        liveness: &mut Liveness,
    ) -> Result<(), SessionError> {
        let mut staging: Option<Staging> = None;
        loop {
            tokio::select! {
                _ = context.cancel.cancelled() => return Ok(()),
                due = liveness.due() => if due.is_some() {
                    if staging.is_some() {
                        liveness.seen(); // we are not reading: silence is ours
                    }
                    let beat = liveness.heartbeat()?;
                    wire::write_frame(writer, &Frame::Heartbeat(beat)).await?;
                },
                done = async { staging.as_mut().expect("guarded").await }, if staging.is_some() => {
                    staging = None;
                    let (sequence, barriers) = done?;
                    if sequence > 0 {
                        let ack = Ack { group: 0, sequence_durable: sequence };
                        wire::write_frame(writer, &Frame::Ack(ack)).await?;
                    }
                    self.barriers_returned(barriers);
                }
                request = self.barrier_requests.recv() => if let Some(request) = request {
                    self.request(writer, request).await?;
                },
                frame = next_frame(inbox), if staging.is_none() => {
                    liveness.seen();
                    let mut step = Step::default();
                    self.take(frame?, &mut step, writer, context, liveness).await?;
                    while step.bytes < STEP_BYTES_MAX {
                        match inbox.try_recv() {
                            Ok(item) => self.take(item?, &mut step, writer, context, liveness).await?,
                            Err(_) => break,
                        }
                    }
                    let groups: Vec<u32> = self.attached.values().map(|d| d.group_id).collect();
                    self.ingest.barrier_groups(self.route, groups);
                    if step.records == 0 {
                        // Nothing to stage: barriers are confirmed at once
                        // (everything before them was staged by earlier steps).
                        let barriers = std::mem::take(&mut step.barriers);
                        self.barriers_returned(barriers);
                    } else if let Some(future) = step.into_future(self.ingest.clone()) {
                        staging = Some(future);
                    }
                }
            }
        }
    }

    /// Handles one frame: control frames at once, data into `step`.
    async fn take<S: AsyncWrite>(
        &mut self,
        frame: Frame,
        step: &mut Step,
        writer: &mut WriteHalf<S>,
        context: &SessionContext,
        liveness: &mut Liveness,
    ) -> Result<(), SessionError> {
        match frame {
            Frame::Heartbeat(beat) => {
                let round_trip_us = liveness.received(&beat);
                context
                    .appliance
                    .links
                    .heartbeat_received(&context.peer.name, round_trip_us);
            }
            Frame::Attach(attach) => {
                self.attach(&attach)?;
                wire::write_frame(writer, &Frame::Attach(attach)).await?;
            }
            Frame::Write(batch) => {
                for record in batch.writes {
                    let disk = self.disk_for(
                        record.disk,
                        record.sequence,
                        record.offset,
                        record.data.len() as u64,
                    )?;
                    let bytes = record.data.len();
                    let body = RecordBody::Write {
                        disk: disk.id,
                        offset: record.offset,
                        data: record.data,
                    };
                    step.push(&disk, body, bytes);
                }
            }
            Frame::Flush(flush) => {
                let disk = self.disk_for(flush.disk, flush.sequence, 0, 0)?;
                step.push(&disk, RecordBody::Flush { disk: disk.id }, 0);
            }
            Frame::Trim(trim) => {
                let disk = self.disk_for(trim.disk, trim.sequence, trim.offset, trim.length)?;
                let body = RecordBody::Trim {
                    disk: disk.id,
                    offset: trim.offset,
                    length: trim.length,
                };
                step.push(&disk, body, 0);
            }
            Frame::Bookmark(barrier) => {
                if !self.barriers_pending.contains_key(&barrier.sequence) {
                    return Err(SessionError::Protocol(format!(
                        "BOOKMARK {} was not asked for",
                        barrier.sequence
                    )));
                }
                step.barriers.push(barrier.sequence);
            }
            Frame::ResyncMark(mark) => {
                let disk = self.disk_for(mark.disk, mark.sequence, 0, 0)?;
                let body = RecordBody::Resync {
                    unix_ms: drgw_io::clock::unix_millis(),
                    done: mark.done,
                    owner: disk.id,
                };
                step.push(&disk, body, 0);
            }
            Frame::Sums(sums) => match self.sums_pending.remove(&sums.request) {
                Some(answer) => {
                    let _ = answer.send(sums);
                }
                None => {
                    return Err(SessionError::Protocol(format!(
                        "SUMS {} was not asked for",
                        sums.request
                    )))
                }
            },
            other => return Err(SessionError::Unexpected(other.kind())),
        }
        if step.records > 0 {
            step.sequence_last = self.sequence_last;
        }
        Ok(())
    }

    /// Sends what the gateway asks of the tap. A request for a disk not
    /// attached here is dropped: its asker sees the answer channel close.
    async fn request<S: AsyncWrite>(
        &mut self,
        writer: &mut WriteHalf<S>,
        request: TapRequest,
    ) -> Result<(), SessionError> {
        let number_of = |attached: &HashMap<u32, ProtectedDisk>, name: &str| {
            attached
                .iter()
                .find(|(_, disk)| disk.name == name)
                .map(|(number, _)| *number)
        };
        match request {
            TapRequest::Barrier { id, done } => {
                let frame = Frame::Bookmark(wire::Bookmark {
                    group: 0,
                    sequence: id,
                    name: String::new(),
                });
                wire::write_frame(writer, &frame).await?;
                self.barriers_pending.insert(id, done);
            }
            TapRequest::Sums {
                disk,
                mut request,
                answer,
            } => {
                let Some(number) = number_of(&self.attached, &disk) else {
                    return Ok(());
                };
                request.group = 0;
                request.disk = number;
                wire::write_frame(writer, &Frame::SumRequest(request.clone())).await?;
                self.sums_pending.insert(request.request, answer);
            }
            TapRequest::Resync {
                disk,
                id,
                ranges,
                done,
            } => {
                let Some(number) = number_of(&self.attached, &disk) else {
                    return Ok(());
                };
                let frame = Frame::Resync(wire::Resync {
                    request: id,
                    disk: number,
                    ranges,
                });
                wire::write_frame(writer, &frame).await?;
                self.barriers_pending.insert(id, done);
            }
        }
        Ok(())
    }

    fn barriers_returned(&mut self, barriers: Vec<u64>) {
        for id in barriers {
            if let Some(done) = self.barriers_pending.remove(&id) {
                let _ = done.send(());
            }
        }
    }

    fn attach(&mut self, attach: &Attach) -> Result<(), SessionError> {
        let refuse = |reason: String| Err(SessionError::NotProtected(reason));
        let Some(disk) = self.ingest.disk(&attach.name) else {
            return refuse(format!("disk {} is not protected here", attach.name));
        };
        if disk.tap != self.tap {
            return refuse(format!(
                "disk {} is protected for tap {}, not {}",
                disk.name, disk.tap, self.tap
            ));
        }
        if disk.size_bytes != attach.size_bytes {
            return refuse(format!(
                "disk {} is {} bytes here but {} bytes at the tap (resize needs a resync)",
                disk.name, disk.size_bytes, attach.size_bytes
            ));
        }
        if let Some(problem) = self.ingest.group_problem(disk.group_id) {
            return Err(SessionError::Ingest(drgw_ingest::IngestError::Unusable {
                group: disk.group.clone(),
                problem,
            }));
        }
        if self.attached.values().any(|other| other.name == disk.name) {
            return refuse(format!(
                "disk {} is already attached on this connection",
                disk.name
            ));
        }
        tracing::info!(tap = %self.tap, disk = %disk.name, group = %disk.group, "disk attached");
        self.ingest.attached(&disk.name, 1);
        self.attached.insert(attach.disk, disk);
        Ok(())
    }

    /// The attached disk for a record, after checking its sequence and range.
    fn disk_for(
        &mut self,
        number: u32,
        sequence: u64,
        offset: u64,
        length: u64,
    ) -> Result<ProtectedDisk, SessionError> {
        let Some(disk) = self.attached.get(&number) else {
            return Err(SessionError::Protocol(format!(
                "disk number {number} is not attached"
            )));
        };
        if sequence <= self.sequence_last {
            return Err(SessionError::Protocol(format!(
                "sequence {sequence} does not follow {}",
                self.sequence_last
            )));
        }
        let end = offset.saturating_add(length);
        if end > disk.size_bytes {
            return Err(SessionError::Protocol(format!(
                "{}..{end} is past the end of disk {} ({} bytes)",
                offset, disk.name, disk.size_bytes
            )));
        }
        self.sequence_last = sequence;
        Ok(disk.clone())
    }
}

/// The data frames read in one go, grouped for staging.
#[derive(Default)]
struct Step {
    batches: Vec<StageBatch>,
    records: u64,
    bytes: usize,
    sequence_last: u64,
    /// Barriers the tap sent back in this step (after its records).
    barriers: Vec<u64>,
}

impl Step {
    fn push(&mut self, disk: &ProtectedDisk, body: RecordBody, bytes: usize) {
        let index = match self
            .batches
            .iter()
            .position(|batch| batch.group_id == disk.group_id)
        {
            Some(index) => index,
            None => {
                self.batches.push(StageBatch {
                    group_id: disk.group_id,
                    group: disk.group.clone(),
                    bodies: Vec::new(),
                    per_disk: Vec::new(),
                });
                self.batches.len() - 1
            }
        };
        let batch = &mut self.batches[index];
        batch.bodies.push(body);
        match batch
            .per_disk
            .iter_mut()
            .find(|(name, _, _)| *name == disk.name)
        {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += bytes as u64;
            }
            None => batch.per_disk.push((disk.name.clone(), 1, bytes as u64)),
        }
        self.records += 1;
        self.bytes += bytes;
    }

    fn into_future(self, ingest: Arc<Ingest>) -> Option<Staging> {
        if self.records == 0 {
            return None;
        }
        let sequence = self.sequence_last;
        let barriers = self.barriers;
        Some(Box::pin(async move {
            ingest
                .stage(self.batches)
                .await
                .map_err(SessionError::Ingest)?;
            Ok((sequence, barriers))
        }))
    }
}
