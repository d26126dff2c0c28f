//! The intake: consumes `uid.intake.application` and turns each delivery into exactly one of
//! - a `received` application, its history row, its event and the hand-off to the first step;
//! - a `rejected` application (`invalid_application`, every field error listed);
//! - nothing new, for the same id with identical content (a re-publish or a redelivery);
//! - a dead letter: `malformed` (too big, not UTF-8, not a JSON object), `invalid` (no valid
//!   `application_id`), `conflict` (same id, different content: `duplicate_conflict`, the first
//!   application untouched).
//!
//! All of it commits in one transaction, and only then is the delivery acked (`consumer`).
//! Messages out (events, hand-off, dead-letter copy) go through the outbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::admission::Admission;
use crate::applications::{self, HandOff, Inserted, NewApplication};
use crate::config::Settings;
use crate::consumer::{self, ConsumerConfig, Handled, Handler, Message};
use crate::dead_letters::{self, ErrorKind, Parked};
use crate::domain::{FieldError, Reason, ReasonCode, Status};
use crate::messages::WorkItem;
use crate::route;
use crate::telemetry::metrics as names;
use crate::topology::APPLICATION_QUEUE;
use crate::validation::{self, Verdict};
use crate::vault::Vault;

/// The step name the intake writes in history rows and dead-letter headers.
pub const STEP: &str = "intake";
/// Bodies above this many bytes are not parsed (CONTRACT §2.1).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the intake did with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new, valid application.
    Received,
    /// A new application rejected as invalid.
    Rejected,
    /// A repeat of an application already recorded, identical: nothing done.
    Duplicate,
    /// Same id, different content: parked as `conflict`.
    Conflict,
    /// Parked as `malformed`.
    Malformed,
    /// Parked as `invalid` (no valid application id).
    Invalid,
}

impl Outcome {
    /// Label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Received => "received",
            Outcome::Rejected => "rejected",
            Outcome::Duplicate => "duplicate",
            Outcome::Conflict => "conflict",
            Outcome::Malformed => "malformed",
            Outcome::Invalid => "invalid",
        }
    }
}

/// Counters of one intake, for tests and the operator's view. All count committed outcomes.
#[derive(Debug, Default)]
pub struct IntakeStats {
    /// New valid applications.
    pub received: AtomicU64,
    /// New invalid applications.
    pub rejected: AtomicU64,
    /// Identical repeats.
    pub duplicates: AtomicU64,
    /// Conflicting repeats.
    pub conflicts: AtomicU64,
    /// Malformed messages.
    pub malformed: AtomicU64,
    /// Objects without a valid id.
    pub invalid: AtomicU64,
    /// True while the intake is paused for the outbox (`admission`).
    pub paused: AtomicBool,
    /// Deliveries that found the intake paused and waited for the outbox to catch up
    /// (`admission`); counted when the wait starts.
    pub waited_for_outbox: AtomicU64,
}

impl IntakeStats {
    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Received => &self.received,
            Outcome::Rejected => &self.rejected,
            Outcome::Duplicate => &self.duplicates,
            Outcome::Conflict => &self.conflicts,
            Outcome::Malformed => &self.malformed,
            Outcome::Invalid => &self.invalid,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every delivery whose outcome committed.
    pub fn total(&self) -> u64 {
        [
            &self.received,
            &self.rejected,
            &self.duplicates,
            &self.conflicts,
            &self.malformed,
            &self.invalid,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// The intake's handler.
pub struct Intake {
    pool: PgPool,
    vault: Arc<Vault>,
    stats: Arc<IntakeStats>,
    admission: Admission,
    /// Fault injection for tests: while positive, each commit is followed by a simulated crash
    /// (no ack) instead of an ack, and the counter goes down by one.
    crash_after_commit: Arc<AtomicU32>,
}

/// Runs the intake consumer until cancelled.
pub async fn run(
    settings: Settings,
    pool: PgPool,
    vault: Arc<Vault>,
    prefetch: u16,
    stats: Arc<IntakeStats>,
    crash_after_commit: Arc<AtomicU32>,
    token: CancellationToken,
) {
    let config = ConsumerConfig {
        role: "intake",
        queue: APPLICATION_QUEUE.into(),
        prefetch,
    };
    let mirror = Arc::clone(&stats);
    let admission = Admission::watch(pool.clone(), token.clone(), move |open| {
        mirror.paused.store(!open, Ordering::Relaxed)
    });
    let intake = Arc::new(Intake {
        admission,
        pool,
        vault,
        stats,
        crash_after_commit,
    });
    consumer::run(settings, config, intake, token).await;
}

/// A delivery's body, classified before any database work.
#[derive(Debug)]
pub enum Decoded {
    /// Not something to parse: why, in one sentence.
    Malformed(String),
    /// A JSON object.
    Object(Value),
}

/// Classifies a body: size, UTF-8, JSON, object (in that order).
pub fn decode(body: &[u8]) -> Decoded {
    if body.len() > MAX_BODY_BYTES {
        return Decoded::Malformed(format!(
            "the body is {} bytes; the limit is {MAX_BODY_BYTES} bytes (64 KiB), so it was not parsed",
            body.len()
        ));
    }
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(error) => {
            return Decoded::Malformed(format!(
                "the body is not valid UTF-8 (invalid byte at offset {})",
                error.valid_up_to()
            ));
        }
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Decoded::Object(Value::Object(object)),
        Ok(other) => Decoded::Malformed(format!(
            "the body is JSON but not an object (found {})",
            match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            }
        )),
        Err(error) => Decoded::Malformed(format!("the body is not JSON ({error})")),
    }
}

/// The object's canonical JSON (keys sorted), so key order does not matter: what duplicate
/// detection hashes (a keyed hash, `vault::Index::Content`).
pub fn canonical_json(object: &Value) -> Vec<u8> {
    fn canonical(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let sorted: std::collections::BTreeMap<_, _> =
                    map.iter().map(|(k, v)| (k.clone(), canonical(v))).collect();
                Value::Object(sorted.into_iter().collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&canonical(object)).expect("a JSON value serialises")
}

impl Handler for Intake {
    async fn handle(&self, message: &Message) -> anyhow::Result<Handled> {
        self.admission.admitted(&self.stats.waited_for_outbox).await;
        let started = Instant::now();
        let outcome = match self.take(message).await {
            Ok(outcome) => outcome,
            // The database refused this message's own statements (not an outage): park it
            // with its bytes rather than drop the connection, which would return every other
            // delivery in flight and count against their delivery limits too.
            Err(error) if refused_by_database(&error) => {
                let why = format!("the message could not be stored ({error:#})");
                tracing::error!(error = %why, "intake parked a message the database refused");
                let mut tx = self.pool.begin().await?;
                park(
                    &mut tx,
                    &self.vault,
                    message,
                    None,
                    ErrorKind::Permanent,
                    why,
                    None,
                )
                .await?;
                crate::outbox::commit(tx, &self.pool).await?;
                Outcome::Malformed
            }
            Err(error) => return Err(error),
        };
        self.stats.count(outcome);
        ::metrics::counter!(names::INTAKE_MESSAGES_TOTAL, "outcome" => outcome.as_str())
            .increment(1);
        ::metrics::histogram!(names::INTAKE_DURATION_SECONDS, "outcome" => outcome.as_str())
            .record(started.elapsed().as_secs_f64());
        let crash = self
            .crash_after_commit
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        Ok(if crash { Handled::Crash } else { Handled::Ack })
    }
}

impl Intake {
    /// Records one delivery's outcome in one transaction.
    async fn take(&self, message: &Message) -> anyhow::Result<Outcome> {
        let mut tx = self.pool.begin().await?;
        let outcome = match decode(&message.body) {
            Decoded::Malformed(why) => {
                park(
                    &mut tx,
                    &self.vault,
                    message,
                    None,
                    ErrorKind::Malformed,
                    why,
                    None,
                )
                .await?;
                Outcome::Malformed
            }
            Decoded::Object(object) => record(&mut tx, &self.vault, message, &object).await?,
        };
        crate::outbox::commit(tx, &self.pool).await?;
        Ok(outcome)
    }
}

/// True when PostgreSQL answered a statement with an error about the statement (bad data, a
/// constraint), as opposed to being unreachable or going away. An error response does not
/// settle it: a server shutting down answers `57P01 terminating connection due to
/// administrator command` to the statements in flight, and those messages must be tried again,
/// not parked.
pub fn refused_by_database(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| match cause.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Database(db)) => !db.code().is_some_and(|code| server_trouble(&code)),
            _ => false,
        })
}

/// SQLSTATE classes that blame the server, not the statement: 08 connection exception, 40
/// transaction rollback (serialization failure, deadlock), 53 insufficient resources, 57
/// operator intervention (admin shutdown, cannot connect now), 58 system error.
fn server_trouble(sqlstate: &str) -> bool {
    matches!(sqlstate.get(..2), Some("08" | "40" | "53" | "57" | "58"))
}

async fn record(
    tx: &mut sqlx::PgConnection,
    vault: &Vault,
    message: &Message,
    object: &Value,
) -> anyhow::Result<Outcome> {
    let canonical = canonical_json(object);
    let (application_id, new, valid) =
        match validation::validate(object, validation::today_in_minsk()) {
            Verdict::NoId(errors) => {
                let why = format!("not an application: {}", sentence(&errors));
                park(tx, vault, message, None, ErrorKind::Invalid, why, None).await?;
                return Ok(Outcome::Invalid);
            }
            Verdict::Valid(application) => {
                let new = NewApplication {
                    application_id: application.application_id,
                    kind: Some(application.kind),
                    issuing_service: Some(&application.issuing_service),
                    canonical: &canonical,
                    payload: &application.normalized,
                };
                // Handed over already in the first step's status, in the statement that
                // records it: a transaction (and a status event) less per application than
                // letting the step write it, and the history shows the same sequence.
                let step = route::first_step(application.kind);
                let work = [crate::runtime::work_message(
                    &WorkItem::first(application.application_id, step),
                    None,
                )];
                let hand_off = HandOff {
                    status: Status::VerifyingIdentity,
                    step,
                    work: &work,
                };
                let inserted =
                    applications::insert_received(tx, vault, &new, STEP, Some(hand_off)).await?;
                (application.application_id, inserted, Ok(application.kind))
            }
            Verdict::Invalid {
                application_id,
                kind,
                issuing_service,
                errors,
            } => {
                let new = NewApplication {
                    application_id,
                    kind,
                    issuing_service: issuing_service.as_deref(),
                    canonical: &canonical,
                    payload: object,
                };
                let inserted = applications::insert_received(tx, vault, &new, STEP, None).await?;
                (application_id, inserted, Err(errors))
            }
        };
    match (new, valid) {
        (Inserted::Identical, _) => {
            tracing::debug!(application.id = %application_id, "identical repeat of an application; nothing to do");
            Ok(Outcome::Duplicate)
        }
        (Inserted::Conflict, _) => {
            let why = format!(
                "application {application_id} was already received with different content; the first one is kept unchanged (duplicate_conflict)"
            );
            park(
                tx,
                vault,
                message,
                Some(application_id),
                ErrorKind::Conflict,
                why,
                Some(ReasonCode::DuplicateConflict),
            )
            .await?;
            tracing::warn!(application.id = %application_id, "same application id with different content; parked as conflict");
            Ok(Outcome::Conflict)
        }
        (Inserted::New, Ok(kind)) => {
            tracing::info!(application.id = %application_id, kind = kind.as_str(), "application received");
            Ok(Outcome::Received)
        }
        (Inserted::New, Err(errors)) => {
            let reason = Reason {
                code: ReasonCode::InvalidApplication,
                detail: match errors.len() {
                    1 => "1 field is invalid".to_owned(),
                    n => format!("{n} fields are invalid"),
                },
                errors,
            };
            applications::transition(
                tx,
                application_id,
                Status::Rejected,
                STEP,
                Some(&reason),
                None,
            )
            .await?;
            tracing::info!(application.id = %application_id, errors = reason.errors.len(), "application rejected as invalid");
            Ok(Outcome::Rejected)
        }
    }
}

fn sentence(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn park(
    tx: &mut sqlx::PgConnection,
    vault: &Vault,
    message: &Message,
    application_id: Option<Uuid>,
    kind: ErrorKind,
    error: String,
    reason: Option<ReasonCode>,
) -> sqlx::Result<i64> {
    if kind == ErrorKind::Malformed {
        tracing::warn!(bytes = message.body.len(), error = %error, "malformed message parked");
    }
    let parked = Parked {
        application_id,
        step: STEP,
        kind,
        error,
        reason_code: reason.map(ReasonCode::as_str),
        message,
        attempts: 1,
        first_failed_at: message.received_at,
    };
    dead_letters::park(tx, vault, &parked).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database error answer with a given SQLSTATE.
    #[derive(Debug)]
    struct Answer(&'static str);

    impl std::fmt::Display for Answer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Answer {}

    impl sqlx::error::DatabaseError for Answer {
        fn message(&self) -> &str {
            "an answer"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn answered(sqlstate: &'static str) -> anyhow::Error {
        anyhow::Error::new(sqlx::Error::Database(Box::new(Answer(sqlstate))))
            .context("storing the application")
    }

    #[test]
    fn only_errors_about_the_statement_park_a_message_not_a_server_going_away() {
        // Bad data and constraints: the message itself cannot be stored.
        for sqlstate in ["22P05", "22021", "23505", "54000", "XX000"] {
            assert!(refused_by_database(&answered(sqlstate)), "{sqlstate}");
        }
        // Shutdown, restart, connection loss, overload, deadlock: try again later.
        for sqlstate in [
            "57P01", "57P02", "57P03", "08006", "53300", "40001", "40P01", "58030",
        ] {
            assert!(!refused_by_database(&answered(sqlstate)), "{sqlstate}");
        }
        assert!(!refused_by_database(&anyhow::Error::new(
            sqlx::Error::PoolTimedOut
        )));
        assert!(!refused_by_database(&anyhow::anyhow!("something else")));
    }

    #[test]
    fn bodies_are_classified_in_order() {
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        for (body, needle) in [
            (&big[..], "limit is 65536"),
            (&b"{\"a\": \"\xff\xfe\"}"[..], "not valid UTF-8"),
            (&b"hello"[..], "not JSON"),
            (&b"[1, 2]"[..], "not an object (found an array)"),
            (&b"{\"a\": "[..], "not JSON"),
        ] {
            match decode(body) {
                Decoded::Malformed(why) => assert!(why.contains(needle), "{why}"),
                Decoded::Object(_) => panic!("{needle}: should be malformed"),
            }
        }
        assert!(matches!(decode(b"{\"a\": 1}"), Decoded::Object(_)));
        let exactly_limit = format!("{{\"a\": \"{}\"}}", "x".repeat(MAX_BODY_BYTES - 9));
        assert_eq!(exactly_limit.len(), MAX_BODY_BYTES);
        assert!(matches!(
            decode(exactly_limit.as_bytes()),
            Decoded::Object(_)
        ));
    }

    #[test]
    fn canonical_json_ignores_key_order_but_not_values() {
        let a: Value = serde_json::from_str(r#"{"x": 1, "y": {"b": 2, "a": [1, 2]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"y": {"a": [1, 2], "b": 2}, "x": 1}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"y": {"a": [2, 1], "b": 2}, "x": 1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_ne!(canonical_json(&a), canonical_json(&c));
    }
}
