//! Real NBD clients (qemu-io, nbdcopy) and the JSON the CLI prints, as the
//! recovery tests drive them.

use super::sha256_hex;
use std::fs;
use std::path::Path;
use std::process::Command;

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Runs one qemu-io command on an NBD export; fails the test on an error.
pub fn qemu_io(uri: &str, command: &str) -> String {
    let output = Command::new("qemu-io")
        .args(["-f", "raw", "-c", command, uri])
        .output()
        .expect("qemu-io (qemu-utils)");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !text.contains("fail"),
        "qemu-io {command} {uri}: {text}"
    );
    text
}

/// nbdcopy from one place (file or NBD URI) to another.
pub fn nbdcopy(from: &str, to: &str) {
    let output = Command::new("nbdcopy")
        .args([from, to])
        .output()
        .expect("nbdcopy (libnbd-bin, scripts/install-deps)");
    assert!(
        output.status.success(),
        "nbdcopy {from} {to}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The sha256 of what an NBD export serves, read with nbdcopy.
pub fn export_sha(uri: &str, scratch: &Path) -> String {
    let out = scratch.join("copy.img");
    let _ = fs::remove_file(&out);
    nbdcopy(uri, out.to_str().unwrap());
    let sha = sha256_hex(&fs::read(&out).unwrap());
    fs::remove_file(&out).unwrap();
    sha
}

/// The URI of the export of `disk` in a list of exports.
pub fn uri_of(exports: &serde_json::Value, disk: &str) -> String {
    exports
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["disk"] == disk)
        .unwrap_or_else(|| panic!("no export of {disk}: {exports:#}"))["uri"]
        .as_str()
        .unwrap()
        .to_string()
}
