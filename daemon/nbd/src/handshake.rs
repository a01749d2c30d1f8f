//! Fixed newstyle negotiation: greeting, client flags, then options until
//! the client picks an export (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`),
//! aborts, or breaks a rule (then the connection is closed).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::NbdError;
use super::export::{find_export, transmission_flags, Export, Limits};
use super::protocol::*;

/// Longest option body read; longer ones get `NBD_REP_ERR_TOO_BIG` and the
/// connection is closed (the body is not read, so the stream cannot be
/// resynchronised). Room for the longest name plus info requests.
pub const OPTION_DATA_BYTES_MAX: u32 = 16 << 10;
/// Options one handshake may send before it is taken as abuse.
pub const OPTIONS_MAX: usize = 256;

/// What the handshake agreed on.
pub struct Negotiated {
    pub export: Export,
    pub structured_replies: bool,
    pub transmission_flags: u16,
}

struct State<'a> {
    exports: &'a [Export],
    limits: &'a Limits,
    no_zeroes: bool,
    structured_replies: bool,
}

/// Runs the handshake. `Ok(None)`: the client aborted with `NBD_OPT_ABORT`.
pub async fn negotiate<S>(
    stream: &mut S,
    exports: &[Export],
    limits: &Limits,
) -> Result<Option<Negotiated>, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&encode_greeting()).await?;
    stream.flush().await?;
    let mut client_flags = [0u8; 4];
    stream.read_exact(&mut client_flags).await?;
    let client_flags = parse_client_flags(client_flags)?;
    let mut state = State {
        exports,
        limits,
        no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
        structured_replies: false,
    };
    for _ in 0..OPTIONS_MAX {
        let mut header = [0u8; OPTION_HEADER_BYTES];
        stream.read_exact(&mut header).await?;
        let header = parse_option_header(&header)?;
        if header.length > OPTION_DATA_BYTES_MAX {
            return Err(refuse_too_long(stream, header).await);
        }
        let mut data = vec![0u8; header.length as usize];
        stream.read_exact(&mut data).await?;
        let mut out = Vec::new();
        let outcome = state.handle_option(header.option, &data, &mut out)?;
        stream.write_all(&out).await?;
        stream.flush().await?;
        match outcome {
            Outcome::Continue => {}
            Outcome::Abort => return Ok(None),
            Outcome::Transmit(negotiated) => return Ok(Some(negotiated)),
        }
    }
    Err(NbdError::TooManyOptions { limit: OPTIONS_MAX })
}

async fn refuse_too_long<S>(stream: &mut S, header: OptionHeader) -> NbdError
where
    S: AsyncWrite + Unpin,
{
    if header.option != OPT_EXPORT_NAME {
        let message = format!("option data over {OPTION_DATA_BYTES_MAX} bytes");
        let reply = encode_option_reply(header.option, REP_ERR_TOO_BIG, message.as_bytes());
        // Best effort: the connection is closed either way.
        let _ = stream.write_all(&reply).await;
        let _ = stream.flush().await;
    }
    NbdError::OptionTooLong {
        option: header.option,
        length: header.length,
        limit: OPTION_DATA_BYTES_MAX,
    }
}

enum Outcome {
    Continue,
    Abort,
    Transmit(Negotiated),
}

impl State<'_> {
    /// Answers one option into `out`.
    fn handle_option(
        &mut self,
        option: u32,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Outcome, NbdError> {
        match option {
            OPT_EXPORT_NAME => self.export_name(data, out).map(Outcome::Transmit),
            OPT_ABORT => {
                out.extend(encode_option_reply(option, REP_ACK, &[]));
                Ok(Outcome::Abort)
            }
            OPT_LIST if data.is_empty() => {
                for export in self.exports {
                    let server = encode_rep_server(&export.name, &export.description);
                    out.extend(encode_option_reply(option, REP_SERVER, &server));
                }
                out.extend(encode_option_reply(option, REP_ACK, &[]));
                Ok(Outcome::Continue)
            }
            OPT_STARTTLS if data.is_empty() => {
                error_reply(out, option, REP_ERR_POLICY, "TLS is not configured");
                Ok(Outcome::Continue)
            }
            OPT_STRUCTURED_REPLY if data.is_empty() => {
                self.structured_replies = true;
                out.extend(encode_option_reply(option, REP_ACK, &[]));
                Ok(Outcome::Continue)
            }
            OPT_LIST | OPT_STARTTLS | OPT_STRUCTURED_REPLY => {
                error_reply(out, option, REP_ERR_INVALID, "this option takes no data");
                Ok(Outcome::Continue)
            }
            OPT_INFO | OPT_GO => Ok(self.info_or_go(option, data, out)),
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                error_reply(out, option, REP_ERR_UNSUP, "no metadata contexts");
                Ok(Outcome::Continue)
            }
            _ => {
                error_reply(out, option, REP_ERR_UNSUP, "option not supported");
                Ok(Outcome::Continue)
            }
        }
    }

    /// `NBD_OPT_EXPORT_NAME`: cannot return an error, so an unknown name
    /// ends the connection.
    fn export_name(&self, data: &[u8], out: &mut Vec<u8>) -> Result<Negotiated, NbdError> {
        let Some(export) = find_export(self.exports, data) else {
            return Err(NbdError::UnknownExport {
                name: String::from_utf8_lossy(data).into_owned(),
            });
        };
        let negotiated = self.negotiated(export);
        out.extend(encode_export_name_reply(
            export.backend.size_bytes(),
            negotiated.transmission_flags,
            self.no_zeroes,
        ));
        Ok(negotiated)
    }

    fn info_or_go(&self, option: u32, data: &[u8], out: &mut Vec<u8>) -> Outcome {
        let request = match parse_info_request(data) {
            Ok(request) => request,
            Err(error) => {
                error_reply(out, option, REP_ERR_INVALID, &error.to_string());
                return Outcome::Continue;
            }
        };
        let Some(export) = find_export(self.exports, &request.name) else {
            error_reply(out, option, REP_ERR_UNKNOWN, "no such export");
            return Outcome::Continue;
        };
        let negotiated = self.negotiated(export);
        let size_bytes = export.backend.size_bytes();
        let info = encode_info_export(size_bytes, negotiated.transmission_flags);
        out.extend(encode_option_reply(option, REP_INFO, &info));
        let name = encode_info_string(INFO_NAME, &export.name);
        out.extend(encode_option_reply(option, REP_INFO, &name));
        if request.info_types.contains(&INFO_DESCRIPTION) {
            let description = encode_info_string(INFO_DESCRIPTION, &export.description);
            out.extend(encode_option_reply(option, REP_INFO, &description));
        }
        // Sent whether asked or not: the maximum payload may be below the
        // 32 MiB default, and clients ignore what they did not ask for.
        let block_size = encode_info_block_size(
            BLOCK_SIZE_MIN,
            BLOCK_SIZE_PREFERRED,
            self.limits.request_bytes_max,
        );
        out.extend(encode_option_reply(option, REP_INFO, &block_size));
        out.extend(encode_option_reply(option, REP_ACK, &[]));
        if option == OPT_GO {
            Outcome::Transmit(negotiated)
        } else {
            Outcome::Continue
        }
    }

    fn negotiated(&self, export: &Export) -> Negotiated {
        Negotiated {
            export: export.clone(),
            structured_replies: self.structured_replies,
            transmission_flags: transmission_flags(export.backend.as_ref()),
        }
    }
}

fn error_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, message: &str) {
    debug_assert!(reply_type & (1 << 31) != 0, "error replies have bit 31 set");
    out.extend(encode_option_reply(option, reply_type, message.as_bytes()));
}
