//! Signals, through signal-hook on a thread of its own, delivered to the
//! runtime as events on a bounded channel.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// SIGTERM or SIGINT: drain and exit 0.
    Terminate(&'static str),
    /// SIGHUP: reload what can be reloaded.
    Reload,
}

pub fn listen() -> std::io::Result<mpsc::Receiver<SignalEvent>> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let (sender, receiver) = mpsc::channel(8);
    std::thread::Builder::new()
        .name("drgw-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let event = match signal {
                    SIGHUP => SignalEvent::Reload,
                    SIGINT => SignalEvent::Terminate("SIGINT"),
                    _ => SignalEvent::Terminate("SIGTERM"),
                };
                if sender.blocking_send(event).is_err() {
                    return;
                }
            }
        })?;
    Ok(receiver)
}
