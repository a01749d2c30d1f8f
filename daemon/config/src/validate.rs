//! Value checks. Single-field checks run inside deserialization (each is a
//! `deserialize_with` helper named in the struct definitions), so an invalid
//! value is a serde error carrying the value's span, located and collected like
//! any other. Rules that relate two fields run on the typed result
//! ([`relations`]). Ranges are written here once and quoted by the messages.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::bandwidth::{BandwidthConfig, BitRate, Number, TimeOfDay, Weekday};
use super::tap::TapConfig;
use super::Config;

/// Longest appliance name (a DNS label's limit, so it fits a hostname).
pub(super) const NAME_CHARS_MAX: usize = 63;

/// An appliance, tap or disk name: see [`name_problem`].
pub(super) fn name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    match name_problem(&name) {
        None => Ok(name),
        Some(problem) => Err(de::Error::custom(problem)),
    }
}

/// Why `name` is not a valid name, or `None` if it is one.
pub(super) fn name_problem(name: &str) -> Option<String> {
    const ALLOWED: &str = "allowed: 1 to 63 of A-Z a-z 0-9 . _ -";
    let chars = name.chars().count();
    if chars == 0 {
        return Some(format!("name must not be empty ({ALLOWED})"));
    }
    if chars > NAME_CHARS_MAX {
        return Some(format!("name is {chars} characters long ({ALLOWED})"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let bad = name.chars().find(|&c| !allowed(c))?;
    Some(format!("name `{name}` contains {bad:?} ({ALLOWED})"))
}

pub(super) fn absolute_path<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<PathBuf, D::Error> {
    let path = String::deserialize(deserializer)?;
    if path.contains('\0') {
        return Err(de::Error::custom("path contains a NUL character"));
    }
    if !path.starts_with('/') {
        let message = format!("path `{path}` is not absolute: it must start with /");
        return Err(de::Error::custom(message));
    }
    Ok(PathBuf::from(path))
}

pub(super) fn ip_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        de::Error::custom(format!(
            "`{text}` is not an IP address: give an IPv4 address such as 0.0.0.0 \
             or an IPv6 address such as ::"
        ))
    })
}

pub(super) fn port<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    ranged(deserializer, "port", 1, 65_535)
}

pub(super) fn max_frame_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    ranged(deserializer, "max_frame_bytes", 65_536, 67_108_864)
}

pub(super) fn heartbeat_interval_ms<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<u32, D::Error> {
    ranged(deserializer, "heartbeat_interval_ms", 100, 60_000)
}

/// The floor is 2 × the smallest heartbeat; [`relations`] checks the real one.
pub(super) fn peer_timeout_ms<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    ranged(deserializer, "peer_timeout_ms", 200, 600_000)
}

pub(super) fn connect_retry_ms_max<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<u32, D::Error> {
    ranged(deserializer, "connect_retry_ms_max", 1_000, 600_000)
}

pub(super) fn drain_timeout_ms<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<u32, D::Error> {
    ranged(deserializer, "drain_timeout_ms", 100, 60_000)
}

pub(super) fn point_interval_ms<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<u32, D::Error> {
    ranged(deserializer, "point_interval_ms", 100, 300_000)
}

pub(super) fn zstd_level<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    ranged(deserializer, "zstd_level", 0, 19)
}

pub(super) fn window_hours<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    ranged(deserializer, "window_hours", 1, 720)
}

/// 256 MiB ..= 1 PiB.
pub(super) fn retention_cap_bytes<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<u64, D::Error> {
    ranged(deserializer, "cap_bytes", 256 << 20, 1 << 50)
}

pub(super) fn rpo_threshold_s<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    ranged(deserializer, "rpo_threshold_s", 1, 86_400)
}

/// Empty, or an absolute path.
pub(super) fn optional_absolute_path<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    let path = String::deserialize(deserializer)?;
    if path.is_empty() {
        return Ok(path);
    }
    if path.contains('\0') || !path.starts_with('/') {
        return Err(de::Error::custom(format!(
            "path `{path}` is not absolute: give an absolute path, or \"\" for none"
        )));
    }
    Ok(path)
}

/// 64 MiB ..= 16 TiB.
pub(super) fn staging_capacity_bytes<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<u64, D::Error> {
    ranged(deserializer, "capacity_bytes", 64 << 20, 16 << 40)
}

/// 4 MiB ..= 1 GiB, whole 4 KiB blocks (segments are written with O_DIRECT).
/// The ceiling of half the capacity is in [`relations`].
pub(super) fn staging_segment_bytes<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<u64, D::Error> {
    let bytes = ranged(deserializer, "segment_bytes", 4 << 20, 1 << 30)?;
    multiple_of(bytes, "segment_bytes", 4096)
}

fn multiple_of<E: de::Error>(value: u64, name: &str, unit: u64) -> Result<u64, E> {
    if value % unit != 0 {
        return Err(E::custom(format!(
            "{name} {value} is not a multiple of {unit}"
        )));
    }
    Ok(value)
}

/// `HOST:PORT`: a host name or IPv4 address, or an IPv6 address in brackets,
/// then a port in 1..=65535. Kept as written; resolved when dialing.
pub(super) fn host_port<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    match host_port_problem(&text) {
        None => Ok(text),
        Some(problem) => Err(de::Error::custom(format!(
            "`{text}` is not HOST:PORT ({problem}), e.g. 192.0.2.1:9443 or [2001:db8::1]:9443"
        ))),
    }
}

fn host_port_problem(text: &str) -> Option<&'static str> {
    let Some((host, port)) = text.rsplit_once(':') else {
        return Some("no port");
    };
    match port.parse::<u16>() {
        Ok(1..) => {}
        _ => return Some("the port must be 1..=65535"),
    }
    if let Some(inner) = host.strip_prefix('[') {
        let is_ipv6 = inner
            .strip_suffix(']')
            .is_some_and(|address| address.parse::<std::net::Ipv6Addr>().is_ok());
        return (!is_ipv6).then_some("not an IPv6 address in brackets");
    }
    if host.is_empty() {
        return Some("no host");
    }
    if host.contains(':') {
        return Some("an IPv6 address goes in brackets");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    (!host.chars().all(allowed)).then_some("the host has characters other than A-Z a-z 0-9 . - _")
}

/// A SHA-256 certificate fingerprint: 64 hex digits, `:` between them
/// optional (`openssl x509 -fingerprint -sha256` prints `AB:CD:...`). Kept as
/// written; `drgw_tls::Fingerprint` parses every string this accepts.
pub(super) fn fingerprint<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    let digits = text.chars().filter(char::is_ascii_hexdigit).count();
    let other = text.chars().any(|c| !c.is_ascii_hexdigit() && c != ':');
    if digits != FINGERPRINT_DIGITS || other {
        let other = if other {
            " and characters other than hex digits and ':'"
        } else {
            ""
        };
        return Err(de::Error::custom(format!(
            "fingerprint must be {FINGERPRINT_DIGITS} hex digits (SHA-256), ':' between them \
             optional; found {digits} hex digits{other}"
        )));
    }
    Ok(text)
}

/// Hex digits of a SHA-256 digest.
const FINGERPRINT_DIGITS: usize = 64;

/// 1 MiB ..= 1 GiB.
pub(super) fn queue_bytes_max<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    ranged(deserializer, "queue_bytes_max", 1 << 20, 1 << 30)
}

/// 64 KiB ..= 16 MiB; at most `queue_bytes_max` ([`tap_relations`]).
pub(super) fn batch_bytes_max<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    ranged(deserializer, "batch_bytes_max", 64 << 10, 16 << 20)
}

/// A power of two, 4 KiB ..= 64 MiB.
pub(super) fn grain_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    power_of_two(deserializer, "grain_bytes")
}

pub(super) fn extent_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    power_of_two(deserializer, "extent_bytes")
}

/// A power of two in 4 KiB..=64 MiB.
fn power_of_two<'de, D: Deserializer<'de>>(deserializer: D, key: &str) -> Result<u64, D::Error> {
    let bytes: u64 = ranged(deserializer, key, 4 << 10, 64 << 20)?;
    if !bytes.is_power_of_two() {
        let message = format!("{key} {bytes} is not a power of two");
        return Err(de::Error::custom(message));
    }
    Ok(bytes)
}

/// Most `[[bandwidth.window]]` tables: a week of business hours and nights
/// needs a handful, and each one is checked on every throttled send.
pub(super) const BANDWIDTH_WINDOWS_MAX: usize = 32;

/// Slowest limit, in Mbit/s (10 kbit/s): slower would hold a 4 MiB batch for
/// the better part of an hour.
const MBIT_MIN: f64 = 0.01;
/// Fastest limit, in Mbit/s (100 Gbit/s): above any link the appliance has.
const MBIT_MAX: f64 = 100_000.0;

/// `[bandwidth] default_mbit`: 0 (unlimited) or `MBIT_MIN..=MBIT_MAX`.
pub(super) fn default_mbit<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BitRate, D::Error> {
    let number = Number::deserialize(deserializer)?;
    if number.value == 0.0 {
        return Ok(BitRate::ZERO);
    }
    if !(MBIT_MIN..=MBIT_MAX).contains(&number.value) {
        return Err(de::Error::custom(format!(
            "default_mbit {} is out of range: allowed 0 (unlimited) or {MBIT_MIN}..={MBIT_MAX}",
            number.written
        )));
    }
    Ok(BitRate::from_mbit(number.value))
}

/// `[[bandwidth.window]] mbit`: `MBIT_MIN..=MBIT_MAX`; zero is refused, as a
/// window that paused replication would let the target fall behind unseen.
pub(super) fn window_mbit<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BitRate>, D::Error> {
    let number = Number::deserialize(deserializer)?;
    if !(MBIT_MIN..=MBIT_MAX).contains(&number.value) {
        let pause = match number.value == 0.0 {
            true => " (a window limits replication, it cannot pause it)",
            false => "",
        };
        return Err(de::Error::custom(format!(
            "mbit {} is out of range: allowed {MBIT_MIN}..={MBIT_MAX}{pause}",
            number.written
        )));
    }
    Ok(Some(BitRate::from_mbit(number.value)))
}

/// `[[bandwidth.window]] start`: 00:00 to 23:59.
pub(super) fn window_start<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<TimeOfDay>, D::Error> {
    let text = String::deserialize(deserializer)?;
    match TimeOfDay::parse(&text).filter(|time| *time < TimeOfDay::END_OF_DAY) {
        Some(time) => Ok(Some(time)),
        None => Err(de::Error::custom(format!(
            "start `{text}` is not a time of day: write HH:MM, 00:00 to 23:59"
        ))),
    }
}

/// `[[bandwidth.window]] end`: 00:00 to 24:00 (the end of the day).
pub(super) fn window_end<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<TimeOfDay>, D::Error> {
    let text = String::deserialize(deserializer)?;
    match TimeOfDay::parse(&text) {
        Some(time) => Ok(Some(time)),
        None => Err(de::Error::custom(format!(
            "end `{text}` is not a time of day: write HH:MM, 00:00 to 24:00"
        ))),
    }
}

/// `[[bandwidth.window]] days`: day names, each at most once, at least one.
/// The whole array is judged at once, so that a problem names `days` and
/// drops it whole, rather than leaving the other days to a second round.
pub(super) fn days<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Weekday>, D::Error> {
    deserializer.deserialize_seq(DaysVisitor)
}

struct DaysVisitor;

impl<'de> Visitor<'de> for DaysVisitor {
    type Value = Vec<Weekday>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an array of day names")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut items: A) -> Result<Vec<Weekday>, A::Error> {
        const ALLOWED: &str = "mon, tue, wed, thu, fri, sat, sun";
        let mut days = Vec::new();
        let mut problem = None;
        while let Some(item) = items.next_element::<AnyValue>()? {
            if problem.is_some() {
                continue;
            }
            let name = match item {
                AnyValue::String(name) => name,
                AnyValue::Other(found) => {
                    problem = Some(format!(
                        "days must hold day names such as \"mon\", found {found}"
                    ));
                    continue;
                }
            };
            match Weekday::from_name(&name) {
                None => {
                    problem = Some(format!("unknown day `{name}`, expected one of {ALLOWED}"));
                }
                Some(day) if days.contains(&day) => {
                    problem = Some(format!("day `{name}` is listed twice"));
                }
                Some(day) => days.push(day),
            }
        }
        if days.is_empty() && problem.is_none() {
            problem = Some(format!(
                "days must list at least one of {ALLOWED} (leave days out for every day)"
            ));
        }
        match problem {
            Some(message) => Err(de::Error::custom(message)),
            None => Ok(days),
        }
    }
}

/// Any TOML value: a string, or the kind of anything else.
enum AnyValue {
    String(String),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for AnyValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AnyValueVisitor)
    }
}

struct AnyValueVisitor;

impl<'de> Visitor<'de> for AnyValueVisitor {
    type Value = AnyValue;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any value")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<AnyValue, E> {
        Ok(AnyValue::String(value.to_owned()))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<AnyValue, E> {
        Ok(AnyValue::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<AnyValue, E> {
        Ok(AnyValue::Other("an integer"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<AnyValue, E> {
        Ok(AnyValue::Other("an integer"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<AnyValue, E> {
        Ok(AnyValue::Other("a float"))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut items: A) -> Result<AnyValue, A::Error> {
        while items.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(AnyValue::Other("an array"))
    }

    /// Tables, and datetimes, which toml hands over as a one-entry table.
    fn visit_map<A: de::MapAccess<'de>>(self, mut entries: A) -> Result<AnyValue, A::Error> {
        while entries
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        Ok(AnyValue::Other("a table or datetime"))
    }
}

/// An integer within `min..=max`, whatever its sign or width in the file, so
/// that 70000 or -1 for a `u16` reads "out of range" rather than "expected u16".
fn ranged<'de, D, T>(deserializer: D, name: &str, min: u64, max: u64) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let value = deserializer.deserialize_i64(IntegerVisitor)?;
    let out_of_range = || {
        de::Error::custom(format!(
            "{name} {value} is out of range: allowed {min}..={max}"
        ))
    };
    let value = u64::try_from(value).map_err(|_| out_of_range())?;
    if !(min..=max).contains(&value) {
        return Err(out_of_range());
    }
    T::try_from(value).map_err(|_| out_of_range())
}

/// Accepts any TOML integer, widened to `i128`.
struct IntegerVisitor;

impl Visitor<'_> for IntegerVisitor {
    type Value = i128;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<i128, E> {
        Ok(value.into())
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<i128, E> {
        Ok(value.into())
    }

    fn visit_i128<E: de::Error>(self, value: i128) -> Result<i128, E> {
        Ok(value)
    }

    fn visit_u128<E: de::Error>(self, value: u128) -> Result<i128, E> {
        i128::try_from(value).map_err(|_| E::custom(format!("integer {value} is too large")))
    }
}

/// A broken rule between fields of an otherwise valid config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Relation {
    /// Dotted names of the fields involved, the one to blame first: the
    /// problem is reported at the first of them that the file sets.
    pub fields: Vec<String>,
    pub message: String,
}

/// A required field that the file does not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Missing {
    /// Dotted name, such as `gateway.address` or `disk[1].path`.
    pub field: String,
    /// What is wrong and what the field is for.
    pub message: String,
}

impl Relation {
    fn new(fields: &[&str], message: String) -> Self {
        let fields = fields.iter().map(|field| (*field).to_owned()).collect();
        Self { fields, message }
    }
}

/// Rules across fields, checked once every field is valid on its own.
pub(super) fn relations(config: &Config) -> Vec<Relation> {
    let mut broken = Vec::new();
    let replication = &config.replication;
    let timeout_min = replication.heartbeat_interval_ms.saturating_mul(2);
    if replication.peer_timeout_ms < timeout_min {
        let message = format!(
            "peer_timeout_ms {} must be at least 2 × heartbeat_interval_ms ({timeout_min})",
            replication.peer_timeout_ms
        );
        let fields = [
            "replication.peer_timeout_ms",
            "replication.heartbeat_interval_ms",
        ];
        broken.push(Relation::new(&fields, message));
    }
    let staging = &config.staging;
    let segment_max = staging.capacity_bytes / 2;
    if staging.segment_bytes > segment_max {
        let message = format!(
            "segment_bytes {} must be at most capacity_bytes / 2 ({segment_max})",
            staging.segment_bytes
        );
        let fields = ["staging.segment_bytes", "staging.capacity_bytes"];
        broken.push(Relation::new(&fields, message));
    }
    let retention = &config.retention;
    let retention_segment_max = retention.cap_bytes / 8;
    if retention.segment_bytes > retention_segment_max {
        let message = format!(
            "segment_bytes {} must be at most cap_bytes / 8 ({retention_segment_max})",
            retention.segment_bytes
        );
        let fields = ["retention.segment_bytes", "retention.cap_bytes"];
        broken.push(Relation::new(&fields, message));
    }
    broken.extend(bandwidth_relations(&config.bandwidth));
    broken
}

/// Not too many windows, and none empty (`start` equal to `end`).
fn bandwidth_relations(bandwidth: &BandwidthConfig) -> Vec<Relation> {
    let mut broken = Vec::new();
    let windows = bandwidth.windows.len();
    if windows > BANDWIDTH_WINDOWS_MAX {
        let message = format!(
            "{windows} windows is too many: at most {BANDWIDTH_WINDOWS_MAX} [[bandwidth.window]]"
        );
        let field = format!("bandwidth.window[{BANDWIDTH_WINDOWS_MAX}]");
        broken.push(Relation::new(&[&field], message));
    }
    for (index, window) in bandwidth.windows.iter().enumerate() {
        let (Some(start), Some(end)) = (window.start, window.end) else {
            continue;
        };
        if start == end {
            let message = format!(
                "end {end} equals start: the window would be empty \
                 (for a whole day write start = \"00:00\", end = \"24:00\")"
            );
            let fields = [
                format!("bandwidth.window[{index}].end"),
                format!("bandwidth.window[{index}].start"),
            ];
            broken.push(Relation::new(&[&fields[0], &fields[1]], message));
        }
    }
    broken
}

/// The daemon's required fields that the file does not set: those of each
/// `[[bandwidth.window]]`, reported at its header.
pub(super) fn missing(config: &Config) -> Vec<Missing> {
    let mut missing = Vec::new();
    for (index, window) in config.bandwidth.windows.iter().enumerate() {
        let required = [
            (
                "start",
                window.start.is_none(),
                "when the window starts, HH:MM",
            ),
            ("end", window.end.is_none(), "when the window ends, HH:MM"),
            (
                "mbit",
                window.mbit.is_none(),
                "the limit in the window, in Mbit/s",
            ),
        ];
        for (key, absent, what) in required {
            if absent {
                missing.push(Missing {
                    field: format!("bandwidth.window[{index}].{key}"),
                    message: format!("required key `{key}` is missing: {what}"),
                });
            }
        }
    }
    missing
}

/// The tap's required fields that the file does not set: they hold the
/// empty sentinel their serde default gives them.
pub(super) fn tap_missing(config: &TapConfig) -> Vec<Missing> {
    let mut missing = Vec::new();
    let mut require = |absent: bool, field: String, what: &str| {
        if absent {
            let key = field.rsplit('.').next().unwrap_or_default();
            let message = format!("required key `{key}` is missing: {what}");
            missing.push(Missing { field, message });
        }
    };
    let gateway = &config.gateway;
    let address = "HOST:PORT of the source gateway, e.g. 192.0.2.1:9443";
    require(
        gateway.address.is_empty(),
        "gateway.address".to_owned(),
        address,
    );
    let fingerprint =
        "SHA-256 fingerprint of the gateway's certificate, as `drgw pair show` prints it";
    require(
        gateway.fingerprint.is_empty(),
        "gateway.fingerprint".to_owned(),
        fingerprint,
    );
    for (index, disk) in config.disks.iter().enumerate() {
        let name = "the disk's name as protected on the gateway";
        require(disk.name.is_empty(), format!("disk[{index}].name"), name);
        let path = "absolute path of the primary disk (a file or block device)";
        require(
            disk.path.as_os_str().is_empty(),
            format!("disk[{index}].path"),
            path,
        );
    }
    if config.disks.is_empty() {
        let message = "no [[disk]]: the tap needs at least one disk to serve".to_owned();
        missing.push(Missing {
            field: "disk".to_owned(),
            message,
        });
    }
    missing
}

/// The tap's rules across fields: the batch fits the queue, and no two
/// disks share a name or a path (reported at the second).
pub(super) fn tap_relations(config: &TapConfig) -> Vec<Relation> {
    let mut broken = Vec::new();
    let forwarding = &config.forwarding;
    if forwarding.batch_bytes_max > forwarding.queue_bytes_max {
        let message = format!(
            "batch_bytes_max {} must be at most queue_bytes_max ({})",
            forwarding.batch_bytes_max, forwarding.queue_bytes_max
        );
        let fields = ["forwarding.batch_bytes_max", "forwarding.queue_bytes_max"];
        broken.push(Relation::new(&fields, message));
    }
    for (index, disk) in config.disks.iter().enumerate() {
        let earlier = &config.disks[..index];
        let same_name = earlier.iter().position(|other| other.name == disk.name);
        if let Some(first) = same_name.filter(|_| !disk.name.is_empty()) {
            let message = format!("disk name `{}` is already used by disk[{first}]", disk.name);
            broken.push(Relation::new(&[&format!("disk[{index}].name")], message));
        }
        let same_path = earlier.iter().position(|other| other.path == disk.path);
        if let Some(first) = same_path.filter(|_| !disk.path.as_os_str().is_empty()) {
            let path = disk.path.display();
            let message = format!("disk path `{path}` is already used by disk[{first}]");
            broken.push(Relation::new(&[&format!("disk[{index}].path")], message));
        }
    }
    broken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name_problem("drgw-a.site_1"), None);
        assert_eq!(name_problem(&"a".repeat(63)), None);
        let too_long = name_problem(&"a".repeat(64)).unwrap();
        assert!(
            too_long.starts_with("name is 64 characters long"),
            "{too_long}"
        );
        assert!(name_problem("")
            .unwrap()
            .starts_with("name must not be empty"));
        let bad = name_problem("dr gw").unwrap();
        assert!(bad.starts_with("name `dr gw` contains ' '"), "{bad}");
        assert!(name_problem("drgw/1").is_some());
        assert!(name_problem("drgwé").is_some());
    }

    #[test]
    fn host_ports() {
        for good in [
            "192.0.2.1:9443",
            "gw.example:1",
            "[2001:db8::1]:65535",
            "[::1]:9443",
        ] {
            assert_eq!(host_port_problem(good), None, "{good}");
        }
        let bad = [
            ("192.0.2.1", "no port"),
            ("192.0.2.1:0", "the port must be 1..=65535"),
            ("192.0.2.1:65536", "the port must be 1..=65535"),
            ("192.0.2.1:", "the port must be 1..=65535"),
            (":9443", "no host"),
            ("2001:db8::1:9443", "an IPv6 address goes in brackets"),
            ("[gw]:9443", "not an IPv6 address in brackets"),
            ("[::1:9443", "not an IPv6 address in brackets"),
            (
                "gw example:9443",
                "the host has characters other than A-Z a-z 0-9 . - _",
            ),
        ];
        for (text, problem) in bad {
            assert_eq!(host_port_problem(text), Some(problem), "{text}");
        }
    }

    #[test]
    fn defaults_break_no_relation() {
        assert_eq!(relations(&Config::default()), vec![]);
    }

    #[test]
    fn peer_timeout_may_equal_twice_the_heartbeat() {
        let mut config = Config::default();
        config.replication.heartbeat_interval_ms = 2_000;
        config.replication.peer_timeout_ms = 4_000;
        assert_eq!(relations(&config), vec![]);
        config.replication.peer_timeout_ms = 3_999;
        let broken = relations(&config);
        assert_eq!(broken.len(), 1);
        assert_eq!(
            broken[0].message,
            "peer_timeout_ms 3999 must be at least 2 × heartbeat_interval_ms (4000)"
        );
    }

    #[test]
    fn segment_may_be_half_the_capacity() {
        let mut config = Config::default();
        config.staging.capacity_bytes = 128 << 20;
        config.staging.segment_bytes = 64 << 20;
        assert_eq!(relations(&config), vec![]);
        config.staging.segment_bytes = (64 << 20) + 4096;
        let broken = relations(&config);
        assert_eq!(broken.len(), 1);
        assert_eq!(broken[0].fields[0], "staging.segment_bytes");
        assert_eq!(
            broken[0].message,
            "segment_bytes 67112960 must be at most capacity_bytes / 2 (67108864)"
        );
    }
}
