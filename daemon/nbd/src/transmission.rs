//! The transmission phase of one connection.
//!
//! One reader (this task) parses requests and checks them; each accepted
//! request runs in a task of its own; one writer task owns the socket's
//! write half and writes every reply whole, so replies of concurrent
//! requests never interleave. Backpressure: before reading a request's
//! payload the reader takes one request permit and one byte permit per
//! payload byte; permits travel with the reply and are released once it is
//! written. At the limits the reader stops reading the socket, so memory
//! per connection is bounded by `in_flight_bytes_max` plus headers.
//!
//! Cost sketch: per request one task, one backend call, one reply write
//! (header + payload, buffered: one write for the replies ready together),
//! and a share of one socket read (buffered: small requests queued by the
//! client come in with one read); per connection at most `in_flight_requests_max`
//! tasks and `in_flight_bytes_max` payload bytes (64 MiB by default).

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::backend::BlockBackend;
use super::error::NbdError;
use super::export::Limits;
use super::handshake::Negotiated;
use super::protocol::*;

/// Buffer of the reply writer (replies larger than it bypass it).
const WRITE_BUFFER_BYTES: usize = 64 << 10;
/// Buffer of the request reader: one read takes in every small request
/// the client has queued (payloads larger than it bypass it).
const READ_BUFFER_BYTES: usize = 64 << 10;

/// What one connection serves, fixed by the handshake.
pub struct Session {
    pub backend: Arc<dyn BlockBackend>,
    pub structured_replies: bool,
    pub transmission_flags: u16,
    pub limits: Limits,
}

impl Session {
    pub fn new(negotiated: Negotiated, limits: Limits) -> Session {
        Session {
            backend: negotiated.export.backend,
            structured_replies: negotiated.structured_replies,
            transmission_flags: negotiated.transmission_flags,
            limits,
        }
    }
}

/// Why a request is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Answer with this NBD error and go on.
    Error { errno: u32, reason: &'static str },
    /// A WRITE payload too long to read: answer EINVAL and close.
    WriteTooLong,
}

/// One reply, written whole by the writer task; dropping it releases the
/// permits its request held.
struct Reply {
    header: Vec<u8>,
    data: Option<Vec<u8>>,
    _permits: Permits,
}

struct Permits {
    _request: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

struct Budget {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

/// Serves requests until NBD_CMD_DISC, end of stream, a fatal protocol
/// error, or `cancel`; in every case replies to the requests already
/// accepted are written before the stream is shut down.
pub async fn transmit<S>(
    stream: S,
    session: Session,
    cancel: CancellationToken,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (reader, writer) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let (replies, queue) = mpsc::channel(session.limits.in_flight_requests_max);
    let writer = tokio::spawn(write_replies(writer, queue));
    let session = Arc::new(session);
    let result = read_requests(&mut reader, &session, &replies, &cancel).await;
    drop(replies);
    let written = writer
        .await
        .map_err(|join| io::Error::other(format!("reply writer failed: {join}")))?;
    result?;
    written.map_err(NbdError::from)
}

/// Reads a WRITE payload of `length` bytes into a new vector without
/// zeroing it first: `read_buf` fills the spare capacity, which is exactly
/// what is left to read, so nothing past the payload is taken.
async fn read_payload<R>(reader: &mut R, length: usize) -> io::Result<Vec<u8>>
where
    R: AsyncRead + Unpin,
{
    let mut payload = Vec::with_capacity(length);
    while payload.len() < length {
        if reader.read_buf(&mut payload).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the client went away {} bytes into a {length}-byte write",
                    payload.len()
                ),
            ));
        }
    }
    Ok(payload)
}

async fn read_requests<R>(
    reader: &mut R,
    session: &Arc<Session>,
    replies: &mpsc::Sender<Reply>,
    cancel: &CancellationToken,
) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin,
{
    let budget = Budget {
        requests: Arc::new(Semaphore::new(session.limits.in_flight_requests_max)),
        bytes: Arc::new(Semaphore::new(session.limits.in_flight_bytes_max)),
    };
    loop {
        let mut header = [0u8; REQUEST_BYTES];
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            _ = replies.closed() => return Ok(()),
            read = reader.read_exact(&mut header) => match read {
                Ok(_) => {}
                // The client went away between requests: a hard disconnect.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(error) => return Err(error.into()),
            },
        }
        let request = parse_request(&header)?;
        if request.command == CMD_DISC {
            return Ok(());
        }
        let permits = take_permits(&budget, session, &request).await;
        let refusal = check_request(session, &request).err();
        if refusal == Some(Refusal::WriteTooLong) {
            let reply = error_reply(
                session,
                &request,
                EINVAL,
                "write longer than the maximum payload",
            );
            queue_reply(replies, reply, None, permits).await;
            return Err(NbdError::WriteTooLong {
                length: request.length,
                limit: session.limits.request_bytes_max,
            });
        }
        let mut payload = Vec::new();
        if request.command == CMD_WRITE {
            payload = read_payload(reader, request.length as usize).await?;
        }
        if let Some(Refusal::Error { errno, reason }) = refusal {
            queue_reply(
                replies,
                error_reply(session, &request, errno, reason),
                None,
                permits,
            )
            .await;
            continue;
        }
        let session = Arc::clone(session);
        let replies = replies.clone();
        tokio::spawn(async move {
            let (header, data) = execute(&session, &request, payload).await;
            queue_reply(&replies, header, data, permits).await;
        });
    }
}

/// Waits for room for one more request and its payload: the backpressure.
async fn take_permits(budget: &Budget, session: &Session, request: &Request) -> Permits {
    let payload_bytes = match request.command {
        CMD_READ | CMD_WRITE if request.length <= session.limits.request_bytes_max => {
            request.length
        }
        _ => 0,
    };
    debug_assert!(payload_bytes as usize <= session.limits.in_flight_bytes_max);
    let request_permit = Arc::clone(&budget.requests)
        .acquire_owned()
        .await
        .expect("the request semaphore is never closed");
    let bytes_permit = if payload_bytes == 0 {
        None
    } else {
        let permit = Arc::clone(&budget.bytes)
            .acquire_many_owned(payload_bytes)
            .await
            .expect("the byte semaphore is never closed");
        Some(permit)
    };
    Permits {
        _request: request_permit,
        _bytes: bytes_permit,
    }
}

async fn queue_reply(
    replies: &mpsc::Sender<Reply>,
    header: Vec<u8>,
    data: Option<Vec<u8>>,
    permits: Permits,
) {
    let reply = Reply {
        header,
        data,
        _permits: permits,
    };
    // Fails only when the writer is gone (the client disconnected); the
    // reply then has nowhere to go.
    let _ = replies.send(reply).await;
}

/// Checks a request against the export and the limits, as the NBD spec's
/// error rules say (see docs/nbd.md for the table).
pub fn check_request(session: &Session, request: &Request) -> Result<(), Refusal> {
    let refuse = |errno, reason| Err(Refusal::Error { errno, reason });
    let flags = session.transmission_flags;
    let allowed_flags = match request.command {
        CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM | CMD_CACHE => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        _ => return refuse(EINVAL, "unknown command"),
    };
    if request.flags & !allowed_flags != 0 {
        return refuse(EINVAL, "command flag not valid for this command");
    }
    let limit = session.limits.request_bytes_max;
    if request.command == CMD_WRITE && request.length > limit {
        return Err(Refusal::WriteTooLong);
    }
    if request.command == CMD_READ && request.length > limit {
        let errno = if session.structured_replies {
            EOVERFLOW
        } else {
            EINVAL
        };
        return refuse(errno, "read longer than the maximum payload");
    }
    let writes = matches!(request.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && flags & FLAG_READ_ONLY != 0 {
        return refuse(EPERM, "export is read-only");
    }
    if request.command == CMD_TRIM && flags & FLAG_SEND_TRIM == 0 {
        return refuse(EINVAL, "trim not supported by this export");
    }
    if request.command == CMD_WRITE_ZEROES && flags & FLAG_SEND_WRITE_ZEROES == 0 {
        return refuse(EINVAL, "write zeroes not supported by this export");
    }
    if request.command == CMD_FLUSH {
        return Ok(());
    }
    let end = request.offset.checked_add(u64::from(request.length));
    if end.is_none_or(|end| end > session.backend.size_bytes()) {
        let errno = if writes && request.command != CMD_TRIM {
            ENOSPC
        } else {
            EINVAL
        };
        return refuse(errno, "request past the end of the export");
    }
    Ok(())
}

/// Runs one accepted request; returns the reply header and data.
async fn execute(
    session: &Session,
    request: &Request,
    payload: Vec<u8>,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let backend = session.backend.as_ref();
    let fua = request.flags & CMD_FLAG_FUA != 0;
    let (offset, length) = (request.offset, request.length);
    let result = match request.command {
        CMD_READ => match backend.read(offset, length).await {
            Ok(data) if data.len() == length as usize => return read_reply(session, request, data),
            Ok(data) => Err(io::Error::other(format!(
                "backend read {} of {length} bytes",
                data.len()
            ))),
            Err(error) => Err(error),
        },
        CMD_WRITE => backend.write(offset, payload, fua).await,
        CMD_FLUSH => backend.flush().await,
        CMD_TRIM => backend.trim(offset, length, fua).await,
        CMD_WRITE_ZEROES => {
            let may_trim = request.flags & CMD_FLAG_NO_HOLE == 0;
            backend.write_zeroes(offset, length, fua, may_trim).await
        }
        CMD_CACHE => Ok(()),
        command => unreachable!("command {command} passed check_request"),
    };
    match result {
        Ok(()) => (encode_simple_reply(0, request.cookie).to_vec(), None),
        Err(error) => {
            tracing::warn!(
                command = request.command,
                offset,
                length,
                "nbd backend error: {error}"
            );
            (
                error_reply(session, request, errno_for(&error), "backend i/o error"),
                None,
            )
        }
    }
}

fn read_reply(session: &Session, request: &Request, data: Vec<u8>) -> (Vec<u8>, Option<Vec<u8>>) {
    if !session.structured_replies {
        return (encode_simple_reply(0, request.cookie).to_vec(), Some(data));
    }
    if data.is_empty() {
        let done = encode_chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, request.cookie, 0);
        return (done.to_vec(), None);
    }
    let header = encode_offset_data_header(request.cookie, request.offset, data.len() as u32);
    (header, Some(data))
}

/// An error reply: an error chunk when structured replies were negotiated
/// (READ must never get a simple reply then), a simple reply otherwise.
fn error_reply(session: &Session, request: &Request, errno: u32, message: &str) -> Vec<u8> {
    if session.structured_replies {
        encode_error_chunk(request.cookie, errno, message)
    } else {
        encode_simple_reply(errno, request.cookie).to_vec()
    }
}

/// Maps a backend error to the NBD error set.
pub fn errno_for(error: &io::Error) -> u32 {
    use nix::libc;
    match error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES | libc::EROFS) => EPERM,
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => ENOSPC,
        Some(libc::EINVAL) => EINVAL,
        Some(libc::ENOMEM) => ENOMEM,
        Some(libc::EOVERFLOW) => EOVERFLOW,
        Some(libc::ESHUTDOWN) => ESHUTDOWN,
        Some(_) => EIO,
        None => match error.kind() {
            io::ErrorKind::PermissionDenied => EPERM,
            io::ErrorKind::InvalidInput => EINVAL,
            io::ErrorKind::StorageFull => ENOSPC,
            io::ErrorKind::OutOfMemory => ENOMEM,
            _ => EIO,
        },
    }
}

async fn write_replies<W>(writer: W, mut queue: mpsc::Receiver<Reply>) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
    while let Some(reply) = queue.recv().await {
        writer.write_all(&reply.header).await?;
        if let Some(data) = &reply.data {
            writer.write_all(data).await?;
        }
        drop(reply);
        if queue.is_empty() {
            writer.flush().await?;
        }
    }
    writer.flush().await?;
    writer.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_payload_is_read_whole_in_pieces_and_nothing_after_it() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        // A 7-byte pipe: the payload arrives in many short reads.
        let (mut client, mut server) = tokio::io::duplex(7);
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.write_all(b"NEXT").await.unwrap();
        });
        let read = read_payload(&mut server, payload.len()).await.unwrap();
        assert_eq!(read, payload);
        let mut next = [0u8; 4];
        server.read_exact(&mut next).await.unwrap();
        assert_eq!(
            &next, b"NEXT",
            "the bytes after the payload stay for the next request"
        );
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_gone_mid_payload_is_an_unexpected_eof() {
        let mut short: &[u8] = &[1, 2, 3];
        let error = read_payload(&mut short, 8).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            error.to_string().contains("3 bytes into a 8-byte write"),
            "{error}"
        );
    }
}
