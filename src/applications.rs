//! The status table and its history: recording an application, changing its status, and
//! reading it back as a clerk sees it (CONTRACT §3, masked).
//!
//! Every status change goes through [`transition`] (or [`insert_received`] for the first, or
//! [`change_locked`] for a step's commit, which knows the locked row and so does it all in one
//! statement), which writes the history row and enqueues the status event in the caller's
//! transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::amqp::Outgoing;
use crate::domain::{Kind, Reason, Status, mask_identification_number, mask_phone};
use crate::messages::StatusEvent;
use crate::outbox;
use crate::topology::EVENTS_EXCHANGE;
use crate::vault::{Aad, Index, Sealed, Vault};

/// A new application, as the intake records it.
#[derive(Debug, Clone)]
pub struct NewApplication<'a> {
    /// Id.
    pub application_id: Uuid,
    /// Kind, when readable.
    pub kind: Option<Kind>,
    /// Issuing service, when valid.
    pub issuing_service: Option<&'a str>,
    /// The canonical JSON of the message (its keyed hash detects duplicates; it is not stored).
    pub canonical: &'a [u8],
    /// The application (normalised when valid); stored sealed.
    pub payload: &'a Value,
}

/// What the intake stores of a new application's personal data: the payload sealed under the
/// active data key, the blind index of the identification number, and the masks every answer
/// shows.
struct Personal {
    sealed: Sealed,
    subject_index: Option<Vec<u8>>,
    masked_identification_number: Option<String>,
    masked_phone: Option<String>,
}

impl Personal {
    fn of(vault: &Vault, application: &NewApplication<'_>) -> Self {
        let number = application
            .payload
            .pointer("/applicant/identification_number")
            .and_then(Value::as_str);
        let phone = application.payload.get("phone").and_then(Value::as_str);
        let bytes = serde_json::to_vec(application.payload).expect("a JSON value serialises");
        Personal {
            sealed: vault.seal(Aad::Application(application.application_id), &bytes),
            subject_index: number.and_then(|n| subject_index(vault, n)),
            masked_identification_number: number.map(mask_identification_number),
            masked_phone: phone.map(mask_phone),
        }
    }
}

/// The blind index of a person's identification number, when it is one (normalised first, as
/// the intake normalises it).
pub fn subject_index(vault: &Vault, number: &str) -> Option<Vec<u8>> {
    let number = crate::domain::IdentificationNumber::parse(number).ok()?;
    Some(vault.index(Index::Subject, number.as_str().as_bytes()))
}

/// What happened to an insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A new row.
    New,
    /// The id exists with the same content.
    Identical,
    /// The id exists with different content.
    Conflict,
}

/// The first hand-off, made in the statement that records the application: its new status
/// (the first step's), the step's name for the history, and the work item.
#[derive(Debug, Clone, Copy)]
pub struct HandOff<'a> {
    /// The status the application moves to.
    pub status: Status,
    /// The step that takes it over (its history row's `step`).
    pub step: &'a str,
    /// Messages enqueued after the status events (the step's work item).
    pub work: &'a [Outgoing],
}

/// Records a new application as `received` (history row and event included), or says why not.
/// With `hand_off`, the same statement also moves it to the first step: a second history row,
/// its event and the work item, and the row is written once, already in that status (not
/// inserted and then updated, which rewrote the row and every index entry of it).
pub async fn insert_received(
    conn: &mut PgConnection,
    vault: &Vault,
    application: &NewApplication<'_>,
    step: &str,
    hand_off: Option<HandOff<'_>>,
) -> sqlx::Result<Inserted> {
    let received = StatusEvent {
        event_id: Uuid::new_v4(),
        application_id: application.application_id,
        kind: application.kind,
        issuing_service: application.issuing_service.map(str::to_owned),
        status: Status::Received,
        previous_status: None,
        step: step.to_owned(),
        reason: None,
        at: Utc::now(),
    };
    let mut statuses = vec![Status::Received.as_str()];
    let mut steps = vec![step];
    let mut messages = vec![event_message(&received)];
    if let Some(hand_off) = hand_off {
        let handed = StatusEvent {
            event_id: Uuid::new_v4(),
            status: hand_off.status,
            previous_status: Some(Status::Received),
            step: hand_off.step.to_owned(),
            ..received.clone()
        };
        statuses.push(hand_off.status.as_str());
        steps.push(hand_off.step);
        messages.extend(with_event(&handed, hand_off.work));
    }
    let status = *statuses.last().expect("received at least");
    // The row, its history rows and the outbox rows in one statement; nothing at all when the
    // id exists. History rows are numbered in the order given (`WITH ORDINALITY`).
    let sql = format!(
        "WITH inserted AS (
             INSERT INTO applications (application_id, kind, status, issuing_service, content_hmac,
                 masked_identification_number, masked_phone)
             VALUES ($9, $10, $11, $12, $13, $17, $18)
             ON CONFLICT (application_id) DO NOTHING
             RETURNING application_id),
         sealed AS (
             INSERT INTO application_payloads (application_id, key_id, sealed, subject_index)
             SELECT application_id, $19, $14, $20 FROM inserted),
         history AS (
             INSERT INTO application_history (application_id, status, step)
             SELECT application_id, h.status, h.step
             FROM inserted, unnest($15::text[], $16::text[]) WITH ORDINALITY AS h (status, step, n)
             ORDER BY h.n),
         sent AS (
             INSERT INTO outbox {rows} WHERE EXISTS (SELECT FROM inserted))
         SELECT count(*) FROM inserted",
        rows = outbox::INSERT_ROWS
    );
    let personal = Personal::of(vault, application);
    let content_hmac = vault.index(Index::Content, application.canonical);
    let inserted: i64 = outbox::Rows::of(&messages)
        .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
        .bind(application.application_id)
        .bind(application.kind.map(Kind::as_str))
        .bind(status)
        .bind(application.issuing_service)
        .bind(&content_hmac)
        .bind(&personal.sealed.bytes)
        .bind(&statuses)
        .bind(&steps)
        .bind(&personal.masked_identification_number)
        .bind(&personal.masked_phone)
        .bind(&personal.sealed.key_id)
        .bind(&personal.subject_index)
        .fetch_one(&mut *conn)
        .await?
        .get(0);
    if inserted == 0 {
        let existing: Vec<u8> =
            sqlx::query_scalar("SELECT content_hmac FROM applications WHERE application_id = $1")
                .bind(application.application_id)
                .fetch_one(&mut *conn)
                .await?;
        // Rows recorded before the keyed hash hold the plain SHA-256 of the same bytes.
        let legacy = || <sha2::Sha256 as sha2::Digest>::digest(application.canonical).to_vec();
        return Ok(if existing == content_hmac || existing == legacy() {
            Inserted::Identical
        } else {
            Inserted::Conflict
        });
    }
    if let Some(hand_off) = hand_off {
        count_change(hand_off.status, application.kind, received.at);
    }
    Ok(Inserted::New)
}

/// Changes an application's status (locking its row), writes the history row and enqueues the
/// status event, in the caller's transaction. Returns the previous status.
pub async fn transition(
    conn: &mut PgConnection,
    application_id: Uuid,
    to: Status,
    step: &str,
    reason: Option<&Reason>,
    detail: Option<&str>,
) -> sqlx::Result<Status> {
    transition_and_send(conn, application_id, to, step, reason, detail, &[]).await
}

/// [`transition`], and `also` enqueued after the status event (a hand-off's work item): two
/// statements in all, one for the row and its history, one for the outbox.
pub async fn transition_and_send(
    conn: &mut PgConnection,
    application_id: Uuid,
    to: Status,
    step: &str,
    reason: Option<&Reason>,
    detail: Option<&str>,
    also: &[Outgoing],
) -> sqlx::Result<Status> {
    let reason_json = reason
        .map(|r| crate::db::pg_safe_json(&serde_json::to_value(r).expect("a reason serialises")));
    let detail = detail.or(reason.map(|r| r.detail.as_str()));
    // `old` locks the row and keeps the status it had; the update and the history row follow
    // in the same statement.
    let row = sqlx::query(
        "WITH old AS (
             SELECT application_id, status FROM applications WHERE application_id = $1 FOR UPDATE),
         changed AS (
             UPDATE applications a SET status = $2, reason = $3, updated_at = clock_timestamp()
             FROM old WHERE a.application_id = old.application_id
             RETURNING old.status AS previous, a.kind, a.issuing_service, a.created_at),
         history AS (
             INSERT INTO application_history (application_id, status, step, detail)
             SELECT $1, $2, $4, $5 FROM changed)
         SELECT previous, kind, issuing_service, created_at FROM changed",
    )
    .bind(application_id)
    .bind(to.as_str())
    .bind(&reason_json)
    .bind(step)
    .bind(detail.map(crate::db::pg_safe_text))
    .fetch_one(&mut *conn)
    .await?;
    let previous =
        Status::parse(row.get("previous")).expect("the status column holds contract statuses");
    let kind = row.get::<Option<String>, _>("kind");
    let kind = kind.as_deref().and_then(Kind::parse);
    count_change(to, kind, row.get("created_at"));
    let event = StatusEvent {
        event_id: Uuid::new_v4(),
        application_id,
        kind,
        issuing_service: row.get("issuing_service"),
        status: to,
        previous_status: Some(previous),
        step: step.to_owned(),
        reason: reason.cloned(),
        at: Utc::now(),
    };
    outbox::enqueue_all(conn, &with_event(&event, also)).await?;
    Ok(previous)
}

/// A step's commit in one statement, for an application the caller holds locked (`locked` is
/// what it read under the lock, so the event's previous status, kind and service are known
/// before the statement): the status change and its history row, the step's ledger row (when
/// the attempt records one), and the outbox rows — the status event, then `also`.
pub async fn change_locked(
    conn: &mut PgConnection,
    locked: &Loaded,
    to: Status,
    step: &str,
    reason: Option<&Reason>,
    also: &[Outgoing],
    ledger: Option<&Value>,
) -> sqlx::Result<()> {
    let event = StatusEvent {
        event_id: Uuid::new_v4(),
        application_id: locked.application_id,
        kind: Some(locked.kind),
        issuing_service: locked.issuing_service.clone(),
        status: to,
        previous_status: Some(locked.status),
        step: step.to_owned(),
        reason: reason.cloned(),
        at: Utc::now(),
    };
    let reason_json = reason
        .map(|r| crate::db::pg_safe_json(&serde_json::to_value(r).expect("a reason serialises")));
    let sql = format!(
        "WITH changed AS (
             UPDATE applications SET status = $9, reason = $10, updated_at = clock_timestamp()
             WHERE application_id = $11 RETURNING application_id, created_at),
         history AS (
             INSERT INTO application_history (application_id, status, step, detail)
             SELECT application_id, $9, $12, $13 FROM changed),
         ledger AS (
             INSERT INTO step_ledger (application_id, step, outcome)
             SELECT application_id, $12, $14 FROM changed WHERE $14::jsonb IS NOT NULL),
         sent AS (
             INSERT INTO outbox {rows})
         SELECT created_at FROM changed",
        rows = outbox::INSERT_ROWS
    );
    let created_at: DateTime<Utc> = outbox::Rows::of(&with_event(&event, also))
        .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
        .bind(to.as_str())
        .bind(&reason_json)
        .bind(locked.application_id)
        .bind(step)
        .bind(reason.map(|r| crate::db::pg_safe_text(&r.detail)))
        .bind(ledger)
        .fetch_one(&mut *conn)
        .await?
        .get("created_at");
    count_change(to, Some(locked.kind), created_at);
    Ok(())
}

/// The status event's message first, then `also`.
fn with_event(event: &StatusEvent, also: &[Outgoing]) -> Vec<Outgoing> {
    let mut messages = Vec::with_capacity(1 + also.len());
    messages.push(event_message(event));
    messages.extend_from_slice(also);
    messages
}

/// The status-change metrics: changes per status, and how long an application took to end.
fn count_change(to: Status, kind: Option<Kind>, created_at: DateTime<Utc>) {
    ::metrics::counter!(crate::telemetry::metrics::STATUS_CHANGES_TOTAL, "status" => to.as_str())
        .increment(1);
    if to.is_final() {
        let age = (Utc::now() - created_at).to_std().unwrap_or_default();
        ::metrics::histogram!(crate::telemetry::metrics::APPLICATION_DURATION_SECONDS,
            "kind" => kind.map_or("unknown", Kind::as_str), "status" => to.as_str())
        .record(age.as_secs_f64());
    }
}

/// The `uid.events` message of a status change.
fn event_message(event: &StatusEvent) -> Outgoing {
    Outgoing {
        exchange: EVENTS_EXCHANGE.into(),
        routing_key: format!("application.{}", event.status.as_str()),
        message_id: Some(event.event_id.to_string()),
        content_type: Some("application/json".into()),
        headers: serde_json::json!({}),
        body: serde_json::to_vec(event).expect("an event serialises"),
        // Nobody may be listening to events; that is not an error.
        mandatory: false,
        expiration_ms: None,
    }
}

/// One history entry as returned (CONTRACT §3).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// When.
    pub at: DateTime<Utc>,
    /// The status after the change.
    pub status: String,
    /// The step that made it.
    pub step: String,
    /// Why, or what else happened.
    pub detail: Option<String>,
}

/// An application without its history, as a clerk sees it: personal data masked (CONTRACT §3).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApplicationSummary {
    /// Id.
    pub application_id: Uuid,
    /// Kind (null when unreadable).
    pub kind: Option<String>,
    /// Status.
    pub status: String,
    /// Reason, for `rejected`.
    pub reason: Option<Value>,
    /// Issuing service code.
    pub issuing_service: Option<String>,
    /// Masked identification number, e.g. `3140385A***PB5`.
    pub identification_number: Option<String>,
    /// Masked phone, e.g. `+37529***4567`.
    pub phone: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// An application with its whole history (CONTRACT §3).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApplicationView {
    /// Everything but the history.
    #[serde(flatten)]
    pub summary: ApplicationSummary,
    /// Every status change and note, oldest first.
    pub history: Vec<HistoryEntry>,
}

const SUMMARY_COLUMNS: &str =
    "application_id, kind, status, reason, issuing_service, created_at, updated_at,
    masked_identification_number, masked_phone";

fn summary_of(row: &sqlx::postgres::PgRow) -> ApplicationSummary {
    ApplicationSummary {
        application_id: row.get("application_id"),
        kind: row.get("kind"),
        status: row.get("status"),
        reason: row.get("reason"),
        issuing_service: row.get("issuing_service"),
        identification_number: row.get("masked_identification_number"),
        phone: row.get("masked_phone"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

/// Loads an application and its history; `None` if unknown.
pub async fn load_view(
    conn: &mut PgConnection,
    application_id: Uuid,
) -> sqlx::Result<Option<ApplicationView>> {
    let sql = format!("SELECT {SUMMARY_COLUMNS} FROM applications WHERE application_id = $1");
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(application_id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let history = sqlx::query(
        "SELECT at, status, step, detail FROM application_history WHERE application_id = $1 ORDER BY id",
    )
    .bind(application_id)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|h| HistoryEntry { at: h.get("at"), status: h.get("status"), step: h.get("step"), detail: h.get("detail") })
    .collect();
    let summary = summary_of(&row);
    let mut view = ApplicationView { summary, history };
    if let Some(waiting) = waiting_for_breaker(conn, &view.summary).await? {
        view.history.push(waiting);
    }
    Ok(Some(view))
}

/// When the application's next step calls an external system whose circuit breaker is open,
/// a last history entry (not stored; as of now) that says it waits for that system.
async fn waiting_for_breaker(
    conn: &mut PgConnection,
    summary: &ApplicationSummary,
) -> sqlx::Result<Option<HistoryEntry>> {
    let status = Status::parse(&summary.status);
    let kind = summary.kind.as_deref().and_then(Kind::parse);
    let (Some(status), Some(kind)) = (status, kind) else {
        return Ok(None);
    };
    if status.is_final() {
        return Ok(None);
    }
    let done: Vec<String> =
        sqlx::query_scalar("SELECT step FROM step_ledger WHERE application_id = $1")
            .bind(summary.application_id)
            .fetch_all(&mut *conn)
            .await?;
    let Some(hop) = crate::route::hops(kind)
        .iter()
        .find(|hop| !done.iter().any(|d| d == hop.step))
    else {
        return Ok(None);
    };
    let Some(system) = crate::breaker::system_of(hop.step) else {
        return Ok(None);
    };
    let states = crate::breaker::states(conn).await?;
    let Some((_, state, opened_at)) = states
        .into_iter()
        .find(|(s, state, _)| *s == system && *state != crate::breaker::State::Closed)
    else {
        return Ok(None);
    };
    let since = opened_at.map_or_else(String::new, |at| {
        format!(" since {}", at.format("%Y-%m-%d %H:%M:%S UTC"))
    });
    Ok(Some(HistoryEntry {
        at: Utc::now(),
        status: summary.status.clone(),
        step: hop.step.to_owned(),
        detail: Some(format!(
            "waiting: {} is unavailable{since} (circuit breaker {}); the step resumes when it answers again, without spending an attempt",
            system.describe(),
            state.as_str().replace('_', "-"),
        )),
    }))
}

/// Filters of the application list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this kind.
    pub kind: Option<Kind>,
    /// Only this issuing service (a clerk's scope).
    pub issuing_service: Option<String>,
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    pub created_to: Option<DateTime<Utc>>,
}

/// A position in the newest-first order: the last row of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Its creation time.
    pub created_at: DateTime<Utc>,
    /// Its id (ties).
    pub application_id: Uuid,
}

/// One page of applications, newest first, after `after` (keyset pagination: an application
/// appears once across pages however many are inserted meanwhile). Returns the page and the
/// position to continue from, if there may be more.
pub async fn list(
    conn: &mut PgConnection,
    filter: &ListFilter,
    limit: i64,
    after: Option<Position>,
) -> sqlx::Result<(Vec<ApplicationSummary>, Option<Position>)> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM applications
         WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR kind = $2)
           AND ($3::text IS NULL OR issuing_service = $3)
           AND ($4::timestamptz IS NULL OR (created_at, application_id) < ($4, $5))
           AND ($7::timestamptz IS NULL OR created_at >= $7)
           AND ($8::timestamptz IS NULL OR created_at < $8)
         ORDER BY created_at DESC, application_id DESC LIMIT $6"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(filter.status.map(Status::as_str))
        .bind(filter.kind.map(Kind::as_str))
        .bind(filter.issuing_service.as_deref())
        .bind(after.map(|p| p.created_at))
        .bind(after.map(|p| p.application_id))
        .bind(limit + 1)
        .bind(filter.created_from)
        .bind(filter.created_to)
        .fetch_all(&mut *conn)
        .await?;
    let more = rows.len() as i64 > limit;
    let page: Vec<ApplicationSummary> = rows.iter().take(limit as usize).map(summary_of).collect();
    let next = if more {
        page.last().map(|last| Position {
            created_at: last.created_at,
            application_id: last.application_id,
        })
    } else {
        None
    };
    Ok((page, next))
}

/// An application as a step works on it: valid, normalised, with personal data (never logged).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Id.
    pub application_id: Uuid,
    /// Kind.
    pub kind: Kind,
    /// Current status.
    pub status: Status,
    /// Issuing service.
    pub issuing_service: Option<String>,
    /// The applicant's identification number (= the UID).
    pub identification_number: crate::domain::IdentificationNumber,
    /// The phone of the application (the new one for `change_phone`), normalised.
    pub phone: Option<crate::domain::Phone>,
    /// The whole application, normalised.
    pub payload: Value,
}

/// Loads an application for a step, optionally locking its row (`FOR UPDATE`) so that steps
/// and confirmations of one application never interleave. `None` if unknown or not valid.
pub async fn load(
    conn: &mut PgConnection,
    vault: &Vault,
    application_id: Uuid,
    lock: bool,
) -> sqlx::Result<Option<Loaded>> {
    let sql = if lock {
        "SELECT a.kind, a.status, a.issuing_service, a.payload, p.key_id, p.sealed
         FROM applications a LEFT JOIN application_payloads p USING (application_id)
         WHERE a.application_id = $1 FOR UPDATE OF a"
    } else {
        "SELECT a.kind, a.status, a.issuing_service, a.payload, p.key_id, p.sealed
         FROM applications a LEFT JOIN application_payloads p USING (application_id)
         WHERE a.application_id = $1"
    };
    let row = sqlx::query(sql)
        .bind(application_id)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => loaded_from(&row, vault, application_id),
        None => Ok(None),
    }
}

/// Locks an application's row (`FOR UPDATE`) and returns its status, without its personal
/// data (for what needs only to know where it stands: an operator's replay, a refused code).
pub async fn lock_status(
    conn: &mut PgConnection,
    application_id: Uuid,
) -> sqlx::Result<Option<Status>> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM applications WHERE application_id = $1 FOR UPDATE")
            .bind(application_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(status.as_deref().and_then(Status::parse))
}

/// The personal data of an application: its payload, opened (or, for a row recorded before
/// payloads were sealed, as stored); `None` once retention erased it.
pub fn payload_of(
    row: &sqlx::postgres::PgRow,
    vault: &Vault,
    application_id: Uuid,
) -> sqlx::Result<Option<Value>> {
    let key_id: Option<String> = row.get("key_id");
    let sealed: Option<Vec<u8>> = row.get("sealed");
    match (key_id, sealed) {
        (Some(key_id), Some(sealed)) => {
            let bytes = vault
                .open(&key_id, Aad::Application(application_id), &sealed)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))
        }
        _ => Ok(row.get("payload")),
    }
}

/// [`load`] without a lock, with the steps in its ledger, in one statement: a step's cheap
/// pre-check. Under a row lock, read the ledger in a statement of its own instead: a statement
/// that waited for the lock sees, in its subqueries, the snapshot from before the wait, and
/// would miss a ledger row committed meanwhile.
pub async fn load_for_step(
    conn: &mut PgConnection,
    vault: &Vault,
    application_id: Uuid,
) -> sqlx::Result<Option<(Loaded, Vec<String>)>> {
    let Some(row) = sqlx::query(
        "SELECT a.kind, a.status, a.issuing_service, a.payload, p.key_id, p.sealed,
                ARRAY(SELECT l.step FROM step_ledger l WHERE l.application_id = a.application_id) AS done
         FROM applications a LEFT JOIN application_payloads p USING (application_id)
         WHERE a.application_id = $1",
    )
    .bind(application_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let done: Vec<String> = row.get("done");
    Ok(loaded_from(&row, vault, application_id)?.map(|loaded| (loaded, done)))
}

fn loaded_from(
    row: &sqlx::postgres::PgRow,
    vault: &Vault,
    application_id: Uuid,
) -> sqlx::Result<Option<Loaded>> {
    let Some(payload) = payload_of(row, vault, application_id)? else {
        return Ok(None);
    };
    let kind = row
        .get::<Option<String>, _>("kind")
        .as_deref()
        .and_then(Kind::parse);
    let status = Status::parse(row.get("status"));
    let number = payload
        .pointer("/applicant/identification_number")
        .and_then(Value::as_str)
        .and_then(|n| crate::domain::IdentificationNumber::parse(n).ok());
    let phone = payload
        .get("phone")
        .and_then(Value::as_str)
        .and_then(|p| crate::domain::Phone::parse(p).ok());
    Ok(match (kind, status, number) {
        (Some(kind), Some(status), Some(identification_number)) => Some(Loaded {
            application_id,
            kind,
            status,
            issuing_service: row.get("issuing_service"),
            identification_number,
            phone: if kind.needs_phone() { phone } else { None },
            payload,
        }),
        _ => None,
    })
}

/// Adds a history row without changing the status (a retry, a wrong code, an ignored message).
pub async fn note(
    conn: &mut PgConnection,
    application_id: Uuid,
    step: &str,
    detail: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO application_history (application_id, status, step, detail)
         SELECT application_id, status, $2, $3 FROM applications WHERE application_id = $1",
    )
    .bind(application_id)
    .bind(step)
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records that attempt `attempt` of `step` is due at `at` (a retry's wait, a reconciler's
/// re-send): the reconciler's deadline for the application counts from it.
pub async fn set_due(
    conn: &mut PgConnection,
    application_id: Uuid,
    step: &str,
    attempt: u32,
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE applications SET due_at = $2, due_step = $3, due_attempt = $4 WHERE application_id = $1",
    )
    .bind(application_id)
    .bind(at)
    .bind(step)
    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
