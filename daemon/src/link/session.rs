//! One authenticated connection to a pinned peer: HELLO, then heartbeats in
//! both directions until either side leaves, times out, or misbehaves.
//!
//! The reader runs in its own task (reading a frame is not cancel-safe) and
//! hands frames over a small bounded channel; the session loop owns the
//! writer, so every frame it sends is whole.

use super::hello;
use super::liveness::Liveness;
use super::registry::{Direction, SessionInfo};
use crate::appliance::Appliance;
use drgw_tls::{PeerKind, PinnedPeer};
use drgw_wire::{self as wire, ErrorCode, ErrorFrame, Frame, ReadError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long the HELLO exchange may take once TLS is up.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames read ahead of the session loop.
const INBOX_FRAMES_MAX: usize = 16;
/// Frames the transceiver queues for the session loop to send.
const OUTBOX_FRAMES_MAX: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error("sending a frame: {0}")]
    Write(#[from] wire::WriteError),
    #[error("peer closed the connection")]
    Closed,
    #[error("no HELLO within {} s", HELLO_TIMEOUT.as_secs())]
    HelloTimeout,
    #[error("expected HELLO, got {0}")]
    NotHello(wire::FrameKind),
    #[error(
        "no common protocol version: peer speaks {min}..={max}, we speak {}..={}",
        wire::PROTOCOL_VERSION_MIN,
        wire::PROTOCOL_VERSION_MAX
    )]
    NoCommonVersion { min: u16, max: u16 },
    #[error("peer answered HELLO with version {0}, which we did not offer")]
    BadAnswer(u16),
    #[error("peer claims role {claimed:?} but is paired as a {pinned}")]
    RoleMismatch {
        claimed: wire::Role,
        pinned: &'static str,
    },
    #[error("peer sent ERROR {code:?}: {message}")]
    PeerError { code: ErrorCode, message: String },
    #[error("peer silent for {silent_ms} ms (timeout {timeout_ms} ms)")]
    Silent { silent_ms: u128, timeout_ms: u128 },
    #[error("peer sent {0}, which this link does not accept")]
    Unexpected(wire::FrameKind),
    #[error("{0}")]
    NotProtected(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("{0}")]
    Ingest(drgw_ingest::IngestError),
    #[error("target: {0}")]
    Target(String),
}

/// Who is on the other end and how we got there.
pub struct SessionContext {
    pub appliance: Arc<Appliance>,
    pub peer: PinnedPeer,
    pub direction: Direction,
    pub remote_address: String,
    /// Cancelled at shutdown, when the peer is unpaired, or when a newer
    /// session for the same peer replaces this one.
    pub cancel: CancellationToken,
}

/// Runs a session to its end. `Ok` means an orderly end (shutdown, replaced,
/// unpaired); `Err` says why the link broke.
pub async fn run<S>(stream: S, context: SessionContext) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (reader, mut writer) = tokio::io::split(stream);
    let max_frame_bytes = context.appliance.max_frame_bytes;
    let (inbox_sender, mut inbox) = mpsc::channel(INBOX_FRAMES_MAX);
    let reader_task = tokio::spawn(read_loop(reader, max_frame_bytes, inbox_sender));
    let result = async {
        let version = exchange_hello(&mut writer, &mut inbox, &context).await?;
        let info = SessionInfo {
            direction: context.direction,
            remote_address: context.remote_address.clone(),
            remote_appliance_id: version.1,
            remote_name: version.2,
            protocol_version: version.0,
        };
        session_loop(&mut writer, &mut inbox, &context, info).await
    }
    .await;
    reader_task.abort();
    finish(&mut writer, &result).await;
    result
}

/// Tells the peer why we are leaving, when the connection can still carry
/// it, then closes TLS cleanly.
async fn finish<S: AsyncWrite>(writer: &mut WriteHalf<S>, result: &Result<(), SessionError>) {
    let reply = match result {
        Ok(()) => Some((
            ErrorCode::ShuttingDown,
            "link closed by this side".to_string(),
        )),
        Err(SessionError::Read(error)) => error.error_code().map(|code| (code, error.to_string())),
        Err(SessionError::NoCommonVersion { .. }) => {
            Some((ErrorCode::UnsupportedVersion, result_text(result)))
        }
        Err(SessionError::Unexpected(_)) | Err(SessionError::NotHello(_)) => {
            Some((ErrorCode::UnexpectedFrame, result_text(result)))
        }
        Err(SessionError::RoleMismatch { .. }) => Some((ErrorCode::NotPaired, result_text(result))),
        Err(SessionError::NotProtected(_)) => Some((ErrorCode::NotProtected, result_text(result))),
        Err(SessionError::Protocol(_)) => Some((ErrorCode::UnexpectedFrame, result_text(result))),
        Err(SessionError::Ingest(_)) | Err(SessionError::Target(_)) => {
            Some((ErrorCode::Internal, result_text(result)))
        }
        Err(_) => None,
    };
    if let Some((code, message)) = reply {
        let frame = Frame::Error(ErrorFrame {
            code,
            message: truncate(message, wire::ERROR_MESSAGE_BYTES_MAX),
        });
        let _ =
            tokio::time::timeout(Duration::from_secs(2), wire::write_frame(writer, &frame)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), writer.shutdown()).await;
}

fn result_text(result: &Result<(), SessionError>) -> String {
    match result {
        Ok(()) => String::new(),
        Err(error) => error.to_string(),
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

async fn read_loop<S: AsyncRead>(
    mut reader: ReadHalf<S>,
    max_frame_bytes: u32,
    inbox: mpsc::Sender<Result<Frame, SessionError>>,
) {
    loop {
        let item = match wire::read_frame(&mut reader, max_frame_bytes).await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(SessionError::Closed),
            Err(error) => Err(SessionError::Read(error)),
        };
        let stop = item.is_err();
        if inbox.send(item).await.is_err() || stop {
            return;
        }
    }
}

pub(super) type Inbox = mpsc::Receiver<Result<Frame, SessionError>>;

pub(super) async fn next_frame(inbox: &mut Inbox) -> Result<Frame, SessionError> {
    match inbox.recv().await {
        Some(Ok(Frame::Error(error))) => Err(SessionError::PeerError {
            code: error.code,
            message: error.message,
        }),
        Some(item) => item,
        None => Err(SessionError::Closed),
    }
}

/// Dialer sends its range first; the listener answers with the chosen
/// version. Returns (version, remote appliance id, remote name).
async fn exchange_hello<S: AsyncWrite>(
    writer: &mut WriteHalf<S>,
    inbox: &mut Inbox,
    context: &SessionContext,
) -> Result<(u16, String, String), SessionError> {
    let appliance = &context.appliance;
    if context.direction == Direction::Outbound {
        wire::write_frame(writer, &Frame::Hello(hello::offer(appliance))).await?;
    }
    let received = tokio::time::timeout(HELLO_TIMEOUT, next_frame(inbox))
        .await
        .map_err(|_| SessionError::HelloTimeout)??;
    let Frame::Hello(theirs) = received else {
        return Err(SessionError::NotHello(received.kind()));
    };
    if !hello::role_matches(context.peer.kind, theirs.role) {
        return Err(SessionError::RoleMismatch {
            claimed: theirs.role,
            pinned: context.peer.kind.as_str(),
        });
    }
    let version = match context.direction {
        Direction::Inbound => {
            let version = theirs.negotiate().ok_or(SessionError::NoCommonVersion {
                min: theirs.version_min,
                max: theirs.version_max,
            })?;
            wire::write_frame(writer, &Frame::Hello(hello::answer(appliance, version))).await?;
            version
        }
        Direction::Outbound => {
            let version = theirs.version_min;
            let offered = wire::PROTOCOL_VERSION_MIN..=wire::PROTOCOL_VERSION_MAX;
            if theirs.version_max != version || !offered.contains(&version) {
                return Err(SessionError::BadAnswer(version));
            }
            version
        }
    };
    let remote_id = uuid::Uuid::from_bytes(theirs.appliance_id).to_string();
    Ok((version, remote_id, theirs.name))
}

/// A link between appliances: heartbeats, and replication in both
/// directions. This side ships the groups it protects for the peer (the
/// transceiver, `ship`), and receives the groups the peer protects for it
/// (`target`): GROUP and BATCH in, ACK out.
async fn appliance_loop<S: AsyncWrite>(
    writer: &mut WriteHalf<S>,
    inbox: &mut Inbox,
    context: &SessionContext,
    liveness: &mut Liveness,
) -> Result<(), SessionError> {
    let appliance = &context.appliance;
    let peer = &context.peer.name;
    let (outbox, mut outgoing) = mpsc::channel::<Frame>(OUTBOX_FRAMES_MAX);
    let shipping = context.cancel.child_token();
    let _stop_shipping = shipping.clone().drop_guard();
    let replies = outbox.clone();
    let source =
        crate::ship::SourceSide::start(appliance.clone(), peer.clone(), outbox, shipping.clone());
    let (calls_number, mut calls) = appliance.calls.register(peer);
    let _unregister = CallsGuard {
        calls: &appliance.calls,
        peer,
        number: calls_number,
    };
    let mut sums_pending: HashMap<u64, tokio::sync::oneshot::Sender<wire::Sums>> = HashMap::new();
    let mut reprotect_pending: HashMap<u64, tokio::sync::oneshot::Sender<wire::Reprotected>> =
        HashMap::new();
    let mut failback_pending: HashMap<u64, tokio::sync::oneshot::Sender<wire::FailedBack>> =
        HashMap::new();
    loop {
        tokio::select! {
            _ = context.cancel.cancelled() => return Ok(()),
            due = liveness.due() => if due.is_some() {
                let beat = liveness.heartbeat()?;
                wire::write_frame(writer, &Frame::Heartbeat(beat)).await?;
            },
            frame = outgoing.recv() => if let Some(frame) = frame {
                wire::write_frame(writer, &frame).await?;
            },
            call = calls.recv() => match call {
                Some(crate::link::PeerCall::Sums { request, answer }) => {
                    wire::write_frame(writer, &Frame::SumRequest(request.clone())).await?;
                    sums_pending.insert(request.request, answer);
                }
                Some(crate::link::PeerCall::Reprotect { request, answer }) => {
                    wire::write_frame(writer, &Frame::Reprotect(request.clone())).await?;
                    reprotect_pending.insert(request.request, answer);
                }
                Some(crate::link::PeerCall::Failback { request, answer }) => {
                    wire::write_frame(writer, &Frame::Failback(request.clone())).await?;
                    failback_pending.insert(request.request, answer);
                }
                None => {}
            },
            frame = next_frame(inbox) => match frame? {
                Frame::Heartbeat(beat) => {
                    let round_trip_us = liveness.received(&beat);
                    appliance.links.heartbeat_received(peer, round_trip_us);
                }
                Frame::Ack(ack) => {
                    liveness.seen();
                    if !source.ack(ack.group, ack.sequence_durable) {
                        tracing::debug!(peer = %peer, group = ack.group, "ACK for a group not shipping here");
                    }
                }
                Frame::Group(info) => {
                    liveness.seen();
                    let group = info.group;
                    // A group this appliance replicates to that peer itself is
                    // never also taken from it (split brain: both sites would
                    // be primaries). Reprotect and failback turn it around.
                    let own = appliance
                        .ingest
                        .disks()
                        .into_iter()
                        .any(|d| d.group == info.name && d.peer.as_deref() == Some(peer));
                    // A group whose journal here is unusable is refused alone.
                    let announced = if own {
                        Err(drgw_replica::TargetError::Held(format!(
                            "this appliance replicates group {} to {peer} itself",
                            info.name
                        )))
                    } else {
                        appliance.targets.announce(peer, info).await
                    };
                    let sequence_durable = match announced {
                        Ok(target) => target.received_through(),
                        Err(error) => {
                            tracing::warn!(peer = %peer, group, %error, "group refused");
                            wire::GROUP_REFUSED
                        }
                    };
                    let ack = wire::Ack { group, sequence_durable };
                    wire::write_frame(writer, &Frame::Ack(ack)).await?;
                }
                Frame::Batch(batch) => {
                    liveness.seen();
                    let group = batch.group;
                    let target = appliance.targets.get(peer, group).ok_or_else(|| {
                        SessionError::Protocol(format!("BATCH for group {group} before its GROUP"))
                    })?;
                    let durable = match target.receive(batch).await {
                        Ok(durable) => durable,
                        // Failed over here: refused alone, the link goes on.
                        Err(drgw_replica::TargetError::Held(reason)) => {
                            tracing::info!(peer = %peer, group, %reason, "batch refused");
                            wire::GROUP_REFUSED
                        }
                        Err(error) => return Err(SessionError::Target(error.to_string())),
                    };
                    let ack = wire::Ack { group, sequence_durable: durable };
                    wire::write_frame(writer, &Frame::Ack(ack)).await?;
                }
                Frame::SumRequest(request) => {
                    liveness.seen();
                    answer_sums(appliance, peer, request, replies.clone());
                }
                Frame::Sums(sums) => {
                    liveness.seen();
                    let answer = sums_pending.remove(&sums.request).ok_or_else(|| {
                        SessionError::Protocol(format!("SUMS {} was not asked for", sums.request))
                    })?;
                    let _ = answer.send(sums);
                }
                Frame::Reprotect(request) => {
                    liveness.seen();
                    let appliance = appliance.clone();
                    let peer = peer.to_string();
                    let replies = replies.clone();
                    tokio::spawn(async move {
                        let answer = crate::reprotect::accept(&appliance, &peer, request).await;
                        let _ = replies.send(Frame::Reprotected(answer)).await;
                    });
                }
                Frame::Failback(request) => {
                    liveness.seen();
                    let appliance = appliance.clone();
                    let peer = peer.to_string();
                    let replies = replies.clone();
                    tokio::spawn(async move {
                        let answer =
                            crate::reprotect::answer_failback(&appliance, &peer, request).await;
                        let _ = replies.send(Frame::FailedBack(answer)).await;
                    });
                }
                Frame::FailedBack(answer) => {
                    liveness.seen();
                    let waiting = failback_pending.remove(&answer.request).ok_or_else(|| {
                        SessionError::Protocol(format!(
                            "FAILED_BACK {} was not asked for",
                            answer.request
                        ))
                    })?;
                    let _ = waiting.send(answer);
                }
                Frame::Reprotected(answer) => {
                    liveness.seen();
                    let waiting = reprotect_pending.remove(&answer.request).ok_or_else(|| {
                        SessionError::Protocol(format!(
                            "REPROTECTED {} was not asked for",
                            answer.request
                        ))
                    })?;
                    let _ = waiting.send(answer);
                }
                other => return Err(SessionError::Unexpected(other.kind())),
            },
        }
    }
}

struct CallsGuard<'a> {
    calls: &'a crate::link::PeerCalls,
    peer: &'a str,
    number: u64,
}

impl Drop for CallsGuard<'_> {
    fn drop(&mut self) {
        self.calls.unregister(self.peer, self.number);
    }
}

/// Sums a replica for the peer's resync, off the session task, and sends
/// the answer (or why there is none) through `replies`.
fn answer_sums(
    appliance: &Arc<crate::appliance::Appliance>,
    peer: &str,
    request: wire::SumRequest,
    replies: mpsc::Sender<Frame>,
) {
    let target = appliance.targets.get(peer, request.group);
    let group = request.group;
    tokio::spawn(async move {
        let id = request.request;
        let result = match target {
            None => Err(format!("no group {group} from this peer here")),
            Some(target) => tokio::task::spawn_blocking(move || target.sums(&request))
                .await
                .unwrap_or_else(|e| Err(format!("summing failed: {e}"))),
        };
        let answer = match result {
            Ok(sums) => wire::Sums {
                request: id,
                error: String::new(),
                sums,
            },
            Err(error) => wire::Sums {
                request: id,
                error: truncate(error, wire::ERROR_MESSAGE_BYTES_MAX),
                sums: Vec::new(),
            },
        };
        let _ = replies.send(Frame::Sums(answer)).await;
    });
}

async fn session_loop<S: AsyncWrite>(
    writer: &mut WriteHalf<S>,
    inbox: &mut Inbox,
    context: &SessionContext,
    info: SessionInfo,
) -> Result<(), SessionError> {
    let appliance = &context.appliance;
    let name = &context.peer.name;
    tracing::info!(peer = %name, direction = ?info.direction, remote = %info.remote_address,
        remote_name = %info.remote_name, version = info.protocol_version, "link up");
    let number = appliance
        .links
        .session_started(name, info, context.cancel.clone());
    let mut liveness = Liveness::new(appliance.settings.subscribe());
    let result = match context.peer.kind {
        PeerKind::Appliance => appliance_loop(writer, inbox, context, &mut liveness).await,
        PeerKind::Tap => super::tap_session::run(writer, inbox, context, &mut liveness).await,
    };
    let reason = result.as_ref().err().map(|error| error.to_string());
    match &reason {
        Some(reason) => tracing::warn!(peer = %name, %reason, "link down"),
        None => tracing::info!(peer = %name, "link closed"),
    }
    appliance.links.session_ended(name, number, reason);
    result
}
