//! Logging: to journald when systemd started us with the journal on our
//! output (JOURNAL_STREAM), to stderr otherwise. The level comes from the
//! config and follows SIGHUP; DRGW_LOG (an EnvFilter directive) overrides it.

use drgw_config::LogLevel;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    overridden: bool,
    pub destination: &'static str,
}

fn filter_for(level: LogLevel) -> EnvFilter {
    match std::env::var("DRGW_LOG") {
        Ok(directive) => {
            EnvFilter::try_new(directive).unwrap_or_else(|_| EnvFilter::new(level.as_str()))
        }
        Err(_) => EnvFilter::new(level.as_str()),
    }
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(level: LogLevel) -> LogControl {
    let (filter, handle) = reload::Layer::new(filter_for(level));
    let journald = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| tracing_journald::layer().ok())
        .map(|layer| layer.with_syslog_identifier("drgw".into()));
    let destination = if journald.is_some() {
        "journald"
    } else {
        "stderr"
    };
    let stderr = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .try_init();
    LogControl {
        handle,
        overridden: std::env::var_os("DRGW_LOG").is_some(),
        destination,
    }
}

impl LogControl {
    pub fn set_level(&self, level: LogLevel) {
        if self.overridden {
            return;
        }
        if let Err(error) = self.handle.reload(filter_for(level)) {
            tracing::warn!(%error, "cannot change the log level");
        }
    }
}
