//! The life of a drgw process, shared by the daemon (`drgw serve`) and the
//! tap (`drgw tap`): logging to journald or stderr with a reloadable level
//! (`logging`), readiness and the watchdog for systemd (`notify`), the
//! signal thread (`signals`), and the lock on a state directory that keeps a
//! second process out (`state_lock`).

pub mod logging;
pub mod notify;
pub mod signals;
pub mod state_lock;
