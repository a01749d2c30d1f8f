//! Staging log throughput: N concurrent appenders of 1 MiB write records
//! (incompressible data) into a log in DIR, released as soon as durable (as if
//! the target acknowledged instantly). Prints MB/s and barrier counts.
//!
//! Usage: bench_staging DIR
//! Env: STAGING_BENCH_BYTES (default 4 GiB), STAGING_BENCH_APPENDERS (32),
//!      STAGING_BENCH_RECORD_BYTES (1 MiB), STAGING_BENCH_ENCRYPT (0/1),
//!      STAGING_BENCH_BATCH_BYTES (8 MiB), STAGING_BENCH_QUEUE_DEPTH (32).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drgw_staging::{RecordBody, StagingConfig, StagingLog};

const POOL_RECORDS: usize = 64;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Incompressible bytes (xorshift64*), distinct per pool slot.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::main]
async fn main() {
    let directory = std::env::args().nth(1).expect("usage: bench_staging DIR");
    let total_bytes = env_u64("STAGING_BENCH_BYTES", 4 << 30);
    let appenders = env_u64("STAGING_BENCH_APPENDERS", 32).max(1);
    let record_bytes = env_u64("STAGING_BENCH_RECORD_BYTES", 1 << 20) as usize;
    let directory = std::path::Path::new(&directory).join("bench-staging");
    let _ = std::fs::remove_dir_all(&directory);
    let mut config = StagingConfig::new(&directory, 1, 1 << 30);
    config.batch_bytes_max = env_u64("STAGING_BENCH_BATCH_BYTES", 8 << 20) as usize;
    config.queue_depth = env_u64("STAGING_BENCH_QUEUE_DEPTH", 32) as u32;
    if env_u64("STAGING_BENCH_ENCRYPT", 0) == 1 {
        config.encryption_key = Some([0x42; 32]);
    }
    let (log, _) = StagingLog::open(config).expect("open staging log");
    let log = Arc::new(log);
    let pool: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..POOL_RECORDS)
            .map(|i| random_bytes(record_bytes, i as u64 + 1))
            .collect(),
    );
    let records_total = total_bytes / record_bytes as u64;
    let next = Arc::new(AtomicU64::new(0));
    let releaser = spawn_releaser(log.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let (log, pool, next) = (log.clone(), pool.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= records_total {
                    return;
                }
                // A fresh copy per record, as a record read off the wire is.
                let data = pool[index as usize % POOL_RECORDS].clone().into();
                let body = RecordBody::Write {
                    disk: 0,
                    offset: index * record_bytes as u64,
                    data,
                };
                log.append(vec![body]).await.expect("append");
            }
        }));
    }
    for task in tasks {
        task.await.expect("appender");
    }
    let elapsed = started.elapsed().as_secs_f64();
    releaser.abort();
    let usage = log.usage();
    let megabytes = (records_total * record_bytes as u64) as f64 / 1e6;
    println!(
        "staging: {megabytes:.0} MB in {elapsed:.2} s = {:.1} MB/s; appenders {appenders}; records {records_total}; \
         barriers {} ({:.1} records/barrier); appends {}",
        megabytes / elapsed,
        usage.barriers_total,
        usage.appends_total as f64 / usage.barriers_total.max(1) as f64,
        usage.appends_total,
    );
    drop(log);
    let _ = std::fs::remove_dir_all(&directory);
}

/// Stands in for the transceiver and target: releases whatever is durable.
fn spawn_releaser(log: Arc<StagingLog>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let durable = log.usage().sequence_last_durable;
            if durable > 0 {
                // Deleting files and syncing the directory blocks: off the runtime.
                let log = log.clone();
                tokio::task::spawn_blocking(move || log.release_through(durable))
                    .await
                    .expect("release task")
                    .expect("release");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}
