//! Links over the 9443 replication listener: the listener that admits pinned
//! peers and taps, the dialer that keeps a link to each paired appliance,
//! and the session both run once TLS is up (HELLO, then heartbeats).
//!
//! Who dials: of two paired appliances, the one whose certificate
//! fingerprint sorts first dials the other; the other only listens. So there
//! is one link per pair, and no race between two crossing connections.

mod calls;
mod dialer;
mod hello;
mod listener;
mod liveness;
mod registry;
mod session;
mod tap_session;

pub use calls::{PeerCall, PeerCalls, SUMS_TIMEOUT};
pub use dialer::{dials, run_dialers};
pub use listener::{bind, run_listener};
pub use registry::{
    Direction, LinkRegistry, LinkState, LinkStatus, Refusal, RefusalLog, SessionInfo,
};
pub use session::{truncate, SessionContext, SessionError};
