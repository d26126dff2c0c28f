//! Telemetry: `tracing` set up once per process, and the names of every metric.
//!
//! Logs go to stderr (stdout belongs to the CLI's answers), human-readable by default and one
//! JSON object per line with `LOG_FORMAT=json`. The filter comes from `RUST_LOG` (default
//! `info`). Personal data never reaches a log line: callers log ids and masked values only
//! (see `domain::mask_identification_number`, `domain::mask_phone`).
//!
//! Built with the `otel` feature and given an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`),
//! spans are also exported over OTLP/HTTP (service `uidflow`); see `crate::trace` for how a
//! delivery's span joins the trace its `traceparent` names.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use url::Url;

use crate::config::LogFormat;

/// Levels no `RUST_LOG` can lift, applied on top of it: lapin and its protocol crate log
/// frames (with message bodies: personal data) at debug and trace, sqlx logs statements at
/// info and debug.
pub fn caps() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("lapin", LevelFilter::INFO)
        .with_target("amq_protocol", LevelFilter::INFO)
        .with_target("sqlx", LevelFilter::WARN)
}

/// Installs the global subscriber. Safe to call more than once: later calls do nothing.
/// `otlp_endpoint` (`Settings::otlp_endpoint`) turns on the OTLP export in a build with the
/// `otel` feature; without the feature it is only warned about.
pub fn init(format: LogFormat, otlp_endpoint: Option<&Url>) {
    init_with_default(format, otlp_endpoint, "info,lapin=warn,sqlx=warn");
}

/// True when stderr (where logs go) is a terminal: only then are log lines coloured.
fn stderr_is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// [`init`] with another filter when `RUST_LOG` is unset (`uidflow bench` keeps to warnings).
pub fn init_with_default(format: LogFormat, otlp_endpoint: Option<&Url>, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    #[cfg(feature = "otel")]
    if let Some(endpoint) = otlp_endpoint {
        otel::init(format, filter, endpoint);
        return;
    }
    // Colours (escape codes) only on a terminal: a log piped to a file or a collector gets
    // plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(stderr_is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.finish().with(caps()).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(caps())
            .try_init(),
    };
    #[cfg(not(feature = "otel"))]
    if otlp_endpoint.is_some() {
        tracing::warn!(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but this build has no OpenTelemetry export; build with --features uidflow/otel"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn rust_log_cannot_lift_the_caps_on_lapin_and_sqlx() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(
                "trace,lapin=trace,lapin::channel=trace,amq_protocol=trace,sqlx=trace,sqlx::query=trace",
            ))
            .with_writer(move || writer.clone())
            .finish()
            .with(caps());
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "lapin::channel", "frame-with-a-body");
            tracing::debug!(target: "lapin", "lapin-debug");
            tracing::trace!(target: "amq_protocol::frame", "amq-frame");
            tracing::info!(target: "sqlx::query", "select-statement");
            tracing::debug!(target: "sqlx_core::pool", "pool-debug");
            tracing::info!(target: "lapin::connection", "lapin-info");
            tracing::warn!(target: "sqlx::query", "slow-statement-warning");
            tracing::trace!(target: "uidflow::runtime", "our-trace");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        for hidden in [
            "frame-with-a-body",
            "lapin-debug",
            "amq-frame",
            "select-statement",
            "pool-debug",
        ] {
            assert!(!text.contains(hidden), "{hidden} logged: {text}");
        }
        for shown in ["lapin-info", "slow-statement-warning", "our-trace"] {
            assert!(text.contains(shown), "{shown} missing: {text}");
        }
    }
}

/// Sends the spans still buffered for export (call before the process exits). Does nothing
/// unless the OTLP export is on.
pub fn flush() {
    #[cfg(feature = "otel")]
    otel::shutdown();
}

/// The OTLP export (feature `otel`).
#[cfg(feature = "otel")]
pub(crate) mod otel {
    use std::sync::OnceLock;

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
    };
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use url::Url;

    use crate::config::LogFormat;
    use crate::trace::TraceContext;

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    /// `<endpoint>/v1/traces`, as the OTLP specification builds it from
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    fn traces_url(endpoint: &Url) -> String {
        format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/'))
    }

    /// The log output of `super::init` plus an OTLP export layer.
    pub(super) fn init(format: LogFormat, filter: EnvFilter, endpoint: &Url) {
        // reqwest is built without a default crypto provider (see `crate::http::client`).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url(endpoint))
            .build()
        {
            Ok(exporter) => Some(exporter),
            Err(error) => {
                eprintln!("warning: OpenTelemetry export is off: {error}");
                None
            }
        };
        let provider = exporter.map(|exporter| {
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name("uidflow").build())
                .build()
        });
        let layer = provider
            .as_ref()
            .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("uidflow")));
        let text = (format == LogFormat::Text).then(|| {
            tracing_subscriber::fmt::layer()
                .with_ansi(super::stderr_is_terminal())
                .with_writer(std::io::stderr)
        });
        let json = (format == LogFormat::Json).then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .json()
                .flatten_event(true)
        });
        let installed = tracing_subscriber::registry()
            .with(super::caps())
            .with(filter)
            .with(text)
            .with(json)
            .with(layer)
            .try_init()
            .is_ok();
        if installed && let Some(provider) = provider {
            let _ = PROVIDER.set(provider);
        }
    }

    /// Makes `span` a child of the remote span `context` names, so the exported span carries
    /// our trace id (its own span id is the OTel layer's).
    pub(crate) fn set_parent(span: &tracing::Span, context: &TraceContext) {
        let flags = if context.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(
            TraceId::from_bytes(context.trace_id),
            SpanId::from_bytes(context.span_id),
            flags,
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }

    /// Flushes and stops the exporter.
    pub(super) fn shutdown() {
        if let Some(provider) = PROVIDER.get() {
            let _ = provider.shutdown();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_traces_url_follows_the_otlp_rule() {
            for (base, expected) in [
                ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
                ("http://collector:4318/", "http://collector:4318/v1/traces"),
                (
                    "https://otel.example/base",
                    "https://otel.example/base/v1/traces",
                ),
            ] {
                assert_eq!(traces_url(&Url::parse(base).unwrap()), expected);
            }
        }
    }
}

/// The process's Prometheus recorder (installed once; later calls return the same handle).
pub fn prometheus() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0, 1800.0,
            ];
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed (a test harness); ours then only renders empty.
            if ::metrics::set_global_recorder(recorder).is_ok() {
                // A recorder made with `build_recorder` keeps every histogram sample until
                // upkeep folds it into the buckets, which `install` would schedule and we must
                // do ourselves: without it, memory grew with every application (about 135
                // bytes each; 145 MiB after 630 000) unless `/metrics` was scraped.
                let upkeep = handle.clone();
                std::thread::Builder::new()
                    .name("metrics-upkeep".into())
                    .spawn(move || {
                        loop {
                            std::thread::sleep(UPKEEP_EVERY);
                            upkeep.run_upkeep();
                        }
                    })
                    .expect("a thread can be started");
            }
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets (the exporter's own default).
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Totals per queue that uidflow itself saw: published (by the outbox), acked and
/// redelivered (by its consumers). Process-wide; the broker knows depths and consumers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueTotals {
    /// Messages this process published to the queue.
    pub published: u64,
    /// Deliveries this process acked from it.
    pub acked: u64,
    /// Deliveries from it that were redeliveries.
    pub redelivered: u64,
}

static QUEUE_TOTALS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, QueueTotals>>,
> = std::sync::LazyLock::new(Default::default);

/// Counts a publish to `queue`.
pub fn count_published(queue: &str) {
    if let Ok(mut totals) = QUEUE_TOTALS.lock() {
        totals.entry(queue.to_owned()).or_default().published += 1;
    }
}

/// Counts an ack of a delivery from `queue`.
pub fn count_acked(queue: &str, redelivered: bool) {
    if let Ok(mut totals) = QUEUE_TOTALS.lock() {
        let entry = totals.entry(queue.to_owned()).or_default();
        entry.acked += 1;
        entry.redelivered += u64::from(redelivered);
    }
}

/// The totals of `queue` so far.
pub fn queue_totals(queue: &str) -> QueueTotals {
    QUEUE_TOTALS
        .lock()
        .map(|t| t.get(queue).copied().unwrap_or_default())
        .unwrap_or_default()
}

/// Records one call to an external system (`mvd`, `sms`) and how it went.
pub fn observe_call<T, E>(
    service: &'static str,
    started: std::time::Instant,
    result: &Result<T, E>,
) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ::metrics::histogram!(metrics::EXTERNAL_CALL_DURATION_SECONDS, "service" => service, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

/// Metric names (`uidflow_<noun>_<unit>[_total]`); labels have bounded values only.
pub mod metrics {
    /// Counter of intake deliveries by `outcome` (received, rejected, duplicate, conflict,
    /// malformed, invalid).
    pub const INTAKE_MESSAGES_TOTAL: &str = "uidflow_intake_messages_total";
    /// Histogram of the time from delivery to ack, by `outcome`.
    pub const INTAKE_DURATION_SECONDS: &str = "uidflow_intake_duration_seconds";
    /// Gauge: 1 while this process's intake is paused because the outbox is behind.
    pub const INTAKE_PAUSED: &str = "uidflow_intake_paused";
    /// Counter of the intake's pauses for the outbox.
    pub const INTAKE_PAUSES_TOTAL: &str = "uidflow_intake_pauses_total";
    /// Counter of outbox messages published, by `exchange`.
    pub const OUTBOX_PUBLISHED_TOTAL: &str = "uidflow_outbox_published_total";
    /// Counter of outbox publishes the broker refused or returned, by `exchange`.
    pub const OUTBOX_FAILED_TOTAL: &str = "uidflow_outbox_failed_total";
    /// Counter of dead letters parked, by `kind`.
    pub const DEAD_LETTERS_TOTAL: &str = "uidflow_dead_letters_total";
    /// Counter of work items refused because it was not their application's turn, by `step`.
    /// Overdue applications whose work item the reconciler sent again, by step (counter).
    pub const RECONCILED_TOTAL: &str = "uidflow_reconciled_total";
    /// Unfinished applications past their deadline (gauge; `uidflow reconcile` lists them).
    pub const OVERDUE_APPLICATIONS: &str = "uidflow_overdue_applications";
    pub const OUT_OF_ORDER_TOTAL: &str = "uidflow_out_of_order_total";
    /// Histogram of one step delivery, by `step` and `outcome`.
    pub const STEP_DURATION_SECONDS: &str = "uidflow_step_duration_seconds";
    /// Gauge of deliveries being handled now, by `queue`.
    pub const IN_FLIGHT: &str = "uidflow_in_flight";
    /// Histogram of the time from intake to an end state, by `kind` and `status`.
    pub const APPLICATION_DURATION_SECONDS: &str = "uidflow_application_duration_seconds";
    /// Counter of status changes, by `status`.
    pub const STATUS_CHANGES_TOTAL: &str = "uidflow_status_changes_total";
    /// Histogram of calls to the MVD and the SMS gateway, by `service` and `outcome` (ok, error).
    pub const EXTERNAL_CALL_DURATION_SECONDS: &str = "uidflow_external_call_duration_seconds";
    /// Gauge of messages ready in a queue (sampled by `/metrics` and `/v1/queues`), by `queue`.
    pub const QUEUE_MESSAGES: &str = "uidflow_queue_messages";
    /// Gauge of consumers of a queue (sampled likewise), by `queue`.
    pub const QUEUE_CONSUMERS: &str = "uidflow_queue_consumers";
    /// Counter of HTTP API answers, by `route` (the matched template, or `unmatched`),
    /// `method` and `status`.
    pub const HTTP_REQUESTS_TOTAL: &str = "uidflow_http_requests_total";
    /// Histogram of the time to answer an HTTP API request, by `route` and `method`.
    pub const HTTP_REQUEST_DURATION_SECONDS: &str = "uidflow_http_request_duration_seconds";
    /// Gauge: 1 for each external system (`service`: mvd, sms) this process's built-in
    /// simulator stands in for (`MVD_URL=sim`, `SMS_URL=sim`, `uidflow run --simulators`).
    pub const SIMULATORS: &str = "uidflow_simulators";
    /// Gauge: 1 while the circuit breaker of `service` (mvd, sms) is open or half-open.
    pub const BREAKER_OPEN: &str = "uidflow_breaker_open";
    /// Counter of work items put back with their attempt untouched because the breaker of
    /// `service` was open (the attempts the breaker saved).
    pub const BREAKER_SAVED_ATTEMPTS_TOTAL: &str = "uidflow_breaker_saved_attempts_total";
}
