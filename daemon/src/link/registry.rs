use drgw_io::clock;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Where a link to a pinned peer stands, as `drgw status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    /// This side does not dial the peer; it waits for the peer to connect.
    Waiting,
    Connecting,
    Connected,
    Disconnected,
    /// The last attempt failed on authentication (pinning, TLS version).
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// The live facts about one peer's link.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkStatus {
    pub state: LinkState,
    pub since_unix_s: u64,
    pub direction: Option<Direction>,
    pub remote_address: Option<String>,
    pub remote_appliance_id: Option<String>,
    pub remote_name: Option<String>,
    pub protocol_version: Option<u16>,
    pub round_trip_us: Option<u64>,
    pub heartbeats_received: u64,
    pub last_error: Option<String>,
}

impl LinkStatus {
    /// A peer this side has not heard from since `since_unix_s`.
    pub fn waiting_since(since_unix_s: u64) -> LinkStatus {
        LinkStatus {
            since_unix_s,
            ..LinkStatus::new(LinkState::Waiting)
        }
    }

    fn new(state: LinkState) -> LinkStatus {
        LinkStatus {
            state,
            since_unix_s: clock::unix_seconds(),
            direction: None,
            remote_address: None,
            remote_appliance_id: None,
            remote_name: None,
            protocol_version: None,
            round_trip_us: None,
            heartbeats_received: 0,
            last_error: None,
        }
    }
}

/// What the other side said about itself in HELLO.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub direction: Direction,
    pub remote_address: String,
    pub remote_appliance_id: String,
    pub remote_name: String,
    pub protocol_version: u16,
}

struct Entry {
    status: LinkStatus,
    session: Option<(u64, CancellationToken)>,
}

/// The state of every link, keyed by peer name. One session per peer: a new
/// session for a peer replaces the old one (the peer restarted, or the old
/// TCP connection is half-dead and not yet timed out).
pub struct LinkRegistry {
    entries: Mutex<HashMap<String, Entry>>,
    session_counter: std::sync::atomic::AtomicU64,
}

impl Default for LinkRegistry {
    fn default() -> Self {
        LinkRegistry {
            entries: Mutex::new(HashMap::new()),
            session_counter: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

impl LinkRegistry {
    fn with_entry<T>(&self, name: &str, action: impl FnOnce(&mut Entry) -> T) -> T {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let entry = entries.entry(name.to_string()).or_insert_with(|| Entry {
            status: LinkStatus::new(LinkState::Disconnected),
            session: None,
        });
        action(entry)
    }

    /// Records a state change that is not a session (dialing, a failed
    /// attempt). Ignored while a session is connected: an inbound session
    /// stays authoritative over a parallel failed dial.
    pub fn set_state(&self, name: &str, state: LinkState, error: Option<String>) {
        self.with_entry(name, |entry| {
            if entry.session.is_some() {
                return;
            }
            if entry.status.state != state {
                entry.status.since_unix_s = clock::unix_seconds();
            }
            entry.status.state = state;
            if error.is_some() {
                entry.status.last_error = error;
            }
        });
    }

    /// Registers a connected session and cancels the one it replaces.
    /// Returns the session number to pass to `session_ended`.
    pub fn session_started(&self, name: &str, info: SessionInfo, cancel: CancellationToken) -> u64 {
        let number = self
            .session_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.with_entry(name, |entry| {
            if let Some((_, previous)) = entry.session.replace((number, cancel)) {
                previous.cancel();
            }
            let status = &mut entry.status;
            status.state = LinkState::Connected;
            status.since_unix_s = clock::unix_seconds();
            status.direction = Some(info.direction);
            status.remote_address = Some(info.remote_address);
            status.remote_appliance_id = Some(info.remote_appliance_id);
            status.remote_name = Some(info.remote_name);
            status.protocol_version = Some(info.protocol_version);
            status.round_trip_us = None;
            status.heartbeats_received = 0;
            status.last_error = None;
        });
        number
    }

    pub fn session_ended(&self, name: &str, number: u64, reason: Option<String>) {
        self.with_entry(name, |entry| {
            if entry.session.as_ref().map(|(current, _)| *current) != Some(number) {
                return; // replaced by a newer session
            }
            entry.session = None;
            entry.status.state = LinkState::Disconnected;
            entry.status.since_unix_s = clock::unix_seconds();
            entry.status.last_error = reason;
        });
    }

    pub fn heartbeat_received(&self, name: &str, round_trip_us: Option<u64>) {
        self.with_entry(name, |entry| {
            entry.status.heartbeats_received += 1;
            if round_trip_us.is_some() {
                entry.status.round_trip_us = round_trip_us;
            }
        });
    }

    /// Ends the peer's current session, if any; it may connect again.
    pub fn end_session(&self, name: &str) {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(Entry {
            session: Some((_, cancel)),
            ..
        }) = entries.get(name)
        {
            cancel.cancel();
        }
    }

    /// Drops a peer (unpaired): its session, if any, is closed.
    pub fn forget(&self, name: &str) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(Entry {
            session: Some((_, cancel)),
            ..
        }) = entries.remove(name)
        {
            cancel.cancel();
        }
    }

    pub fn status(&self, name: &str) -> Option<LinkStatus> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        entries.get(name).map(|entry| entry.status.clone())
    }
}

/// A refused connection attempt, kept for `drgw status` so an operator can
/// see who knocked and why they were turned away.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    pub at_unix_s: u64,
    pub remote_address: String,
    pub reason: String,
}

/// The most recent refusals, bounded.
pub struct RefusalLog {
    recent: Mutex<VecDeque<Refusal>>,
}

impl RefusalLog {
    pub const CAPACITY: usize = 32;

    pub fn new() -> RefusalLog {
        RefusalLog {
            recent: Mutex::new(VecDeque::with_capacity(Self::CAPACITY)),
        }
    }

    pub fn record(&self, remote_address: String, reason: String) {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if recent.len() == Self::CAPACITY {
            recent.pop_front();
        }
        recent.push_back(Refusal {
            at_unix_s: clock::unix_seconds(),
            remote_address,
            reason,
        });
    }

    pub fn snapshot(&self) -> Vec<Refusal> {
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        recent.iter().cloned().collect()
    }
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SessionInfo {
        SessionInfo {
            direction: Direction::Inbound,
            remote_address: "127.0.0.1:1".into(),
            remote_appliance_id: "id".into(),
            remote_name: "b".into(),
            protocol_version: 1,
        }
    }

    #[test]
    fn newer_session_replaces_older() {
        let registry = LinkRegistry::default();
        let first_cancel = CancellationToken::new();
        let first = registry.session_started("b", info(), first_cancel.clone());
        let second = registry.session_started("b", info(), CancellationToken::new());
        assert!(first_cancel.is_cancelled());
        registry.session_ended("b", first, Some("old".into()));
        assert_eq!(registry.status("b").unwrap().state, LinkState::Connected);
        registry.session_ended("b", second, Some("gone".into()));
        let status = registry.status("b").unwrap();
        assert_eq!(status.state, LinkState::Disconnected);
        assert_eq!(status.last_error.as_deref(), Some("gone"));
    }

    #[test]
    fn failed_dial_does_not_mask_live_session() {
        let registry = LinkRegistry::default();
        registry.session_started("b", info(), CancellationToken::new());
        registry.set_state("b", LinkState::Refused, Some("x".into()));
        assert_eq!(registry.status("b").unwrap().state, LinkState::Connected);
    }

    #[test]
    fn refusal_log_is_bounded() {
        let log = RefusalLog::new();
        for index in 0..(RefusalLog::CAPACITY + 5) {
            log.record(format!("addr{index}"), "why".into());
        }
        let recent = log.snapshot();
        assert_eq!(recent.len(), RefusalLog::CAPACITY);
        assert_eq!(recent[0].remote_address, "addr5");
    }
}
