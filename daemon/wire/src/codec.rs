//! Encoding and decoding whole frames in memory.

use super::body;
use super::error::{DecodeError, EncodeError};
use super::frame::Frame;
use super::header::{self, Header};
use super::{BODY_BYTES_LIMIT, HEADER_BYTES};

/// Appends one encoded frame to `out`.
///
/// Fails, leaving `out` as it was, when the frame would break a limit or an
/// invariant the receiver checks (string lengths, body size above
/// [`BODY_BYTES_LIMIT`], an empty or out-of-order WRITE batch, an overflowing
/// range, an inverted HELLO version range). The receiver's own limit may be
/// lower than [`BODY_BYTES_LIMIT`]: size batches with [`Frame::encoded_len`].
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let body_bytes = body::body_bytes(frame);
    let body_bytes_wire = u32::try_from(body_bytes)
        .ok()
        .filter(|length| *length <= BODY_BYTES_LIMIT)
        .ok_or(EncodeError::BodyTooLarge {
            length: body_bytes,
            max: BODY_BYTES_LIMIT,
        })?;
    let start = out.len();
    out.reserve(HEADER_BYTES + body_bytes);
    header::put_header(out, frame.kind(), body_bytes_wire);
    if let Err(error) = body::write_body(frame, out) {
        out.truncate(start);
        return Err(error);
    }
    // A wrong length in the header would desynchronise the whole stream.
    assert_eq!(
        out.len() - start,
        HEADER_BYTES + body_bytes,
        "{} body size",
        frame.kind()
    );
    header::seal(out, start);
    Ok(())
}

/// Decodes the frame at the start of `buf`, returning it and the number of
/// bytes it took.
///
/// `DecodeError::Incomplete { needed }` means `buf` holds a valid prefix so
/// far and at least `needed` more bytes are required; any other error means
/// the stream is broken. The body length is checked against
/// `max_body_bytes` (clamped to [`BODY_BYTES_LIMIT`]) as soon as the header
/// is in, before the body is waited for. Never panics.
pub fn decode(buf: &[u8], max_body_bytes: u32) -> Result<(Frame, usize), DecodeError> {
    let Some(header_bytes) = buf.first_chunk::<HEADER_BYTES>() else {
        let needed = HEADER_BYTES.saturating_sub(buf.len());
        return Err(DecodeError::Incomplete { needed });
    };
    let header = Header::parse(header_bytes, max_body_bytes)?;
    let frame_len = header.frame_len();
    let Some(body) = buf.get(HEADER_BYTES..frame_len) else {
        let needed = frame_len.saturating_sub(buf.len());
        return Err(DecodeError::Incomplete { needed });
    };
    let frame = decode_body(&header, body, None)?;
    Ok((frame, frame_len))
}

/// Checks the checksum and frame type, then decodes the body (`shared`:
/// the same bytes, for WRITE data to be sliced from rather than copied).
pub(crate) fn decode_body(
    header: &Header,
    body: &[u8],
    shared: Option<&bytes::Bytes>,
) -> Result<Frame, DecodeError> {
    let kind = header.verify(body)?;
    let frame = body::read_body(kind, body, shared)?;
    debug_assert_eq!(frame.kind(), kind);
    Ok(frame)
}
