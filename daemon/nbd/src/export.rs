//! Exports (a name over a backend), the server's limits, and the
//! transmission flags an export advertises.

use std::sync::Arc;

use super::backend::BlockBackend;
use super::protocol::{
    BLOCK_SIZE_PREFERRED, FLAG_CAN_MULTI_CONN, FLAG_HAS_FLAGS, FLAG_READ_ONLY, FLAG_SEND_FLUSH,
    FLAG_SEND_FUA, FLAG_SEND_TRIM, FLAG_SEND_WRITE_ZEROES,
};

/// One named export.
#[derive(Clone)]
pub struct Export {
    /// Name clients ask for (`nbd://host/NAME`); at most 4096 bytes.
    pub name: String,
    /// Shown to humans by `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    pub description: String,
    pub backend: Arc<dyn BlockBackend>,
}

/// Hard ceiling on `request_bytes_max`, whatever is configured.
pub const REQUEST_BYTES_LIMIT: u32 = 256 << 20;

/// Bounds on what clients can make the server hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest READ or WRITE payload (advertised as the maximum payload in
    /// `NBD_INFO_BLOCK_SIZE`). Default 32 MiB.
    pub request_bytes_max: u32,
    /// Requests of one connection being served at once. Default 64.
    pub in_flight_requests_max: usize,
    /// READ and WRITE payload bytes of one connection held at once
    /// (received and not yet written, or read and not yet sent). Default
    /// 64 MiB.
    pub in_flight_bytes_max: usize,
    /// Connections served at once by [`super::NbdServer::serve`]; more are
    /// closed at accept. Default 64.
    pub connections_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            request_bytes_max: 32 << 20,
            in_flight_requests_max: 64,
            in_flight_bytes_max: 64 << 20,
            connections_max: 64,
        }
    }
}

impl Limits {
    /// The limits made consistent: a request limit of at least the
    /// preferred block size and at most [`REQUEST_BYTES_LIMIT`], a byte
    /// budget that holds at least one largest request (so a request never
    /// waits for permits that cannot exist), and counts of at least one.
    pub fn normalized(self) -> Limits {
        let request_bytes_max = self
            .request_bytes_max
            .clamp(BLOCK_SIZE_PREFERRED, REQUEST_BYTES_LIMIT);
        let in_flight_bytes_max = self
            .in_flight_bytes_max
            .clamp(request_bytes_max as usize, u32::MAX as usize);
        Limits {
            request_bytes_max,
            in_flight_requests_max: self.in_flight_requests_max.clamp(1, 1 << 16),
            in_flight_bytes_max,
            connections_max: self.connections_max.max(1),
        }
    }
}

/// Transmission flags of an export, from what its backend can do.
pub fn transmission_flags(backend: &dyn BlockBackend) -> u16 {
    let mut flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA;
    if backend.read_only() {
        flags |= FLAG_READ_ONLY;
    } else {
        if backend.can_trim() {
            flags |= FLAG_SEND_TRIM;
        }
        if backend.can_write_zeroes() {
            flags |= FLAG_SEND_WRITE_ZEROES;
        }
    }
    if backend.can_multi_conn() {
        flags |= FLAG_CAN_MULTI_CONN;
    }
    flags
}

/// The export a client named: an exact match, or for the empty name the
/// only export when there is exactly one.
pub fn find_export<'a>(exports: &'a [Export], name: &[u8]) -> Option<&'a Export> {
    exports
        .iter()
        .find(|export| export.name.as_bytes() == name)
        .or(match exports {
            [only] if name.is_empty() => Some(only),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_normalized() {
        let limits = Limits {
            request_bytes_max: 1,
            in_flight_requests_max: 0,
            in_flight_bytes_max: 0,
            connections_max: 0,
        }
        .normalized();
        assert_eq!(limits.request_bytes_max, BLOCK_SIZE_PREFERRED);
        assert_eq!(limits.in_flight_bytes_max, BLOCK_SIZE_PREFERRED as usize);
        assert_eq!(limits.in_flight_requests_max, 1);
        assert_eq!(limits.connections_max, 1);
        assert_eq!(Limits::default().normalized(), Limits::default());
    }
}
