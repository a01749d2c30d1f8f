//! Bandwidth limits on replication traffic (source → target): the weekly
//! schedule of `[bandwidth]` ([`BandwidthSchedule`]) and the token bucket
//! that holds the transceiver to it ([`Throttle`]).
//!
//! The bucket holds at most [`BURST`] worth of the limit in effect, so the
//! link never sees more than a quarter second at line rate beyond the limit.
//! A request larger than that is paid before it is sent: it waits until the
//! bucket, filling past its cap for that one request, holds all of it, so a
//! 4 MiB batch at 1 Mbit/s passes after about 33 s rather than never.
//! Requesters queue in arrival order (a fair mutex); only the head waits on
//! the bucket, so the time it waits is the time the link was throttled.
//!
//! The limit is read again at least every [`RECHECK`] while waiting, and at
//! once when [`Throttle::set_schedule`] (SIGHUP) changes the schedule: a wait
//! begun at 50 Mbit/s before 18:00 ends soon after 18:00 if the limit then
//! goes away.
//!
//! Cost sketch: one `acquire` per batch (up to 4 MiB) takes an uncontended
//! mutex, reads the clock (only when the schedule has windows) and walks at
//! most 32 windows: well under a microsecond against milliseconds of sending.
//! A waiter wakes at most once a second. Memory is constant.

use std::fmt::Write as _;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};
use tokio::sync::Notify;
use tokio::time::Instant;

use drgw_config::{BandwidthConfig, BitRate, ScheduleTimeZone, TimeOfDay, Weekday};

/// Most time at the limit the bucket holds: the burst above the limit.
pub const BURST: Duration = Duration::from_millis(250);

/// Longest a waiter sleeps before it reads the schedule again.
pub const RECHECK: Duration = Duration::from_secs(1);

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// When replication may send how fast: a default limit and weekly windows,
/// read on the local clock or on UTC. Built from `[bandwidth]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BandwidthSchedule {
    time_zone: ScheduleTimeZone,
    /// Zero is unlimited.
    default_limit: BitRate,
    windows: Vec<ScheduleWindow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ScheduleWindow {
    /// Bit `d` for the day `d` days from Monday: the days it starts on.
    days_mask: u8,
    start: TimeOfDay,
    /// Not after `start`: the window ends on the next day.
    end: TimeOfDay,
    /// Above zero.
    limit: BitRate,
}

impl From<&BandwidthConfig> for BandwidthSchedule {
    /// A window the config left incomplete (only a config that failed
    /// validation has one) is left out.
    fn from(config: &BandwidthConfig) -> Self {
        let windows = config.windows.iter().filter_map(|window| {
            let days_mask = window
                .days
                .iter()
                .fold(0, |mask, day| mask | (1 << day.days_from_monday()));
            Some(ScheduleWindow {
                days_mask,
                start: window.start?,
                end: window.end?,
                limit: window.mbit.filter(|limit| !limit.is_zero())?,
            })
        });
        Self {
            time_zone: config.timezone,
            default_limit: config.default_mbit,
            windows: windows.collect(),
        }
    }
}

impl BandwidthSchedule {
    /// No limit at any time: the schedule of a config without `[bandwidth]`.
    pub fn unlimited() -> Self {
        Self::default()
    }

    pub fn time_zone(&self) -> ScheduleTimeZone {
        self.time_zone
    }

    /// `now` on the clock the windows are read on.
    pub fn wall_clock(&self, now: DateTime<Utc>) -> NaiveDateTime {
        match self.time_zone {
            ScheduleTimeZone::Local => now.with_timezone(&chrono::Local).naive_local(),
            ScheduleTimeZone::Utc => now.naive_utc(),
        }
    }

    /// The limit at `when` (on the schedule's clock, see
    /// [`Self::wall_clock`]) in bytes per second; `None` is unlimited. Where
    /// windows overlap, the lowest limit applies; where none applies, the
    /// default.
    pub fn limit_at(&self, when: NaiveDateTime) -> Option<u64> {
        let day = when.weekday().num_days_from_monday();
        let minute = (when.hour() * 60 + when.minute()) as u16;
        let applying = self.windows.iter().filter(|w| w.contains(day, minute));
        let limit = applying
            .map(|w| w.limit)
            .min()
            .unwrap_or(self.default_limit);
        Some(limit.bytes_per_second()).filter(|bytes| *bytes > 0)
    }

    /// The limit now, in bytes per second; `None` is unlimited.
    pub fn limit_now(&self) -> Option<u64> {
        self.limit_on(&Utc::now)
    }

    /// The limit at the time `clock` tells, reading it only if the limit
    /// can change with the time.
    fn limit_on(&self, clock: &dyn Fn() -> DateTime<Utc>) -> Option<u64> {
        if self.windows.is_empty() {
            return Some(self.default_limit.bytes_per_second()).filter(|bytes| *bytes > 0);
        }
        self.limit_at(self.wall_clock(clock()))
    }

    /// One line for logs and status, e.g. `unlimited outside windows; 50
    /// Mbit/s mon,tue,wed,thu,fri 08:00-18:00; local time`.
    pub fn describe(&self) -> String {
        let default = match self.default_limit.is_zero() {
            true => "unlimited".to_owned(),
            false => self.default_limit.to_string(),
        };
        if self.windows.is_empty() {
            return format!("{default} at all times");
        }
        let mut text = format!("{default} outside windows");
        for window in &self.windows {
            let (start, end) = (window.start, window.end);
            let days = describe_days(window.days_mask);
            write!(text, "; {} {days} {start}-{end}", window.limit).expect("writing to a String");
            if end <= start {
                text.push_str(" (next day)");
            }
        }
        write!(text, "; {} time", self.time_zone).expect("writing to a String");
        text
    }
}

impl ScheduleWindow {
    /// Whether the window covers `minute` of day `day` (days from Monday):
    /// within one day, or for a window past midnight, in its evening on a
    /// listed day or in its morning on the day after one.
    fn contains(&self, day: u32, minute: u16) -> bool {
        let starts_on = |day: u32| self.days_mask & (1 << day) != 0;
        let (start, end) = (self.start.minute_of_day(), self.end.minute_of_day());
        if start < end {
            return starts_on(day) && (start..end).contains(&minute);
        }
        let day_before = (day + 6) % 7;
        (starts_on(day) && minute >= start) || (starts_on(day_before) && minute < end)
    }
}

/// `daily`, or the days' names joined by commas.
fn describe_days(days_mask: u8) -> String {
    if days_mask == 0x7f {
        return "daily".to_owned();
    }
    let listed = Weekday::ALL
        .into_iter()
        .filter(|day| days_mask & (1 << day.days_from_monday()) != 0);
    listed.map(Weekday::as_str).collect::<Vec<_>>().join(",")
}

/// Tells the wall-clock time; [`Throttle::with_clock`] takes one for tests.
type WallClock = Box<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Holds the transceiver to a [`BandwidthSchedule`]: a token bucket whose
/// rate follows the schedule. Shared (`Arc`) between the senders and the
/// reload path.
pub struct Throttle {
    bucket: Mutex<Bucket>,
    /// Requesters take turns, first come first served; the holder is the
    /// head, the only one waiting on the bucket.
    turn: tokio::sync::Mutex<()>,
    /// Wakes the head when the schedule changes.
    schedule_changed: Notify,
    clock: WallClock,
    throttled_nanos_total: AtomicU64,
    bytes_admitted_total: AtomicU64,
}

/// The bucket, counted in nanobytes (bytes × 10^9) so that a refill of
/// `rate × elapsed nanoseconds` is exact in integers.
#[derive(Debug)]
struct Bucket {
    schedule: BandwidthSchedule,
    /// Bytes per second the tokens were last counted at; `None` unlimited.
    limit: Option<u64>,
    tokens_nanobytes: u128,
    counted_at: Instant,
}

impl Throttle {
    /// A throttle reading the schedule on the system clock.
    pub fn new(schedule: BandwidthSchedule) -> Self {
        Self::with_clock(schedule, Utc::now)
    }

    /// A throttle reading the schedule on `clock` (tests drive it).
    pub fn with_clock(
        schedule: BandwidthSchedule,
        clock: impl Fn() -> DateTime<Utc> + Send + Sync + 'static,
    ) -> Self {
        let bucket = Bucket {
            schedule,
            limit: None,
            tokens_nanobytes: 0,
            counted_at: Instant::now(),
        };
        Self {
            bucket: Mutex::new(bucket),
            turn: tokio::sync::Mutex::new(()),
            schedule_changed: Notify::new(),
            clock: Box::new(clock),
            throttled_nanos_total: AtomicU64::new(0),
            bytes_admitted_total: AtomicU64::new(0),
        }
    }

    /// Applies `schedule` at once, also to a wait under way (SIGHUP).
    pub fn set_schedule(&self, schedule: BandwidthSchedule) {
        let mut bucket = self.lock_bucket();
        if bucket.schedule != schedule {
            tracing::info!("bandwidth schedule: {}", schedule.describe());
            bucket.schedule = schedule;
        }
        drop(bucket);
        self.schedule_changed.notify_waiters();
    }

    /// The schedule in effect.
    pub fn schedule(&self) -> BandwidthSchedule {
        self.lock_bucket().schedule.clone()
    }

    /// Waits until `bytes` may be sent under the limit in effect, then
    /// counts them as sent. Cancel-safe: dropped before it returns, it has
    /// taken nothing.
    pub async fn acquire(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let _turn = self.turn.lock().await;
        let mut throttled_since = None;
        loop {
            let mut changed = pin!(self.schedule_changed.notified());
            // Registered before the schedule is read: a change from here on
            // wakes this wait.
            changed.as_mut().enable();
            let now = Instant::now();
            let wait = {
                let mut bucket = self.lock_bucket();
                let limit = bucket.schedule.limit_on(&self.clock);
                bucket.take(now, limit, bytes, throttled_since.is_some())
            };
            let Some(wait) = wait else {
                break;
            };
            throttled_since.get_or_insert(now);
            tokio::select! {
                _ = tokio::time::sleep(wait.min(RECHECK)) => {}
                _ = changed => {}
            }
        }
        if let Some(since) = throttled_since {
            let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.throttled_nanos_total
                .fetch_add(nanos, Ordering::Relaxed);
        }
        self.bytes_admitted_total
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// The limit in effect now, in bytes per second; `None` is unlimited.
    pub fn current_limit_bytes_per_second(&self) -> Option<u64> {
        self.lock_bucket().schedule.limit_on(&self.clock)
    }

    /// Milliseconds requesters have waited on the limit, in total.
    pub fn throttled_ms_total(&self) -> u64 {
        self.throttled_nanos_total.load(Ordering::Relaxed) / 1_000_000
    }

    /// Bytes `acquire` has let through, in total.
    pub fn bytes_admitted_total(&self) -> u64 {
        self.bytes_admitted_total.load(Ordering::Relaxed)
    }

    /// The bucket is left consistent at every step, so a panic elsewhere
    /// that poisoned the lock leaves nothing to repair.
    fn lock_bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("bucket", &*self.lock_bucket())
            .field("throttled_ms_total", &self.throttled_ms_total())
            .field("bytes_admitted_total", &self.bytes_admitted_total())
            .finish_non_exhaustive()
    }
}

impl Bucket {
    /// Brings the tokens to `now` and takes `bytes` if they are there;
    /// otherwise says how long until they will be. `waiting` says the
    /// requester has waited since the last count: only then may the bucket
    /// fill past its cap, up to `bytes`, so that a large request is paid in
    /// waiting time rather than refused, and idle time never buys more than
    /// [`BURST`].
    fn take(
        &mut self,
        now: Instant,
        limit: Option<u64>,
        bytes: u64,
        waiting: bool,
    ) -> Option<Duration> {
        let needed = u128::from(bytes) * NANOS_PER_SECOND;
        // The time since the last count ran at the limit then in effect.
        if let Some(rate) = self.limit {
            let cap = match waiting {
                true => burst_nanobytes(rate).max(needed),
                false => burst_nanobytes(rate),
            };
            let elapsed = now.saturating_duration_since(self.counted_at).as_nanos();
            let earned = u128::from(rate).saturating_mul(elapsed);
            self.tokens_nanobytes = self.tokens_nanobytes.saturating_add(earned).min(cap);
        }
        self.counted_at = now;
        if limit != self.limit {
            self.change_limit(limit, needed);
        }
        let Some(rate) = limit else {
            return None; // Unlimited: admitted.
        };
        debug_assert!(rate > 0, "a limit of zero is unlimited, never a rate");
        if self.tokens_nanobytes >= needed {
            self.tokens_nanobytes -= needed;
            return None;
        }
        let missing = needed - self.tokens_nanobytes;
        let nanos = missing.div_ceil(u128::from(rate));
        Some(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }

    /// A new limit (a window edge or a new schedule): from unlimited the
    /// bucket starts full; between limits it keeps what it holds, within
    /// the new cap.
    fn change_limit(&mut self, limit: Option<u64>, needed: u128) {
        match limit {
            Some(rate) => tracing::info!(
                limit_bytes_per_second = rate,
                "replication bandwidth limited to {}",
                BitRate::from_bits_per_second(rate.saturating_mul(8))
            ),
            None => tracing::info!("replication bandwidth unlimited"),
        }
        if let Some(rate) = limit {
            let cap = burst_nanobytes(rate).max(needed);
            self.tokens_nanobytes = match self.limit {
                None => burst_nanobytes(rate),
                Some(_) => self.tokens_nanobytes.min(cap),
            };
        }
        self.limit = limit;
    }
}

/// The cap of the bucket at `rate` bytes per second.
fn burst_nanobytes(rate: u64) -> u128 {
    u128::from(rate) * BURST.as_nanos()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use chrono::NaiveDate;

    use super::*;
    use drgw_config::Config;

    fn schedule(toml: &str) -> BandwidthSchedule {
        let config = Config::parse(toml, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
        BandwidthSchedule::from(&config.bandwidth)
    }

    /// 2024-01-01 is a Monday: `day` 0 is Monday, 6 Sunday.
    fn at(day: u32, hour: u32, minute: u32) -> NaiveDateTime {
        let date = NaiveDate::from_ymd_opt(2024, 1, 1 + day).unwrap();
        date.and_hms_opt(hour, minute, 0).unwrap()
    }

    const OFFICE_HOURS: &str = r#"
[bandwidth]
timezone = "UTC"
[[bandwidth.window]]
days = ["mon", "tue", "wed", "thu", "fri"]
start = "08:00"
end = "18:00"
mbit = 50
"#;

    /// 50 Mbit/s in bytes per second.
    const FIFTY_MBIT: u64 = 6_250_000;

    #[test]
    fn weekday_window_applies_from_its_start_to_just_before_its_end() {
        let schedule = schedule(OFFICE_HOURS);
        assert_eq!(schedule.limit_at(at(0, 8, 0)), Some(FIFTY_MBIT));
        assert_eq!(schedule.limit_at(at(2, 12, 30)), Some(FIFTY_MBIT));
        assert_eq!(schedule.limit_at(at(4, 17, 59)), Some(FIFTY_MBIT));
        assert_eq!(schedule.limit_at(at(0, 7, 59)), None);
        assert_eq!(schedule.limit_at(at(4, 18, 0)), None);
    }

    #[test]
    fn weekend_falls_back_to_the_default() {
        assert_eq!(schedule(OFFICE_HOURS).limit_at(at(5, 12, 0)), None);
        assert_eq!(schedule(OFFICE_HOURS).limit_at(at(6, 9, 0)), None);
        let with_default = OFFICE_HOURS.replace("timezone", "default_mbit = 0.5\ntimezone");
        let schedule = schedule(&with_default);
        assert_eq!(schedule.limit_at(at(5, 12, 0)), Some(62_500));
        assert_eq!(schedule.limit_at(at(0, 9, 0)), Some(FIFTY_MBIT));
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts() {
        let schedule = schedule(
            "[[bandwidth.window]]\ndays = [\"fri\"]\nstart = \"22:00\"\nend = \"06:00\"\nmbit = 8\n",
        );
        let limited = Some(1_000_000);
        assert_eq!(schedule.limit_at(at(4, 22, 0)), limited, "friday night");
        assert_eq!(schedule.limit_at(at(4, 23, 59)), limited);
        assert_eq!(schedule.limit_at(at(5, 0, 0)), limited, "saturday morning");
        assert_eq!(schedule.limit_at(at(5, 5, 59)), limited);
        assert_eq!(schedule.limit_at(at(5, 6, 0)), None);
        assert_eq!(
            schedule.limit_at(at(4, 5, 0)),
            None,
            "thursday is not listed"
        );
        assert_eq!(schedule.limit_at(at(5, 22, 0)), None, "nor saturday");
        // Sunday night runs into Monday morning: the week wraps.
        let schedule = self::schedule(
            "[[bandwidth.window]]\ndays = [\"sun\"]\nstart = \"23:00\"\nend = \"01:00\"\nmbit = 8\n",
        );
        assert_eq!(schedule.limit_at(at(0, 0, 30)), limited);
        assert_eq!(schedule.limit_at(at(0, 23, 30)), None);
    }

    #[test]
    fn a_window_to_the_end_of_the_day_and_one_ending_at_midnight() {
        let schedule = schedule(
            "[[bandwidth.window]]\ndays = [\"sat\"]\nstart = \"00:00\"\nend = \"24:00\"\nmbit = 8\n\
             [[bandwidth.window]]\ndays = [\"mon\"]\nstart = \"20:00\"\nend = \"00:00\"\nmbit = 16\n",
        );
        assert_eq!(schedule.limit_at(at(5, 0, 0)), Some(1_000_000));
        assert_eq!(schedule.limit_at(at(5, 23, 59)), Some(1_000_000));
        assert_eq!(schedule.limit_at(at(6, 0, 0)), None);
        assert_eq!(schedule.limit_at(at(0, 23, 59)), Some(2_000_000));
        assert_eq!(schedule.limit_at(at(1, 0, 0)), None);
    }

    #[test]
    fn overlapping_windows_pick_the_lowest_limit() {
        let schedule = schedule(
            "[bandwidth]\ndefault_mbit = 100\n\
             [[bandwidth.window]]\nstart = \"08:00\"\nend = \"18:00\"\nmbit = 50\n\
             [[bandwidth.window]]\ndays = [\"wed\"]\nstart = \"12:00\"\nend = \"13:00\"\nmbit = 10\n\
             [[bandwidth.window]]\ndays = [\"wed\"]\nstart = \"12:30\"\nend = \"14:00\"\nmbit = 20\n",
        );
        assert_eq!(schedule.limit_at(at(2, 11, 0)), Some(FIFTY_MBIT));
        assert_eq!(
            schedule.limit_at(at(2, 12, 45)),
            Some(1_250_000),
            "10 beats 20 and 50"
        );
        assert_eq!(
            schedule.limit_at(at(2, 13, 30)),
            Some(2_500_000),
            "20 beats 50"
        );
        assert_eq!(
            schedule.limit_at(at(2, 19, 0)),
            Some(12_500_000),
            "the default"
        );
        assert_eq!(
            schedule.limit_at(at(6, 12, 45)),
            Some(FIFTY_MBIT),
            "days default to all"
        );
    }

    #[test]
    fn a_window_replaces_the_default_even_when_it_is_higher() {
        let schedule = schedule(
            "[bandwidth]\ndefault_mbit = 10\n\
             [[bandwidth.window]]\nstart = \"22:00\"\nend = \"06:00\"\nmbit = 100\n",
        );
        assert_eq!(schedule.limit_at(at(3, 12, 0)), Some(1_250_000));
        assert_eq!(schedule.limit_at(at(3, 23, 0)), Some(12_500_000));
    }

    #[test]
    fn the_default_schedule_is_unlimited() {
        let schedule = schedule("");
        assert_eq!(schedule, BandwidthSchedule::unlimited());
        assert_eq!(schedule.limit_at(at(0, 12, 0)), None);
        assert_eq!(schedule.limit_now(), None);
        assert_eq!(schedule.time_zone(), ScheduleTimeZone::Local);
        let constant = self::schedule("[bandwidth]\ndefault_mbit = 0.01\n");
        assert_eq!(constant.limit_now(), Some(1_250));
    }

    #[test]
    fn utc_schedules_read_the_utc_clock() {
        let schedule = schedule(OFFICE_HOURS);
        let now = at(0, 9, 0).and_utc();
        assert_eq!(schedule.wall_clock(now), at(0, 9, 0));
    }

    #[test]
    fn describe_says_what_applies_when() {
        assert_eq!(schedule("").describe(), "unlimited at all times");
        assert_eq!(
            schedule("[bandwidth]\ndefault_mbit = 2.5\n").describe(),
            "2.5 Mbit/s at all times"
        );
        let text = format!(
            "{OFFICE_HOURS}[[bandwidth.window]]\nstart = \"22:00\"\nend = \"06:00\"\nmbit = 0.5\n"
        );
        assert_eq!(
            schedule(&text).describe(),
            "unlimited outside windows; 50 Mbit/s mon,tue,wed,thu,fri 08:00-18:00; \
             0.5 Mbit/s daily 22:00-06:00 (next day); UTC time"
        );
    }

    /// A clock that starts at `start` and runs with tokio's (paused) time.
    fn clock_from(start: NaiveDateTime) -> impl Fn() -> DateTime<Utc> + Send + Sync + 'static {
        let started = Instant::now();
        let start = start.and_utc();
        move || start + chrono::TimeDelta::from_std(started.elapsed()).unwrap()
    }

    /// Seconds since `since`, on tokio's clock.
    fn seconds_since(since: Instant) -> f64 {
        since.elapsed().as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn ten_megabytes_at_eight_mbit_take_ten_seconds() {
        let throttle = Throttle::new(schedule("[bandwidth]\ndefault_mbit = 8\n"));
        assert_eq!(throttle.current_limit_bytes_per_second(), Some(1_000_000));
        let started = Instant::now();
        for _ in 0..100 {
            throttle.acquire(100_000).await;
        }
        let seconds = seconds_since(started);
        assert!((9.5..=10.5).contains(&seconds), "took {seconds} s");
        assert_eq!(throttle.bytes_admitted_total(), 10_000_000);
        let throttled_ms = throttle.throttled_ms_total();
        assert!(
            (9_500..=10_500).contains(&throttled_ms),
            "{throttled_ms} ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_burst_is_a_quarter_second_of_the_limit() {
        let throttle = Throttle::new(schedule("[bandwidth]\ndefault_mbit = 8\n"));
        let started = Instant::now();
        throttle.acquire(250_000).await;
        assert_eq!(seconds_since(started), 0.0, "a full bucket sends at once");
        throttle.acquire(1).await;
        assert!(seconds_since(started) > 0.0, "and then it is empty");
        // Idle time refills the bucket, but never past the burst.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let started = Instant::now();
        throttle.acquire(500_000).await;
        let seconds = seconds_since(started);
        assert!((0.24..=0.26).contains(&seconds), "took {seconds} s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_request_passes_after_its_time() {
        let throttle = Throttle::new(schedule("[bandwidth]\ndefault_mbit = 1\n"));
        let started = Instant::now();
        let batch = 4 << 20;
        let acquired = tokio::time::timeout(Duration::from_secs(60), throttle.acquire(batch));
        acquired.await.expect("a 4 MiB batch at 1 Mbit/s must pass");
        // 4 MiB at 125,000 bytes/s is 33.55 s, less the full bucket's 0.25 s.
        let seconds = seconds_since(started);
        assert!((33.2..=33.4).contains(&seconds), "took {seconds} s");
        // It was paid for: the bucket is empty after it.
        let started = Instant::now();
        throttle.acquire(125_000).await;
        let seconds = seconds_since(started);
        assert!((0.99..=1.01).contains(&seconds), "took {seconds} s");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let throttle = Throttle::new(BandwidthSchedule::unlimited());
        let started = Instant::now();
        for _ in 0..1_000 {
            throttle.acquire(u64::from(u32::MAX)).await;
        }
        assert_eq!(seconds_since(started), 0.0);
        assert_eq!(throttle.current_limit_bytes_per_second(), None);
        assert_eq!(throttle.throttled_ms_total(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_schedule_ends_a_wait_under_the_old_one() {
        let throttle = Arc::new(Throttle::new(schedule("[bandwidth]\ndefault_mbit = 1\n")));
        let started = Instant::now();
        let waiter = tokio::spawn({
            let throttle = Arc::clone(&throttle);
            async move { throttle.acquire(1_250_000).await }
        });
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(!waiter.is_finished(), "1.25 MB at 1 Mbit/s takes 10 s");
        throttle.set_schedule(BandwidthSchedule::unlimited());
        waiter.await.unwrap();
        assert_eq!(seconds_since(started), 1.5, "unlimited from the change on");
        assert_eq!(throttle.current_limit_bytes_per_second(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_faster_schedule_shortens_a_wait_and_keeps_what_was_earned() {
        let throttle = Arc::new(Throttle::new(schedule("[bandwidth]\ndefault_mbit = 1\n")));
        let started = Instant::now();
        let waiter = tokio::spawn({
            let throttle = Arc::clone(&throttle);
            async move { throttle.acquire(1_250_000).await }
        });
        tokio::time::sleep(Duration::from_millis(1_750)).await;
        // 0.25 s of burst and 1.75 s at 125,000 bytes/s: 250,000 earned;
        // the other 1,000,000 at 10 Mbit/s take 0.8 s more.
        throttle.set_schedule(schedule("[bandwidth]\ndefault_mbit = 10\n"));
        waiter.await.unwrap();
        let seconds = seconds_since(started);
        assert!((2.54..=2.56).contains(&seconds), "took {seconds} s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_that_ends_ends_the_wait() {
        // Monday 17:59:58, two seconds before the 50 Mbit/s window closes,
        // here at 1 Mbit/s so that the batch would take 33 s in it.
        let text = OFFICE_HOURS.replace("mbit = 50", "mbit = 1");
        let clock = clock_from(at(0, 17, 59) + chrono::TimeDelta::seconds(58));
        let throttle = Throttle::with_clock(schedule(&text), clock);
        assert_eq!(throttle.current_limit_bytes_per_second(), Some(125_000));
        let started = Instant::now();
        throttle.acquire(4 << 20).await;
        let seconds = seconds_since(started);
        assert!((2.0..=3.0).contains(&seconds), "took {seconds} s");
        assert_eq!(throttle.current_limit_bytes_per_second(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_that_starts_slows_what_follows() {
        // Monday 07:59:59, one second before the window opens.
        let text = OFFICE_HOURS.replace("mbit = 50", "mbit = 8");
        let clock = clock_from(at(0, 7, 59) + chrono::TimeDelta::seconds(59));
        let throttle = Throttle::with_clock(schedule(&text), clock);
        throttle.acquire(100 << 20).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        for _ in 0..20 {
            throttle.acquire(100_000).await;
        }
        // 2 MB at 1 MB/s, less the 0.25 MB the bucket starts with.
        let seconds = seconds_since(started);
        assert!((1.7..=1.8).contains(&seconds), "took {seconds} s");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requesters_share_the_limit_in_turn() {
        let throttle = Arc::new(Throttle::new(schedule("[bandwidth]\ndefault_mbit = 8\n")));
        let started = Instant::now();
        let senders: Vec<_> = (0..4)
            .map(|_| {
                let throttle = Arc::clone(&throttle);
                tokio::spawn(async move {
                    for _ in 0..25 {
                        throttle.acquire(100_000).await;
                    }
                })
            })
            .collect();
        for sender in senders {
            sender.await.unwrap();
        }
        let seconds = seconds_since(started);
        assert!((9.5..=10.5).contains(&seconds), "took {seconds} s");
        assert_eq!(throttle.bytes_admitted_total(), 10_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_request_takes_nothing() {
        let throttle = Throttle::new(schedule("[bandwidth]\ndefault_mbit = 8\n"));
        throttle.acquire(250_000).await;
        let cancelled =
            tokio::time::timeout(Duration::from_millis(100), throttle.acquire(1_000_000));
        assert!(cancelled.await.is_err());
        assert_eq!(throttle.bytes_admitted_total(), 250_000);
        // The 0.1 s waited earned 100,000 bytes, still in the bucket.
        let started = Instant::now();
        throttle.acquire(100_000).await;
        assert_eq!(seconds_since(started), 0.0);
    }

    #[test]
    fn a_throttle_is_shared_between_threads() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Throttle>();
        shareable::<BandwidthSchedule>();
    }
}
