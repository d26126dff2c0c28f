//! Queue depths for `/metrics` and `/v1/queues`, sampled from the broker through one cached,
//! single-flight sampler per API: however many scrapes arrive at once, the process holds at
//! most one broker connection for them, and opens at most one per [`SAMPLE_TTL`].
//!
//! A round opens a short-lived connection (`connection_name` `uidflow-api-queue-sampler`),
//! passively declares every queue, and closes it. Callers take a lock: the one that finds the
//! last sample stale samples while holding it, and the others, waiting on the same lock, find
//! the fresh sample when they get it. A failure is cached for the same time, so a broker
//! outage does not turn every scrape into a connection attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::telemetry::metrics as names;
use crate::topology::Topology;

/// How long one sample answers for.
pub const SAMPLE_TTL: Duration = Duration::from_secs(1);

/// The role in the sampler's `connection_name` (`uidflow-<role>`).
pub const CONNECTION_ROLE: &str = "api-queue-sampler";

/// One queue at the moment of a sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    /// Queue name.
    pub name: String,
    /// Messages ready.
    pub messages: u32,
    /// Consumers.
    pub consumers: u32,
}

/// What one round gave: the queues, or why the broker could not be asked.
pub type Sample = Result<Arc<Vec<QueueDepth>>, String>;

/// The sampler of one API (owned by its `ApiState`).
#[derive(Debug)]
pub struct QueueSampler {
    settings: Settings,
    ttl: Duration,
    last: tokio::sync::Mutex<Option<(Instant, Sample)>>,
    connections_opened: AtomicU64,
}

impl QueueSampler {
    /// A sampler of the queues of `settings` whose samples answer for `ttl`.
    pub fn new(settings: Settings, ttl: Duration) -> Self {
        Self {
            settings,
            ttl,
            last: tokio::sync::Mutex::new(None),
            connections_opened: AtomicU64::new(0),
        }
    }

    /// The last sample if younger than the TTL, else a new one (one round at a time).
    pub async fn sample(&self) -> Sample {
        let mut last = self.last.lock().await;
        if let Some((at, sample)) = last.as_ref()
            && at.elapsed() < self.ttl
        {
            return sample.clone();
        }
        let sample = self.round().await;
        *last = Some((Instant::now(), sample.clone()));
        sample
    }

    /// How many broker connections this sampler has opened (or tried to).
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    async fn round(&self) -> Sample {
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
        let connection = crate::amqp::connect_once(&self.settings, CONNECTION_ROLE)
            .await
            .map_err(|e| format!("cannot reach RabbitMQ ({e})"))?;
        let result = depths(&connection, &self.settings).await;
        crate::amqp::close(&connection, 200, "sampled").await;
        let out = result?;
        for queue in &out {
            ::metrics::gauge!(names::QUEUE_MESSAGES, "queue" => queue.name.clone())
                .set(f64::from(queue.messages));
            ::metrics::gauge!(names::QUEUE_CONSUMERS, "queue" => queue.name.clone())
                .set(f64::from(queue.consumers));
        }
        Ok(Arc::new(out))
    }
}

/// Depth and consumers of every uidflow queue by passive declares (no management plugin).
async fn depths(
    connection: &lapin::Connection,
    settings: &Settings,
) -> Result<Vec<QueueDepth>, String> {
    let mut out = Vec::new();
    for queue in Topology::for_settings(settings).queues {
        // A passive declare of a missing queue closes its channel: one channel per queue.
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("RabbitMQ: {e}"))?;
        let options = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match channel
            .queue_declare(queue.name.as_str().into(), options, Default::default())
            .await
        {
            Ok(declared) => {
                out.push(QueueDepth {
                    name: queue.name.clone(),
                    messages: declared.message_count(),
                    consumers: declared.consumer_count(),
                });
                let closing = channel.close(200, "sampled".into());
                let _ = tokio::time::timeout(crate::amqp::CLOSE_TIMEOUT, closing).await;
            }
            // Not declared (yet) on this broker: shown empty rather than failing the whole list.
            Err(_) => out.push(QueueDepth {
                name: queue.name.clone(),
                messages: 0,
                consumers: 0,
            }),
        }
    }
    Ok(out)
}
