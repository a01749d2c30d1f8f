//! The `drgw` command line. Operator commands talk to the daemon over the
//! control socket; `serve` is the daemon; `config` works on files alone.
//! Exit codes: 0 success, 1 failure, 2 usage.

mod commands;
mod materialize;
mod print;
mod progress;
mod resync;

pub use print::bytes;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub const DEFAULT_CONFIG: &str = "/etc/drgw/drgw.toml";
pub const DEFAULT_SOCKET: &str = "/run/drgw/control.sock";

#[derive(Debug, Parser)]
#[command(
    name = "drgw",
    version,
    about = "drgw: disaster-recovery gateway. Near-continuous block replication to a paired \
             appliance, and recovery at any point in time.",
    after_help = "Docs: docs/ in the source tree (ARCHITECTURE.md, config.md, wire-protocol.md, control-api.md)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOptions,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalOptions {
    /// Config file (the daemon's; operator commands read control.socket from it)
    #[arg(long, global = true, env = "DRGW_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control socket of the daemon to talk to (overrides the config's)
    #[arg(long, global = true, env = "DRGW_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance daemon (replication listener, links, control API)
    Serve,
    /// Run the whole path on this machine, with embedded defaults: source
    /// and target gateways and a tap on loopback, a workload, a bookmark,
    /// and the recovered disks verified against what was written
    Demo {
        /// Keep the demo's directory (configs, state, logs) afterwards
        #[arg(long)]
        keep: bool,
        /// Print the summary as JSON on stdout (progress goes to stderr)
        #[arg(long)]
        json: bool,
    },
    /// Check or print configuration files
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show the appliance: identity, peers and their links, volumes, disks
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Pair with other appliances and taps by certificate fingerprint
    #[command(subcommand)]
    Pair(PairCommand),
    /// Protect a disk: its tap may attach it, its writes are staged in the group's order
    Protect {
        /// The disk's name (as in the tap's config)
        disk: String,
        /// Consistency group: disks of one group share one write order and one set of recovery points
        #[arg(long)]
        group: String,
        /// The paired tap that serves this disk
        #[arg(long)]
        tap: String,
        /// The disk's size: bytes, or with a K/M/G/T suffix (powers of 1024)
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// The paired appliance the group replicates to (default: the only one paired)
        #[arg(long)]
        peer: Option<String>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// List the recovery points of a group replicated to this appliance
    Points {
        /// The group (PEER/GROUP when two peers use the same name)
        group: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Take an app-consistent bookmark in a group protected here (after freezing the app)
    Bookmark {
        group: String,
        /// The bookmark's name (recover it with --point bookmark:NAME)
        #[arg(long)]
        name: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Write a disk as it was at a recovery point to an image file (raw or qcow2, sparse)
    #[command(
        after_help = "Progress is shown on stderr. Ctrl-C cancels the job: the image stays incomplete \
                      beside its sidecar OUT.drgw-materialize, and --resume continues it. VMDK: \
                      materialize to qcow2 or raw, then `qemu-img convert -O vmdk OUT OUT.vmdk`."
    )]
    Materialize {
        group: String,
        /// latest, latest-app, seq:N, bookmark:NAME, @UNIX_SECONDS or YYYY-MM-DDTHH:MM:SSZ
        #[arg(long)]
        point: String,
        /// The disk's name
        #[arg(long)]
        disk: String,
        /// The image to write (an existing file is refused without --force or --resume)
        #[arg(long)]
        out: PathBuf,
        /// Image format
        #[arg(long, default_value = "raw", value_parser = ["raw", "qcow2"])]
        format: String,
        /// Continue an interrupted materialize of the same point, disk and format
        #[arg(long)]
        resume: bool,
        /// Replace an existing output
        #[arg(long)]
        force: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Serve disks of a group at a recovery point over NBD (read-only unless --writable)
    Export {
        group: String,
        /// latest, latest-app, seq:N, bookmark:NAME, @UNIX_SECONDS or YYYY-MM-DDTHH:MM:SSZ
        #[arg(long)]
        point: String,
        /// One disk (default: every disk of the group)
        #[arg(long)]
        disk: Option<String>,
        /// Take writes into a scratch overlay, thrown away when the export ends
        #[arg(long)]
        writable: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// End an export made by `drgw export`
    Unexport {
        /// The export's name (see `drgw exports`)
        name: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// List the recovery exports served by this appliance
    Exports {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Start a test failover (writable copies of every disk at a point; replication goes on), or end it
    TestFailover {
        group: String,
        /// The point to test (latest, latest-app, seq:N, bookmark:NAME, a time)
        #[arg(long, required_unless_present = "cleanup", conflicts_with = "cleanup")]
        point: Option<String>,
        /// End the drill: throw its writes away and record it
        #[arg(long)]
        cleanup: bool,
        /// With --cleanup: how the drill went (passed or failed)
        #[arg(long, requires = "cleanup", value_parser = ["passed", "failed"])]
        result: Option<String>,
        /// With --cleanup: a note kept with the drill's record
        #[arg(long, requires = "cleanup", default_value = "")]
        note: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Fail a group over to a point: its disks are served writable as the primaries
    Failover {
        group: String,
        /// The point to fail over to (latest, latest-app, seq:N, bookmark:NAME, a time)
        #[arg(long, required_unless_present = "cancel", conflicts_with = "cancel")]
        point: Option<String>,
        /// Undo a failover not committed yet (writes made since are thrown away)
        #[arg(long)]
        cancel: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Make a failover final: the replicas become the disks, newer journal data is released
    Commit {
        group: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// A group's recovery state, its transitions and its test failover drills
    Recovery {
        group: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Compare a group's disks with their replicas by block checksums and send only what differs
    #[command(
        after_help = "Runs on the group's source appliance; the tap reads the primary, the target its replica. \
                      Points the target takes during the resync are not crash-consistent and cannot be \
                      recovered; the first point after it is. A restart of either side resumes it. \
                      Ctrl-C stops following, not the resync."
    )]
    Resync {
        group: String,
        /// One disk (default: every disk of the group)
        #[arg(long, conflicts_with_all = ["status", "cancel"])]
        disk: Option<String>,
        /// Bytes per compared block (4K to 64M, a power of two)
        #[arg(long, value_parser = parse_size, default_value = "64K")]
        grain: u64,
        /// Bytes per block compared again inside a differing block (what is sent)
        #[arg(long, value_parser = parse_size, default_value = "4K")]
        fine: u64,
        /// Start at this local time (HH:MM, the next one to come), e.g. outside office hours
        #[arg(long, value_name = "HH:MM", conflicts_with_all = ["status", "cancel"])]
        at: Option<String>,
        /// Return once started instead of following its progress
        #[arg(long)]
        no_wait: bool,
        /// Show the running resync, or the last one
        #[arg(long, conflicts_with = "cancel")]
        status: bool,
        /// Stop the running resync (its points stay unusable until a resync completes)
        #[arg(long)]
        cancel: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Grow a protected disk (after growing its primary), then resync it
    #[command(
        after_help = "Grow the primary first (lvextend, truncate -s, ...), run this on the source \
                      appliance, then restart the tap so it attaches the new size. The target grows \
                      the replica, and a resync of the disk sends what the grown primary holds. \
                      Shrinking is refused: unprotect the disk and protect it again."
    )]
    Resize {
        /// The disk's name
        disk: String,
        /// The new size: bytes, or with a K/M/G/T suffix
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Replicate a group back to this (original) site after its failover was committed at the target
    #[command(
        after_help = "Run on the original site once the failover is committed at the other site. \
                      Stop this site's tap first (and the VM using it): its disks become the \
                      replicas. The other site sends back only what differs: what it changed since \
                      the failover point, and what this site wrote after it and never shipped \
                      (given up, with --discard-local). Replication then runs from the other site \
                      to this one, with points and RPO here."
    )]
    Reprotect {
        /// The group's name
        group: String,
        /// Where each disk of the group is on this site (its primary): NAME=PATH, once per disk
        #[arg(long = "disk", value_name = "NAME=PATH", required = true, value_parser = parse_disk_path)]
        disks: Vec<(String, std::path::PathBuf)>,
        /// Accept that writes made here after the failover point, never shipped, are overwritten
        #[arg(long)]
        discard_local: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Take a reprotected group back to this (original) site
    #[command(
        after_help = "Run on the original site, after `drgw reprotect`, once the VM at the other \
                      site is shut down: the other site stops serving the disks and sends the last \
                      of its writes, this site applies them, and the group is protected here again \
                      and replicates to the other site. Then start this site's tap and the VM."
    )]
    Failback {
        /// The group's name
        group: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Recent events: RPO crossings, retention trimmed for space
    Events {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Stop protecting a disk
    Unprotect {
        /// The disk's name
        disk: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Inspect the source gateway's staging (forensics and tests)
    #[command(subcommand)]
    Staging(StagingCommand),
    /// Run the tap: serve protected disks over NBD and forward every write to the source gateway
    Tap {
        /// Print the tap's certificate fingerprint (for `drgw pair add --tap`) and exit
        #[arg(long)]
        print_fingerprint: bool,
    },
}

/// Parses `1073741824`, `512M`, `16G`, `2T` (powers of 1024).
/// `NAME=PATH` of `drgw reprotect --disk`.
pub fn parse_disk_path(text: &str) -> Result<(String, std::path::PathBuf), String> {
    match text.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), std::path::PathBuf::from(path)))
        }
        _ => Err(format!("{text:?} is not NAME=PATH (e.g. disk-a=/dev/sdb)")),
    }
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((index, 'K' | 'k')) => (&text[..index], 10),
        Some((index, 'M' | 'm')) => (&text[..index], 20),
        Some((index, 'G' | 'g')) => (&text[..index], 30),
        Some((index, 'T' | 't')) => (&text[..index], 40),
        _ => (text, 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (bytes, or a number with K, M, G or T)"))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[derive(Debug, Subcommand)]
pub enum StagingCommand {
    /// Apply a group's staged records in order to an image file (stop the gateway first)
    Replay {
        /// The group's staging directory: <cache volume>/staging/group-<N>
        directory: PathBuf,
        /// The image to write (created or resized to --size)
        #[arg(long)]
        out: PathBuf,
        /// The disk's size: bytes, or with a K/M/G/T suffix
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Only this disk number (as in `drgw status --json`); every disk by default
        #[arg(long)]
        disk: Option<u32>,
        /// The staging encryption key (<state_dir>/staging.key) when staging is encrypted
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file: every problem with its line; exit 1 if any
    Check {
        /// The file to check
        file: PathBuf,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Print a fully commented example config (all defaults)
    Example,
}

#[derive(Debug, Subcommand)]
pub enum PairCommand {
    /// Print this appliance's fingerprint and pairing code, for the other side
    Show {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Pin a peer's certificate: it may then connect, and we dial it if it is an appliance
    Add {
        /// A name for the peer (1-63 of A-Z a-z 0-9 . _ -)
        #[arg(long)]
        name: String,
        /// HOST:PORT of the peer appliance's replication listener (not for taps)
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<String>,
        /// The peer's SHA-256 fingerprint, as its `drgw pair show` prints it
        #[arg(long, value_name = "FP")]
        fingerprint: String,
        /// The peer is a tap (it connects to us; no address)
        #[arg(long)]
        tap: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Unpin a peer and close its link
    Remove {
        /// The peer's name
        name: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// List pinned peers and their link state
    List {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("drgw: {error:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("16g"), Ok(16 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert!(parse_size("G").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
