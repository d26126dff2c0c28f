//! The consume loop every uidflow consumer shares: connect, `basic_qos(prefetch)`, consume with
//! manual acks, run the handler on each delivery concurrently (up to `prefetch` in flight), ack
//! only after the handler returned (that is, after its transaction committed), reconnect with
//! backoff when the broker or the database fails, and stop cleanly on cancellation.
//!
//! A handler error means "this process cannot work right now" (database down, broker gone):
//! the loop drops the connection, so every unacked delivery goes back to the queue, waits, and
//! starts over. Deciding what a bad message means is the handler's job, not an error.
//!
//! A gated consumer ([`run_gated`]: the steps that call an external system) follows its
//! breaker's [`Flow`]: on `Pause` it cancels its AMQP consumer (the work waits in the queue),
//! hands the deliveries already sent to it to the handler (which puts them back), and consumes
//! again when the flow changes; on `One` it takes one delivery at a time (the probe).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::amqp::{CLOSE_TIMEOUT, close, connect_once, headers_to_json};
use crate::breaker::{Flow, View};
use crate::config::Settings;
use crate::retry::{Policy, pause};
use crate::trace::{TRACEPARENT, TraceContext};

/// How long in-flight deliveries may take to finish on shutdown before the connection closes
/// (unfinished ones stay unacked and are redelivered).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// One delivery, in our own terms (no `lapin` type reaches a handler).
#[derive(Debug, Clone)]
pub struct Message {
    /// Body, byte for byte.
    pub body: Vec<u8>,
    /// Routing key it was published with.
    pub routing_key: String,
    /// The `message_id` property.
    pub message_id: Option<String>,
    /// The `content_type` property.
    pub content_type: Option<String>,
    /// Headers as JSON (see `amqp::headers_to_json`).
    pub headers: Value,
    /// The broker's redelivered flag.
    pub redelivered: bool,
    /// When this process received it.
    pub received_at: DateTime<Utc>,
}

impl Message {
    fn from_delivery(delivery: &Delivery) -> Self {
        let properties = &delivery.properties;
        Self {
            body: delivery.data.clone(),
            routing_key: delivery.routing_key.as_str().to_owned(),
            message_id: properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned()),
            content_type: properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str().to_owned()),
            headers: headers_to_json(properties.headers().as_ref()),
            redelivered: delivery.redelivered,
            received_at: Utc::now(),
        }
    }
}

/// What the handler wants done with the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Its effects are committed: ack it.
    Ack,
    /// Fault injection for tests: behave as if the process died right now (drop the
    /// connection without acking).
    Crash,
}

/// A consumer's business logic.
pub trait Handler: Send + Sync + 'static {
    /// Processes one message. `Err` = this process cannot work now (see the module docs).
    fn handle(&self, message: &Message) -> impl Future<Output = anyhow::Result<Handled>> + Send;
}

/// Where and how to consume.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Names the connection (`uidflow-<role>`) and the log lines.
    pub role: &'static str,
    /// Queue to consume.
    pub queue: String,
    /// Unacked deliveries at once (= concurrency).
    pub prefetch: u16,
}

/// Runs the consumer until `token` is cancelled.
pub async fn run<H: Handler>(
    settings: Settings,
    config: ConsumerConfig,
    handler: Arc<H>,
    token: CancellationToken,
) {
    run_gated(settings, config, handler, None, token).await;
}

/// [`run`], following `gate` (a breaker's view: consume, one at a time, or pause).
pub async fn run_gated<H: Handler>(
    settings: Settings,
    config: ConsumerConfig,
    handler: Arc<H>,
    gate: Option<tokio::sync::watch::Receiver<View>>,
    token: CancellationToken,
) {
    let mut delays = Policy::RECONNECT.delays();
    while !token.is_cancelled() {
        let gate = gate.clone();
        match session(&settings, &config, &handler, gate, &token).await {
            Ok(()) => return,
            Err(SessionEnd { worked, error }) => {
                if worked {
                    delays.reset();
                }
                tracing::warn!(role = config.role, queue = %config.queue, error = format!("{error:#}"), "consumer stopped; reconnecting");
                if !pause(&token, delays.next_delay()).await {
                    return;
                }
            }
        }
    }
}

struct SessionEnd {
    /// True if the session got as far as consuming (so the backoff can start over).
    worked: bool,
    error: anyhow::Error,
}

/// The flow `gate` asks for now (no gate, or a gate whose breaker is gone: consume).
fn flow_of(gate: &Option<tokio::sync::watch::Receiver<View>>) -> Flow {
    gate.as_ref()
        .map_or(Flow::Consume, |gate| gate.borrow().flow())
}

/// Waits for the gate to change; never for no gate. A closed gate becomes no gate.
async fn gate_changed(gate: &mut Option<tokio::sync::watch::Receiver<View>>) {
    match gate {
        Some(receiver) => {
            if receiver.changed().await.is_err() {
                *gate = None;
            }
        }
        None => std::future::pending().await,
    }
}

/// The next delivery of the current consumer; never when there is none.
async fn next_delivery(
    current: &mut Option<(lapin::Consumer, Flow)>,
) -> Option<lapin::Result<Delivery>> {
    match current {
        Some((consumer, _)) => consumer.next().await,
        None => std::future::pending().await,
    }
}

/// How long a cancelled consumer's last deliveries may take to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

async fn session<H: Handler>(
    settings: &Settings,
    config: &ConsumerConfig,
    handler: &Arc<H>,
    mut gate: Option<tokio::sync::watch::Receiver<View>>,
    token: &CancellationToken,
) -> Result<(), SessionEnd> {
    let early = |error: anyhow::Error| SessionEnd {
        worked: false,
        error,
    };
    let connection = connect_once(settings, config.role)
        .await
        .map_err(|e| early(e.into()))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| early(e.into()))?;
    // The queue (and its bindings) may have been deleted: declare it again (idempotent).
    let topology = crate::topology::Topology::for_settings(settings).only_queue(&config.queue);
    crate::amqp::declare(&channel, &topology)
        .await
        .map_err(|e| early(e.into()))?;
    let mut in_flight: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let mut worked = false;
    let mut current: Option<(lapin::Consumer, Flow)> = None;
    let spawn = |in_flight: &mut JoinSet<anyhow::Result<()>>, delivery: Delivery| {
        let handler = Arc::clone(handler);
        let queue = config.queue.clone();
        in_flight.spawn(async move { process(&*handler, &queue, delivery).await });
    };
    let outcome = loop {
        let failed = move |error: anyhow::Error| SessionEnd { worked, error };
        let want = flow_of(&gate);
        match current.as_ref().map(|(_, flow)| *flow) {
            Some(flow) if flow == want => {}
            Some(_) => {
                // The breaker changed: stop this consumer, hand what it was already sent to the
                // handler (no delivery goes back to the queue: that would count against its
                // delivery limit), then start over with the new flow.
                let (mut consumer, _) = current.take().expect("a consumer");
                let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
                if let Err(error) = cancel.await {
                    break Err(failed(error.into()));
                }
                let drained = loop {
                    match tokio::time::timeout(DRAIN_TIMEOUT, consumer.next()).await {
                        Ok(Some(Ok(delivery))) => spawn(&mut in_flight, delivery),
                        Ok(Some(Err(error))) => break Err(error),
                        Ok(None) | Err(_) => break Ok(()),
                    }
                };
                if let Err(error) = drained {
                    break Err(failed(error.into()));
                }
                if want == Flow::Pause {
                    tracing::info!(role = config.role, queue = %config.queue, "paused: the circuit breaker of this step's external system is open");
                }
                continue;
            }
            None if want == Flow::Pause => {}
            None => {
                let prefetch = if want == Flow::One {
                    1
                } else {
                    config.prefetch
                };
                let started = async {
                    channel
                        .basic_qos(prefetch, BasicQosOptions::default())
                        .await?;
                    channel
                        .basic_consume(
                            config.queue.as_str().into(),
                            format!("uidflow-{}-{}", config.role, uuid::Uuid::new_v4()).into(),
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                }
                .await;
                match started {
                    Ok(consumer) => current = Some((consumer, want)),
                    Err(error) => break Err(failed(error.into())),
                }
                worked = true;
                tracing::info!(role = config.role, queue = %config.queue, prefetch, "consuming");
            }
        }
        let failed = move |error: anyhow::Error| SessionEnd { worked, error };
        tokio::select! {
            _ = token.cancelled() => break Ok(()),
            () = gate_changed(&mut gate) => {}
            next = next_delivery(&mut current) => match next {
                None => break Err(failed(anyhow::anyhow!("the broker ended the consumer"))),
                Some(Err(error)) => break Err(failed(error.into())),
                Some(Ok(delivery)) => spawn(&mut in_flight, delivery),
            },
            Some(done) = in_flight.join_next() => {
                if let Err(error) = done.unwrap_or_else(|panic| Err(anyhow::anyhow!("handler panicked: {panic}"))) {
                    break Err(failed(error));
                }
            }
        }
    };
    match outcome {
        Ok(()) => {
            // Stop taking deliveries, let in-flight work finish, then close.
            if let Some((consumer, _)) = &current {
                let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, cancel).await;
            }
            let drain = async { while in_flight.join_next().await.is_some() {} };
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, drain).await;
            close(&connection, 200, "shutting down").await;
            Ok(())
        }
        Err(end) => {
            // Dropping the connection returns every unacked delivery to the queue.
            in_flight.abort_all();
            close(&connection, 320, "consumer restarting").await;
            Err(end)
        }
    }
}

async fn process<H: Handler>(handler: &H, queue: &str, delivery: Delivery) -> anyhow::Result<()> {
    let message = Message::from_delivery(&delivery);
    let gauge =
        ::metrics::gauge!(crate::telemetry::metrics::IN_FLIGHT, "queue" => queue.to_owned());
    gauge.increment(1.0);
    let context = trace_context(&message);
    let span = tracing::info_span!("delivery", queue, trace_id = %context.trace_id_hex());
    set_otel_parent(&span, &context);
    let handled = crate::trace::scope(context, handler.handle(&message).instrument(span)).await;
    gauge.decrement(1.0);
    match handled? {
        Handled::Ack => {
            delivery.acker.ack(BasicAckOptions::default()).await?;
            crate::telemetry::count_acked(queue, message.redelivered);
            Ok(())
        }
        Handled::Crash => Err(anyhow::anyhow!("simulated crash between commit and ack")),
    }
}

/// The trace a delivery belongs to: its valid `traceparent` header; else the application's
/// (an `application_id` in a JSON body, or a UUID `message_id`); else a new random trace.
pub fn trace_context(message: &Message) -> TraceContext {
    if let Some(context) = message
        .headers
        .get(TRACEPARENT)
        .and_then(Value::as_str)
        .and_then(TraceContext::parse)
    {
        return context;
    }
    // Read as a whole object, like the validation does: a repeated `application_id` then
    // counts by its last value there and here alike (a struct would refuse the duplicate).
    let from_body = serde_json::from_slice::<serde_json::Map<String, Value>>(&message.body)
        .ok()
        .and_then(|mut body| body.remove("application_id"))
        .and_then(|id| id.as_str().and_then(|id| uuid::Uuid::parse_str(id).ok()));
    let from_message_id = || {
        message
            .message_id
            .as_deref()
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
    };
    match from_body.or_else(from_message_id) {
        Some(application_id) => TraceContext::for_application(application_id),
        None => TraceContext::random(),
    }
}

/// With the `otel` feature, makes the delivery's span a child of the remote span in `context`
/// (so the exported trace id is ours); without it, nothing.
#[cfg(feature = "otel")]
fn set_otel_parent(span: &tracing::Span, context: &TraceContext) {
    crate::telemetry::otel::set_parent(span, context);
}

#[cfg(not(feature = "otel"))]
fn set_otel_parent(_span: &tracing::Span, _context: &TraceContext) {}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message(body: &[u8], message_id: Option<&str>, headers: Value) -> Message {
        Message {
            body: body.to_vec(),
            routing_key: "application".into(),
            message_id: message_id.map(str::to_owned),
            content_type: None,
            headers,
            redelivered: false,
            received_at: Utc::now(),
        }
    }

    /// Why, body, message id, headers, and the trace id expected (`None`: a random one).
    type Case<'a> = (&'a str, Vec<u8>, Option<&'a str>, Value, Option<&'a str>);

    #[test]
    fn a_delivery_continues_its_header_or_the_application_trace_or_starts_one() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let app = "0b8e7f4e-8d6c-4a57-9a5e-2f5c1d2e3f40";
        let app_trace = "0b8e7f4e8d6c4a579a5e2f5c1d2e3f40";
        let other = "11111111-2222-4333-8444-555555555555";
        let body = json!({"application_id": app, "kind": "issue"}).to_string();
        let work_id = format!("{app}:register:1");
        let repeated = format!(r#"{{"application_id": "{other}", "application_id": "{app}"}}"#);
        let cases: [Case; 8] = [
            (
                "a repeated application_id counts by its last value, as in validation",
                repeated.into_bytes(),
                None,
                json!({}),
                Some(app_trace),
            ),
            (
                "valid header wins",
                body.clone().into_bytes(),
                Some(other),
                json!({"traceparent": header}),
                Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            ),
            (
                "invalid header: the body's application",
                body.clone().into_bytes(),
                None,
                json!({"traceparent": header.to_uppercase()}),
                Some(app_trace),
            ),
            (
                "body before message id",
                body.clone().into_bytes(),
                Some(other),
                json!({}),
                Some(app_trace),
            ),
            (
                "a work item's message id is not a uuid",
                body.into_bytes(),
                Some(work_id.as_str()),
                json!({}),
                Some(app_trace),
            ),
            (
                "uuid message id",
                b"not json".to_vec(),
                Some(app),
                json!({}),
                Some(app_trace),
            ),
            (
                "application_id not a uuid: message id",
                json!({"application_id": 12}).to_string().into_bytes(),
                Some(app),
                json!({}),
                Some(app_trace),
            ),
            (
                "nothing to go by",
                b"[1,2]".to_vec(),
                Some("x"),
                json!({}),
                None,
            ),
        ];
        for (why, body, message_id, headers, expected) in cases {
            let got = trace_context(&message(&body, message_id, headers)).trace_id_hex();
            match expected {
                Some(expected) => assert_eq!(got, expected, "{why}"),
                None => assert!(got != app_trace && got.len() == 32, "{why}: {got}"),
            }
        }
    }
}
