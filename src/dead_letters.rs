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
use crate::vault::{Aad, Vault};

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
    /// A work item that was not its application's turn (a step out of order, of another
    /// kind's route, unknown, or for an application that ended first): nothing ran.
    OutOfOrder,
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
            ErrorKind::OutOfOrder => "out_of_order",
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
pub async fn park(
    conn: &mut PgConnection,
    vault: &Vault,
    parked: &Parked<'_>,
) -> sqlx::Result<i64> {
    let id = park_once(conn, vault, parked, None).await?;
    Ok(id.expect("a dead letter without a source key is always inserted"))
}

/// [`park`], but only once per `source_key`: `None` if a dead letter with that key exists.
pub async fn park_once(
    conn: &mut PgConnection,
    vault: &Vault,
    parked: &Parked<'_>,
    source_key: Option<&str>,
) -> sqlx::Result<Option<i64>> {
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
    // The body is stored sealed; the copy on `uid.dead-letter` is the message byte for byte
    // (CONTRACT §2), as the broker already held it.
    let sealed = vault.seal(Aad::DeadLetter, &parked.message.body);
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO dead_letters (application_id, step, error_kind, error, reason_code, body, headers,
            routing_key, attempts, first_failed_at, last_failed_at, source_key, body_key_id, subject_index)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (source_key) WHERE source_key IS NOT NULL DO NOTHING RETURNING id",
    )
    .bind(parked.application_id)
    .bind(parked.step)
    .bind(parked.kind.as_str())
    .bind(crate::db::pg_safe_text(&parked.error))
    .bind(parked.reason_code)
    .bind(&sealed.bytes)
    .bind(crate::db::pg_safe_json(&Value::Object(headers.clone())))
    .bind(crate::db::pg_safe_text(&parked.message.routing_key))
    .bind(i32::try_from(parked.attempts).unwrap_or(i32::MAX))
    .bind(parked.first_failed_at)
    .bind(now)
    .bind(source_key)
    .bind(&sealed.key_id)
    .bind(subject_of_body(vault, &parked.message.body))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(id) = inserted else {
        return Ok(None);
    };
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
    Ok(Some(id))
}

/// The blind index of the person a body names (`applicant.identification_number` of a JSON
/// body), for a person's data request.
pub fn subject_of_body(vault: &Vault, body: &[u8]) -> Option<Vec<u8>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let number = value
        .pointer("/applicant/identification_number")?
        .as_str()?;
    crate::applications::subject_index(vault, number)
}

/// A dead letter's body as the message had it: opened when sealed, as stored when it was
/// parked before bodies were sealed; `None` once retention erased it.
pub fn body_of(row: &sqlx::postgres::PgRow, vault: &Vault) -> sqlx::Result<Option<Vec<u8>>> {
    use sqlx::Row;
    let erased: Option<DateTime<Utc>> = row.get("body_erased_at");
    if erased.is_some() {
        return Ok(None);
    }
    let body: Vec<u8> = row.get("body");
    match row.get::<Option<String>, _>("body_key_id") {
        Some(key_id) => vault
            .open(&key_id, Aad::DeadLetter, &body)
            .map(Some)
            .map_err(|e| sqlx::Error::Decode(Box::new(e))),
        None => Ok(Some(body)),
    }
}

/// Consumes `uid.parking` until cancelled, parking every message it finds there.
pub async fn run_keeper(
    settings: Settings,
    pool: PgPool,
    vault: Arc<Vault>,
    token: CancellationToken,
) {
    let config = ConsumerConfig {
        role: "dead-letter-keeper",
        queue: PARKING_QUEUE.into(),
        prefetch: 16,
    };
    consumer::run(settings, config, Arc::new(Keeper { pool, vault }), token).await;
}

struct Keeper {
    pool: PgPool,
    vault: Arc<Vault>,
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
        // The same dead-lettering delivered again (the keeper died after its commit, before its
        // ack) has the same key, and is parked once.
        let key = death.source_key(&message.body);
        match park_once(&mut tx, &self.vault, &parked, Some(&key)).await? {
            Some(id) => tracing::warn!(
                dead_letter.id = id,
                step = parked.step,
                kind = kind.as_str(),
                "parked a message the broker dead-lettered"
            ),
            None => tracing::debug!("this dead-lettering was parked already"),
        }
        outbox::commit(tx, &self.pool).await?;
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
    /// When the broker dead-lettered it (`x-death[].time`), if it said.
    time: Option<u64>,
}

impl BrokerDeath {
    /// Identifies one dead-lettering of one message: queue, reason, time, count and body.
    fn source_key(&self, body: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(format!(
            "{}|{}|{:?}|{}|",
            self.queue, self.reason, self.time, self.count
        ));
        hash.update(body);
        hex::encode(hash.finalize())
    }

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
        let time = first.and_then(|d| d.get("time")).and_then(Value::as_u64);
        Self {
            time,
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
    fn personal_data_is_masked_in_every_shape_of_body() {
        let application = br#"{"application_id": "0b8f8f8e-2f3c-4c55-9a43-2f4a3b1c9d10", "applicant": {"surname": "Ivanou",
            "identification_number": "3140385a001pb5"}, "document": {"number": "MP1234567"}, "phone": "8 (029) 123-45-67"}"#;
        let mut array = b"[".to_vec();
        array.extend_from_slice(application);
        array.push(b']');
        let truncated = &application[..application.len() - 30];
        let mut binary = application.to_vec();
        binary.insert(5, 0xff);
        for body in [&application[..], &array, truncated, &binary] {
            let shown = show_body(body);
            let text = shown.content.to_string();
            for secret in ["3140385a001pb5", "123-45-67", "1234567", "Ivanou"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
            assert!(
                shown.masked && shown.raw_base64.is_none(),
                "{}",
                shown.encoding
            );
        }
        let harmless = show_body(b"just text, 42");
        assert!(!harmless.masked && harmless.raw_base64.is_some());
    }

    /// The shapes the fuzzer (tests/fuzz/regressions) found shown in full.
    #[test]
    fn numbers_keys_broken_bytes_and_combining_marks_do_not_hide_personal_data() {
        let cases: [(&[u8], &[&str]); 5] = [
            (br#"{"kind": "issue", "phone": 375291234567}"#, &["375291234567"]),
            (br#"{"application_id": "x", "code": 482913}"#, &["482913"]),
            (
                br#"{"3140385A001PB5": {"+375291234567": "confirmed"}}"#,
                &["3140385A001PB5", "375291234567"],
            ),
            (
                b"{\"applicant\": {\"surname\": \"\xff\xd0\x86\xd0\xb2\"}, \"code\": \"4\xff82913\"}",
                &["82913", "\u{406}\u{432}"],
            ),
            (
                "identification number 3140385A001PB5\u{301} (combining)".as_bytes(),
                &["3140385A001PB5"],
            ),
        ];
        for (body, secrets) in cases {
            let shown = show_body(body);
            let text = match shown.encoding {
                "base64" => {
                    use base64::Engine;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(shown.content.as_str().unwrap())
                        .unwrap();
                    String::from_utf8_lossy(&bytes).into_owned()
                }
                _ => shown.content.to_string(),
            };
            for secret in secrets {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
            assert!(shown.masked && shown.raw_base64.is_none(), "{text}");
        }
    }

    /// Values under keys naming personal data or secrets are masked whatever their shape: a
    /// phone in words, a name no pattern knows, a code with spaces, a date of birth.
    #[test]
    fn values_are_masked_by_their_field_names_whatever_their_shape() {
        let body = br#"{"applicant": {"Surname": "Smith", "given_name": "Jo", "DATE_OF_BIRTH": "1985-03-14",
            "Names": ["Ann", "Lee"], "identificationNumber": "not-a-shape"},
            "code": "12 34 56", "contact": {"phone": "two nine one four four"},
            "document": {"number": "AB 1"}, "temporary_password": {"value": "hunter2"},
            "kind": "issue", "step": "register"}"#;
        let shown = show_body(body);
        let text = shown.content.to_string();
        for secret in [
            "Smith",
            "\"Jo\"",
            "1985",
            "Ann",
            "Lee",
            "not-a-shape",
            "12 34 56",
            "two nine",
            "AB 1",
            "hunter2",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(shown.masked && shown.raw_base64.is_none());
        assert_eq!(shown.content["applicant"]["Surname"], "S***");
        assert_eq!(shown.content["kind"], "issue");
        assert_eq!(shown.content["step"], "register");

        // Not JSON (truncated): the same keys, quoted or not, by text.
        let truncated = &body[..body.len() - 40];
        let text =
            String::from_utf8(show_body(truncated).content.as_str().unwrap().into()).unwrap();
        for secret in ["Smith", "1985", "12 34 56", "two nine", "not-a-shape"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    #[test]
    fn headers_are_masked_by_field_name_inside_tables_and_json_strings() {
        let headers = json!({
            "x-uid-step": "register",
            "x-applicant": "{\"surname\": \"Smith\", \"phone\": \"two nine one\"}",
            "x-death": [{"queue": "uid.step.register", "count": 1,
                "original": {"Date-Of-Birth": "1985-03-14", "code": 123456}}],
            "X-Phone": "+375 29 one two three",
            "x-password": "hunter2",
        });
        let shown = show_headers(headers).to_string();
        for secret in ["Smith", "two nine", "1985", "123456", "one two", "hunter2"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("uid.step.register"), "{shown}");
        assert!(shown.contains("\"x-uid-step\":\"register\""), "{shown}");
    }

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
                time: None,
                queue: "uid.step.register".into(),
                reason: "delivery_limit".into(),
                count: 20
            }
        );
    }
}

/// A dead letter as an operator lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetterSummary {
    /// Id.
    pub id: i64,
    /// The application, when known.
    pub application_id: Option<Uuid>,
    /// Where it failed.
    pub step: String,
    /// `x-uid-error-kind`.
    pub error_kind: String,
    /// `x-uid-error`.
    pub error: String,
    /// A reason code (`duplicate_conflict`).
    pub reason_code: Option<String>,
    /// Attempts made.
    pub attempts: i32,
    /// First failure.
    pub first_failed_at: DateTime<Utc>,
    /// Last failure.
    pub last_failed_at: DateTime<Utc>,
    /// Parked.
    pub parked_at: DateTime<Utc>,
    /// `parked`, `replayed` or `discarded`.
    pub state: String,
    /// When it was replayed or discarded.
    pub state_changed_at: Option<DateTime<Utc>>,
    /// By whom (the token's name).
    pub state_changed_by: Option<String>,
    /// Why.
    pub state_reason: Option<String>,
    /// True if a replay can put it back where it failed.
    pub replayable: bool,
}

/// A dead letter with its message, body masked where it holds personal data.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetterDetail {
    /// Everything listed.
    #[serde(flatten)]
    pub summary: DeadLetterSummary,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its headers (ours and the original ones).
    pub headers: Value,
    /// Its body.
    pub body: Body,
}

/// A message body as shown to an operator.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Body {
    /// `json`, `text` or `base64`.
    pub encoding: &'static str,
    /// The body (a JSON value for `json`).
    pub content: Value,
    /// True if personal data or secrets were masked.
    pub masked: bool,
    /// Size in bytes.
    pub bytes: usize,
    /// The body byte for byte (base64), for export; only when nothing was masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
}

const STEP_PARKS: [&str; 2] = ["intake", "phone-confirmation"];

fn replayable(step: &str, kind: &str, application_id: Option<Uuid>) -> bool {
    let retryable = kind == ErrorKind::Permanent.as_str() || kind == ErrorKind::Exhausted.as_str();
    let placeable = STEP_PARKS.contains(&step)
        || (crate::topology::STEPS.contains(&step) && application_id.is_some());
    retryable && placeable
}

const SUMMARY_COLUMNS: &str =
    "id, application_id, step, error_kind, error, reason_code, attempts, first_failed_at,
    last_failed_at, parked_at, state, state_changed_at, state_changed_by, state_reason";

fn summary_of(row: &sqlx::postgres::PgRow) -> DeadLetterSummary {
    use sqlx::Row;
    let step: String = row.get("step");
    let error_kind: String = row.get("error_kind");
    let application_id: Option<Uuid> = row.get("application_id");
    DeadLetterSummary {
        id: row.get("id"),
        application_id,
        replayable: replayable(&step, &error_kind, application_id),
        step,
        error_kind,
        error: row.get("error"),
        reason_code: row.get("reason_code"),
        attempts: row.get("attempts"),
        first_failed_at: row.get("first_failed_at"),
        last_failed_at: row.get("last_failed_at"),
        parked_at: row.get("parked_at"),
        state: row.get("state"),
        state_changed_at: row.get("state_changed_at"),
        state_changed_by: row.get("state_changed_by"),
        state_reason: row.get("state_reason"),
    }
}

/// One dead letter with its message; `None` if unknown.
pub async fn get(pool: &PgPool, vault: &Vault, id: i64) -> sqlx::Result<Option<DeadLetterDetail>> {
    use sqlx::Row;
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS}, routing_key, headers, body, body_key_id, body_erased_at FROM dead_letters WHERE id = $1"
    );
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let body = body_of(&row, vault)?.unwrap_or_default();
    Ok(Some(DeadLetterDetail {
        summary: summary_of(&row),
        routing_key: row.get("routing_key"),
        headers: show_headers(row.get("headers")),
        body: show_body(&body),
    }))
}

/// The headers for an operator: values under keys naming personal data or secrets masked,
/// at any depth (AMQP tables are JSON objects here), and JSON inside string values too.
pub fn show_headers(mut headers: Value) -> Value {
    mask_json(&mut headers, None);
    headers
}

/// The body for an operator: JSON with personal data and secrets masked, text, or base64.
pub fn show_body(body: &[u8]) -> Body {
    use base64::Engine;
    let bytes = body.len();
    let (encoding, content, masked) = match std::str::from_utf8(body) {
        Ok(text) => match serde_json::from_str::<Value>(text) {
            Ok(mut value) => {
                let masked = mask_json(&mut value, None);
                ("json", value, masked)
            }
            Err(_) => {
                let (shown, masked) = mask_bytes(text.as_bytes());
                (
                    "text",
                    Value::from(String::from_utf8_lossy(&shown).into_owned()),
                    masked,
                )
            }
        },
        Err(_) => {
            let (shown, masked) = mask_bytes(body);
            (
                "base64",
                Value::from(base64::engine::general_purpose::STANDARD.encode(shown)),
                masked,
            )
        }
    };
    let raw = (!masked).then(|| base64::engine::general_purpose::STANDARD.encode(body));
    Body {
        encoding,
        content,
        masked,
        bytes,
        raw_base64: raw,
    }
}

/// Masks what looks like an identification number (`3140385A***PB5`), a phone number (9 or
/// more digits, with any separators: `***`) or the value of a name, document number, code or
/// password field anywhere in `bytes`, even in broken or truncated input. True if anything was
/// masked.
fn mask_bytes(bytes: &[u8]) -> (Vec<u8>, bool) {
    use regex::bytes::Regex;
    static NUMBER: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        // ASCII word boundaries: a combining mark after the number must not hide it.
        Regex::new(r"(?i)(?-u:\b)([0-9]{7}[a-z])[0-9]{3}([a-z]{2}[0-9])(?-u:\b)")
            .expect("a valid pattern")
    });
    static PHONE: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"\+?[0-9](?:[ ()\-]*[0-9]){8,}").expect("a valid pattern")
    });
    static FIELD: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        // Any byte but a quote, so an invalid byte inside the value does not end the match.
        Regex::new(
            r#"(?i)("[a-z_.\- ]*(?:surname|given_?name|patronymic|names|number|code|password|phone|birth|dob)"\s*:\s*)(?:"(?-u:[^"])*"?|[^,}\]\s"]+)"#,
        )
        .expect("a valid pattern")
    });
    let fields = FIELD.replace_all(bytes, &b"${1}\"***\""[..]);
    let numbers = NUMBER.replace_all(&fields, &b"${1}***${2}"[..]);
    let phones = PHONE.replace_all(&numbers, &b"***"[..]);
    let masked = phones.as_ref() != bytes;
    (phones.into_owned(), masked)
}

/// Keys whose values are personal data or secrets, whatever they look like, compared in
/// lower case without `_`, `-`, `.` or spaces (`dateOfBirth`, `date-of-birth` and
/// `DATE_OF_BIRTH` are one key).
const SECRET_KEYS: [&str; 25] = [
    "identificationnumber",
    "idnumber",
    "personalnumber",
    "number",
    "documentnumber",
    "phone",
    "phonenumber",
    "newphone",
    "oldphone",
    "surname",
    "givenname",
    "patronymic",
    "names",
    "fullname",
    "firstname",
    "lastname",
    "middlename",
    "dateofbirth",
    "birthdate",
    "dob",
    "code",
    "password",
    "temporarypassword",
    "secret",
    "token",
];

/// Name-like keys: the first letter stays, so an operator can tell two people apart.
const NAME_KEYS: [&str; 6] = [
    "surname",
    "givenname",
    "patronymic",
    "firstname",
    "lastname",
    "middlename",
];

fn normalised(key: &str) -> String {
    key.chars()
        .filter(|c| !matches!(c, '_' | '-' | '.' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// True if the values under `key` are masked whatever their shape.
fn secret_key(key: &str) -> bool {
    let key = normalised(key);
    SECRET_KEYS.contains(&key.as_str()) || key.contains("password") || key.contains("phone")
}

/// Masks personal data and secrets anywhere in a JSON value (a body, or headers): every value
/// under a key naming personal data or a secret ([`SECRET_KEYS`], at any depth, whatever its
/// shape), and identification numbers and phones by their shape elsewhere. A string that is
/// itself a JSON object or array (a header carrying JSON) is masked inside. True if anything
/// was masked.
fn mask_json(value: &mut Value, key: Option<&str>) -> bool {
    let secret = key.is_some_and(secret_key);
    match value {
        Value::Object(map) => {
            let mut masked = false;
            for (child_key, child) in map.iter_mut() {
                // Everything under a secret key is secret (`"phone": {"new": …}`).
                let key = if secret {
                    key
                } else {
                    Some(child_key.as_str())
                };
                masked |= mask_json(child, key);
            }
            // Keys are data too: a number or a phone used as a key is masked like a value.
            if map.keys().any(|k| mask_bytes(k.as_bytes()).1) {
                masked = true;
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| {
                        let (shown, _) = mask_bytes(k.as_bytes());
                        (String::from_utf8_lossy(&shown).into_owned(), v)
                    })
                    .collect();
            }
            masked
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |masked, item| mask_json(item, key) | masked),
        Value::String(text) if secret => {
            let key = key.map(normalised).unwrap_or_default();
            *text = match text.chars().next() {
                Some(first) if NAME_KEYS.contains(&key.as_str()) && first.is_alphabetic() => {
                    format!("{first}***")
                }
                // The API's usual mask (first 8 and last 3 kept), or `***` if not that shape.
                _ if key == "identificationnumber" => {
                    crate::domain::mask_identification_number(text)
                }
                _ => "***".to_owned(),
            };
            true
        }
        Value::String(text) => {
            // A header value (or a field) holding JSON: masked inside, kept as a string.
            let trimmed = text.trim_start();
            if (trimmed.starts_with('{') || trimmed.starts_with('['))
                && let Ok(mut inner) = serde_json::from_str::<Value>(text)
            {
                let masked = mask_json(&mut inner, key);
                if masked {
                    *text = inner.to_string();
                }
                return masked;
            }
            let (shown, by_shape) = mask_bytes(text.as_bytes());
            if by_shape {
                *text = String::from_utf8_lossy(&shown).into_owned();
            }
            by_shape
        }
        // A phone or a code sent as a JSON number is masked like the string would be.
        Value::Number(number) if secret || mask_bytes(number.to_string().as_bytes()).1 => {
            *value = Value::from("***");
            true
        }
        _ => false,
    }
}

/// Why a replay or a discard was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// No such dead letter.
    #[error("no dead letter {0}")]
    NotFound(i64),
    /// Already replayed or discarded.
    #[error("dead letter {id} was already {state}")]
    NotParked {
        /// Id.
        id: i64,
        /// Its state.
        state: String,
    },
    /// Nothing to put back where it failed.
    #[error(
        "dead letter {id} ({kind}) cannot be replayed: there is no step to put it back to; discard it (its body stays in the table)"
    )]
    NotReplayable {
        /// Id.
        id: i64,
        /// Its kind.
        kind: String,
    },
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// Puts a parked message back where it failed: a step's work item to its step (attempts start
/// over; steps already in the ledger do not run again), an intake message to `uid.intake`.
/// The application, if `failed`, returns to the status it had before and goes on. Recorded in
/// the dead letter (who, when, why) and the application's history.
pub async fn replay(
    pool: &PgPool,
    vault: &Vault,
    id: i64,
    who: &str,
    why: &str,
) -> Result<DeadLetterSummary, ActionError> {
    use sqlx::Row;
    let mut tx = pool.begin().await?;
    let row = sqlx::query("SELECT step, error_kind, application_id, state, routing_key, headers, body, body_key_id, body_erased_at FROM dead_letters WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(ActionError::NotFound(id))?;
    let state: String = row.get("state");
    if state != "parked" {
        return Err(ActionError::NotParked { id, state });
    }
    let step: String = row.get("step");
    let kind: String = row.get("error_kind");
    let application_id: Option<Uuid> = row.get("application_id");
    if !replayable(&step, &kind, application_id) {
        return Err(ActionError::NotReplayable { id, kind });
    }
    let detail = format!("dead letter {id} replayed by {who}: {why}");
    if let Some(application_id) = application_id
        && let Some(status) = crate::applications::lock_status(&mut tx, application_id).await?
    {
        if status == crate::domain::Status::Failed {
            let before: Option<String> = sqlx::query_scalar(
                "SELECT status FROM application_history WHERE application_id = $1 AND status <> 'failed' ORDER BY id DESC LIMIT 1",
            )
            .bind(application_id)
            .fetch_optional(&mut *tx)
            .await?;
            let before = before
                .as_deref()
                .and_then(crate::domain::Status::parse)
                .unwrap_or(crate::domain::Status::Received);
            crate::applications::transition(
                &mut tx,
                application_id,
                before,
                "operator",
                None,
                Some(&detail),
            )
            .await?;
        } else {
            crate::applications::note(&mut tx, application_id, "operator", &detail).await?;
        }
    }
    match (
        crate::topology::STEPS.contains(&step.as_str()),
        application_id,
    ) {
        (true, Some(application_id)) => {
            crate::runtime::enqueue_work(
                &mut tx,
                &crate::messages::WorkItem::first(application_id, &step),
                None,
            )
            .await?;
        }
        _ => {
            let headers: Value = row.get("headers");
            let original: serde_json::Map<String, Value> = headers
                .as_object()
                .map(|h| {
                    h.iter()
                        .filter(|(k, _)| {
                            !k.starts_with("x-uid-")
                                && !k.starts_with("x-death")
                                && !k.starts_with("x-first-death")
                                && !k.starts_with("x-last-death")
                        })
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let routing_key: String = row.get("routing_key");
            outbox::enqueue(
                &mut tx,
                &Outgoing {
                    exchange: crate::topology::INTAKE_EXCHANGE.into(),
                    routing_key,
                    message_id: application_id.map(|a| a.to_string()),
                    content_type: Some("application/json".into()),
                    headers: Value::Object(original),
                    body: body_of(&row, vault)?.unwrap_or_default(),
                    mandatory: true,
                    expiration_ms: None,
                },
            )
            .await?;
        }
    }
    let summary = mark(&mut tx, id, "replayed", who, why).await?;
    outbox::commit(tx, pool).await?;
    tracing::info!(dead_letter.id = id, by = who, "dead letter replayed");
    Ok(summary)
}

/// Discards a parked dead letter (its row stays, marked), recorded with who, when and why.
pub async fn discard(
    pool: &PgPool,
    id: i64,
    who: &str,
    why: &str,
) -> Result<DeadLetterSummary, ActionError> {
    let mut tx = pool.begin().await?;
    let row: Option<(String, Option<Uuid>)> =
        sqlx::query_as("SELECT state, application_id FROM dead_letters WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let (state, application_id) = row.ok_or(ActionError::NotFound(id))?;
    if state != "parked" {
        return Err(ActionError::NotParked { id, state });
    }
    if let Some(application_id) = application_id
        && crate::applications::lock_status(&mut tx, application_id)
            .await?
            .is_some()
    {
        let detail = format!("dead letter {id} discarded by {who}: {why}");
        crate::applications::note(&mut tx, application_id, "operator", &detail).await?;
    }
    let summary = mark(&mut tx, id, "discarded", who, why).await?;
    outbox::commit(tx, pool).await?;
    tracing::info!(dead_letter.id = id, by = who, "dead letter discarded");
    Ok(summary)
}

async fn mark(
    tx: &mut PgConnection,
    id: i64,
    state: &str,
    who: &str,
    why: &str,
) -> sqlx::Result<DeadLetterSummary> {
    let sql = format!(
        "UPDATE dead_letters SET state = $2, state_changed_at = clock_timestamp(), state_changed_by = $3, state_reason = $4
         WHERE id = $1 RETURNING {SUMMARY_COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(state)
        .bind(who)
        .bind(why)
        .fetch_one(&mut *tx)
        .await?;
    Ok(summary_of(&row))
}

/// Which dead letters: every field narrows the set; `None` leaves it open. Used by the API,
/// the console and the CLI alike, for listing and for bulk replay or discard.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Filter {
    /// `parked`, `replayed` or `discarded` (`None`: all).
    pub state: Option<String>,
    /// `x-uid-error-kind` (`exhausted`, `malformed`, …).
    pub kind: Option<String>,
    /// Where it failed (`verify-identity`, `intake`, …).
    pub step: Option<String>,
    /// Text the error contains (case-insensitive).
    pub error: Option<String>,
    /// The issuing service of its application.
    pub issuing_service: Option<String>,
    /// Parked at or after.
    pub parked_from: Option<DateTime<Utc>>,
    /// Parked before.
    pub parked_to: Option<DateTime<Utc>>,
    /// Only ids at or below this one (a bulk action applies to what its preview saw).
    pub through_id: Option<i64>,
}

/// The `WHERE` of [`Filter`], over `dead_letters d LEFT JOIN applications a`, with its
/// parameters from `$1` to `$8` in the order of [`bind_filter`].
const FILTER_WHERE: &str = "($1::text IS NULL OR d.state = $1)
    AND ($2::text IS NULL OR d.error_kind = $2)
    AND ($3::text IS NULL OR d.step = $3)
    AND ($4::text IS NULL OR strpos(lower(d.error), lower($4)) > 0)
    AND ($5::text IS NULL OR a.issuing_service = $5)
    AND ($6::timestamptz IS NULL OR d.parked_at >= $6)
    AND ($7::timestamptz IS NULL OR d.parked_at < $7)
    AND ($8::bigint IS NULL OR d.id <= $8)";

fn bind_filter<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    filter: &'q Filter,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(filter.state.as_deref())
        .bind(filter.kind.as_deref())
        .bind(filter.step.as_deref())
        .bind(filter.error.as_deref().filter(|e| !e.is_empty()))
        .bind(filter.issuing_service.as_deref())
        .bind(filter.parked_from)
        .bind(filter.parked_to)
        .bind(filter.through_id)
}

fn prefixed_summary_columns() -> String {
    SUMMARY_COLUMNS
        .split(',')
        .map(|c| format!("d.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One page of the dead letters `filter` selects, newest first, with ids below `before`.
pub async fn list(
    pool: &PgPool,
    filter: &Filter,
    limit: i64,
    before: Option<i64>,
) -> sqlx::Result<(Vec<DeadLetterSummary>, Option<i64>)> {
    let sql = format!(
        "SELECT {} FROM dead_letters d LEFT JOIN applications a ON a.application_id = d.application_id
         WHERE {FILTER_WHERE} AND ($9::bigint IS NULL OR d.id < $9)
         ORDER BY d.id DESC LIMIT $10",
        prefixed_summary_columns()
    );
    let rows = bind_filter(sqlx::query(sqlx::AssertSqlSafe(sql)), filter)
        .bind(before)
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    let more = rows.len() as i64 > limit;
    let page: Vec<DeadLetterSummary> = rows.iter().take(limit as usize).map(summary_of).collect();
    let next = if more {
        page.last().map(|d| d.id)
    } else {
        None
    };
    Ok((page, next))
}

/// Replay or discard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    /// [`replay`] each.
    Replay,
    /// [`discard`] each.
    Discard,
}

impl BulkAction {
    /// `replay` or `discard`.
    pub fn as_str(self) -> &'static str {
        match self {
            BulkAction::Replay => "replay",
            BulkAction::Discard => "discard",
        }
    }

    /// Parses `replay` or `discard`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "replay" => Some(BulkAction::Replay),
            "discard" => Some(BulkAction::Discard),
            _ => None,
        }
    }
}

/// The most dead letters one bulk action handles; a larger set is done in several.
pub const BULK_MAX: i64 = 10_000;

/// What a bulk action would do: how many parked dead letters the filter selects (and of them
/// how many a replay can put back), the first few, and the highest id, which the action is
/// then given so that letters parked after the preview are left alone.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BulkPreview {
    /// The action previewed.
    pub action: BulkAction,
    /// Parked dead letters selected.
    pub count: i64,
    /// Of them, how many the action applies to (a replay skips what cannot be replayed).
    pub applicable: i64,
    /// The newest ones, at most `shown`.
    pub items: Vec<DeadLetterSummary>,
    /// The highest id selected (`None` if nothing is).
    pub through_id: Option<i64>,
    /// The filter, with `state` parked and `through_id` set: give it to [`bulk_apply`].
    pub filter: Filter,
}

/// Previews `action` on the parked dead letters `filter` selects, showing up to `shown`.
pub async fn bulk_preview(
    pool: &PgPool,
    filter: &Filter,
    action: BulkAction,
    shown: i64,
) -> sqlx::Result<BulkPreview> {
    use sqlx::Row;
    let mut filter = Filter {
        state: Some("parked".into()),
        ..filter.clone()
    };
    let sql = format!(
        "SELECT count(*) AS n, max(d.id) AS through_id,
                count(*) FILTER (WHERE d.error_kind IN ('permanent', 'exhausted')
                    AND (d.step IN ('intake', 'phone-confirmation')
                         OR (d.step = ANY($9) AND d.application_id IS NOT NULL))) AS replayable
         FROM dead_letters d LEFT JOIN applications a ON a.application_id = d.application_id
         WHERE {FILTER_WHERE}"
    );
    let steps: Vec<&str> = crate::topology::STEPS.to_vec();
    let row = bind_filter(sqlx::query(sqlx::AssertSqlSafe(sql)), &filter)
        .bind(&steps)
        .fetch_one(pool)
        .await?;
    let count: i64 = row.get("n");
    let through_id: Option<i64> = row.get("through_id");
    let replayable: i64 = row.get("replayable");
    filter.through_id = through_id.or(Some(0));
    let (items, _) = list(pool, &filter, shown.max(1), None).await?;
    Ok(BulkPreview {
        action,
        count,
        applicable: match action {
            BulkAction::Replay => replayable,
            BulkAction::Discard => count,
        },
        items,
        through_id,
        filter,
    })
}

/// What a bulk action did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct BulkOutcome {
    /// Ids replayed or discarded.
    pub done: Vec<i64>,
    /// Ids left as they were, each with why (not replayable, no longer parked).
    pub skipped: Vec<(i64, String)>,
}

/// Applies `action` to the parked dead letters `filter` selects (at most [`BULK_MAX`]), oldest
/// first, each exactly as a single [`replay`] or [`discard`] by `who` with the one reason
/// `why`: each in its own transaction, each recorded in its dead letter and its application's
/// history. A letter another operator handled meanwhile, or one a replay cannot put back, is
/// skipped and said so. Give the `filter` of a [`bulk_preview`] (it bounds the ids).
pub async fn bulk_apply(
    pool: &PgPool,
    vault: &Vault,
    filter: &Filter,
    action: BulkAction,
    who: &str,
    why: &str,
) -> Result<BulkOutcome, ActionError> {
    let filter = Filter {
        state: Some("parked".into()),
        ..filter.clone()
    };
    let sql = format!(
        "SELECT d.id FROM dead_letters d LEFT JOIN applications a ON a.application_id = d.application_id
         WHERE {FILTER_WHERE} ORDER BY d.id LIMIT $9"
    );
    let ids: Vec<i64> = bind_filter(sqlx::query(sqlx::AssertSqlSafe(sql)), &filter)
        .bind(BULK_MAX)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| sqlx::Row::get(row, 0))
        .collect();
    let mut outcome = BulkOutcome::default();
    for id in ids {
        let result = match action {
            BulkAction::Replay => replay(pool, vault, id, who, why).await,
            BulkAction::Discard => discard(pool, id, who, why).await,
        };
        match result {
            Ok(_) => outcome.done.push(id),
            Err(ActionError::Database(e)) => return Err(ActionError::Database(e)),
            Err(other) => outcome.skipped.push((id, other.to_string())),
        }
    }
    tracing::info!(
        action = action.as_str(),
        by = who,
        done = outcome.done.len(),
        skipped = outcome.skipped.len(),
        "bulk dead-letter action"
    );
    Ok(outcome)
}

/// One operator action on a dead letter, for the audit (who, when, what, why).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    /// The dead letter.
    pub dead_letter_id: i64,
    /// Its application, when known.
    pub application_id: Option<Uuid>,
    /// Where it had failed.
    pub step: String,
    /// `replayed` or `discarded`.
    pub action: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Who (the token's name).
    pub by: String,
    /// Why.
    pub reason: String,
}

/// Operator actions, newest first, before `before` (a position from the previous page).
pub async fn audit(
    pool: &PgPool,
    limit: i64,
    before: Option<(DateTime<Utc>, i64)>,
) -> sqlx::Result<(Vec<AuditEntry>, Option<(DateTime<Utc>, i64)>)> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT id, application_id, step, state, state_changed_at, state_changed_by, state_reason
         FROM dead_letters WHERE state <> 'parked' AND state_changed_at IS NOT NULL
           AND ($1::timestamptz IS NULL OR (state_changed_at, id) < ($1, $2))
         ORDER BY state_changed_at DESC, id DESC LIMIT $3",
    )
    .bind(before.map(|b| b.0))
    .bind(before.map(|b| b.1))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let more = rows.len() as i64 > limit;
    let page: Vec<AuditEntry> = rows
        .iter()
        .take(limit as usize)
        .map(|row| AuditEntry {
            dead_letter_id: row.get("id"),
            application_id: row.get("application_id"),
            step: row.get("step"),
            action: row.get("state"),
            at: row.get("state_changed_at"),
            by: row
                .get::<Option<String>, _>("state_changed_by")
                .unwrap_or_default(),
            reason: row
                .get::<Option<String>, _>("state_reason")
                .unwrap_or_default(),
        })
        .collect();
    let next = if more {
        page.last().map(|e| (e.at, e.dead_letter_id))
    } else {
        None
    };
    Ok((page, next))
}
