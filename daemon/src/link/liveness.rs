//! Heartbeats of one session: when to send, what to echo, and when the peer
//! has been silent too long. Shared by appliance links and tap sessions.

use super::session::SessionError;
use crate::appliance::Settings;
use drgw_io::clock;
use drgw_wire::Heartbeat;
use std::time::Instant;
use tokio::sync::watch;
use tokio::time::Interval;

pub struct Liveness {
    settings: watch::Receiver<Settings>,
    interval: Interval,
    last_seen: Instant,
    /// The peer's last heartbeat timestamp and when it arrived: echoed back
    /// advanced by the time we held it, so the peer measures the network
    /// round trip alone, not our heartbeat phase.
    echo: Option<(u64, Instant)>,
}

impl Liveness {
    pub fn new(settings: watch::Receiver<Settings>) -> Liveness {
        let interval = tokio::time::interval(settings.borrow().heartbeat_interval);
        Liveness {
            settings,
            interval,
            last_seen: Instant::now(),
            echo: None,
        }
    }

    /// Resolves when a heartbeat is due (or the settings changed, in which
    /// case it re-arms and resolves with `None`).
    pub async fn due(&mut self) -> Option<()> {
        tokio::select! {
            changed = self.settings.changed() => {
                if changed.is_ok() {
                    self.interval = tokio::time::interval(self.settings.borrow().heartbeat_interval);
                }
                None
            }
            _ = self.interval.tick() => Some(()),
        }
    }

    /// The heartbeat to send now, or the reason to give up on the peer.
    pub fn heartbeat(&self) -> Result<Heartbeat, SessionError> {
        let timeout = self.settings.borrow().peer_timeout;
        if self.last_seen.elapsed() > timeout {
            return Err(SessionError::Silent {
                silent_ms: self.last_seen.elapsed().as_millis(),
                timeout_ms: timeout.as_millis(),
            });
        }
        let echo_unix_ns = self.echo.map_or(0, |(sent, held)| {
            sent.saturating_add(u64::try_from(held.elapsed().as_nanos()).unwrap_or(u64::MAX))
        });
        Ok(Heartbeat {
            sent_unix_ns: clock::unix_nanos(),
            echo_unix_ns,
        })
    }

    /// Any frame from the peer proves it alive.
    pub fn seen(&mut self) {
        self.last_seen = Instant::now();
    }

    /// A heartbeat arrived; returns the measured round trip, if any.
    pub fn received(&mut self, beat: &Heartbeat) -> Option<u64> {
        self.seen();
        self.echo = Some((beat.sent_unix_ns, self.last_seen));
        (beat.echo_unix_ns != 0)
            .then(|| clock::unix_nanos().saturating_sub(beat.echo_unix_ns) / 1000)
    }
}
