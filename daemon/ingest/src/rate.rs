//! Per-disk ingest counters with a sliding one-second-bucket window, for
//! the writes/s and MB/s that `drgw status` shows.

use std::time::Instant;

const BUCKETS: usize = 10;

#[derive(Debug, Clone)]
pub struct RateWindow {
    started: Instant,
    /// (second since `started`, records, bytes) per bucket.
    buckets: [(u64, u64, u64); BUCKETS],
    pub records_total: u64,
    pub bytes_total: u64,
}

impl RateWindow {
    pub fn new(now: Instant) -> RateWindow {
        RateWindow {
            started: now,
            buckets: [(u64::MAX, 0, 0); BUCKETS],
            records_total: 0,
            bytes_total: 0,
        }
    }

    pub fn add(&mut self, now: Instant, records: u64, bytes: u64) {
        let second = now.duration_since(self.started).as_secs();
        let bucket = &mut self.buckets[(second % BUCKETS as u64) as usize];
        if bucket.0 != second {
            *bucket = (second, 0, 0);
        }
        bucket.1 += records;
        bucket.2 += bytes;
        self.records_total += records;
        self.bytes_total += bytes;
    }

    /// (records per second, bytes per second) over the last full seconds.
    pub fn rates(&self, now: Instant) -> (f64, f64) {
        let current = now.duration_since(self.started).as_secs();
        let window = (BUCKETS as u64 - 1).min(current.max(1));
        let (mut records, mut bytes) = (0u64, 0u64);
        for (second, bucket_records, bucket_bytes) in self.buckets {
            if second != u64::MAX && second < current && current - second <= window {
                records += bucket_records;
                bytes += bucket_bytes;
            }
        }
        (records as f64 / window as f64, bytes as f64 / window as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn steady_rate_is_measured_and_old_buckets_expire() {
        let start = Instant::now();
        let mut window = RateWindow::new(start);
        for second in 0..20u64 {
            window.add(start + Duration::from_secs(second), 100, 1_000_000);
        }
        let (records, bytes) = window.rates(start + Duration::from_millis(20_500));
        assert!((records - 100.0).abs() < 1e-9, "{records}");
        assert!((bytes - 1e6).abs() < 1e-3, "{bytes}");
        let (idle, _) = window.rates(start + Duration::from_secs(60));
        assert_eq!(idle, 0.0);
        assert_eq!(window.records_total, 2000);
    }
}
