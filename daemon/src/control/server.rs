use super::handlers;
use super::protocol::{Envelope, Response, PROTOCOL_VERSION, REQUEST_BYTES_MAX};
use crate::appliance::Appliance;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Control requests served at once; more wait for a slot.
const REQUESTS_MAX: usize = 16;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the control socket directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another drgw is already serving the control socket {path}")]
    InUse { path: PathBuf },
    #[error("cannot bind the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the control socket, mode 0600. A socket file left by a process
/// that died is replaced; a live one means another daemon: refuse.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| ControlError::Directory {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse { path: path.into() });
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_error = |source| ControlError::Bind {
        path: path.into(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    Ok(listener)
}

pub async fn run_control(
    listener: UnixListener,
    appliance: Arc<Appliance>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(REQUESTS_MAX));
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "control accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let appliance = appliance.clone();
        tracker.spawn(async move {
            serve(stream, &appliance).await;
            drop(slot);
        });
    }
}

/// The caller must be root or the user the daemon runs as.
fn authorised(stream: &UnixStream) -> Result<(), String> {
    let credentials = stream
        .peer_cred()
        .map_err(|error| format!("cannot read caller credentials: {error}"))?;
    let own = nix::unistd::geteuid().as_raw();
    match credentials.uid() {
        0 => Ok(()),
        uid if uid == own => Ok(()),
        uid => Err(format!(
            "uid {uid} may not use the control socket (root only)"
        )),
    }
}

async fn serve(stream: UnixStream, appliance: &Arc<Appliance>) {
    let response = match authorised(&stream) {
        Ok(()) => None,
        Err(reason) => {
            tracing::warn!(%reason, "control request refused");
            Some(failure(reason))
        }
    };
    let (reader, mut writer) = stream.into_split();
    let response = match response {
        Some(response) => response,
        None => match tokio::time::timeout(REQUEST_TIMEOUT, read_request(reader)).await {
            Err(_) => failure("no complete request line within 10 s".into()),
            Ok(Err(reason)) => failure(reason),
            Ok(Ok(envelope)) => answer(envelope, appliance).await,
        },
    };
    let mut line = serde_json::to_vec(&response).expect("responses always serialise");
    line.push(b'\n');
    let _ = writer.write_all(&line).await;
}

async fn read_request(reader: tokio::net::unix::OwnedReadHalf) -> Result<Envelope, String> {
    let mut limited = BufReader::new(reader.take(REQUEST_BYTES_MAX as u64 + 1));
    let mut line = String::new();
    limited
        .read_line(&mut line)
        .await
        .map_err(|error| format!("reading the request: {error}"))?;
    if line.len() > REQUEST_BYTES_MAX {
        return Err(format!("request longer than {REQUEST_BYTES_MAX} bytes"));
    }
    let envelope: Envelope =
        serde_json::from_str(&line).map_err(|error| format!("malformed request: {error}"))?;
    if envelope.version != PROTOCOL_VERSION {
        return Err(format!(
            "control protocol version {} is not supported (this drgw speaks {PROTOCOL_VERSION})",
            envelope.version
        ));
    }
    Ok(envelope)
}

async fn answer(envelope: Envelope, appliance: &Arc<Appliance>) -> Response {
    match handlers::handle(envelope.request, appliance).await {
        Ok(result) => Response {
            ok: true,
            result: Some(result),
            error: None,
        },
        Err(error) => failure(error),
    }
}

fn failure(error: String) -> Response {
    Response {
        ok: false,
        result: None,
        error: Some(error),
    }
}
