//! `uidflow keys rotate`: a new data key, every stored payload and dead-letter body sealed
//! again under it in batches while uidflow runs, then the old keys retired.
//!
//! Which key it rotates to: a key added by `uidflow keys add` (newer than the active one, not
//! yet active) is activated; else, when keys that are neither active nor retired remain (a
//! rotation was interrupted), it finishes that rotation; else it adds a key. So it is safe to
//! interrupt and to run again. Values still in the clear (written before sealing existed) are
//! sealed too. A batch is one transaction and skips rows another transaction holds
//! (`SKIP LOCKED`); the old keys are retired only when two passes, `settle` apart, find
//! nothing left under them, so a process that sealed with the old key before it re-read the
//! key file is caught.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::vault::{Aad, KeyInfo, Vault, VaultError};

/// Default wait between the last passes: longer than a process on this host takes to notice a
/// changed key file (it looks once a second).
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(5);

/// How a rotation runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Rows sealed again per transaction.
    pub batch: i64,
    /// The wait between the last passes (see the module).
    pub settle: Duration,
    /// Retire the old keys at the end (false: leave them to open what a process that has not
    /// received the new file yet still seals; run again later to retire them).
    pub retire: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch: DEFAULT_BATCH,
            settle: DEFAULT_SETTLE,
            retire: true,
        }
    }
}

/// Rows sealed again in one transaction, by default.
pub const DEFAULT_BATCH: i64 = 500;

/// What a rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rotation {
    /// The key everything is sealed under now.
    pub active: String,
    /// Whether this run added it (false: it activated a key added before, or finished a
    /// rotation begun before).
    pub added: bool,
    /// Application payloads sealed again (or sealed for the first time).
    pub applications: u64,
    /// Dead-letter bodies sealed again (or for the first time).
    pub dead_letters: u64,
    /// The keys retired at the end.
    pub retired: Vec<String>,
}

/// How far a rotation is, for its progress line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Left {
    /// Application payloads not under the active key.
    pub applications: i64,
    /// Dead-letter bodies not under the active key.
    pub dead_letters: i64,
}

/// Why a rotation stopped.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The key file.
    #[error(transparent)]
    Keys(#[from] VaultError),
    /// The database.
    #[error("the database: {0}")]
    Database(#[from] sqlx::Error),
}

/// What is left to seal under the active key.
pub async fn left(pool: &PgPool, active: &str) -> sqlx::Result<Left> {
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM application_payloads WHERE key_id <> $1)
              + (SELECT count(*) FROM applications WHERE payload IS NOT NULL) AS applications,
                (SELECT count(*) FROM dead_letters
                 WHERE body_erased_at IS NULL AND body_key_id IS DISTINCT FROM $1) AS dead_letters",
    )
    .bind(active)
    .fetch_one(pool)
    .await?;
    Ok(Left {
        applications: row.get("applications"),
        dead_letters: row.get("dead_letters"),
    })
}

/// Rotates (or finishes a rotation): see the module. `progress` is told what is left after
/// every batch.
pub async fn rotate(
    pool: &PgPool,
    vault: &Vault,
    options: Options,
    mut progress: impl FnMut(&Left),
) -> Result<Rotation, RotationError> {
    let keys = vault.keys();
    let current = keys.iter().find(|k| k.active).map(|k| k.created_at);
    let open = |k: &&KeyInfo| !k.active && k.retired_at.is_none();
    let added_before = keys
        .iter()
        .filter(open)
        .filter(|k| Some(k.created_at) > current)
        .max_by_key(|k| k.created_at);
    let added = match added_before {
        Some(key) => {
            vault.activate_key(&key.id)?;
            false
        }
        None if keys.iter().any(|k| open(&k)) => false,
        None => {
            vault.add_key(true)?;
            true
        }
    };
    let batch = options.batch;
    let active = vault.active_key();
    record(
        pool,
        "data_key_activated",
        &active,
        &serde_json::json!({"added": added}),
    )
    .await?;
    let mut rotation = Rotation {
        active: active.clone(),
        added,
        ..Rotation::default()
    };
    let mut quiet_passes = 0;
    while quiet_passes < 2 {
        let mut sealed_in_pass = 0;
        let remaining = loop {
            let applications = reseal_applications(pool, vault, &active, batch).await?;
            let dead_letters = reseal_dead_letters(pool, vault, &active, batch).await?;
            rotation.applications += applications;
            rotation.dead_letters += dead_letters;
            sealed_in_pass += applications + dead_letters;
            let remaining = left(pool, &active).await?;
            progress(&remaining);
            if applications + dead_letters == 0 {
                break remaining;
            }
        };
        quiet_passes = if sealed_in_pass == 0 && remaining == Left::default() {
            quiet_passes + 1
        } else {
            0
        };
        if quiet_passes < 2 {
            tokio::time::sleep(options.settle).await;
        }
    }
    for key in vault.keys() {
        if options.retire && !key.active && key.retired_at.is_none() {
            vault.retire_key(&key.id)?;
            rotation.retired.push(key.id);
        }
    }
    let detail = serde_json::json!({
        "resealed_applications": rotation.applications,
        "resealed_dead_letters": rotation.dead_letters,
        "retired": rotation.retired,
    });
    record(pool, "data_keys_rotated", &active, &detail).await?;
    Ok(rotation)
}

/// A rotation's step in the audit trail (key ids and counts only).
async fn record(pool: &PgPool, action: &str, key: &str, detail: &Value) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    crate::audit::record(&mut tx, "uidflow keys rotate", action, Some(key), detail).await?;
    tx.commit().await
}

fn decode(error: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(error))
}

/// Seals one batch of application payloads under `active`: those under another key and those
/// still in the clear. Returns how many.
async fn reseal_applications(
    pool: &PgPool,
    vault: &Vault,
    active: &str,
    batch: i64,
) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "SELECT application_id, key_id, sealed FROM application_payloads
         WHERE key_id <> $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(active)
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let (mut ids, mut sealed) = (Vec::new(), Vec::new());
    for row in &rows {
        let id: Uuid = row.get("application_id");
        let key_id: String = row.get("key_id");
        let bytes: Vec<u8> = row.get("sealed");
        let plain = vault
            .open(&key_id, Aad::Application(id), &bytes)
            .map_err(decode)?;
        let again = vault.seal(Aad::Application(id), &plain);
        debug_assert_eq!(again.key_id, active);
        ids.push(id);
        sealed.push(again.bytes);
    }
    let mut done = ids.len() as u64;
    if !ids.is_empty() {
        sqlx::query(
            "UPDATE application_payloads p SET key_id = $3, sealed = n.sealed
             FROM unnest($1::uuid[], $2::bytea[]) AS n (application_id, sealed)
             WHERE p.application_id = n.application_id",
        )
        .bind(&ids)
        .bind(&sealed)
        .bind(active)
        .execute(&mut *tx)
        .await?;
    }
    // Payloads recorded before sealing existed, still in the status row.
    let clear = sqlx::query(
        "SELECT application_id, payload FROM applications
         WHERE payload IS NOT NULL LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let (mut ids, mut sealed, mut subjects) = (Vec::new(), Vec::new(), Vec::new());
    for row in &clear {
        let id: Uuid = row.get("application_id");
        let payload: Value = row.get("payload");
        let bytes = serde_json::to_vec(&payload).map_err(decode)?;
        ids.push(id);
        sealed.push(vault.seal(Aad::Application(id), &bytes).bytes);
        subjects.push(
            payload
                .pointer("/applicant/identification_number")
                .and_then(Value::as_str)
                .and_then(|n| crate::applications::subject_index(vault, n)),
        );
    }
    if !ids.is_empty() {
        sqlx::query(
            "WITH sealed AS (
                 INSERT INTO application_payloads (application_id, key_id, sealed, subject_index)
                 SELECT application_id, $4, sealed, subject_index
                 FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) AS n (application_id, sealed, subject_index)
                 ON CONFLICT (application_id) DO NOTHING)
             UPDATE applications SET payload = NULL WHERE application_id = ANY($1)",
        )
        .bind(&ids)
        .bind(&sealed)
        .bind(&subjects)
        .bind(active)
        .execute(&mut *tx)
        .await?;
        done += ids.len() as u64;
    }
    tx.commit().await?;
    Ok(done)
}

/// Seals one batch of dead-letter bodies under `active`. Returns how many.
async fn reseal_dead_letters(
    pool: &PgPool,
    vault: &Vault,
    active: &str,
    batch: i64,
) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "SELECT id, body, body_key_id, body_erased_at FROM dead_letters
         WHERE body_erased_at IS NULL AND body_key_id IS DISTINCT FROM $1
         LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(active)
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let (mut ids, mut bodies, mut subjects) = (Vec::new(), Vec::new(), Vec::new());
    for row in &rows {
        let plain = crate::dead_letters::body_of(row, vault)?.unwrap_or_default();
        ids.push(row.get::<i64, _>("id"));
        bodies.push(vault.seal(Aad::DeadLetter, &plain).bytes);
        subjects.push(crate::dead_letters::subject_of_body(vault, &plain));
    }
    if !ids.is_empty() {
        sqlx::query(
            "UPDATE dead_letters d SET body = n.body, body_key_id = $4,
                 subject_index = coalesce(d.subject_index, n.subject_index)
             FROM unnest($1::int8[], $2::bytea[], $3::bytea[]) AS n (id, body, subject_index)
             WHERE d.id = n.id",
        )
        .bind(&ids)
        .bind(&bodies)
        .bind(&subjects)
        .bind(active)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(ids.len() as u64)
}
