//! Retention (`RETENTION`, default 90d): an application that ended longer ago keeps its
//! skeleton (id, kind, issuing service, masked identifiers, statuses, history, reasons) and
//! loses its personal payload and its code's hash; a dead letter settled (replayed or
//! discarded) longer ago loses its body, its subject index and every header that is not
//! uidflow's own. Each erasure is a history row of its application.
//!
//! Runs in `uidflow run` (in the processes that host the outbox, one batch at a time under a
//! transaction-scoped advisory lock, every [`INTERVAL`]) and as `uidflow retention`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, format_duration};

/// How often `uidflow run` erases what is due.
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// Rows erased per transaction.
pub const BATCH: i64 = 500;

/// The advisory lock that keeps retention batches of several processes apart (any constant
/// unique to this job).
const LOCK: i64 = 0x7569_6466_7265_746e; // "uidfretn"

/// What is (or was) due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Ended applications whose personal data is (was) erased.
    pub applications: i64,
    /// Settled dead letters whose body is (was) erased.
    pub dead_letters: i64,
}

/// The moment before which what ended is due, for `retention`.
pub fn cutoff(retention: Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX)
}

const ENDED: &str = "('completed', 'rejected', 'failed')";

/// What an erasure now would erase (`uidflow retention --dry-run`).
pub async fn due(pool: &PgPool, retention: Duration) -> sqlx::Result<Counts> {
    let sql = format!(
        "SELECT (SELECT count(*) FROM applications
                 WHERE status IN {ENDED} AND updated_at < $1 AND personal_data_erased_at IS NULL),
                (SELECT count(*) FROM dead_letters
                 WHERE state <> 'parked' AND state_changed_at < $1 AND body_erased_at IS NULL)"
    );
    let (applications, dead_letters): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(cutoff(retention))
        .fetch_one(pool)
        .await?;
    Ok(Counts {
        applications,
        dead_letters,
    })
}

/// Erases everything due, in batches; returns what it erased, which the audit trail records
/// (each application's erasure is also a row of its history). A batch another process holds
/// the lock for is waited for, not repeated.
pub async fn apply(pool: &PgPool, retention: Duration) -> sqlx::Result<Counts> {
    let mut total = Counts::default();
    loop {
        let batch = erase_batch(pool, retention).await?;
        total.applications += batch.applications;
        total.dead_letters += batch.dead_letters;
        if batch == Counts::default() {
            break;
        }
    }
    if total != Counts::default() {
        let mut tx = pool.begin().await?;
        let detail = serde_json::json!({
            "retention": format_duration(retention),
            "applications": total.applications,
            "dead_letters": total.dead_letters,
        });
        crate::audit::record(&mut tx, "retention", "personal_data_erased", None, &detail).await?;
        tx.commit().await?;
    }
    Ok(total)
}

async fn erase_batch(pool: &PgPool, retention: Duration) -> sqlx::Result<Counts> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK)
        .execute(&mut *tx)
        .await?;
    let note = format!(
        "personal data erased: ended longer than RETENTION ({}) ago",
        format_duration(retention)
    );
    let sql = format!(
        "WITH due AS (
             SELECT application_id FROM applications
             WHERE status IN {ENDED} AND updated_at < $1 AND personal_data_erased_at IS NULL
             ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED),
         payloads AS (DELETE FROM application_payloads p USING due WHERE p.application_id = due.application_id),
         codes AS (DELETE FROM phone_confirmations c USING due WHERE c.application_id = due.application_id),
         erased AS (
             UPDATE applications a SET payload = NULL, personal_data_erased_at = clock_timestamp()
             FROM due WHERE a.application_id = due.application_id
             RETURNING a.application_id, a.status),
         noted AS (
             INSERT INTO application_history (application_id, status, step, detail)
             SELECT application_id, status, 'retention', $3 FROM erased)
         SELECT count(*) FROM erased"
    );
    let applications: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(cutoff(retention))
        .bind(BATCH)
        .bind(&note)
        .fetch_one(&mut *tx)
        .await?;
    let dead_letters: i64 = sqlx::query_scalar(
        "WITH due AS (
             SELECT id FROM dead_letters
             WHERE state <> 'parked' AND state_changed_at < $1 AND body_erased_at IS NULL
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED),
         erased AS (
             UPDATE dead_letters d SET body = ''::bytea, body_key_id = NULL, subject_index = NULL,
                 body_erased_at = clock_timestamp(),
                 headers = (SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb)
                            FROM jsonb_each(d.headers) AS h (k, v) WHERE k LIKE 'x-uid-%')
             FROM due WHERE d.id = due.id RETURNING d.id)
         SELECT count(*) FROM erased",
    )
    .bind(cutoff(retention))
    .bind(BATCH)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Counts {
        applications,
        dead_letters,
    })
}

/// Erases what is due every [`INTERVAL`] until cancelled.
pub async fn run(settings: Settings, pool: PgPool, token: CancellationToken) {
    loop {
        match apply(&pool, settings.retention).await {
            Ok(counts) if counts != Counts::default() => tracing::info!(
                applications = counts.applications,
                dead_letters = counts.dead_letters,
                "retention erased personal data"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "retention failed; trying again later"),
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}
