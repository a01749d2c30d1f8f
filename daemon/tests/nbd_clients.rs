//! The NBD server against real clients: qemu-io, qemu-img, nbdinfo,
//! nbdcopy (libnbd), and a raw TCP client that misbehaves on purpose.
//!
//! Each test starts an in-process server (a tokio runtime on a thread,
//! 127.0.0.1:0) over `FileBackend`s on temp files and drives it with
//! subprocesses. A test skips, saying so, only when its client binary is
//! missing (`apt-get install qemu-utils libnbd-bin`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use drgw_nbd::{BlockBackend, BoxFuture, Export, FileBackend, Limits, NbdServer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------- harness

struct TestServer {
    port: u16,
    server: Arc<NbdServer>,
    dir: tempfile::TempDir,
    cancel: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct ExportSpec {
    name: &'static str,
    size_bytes: usize,
    read_only: bool,
}

impl TestServer {
    fn start(specs: &[ExportSpec]) -> TestServer {
        TestServer::start_with(specs, Limits::default())
    }

    fn start_with(specs: &[ExportSpec], limits: Limits) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("nbd-clients-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let exports = specs
            .iter()
            .map(|spec| {
                let path = dir.path().join(format!("{}.img", spec.name));
                std::fs::File::create(&path)
                    .unwrap()
                    .set_len(spec.size_bytes as u64)
                    .unwrap();
                let backend = FileBackend::open(&path, spec.read_only).unwrap();
                Export {
                    name: spec.name.to_string(),
                    description: format!("test export {}", spec.name),
                    backend: Arc::new(backend),
                }
            })
            .collect::<Vec<_>>();
        TestServer::start_on(dir, exports, limits)
    }

    fn start_exports(exports: Vec<Export>) -> TestServer {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        TestServer::start_on(dir, exports, Limits::default())
    }

    fn start_on(dir: tempfile::TempDir, exports: Vec<Export>, limits: Limits) -> TestServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cancel = CancellationToken::new();
        let server = Arc::new(NbdServer::new(exports, limits));
        let serving = Arc::clone(&server);
        let thread_cancel = cancel.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let tracker = TaskTracker::new();
                serving
                    .serve(listener, tracker.clone(), thread_cancel)
                    .await;
                tracker.close();
                tracker.wait().await;
            });
        });
        TestServer {
            port,
            server,
            dir,
            cancel,
            thread: Some(thread),
        }
    }

    fn uri(&self, name: &str) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.port, name)
    }

    fn backing(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.img"))
    }

    fn backing_bytes(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.backing(name)).unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// False (and a note on stderr) when `tool` is not installed.
fn have(tool: &str) -> bool {
    match Command::new(tool).arg("--version").output() {
        Ok(_) => true,
        Err(error) => {
            eprintln!("SKIPPED: {tool} not runnable ({error}); install qemu-utils / libnbd-bin");
            false
        }
    }
}

fn run(tool: &str, args: &[&str]) -> Output {
    let output = Command::new(tool).args(args).output().unwrap();
    eprintln!(
        "$ {tool} {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn run_ok(tool: &str, args: &[&str]) -> String {
    let output = run(tool, args);
    assert!(
        output.status.success(),
        "{tool} failed: {:?}",
        output.status
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// qemu-io with one `-c` per command; every command must succeed.
fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let mut args = vec!["-f", "raw", uri];
    for command in commands {
        args.extend(["-c", command]);
    }
    let output = run_ok("qemu-io", &args);
    for bad in ["failed", "error", "Error"] {
        assert!(!output.contains(bad), "qemu-io reported {bad:?}: {output}");
    }
    output
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures repeat.
fn random_bytes(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(length + 8);
    while out.len() < length {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(length);
    out
}

fn assert_same(left: &[u8], right: &[u8], what: &str) {
    assert_eq!(left.len(), right.len(), "{what}: lengths differ");
    if let Some(at) = left.iter().zip(right).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {at}");
    }
}

fn all(bytes: &[u8], value: u8) -> bool {
    bytes.iter().all(|byte| *byte == value)
}

// ------------------------------------------------------------ real clients

#[test]
fn qemu_io_writes_reads_and_persists() {
    if !have("qemu-io") {
        return;
    }
    let server = TestServer::start(&[ExportSpec {
        name: "disk",
        size_bytes: 4 * MIB,
        read_only: false,
    }]);
    let uri = server.uri("disk");
    qemu_io(
        &uri,
        &[
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            "write -P 0xcd 1000001 512",
            "write -P 0x11 3 511",
            "read -P 0xcd 1000001 512",
            "read -P 0x11 3 511",
            "write -P 0xee 2M 1M",
            "discard 2M 64k",
            "write -P 0x77 3M 128k",
            "write -z 3M 64k",
            "write -z -u 2560k 64k",
            "flush",
        ],
    );
    // The writes are in the backing file, byte for byte.
    let bytes = server.backing_bytes("disk");
    assert_eq!(bytes.len(), 4 * MIB);
    assert_eq!(bytes[0..3], [0xab; 3]);
    assert!(all(&bytes[3..514], 0x11));
    assert!(all(&bytes[514..1_000_001], 0xab));
    assert!(all(&bytes[1_000_001..1_000_513], 0xcd));
    assert!(all(&bytes[1_000_513..MIB], 0xab));
    // Discarded (hole punched) and zeroed ranges read back as zeroes.
    assert!(all(&bytes[2 * MIB..2 * MIB + 65536], 0));
    assert!(all(&bytes[2 * MIB + 65536..2560 * 1024], 0xee));
    assert!(all(&bytes[2560 * 1024..2560 * 1024 + 65536], 0));
    assert!(all(&bytes[2560 * 1024 + 65536..3 * MIB], 0xee));
    assert!(all(&bytes[3 * MIB..3 * MIB + 65536], 0));
    assert!(all(&bytes[3 * MIB + 65536..3 * MIB + 131072], 0x77));
    assert!(all(&bytes[3 * MIB + 131072..], 0));
    // And a second connection sees them through the server.
    qemu_io(&uri, &["read -P 0xcd 1000001 512", "read -P 0 2M 64k"]);
}

#[test]
fn qemu_img_convert_round_trip() {
    if !have("qemu-img") {
        return;
    }
    let server = TestServer::start(&[ExportSpec {
        name: "disk",
        size_bytes: 8 * MIB,
        read_only: false,
    }]);
    // A source with data, zeroes and an unaligned tail of data.
    let mut source = random_bytes(8 * MIB, 7);
    source[MIB..3 * MIB].fill(0);
    source[5 * MIB + 100..6 * MIB].fill(0);
    let raw = server.dir.path().join("source.raw");
    let qcow2 = server.dir.path().join("source.qcow2");
    let out = server.dir.path().join("out.raw");
    std::fs::write(&raw, &source).unwrap();
    let (raw, qcow2, out) = (path(&raw), path(&qcow2), path(&out));
    run_ok(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", &raw, &qcow2],
    );
    let uri = server.uri("disk");
    run_ok(
        "qemu-img",
        &["convert", "-n", "-f", "qcow2", "-O", "raw", &qcow2, &uri],
    );
    assert_same(
        &server.backing_bytes("disk"),
        &source,
        "backing file after convert in",
    );
    run_ok(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &uri, &out],
    );
    assert_same(
        &std::fs::read(&out).unwrap(),
        &source,
        "image converted back out",
    );
}

fn path(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

#[test]
fn nbdinfo_shows_size_flags_and_exports() {
    if !have("nbdinfo") {
        return;
    }
    let server = TestServer::start(&[
        ExportSpec {
            name: "disk",
            size_bytes: 4 * MIB,
            read_only: false,
        },
        ExportSpec {
            name: "ro",
            size_bytes: MIB,
            read_only: true,
        },
    ]);
    let info = run_ok("nbdinfo", &[&server.uri("disk")]);
    for line in [
        "export-size: 4194304",
        "is_read_only: false",
        "can_flush: true",
        "can_fua: true",
        "can_trim: true",
        "can_zero: true",
        "can_multi_conn: true",
        "block_size_minimum: 1",
        "block_size_preferred: 4096",
        "block_size_maximum: 33554432",
        "description: test export disk",
    ] {
        assert!(info.contains(line), "nbdinfo lacks {line:?}:\n{info}");
    }
    let info = run_ok("nbdinfo", &[&server.uri("ro")]);
    for line in [
        "export-size: 1048576",
        "is_read_only: true",
        "can_trim: false",
    ] {
        assert!(info.contains(line), "nbdinfo lacks {line:?}:\n{info}");
    }
    let list = run_ok(
        "nbdinfo",
        &["--list", &format!("nbd://127.0.0.1:{}", server.port)],
    );
    for line in ["export=\"disk\"", "export=\"ro\"", "test export ro"] {
        assert!(
            list.contains(line),
            "nbdinfo --list lacks {line:?}:\n{list}"
        );
    }
    // An unknown export is an error, not a hang or a crash.
    let missing = run("nbdinfo", &[&server.uri("nope")]);
    assert!(!missing.status.success());
}

#[test]
fn nbdcopy_multi_conn_round_trip() {
    if !have("nbdcopy") {
        return;
    }
    let server = TestServer::start(&[ExportSpec {
        name: "disk",
        size_bytes: 64 * MIB,
        read_only: false,
    }]);
    let source = random_bytes(64 * MIB, 42);
    let input = server.dir.path().join("in.raw");
    let output = server.dir.path().join("out.raw");
    std::fs::write(&input, &source).unwrap();
    let uri = server.uri("disk");
    run_ok(
        "nbdcopy",
        &["--connections=4", "--threads=4", &path(&input), &uri],
    );
    assert_same(
        &server.backing_bytes("disk"),
        &source,
        "backing file after nbdcopy in",
    );
    // nbdcopy opens its extra connections only when CAN_MULTI_CONN is set
    // (--threads too: nbdcopy caps connections at its thread count).
    let accepted = server.server.stats().connections_accepted;
    assert!(accepted >= 4, "nbdcopy used {accepted} connections");
    std::fs::File::create(&output).unwrap();
    run_ok(
        "nbdcopy",
        &["--connections=4", "--threads=4", &uri, &path(&output)],
    );
    assert_same(&std::fs::read(&output).unwrap(), &source, "nbdcopy out");
    let accepted = server.server.stats().connections_accepted - accepted;
    assert!(accepted >= 4, "nbdcopy used {accepted} connections");
}

#[test]
fn read_only_export_refuses_writes() {
    let server = TestServer::start(&[ExportSpec {
        name: "ro",
        size_bytes: MIB,
        read_only: true,
    }]);
    // Raw client: WRITE, TRIM and WRITE_ZEROES get EPERM; READ works.
    let mut client = RawClient::negotiating(server.port);
    client.go("ro", false).unwrap();
    client.request(CMD_WRITE, 0, 1, 0, 512, &[0x77; 512]);
    assert_eq!(client.simple_reply(), (EPERM, 1));
    client.request(CMD_TRIM, 0, 2, 0, 4096, &[]);
    assert_eq!(client.simple_reply(), (EPERM, 2));
    client.request(CMD_WRITE_ZEROES, 0, 3, 0, 4096, &[]);
    assert_eq!(client.simple_reply(), (EPERM, 3));
    client.request(CMD_READ, 0, 4, 0, 512, &[]);
    assert_eq!(client.simple_reply(), (0, 4));
    assert_eq!(client.read_bytes(512), vec![0; 512]);
    assert!(all(&server.backing_bytes("ro"), 0));
    if !have("qemu-io") {
        return;
    }
    // qemu sees NBD_FLAG_READ_ONLY and will not open the export for writing.
    let output = run(
        "qemu-io",
        &["-f", "raw", &server.uri("ro"), "-c", "write 0 4k"],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Permission denied"));
    assert!(all(&server.backing_bytes("ro"), 0));
}

/// Claims to be writable but sits on a read-only file: every write fails
/// in the backend with EPERM, which must reach the client as NBD_EPERM.
struct ClaimsWritable(FileBackend);

impl BlockBackend for ClaimsWritable {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn can_trim(&self) -> bool {
        true
    }
    fn can_write_zeroes(&self) -> bool {
        true
    }
    fn can_multi_conn(&self) -> bool {
        true
    }
    fn read(&self, offset: u64, length: u32) -> BoxFuture<'_, std::io::Result<Vec<u8>>> {
        self.0.read(offset, length)
    }
    fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> BoxFuture<'_, std::io::Result<()>> {
        self.0.write(offset, data, fua)
    }
    fn flush(&self) -> BoxFuture<'_, std::io::Result<()>> {
        self.0.flush()
    }
    fn trim(&self, offset: u64, length: u32, fua: bool) -> BoxFuture<'_, std::io::Result<()>> {
        self.0.trim(offset, length, fua)
    }
    fn write_zeroes(
        &self,
        offset: u64,
        length: u32,
        fua: bool,
        may_trim: bool,
    ) -> BoxFuture<'_, std::io::Result<()>> {
        self.0.write_zeroes(offset, length, fua, may_trim)
    }
}

#[test]
fn backend_eperm_reaches_qemu_io() {
    if !have("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let file = dir.path().join("locked.img");
    std::fs::write(&file, vec![0x3c; MIB]).unwrap();
    let backend = ClaimsWritable(FileBackend::open(&file, true).unwrap());
    let server = TestServer::start_exports(vec![Export {
        name: "locked".into(),
        description: String::new(),
        backend: Arc::new(backend),
    }]);
    let output = run(
        "qemu-io",
        &["-f", "raw", &server.uri("locked"), "-c", "write -P 1 0 4k"],
    );
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("write failed: Operation not permitted"),
        "{text}"
    );
    qemu_io(&server.uri("locked"), &["read -P 0x3c 0 4k"]);
    assert!(all(&std::fs::read(&file).unwrap(), 0x3c));
}

// --------------------------------------------------------------- misuse

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
const OPT_ABORT: u32 = 2;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const EPERM: u32 = 1;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const EOVERFLOW: u32 = 75;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// A hand-driven NBD client: sends exactly the bytes a test wants.
struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut client = RawClient { stream };
        let greeting = client.read_bytes(18);
        assert_eq!(&greeting[0..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(greeting[16..18], [0, 3], "FIXED_NEWSTYLE | NO_ZEROES");
        client
    }

    /// Connects and sends client flags FIXED_NEWSTYLE | NO_ZEROES.
    fn negotiating(port: u16) -> RawClient {
        let mut client = RawClient::connect(port);
        client.send(&3u32.to_be_bytes());
        client
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn read_bytes(&mut self, length: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; length];
        self.stream.read_exact(&mut bytes).unwrap();
        bytes
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.read_bytes(4).try_into().unwrap())
    }

    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.read_bytes(8).try_into().unwrap())
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.read_bytes(2).try_into().unwrap())
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut bytes = IHAVEOPT.to_be_bytes().to_vec();
        bytes.extend_from_slice(&option.to_be_bytes());
        bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
        bytes.extend_from_slice(data);
        self.send(&bytes);
    }

    /// (option, reply type, data) of one option reply.
    fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        assert_eq!(self.u64(), 0x0003_e889_0455_65a9, "option reply magic");
        let option = self.u32();
        let reply_type = self.u32();
        let length = self.u32() as usize;
        (option, reply_type, self.read_bytes(length))
    }

    /// Negotiates `name` with NBD_OPT_GO (and structured replies if asked);
    /// returns (size, transmission flags) or the error reply type.
    fn go(&mut self, name: &str, structured: bool) -> Result<(u64, u16), u32> {
        if structured {
            self.option(OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(self.option_reply().1, REP_ACK);
        }
        self.option(OPT_GO, &info_data(name));
        let mut export = None;
        loop {
            let (option, reply_type, data) = self.option_reply();
            assert_eq!(option, OPT_GO);
            match reply_type {
                REP_INFO if data[0..2] == [0, 0] => {
                    let size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                    let flags = u16::from_be_bytes(data[10..12].try_into().unwrap());
                    export = Some((size, flags));
                }
                REP_INFO => {}
                REP_ACK => return Ok(export.expect("NBD_INFO_EXPORT before ACK")),
                error => return Err(error),
            }
        }
    }

    fn request(
        &mut self,
        command: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        data: &[u8],
    ) {
        let mut bytes = REQUEST_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&flags.to_be_bytes());
        bytes.extend_from_slice(&command.to_be_bytes());
        bytes.extend_from_slice(&cookie.to_be_bytes());
        bytes.extend_from_slice(&offset.to_be_bytes());
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(data);
        self.send(&bytes);
    }

    /// (error, cookie) of a simple reply.
    fn simple_reply(&mut self) -> (u32, u64) {
        assert_eq!(self.u32(), SIMPLE_REPLY_MAGIC);
        (self.u32(), self.u64())
    }

    /// (flags, type, cookie, payload) of a structured reply chunk.
    fn chunk(&mut self) -> (u16, u16, u64, Vec<u8>) {
        assert_eq!(self.u32(), STRUCTURED_REPLY_MAGIC);
        let flags = self.u16();
        let chunk_type = self.u16();
        let cookie = self.u64();
        let length = self.u32() as usize;
        (flags, chunk_type, cookie, self.read_bytes(length))
    }

    /// The server closed the connection (EOF or reset), within the timeout.
    fn assert_closed(&mut self) {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("expected a close, got data"),
            Err(error) => assert!(
                matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "expected a close, got {error}"
            ),
        }
    }
}

fn info_data(name: &str) -> Vec<u8> {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&0u16.to_be_bytes());
    data
}

/// A good client on its own connection: writes a pattern and reads it back.
fn good_client_round_trip(client: &mut RawClient, cookie: u64, pattern: u8) {
    client.request(CMD_WRITE, 0, cookie, 4096, 4096, &[pattern; 4096]);
    assert_eq!(client.simple_reply(), (0, cookie));
    client.request(CMD_READ, 0, cookie + 1, 4096, 4096, &[]);
    assert_eq!(client.simple_reply(), (0, cookie + 1));
    assert_eq!(client.read_bytes(4096), vec![pattern; 4096]);
}

#[test]
fn misuse_in_handshake_is_contained() {
    let server = TestServer::start(&[ExportSpec {
        name: "disk",
        size_bytes: MIB,
        read_only: false,
    }]);
    let mut good = RawClient::negotiating(server.port);
    assert_eq!(good.go("disk", false), Ok((MIB as u64, 0x016d)));
    good_client_round_trip(&mut good, 100, 0x42);

    // Unknown client flag bits, and a client that is not fixed newstyle.
    for flags in [0x8000_0001u32, 0] {
        let mut bad = RawClient::connect(server.port);
        bad.send(&flags.to_be_bytes());
        bad.assert_closed();
    }
    // Bad option magic.
    let mut bad = RawClient::negotiating(server.port);
    bad.send(&[0x55; 16]);
    bad.assert_closed();
    // Oversized option: NBD_REP_ERR_TOO_BIG, then a close.
    let mut bad = RawClient::negotiating(server.port);
    let mut header = IHAVEOPT.to_be_bytes().to_vec();
    header.extend_from_slice(&OPT_INFO.to_be_bytes());
    header.extend_from_slice(&(1u32 << 30).to_be_bytes());
    bad.send(&header);
    assert_eq!(bad.option_reply().1, REP_ERR_TOO_BIG);
    bad.assert_closed();
    // Unknown option, malformed INFO, unknown export: errors, and the
    // negotiation goes on to a working export.
    let mut bad = RawClient::negotiating(server.port);
    bad.option(0x4242, b"whatever");
    assert_eq!(bad.option_reply().1, REP_ERR_UNSUP);
    bad.option(OPT_INFO, &[0, 0, 0, 200, 1]);
    assert_eq!(bad.option_reply().1, (1 << 31) + 3);
    assert_eq!(bad.go("nope", false), Err(REP_ERR_UNKNOWN));
    assert_eq!(
        bad.go("", false),
        Ok((MIB as u64, 0x016d)),
        "default export"
    );
    good_client_round_trip(&mut bad, 200, 0x43);
    // NBD_OPT_ABORT is acknowledged and the server closes.
    let mut bye = RawClient::negotiating(server.port);
    bye.option(OPT_ABORT, &[]);
    assert_eq!(bye.option_reply().1, REP_ACK);
    bye.assert_closed();

    good_client_round_trip(&mut good, 300, 0x44);
}

#[test]
fn misuse_in_transmission_is_contained() {
    let server = TestServer::start(&[ExportSpec {
        name: "disk",
        size_bytes: MIB,
        read_only: false,
    }]);
    let mut good = RawClient::negotiating(server.port);
    good.go("disk", false).unwrap();
    good_client_round_trip(&mut good, 100, 0x51);

    let mut bad = RawClient::negotiating(server.port);
    bad.go("disk", false).unwrap();
    // Past the end: EINVAL for reads and trims, ENOSPC for writes (whose
    // payload is consumed, so the stream stays in step).
    bad.request(CMD_READ, 0, 1, MIB as u64 - 512, 1024, &[]);
    assert_eq!(bad.simple_reply(), (EINVAL, 1));
    bad.request(CMD_WRITE, 0, 2, MIB as u64, 512, &[9; 512]);
    assert_eq!(bad.simple_reply(), (ENOSPC, 2));
    bad.request(CMD_WRITE_ZEROES, 0, 3, u64::MAX - 10, 512, &[]);
    assert_eq!(bad.simple_reply(), (ENOSPC, 3));
    bad.request(CMD_TRIM, 0, 4, MIB as u64, 1, &[]);
    assert_eq!(bad.simple_reply(), (EINVAL, 4));
    // Unknown command, unknown flag, read over the maximum payload.
    bad.request(42, 0, 5, 0, 0, &[]);
    assert_eq!(bad.simple_reply(), (EINVAL, 5));
    bad.request(CMD_READ, 0x100, 6, 0, 512, &[]);
    assert_eq!(bad.simple_reply(), (EINVAL, 6));
    bad.request(CMD_READ, 0, 7, 0, 64 << 20, &[]);
    assert_eq!(bad.simple_reply(), (EINVAL, 7));
    // Still a working connection.
    good_client_round_trip(&mut bad, 8, 0x52);
    // Bad request magic: the connection is closed.
    bad.send(&[0xde; 28]);
    bad.assert_closed();

    // A write longer than the maximum payload: EINVAL, then a close.
    let mut bad = RawClient::negotiating(server.port);
    bad.go("disk", false).unwrap();
    bad.request(CMD_WRITE, 0, 9, 0, 64 << 20, &[]);
    assert_eq!(bad.simple_reply(), (EINVAL, 9));
    bad.assert_closed();

    // Structured replies: data as OFFSET_DATA, errors as error chunks.
    let mut structured = RawClient::negotiating(server.port);
    structured.go("disk", true).unwrap();
    structured.request(CMD_READ, 0, 10, 4096, 512, &[]);
    let (flags, chunk_type, cookie, payload) = structured.chunk();
    assert_eq!((flags, chunk_type, cookie), (1, REPLY_TYPE_OFFSET_DATA, 10));
    assert_eq!(payload[0..8], 4096u64.to_be_bytes());
    assert_eq!(payload[8..], [0x52; 512]);
    structured.request(CMD_READ, 0, 11, MIB as u64, 512, &[]);
    let (flags, chunk_type, cookie, payload) = structured.chunk();
    assert_eq!((flags, chunk_type, cookie), (1, REPLY_TYPE_ERROR, 11));
    assert_eq!(payload[0..4], EINVAL.to_be_bytes());
    structured.request(CMD_READ, 0, 12, 0, 64 << 20, &[]);
    let (_, chunk_type, _, payload) = structured.chunk();
    assert_eq!(chunk_type, REPLY_TYPE_ERROR);
    assert_eq!(payload[0..4], EOVERFLOW.to_be_bytes());
    // NBD_CMD_DISC: the server closes cleanly.
    structured.request(CMD_DISC, 0, 13, 0, 0, &[]);
    structured.assert_closed();

    good_client_round_trip(&mut good, 200, 0x53);
}

#[test]
fn pipelined_requests_beyond_the_limits_all_complete() {
    // Small limits: the reader must stop and resume, never drop a request.
    let limits = Limits {
        in_flight_requests_max: 2,
        in_flight_bytes_max: 8192,
        request_bytes_max: 4096,
        ..Limits::default()
    };
    let server = TestServer::start_with(
        &[ExportSpec {
            name: "disk",
            size_bytes: MIB,
            read_only: false,
        }],
        limits,
    );
    let mut client = RawClient::negotiating(server.port);
    client.go("disk", false).unwrap();
    let count = 200u64;
    let mut batch = Vec::new();
    for cookie in 0..count {
        let mut request = REQUEST_MAGIC.to_be_bytes().to_vec();
        request.extend_from_slice(&0u16.to_be_bytes());
        request.extend_from_slice(&CMD_WRITE.to_be_bytes());
        request.extend_from_slice(&cookie.to_be_bytes());
        request.extend_from_slice(&(cookie * 4096).to_be_bytes());
        request.extend_from_slice(&4096u32.to_be_bytes());
        request.extend_from_slice(&[cookie as u8; 4096]);
        batch.extend(request);
    }
    let mut writer = client.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&batch).unwrap());
    let mut cookies: Vec<u64> = (0..count)
        .map(|_| {
            let (error, cookie) = client.simple_reply();
            assert_eq!(error, 0);
            cookie
        })
        .collect();
    sender.join().unwrap();
    cookies.sort_unstable();
    assert_eq!(cookies, (0..count).collect::<Vec<_>>());
    let bytes = server.backing_bytes("disk");
    for cookie in 0..count as usize {
        assert!(all(
            &bytes[cookie * 4096..(cookie + 1) * 4096],
            cookie as u8
        ));
    }
}

#[test]
fn connections_beyond_the_limit_are_closed() {
    let limits = Limits {
        connections_max: 1,
        ..Limits::default()
    };
    let server = TestServer::start_with(
        &[ExportSpec {
            name: "disk",
            size_bytes: MIB,
            read_only: false,
        }],
        limits,
    );
    let mut first = RawClient::negotiating(server.port);
    first.go("disk", false).unwrap();
    let mut second = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        matches!(second.read(&mut byte), Ok(0) | Err(_)),
        "refused at accept"
    );
    let stats = server.server.stats();
    assert_eq!(
        (stats.connections_accepted, stats.connections_refused),
        (1, 1)
    );
    assert_eq!(stats.connections_open, 1);
    good_client_round_trip(&mut first, 1, 0x61);
    // Once the first leaves, a new connection is served.
    first.request(CMD_DISC, 0, 3, 0, 0, &[]);
    first.assert_closed();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.server.stats().connections_open > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "connection not released"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut third = RawClient::negotiating(server.port);
    third.go("disk", false).unwrap();
    good_client_round_trip(&mut third, 4, 0x62);
}

#[test]
fn shutdown_finishes_and_closes_open_connections() {
    let server = TestServer::start(&[ExportSpec {
        name: "disk",
        size_bytes: MIB,
        read_only: false,
    }]);
    let mut transmitting = RawClient::negotiating(server.port);
    transmitting.go("disk", false).unwrap();
    good_client_round_trip(&mut transmitting, 1, 0x71);
    let mut negotiating = RawClient::negotiating(server.port);
    let started = std::time::Instant::now();
    drop(server); // cancels, then waits for every connection task
    assert!(started.elapsed() < Duration::from_secs(5));
    transmitting.assert_closed();
    negotiating.assert_closed();
}
