//! A person's request for their data (`uidflow subject export`): everything uidflow holds
//! about one identification number, found through the blind indexes, opened, in one JSON
//! document. What no longer exists (erased by retention) is not in it; secrets (password and
//! code hashes) are named, never shown.

use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::domain::IdentificationNumber;
use crate::vault::Vault;

/// Everything held about the person with `number`, exported by `by` because `why`.
pub async fn export(
    pool: &PgPool,
    vault: &Vault,
    number: &IdentificationNumber,
    by: &str,
    why: &str,
) -> sqlx::Result<Value> {
    let index = crate::applications::subject_index(vault, number.as_str())
        .expect("a parsed identification number indexes");
    let mut conn = pool.acquire().await?;
    let rows = sqlx::query(
        "SELECT a.application_id, a.kind, a.status, a.reason, a.issuing_service, a.created_at,
                a.updated_at, a.payload, p.key_id, p.sealed
         FROM application_payloads p JOIN applications a USING (application_id)
         WHERE p.subject_index = $1 ORDER BY a.created_at, a.application_id",
    )
    .bind(&index)
    .fetch_all(&mut *conn)
    .await?;
    let mut applications = Vec::new();
    for row in &rows {
        let id: Uuid = row.get("application_id");
        let history: Vec<Value> = sqlx::query(
            "SELECT at, status, step, detail FROM application_history
             WHERE application_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|h| {
            json!({
                "at": h.get::<chrono::DateTime<chrono::Utc>, _>("at"),
                "status": h.get::<String, _>("status"),
                "step": h.get::<String, _>("step"),
                "detail": h.get::<Option<String>, _>("detail"),
            })
        })
        .collect();
        let confirmation = sqlx::query(
            "SELECT generation, wrong_attempts, sent_at, expires_at FROM phone_confirmations
             WHERE application_id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|c| {
            json!({
                "codes_sent": c.get::<i32, _>("generation"),
                "wrong_attempts": c.get::<i32, _>("wrong_attempts"),
                "sent_at": c.get::<chrono::DateTime<chrono::Utc>, _>("sent_at"),
                "expires_at": c.get::<chrono::DateTime<chrono::Utc>, _>("expires_at"),
                "code": "held only as an argon2id hash",
            })
        });
        applications.push(json!({
            "application_id": id,
            "kind": row.get::<Option<String>, _>("kind"),
            "status": row.get::<String, _>("status"),
            "reason": row.get::<Option<Value>, _>("reason"),
            "issuing_service": row.get::<Option<String>, _>("issuing_service"),
            "created_at": row.get::<chrono::DateTime<chrono::Utc>, _>("created_at"),
            "updated_at": row.get::<chrono::DateTime<chrono::Utc>, _>("updated_at"),
            "application": crate::applications::payload_of(row, vault, id)?,
            "phone_confirmation": confirmation,
            "history": history,
        }));
    }
    let dead_letters: Vec<Value> = sqlx::query(
        "SELECT id, application_id, step, error_kind, error, state, parked_at, body, body_key_id,
                body_erased_at
         FROM dead_letters WHERE subject_index = $1 ORDER BY id",
    )
    .bind(&index)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|d| {
        let body = crate::dead_letters::body_of(d, vault)?.unwrap_or_default();
        Ok(json!({
            "id": d.get::<i64, _>("id"),
            "application_id": d.get::<Option<Uuid>, _>("application_id"),
            "step": d.get::<String, _>("step"),
            "error_kind": d.get::<String, _>("error_kind"),
            "error": d.get::<String, _>("error"),
            "state": d.get::<String, _>("state"),
            "parked_at": d.get::<chrono::DateTime<chrono::Utc>, _>("parked_at"),
            "body": String::from_utf8_lossy(&body),
        }))
    })
    .collect::<sqlx::Result<_>>()?;
    let registry = sqlx::query(
        "SELECT uid, phone, status, password_hash IS NOT NULL AS password_set, password_temporary,
                password_expires_at, issued_at, updated_at, blocked_at
         FROM uid_registry WHERE uid = $1",
    )
    .bind(number.as_str())
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| {
        json!({
            "uid": r.get::<String, _>("uid"),
            "phone": r.get::<String, _>("phone"),
            "status": r.get::<String, _>("status"),
            "password": if r.get::<bool, _>("password_set") { "held only as an argon2id hash" } else { "none" },
            "password_temporary": r.get::<bool, _>("password_temporary"),
            "password_expires_at": r.get::<Option<chrono::DateTime<chrono::Utc>>, _>("password_expires_at"),
            "issued_at": r.get::<chrono::DateTime<chrono::Utc>, _>("issued_at"),
            "updated_at": r.get::<chrono::DateTime<chrono::Utc>, _>("updated_at"),
            "blocked_at": r.get::<Option<chrono::DateTime<chrono::Utc>>, _>("blocked_at"),
        })
    });
    let registry_history: Vec<Value> = sqlx::query(
        "SELECT application_id, change, at, detail FROM uid_registry_history WHERE uid = $1 ORDER BY id",
    )
    .bind(number.as_str())
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|h| {
        json!({
            "application_id": h.get::<Uuid, _>("application_id"),
            "change": h.get::<String, _>("change"),
            "at": h.get::<chrono::DateTime<chrono::Utc>, _>("at"),
            "detail": h.get::<Value, _>("detail"),
        })
    })
    .collect();
    // The export itself enters the audit trail before anything is returned: who, why, whom
    // (masked, and the blind index that names the person to whoever holds the keys), how much.
    drop(conn);
    let mut tx = pool.begin().await?;
    let detail = json!({
        "reason": why,
        "subject_index": hex::encode(&index),
        "applications": applications.len(),
        "dead_letters": dead_letters.len(),
        "registry": registry.is_some(),
    });
    let masked = crate::domain::mask_identification_number(number.as_str());
    crate::audit::record(&mut tx, by, "subject_export", Some(&masked), &detail).await?;
    tx.commit().await?;
    Ok(json!({
        "identification_number": number.as_str(),
        "exported_at": chrono::Utc::now(),
        "applications": applications,
        "dead_letters": dead_letters,
        "registry": registry,
        "registry_history": registry_history,
    }))
}
