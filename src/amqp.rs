//! RabbitMQ: connecting, declaring the topology, publishing with confirms, header conversion.
//!
//! Only this module and the consumers built on it (`intake`, `dead_letters`) import `lapin`.
//! Publishing with confirms is the outbox relay's job (`outbox`); this module gives it the
//! primitive. Headers cross the database as JSON: [`headers_to_json`] and [`json_to_headers`].

use std::collections::BTreeMap;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde_json::Value;

use crate::config::Settings;
use crate::retry::{Policy, with_backoff};
use crate::topology::{Arg, ExchangeType, Topology};

/// A broker problem, phrased for the person starting the process.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The broker did not answer or refused the login.
    #[error(
        "cannot reach RabbitMQ at {url} ({cause}); start it (rabbitmq-server -detached) or set AMQP_URL"
    )]
    Unreachable {
        /// Redacted URL.
        url: String,
        /// What lapin said (shown in the message, not chained, to keep it one line).
        cause: lapin::Error,
    },
    /// A declaration was refused (usually: a queue exists with other arguments).
    #[error(
        "declaring {what} failed ({cause}); if it exists with other arguments, delete it or compare with deploy/rabbitmq/definitions.json"
    )]
    Declare {
        /// What was being declared.
        what: String,
        /// What the broker said (shown in the message, not chained).
        cause: lapin::Error,
    },
    /// Any other channel-level failure.
    #[error(transparent)]
    Lapin(#[from] lapin::Error),
}

/// Opens a connection named `uidflow-<role>` (visible to operators in the broker's UI).
pub async fn connect(settings: &Settings, role: &str) -> Result<Connection, AmqpError> {
    with_backoff(Policy::STARTUP, || connect_once(settings, role))
        .await
        .map_err(|cause| AmqpError::Unreachable {
            url: settings.amqp_url_redacted(),
            cause,
        })
}

/// The largest AMQP frame uidflow proposes, unless `AMQP_URL` sets `?frame_max=`. lapin keeps
/// a send and a receive buffer of 32 frames per connection, so RabbitMQ's default of 128 KiB
/// costs 8 MiB a connection; our messages are a few KiB, and a larger one (a parked body) is
/// only split into more frames.
pub const FRAME_MAX: u32 = 16 * 1024;

/// Connects once, without retrying: for reconnection loops that do their own backoff. With
/// several nodes in `AMQP_URL` it tries each in turn, from a random one (so that processes
/// spread over the cluster, and a reconnect after a node's loss finds another), and returns
/// the first that answers, or the last node's error.
pub async fn connect_once(settings: &Settings, role: &str) -> Result<Connection, lapin::Error> {
    let nodes = settings.amqp_nodes();
    let start = if nodes.len() > 1 {
        rand::random_range(0..nodes.len())
    } else {
        0
    };
    let mut last = None;
    for node in nodes.iter().cycle().skip(start).take(nodes.len()) {
        match connect_node(node, role).await {
            Ok(connection) => return Ok(connection),
            Err(error) => {
                if nodes.len() > 1 {
                    tracing::debug!(node = %crate::config::redact_url(node), error = %error, "broker node did not answer; trying the next");
                }
                last = Some(error);
            }
        }
    }
    Err(last.unwrap_or_else(|| lapin::Error::from(std::io::Error::other("AMQP_URL names no node"))))
}

async fn connect_node(node: &str, role: &str) -> Result<Connection, lapin::Error> {
    let properties =
        ConnectionProperties::default().with_connection_name(format!("uidflow-{role}").into());
    let mut uri: lapin::uri::AMQPUri = node
        .parse()
        .map_err(|error: String| lapin::Error::from(std::io::Error::other(error)))?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    bounded(Connection::connect_uri(uri, properties)).await
}

/// How long one connection attempt may take. lapin's connect can wait forever when the
/// broker refuses the login and closes in a particular order ("unexpected connection close-ok"),
/// or when a peer accepts TCP and never speaks AMQP; a start must not hang on either.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn bounded(
    attempt: impl std::future::Future<Output = Result<Connection, lapin::Error>>,
) -> Result<Connection, lapin::Error> {
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {CONNECT_TIMEOUT:?}"),
        ))),
    }
}

fn field_table(arguments: &BTreeMap<String, Arg>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        let value = match value {
            Arg::Str(text) => AMQPValue::LongString(text.as_str().into()),
            Arg::Int(number) => AMQPValue::LongLongInt(*number),
        };
        table.insert(key.as_str().into(), value);
    }
    table
}

/// Declares every exchange, queue and binding (idempotent: same arguments, no change).
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), AmqpError> {
    let declare_error = |what: String| move |cause| AmqpError::Declare { what, cause };
    for exchange in &topology.exchanges {
        let kind = match exchange.kind {
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Fanout => ExchangeKind::Fanout,
        };
        let options = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                exchange.name.as_str().into(),
                kind,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(declare_error(format!("exchange {}", exchange.name)))?;
    }
    for queue in &topology.queues {
        channel
            .queue_declare(
                queue.name.as_str().into(),
                QueueDeclareOptions::durable(),
                field_table(&queue.arguments),
            )
            .await
            .map_err(declare_error(format!("queue {}", queue.name)))?;
    }
    for binding in &topology.bindings {
        channel
            .queue_bind(
                binding.queue.as_str().into(),
                binding.exchange.as_str().into(),
                binding.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(declare_error(format!(
                "binding {} -> {}",
                binding.exchange, binding.queue
            )))?;
    }
    Ok(())
}

/// Connects and declares the topology for `settings`, then closes the connection.
pub async fn declare_topology(settings: &Settings) -> Result<(), AmqpError> {
    let connection = connect(settings, "topology").await?;
    let channel = connection.create_channel().await?;
    declare(&channel, &Topology::for_settings(settings)).await?;
    close(&connection, 200, "topology declared").await;
    Ok(())
}

/// How long closing a connection (or a channel) may take before we stop waiting.
pub const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Closes `connection`, waiting at most [`CLOSE_TIMEOUT`] for the broker's `close-ok`, then
/// drops it either way. lapin's own `close` waits for that answer without limit, and on a
/// connection that fails at the same moment (a broker restart) the answer never comes: the
/// caller would hang for ever (found by `uidflow chaos`: a consumer that never reconnected
/// and a process that did not stop on SIGTERM).
pub async fn close(connection: &Connection, reply_code: u16, reply_text: &str) {
    let closing = connection.close(reply_code, reply_text.into());
    if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
        tracing::warn!(
            "the broker did not answer a connection close within {CLOSE_TIMEOUT:?}; dropped it"
        );
    }
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Target exchange.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// `message_id` property.
    pub message_id: Option<String>,
    /// `content_type` property.
    pub content_type: Option<String>,
    /// Headers as a JSON object (see [`json_to_headers`]).
    pub headers: Value,
    /// Body, byte for byte.
    pub body: Vec<u8>,
    /// Ask the broker to return the message if no queue takes it.
    pub mandatory: bool,
    /// Per-message TTL in milliseconds (retry waits shorter than their queue's TTL).
    pub expiration_ms: Option<u64>,
}

/// What the broker said about one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishResult {
    /// Confirmed and routed.
    Confirmed,
    /// Refused (nack, e.g. a full queue with `reject-publish`) or returned as unroutable.
    Refused(String),
}

/// How a [`PublishResult::Refused`] for a message the broker returned begins.
pub const UNROUTABLE: &str = "returned unroutable";

/// A channel in confirm mode, for publishing.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    /// Opens a channel on `connection` and turns on publisher confirms.
    pub async fn open(connection: &Connection) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    /// Publishes all messages, then waits for each confirm; results are in input order.
    /// An `Err` means the channel failed: nothing can be said about any of them.
    pub async fn publish_all(
        &self,
        messages: &[Outgoing],
    ) -> Result<Vec<PublishResult>, lapin::Error> {
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let mut properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(json_to_headers(&message.headers))
                .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
            if let Some(id) = &message.message_id {
                properties = properties.with_message_id(id.as_str().into());
            }
            if let Some(content_type) = &message.content_type {
                properties = properties.with_content_type(content_type.as_str().into());
            }
            if let Some(ttl) = message.expiration_ms {
                properties = properties.with_expiration(ttl.to_string().into());
            }
            let options = BasicPublishOptions {
                mandatory: message.mandatory,
                ..Default::default()
            };
            let confirm = self
                .channel
                .basic_publish(
                    message.exchange.as_str().into(),
                    message.routing_key.as_str().into(),
                    options,
                    &message.body,
                    properties,
                )
                .await?;
            pending.push(confirm);
        }
        let mut results = Vec::with_capacity(pending.len());
        for confirm in pending {
            results.push(match confirm.await? {
                Confirmation::Ack(None) | Confirmation::NotRequested => PublishResult::Confirmed,
                Confirmation::Ack(Some(returned)) => PublishResult::Refused(format!(
                    "{UNROUTABLE}: {} {}",
                    returned.reply_code, returned.reply_text
                )),
                Confirmation::Nack(_) => {
                    PublishResult::Refused("refused by the broker (nack)".into())
                }
            });
        }
        Ok(results)
    }

    /// True while the channel can publish.
    pub fn is_usable(&self) -> bool {
        self.channel.status().connected()
    }
}

/// Converts AMQP headers to a JSON object. Byte arrays become lossy UTF-8 text; timestamps
/// become integers (seconds); decimals become text.
pub fn headers_to_json(headers: Option<&FieldTable>) -> Value {
    let mut object = serde_json::Map::new();
    if let Some(headers) = headers {
        for (key, value) in headers.inner() {
            object.insert(key.as_str().to_owned(), amqp_value_to_json(value));
        }
    }
    Value::Object(object)
}

fn amqp_value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Float(n) => {
            serde_json::Number::from_f64(f64::from(*n)).map_or(Value::Null, Value::Number)
        }
        AMQPValue::Double(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => Value::String(format!("{}e-{}", d.value, d.scale)),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(amqp_value_to_json).collect())
        }
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::FieldTable(table) => headers_to_json(Some(table)),
        AMQPValue::ByteArray(bytes) => {
            Value::String(String::from_utf8_lossy(bytes.as_slice()).into_owned())
        }
        AMQPValue::Void => Value::Null,
    }
}

/// Converts a JSON object back to AMQP headers (text → long string, integers → 64-bit).
pub fn json_to_headers(headers: &Value) -> FieldTable {
    let mut table = FieldTable::default();
    if let Value::Object(object) = headers {
        for (key, value) in object {
            table.insert(ShortString::from(key.as_str()), json_to_amqp_value(value));
        }
    }
    table
}

fn json_to_amqp_value(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(json_to_amqp_value).collect::<Vec<_>>(),
        )),
        Value::Object(_) => AMQPValue::FieldTable(json_to_headers(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headers_survive_a_trip_through_json() {
        let original = json!({
            "x-uid-step": "intake", "x-uid-attempts": 3, "flag": true,
            "nested": {"a": [1, "two"]}, "none": null
        });
        assert_eq!(headers_to_json(Some(&json_to_headers(&original))), original);
    }
}
