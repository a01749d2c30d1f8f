//! NBD wire values and codecs: magics, flags, option/command/reply
//! numbers, and the parsers for what a client sends.
//!
//! Everything here is pure: parsers take byte slices, check every length
//! before using it, and return [`ParseError`] instead of panicking, whatever
//! the input (see `proptests.rs`). All integers are big-endian, as the
//! protocol (doc/proto.md in NetworkBlockDevice/nbd) requires.

use super::error::ParseError;

/// `NBDMAGIC`, first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle greeting magic, and the magic of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply (fixed newstyle).
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Server handshake flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
/// Every client flag this server understands; any other bit closes.
pub const CLIENT_FLAGS_KNOWN: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

/// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Option numbers.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

/// Information types of `NBD_OPT_INFO` / `NBD_OPT_GO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Structured reply flags and chunk types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// Error values of the transmission phase.
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ESHUTDOWN: u32 = 108;

/// Bytes of the server's greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub const GREETING_BYTES: usize = 18;
/// Bytes of an option header: IHAVEOPT, option, length.
pub const OPTION_HEADER_BYTES: usize = 16;
/// Bytes of a request header.
pub const REQUEST_BYTES: usize = 28;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_BYTES: usize = 16;
/// Bytes of a structured reply chunk header.
pub const CHUNK_HEADER_BYTES: usize = 20;
/// Zero padding after `NBD_OPT_EXPORT_NAME`'s reply unless NO_ZEROES.
pub const EXPORT_NAME_ZEROES_BYTES: usize = 124;
/// Longest string (export name, description, message) the spec allows.
pub const STRING_BYTES_MAX: usize = 4096;
/// Block size constraints advertised in `NBD_INFO_BLOCK_SIZE`.
pub const BLOCK_SIZE_MIN: u32 = 1;
pub const BLOCK_SIZE_PREFERRED: u32 = 4096;

/// The server's greeting (fixed newstyle, NO_ZEROES offered).
pub fn encode_greeting() -> [u8; GREETING_BYTES] {
    let mut out = [0u8; GREETING_BYTES];
    out[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// Client flags, checked: unknown bits and a client that does not speak
/// fixed newstyle are refused (the server then closes).
pub fn parse_client_flags(bytes: [u8; 4]) -> Result<u32, ParseError> {
    let flags = u32::from_be_bytes(bytes);
    if flags & !CLIENT_FLAGS_KNOWN != 0 {
        return Err(ParseError::ClientFlagsUnknown { flags });
    }
    if flags & FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(ParseError::NotFixedNewstyle { flags });
    }
    Ok(flags)
}

/// Header of one option sent by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

pub fn parse_option_header(bytes: &[u8]) -> Result<OptionHeader, ParseError> {
    let bytes: &[u8; OPTION_HEADER_BYTES] = bytes.try_into().map_err(|_| ParseError::Short {
        what: "option header",
        length: bytes.len(),
    })?;
    let magic = be_u64(bytes, 0);
    if magic != IHAVEOPT {
        return Err(ParseError::OptionMagic { magic });
    }
    Ok(OptionHeader {
        option: be_u32(bytes, 8),
        length: be_u32(bytes, 12),
    })
}

/// Body of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name as sent (bytes; compared exactly, not decoded).
    pub name: Vec<u8>,
    /// Information types requested, in the client's order.
    pub info_types: Vec<u16>,
}

pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest, ParseError> {
    let name_length = read_u32(data, 0, "info name length")? as usize;
    let name_end = 4usize
        .checked_add(name_length)
        .filter(|end| *end <= data.len())
        .ok_or(ParseError::Short {
            what: "info name",
            length: data.len(),
        })?;
    if name_length > STRING_BYTES_MAX {
        return Err(ParseError::StringTooLong {
            length: name_length,
        });
    }
    let count = read_u16(data, name_end, "info request count")? as usize;
    let list = &data[name_end + 2..];
    if list.len() != count * 2 {
        return Err(ParseError::InfoListLength {
            count,
            length: list.len(),
        });
    }
    let info_types = list
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect();
    Ok(InfoRequest {
        name: data[4..name_end].to_vec(),
        info_types,
    })
}

/// One transmission request header (the payload of a WRITE follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

pub fn parse_request(bytes: &[u8]) -> Result<Request, ParseError> {
    let bytes: &[u8; REQUEST_BYTES] = bytes.try_into().map_err(|_| ParseError::Short {
        what: "request",
        length: bytes.len(),
    })?;
    let magic = be_u32(bytes, 0);
    if magic != REQUEST_MAGIC {
        return Err(ParseError::RequestMagic { magic });
    }
    Ok(Request {
        flags: u16::from_be_bytes([bytes[4], bytes[5]]),
        command: u16::from_be_bytes([bytes[6], bytes[7]]),
        cookie: be_u64(bytes, 8),
        offset: be_u64(bytes, 16),
        length: be_u32(bytes, 24),
    })
}

/// An option reply: header plus `data`.
pub fn encode_option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let length = u32::try_from(data.len()).expect("option reply data is bounded by the caller");
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Payload of `NBD_REP_SERVER`: name, then the description for humans.
pub fn encode_rep_server(name: &str, description: &str) -> Vec<u8> {
    let name = truncate_string(name);
    let description = truncate_string(description);
    let mut out = Vec::with_capacity(4 + name.len() + description.len());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(description);
    out
}

pub fn encode_info_export(size_bytes: u64, transmission_flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    out.extend_from_slice(&size_bytes.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    out
}

/// `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION`.
pub fn encode_info_string(info_type: u16, text: &str) -> Vec<u8> {
    let text = truncate_string(text);
    let mut out = Vec::with_capacity(2 + text.len());
    out.extend_from_slice(&info_type.to_be_bytes());
    out.extend_from_slice(text);
    out
}

pub fn encode_info_block_size(minimum: u32, preferred: u32, maximum: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    out.extend_from_slice(&minimum.to_be_bytes());
    out.extend_from_slice(&preferred.to_be_bytes());
    out.extend_from_slice(&maximum.to_be_bytes());
    out
}

/// Reply to `NBD_OPT_EXPORT_NAME`: size, flags, then 124 zeroes unless the
/// client negotiated NO_ZEROES.
pub fn encode_export_name_reply(size_bytes: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + EXPORT_NAME_ZEROES_BYTES);
    out.extend_from_slice(&size_bytes.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.resize(out.len() + EXPORT_NAME_ZEROES_BYTES, 0);
    }
    out
}

pub fn encode_simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_BYTES] {
    let mut out = [0u8; SIMPLE_REPLY_BYTES];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

pub fn encode_chunk_header(
    flags: u16,
    chunk_type: u16,
    cookie: u64,
    length: u32,
) -> [u8; CHUNK_HEADER_BYTES] {
    let mut out = [0u8; CHUNK_HEADER_BYTES];
    out[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&chunk_type.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..20].copy_from_slice(&length.to_be_bytes());
    out
}

/// A whole `NBD_REPLY_TYPE_ERROR` chunk, marked DONE.
pub fn encode_error_chunk(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    debug_assert!(error != 0, "an error chunk carries a nonzero error");
    let message = truncate_string(message);
    let payload_bytes = 6 + message.len();
    let mut out = Vec::with_capacity(CHUNK_HEADER_BYTES + payload_bytes);
    out.extend_from_slice(&encode_chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        payload_bytes as u32,
    ));
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Header of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk marked DONE: the chunk
/// header and the offset; `data_bytes` of data follow it.
pub fn encode_offset_data_header(cookie: u64, offset: u64, data_bytes: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHUNK_HEADER_BYTES + 8);
    let length = data_bytes
        .checked_add(8)
        .expect("read length is bounded by request_bytes_max");
    out.extend_from_slice(&encode_chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        cookie,
        length,
    ));
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// Strings on the wire are at most [`STRING_BYTES_MAX`] bytes; longer ones
/// are cut (possibly mid-character: they are for humans, and clients must
/// cope with any bytes).
fn truncate_string(text: &str) -> &[u8] {
    let bytes = text.as_bytes();
    &bytes[..bytes.len().min(STRING_BYTES_MAX)]
}

fn be_u64<const N: usize>(bytes: &[u8; N], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(word)
}

fn be_u32<const N: usize>(bytes: &[u8; N], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(word)
}

fn read_u32(data: &[u8], at: usize, what: &'static str) -> Result<u32, ParseError> {
    data.get(at..at.saturating_add(4))
        .and_then(|slice| <[u8; 4]>::try_from(slice).ok())
        .map(u32::from_be_bytes)
        .ok_or(ParseError::Short {
            what,
            length: data.len(),
        })
}

fn read_u16(data: &[u8], at: usize, what: &'static str) -> Result<u16, ParseError> {
    data.get(at..at.saturating_add(2))
        .and_then(|slice| <[u8; 2]>::try_from(slice).ok())
        .map(u16::from_be_bytes)
        .ok_or(ParseError::Short {
            what,
            length: data.len(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_layout() {
        let greeting = encode_greeting();
        assert_eq!(&greeting[0..8], b"NBDMAGIC");
        assert_eq!(&greeting[8..16], b"IHAVEOPT");
        assert_eq!(greeting[16..18], [0, 3]);
    }

    #[test]
    fn client_flags() {
        assert_eq!(parse_client_flags([0, 0, 0, 3]), Ok(3));
        assert_eq!(parse_client_flags([0, 0, 0, 1]), Ok(1));
        assert!(matches!(
            parse_client_flags([0, 0, 0, 0]),
            Err(ParseError::NotFixedNewstyle { .. })
        ));
        assert!(matches!(
            parse_client_flags([0, 0, 0, 5]),
            Err(ParseError::ClientFlagsUnknown { flags: 5 })
        ));
    }

    #[test]
    fn info_request_round_trip_and_bounds() {
        let mut data = Vec::new();
        data.extend_from_slice(&3u32.to_be_bytes());
        data.extend_from_slice(b"abc");
        data.extend_from_slice(&2u16.to_be_bytes());
        data.extend_from_slice(&INFO_NAME.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let parsed = parse_info_request(&data).unwrap();
        assert_eq!(parsed.name, b"abc");
        assert_eq!(parsed.info_types, vec![INFO_NAME, INFO_BLOCK_SIZE]);
        // One request short, one extra byte, a name past the end.
        assert!(parse_info_request(&data[..data.len() - 2]).is_err());
        let mut longer = data.clone();
        longer.push(0);
        assert!(parse_info_request(&longer).is_err());
        let mut bad_name = data.clone();
        bad_name[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_info_request(&bad_name).is_err());
    }

    #[test]
    fn request_magic_checked() {
        let mut bytes = [0u8; REQUEST_BYTES];
        bytes[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        bytes[6..8].copy_from_slice(&CMD_WRITE.to_be_bytes());
        bytes[24..28].copy_from_slice(&512u32.to_be_bytes());
        let request = parse_request(&bytes).unwrap();
        assert_eq!((request.command, request.length), (CMD_WRITE, 512));
        bytes[0] ^= 1;
        assert!(matches!(
            parse_request(&bytes),
            Err(ParseError::RequestMagic { .. })
        ));
        assert!(parse_request(&bytes[..27]).is_err());
    }

    #[test]
    fn error_chunk_layout() {
        let chunk = encode_error_chunk(7, EINVAL, "bad");
        assert_eq!(chunk.len(), CHUNK_HEADER_BYTES + 6 + 3);
        assert_eq!(&chunk[16..20], &9u32.to_be_bytes());
        assert_eq!(&chunk[20..24], &EINVAL.to_be_bytes());
    }
}
