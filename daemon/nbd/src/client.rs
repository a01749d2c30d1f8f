//! A small NBD client: fixed newstyle, `NBD_OPT_GO`, simple replies, one
//! request at a time. Enough to write a workload into a tap's export and to
//! read any export back (`drgw demo`, recovery exports), with no external
//! tool. It speaks the standard protocol, so it works against any NBD
//! server, not only ours.
//!
//! One request in flight per connection keeps it simple and its memory
//! bounded (one request's payload); open several connections for depth.
//! Every wait is bounded: the handshake by [`HANDSHAKE_TIMEOUT`], each
//! request by [`REQUEST_TIMEOUT`].

use super::protocol::{
    CMD_DISC, CMD_FLUSH, CMD_READ, CMD_WRITE, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES,
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, FLAG_READ_ONLY, IHAVEOPT, INFO_BLOCK_SIZE, INFO_EXPORT,
    NBD_MAGIC, OPTION_REPLY_MAGIC, OPT_GO, REP_ACK, REP_INFO, REQUEST_BYTES, REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC, STRING_BYTES_MAX,
};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The whole handshake, connect included.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// One request, from sending it to its whole reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest payload of one request; longer reads and writes are split.
pub const PAYLOAD_BYTES_MAX: usize = 4 << 20;
/// Largest option reply accepted during the handshake.
const OPTION_REPLY_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("NBD server {address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("NBD server {address} did not answer within {seconds} s")]
    Timeout { address: String, seconds: u64 },
    #[error("{address} is not a fixed-newstyle NBD server ({what})")]
    NotNbd { address: String, what: String },
    #[error("NBD server {address} refused export {export:?}: {message} (reply type {reply:#x})")]
    ExportRefused {
        address: String,
        export: String,
        reply: u32,
        message: String,
    },
    #[error("NBD server {address} broke the protocol: {what}")]
    Protocol { address: String, what: String },
    #[error("NBD {command} of {length} bytes at offset {offset} on {address}/{export} failed with error {errno}")]
    Command {
        address: String,
        export: String,
        command: &'static str,
        offset: u64,
        length: usize,
        errno: u32,
    },
    #[error("{length} bytes at offset {offset} are past the end of {export} ({size_bytes} bytes)")]
    OutOfRange {
        export: String,
        offset: u64,
        length: usize,
        size_bytes: u64,
    },
}

/// One connection to one export.
pub struct NbdClient {
    stream: TcpStream,
    address: String,
    export: String,
    size_bytes: u64,
    transmission_flags: u16,
    payload_bytes_max: usize,
    cookie: u64,
}

impl NbdClient {
    /// Connects to `address` (`HOST:PORT`) and opens `export` with `NBD_OPT_GO`.
    pub async fn connect(address: &str, export: &str) -> Result<NbdClient, ClientError> {
        let timeout = |_| ClientError::Timeout {
            address: address.to_string(),
            seconds: HANDSHAKE_TIMEOUT.as_secs(),
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, NbdClient::handshake(address, export))
            .await
            .map_err(timeout)?
    }

    async fn handshake(address: &str, export: &str) -> Result<NbdClient, ClientError> {
        let io = |source| ClientError::Io {
            address: address.to_string(),
            source,
        };
        let mut stream = TcpStream::connect(address).await.map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting).await.map_err(io)?;
        let magic = u64::from_be_bytes(greeting[0..8].try_into().expect("8 bytes"));
        let option_magic = u64::from_be_bytes(greeting[8..16].try_into().expect("8 bytes"));
        let flags = u16::from_be_bytes([greeting[16], greeting[17]]);
        if magic != NBD_MAGIC || option_magic != IHAVEOPT || flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(ClientError::NotNbd {
                address: address.to_string(),
                what: format!("greeting {magic:#x} {option_magic:#x}, flags {flags:#x}"),
            });
        }
        let mut client_flags = FLAG_C_FIXED_NEWSTYLE;
        if flags & FLAG_NO_ZEROES != 0 {
            client_flags |= FLAG_C_NO_ZEROES;
        }
        stream
            .write_all(&client_flags.to_be_bytes())
            .await
            .map_err(io)?;
        stream.write_all(&encode_go(export)).await.map_err(io)?;
        let mut client = NbdClient {
            stream,
            address: address.to_string(),
            export: export.to_string(),
            size_bytes: 0,
            transmission_flags: 0,
            payload_bytes_max: PAYLOAD_BYTES_MAX,
            cookie: 0,
        };
        client.read_go_replies().await?;
        Ok(client)
    }

    /// Reads `INFO` replies until `ACK`; the size must have been sent.
    async fn read_go_replies(&mut self) -> Result<(), ClientError> {
        let mut have_size = false;
        loop {
            let mut header = [0u8; 20];
            self.stream
                .read_exact(&mut header)
                .await
                .map_err(|source| self.io(source))?;
            let magic = u64::from_be_bytes(header[0..8].try_into().expect("8 bytes"));
            let reply = u32::from_be_bytes(header[12..16].try_into().expect("4 bytes"));
            let length = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes")) as usize;
            if magic != OPTION_REPLY_MAGIC || length > OPTION_REPLY_BYTES_MAX {
                return Err(
                    self.protocol(format!("option reply magic {magic:#x}, length {length}"))
                );
            }
            let mut data = vec![0u8; length];
            self.stream
                .read_exact(&mut data)
                .await
                .map_err(|source| self.io(source))?;
            match reply {
                REP_ACK if have_size => return Ok(()),
                REP_ACK => return Err(self.protocol("GO acknowledged without the size".into())),
                REP_INFO => have_size |= self.take_info(&data)?,
                error if error & (1 << 31) != 0 => {
                    let message = String::from_utf8_lossy(&data[..length.min(STRING_BYTES_MAX)]);
                    return Err(ClientError::ExportRefused {
                        address: self.address.clone(),
                        export: self.export.clone(),
                        reply,
                        message: message.into_owned(),
                    });
                }
                _ => return Err(self.protocol(format!("unexpected option reply {reply:#x}"))),
            }
        }
    }

    /// Takes one `NBD_REP_INFO`; true when it carried the export's size.
    fn take_info(&mut self, data: &[u8]) -> Result<bool, ClientError> {
        let short = || self.protocol(format!("short INFO reply ({} bytes)", data.len()));
        let kind = u16::from_be_bytes(data.get(0..2).ok_or_else(short)?.try_into().expect("2"));
        match kind {
            INFO_EXPORT => {
                let body = data.get(2..12).ok_or_else(short)?;
                self.size_bytes = u64::from_be_bytes(body[0..8].try_into().expect("8 bytes"));
                self.transmission_flags = u16::from_be_bytes([body[8], body[9]]);
                Ok(true)
            }
            INFO_BLOCK_SIZE => {
                let body = data.get(2..14).ok_or_else(short)?;
                let maximum = u32::from_be_bytes(body[8..12].try_into().expect("4 bytes"));
                if maximum >= 4096 {
                    self.payload_bytes_max = PAYLOAD_BYTES_MAX.min(maximum as usize);
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn read_only(&self) -> bool {
        self.transmission_flags & FLAG_READ_ONLY != 0
    }

    /// `HOST:PORT/EXPORT`, for messages.
    pub fn describe(&self) -> String {
        format!("nbd://{}/{}", self.address, self.export)
    }

    /// Fills `buffer` from `offset` (split into requests of at most the
    /// server's maximum payload).
    pub async fn read(&mut self, offset: u64, buffer: &mut [u8]) -> Result<(), ClientError> {
        self.check_range(offset, buffer.len())?;
        let step = self.payload_bytes_max;
        for (index, piece) in buffer.chunks_mut(step).enumerate() {
            let at = offset + (index * step) as u64;
            self.request(CMD_READ, "READ", at, piece.len(), None, Some(piece))
                .await?;
        }
        Ok(())
    }

    /// Writes `data` at `offset`; done when the server replied to every piece.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.check_range(offset, data.len())?;
        let step = self.payload_bytes_max;
        for (index, piece) in data.chunks(step).enumerate() {
            let at = offset + (index * step) as u64;
            self.request(CMD_WRITE, "WRITE", at, piece.len(), Some(piece), None)
                .await?;
        }
        Ok(())
    }

    /// Asks the server to persist every write it replied to.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.request(CMD_FLUSH, "FLUSH", 0, 0, None, None).await
    }

    /// Says goodbye (`NBD_CMD_DISC`, no reply) and closes.
    pub async fn disconnect(mut self) -> Result<(), ClientError> {
        let header = self.encode_request(CMD_DISC, 0, 0);
        self.stream
            .write_all(&header)
            .await
            .map_err(|source| self.io(source))?;
        self.stream
            .shutdown()
            .await
            .map_err(|source| self.io(source))
    }

    fn check_range(&self, offset: u64, length: usize) -> Result<(), ClientError> {
        let end = offset.checked_add(length as u64);
        if end.is_none_or(|end| end > self.size_bytes) {
            return Err(ClientError::OutOfRange {
                export: self.export.clone(),
                offset,
                length,
                size_bytes: self.size_bytes,
            });
        }
        Ok(())
    }

    async fn request(
        &mut self,
        command: u16,
        name: &'static str,
        offset: u64,
        length: usize,
        payload: Option<&[u8]>,
        into: Option<&mut [u8]>,
    ) -> Result<(), ClientError> {
        debug_assert!(length <= self.payload_bytes_max);
        let exchange = self.exchange(command, name, offset, length, payload, into);
        let seconds = REQUEST_TIMEOUT.as_secs();
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                address: self.address.clone(),
                seconds,
            }),
        }
    }

    async fn exchange(
        &mut self,
        command: u16,
        name: &'static str,
        offset: u64,
        length: usize,
        payload: Option<&[u8]>,
        into: Option<&mut [u8]>,
    ) -> Result<(), ClientError> {
        let header = self.encode_request(command, offset, length as u32);
        let cookie = self.cookie;
        self.stream
            .write_all(&header)
            .await
            .map_err(|source| self.io(source))?;
        if let Some(payload) = payload {
            self.stream
                .write_all(payload)
                .await
                .map_err(|source| self.io(source))?;
        }
        let mut reply = [0u8; 16];
        self.stream
            .read_exact(&mut reply)
            .await
            .map_err(|source| self.io(source))?;
        let magic = u32::from_be_bytes(reply[0..4].try_into().expect("4 bytes"));
        let errno = u32::from_be_bytes(reply[4..8].try_into().expect("4 bytes"));
        let answered = u64::from_be_bytes(reply[8..16].try_into().expect("8 bytes"));
        if magic != SIMPLE_REPLY_MAGIC || answered != cookie {
            return Err(self.protocol(format!(
                "reply magic {magic:#x} cookie {answered} to request {cookie}"
            )));
        }
        if errno != 0 {
            return Err(ClientError::Command {
                address: self.address.clone(),
                export: self.export.clone(),
                command: name,
                offset,
                length,
                errno,
            });
        }
        if let Some(into) = into {
            self.stream
                .read_exact(into)
                .await
                .map_err(|source| self.io(source))?;
        }
        Ok(())
    }

    fn encode_request(&mut self, command: u16, offset: u64, length: u32) -> [u8; REQUEST_BYTES] {
        self.cookie += 1;
        let mut header = [0u8; REQUEST_BYTES];
        header[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        header[6..8].copy_from_slice(&command.to_be_bytes());
        header[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        header[16..24].copy_from_slice(&offset.to_be_bytes());
        header[24..28].copy_from_slice(&length.to_be_bytes());
        header
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            address: self.address.clone(),
            source,
        }
    }

    fn protocol(&self, what: String) -> ClientError {
        ClientError::Protocol {
            address: self.address.clone(),
            what,
        }
    }
}

/// `NBD_OPT_GO` for `export`, asking for the block sizes.
fn encode_go(export: &str) -> Vec<u8> {
    let name = export.as_bytes();
    let mut option = Vec::with_capacity(16 + 4 + name.len() + 4);
    option.extend_from_slice(&IHAVEOPT.to_be_bytes());
    option.extend_from_slice(&OPT_GO.to_be_bytes());
    option.extend_from_slice(&(4 + name.len() as u32 + 2 + 2).to_be_bytes());
    option.extend_from_slice(&(name.len() as u32).to_be_bytes());
    option.extend_from_slice(name);
    option.extend_from_slice(&1u16.to_be_bytes());
    option.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    option
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Export, FileBackend, Limits, NbdServer};
    use std::sync::Arc;

    /// A server over one 1 MiB file export on 127.0.0.1:0.
    async fn server(directory: &std::path::Path) -> (String, tokio_util::sync::CancellationToken) {
        let path = directory.join("disk.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let export = Export {
            name: "disk".into(),
            description: "test".into(),
            backend: Arc::new(FileBackend::open(&path, false).unwrap()),
        };
        let server = Arc::new(NbdServer::new(vec![export], Limits::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let cancel = tokio_util::sync::CancellationToken::new();
        let tracker = tokio_util::task::TaskTracker::new();
        tokio::spawn(server.serve(listener, tracker, cancel.clone()));
        (address, cancel)
    }

    #[tokio::test]
    async fn writes_then_reads_back_across_request_pieces() {
        let directory = tempfile::tempdir().unwrap();
        let (address, cancel) = server(directory.path()).await;
        let mut client = NbdClient::connect(&address, "disk").await.unwrap();
        assert_eq!(client.size_bytes(), 1 << 20);
        assert!(!client.read_only());
        client.payload_bytes_max = 4096; // force several requests per call
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        client.write(12_345, &data).await.unwrap();
        client.flush().await.unwrap();
        let mut back = vec![0u8; data.len()];
        client.read(12_345, &mut back).await.unwrap();
        assert_eq!(back, data);
        client.disconnect().await.unwrap();
        cancel.cancel();
    }

    #[tokio::test]
    async fn unknown_export_and_out_of_range_are_errors() {
        let directory = tempfile::tempdir().unwrap();
        let (address, cancel) = server(directory.path()).await;
        let refused = NbdClient::connect(&address, "nope").await.err().unwrap();
        assert!(
            matches!(refused, ClientError::ExportRefused { .. }),
            "{refused}"
        );
        let mut client = NbdClient::connect(&address, "disk").await.unwrap();
        let error = client.read((1 << 20) - 10, &mut [0u8; 20]).await.err();
        assert!(matches!(error, Some(ClientError::OutOfRange { .. })));
        cancel.cancel();
    }
}
