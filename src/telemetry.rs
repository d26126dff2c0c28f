//! Telemetry: `tracing` set up once per process, and the names of every metric.
//!
//! Logs go to stderr (stdout belongs to the CLI's answers), human-readable by default and one
//! JSON object per line with `LOG_FORMAT=json`. The filter comes from `RUST_LOG` (default
//! `info`). Personal data never reaches a log line: callers log ids and masked values only
//! (see `domain::mask_identification_number`, `domain::mask_phone`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Safe to call more than once: later calls do nothing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Metric names (`uidflow_<noun>_<unit>[_total]`); labels have bounded values only.
pub mod metrics {
    /// Counter of intake deliveries by `outcome` (received, rejected, duplicate, conflict,
    /// malformed, invalid).
    pub const INTAKE_MESSAGES_TOTAL: &str = "uidflow_intake_messages_total";
    /// Histogram of the time from delivery to ack, by `outcome`.
    pub const INTAKE_DURATION_SECONDS: &str = "uidflow_intake_duration_seconds";
    /// Counter of outbox messages published, by `exchange`.
    pub const OUTBOX_PUBLISHED_TOTAL: &str = "uidflow_outbox_published_total";
    /// Counter of outbox publishes the broker refused or returned, by `exchange`.
    pub const OUTBOX_FAILED_TOTAL: &str = "uidflow_outbox_failed_total";
    /// Counter of dead letters parked, by `kind`.
    pub const DEAD_LETTERS_TOTAL: &str = "uidflow_dead_letters_total";
}
