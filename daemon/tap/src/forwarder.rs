//! The tap's link to its source gateway: a bounded queue of forwards (by
//! bytes, counting those in flight), one TLS connection that carries them as
//! WRITE/FLUSH/TRIM frames and receives the gateway's ACKs, and the resync
//! pass that re-reads lost grains from the primary after every (re)connect.
//!
//! Nothing waits on the gateway in async mode: a forward that does not fit
//! (no link, queue full) is dropped and its grains are marked lost; they stay
//! dirty and the resync pass sends them again.

use super::disk::TapDisk;
use super::mirror::MirrorDisk;
use drgw_nbd::BlockBackend;
use drgw_tls::{self as tls, Backoff, Fingerprint, Identity};
use drgw_wire::{self as wire, Attach, Flush, Frame, Hello, Role, Trim, WriteBatch, WriteRecord};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// Short, so that a gateway with a small `peer_timeout_ms` never takes an
/// idle tap for a silent one; 32 bytes a frame.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
const PEER_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Bookkeeping bytes counted per queued item besides its data.
const ITEM_OVERHEAD_BYTES: usize = 64;
/// How long a bookmark barrier waits for lost grains to be resynchronised.
const BARRIER_WAIT_MAX: Duration = Duration::from_secs(30);

pub enum Payload {
    Write {
        offset: u64,
        data: bytes::Bytes,
    },
    Trim {
        offset: u64,
        length: u64,
    },
    Flush,
    /// A bookmark barrier the gateway asked for: sent back (as BOOKMARK) in
    /// order after everything queued before it.
    Barrier {
        id: u64,
    },
    /// The disk's stream stops (`done` false) or starts again (`done` true)
    /// being a prefix of its writes: grains were lost and are being sent
    /// again (RESYNC_MARK).
    Marker {
        done: bool,
    },
}

pub struct Item {
    pub disk: u32,
    pub payload: Payload,
    /// Told `true` when the gateway acknowledged, `false` if it never will.
    pub waiter: Option<oneshot::Sender<bool>>,
}

impl Item {
    fn range(&self) -> (u64, u64) {
        match &self.payload {
            Payload::Write { offset, data } => (*offset, data.len() as u64),
            Payload::Trim { offset, length } => (*offset, *length),
            Payload::Flush | Payload::Barrier { .. } | Payload::Marker { .. } => (0, 0),
        }
    }

    fn bytes(&self) -> usize {
        ITEM_OVERHEAD_BYTES
            + match &self.payload {
                Payload::Write { data, .. } => data.len(),
                _ => 0,
            }
    }
}

struct InFlight {
    sequence: u64,
    disk: u32,
    range: (u64, u64),
    bytes: usize,
    waiter: Option<oneshot::Sender<bool>>,
}

struct Queue {
    items: VecDeque<Item>,
    /// Queued plus in flight.
    bytes: usize,
    connected: bool,
    /// Per disk: a start marker was queued and not its done.
    marker_open: Vec<bool>,
}

#[derive(Debug, Default)]
pub struct ForwarderCounters {
    pub forwarded_records: AtomicU64,
    pub acknowledged_records: AtomicU64,
    pub dropped_records: AtomicU64,
    pub resynced_bytes: AtomicU64,
    /// RESYNC requests of the gateway carried out (checksum resync).
    pub resync_requests: AtomicU64,
    pub connections: AtomicU64,
    /// Sessions that got through HELLO and every ATTACH.
    pub attached_sessions: AtomicU64,
}

pub struct GatewayTarget {
    pub address: String,
    pub fingerprint: Fingerprint,
    pub tap_name: String,
}

pub struct Forwarder {
    disks: Vec<Arc<TapDisk>>,
    /// Mirror-target disks (no primary, no tracker): numbered after
    /// `disks`, so a number past `disks` has no tracker to settle.
    mirrors: Vec<Arc<MirrorDisk>>,
    queue: Mutex<Queue>,
    more: Notify,
    room: Notify,
    /// Something was lost: the resync pass has work.
    lost: Notify,
    bytes_max: usize,
    batch_bytes_max: usize,
    pub counters: ForwarderCounters,
}

impl Forwarder {
    pub fn new(disks: Vec<Arc<TapDisk>>, bytes_max: usize, batch_bytes_max: usize) -> Forwarder {
        Forwarder {
            mirrors: Vec::new(),
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                connected: false,
                // Unknown at start (a tap before this one may have left one
                // open at the gateway): the first connect settles it.
                marker_open: vec![true; disks.len()],
            }),
            disks,
            more: Notify::new(),
            room: Notify::new(),
            lost: Notify::new(),
            bytes_max,
            batch_bytes_max,
            counters: ForwarderCounters::default(),
        }
    }

    pub fn disks(&self) -> &[Arc<TapDisk>] {
        &self.disks
    }

    /// Adds mirror-target disks, numbered `disks().len()..` on the link.
    pub fn with_mirrors(mut self, mirrors: Vec<Arc<MirrorDisk>>) -> Forwarder {
        self.mirrors = mirrors;
        self
    }

    pub fn mirrors(&self) -> &[Arc<MirrorDisk>] {
        &self.mirrors
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn connected(&self) -> bool {
        self.queue().connected
    }

    /// Bytes queued or in flight, not yet acknowledged.
    pub fn pending_bytes(&self) -> usize {
        self.queue().bytes
    }

    /// Queues `item` when the link is up and it fits; hands it back if not.
    /// The caller has already counted it in the disk's tracker (`queued`).
    pub fn offer(&self, item: Item) -> Result<(), Item> {
        let mut queue = self.queue();
        if !queue.connected || queue.bytes + item.bytes() > self.bytes_max {
            self.counters
                .dropped_records
                .fetch_add(1, Ordering::Relaxed);
            self.lost.notify_one();
            return Err(item);
        }
        queue.bytes += item.bytes();
        queue.items.push_back(item);
        drop(queue);
        self.more.notify_one();
        Ok(())
    }

    /// Queues `item`, waiting for room; hands it back if the link goes down.
    pub async fn push_waiting(&self, item: Item) -> Result<(), Item> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut queue = self.queue();
                if !queue.connected {
                    return Err(item);
                }
                if queue.bytes + item.bytes() <= self.bytes_max || queue.bytes == 0 {
                    queue.bytes += item.bytes();
                    queue.items.push_back(item);
                    drop(queue);
                    self.more.notify_one();
                    return Ok(());
                }
            }
            room.await;
        }
    }

    fn release(&self, bytes: usize) {
        let mut queue = self.queue();
        queue.bytes -= bytes;
        drop(queue);
        self.room.notify_waiters();
    }

    /// Queues a marker for `disk` (outside the byte limit: it is tiny and
    /// must not wait behind data). The queue lock is held.
    fn push_marker(&self, queue: &mut Queue, disk: usize, done: bool) {
        let item = Item {
            disk: disk as u32,
            payload: Payload::Marker { done },
            waiter: None,
        };
        queue.bytes += item.bytes();
        queue.items.push_back(item);
        queue.marker_open[disk] = !done;
    }

    /// Grains of `disk` were just counted lost (in its tracker) while the
    /// link may be up: from here its stream is not a prefix of its writes
    /// until they are sent again, so a start marker goes first. (With the
    /// link down, `set_connected` does it at the next connect.)
    pub fn note_loss(&self, disk: u32) {
        let disk = disk as usize;
        if disk >= self.disks.len() {
            return;
        }
        let mut queue = self.queue();
        if queue.connected && !queue.marker_open[disk] {
            self.push_marker(&mut queue, disk, false);
            drop(queue);
            self.more.notify_one();
        }
    }

    /// Ends the markers of disks with nothing lost any more (after a
    /// resync pass queued their grains), in the stream after them.
    fn close_markers(&self) {
        let mut queue = self.queue();
        if !queue.connected {
            return;
        }
        let mut closed = false;
        for (number, disk) in self.disks.iter().enumerate() {
            // Checked under the queue lock: a loss counted after this is
            // followed by its own start marker (`note_loss`).
            if queue.marker_open[number] && disk.tracker.lost_ranges(1).is_empty() {
                self.push_marker(&mut queue, number, true);
                closed = true;
            }
        }
        drop(queue);
        if closed {
            self.more.notify_one();
        }
    }

    /// A forward will never be acknowledged: its grains are lost.
    fn lose(
        &self,
        disk: u32,
        range: (u64, u64),
        bytes: usize,
        waiter: Option<oneshot::Sender<bool>>,
    ) {
        if let Some(disk) = self.disks.get(disk as usize) {
            disk.tracker.lost(range.0, range.1);
        }
        if let Some(waiter) = waiter {
            let _ = waiter.send(false);
        }
        self.release(bytes);
        self.lost.notify_one();
    }

    fn set_connected(&self, connected: bool) {
        let drained: Vec<Item> = {
            let mut queue = self.queue();
            queue.connected = connected;
            if connected {
                // First in the new stream, per disk: a start marker if grains
                // are lost (sent again by the resync pass), else a done if
                // one may still be open at the gateway.
                for (number, disk) in self.disks.iter().enumerate() {
                    let lost = !disk.tracker.lost_ranges(1).is_empty();
                    if lost || queue.marker_open[number] {
                        self.push_marker(&mut queue, number, !lost);
                    }
                }
                Vec::new()
            } else {
                queue.items.drain(..).collect()
            }
        };
        for item in drained {
            let bytes = item.bytes();
            let range = item.range();
            self.lose(item.disk, range, bytes, item.waiter);
        }
        if connected {
            self.more.notify_one();
        }
        self.room.notify_waiters();
    }

    /// Keeps the link up until `cancel`, reconnecting with backoff.
    pub async fn run(
        self: Arc<Self>,
        target: GatewayTarget,
        identity: Arc<Identity>,
        cancel: CancellationToken,
    ) {
        let mut backoff = Backoff::new(BACKOFF_MIN);
        let mut last_error = String::new();
        while !cancel.is_cancelled() {
            let connections_before = self.counters.attached_sessions.load(Ordering::Relaxed);
            let result = self.connect_and_serve(&target, &identity, &cancel).await;
            self.set_connected(false);
            if self.counters.attached_sessions.load(Ordering::Relaxed) != connections_before {
                backoff.reset(); // it worked: the next cut starts from the shortest wait
            }
            match result {
                Ok(()) => return,
                Err(error) => {
                    let text = error.to_string();
                    if text != last_error {
                        tracing::warn!(gateway = %target.address, reason = %text, "link to gateway down; retrying");
                        last_error = text;
                    }
                }
            }
            let wait = backoff.next_wait(BACKOFF_MAX);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn connect_and_serve(
        self: &Arc<Self>,
        target: &GatewayTarget,
        identity: &Identity,
        cancel: &CancellationToken,
    ) -> Result<(), TapLinkError> {
        let (stream, _) = tls::dial(&target.address, identity, target.fingerprint).await?;
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        self.serve(stream, target, cancel).await
    }

    async fn serve<S>(
        self: &Arc<Self>,
        stream: S,
        target: &GatewayTarget,
        cancel: &CancellationToken,
    ) -> Result<(), TapLinkError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (reader, mut writer) = tokio::io::split(stream);
        let (inbox_sender, mut inbox) = mpsc::channel(16);
        let reader_task = tokio::spawn(read_loop(reader, inbox_sender));
        let result = async {
            self.handshake(&mut writer, &mut inbox, target).await?;
            self.counters.attached_sessions.fetch_add(1, Ordering::Relaxed);
            self.set_connected(true);
            tracing::info!(gateway = %target.address, disks = self.disks.len() + self.mirrors.len(), "linked to gateway; disks attached");
            let resync_cancel = cancel.child_token();
            let resync = tokio::spawn(self.clone().resync(resync_cancel.clone()));
            let result = self.stream(&mut writer, &mut inbox, cancel).await;
            resync_cancel.cancel();
            let _ = resync.await;
            result
        }
        .await;
        reader_task.abort();
        let _ = writer.shutdown().await;
        result
    }

    async fn handshake<S: AsyncWrite>(
        &self,
        writer: &mut WriteHalf<S>,
        inbox: &mut Inbox,
        target: &GatewayTarget,
    ) -> Result<(), TapLinkError> {
        let hello = Hello {
            version_min: wire::PROTOCOL_VERSION_MIN,
            version_max: wire::PROTOCOL_VERSION_MAX,
            role: Role::Tap,
            appliance_id: [0; 16],
            name: target.tap_name.clone(),
            software: format!("drgw {}", env!("CARGO_PKG_VERSION")),
        };
        wire::write_frame(writer, &Frame::Hello(hello)).await?;
        match expect_control(inbox).await? {
            Frame::Hello(_) => {}
            other => {
                return Err(TapLinkError::Protocol(format!(
                    "expected HELLO, got {}",
                    other.kind()
                )))
            }
        }
        // Protected disks first, then mirror targets, numbered in that order.
        let disks = self.disks.iter().map(|d| (&d.name, d.size_bytes));
        let mirrors = self.mirrors.iter().map(|m| (&m.name, m.size_bytes));
        for (number, (name, size_bytes)) in disks.chain(mirrors).enumerate() {
            let attach = Attach {
                disk: number as u32,
                size_bytes,
                name: name.clone(),
            };
            wire::write_frame(writer, &Frame::Attach(attach.clone())).await?;
            match expect_control(inbox).await? {
                Frame::Attach(answer) if answer == attach => {}
                other => {
                    return Err(TapLinkError::Protocol(format!(
                        "expected ATTACH of {name}, got {}",
                        other.kind()
                    )))
                }
            }
        }
        Ok(())
    }

    /// Sends queued forwards and settles them as ACKs arrive.
    async fn stream<S: AsyncWrite>(
        self: &Arc<Self>,
        writer: &mut WriteHalf<S>,
        inbox: &mut Inbox,
        cancel: &CancellationToken,
    ) -> Result<(), TapLinkError> {
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut sequence_next = 1u64;
        let (replies, mut replies_out) = mpsc::unbounded_channel::<Frame>();
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        let mut last_seen = Instant::now();
        let result = loop {
            tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() > PEER_TIMEOUT {
                        break Err(TapLinkError::Silent);
                    }
                    let beat = wire::Heartbeat { sent_unix_ns: drgw_io::clock::unix_nanos(), echo_unix_ns: 0 };
                    if let Err(error) = wire::write_frame(writer, &Frame::Heartbeat(beat)).await {
                        break Err(error.into());
                    }
                }
                frame = expect(inbox) => {
                    last_seen = Instant::now();
                    match frame {
                        Ok(Frame::Ack(ack)) => self.settle(&mut in_flight, ack.sequence_durable),
                        Ok(Frame::Heartbeat(_)) => {}
                        Ok(Frame::Bookmark(request)) => {
                            tokio::spawn(self.clone().barrier(request.sequence));
                        }
                        Ok(Frame::SumRequest(request)) => {
                            tokio::spawn(self.clone().answer_sums(request, replies.clone()));
                        }
                        Ok(Frame::Resync(resync)) => {
                            tokio::spawn(self.clone().resync_ranges(resync, cancel.clone()));
                        }
                        Ok(other) => break Err(TapLinkError::Protocol(format!("unexpected {}", other.kind()))),
                        Err(error) => break Err(error),
                    }
                }
                reply = replies_out.recv() => if let Some(reply) = reply {
                    if let Err(error) = wire::write_frame(writer, &reply).await {
                        break Err(error.into());
                    }
                },
                _ = self.wait_for_items() => {
                    let items = self.take_batch();
                    if let Err(error) = self.send(writer, items, &mut in_flight, &mut sequence_next).await {
                        break Err(error);
                    }
                }
            }
        };
        for entry in in_flight {
            self.lose(entry.disk, entry.range, entry.bytes, entry.waiter);
        }
        result
    }

    /// Answers a SUM_REQUEST with the block sums of a primary disk (read
    /// without the range lock: a block written meanwhile is in the stream
    /// anyway, whatever its sum says).
    async fn answer_sums(
        self: Arc<Self>,
        request: wire::SumRequest,
        replies: mpsc::UnboundedSender<Frame>,
    ) {
        let id = request.request;
        let number = request.disk as usize;
        let mirror = number
            .checked_sub(self.disks.len())
            .and_then(|index| self.mirrors.get(index));
        let result = match self.disks.get(number).cloned() {
            None => Err(match mirror {
                Some(mirror) => format!(
                    "{} is a mirror disk: it has no primary here to sum; restart the QEMU mirror job (sync: full) instead",
                    mirror.name
                ),
                None => format!("no disk {} on this tap", request.disk),
            }),
            Some(disk) if disk.size_bytes != request.disk_bytes => Err(format!(
                "the primary of {} is {} bytes on this tap, the gateway says {}: restart the tap once the primary has its new size",
                disk.name, disk.size_bytes, request.disk_bytes
            )),
            Some(disk) => tokio::task::spawn_blocking(move || {
                let (file, direct) = disk.primary.sum_file();
                let source = drgw_sums::SumSource {
                    file,
                    direct,
                    size_bytes: disk.size_bytes,
                };
                drgw_sums::sums(&source, request.block_bytes, request.seed, &request.spans, || ())
                    .map_err(|e| format!("reading the primary of {}: {e}", disk.name))
            })
            .await
            .unwrap_or_else(|e| Err(format!("summing failed: {e}"))),
        };
        let answer = match result {
            Ok(sums) => wire::Sums {
                request: id,
                error: String::new(),
                sums,
            },
            Err(error) => {
                tracing::warn!(%error, "block sums refused");
                let mut error = error;
                while error.len() > wire::ERROR_MESSAGE_BYTES_MAX {
                    error.pop();
                }
                wire::Sums {
                    request: id,
                    error,
                    sums: Vec::new(),
                }
            }
        };
        let _ = replies.send(Frame::Sums(answer));
    }

    /// Forwards ranges the gateway found different from the target, read
    /// from the primary like a write (dirty map marked first, under the
    /// range lock), then a barrier: the gateway knows they are staged when
    /// it comes back. A range that cannot be forwarded is lost, so the
    /// normal resync sends its grains; the barrier then waits for that.
    async fn resync_ranges(self: Arc<Self>, resync: wire::Resync, cancel: CancellationToken) {
        let Some(disk) = self.disks.get(resync.disk as usize).cloned() else {
            tracing::warn!(
                disk = resync.disk,
                "RESYNC for a disk without a primary ignored"
            );
            return;
        };
        let chunk_max = self.batch_bytes_max.max(4096) as u64;
        // One durable dirty-map write for the frame, not one per range (a
        // 4 KiB block in a grain of its own, mostly: an fdatasync each was
        // most of a resync's time). Grains marked here that are then not
        // forwarded (the link went) are handed to the lost pass below.
        let ranges: Vec<(u64, u64)> = resync
            .ranges
            .iter()
            .map(|r| (r.offset, u64::from(r.length)))
            .collect();
        let (tracker, marking) = (disk.tracker.clone(), ranges.clone());
        // A failure here is met again, and handled, by each range's own mark.
        let _ = tokio::task::spawn_blocking(move || tracker.mark_ranges(&marking)).await;
        for (index, &(offset, length)) in ranges.iter().enumerate() {
            let end = offset + length;
            let mut position = offset;
            while position < end {
                if cancel.is_cancelled() {
                    disk.tracker.dropped(position, end - position);
                    for &(rest_offset, rest_length) in &ranges[index + 1..] {
                        disk.tracker.dropped(rest_offset, rest_length);
                    }
                    self.lost.notify_one();
                    return;
                }
                let piece = chunk_max.min(end - position);
                if !self
                    .forward_from_primary(resync.disk, &disk, position, piece)
                    .await
                {
                    self.lost.notify_one();
                }
                position += piece;
            }
        }
        self.counters
            .resync_requests
            .fetch_add(1, Ordering::Relaxed);
        self.barrier(resync.request).await;
    }

    /// One range of a requested resync; false when it was lost instead.
    async fn forward_from_primary(
        &self,
        number: u32,
        disk: &Arc<TapDisk>,
        offset: u64,
        length: u64,
    ) -> bool {
        disk.tracker.queued(offset, length, false);
        if !disk.tracker.is_durably_marked(offset, length) {
            let tracker = disk.tracker.clone();
            let marked = tokio::task::spawn_blocking(move || tracker.mark(offset, length)).await;
            if !matches!(marked, Ok(Ok(()))) {
                tracing::error!(disk = %disk.name, "resync cannot mark the dirty map");
                disk.tracker.lost(offset, length);
                self.note_loss(number);
                return false;
            }
        }
        let guard = disk.ranges.lock(offset, offset + length).await;
        let data = match disk.primary.read(offset, length as u32).await {
            Ok(data) => data,
            Err(error) => {
                tracing::error!(disk = %disk.name, %error, "resync cannot read the primary");
                disk.tracker.lost(offset, length);
                self.note_loss(number);
                return false;
            }
        };
        let item = Item {
            disk: number,
            payload: Payload::Write {
                offset,
                data: data.into(),
            },
            waiter: None,
        };
        let queued = self.push_waiting(item).await;
        drop(guard);
        match queued {
            Ok(()) => {
                self.counters
                    .resynced_bytes
                    .fetch_add(length, Ordering::Relaxed);
                true
            }
            Err(_) => {
                disk.tracker.lost(offset, length);
                self.note_loss(number);
                false
            }
        }
    }

    /// Queues a barrier once nothing acknowledged to a client is missing
    /// from the stream (lost grains resynchronised), so that the BOOKMARK it
    /// becomes follows every write acknowledged before the request.
    async fn barrier(self: Arc<Self>, id: u64) {
        let deadline = Instant::now() + BARRIER_WAIT_MAX;
        while self
            .disks
            .iter()
            .any(|disk| !disk.tracker.lost_ranges(1).is_empty())
        {
            if Instant::now() > deadline {
                tracing::warn!(
                    id,
                    "bookmark barrier: lost grains still resyncing; not confirmed"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let item = Item {
            disk: u32::MAX,
            payload: Payload::Barrier { id },
            waiter: None,
        };
        let mut queue = self.queue();
        if !queue.connected {
            return;
        }
        queue.bytes += item.bytes();
        queue.items.push_back(item);
        drop(queue);
        self.more.notify_one();
    }

    async fn wait_for_items(&self) {
        loop {
            let more = self.more.notified();
            tokio::pin!(more);
            more.as_mut().enable();
            if !self.queue().items.is_empty() {
                return;
            }
            more.await;
        }
    }

    fn take_batch(&self) -> Vec<Item> {
        let mut queue = self.queue();
        let mut items = Vec::new();
        let mut bytes = 0;
        while let Some(item) = queue.items.front() {
            if !items.is_empty() && bytes + item.bytes() > self.batch_bytes_max {
                break;
            }
            bytes += item.bytes();
            items.push(queue.items.pop_front().expect("front exists"));
        }
        items
    }

    /// Frames the items in order (runs of writes share a WRITE frame).
    async fn send<S: AsyncWrite>(
        &self,
        writer: &mut WriteHalf<S>,
        items: Vec<Item>,
        in_flight: &mut VecDeque<InFlight>,
        sequence_next: &mut u64,
    ) -> Result<(), TapLinkError> {
        let mut writes: Vec<WriteRecord> = Vec::new();
        let mut frames: Vec<Frame> = Vec::new();
        let sent = items.len() as u64;
        let mut barriers_bytes = 0;
        for item in items {
            if let Payload::Barrier { id } = item.payload {
                if !writes.is_empty() {
                    frames.push(Frame::Write(WriteBatch {
                        writes: std::mem::take(&mut writes),
                    }));
                }
                frames.push(Frame::Bookmark(wire::Bookmark {
                    group: 0,
                    sequence: id,
                    name: String::new(),
                }));
                barriers_bytes += item.bytes();
                continue;
            }
            let sequence = *sequence_next;
            *sequence_next += 1;
            in_flight.push_back(InFlight {
                sequence,
                disk: item.disk,
                range: item.range(),
                bytes: item.bytes(),
                waiter: item.waiter,
            });
            match item.payload {
                Payload::Write { offset, data } => writes.push(WriteRecord {
                    disk: item.disk,
                    sequence,
                    offset,
                    data,
                }),
                other => {
                    if !writes.is_empty() {
                        frames.push(Frame::Write(WriteBatch {
                            writes: std::mem::take(&mut writes),
                        }));
                    }
                    frames.push(match other {
                        Payload::Trim { offset, length } => Frame::Trim(Trim {
                            disk: item.disk,
                            sequence,
                            offset,
                            length,
                        }),
                        Payload::Marker { done } => Frame::ResyncMark(wire::ResyncMark {
                            disk: item.disk,
                            sequence,
                            done,
                        }),
                        _ => Frame::Flush(Flush {
                            disk: item.disk,
                            sequence,
                        }),
                    });
                }
            }
        }
        if !writes.is_empty() {
            frames.push(Frame::Write(WriteBatch { writes }));
        }
        for frame in &frames {
            wire::write_frame(writer, frame).await?;
        }
        if barriers_bytes > 0 {
            self.release(barriers_bytes);
        }
        self.counters
            .forwarded_records
            .fetch_add(sent, Ordering::Relaxed);
        Ok(())
    }

    fn settle(&self, in_flight: &mut VecDeque<InFlight>, through: u64) {
        while in_flight
            .front()
            .is_some_and(|entry| entry.sequence <= through)
        {
            let entry = in_flight.pop_front().expect("front exists");
            if let Some(disk) = self.disks.get(entry.disk as usize) {
                disk.tracker.acknowledged(entry.range.0, entry.range.1);
            }
            if let Some(waiter) = entry.waiter {
                let _ = waiter.send(true);
            }
            self.counters
                .acknowledged_records
                .fetch_add(1, Ordering::Relaxed);
            self.release(entry.bytes);
        }
    }

    /// Re-reads every lost grain from the primary and forwards it, under the
    /// disk's range lock so that live writes stay ordered around it; then
    /// waits for more to be lost, for as long as the link is up.
    async fn resync(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let lost = self.lost.notified();
            tokio::pin!(lost);
            lost.as_mut().enable();
            for (number, disk) in self.disks.iter().enumerate() {
                loop {
                    let ranges = disk.tracker.lost_ranges(256);
                    if ranges.is_empty() || cancel.is_cancelled() {
                        break;
                    }
                    let total: u64 = ranges.iter().map(|(_, length)| length).sum();
                    tracing::info!(disk = %disk.name, bytes = total, "resynchronising lost regions");
                    for (offset, length) in ranges {
                        if !self
                            .resync_range(number as u32, disk, offset, length, &cancel)
                            .await
                        {
                            return;
                        }
                    }
                }
            }
            self.close_markers();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = lost => {}
            }
        }
    }

    async fn resync_range(
        &self,
        number: u32,
        disk: &TapDisk,
        offset: u64,
        length: u64,
        cancel: &CancellationToken,
    ) -> bool {
        let grain = disk.tracker.grain_bytes();
        let chunk_max = (self.batch_bytes_max as u64 / grain).max(1) * grain;
        let mut position = offset;
        while position < offset + length {
            if cancel.is_cancelled() {
                return false;
            }
            let chunk = chunk_max.min(offset + length - position);
            let guard = disk.ranges.lock(position, position + chunk).await;
            let data = match disk.primary.read(position, chunk as u32).await {
                Ok(data) => data,
                Err(error) => {
                    tracing::error!(disk = %disk.name, %error, "resync cannot read the primary");
                    return false;
                }
            };
            disk.tracker.queued(position, chunk, true);
            let item = Item {
                disk: number,
                payload: Payload::Write {
                    offset: position,
                    data: data.into(),
                },
                waiter: None,
            };
            let queued = self.push_waiting(item).await;
            drop(guard);
            if let Err(item) = queued {
                let range = item.range();
                disk.tracker.lost(range.0, range.1);
                return false;
            }
            self.counters
                .resynced_bytes
                .fetch_add(chunk, Ordering::Relaxed);
            position += chunk;
        }
        true
    }
}

type Inbox = mpsc::Receiver<Result<Frame, TapLinkError>>;

async fn read_loop<R: AsyncRead>(
    mut reader: tokio::io::ReadHalf<R>,
    inbox: mpsc::Sender<Result<Frame, TapLinkError>>,
) {
    loop {
        let item = match wire::read_frame(&mut reader, wire::BODY_BYTES_DEFAULT).await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(TapLinkError::Closed),
            Err(error) => Err(TapLinkError::Read(error.to_string())),
        };
        let stop = item.is_err();
        if inbox.send(item).await.is_err() || stop {
            return;
        }
    }
}

/// The next frame that is not a HEARTBEAT (the gateway may send one at any
/// time, including in the middle of the handshake).
async fn expect_control(inbox: &mut Inbox) -> Result<Frame, TapLinkError> {
    loop {
        match expect(inbox).await? {
            Frame::Heartbeat(_) => continue,
            other => return Ok(other),
        }
    }
}

async fn expect(inbox: &mut Inbox) -> Result<Frame, TapLinkError> {
    match tokio::time::timeout(PEER_TIMEOUT, inbox.recv()).await {
        Err(_) => Err(TapLinkError::Silent),
        Ok(None) => Err(TapLinkError::Closed),
        Ok(Some(Ok(Frame::Error(error)))) => Err(TapLinkError::Refused(format!(
            "{}: {}",
            error.code, error.message
        ))),
        Ok(Some(item)) => item,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TapLinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Dial(#[from] tls::DialError),
    #[error("gateway refused: {0}")]
    Refused(String),
    #[error("reading from the gateway: {0}")]
    Read(String),
    #[error("sending to the gateway: {0}")]
    Write(#[from] wire::WriteError),
    #[error("gateway closed the connection")]
    Closed,
    #[error("gateway silent for {} s", PEER_TIMEOUT.as_secs())]
    Silent,
    #[error("protocol: {0}")]
    Protocol(String),
}
