//! The control API: newline-delimited JSON over the Unix socket
//! (`/run/drgw/control.sock` by default), one request and one response per
//! connection. Root-only: the socket is mode 0600 and the server checks the
//! caller's credentials. Documented in docs/control-api.md.

mod client;
mod handlers;
pub mod jobs;
pub mod materialize;
mod protocol;
mod recovery;
mod server;

pub use client::{request, ClientError};
pub use jobs::{JobRegistry, JobReport, JobState};
pub use materialize::Materialized;
pub use protocol::{PairInfo, Request, Response, PROTOCOL_VERSION, REQUEST_BYTES_MAX};
pub use recovery::{BookmarkTaken, PointList};
pub use server::{bind, run_control, ControlError};
