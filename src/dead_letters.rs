//! Dead letters: parking a message the system could not process, in the `dead_letters` table
//! and (through the outbox) on the `uid.dead-letter` queue, with the headers of CONTRACT §2.
//!
//! The body is kept byte for byte, even when it is not JSON. The keeper ([`run_keeper`])
//! consumes `uid.parking`, where the broker dead-letters work-queue messages that exceeded
//! their delivery limit, and parks them the same way.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::amqp::Outgoing;
use crate::config::Settings;
use crate::consumer::{self, ConsumerConfig, Handled, Handler, Message};
use crate::outbox;
use crate::telemetry::metrics as names;
use crate::topology::{DEAD_LETTER_EXCHANGE, PARKING_QUEUE};

/// The `x-uid-error-kind` values (CONTRACT §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not a JSON object, not UTF-8, or too big.
    Malformed,
    /// A JSON object that cannot be an application (no valid id).
    Invalid,
    /// Same id, different content.
    Conflict,
    /// Retrying cannot help.
    Permanent,
    /// Retries used up.
    Exhausted,
}

impl ErrorKind {
    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Malformed => "malformed",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Exhausted => "exhausted",
        }
    }
}

/// A message to park.
#[derive(Debug, Clone)]
pub struct Parked<'a> {
    /// The application, when known.
    pub application_id: Option<Uuid>,
    /// Where it failed (`intake`, a step name, …).
    pub step: &'a str,
    /// Kind of failure.
    pub kind: ErrorKind,
    /// One human sentence.
    pub error: String,
    /// A reason code, where the failure is also a rejection (`duplicate_conflict`).
    pub reason_code: Option<&'a str>,
    /// The message as it arrived.
    pub message: &'a Message,
    /// Attempts made.
    pub attempts: u32,
    /// First failure.
    pub first_failed_at: DateTime<Utc>,
}

/// Parks a message in the caller's transaction; returns the dead letter's id.
pub async fn park(conn: &mut PgConnection, parked: &Parked<'_>) -> sqlx::Result<i64> {
    let now = Utc::now();
    let mut headers = match &parked.message.headers {
        Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    let ours = json!({
        "x-uid-step": parked.step,
        "x-uid-error-kind": parked.kind.as_str(),
        "x-uid-error": parked.error,
        "x-uid-attempts": parked.attempts,
        "x-uid-first-failed-at": parked.first_failed_at.to_rfc3339(),
        "x-uid-last-failed-at": now.to_rfc3339(),
        "x-uid-routing-key": parked.message.routing_key,
    });
    for (key, value) in ours.as_object().expect("a JSON object") {
        headers.insert(key.clone(), value.clone());
    }
    if let Some(code) = parked.reason_code {
        headers.insert("x-uid-reason".into(), Value::from(code));
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO dead_letters (application_id, step, error_kind, error, reason_code, body, headers,
            routing_key, attempts, first_failed_at, last_failed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
    )
    .bind(parked.application_id)
    .bind(parked.step)
    .bind(parked.kind.as_str())
    .bind(&parked.error)
    .bind(parked.reason_code)
    .bind(&parked.message.body)
    .bind(Value::Object(headers.clone()))
    .bind(&parked.message.routing_key)
    .bind(i32::try_from(parked.attempts).unwrap_or(i32::MAX))
    .bind(parked.first_failed_at)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    headers.insert("x-uid-dead-letter-id".into(), Value::from(id));
    outbox::enqueue(
        conn,
        &Outgoing {
            exchange: DEAD_LETTER_EXCHANGE.into(),
            routing_key: parked.message.routing_key.clone(),
            message_id: parked.message.message_id.clone(),
            content_type: parked.message.content_type.clone(),
            headers: Value::Object(headers),
            body: parked.message.body.clone(),
            mandatory: true,
            expiration_ms: None,
        },
    )
    .await?;
    ::metrics::counter!(names::DEAD_LETTERS_TOTAL, "kind" => parked.kind.as_str()).increment(1);
    Ok(id)
}

/// Consumes `uid.parking` until cancelled, parking every message it finds there.
pub async fn run_keeper(settings: Settings, pool: PgPool, token: CancellationToken) {
    let config = ConsumerConfig {
        role: "dead-letter-keeper",
        queue: PARKING_QUEUE.into(),
        prefetch: 16,
    };
    consumer::run(settings, config, Arc::new(Keeper { pool }), token).await;
}

struct Keeper {
    pool: PgPool,
}

impl Handler for Keeper {
    async fn handle(&self, message: &Message) -> anyhow::Result<Handled> {
        let death = BrokerDeath::read(&message.headers);
        let application_id = message
            .message_id
            .as_deref()
            .and_then(|id| Uuid::parse_str(id).ok())
            .or_else(|| {
                serde_json::from_slice::<Value>(&message.body)
                    .ok()
                    .and_then(|v| {
                        v.get("application_id")?
                            .as_str()
                            .and_then(|s| Uuid::parse_str(s).ok())
                    })
            });
        let (kind, error) = match death.reason.as_str() {
            "delivery_limit" => (
                ErrorKind::Exhausted,
                format!(
                    "delivered {} times from {} without being acknowledged (its consumer crashed or stalled each time)",
                    death.count, death.queue
                ),
            ),
            "rejected" => (
                ErrorKind::Permanent,
                format!("rejected by the consumer of {}", death.queue),
            ),
            other => (
                ErrorKind::Exhausted,
                format!("dead-lettered by the broker from {} ({other})", death.queue),
            ),
        };
        let mut tx = self.pool.begin().await?;
        let parked = Parked {
            application_id,
            step: step_of_queue(&death.queue),
            kind,
            error,
            reason_code: None,
            message,
            attempts: death.count,
            first_failed_at: message.received_at,
        };
        let id = park(&mut tx, &parked).await?;
        tx.commit().await?;
        tracing::warn!(
            dead_letter.id = id,
            step = parked.step,
            kind = kind.as_str(),
            "parked a message the broker dead-lettered"
        );
        Ok(Handled::Ack)
    }
}

/// The step a queue belongs to: `uid.step.register` → `register`, intake queues → `intake`.
pub fn step_of_queue(queue: &str) -> &str {
    if let Some(step) = queue.strip_prefix("uid.step.") {
        return step;
    }
    if let Some(rest) = queue.strip_prefix("uid.retry.") {
        return rest.split('.').next().unwrap_or(rest);
    }
    match queue {
        "uid.intake.phone-confirmation" => "phone-confirmation",
        _ => "intake",
    }
}

/// What the broker wrote in `x-death` / `x-first-death-*`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BrokerDeath {
    queue: String,
    reason: String,
    count: u32,
}

impl BrokerDeath {
    fn read(headers: &Value) -> Self {
        let first = headers
            .get("x-death")
            .and_then(Value::as_array)
            .and_then(|deaths| deaths.last());
        let text = |key: &str, fallback: &str| {
            headers
                .get(fallback)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| {
                    first
                        .and_then(|d| d.get(key))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
        };
        let count = headers
            .get("x-delivery-count")
            .and_then(Value::as_u64)
            .or_else(|| first.and_then(|d| d.get("count")).and_then(Value::as_u64))
            .unwrap_or(1);
        Self {
            queue: text("queue", "x-first-death-queue").unwrap_or_else(|| "unknown queue".into()),
            reason: text("reason", "x-first-death-reason").unwrap_or_else(|| "unknown".into()),
            count: u32::try_from(count).unwrap_or(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_map_to_their_steps() {
        for (queue, step) in [
            ("uid.step.register", "register"),
            ("uid.retry.send-sms.30s", "send-sms"),
            ("uid.intake.application", "intake"),
            ("uid.intake.phone-confirmation", "phone-confirmation"),
        ] {
            assert_eq!(step_of_queue(queue), step);
        }
    }

    #[test]
    fn broker_death_is_read_from_first_death_headers() {
        let headers = json!({
            "x-first-death-queue": "uid.step.register",
            "x-first-death-reason": "delivery_limit",
            "x-delivery-count": 20,
            "x-death": [{"queue": "uid.step.register", "reason": "delivery_limit", "count": 1}]
        });
        assert_eq!(
            BrokerDeath::read(&headers),
            BrokerDeath {
                queue: "uid.step.register".into(),
                reason: "delivery_limit".into(),
                count: 20
            }
        );
    }
}
