//! Property tests: no input from a client makes the parsers, the
//! handshake or the request loop panic, and every such session ends.

use std::sync::Arc;

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::protocol::*;
use super::transmission::{check_request, Refusal, Session};
use super::{Export, FileBackend, Limits, NbdServer};

fn scratch_export(size_bytes: u64) -> (tempfile::NamedTempFile, Export) {
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(size_bytes).unwrap();
    let backend = FileBackend::open(file.path(), false).unwrap();
    let export = Export {
        name: "disk".into(),
        description: "scratch".into(),
        backend: Arc::new(backend),
    };
    (file, export)
}

/// Feeds `input` to a fresh connection, then closes the client's side and
/// drains the server's output until the server ends.
fn run_session(server: &Arc<NbdServer>, input: Vec<u8>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut client, server_side) = tokio::io::duplex(64 << 10);
        let serving = tokio::spawn(Arc::clone(server).serve_connection(server_side));
        let (mut client_read, mut client_write) = tokio::io::split(&mut client);
        let feed = async {
            let _ = client_write.write_all(&input).await;
            let _ = client_write.shutdown().await;
        };
        let drain = async {
            let mut sink = Vec::new();
            let _ = client_read.read_to_end(&mut sink).await;
        };
        tokio::join!(feed, drain);
        // The session must end by itself (no panic, no hang) once the input
        // is consumed and the stream is closed.
        let _ = serving.await.expect("server task must not panic");
    });
}

fn go_preface() -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
    bytes.extend_from_slice(&IHAVEOPT.to_be_bytes());
    bytes.extend_from_slice(&OPT_STRUCTURED_REPLY.to_be_bytes());
    bytes.extend_from_slice(&0u32.to_be_bytes());
    bytes.extend_from_slice(&IHAVEOPT.to_be_bytes());
    bytes.extend_from_slice(&OPT_GO.to_be_bytes());
    bytes.extend_from_slice(&6u32.to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    bytes
}

fn request_bytes(command: u16, flags: u16, offset: u64, length: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    bytes.extend_from_slice(&flags.to_be_bytes());
    bytes.extend_from_slice(&command.to_be_bytes());
    bytes.extend_from_slice(&7u64.to_be_bytes());
    bytes.extend_from_slice(&offset.to_be_bytes());
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse_request(&bytes);
        let _ = parse_option_header(&bytes);
        let _ = parse_info_request(&bytes);
        if let Ok(flags) = <[u8; 4]>::try_from(&bytes[..bytes.len().min(4)]) {
            let _ = parse_client_flags(flags);
        }
    }

    #[test]
    fn check_request_never_panics(
        command in 0u16..12, flags in any::<u16>(), offset in any::<u64>(),
        length in any::<u32>(), structured in any::<bool>(), read_only in any::<bool>(),
    ) {
        let (_file, export) = scratch_export(1 << 16);
        let mut transmission_flags = super::export::transmission_flags(export.backend.as_ref());
        if read_only {
            transmission_flags |= FLAG_READ_ONLY;
        }
        let session = Session {
            backend: export.backend,
            structured_replies: structured,
            transmission_flags,
            limits: Limits::default(),
        };
        let request = Request { flags, command, cookie: 1, offset, length };
        if let Err(Refusal::Error { errno, .. }) = check_request(&session, &request) {
            prop_assert!([EPERM, EINVAL, ENOSPC, EOVERFLOW].contains(&errno));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn handshake_survives_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (_file, export) = scratch_export(1 << 16);
        let server = Arc::new(NbdServer::new(vec![export], Limits::default()));
        // Random bytes alone, and after valid client flags.
        run_session(&server, bytes.clone());
        let mut flagged = (FLAG_C_FIXED_NEWSTYLE).to_be_bytes().to_vec();
        flagged.extend_from_slice(&IHAVEOPT.to_be_bytes());
        flagged.extend_from_slice(&bytes);
        run_session(&server, flagged);
    }

    #[test]
    fn transmission_survives_random_requests(
        requests in proptest::collection::vec(
            (0u16..10, any::<u16>(), 0u64..(1 << 17), 0u32..(1 << 13)), 0..16),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let (_file, export) = scratch_export(1 << 16);
        let limits = Limits { request_bytes_max: 4096, ..Limits::default() };
        let server = Arc::new(NbdServer::new(vec![export], limits));
        let mut input = go_preface();
        for (command, flags, offset, length) in requests {
            input.extend(request_bytes(command, flags, offset, length));
            if command == CMD_WRITE {
                input.resize(input.len() + length.min(4096) as usize, 0x5a);
            }
        }
        input.extend(tail);
        run_session(&server, input);
    }
}
