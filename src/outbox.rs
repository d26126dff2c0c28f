//! The transactional outbox: every message uidflow sends after a commit goes through here.
//!
//! [`enqueue`] writes the message in the caller's transaction; the caller commits with
//! [`commit`], which wakes the relay: through memory when this process runs one, otherwise with
//! a `pg_notify` sent after the commit. (Never inside the transaction: PostgreSQL serialises
//! the commits of all transactions that `NOTIFY`, fsync included, with one database-wide lock,
//! which defeats group commit; measured, it cost four WAL flushes per application instead of
//! one.) A commit that forgets to wake is still published within [`POLL`]. [`run_relay`] publishes due rows in id order with publisher confirms and
//! deletes a row only after the broker confirmed it, in the same transaction that locked it
//! (`FOR UPDATE SKIP LOCKED`, so the [`RELAYS`] of each process, and those of other processes,
//! share the work; the delete commits without waiting for its fsync). A crash after the
//! confirm and before the delete publishes the row again: delivery is at-least-once, and every
//! consumer deduplicates (intake by content, steps by their ledger, events by `event_id`).
//! A refused publish (nack, unroutable, full queue) stays in the table and is retried later.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::amqp::{Outgoing, PublishResult, Publisher, connect_once};
use crate::config::Settings;
use crate::retry::Policy;
use crate::telemetry::metrics as names;
use crate::trace::TRACEPARENT;

/// The `LISTEN` channel the relay wakes up on.
pub const CHANNEL: &str = "uidflow_outbox";
/// Rows published per round.
pub const BATCH: i64 = 200;
/// Relays per process. While one waits for the broker's confirms, another takes the rows
/// committed meanwhile (`SKIP LOCKED` keeps their batches apart), so a row waits for at most
/// part of a round instead of a whole one.
pub const RELAYS: usize = 2;
/// The relay looks for due rows at least this often, even without a notification.
pub const POLL: Duration = Duration::from_millis(500);

/// Adds a message to the outbox within the caller's transaction. Inside a delivery's trace
/// (`trace::current`), a message without a `traceparent` header gets one (a child of it), so
/// whoever consumes the message continues the same trace.
pub async fn enqueue(conn: &mut PgConnection, message: &Outgoing) -> sqlx::Result<()> {
    enqueue_all(conn, std::slice::from_ref(message)).await
}

/// Adds messages to the outbox in one statement, in order (the relay publishes them in it).
pub async fn enqueue_all(conn: &mut PgConnection, messages: &[Outgoing]) -> sqlx::Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let sql = format!("INSERT INTO outbox {INSERT_ROWS}");
    Rows::of(messages)
        .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The columns and rows of an outbox insert, from parameters `$1`–`$8` bound by [`Rows::bind`]
/// (a statement may use it in a CTE and number its own parameters from `$9`).
pub(crate) const INSERT_ROWS: &str = "(exchange, routing_key, message_id, content_type, headers, body, mandatory, expiration_ms)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::bytea[], $7::bool[], $8::int8[])";

/// Outbox rows as the eight column arrays of [`INSERT_ROWS`]. Inside a delivery's trace, a
/// message without a `traceparent` header gets one.
pub(crate) struct Rows {
    exchanges: Vec<String>,
    routing_keys: Vec<String>,
    message_ids: Vec<Option<String>>,
    content_types: Vec<Option<String>>,
    headers: Vec<Value>,
    bodies: Vec<Vec<u8>>,
    mandatory: Vec<bool>,
    expirations: Vec<Option<i64>>,
}

impl Rows {
    pub(crate) fn of(messages: &[Outgoing]) -> Self {
        let traceparent = crate::trace::outgoing();
        let safe = |text: &str| crate::db::pg_safe_text(text).into_owned();
        Rows {
            exchanges: messages.iter().map(|m| m.exchange.clone()).collect(),
            routing_keys: messages.iter().map(|m| safe(&m.routing_key)).collect(),
            message_ids: messages
                .iter()
                .map(|m| m.message_id.as_deref().map(safe))
                .collect(),
            content_types: messages
                .iter()
                .map(|m| m.content_type.as_deref().map(safe))
                .collect(),
            headers: messages
                .iter()
                .map(|m| {
                    crate::db::pg_safe_json(&with_traceparent(&m.headers, traceparent.clone()))
                })
                .collect(),
            bodies: messages.iter().map(|m| m.body.clone()).collect(),
            mandatory: messages.iter().map(|m| m.mandatory).collect(),
            expirations: messages
                .iter()
                .map(|m| {
                    m.expiration_ms
                        .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX))
                })
                .collect(),
        }
    }

    /// Binds the arrays as the query's first eight parameters.
    pub(crate) fn bind<'q>(
        self,
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.exchanges)
            .bind(self.routing_keys)
            .bind(self.message_ids)
            .bind(self.content_types)
            .bind(self.headers)
            .bind(self.bodies)
            .bind(self.mandatory)
            .bind(self.expirations)
    }
}

/// Relays running in this process.
static LOCAL_RELAYS: AtomicUsize = AtomicUsize::new(0);
/// Wakes this process's relays (a wake-up before they wait is kept, not lost).
static WAKE: Notify = Notify::const_new();

/// Commits a transaction that may have enqueued messages, then wakes a relay.
pub async fn commit(tx: Transaction<'_, Postgres>, pool: &PgPool) -> sqlx::Result<()> {
    tx.commit().await?;
    wake(pool).await;
    Ok(())
}

/// Tells a relay that rows were committed: this process's own, or any through `pg_notify`
/// (a transaction of its own that writes nothing, so it holds the notify lock only briefly).
pub async fn wake(pool: &PgPool) {
    if LOCAL_RELAYS.load(Ordering::Relaxed) > 0 {
        WAKE.notify_one();
    } else if let Err(error) = sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(pool)
        .await
    {
        tracing::debug!(error = %error, "could not notify the outbox relay; it polls");
    }
}

/// Counts a running relay for [`wake`] while it lives.
struct LocalRelay;

impl LocalRelay {
    fn register() -> Self {
        LOCAL_RELAYS.fetch_add(1, Ordering::Relaxed);
        LocalRelay
    }
}

impl Drop for LocalRelay {
    fn drop(&mut self) {
        LOCAL_RELAYS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `headers` with `traceparent` added when one is given and none is there yet.
fn with_traceparent(headers: &Value, traceparent: Option<String>) -> Value {
    let Some(traceparent) = traceparent else {
        return headers.clone();
    };
    match headers {
        Value::Object(object) if object.contains_key(TRACEPARENT) => headers.clone(),
        Value::Object(object) => {
            let mut object = object.clone();
            object.insert(TRACEPARENT.into(), Value::String(traceparent));
            Value::Object(object)
        }
        Value::Null => serde_json::json!({ TRACEPARENT: traceparent }),
        _ => headers.clone(),
    }
}

/// The shortest time between two declarations of the topology by one relay (after messages
/// came back unroutable).
const REDECLARE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a relay round stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The broker channel failed; reconnect.
    #[error("publishing to RabbitMQ")]
    Broker(#[source] lapin::Error),
    /// The database failed; wait and try again.
    #[error("reading the outbox")]
    Database(#[source] sqlx::Error),
}

/// What one relay round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    /// Rows handled (published, or refused and kept for a later round).
    pub handled: usize,
    /// Rows the broker returned as unroutable (a queue or binding is missing).
    pub unroutable: usize,
}

/// Publishes up to `limit` due rows.
pub async fn relay_once(
    pool: &PgPool,
    publisher: &Publisher,
    limit: i64,
) -> Result<Relayed, RelayError> {
    let mut tx = pool.begin().await.map_err(RelayError::Database)?;
    let rows = sqlx::query(
        "SELECT id, exchange, routing_key, message_id, content_type, headers, body, mandatory, expiration_ms
         FROM outbox WHERE not_before <= now() ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
    .map_err(RelayError::Database)?;
    if rows.is_empty() {
        return Ok(Relayed::default());
    }
    // The delete need not wait for its WAL flush: if it is lost in a crash, the rows are
    // published again, which a crash between confirm and delete does anyway (at-least-once).
    // This takes an fsync off every round (and costs nothing when there was nothing to take).
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await
        .map_err(RelayError::Database)?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut messages = Vec::with_capacity(rows.len());
    for row in &rows {
        ids.push(row.get::<i64, _>("id"));
        messages.push(Outgoing {
            exchange: row.get("exchange"),
            routing_key: row.get("routing_key"),
            message_id: row.get("message_id"),
            content_type: row.get("content_type"),
            headers: row.get("headers"),
            body: row.get("body"),
            mandatory: row.get("mandatory"),
            expiration_ms: row
                .get::<Option<i64>, _>("expiration_ms")
                .map(|ms| ms.max(0) as u64),
        });
    }
    let results = publisher
        .publish_all(&messages)
        .await
        .map_err(RelayError::Broker)?;
    let mut done = Vec::with_capacity(ids.len());
    let mut unroutable = 0;
    for ((id, message), result) in ids.iter().zip(&messages).zip(results) {
        match result {
            PublishResult::Confirmed => {
                if let Some(queue) =
                    crate::topology::queue_for(&message.exchange, &message.routing_key)
                {
                    crate::telemetry::count_published(&queue);
                }
                ::metrics::counter!(names::OUTBOX_PUBLISHED_TOTAL, "exchange" => message.exchange.clone())
                    .increment(1);
                done.push(*id);
            }
            PublishResult::Refused(why) => {
                if why.starts_with(crate::amqp::UNROUTABLE) {
                    unroutable += 1;
                }
                ::metrics::counter!(names::OUTBOX_FAILED_TOTAL, "exchange" => message.exchange.clone())
                    .increment(1);
                tracing::warn!(outbox.id = id, exchange = %message.exchange, routing_key = %message.routing_key, error = %why, "broker refused an outbox message; will retry");
                sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                       not_before = now() + least(interval '1 second' * power(2, least(attempts, 6)), interval '60 seconds')
                     WHERE id = $1",
                )
                .bind(id)
                .bind(&why)
                .execute(&mut *tx)
                .await
                .map_err(RelayError::Database)?;
            }
        }
    }
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(&done)
        .execute(&mut *tx)
        .await
        .map_err(RelayError::Database)?;
    tx.commit().await.map_err(RelayError::Database)?;
    Ok(Relayed {
        handled: rows.len(),
        unroutable,
    })
}

/// Relays the outbox until `token` is cancelled, reconnecting to the broker as needed.
pub async fn run_relay(settings: Settings, pool: PgPool, token: CancellationToken) {
    let _local = LocalRelay::register();
    let mut listener = match PgListener::connect_with(&pool).await {
        Ok(mut listener) => match listener.listen(CHANNEL).await {
            Ok(()) => Some(listener),
            Err(_) => None,
        },
        Err(_) => None,
    };
    let mut delays = Policy::RECONNECT.delays();
    'connect: while !token.is_cancelled() {
        let connection = match connect_once(&settings, "outbox").await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(error = %error, "outbox relay cannot reach RabbitMQ; will retry");
                if !crate::retry::pause(&token, delays.next_delay()).await {
                    break;
                }
                continue;
            }
        };
        let publisher = match Publisher::open(&connection).await {
            Ok(publisher) => publisher,
            Err(error) => {
                tracing::warn!(error = %error, "outbox relay cannot open a channel; will retry");
                if !crate::retry::pause(&token, delays.next_delay()).await {
                    break;
                }
                continue;
            }
        };
        delays.reset();
        let mut declared_at: Option<std::time::Instant> = None;
        loop {
            match relay_once(&pool, &publisher, BATCH).await {
                Ok(round) => {
                    if round.unroutable > 0
                        && declared_at.is_none_or(|at| at.elapsed() >= REDECLARE_EVERY)
                    {
                        // A queue or binding was deleted: put the topology back (the rows
                        // stay in the outbox and go out on a later round).
                        declared_at = Some(std::time::Instant::now());
                        match crate::amqp::declare_topology(&settings).await {
                            Ok(()) => tracing::warn!(
                                unroutable = round.unroutable,
                                "messages were unroutable; the topology was declared again"
                            ),
                            Err(error) => {
                                tracing::warn!(error = %error, "messages were unroutable and the topology could not be declared again")
                            }
                        }
                    }
                    if round.handled as i64 == BATCH {
                        continue;
                    }
                }
                Err(RelayError::Broker(error)) => {
                    tracing::warn!(error = %error, "outbox relay lost its channel; reconnecting");
                    crate::amqp::close(&connection, 320, "reconnecting").await;
                    continue 'connect;
                }
                Err(RelayError::Database(error)) => {
                    tracing::warn!(error = %error, "outbox relay cannot read the outbox; will retry");
                    if !crate::retry::pause(&token, delays.next_delay()).await {
                        break 'connect;
                    }
                    continue;
                }
            }
            // Wait for a commit's notification, or poll (rows whose retry time has come).
            let woken = async {
                match listener.as_mut() {
                    Some(listener) => {
                        let _ = listener.recv().await;
                        while listener.next_buffered().is_some() {}
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = token.cancelled() => break 'connect,
                _ = WAKE.notified() => {}
                _ = woken => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_traceparent_is_added_only_when_there_is_one_and_none_is_there() {
        let ours = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned());
        let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cases = [
            (json!({}), None, json!({})),
            (
                json!({"x-uid-step": "register"}),
                ours.clone(),
                json!({"x-uid-step": "register", "traceparent": ours.clone().unwrap()}),
            ),
            (
                json!({"traceparent": theirs}),
                ours.clone(),
                json!({"traceparent": theirs}),
            ),
            (
                Value::Null,
                ours.clone(),
                json!({"traceparent": ours.clone().unwrap()}),
            ),
        ];
        for (headers, traceparent, expected) in cases {
            assert_eq!(
                with_traceparent(&headers, traceparent),
                expected,
                "{headers}"
            );
        }
    }
}
