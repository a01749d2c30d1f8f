use super::protocol::{Envelope, Request, Response, PROTOCOL_VERSION};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests that copy a whole disk answer when done, however long that takes.
const LONG_RESPONSE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach drgw at {path}: {source} (is `drgw serve` running? is --socket right?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to drgw at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("drgw at {path} did not answer within {seconds} s")]
    Timeout { path: PathBuf, seconds: u64 },
    #[error("drgw at {path} sent an unreadable response: {reason}")]
    BadResponse { path: PathBuf, reason: String },
    #[error("{0}")]
    Refused(String),
}

/// Sends one request and returns its result, or the daemon's error text.
pub async fn request(socket: &Path, request: Request) -> Result<serde_json::Value, ClientError> {
    let path = socket.to_path_buf();
    let io_error = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: path.clone(),
            source,
        })?;
    let timeout = match request {
        // A commit merges every written block into the replicas; a failover
        // may wait for what was received to be applied.
        Request::Materialize { .. }
        | Request::Commit { .. }
        | Request::Failover { .. }
        | Request::TestFailover { .. }
        | Request::Export { .. } => LONG_RESPONSE_TIMEOUT,
        _ => RESPONSE_TIMEOUT,
    };
    let envelope = Envelope {
        version: PROTOCOL_VERSION,
        request,
    };
    let mut line = serde_json::to_vec(&envelope).expect("requests always serialise");
    line.push(b'\n');
    stream.write_all(&line).await.map_err(io_error)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    tokio::time::timeout(timeout, reader.read_line(&mut answer))
        .await
        .map_err(|_| ClientError::Timeout {
            path: path.clone(),
            seconds: timeout.as_secs(),
        })?
        .map_err(io_error)?;
    let response: Response =
        serde_json::from_str(&answer).map_err(|error| ClientError::BadResponse {
            path: path.clone(),
            reason: error.to_string(),
        })?;
    match (response.ok, response.result, response.error) {
        (true, result, _) => Ok(result.unwrap_or(serde_json::Value::Null)),
        (false, _, error) => {
            Err(ClientError::Refused(error.unwrap_or_else(|| {
                "request failed without a reason".into()
            })))
        }
    }
}
