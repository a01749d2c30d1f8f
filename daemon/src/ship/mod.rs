//! The transceiver: ships each protected group's staged records to the
//! group's target appliance over the link session, in BATCH frames, and
//! releases staging only when the target acknowledges them durable.
//!
//! Per group: GROUP (the target answers with the last sequence it holds:
//! resume after it), then batches of up to `BATCH_BYTES` of records read from
//! staging, at most `IN_FLIGHT_BYTES` unacknowledged. A link cut drops the
//! session; the next session starts again from the target's answer, so
//! nothing acknowledged is re-sent and nothing unacknowledged is lost.

use crate::appliance::Appliance;
use drgw_catalog::ProtectedDisk;
use drgw_staging::StagingLog;
use drgw_wire::{Frame, GroupDisk, GroupInfo};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Payload bytes of records per batch (before compression).
const BATCH_BYTES: usize = 4 << 20;
/// Unacknowledged batch payload (compressed) on the link.
const IN_FLIGHT_BYTES: usize = 8 << 20;
/// How often an idle group looks for new records.
const IDLE_POLL: Duration = Duration::from_millis(20);
/// A group the target refused is offered again after this.
const REFUSED_RETRY: Duration = Duration::from_secs(30);
/// How long the target may take to answer GROUP or a batch.
const ACK_TIMEOUT: Duration = Duration::from_secs(120);

/// Live shipping figures of one group, for `drgw status`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShipStatus {
    pub group: String,
    pub peer: String,
    pub acknowledged_through: u64,
    pub batches_sent: u64,
    pub raw_bytes_sent: u64,
    pub wire_bytes_sent: u64,
    /// Bytes of batches sent again after a reconnect (a resend of unacknowledged data).
    pub resent_bytes: u64,
    pub zstd_level: i32,
    pub last_ack_latency_ms: Option<u64>,
    /// Why the group is not shipping, when it is not (retried every 30 s).
    pub problem: Option<String>,
}

/// Every group's shipping figures, shared with status.
#[derive(Default)]
pub struct ShipBoard {
    groups: Mutex<BTreeMap<u32, ShipStatus>>,
    /// Highest sequence ever sent per group (to count resends).
    sent_high: Mutex<HashMap<u32, u64>>,
}

impl ShipBoard {
    pub fn all(&self) -> Vec<ShipStatus> {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// A group no longer shipped from here (unprotected, reprotected,
    /// failed back) leaves the figures.
    fn forget(&self, group: u32) {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
        self.sent_high
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
    }

    fn update(&self, group: u32, action: impl FnOnce(&mut ShipStatus)) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        action(groups.entry(group).or_default());
    }
}

/// Chooses the zstd level: lower when compressing is slower than the link
/// drains, higher when the link is the bottleneck.
#[derive(Debug)]
pub struct AdaptiveLevel {
    level: i32,
    fixed: bool,
}

impl AdaptiveLevel {
    /// zstd's fast levels go below 1 (faster, larger); 0 is not a level
    /// here (a batch at level 0 is stored uncompressed) and is skipped.
    pub const MIN: i32 = -7;
    pub const MAX: i32 = 9;

    pub fn new(configured: Option<i32>) -> AdaptiveLevel {
        match configured {
            Some(level) => AdaptiveLevel { level, fixed: true },
            None => AdaptiveLevel {
                level: 1,
                fixed: false,
            },
        }
    }

    pub fn level(&self) -> i32 {
        self.level
    }

    /// `compress` is the time to compress a batch; `waited` the time the
    /// batch waited for room on the link (window or bandwidth limit).
    pub fn observe(&mut self, compress: Duration, waited: Duration) {
        if self.fixed {
            return;
        }
        // Link-bound: compress harder; CPU-bound: compress faster.
        let step = if waited > compress * 2 {
            1
        } else if waited < compress / 2 {
            -1
        } else {
            return;
        };
        let mut next = self.level + step;
        if next == 0 {
            next += step;
        }
        self.level = next.clamp(Self::MIN, Self::MAX);
    }
}

/// Runs the source side of one session with `peer`: ships every group whose
/// target is `peer`. Frames go out through `outbox`; ACKs come in through
/// the returned router's senders.
pub struct SourceSide {
    pub acks: Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<u64>>>>,
}

impl SourceSide {
    pub fn start(
        appliance: Arc<Appliance>,
        peer: String,
        outbox: mpsc::Sender<Frame>,
        cancel: CancellationToken,
    ) -> SourceSide {
        let acks: Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<u64>>>> = Arc::default();
        let routes = acks.clone();
        tokio::spawn(async move {
            let mut running: HashMap<u32, CancellationToken> = HashMap::new();
            let retry_at: Arc<Mutex<HashMap<u32, Instant>>> = Arc::default();
            loop {
                let groups = groups_for(&appliance, &peer);
                // A group no longer shipped here forgets its wait: when it
                // comes back (failback), it ships at once.
                retry_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|id, _| groups.contains_key(id));
                for (id, disks) in &groups {
                    if running.contains_key(id) {
                        continue;
                    }
                    let waiting = retry_at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(id)
                        .is_some_and(|at| Instant::now() < *at);
                    if waiting {
                        continue;
                    }
                    let (sender, receiver) = mpsc::unbounded_channel();
                    routes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(*id, sender);
                    let token = cancel.child_token();
                    running.insert(*id, token.clone());
                    let shipper = GroupShipper {
                        appliance: appliance.clone(),
                        peer: peer.clone(),
                        group_id: *id,
                        group: disks[0].group.clone(),
                        outbox: outbox.clone(),
                        acks: receiver,
                        cancel: token,
                    };
                    let retry_at = retry_at.clone();
                    let board = appliance.ship_board.clone();
                    let group_id = *id;
                    tokio::spawn(async move {
                        let name = shipper.group.clone();
                        let peer = shipper.peer.clone();
                        let cancel = shipper.cancel.clone();
                        let result = shipper.run().await;
                        if let Err(error) = result {
                            // This group alone stops; the link and other groups go on.
                            let wait = match error {
                                ShipError::Refused => REFUSED_RETRY,
                                _ => Duration::from_secs(1),
                            };
                            tracing::warn!(group = %name, %error, retry_in_s = wait.as_secs(), "shipping of the group stopped");
                            // Named even when it never shipped (refused at GROUP).
                            board.update(group_id, |status| {
                                status.group = name.clone();
                                status.peer = peer;
                                status.problem = Some(error.to_string());
                            });
                            retry_at
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(group_id, Instant::now() + wait);
                            cancel.cancel();
                        }
                    });
                }
                running.retain(|id, token| {
                    let keep = groups.contains_key(id) && !token.is_cancelled();
                    if !keep {
                        token.cancel();
                        routes.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
                    }
                    if !groups.contains_key(id) {
                        appliance.ship_board.forget(*id);
                    }
                    keep
                });
                if cancel.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        SourceSide { acks }
    }

    /// Routes an ACK from the target to its group's shipper.
    pub fn ack(&self, group: u32, sequence: u64) -> bool {
        match self
            .acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
        {
            Some(sender) => sender.send(sequence).is_ok(),
            None => false,
        }
    }
}

/// The appliance `disk` replicates to: the one it names, or (protected
/// before targets were named) the only paired appliance.
pub fn target_of(appliance: &Appliance, disk: &ProtectedDisk) -> Option<String> {
    if let Some(target) = &disk.peer {
        return Some(target.clone());
    }
    let appliance_peers: Vec<String> = appliance
        .pins
        .all()
        .into_iter()
        .filter(|p| p.kind == drgw_tls::PeerKind::Appliance)
        .map(|p| p.name)
        .collect();
    match appliance_peers.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    }
}

/// The groups shipped to `peer`, with their disks.
fn groups_for(appliance: &Appliance, peer: &str) -> BTreeMap<u32, Vec<ProtectedDisk>> {
    let mut groups: BTreeMap<u32, Vec<ProtectedDisk>> = BTreeMap::new();
    for disk in appliance.ingest.disks() {
        if target_of(appliance, &disk).as_deref() == Some(peer)
            && appliance.ingest.group_problem(disk.group_id).is_none()
        {
            groups.entry(disk.group_id).or_default().push(disk);
        }
    }
    groups
}

#[derive(Debug, thiserror::Error)]
enum ShipError {
    #[error("{0}")]
    Ingest(#[from] drgw_ingest::IngestError),
    #[error("{0}")]
    Staging(#[from] drgw_staging::StagingError),
    #[error("encoding a batch: {0}")]
    Payload(#[from] drgw_batch::PayloadError),
    #[error("the target did not answer within {} s", ACK_TIMEOUT.as_secs())]
    AckTimeout,
    #[error("the target acknowledged {acked}, beyond what was sent ({sent})")]
    AckBeyond { acked: u64, sent: u64 },
    #[error("session closed")]
    Closed,
    #[error("the target refused the group (failed over there, or its journal there is unusable: see `drgw status` on the target)")]
    Refused,
    #[error("the target holds this group through sequence {held}, but staging here ended at {staged}: the group's staging was lost or replaced. It starts again after sequence {held} and a resync of the whole group finds and sends what was lost ({resync})")]
    Gap {
        held: u64,
        staged: u64,
        resync: String,
    },
}

/// Batches compressed ahead of the link.
const PREPARED_BATCHES: usize = 2;
/// Batches compressed at once (on blocking threads).
const COMPRESSING_MAX: usize = 2;

struct Prepared {
    batch: drgw_wire::Batch,
    compress: Duration,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads staged records from `next` and compresses them into batches, up to
/// `COMPRESSING_MAX` at once, handing them over in sequence order.
async fn produce(
    ingest: Arc<drgw_ingest::Ingest>,
    log: Arc<StagingLog>,
    group_id: u32,
    mut next: u64,
    level: Arc<Mutex<AdaptiveLevel>>,
    prepared: mpsc::Sender<Result<Prepared, ShipError>>,
    cancel: CancellationToken,
) {
    type Compressing = tokio::task::JoinHandle<Result<Prepared, drgw_batch::PayloadError>>;
    let mut compressing: VecDeque<Compressing> = VecDeque::new();
    loop {
        while compressing.len() < COMPRESSING_MAX {
            // The records are in memory when shipping keeps up; else on disk.
            let records = match ingest.recent_from(group_id, next, BATCH_BYTES) {
                Some(records) => records,
                None => match log.read_from(next, BATCH_BYTES).await {
                    Ok(records) => records,
                    Err(error) => {
                        let _ = prepared.send(Err(error.into())).await;
                        return;
                    }
                },
            };
            let Some(last) = records.last() else { break };
            next = last.sequence + 1;
            let current = level.lock().unwrap_or_else(|p| p.into_inner()).level();
            compressing.push_back(tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let batch = drgw_batch::build_batch(group_id, &records, current)?;
                Ok(Prepared {
                    batch,
                    compress: started.elapsed(),
                })
            }));
        }
        let Some(oldest) = compressing.pop_front() else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(IDLE_POLL) => continue,
            }
        };
        let result = match oldest.await {
            Ok(result) => result.map_err(ShipError::from),
            Err(_) => Err(ShipError::Closed),
        };
        let failed = result.is_err();
        if prepared.send(result).await.is_err() || failed {
            return;
        }
    }
}

struct InFlight {
    sequence_last: u64,
    wire_bytes: usize,
    sent: Instant,
}

struct GroupShipper {
    appliance: Arc<Appliance>,
    peer: String,
    group_id: u32,
    group: String,
    outbox: mpsc::Sender<Frame>,
    acks: mpsc::UnboundedReceiver<u64>,
    cancel: CancellationToken,
}

impl GroupShipper {
    fn info(&self) -> GroupInfo {
        let mut disks: Vec<GroupDisk> = self
            .appliance
            .ingest
            .disks()
            .into_iter()
            .filter(|d| d.group_id == self.group_id)
            .map(|d| GroupDisk {
                disk: d.id,
                size_bytes: d.size_bytes,
                name: d.name,
            })
            .collect();
        disks.sort_by_key(|d| d.disk);
        GroupInfo {
            group: self.group_id,
            name: self.group.clone(),
            disks,
        }
    }

    async fn send(&self, frame: Frame) -> Result<(), ShipError> {
        self.outbox.send(frame).await.map_err(|_| ShipError::Closed)
    }

    async fn run(mut self) -> Result<(), ShipError> {
        let log = self
            .appliance
            .ingest
            .shipping_log(self.group_id, &self.group)
            .await?;
        let mut info = self.info();
        self.send(Frame::Group(info.clone())).await?;
        let resume = self.next_ack().await?;
        if resume == drgw_wire::GROUP_REFUSED {
            return Err(ShipError::Refused);
        }
        let durable = log.usage().sequence_last_durable;
        if resume > durable {
            // Sequences here restarted below what the target holds (the
            // cache volume was lost or replaced): shipping from `resume + 1`
            // would skip every write staged since, and writes acknowledged
            // to taps before the loss are gone from staging. So the staging
            // starts again after `resume`, and a resync of the whole group
            // compares every block and sends what differs.
            drop(log);
            self.appliance
                .ingest
                .restart_group(self.group_id, &self.group, resume + 1)
                .await?;
            let options = crate::resync::ResyncOptions {
                disk: None,
                block_bytes: crate::resync::BLOCK_BYTES_DEFAULT,
                fine_bytes: crate::resync::FINE_BYTES_DEFAULT,
                not_before_unix_ms: None,
                reason: format!(
                    "journal gap: the target held sequence {resume}, staging here ended at {durable} (staging lost)"
                ),
            };
            let resync = match crate::resync::start(&self.appliance, &self.group, options) {
                Ok(_) => "started".to_string(),
                Err(error) => format!("not started: {error}"),
            };
            return Err(ShipError::Gap {
                held: resume,
                staged: durable,
                resync,
            });
        }
        tracing::info!(group = %self.group, peer = %self.peer, resume_after = resume, "shipping");
        if resume > 0 {
            log.release_through(resume.min(durable))?;
        }
        let board = self.appliance.ship_board.clone();
        board.update(self.group_id, |status| {
            status.group = self.group.clone();
            status.peer = self.peer.clone();
            status.acknowledged_through = resume;
            status.problem = None;
        });
        let mut acknowledged = resume;
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut in_flight_bytes = 0usize;
        let level = Arc::new(Mutex::new(AdaptiveLevel::new(
            self.appliance.settings().zstd_level,
        )));
        let (prepared_sender, mut prepared) = mpsc::channel(PREPARED_BATCHES);
        let producer = tokio::spawn(produce(
            self.appliance.ingest.clone(),
            log.clone(),
            self.group_id,
            resume + 1,
            level.clone(),
            prepared_sender,
            self.cancel.clone(),
        ));
        let _stop_producer = AbortOnDrop(producer);
        let mut info_checked = Instant::now();
        loop {
            if info_checked.elapsed() > Duration::from_secs(1) {
                info_checked = Instant::now();
                let now = self.info();
                if now != info {
                    self.send(Frame::Group(now.clone())).await?;
                    info = now;
                }
            }
            let room = in_flight_bytes < IN_FLIGHT_BYTES;
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                acked = self.acks.recv() => {
                    let acked = acked.ok_or(ShipError::Closed)?;
                    self.on_ack(&log, acked, &mut acknowledged, &mut in_flight, &mut in_flight_bytes)?;
                }
                ready = prepared.recv(), if room => {
                    let Prepared { batch, compress } = ready.ok_or(ShipError::Closed)??;
                    let sequence_last = batch.sequence_last;
                    let raw_bytes = u64::from(batch.raw_bytes);
                    let wire_bytes = batch.payload.len();
                    let wait_started = Instant::now();
                    self.appliance.throttle.acquire(wire_bytes as u64).await;
                    self.send(Frame::Batch(batch)).await?;
                    let current = {
                        let mut level = level.lock().unwrap_or_else(|p| p.into_inner());
                        level.observe(compress, wait_started.elapsed());
                        level.level()
                    };
                    let resent = {
                        let mut high = board.sent_high.lock().unwrap_or_else(|p| p.into_inner());
                        let entry = high.entry(self.group_id).or_insert(0);
                        let resent = sequence_last <= *entry;
                        *entry = (*entry).max(sequence_last);
                        resent
                    };
                    board.update(self.group_id, |status| {
                        status.batches_sent += 1;
                        status.raw_bytes_sent += raw_bytes;
                        status.wire_bytes_sent += wire_bytes as u64;
                        if resent {
                            status.resent_bytes += wire_bytes as u64;
                        }
                        status.zstd_level = current;
                    });
                    in_flight.push_back(InFlight {
                        sequence_last,
                        wire_bytes,
                        sent: Instant::now(),
                    });
                    in_flight_bytes += wire_bytes;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn next_ack(&mut self) -> Result<u64, ShipError> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(ShipError::Closed),
            acked = tokio::time::timeout(ACK_TIMEOUT, self.acks.recv()) => match acked {
                Ok(Some(acked)) => Ok(acked),
                Ok(None) => Err(ShipError::Closed),
                Err(_) => Err(ShipError::AckTimeout),
            },
        }
    }

    fn on_ack(
        &self,
        log: &StagingLog,
        acked: u64,
        acknowledged: &mut u64,
        in_flight: &mut VecDeque<InFlight>,
        in_flight_bytes: &mut usize,
    ) -> Result<(), ShipError> {
        if acked == drgw_wire::GROUP_REFUSED {
            return Err(ShipError::Refused);
        }
        let sent = in_flight.back().map_or(*acknowledged, |f| f.sequence_last);
        if acked > sent {
            return Err(ShipError::AckBeyond { acked, sent });
        }
        let mut latency = None;
        while in_flight.front().is_some_and(|f| f.sequence_last <= acked) {
            let done = in_flight.pop_front().expect("checked");
            *in_flight_bytes -= done.wire_bytes;
            latency = Some(done.sent.elapsed());
        }
        if acked > *acknowledged {
            *acknowledged = acked;
            log.release_through(acked)?;
            self.appliance.ingest.shipped(self.group_id, acked);
        }
        self.appliance.ship_board.update(self.group_id, |status| {
            status.acknowledged_through = *acknowledged;
            if let Some(latency) = latency {
                status.last_ack_latency_ms = Some(latency.as_millis() as u64);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_follows_the_bottleneck() {
        let mut level = AdaptiveLevel::new(None);
        assert_eq!(level.level(), 1);
        let ms = Duration::from_millis;
        // The link is the bottleneck: batches wait longer than they take to compress.
        for _ in 0..20 {
            level.observe(ms(5), ms(50));
        }
        assert_eq!(level.level(), AdaptiveLevel::MAX);
        // Compressing is: back down, into zstd's fast levels, never 0
        // (which would store batches uncompressed).
        let mut seen = Vec::new();
        for _ in 0..20 {
            level.observe(ms(50), ms(1));
            seen.push(level.level());
        }
        assert!(!seen.contains(&0), "{seen:?}");
        assert_eq!(level.level(), AdaptiveLevel::MIN);
        const { assert!(AdaptiveLevel::MIN < 0) };
        // Back up from MIN (-7): six steps reach -1, the seventh skips 0.
        let mut up = Vec::new();
        for _ in 0..7 {
            level.observe(ms(5), ms(50));
            up.push(level.level());
        }
        assert_eq!(up, [-6, -5, -4, -3, -2, -1, 1], "from -1 up to 1, over 0");
        // Balanced: stays.
        level.observe(ms(10), ms(10));
        assert_eq!(level.level(), 1);
        let mut fixed = AdaptiveLevel::new(Some(7));
        fixed.observe(ms(1), ms(100));
        assert_eq!(fixed.level(), 7);
    }
}
