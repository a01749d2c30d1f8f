//! Value checks. Single-field checks run inside deserialization (each is a
//! `deserialize_with` helper named in the struct definitions), so an invalid
//! value is a serde error carrying the value's span, located and collected like
//! any other. Rules that relate two fields run on the typed result
//! ([`relations`]). Ranges are written here once and quoted by the messages.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::Config;

/// Longest appliance name (a DNS label's limit, so it fits a hostname).
pub(super) const NAME_CHARS_MAX: usize = 63;

pub(super) fn appliance_name<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    match name_problem(&name) {
        None => Ok(name),
        Some(problem) => Err(de::Error::custom(problem)),
    }
}

/// Why `name` is not a valid appliance name, or `None` if it is one.
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
    pub fields: &'static [&'static str],
    pub message: String,
}

/// Rules across fields, checked once every field is valid on its own.
pub(super) fn relations(config: &Config) -> Vec<Relation> {
    let mut broken = Vec::new();
    let replication = &config.replication;
    let timeout_min = replication.heartbeat_interval_ms.saturating_mul(2);
    if replication.peer_timeout_ms < timeout_min {
        broken.push(Relation {
            fields: &[
                "replication.peer_timeout_ms",
                "replication.heartbeat_interval_ms",
            ],
            message: format!(
                "peer_timeout_ms {} must be at least 2 × heartbeat_interval_ms ({timeout_min})",
                replication.peer_timeout_ms
            ),
        });
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
}
