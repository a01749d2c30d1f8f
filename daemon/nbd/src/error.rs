//! Errors of the NBD server: what a parser rejected, and why a connection
//! ended. Errors the client is told about in a reply (an errno in a
//! transmission reply, an `NBD_REP_ERR_*` in the handshake) are not errors
//! here: the connection goes on.

use std::io;

/// Bytes from the client that the protocol does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{what} too short: {length} bytes")]
    Short { what: &'static str, length: usize },
    #[error("client flags {flags:#x} carry unknown bits")]
    ClientFlagsUnknown { flags: u32 },
    #[error("client flags {flags:#x} lack FIXED_NEWSTYLE; only fixed newstyle is served")]
    NotFixedNewstyle { flags: u32 },
    #[error("option magic {magic:#018x} is not IHAVEOPT")]
    OptionMagic { magic: u64 },
    #[error("request magic {magic:#010x} is not NBD_REQUEST_MAGIC")]
    RequestMagic { magic: u32 },
    #[error("string of {length} bytes exceeds the 4096-byte limit")]
    StringTooLong { length: usize },
    #[error("information list of {count} entries does not fill the {length} bytes left")]
    InfoListLength { count: usize, length: usize },
}

/// Why a connection ended other than by the client's clean goodbye.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("connection i/o: {0}")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(#[from] ParseError),
    #[error("option {option} carries {length} bytes, more than the {limit}-byte limit")]
    OptionTooLong {
        option: u32,
        length: u32,
        limit: u32,
    },
    #[error("more than {limit} options in one handshake")]
    TooManyOptions { limit: usize },
    #[error("handshake not finished within {seconds} s")]
    HandshakeTimeout { seconds: u64 },
    #[error("NBD_OPT_EXPORT_NAME asked for unknown export {name:?}")]
    UnknownExport { name: String },
    #[error("write of {length} bytes exceeds the {limit}-byte request limit")]
    WriteTooLong { length: u32, limit: u32 },
}
