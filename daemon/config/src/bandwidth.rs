//! `[bandwidth]`: how fast the transceiver may send replication traffic to
//! the target appliance, as a default limit and weekly windows
//! (`[[bandwidth.window]]`). The schema and its value types live here; the
//! ranges are checked in `validate`, and `crate::throttle` turns the section
//! into a `BandwidthSchedule` and enforces it. Every key is reloadable.

use std::fmt;
use std::ops::RangeInclusive;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::validate;

/// `[bandwidth]`. The default (no section) is unlimited at all times.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BandwidthConfig {
    /// The limit when no window applies; zero is unlimited.
    #[serde(deserialize_with = "validate::default_mbit")]
    pub default_mbit: BitRate,
    /// The clock the windows are read on.
    pub timezone: ScheduleTimeZone,
    /// `[[bandwidth.window]]`, at most `BANDWIDTH_WINDOWS_MAX`.
    #[serde(rename = "window", skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<BandwidthWindow>,
}

/// One `[[bandwidth.window]]`: a limit that applies on some days between two
/// times of day. A window whose `end` is not after its `start` crosses
/// midnight and ends on the next day; the days listed are the days it starts.
///
/// `start`, `end` and `mbit` are required: they are `None` only in a file
/// that leaves them out, which is reported (`validate::missing`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthWindow {
    /// The days the window starts on, each at most once. Default: every day.
    #[serde(default = "Weekday::every_day", deserialize_with = "validate::days")]
    pub days: Vec<Weekday>,
    /// 00:00 to 23:59.
    #[serde(
        default,
        deserialize_with = "validate::window_start",
        skip_serializing_if = "Option::is_none"
    )]
    pub start: Option<TimeOfDay>,
    /// 00:00 to 24:00, not equal to `start`.
    #[serde(
        default,
        deserialize_with = "validate::window_end",
        skip_serializing_if = "Option::is_none"
    )]
    pub end: Option<TimeOfDay>,
    /// Above zero: a window limits replication, it cannot pause it.
    #[serde(
        default,
        deserialize_with = "validate::window_mbit",
        skip_serializing_if = "Option::is_none"
    )]
    pub mbit: Option<BitRate>,
}

/// A rate written in Mbit/s (decimal: 1 Mbit = 1,000,000 bits), kept in
/// whole bits per second so that configs compare exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BitRate {
    bits_per_second: u64,
}

impl BitRate {
    pub const ZERO: BitRate = BitRate { bits_per_second: 0 };

    pub const fn from_bits_per_second(bits_per_second: u64) -> Self {
        Self { bits_per_second }
    }

    /// `mbit` rounded to the nearest bit per second; negative or NaN is zero.
    pub fn from_mbit(mbit: f64) -> Self {
        // `as` saturates, and maps NaN to 0.
        Self::from_bits_per_second((mbit * 1e6).round() as u64)
    }

    pub const fn bits_per_second(self) -> u64 {
        self.bits_per_second
    }

    /// Whole bytes per second, rounded down but at least 1 unless zero.
    pub const fn bytes_per_second(self) -> u64 {
        match self.bits_per_second {
            0 => 0,
            bits => {
                let bytes = bits / 8;
                if bytes == 0 {
                    1
                } else {
                    bytes
                }
            }
        }
    }

    pub const fn is_zero(self) -> bool {
        self.bits_per_second == 0
    }
}

/// `50 Mbit/s`, `0.5 Mbit/s`.
impl fmt::Display for BitRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.bits_per_second / 1_000_000;
        let fraction = self.bits_per_second % 1_000_000;
        if fraction == 0 {
            return write!(f, "{whole} Mbit/s");
        }
        let digits = format!("{fraction:06}");
        write!(f, "{whole}.{} Mbit/s", digits.trim_end_matches('0'))
    }
}

/// As a whole number of Mbit/s when it is one, so that a serialized config
/// reads as a person would write it; else as a float.
impl Serialize for BitRate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.bits_per_second % 1_000_000 == 0 {
            serializer.serialize_u64(self.bits_per_second / 1_000_000)
        } else {
            serializer.serialize_f64(self.bits_per_second as f64 / 1e6)
        }
    }
}

/// `[bandwidth] timezone`: the clock the windows are read on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ScheduleTimeZone {
    /// The appliance's local time (`/etc/localtime`, or `TZ`), daylight
    /// saving included: a window from 08:00 follows the office clock.
    #[default]
    Local,
    Utc,
}

impl ScheduleTimeZone {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Utc => "UTC",
        }
    }
}

impl fmt::Display for ScheduleTimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ScheduleTimeZone {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// By hand, as for `LogLevel`: a wrong name says what is allowed, and why a
/// named zone is not.
impl<'de> Deserialize<'de> for ScheduleTimeZone {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "local" => Ok(Self::Local),
            "UTC" => Ok(Self::Utc),
            _ => Err(de::Error::custom(format!(
                "unknown timezone `{name}`, expected \"local\" or \"UTC\" (for another zone, \
                 set the appliance's own, e.g. `timedatectl set-timezone`, and use \"local\")"
            ))),
        }
    }
}

/// A day of the week, as `days` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    /// Monday first, as ISO 8601 counts.
    pub const ALL: [Weekday; 7] = [
        Self::Mon,
        Self::Tue,
        Self::Wed,
        Self::Thu,
        Self::Fri,
        Self::Sat,
        Self::Sun,
    ];

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mon => "mon",
            Self::Tue => "tue",
            Self::Wed => "wed",
            Self::Thu => "thu",
            Self::Fri => "fri",
            Self::Sat => "sat",
            Self::Sun => "sun",
        }
    }

    /// 0 for Monday to 6 for Sunday.
    pub fn days_from_monday(self) -> u32 {
        self as u32
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|day| day.as_str() == name)
    }

    /// The default of `days`.
    pub fn every_day() -> Vec<Weekday> {
        Self::ALL.to_vec()
    }
}

impl fmt::Display for Weekday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A time of day to the minute, 00:00 to 24:00 (the end of the day, for a
/// window's `end` only), written `HH:MM` (or `H:MM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay {
    minute_of_day: u16,
}

impl TimeOfDay {
    /// Minutes in a day: the minute of day of 24:00.
    pub const MINUTES_PER_DAY: u16 = 24 * 60;
    pub const MIDNIGHT: TimeOfDay = TimeOfDay { minute_of_day: 0 };
    pub const END_OF_DAY: TimeOfDay = TimeOfDay {
        minute_of_day: Self::MINUTES_PER_DAY,
    };

    /// `None` past 24:00.
    pub const fn from_minute_of_day(minute_of_day: u16) -> Option<Self> {
        if minute_of_day > Self::MINUTES_PER_DAY {
            return None;
        }
        Some(Self { minute_of_day })
    }

    /// 0 for 00:00 to 1440 for 24:00.
    pub const fn minute_of_day(self) -> u16 {
        self.minute_of_day
    }

    /// `HH:MM` or `H:MM`, 00:00 to 24:00.
    pub fn parse(text: &str) -> Option<Self> {
        let (hours, minutes) = text.split_once(':')?;
        let hours = decimal(hours, 1..=2)?;
        let minutes = decimal(minutes, 2..=2)?;
        if hours > 24 || minutes > 59 {
            return None;
        }
        Self::from_minute_of_day(hours * 60 + minutes)
    }
}

/// A number of `widths` decimal digits, nothing else (no sign, no space).
fn decimal(text: &str, widths: RangeInclusive<usize>) -> Option<u16> {
    let is_digits = text.bytes().all(|byte| byte.is_ascii_digit());
    if !is_digits || !widths.contains(&text.len()) {
        return None;
    }
    text.parse().ok()
}

/// `08:00`.
impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (hours, minutes) = (self.minute_of_day / 60, self.minute_of_day % 60);
        write!(f, "{hours:02}:{minutes:02}")
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Any TOML number, integer or float, widened to `f64`, with how it was
/// written for messages (an integer without a decimal point).
pub(super) struct Number {
    pub value: f64,
    pub written: String,
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NumberVisitor)
    }
}

struct NumberVisitor;

impl Visitor<'_> for NumberVisitor {
    type Value = Number;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a number")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Number, E> {
        let written = value.to_string();
        Ok(Number {
            value: value as f64,
            written,
        })
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Number, E> {
        let written = value.to_string();
        Ok(Number {
            value: value as f64,
            written,
        })
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Number, E> {
        let written = value.to_string();
        Ok(Number { value, written })
    }
}
