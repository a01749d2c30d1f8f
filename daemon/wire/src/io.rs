//! Reading and writing one frame at a time on an async stream.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{self, encode};
use super::error::{ReadError, WriteError};
use super::frame::Frame;
use super::header::Header;
use super::HEADER_BYTES;

/// Reads one frame.
///
/// Returns `Ok(None)` when the stream ends cleanly before the first header
/// byte, and `ReadError::ConnectionClosed` when it ends inside a frame. The
/// header is validated (body length against `max_body_bytes`, clamped to
/// [`super::BODY_BYTES_LIMIT`]) before the body buffer is allocated or any
/// body byte is read. On a decode error, send an ERROR frame with
/// [`ReadError::error_code`] and close: the stream position is lost.
///
/// Not cancel-safe: dropping the future mid-frame loses the bytes read so
/// far, so do not race it in `select!` against anything but shutdown.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_body_bytes: u32,
) -> Result<Option<Frame>, ReadError> {
    let mut header_bytes = [0u8; HEADER_BYTES];
    match read_full(reader, &mut header_bytes).await? {
        0 => return Ok(None),
        HEADER_BYTES => {}
        received => {
            let expected = HEADER_BYTES;
            return Err(ReadError::ConnectionClosed { received, expected });
        }
    }
    let header = Header::parse(&header_bytes, max_body_bytes)?;
    let body = read_body(reader, header.body_len()).await?;
    if body.len() < header.body_len() {
        return Err(ReadError::ConnectionClosed {
            received: HEADER_BYTES + body.len(),
            expected: header.frame_len(),
        });
    }
    let body = bytes::Bytes::from(body);
    Ok(Some(codec::decode_body(&header, &body, Some(&body))?))
}

/// Reads up to `length` bytes (fewer only if the stream ends) into a new
/// vector without zeroing it first: `read_buf` fills the spare capacity,
/// which is exactly what is left to read.
async fn read_body<R: AsyncRead + Unpin>(reader: &mut R, length: usize) -> io::Result<Vec<u8>> {
    let mut body = Vec::with_capacity(length);
    while body.len() < length {
        match reader.read_buf(&mut body).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(body)
}

/// Encodes `frame`, writes it whole and flushes, so the frame is on its way
/// when this returns (a TLS stream otherwise may hold it back). Nothing is
/// written if encoding fails. To send many small frames with one flush,
/// [`encode`] them into one buffer and write that instead.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
) -> Result<(), WriteError> {
    let mut bytes = Vec::new();
    encode(frame, &mut bytes)?;
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match reader.read(rest).await {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{duplex, ReadBuf};

    use super::*;
    use crate::codec_tests::{raw_frame, samples};
    use crate::{
        DecodeError, ErrorCode, FrameKind, Heartbeat, WriteBatch, WriteError, BODY_BYTES_DEFAULT,
        FORMAT_VERSION, MAGIC,
    };

    fn heartbeat(sent_unix_ns: u64) -> Frame {
        Frame::Heartbeat(Heartbeat {
            sent_unix_ns,
            echo_unix_ns: 0,
        })
    }

    /// Feeds `bytes` through a small duplex (so reads come back in pieces),
    /// closes the write side, and collects what `read_frame` returns.
    async fn read_all(bytes: Vec<u8>, max_body_bytes: u32) -> (Vec<Frame>, Option<ReadError>) {
        let (mut client, mut server) = duplex(7);
        let writer = async move {
            client.write_all(&bytes).await.unwrap();
        };
        let reader = async {
            let mut frames = Vec::new();
            loop {
                match read_frame(&mut server, max_body_bytes).await {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => return (frames, None),
                    Err(error) => return (frames, Some(error)),
                }
            }
        };
        tokio::join!(writer, reader).1
    }

    #[tokio::test]
    async fn frames_back_to_back_then_clean_eof() {
        let frames = samples();
        let (mut client, mut server) = duplex(64);
        let sent = frames.clone();
        let writer = async move {
            for frame in &sent {
                write_frame(&mut client, frame).await.unwrap();
            }
        };
        let reader = async {
            let mut received = Vec::new();
            while let Some(frame) = read_frame(&mut server, BODY_BYTES_DEFAULT).await.unwrap() {
                received.push(frame);
            }
            received
        };
        let ((), received) = tokio::join!(writer, reader);
        assert_eq!(received, frames);
    }

    #[tokio::test]
    async fn two_frames_in_one_write() {
        let mut bytes = Vec::new();
        encode(&heartbeat(1), &mut bytes).unwrap();
        encode(&heartbeat(2), &mut bytes).unwrap();
        let (frames, error) = read_all(bytes, BODY_BYTES_DEFAULT).await;
        assert_eq!(frames, vec![heartbeat(1), heartbeat(2)]);
        assert!(error.is_none(), "{error:?}");
    }

    #[tokio::test]
    async fn eof_before_any_byte_is_none() {
        let (frames, error) = read_all(Vec::new(), BODY_BYTES_DEFAULT).await;
        assert!(frames.is_empty());
        assert!(error.is_none());
    }

    #[tokio::test]
    async fn eof_inside_header_is_an_error() {
        let mut bytes = Vec::new();
        encode(&heartbeat(1), &mut bytes).unwrap();
        bytes.truncate(5);
        let (_, error) = read_all(bytes, BODY_BYTES_DEFAULT).await;
        assert!(matches!(
            error,
            Some(ReadError::ConnectionClosed {
                received: 5,
                expected: HEADER_BYTES
            })
        ));
    }

    #[tokio::test]
    async fn eof_inside_body_is_an_error() {
        let mut bytes = Vec::new();
        encode(&heartbeat(1), &mut bytes).unwrap();
        encode(&heartbeat(2), &mut bytes).unwrap();
        let frame_len = bytes.len() / 2;
        bytes.truncate(bytes.len() - 3);
        let (frames, error) = read_all(bytes, BODY_BYTES_DEFAULT).await;
        assert_eq!(frames, vec![heartbeat(1)]);
        match error {
            Some(ReadError::ConnectionClosed { received, expected }) => {
                assert_eq!((received, expected), (frame_len - 3, frame_len));
            }
            other => panic!("expected ConnectionClosed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn oversize_length_is_rejected_before_the_body_is_read() {
        let max = 1024;
        // A header declaring max + 1 body bytes, then bytes that must stay unread.
        let mut bytes = raw_frame(
            MAGIC,
            FORMAT_VERSION,
            FrameKind::Write.code(),
            0,
            max + 1,
            &[],
        );
        bytes.extend_from_slice(b"NEXT");
        let (mut client, mut server) = duplex(1024);
        client.write_all(&bytes).await.unwrap();
        drop(client);
        let error = read_frame(&mut server, max).await.unwrap_err();
        let expected = DecodeError::BodyTooLarge {
            length: max + 1,
            max,
        };
        assert!(
            matches!(&error, ReadError::Decode(found) if *found == expected),
            "{error:?}"
        );
        assert_eq!(error.error_code(), Some(ErrorCode::FrameTooLarge));
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"NEXT");
    }

    #[tokio::test]
    async fn corrupt_body_is_a_decode_error() {
        let mut bytes = Vec::new();
        encode(&heartbeat(1), &mut bytes).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let (_, error) = read_all(bytes, BODY_BYTES_DEFAULT).await;
        let error = error.expect("a corrupt frame must not decode");
        assert!(matches!(
            error,
            ReadError::Decode(DecodeError::Checksum { .. })
        ));
        assert_eq!(error.error_code(), Some(ErrorCode::Malformed));
    }

    #[tokio::test]
    async fn io_error_is_passed_through() {
        struct Failing;
        impl AsyncRead for Failing {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionReset)))
            }
        }
        let error = read_frame(&mut Failing, BODY_BYTES_DEFAULT)
            .await
            .unwrap_err();
        assert!(matches!(&error, ReadError::Io(io) if io.kind() == io::ErrorKind::ConnectionReset));
        assert_eq!(error.error_code(), None);
    }

    #[tokio::test]
    async fn write_frame_sends_nothing_when_encoding_fails() {
        let (mut client, mut server) = duplex(64);
        let empty = Frame::Write(WriteBatch { writes: Vec::new() });
        let error = write_frame(&mut client, &empty).await.unwrap_err();
        assert!(matches!(error, WriteError::Encode(_)));
        drop(client);
        let frame = read_frame(&mut server, BODY_BYTES_DEFAULT).await.unwrap();
        assert_eq!(frame, None);
    }
}
