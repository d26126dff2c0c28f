//! PostgreSQL: the pool, the embedded migrations, and creating the database when missing.
//!
//! Queries live next to what they serve (`applications`, `outbox`, `dead_letters`); each takes
//! an `&mut PgConnection` so it fits inside the caller's transaction.

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::config::Settings;
use crate::retry::{Policy, with_backoff};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// A database problem at start-up, phrased for the person starting the process.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The server did not answer.
    #[error(
        "cannot reach PostgreSQL at {url} ({cause}); start it (pg_ctlcluster 15 main start) or set DATABASE_URL"
    )]
    Unreachable {
        /// Redacted URL.
        url: String,
        /// What the driver said (shown in the message, not chained, to keep it one line).
        cause: sqlx::Error,
    },
    /// Migrations are pending and this role may not apply them (it is not the owner).
    #[error(
        "{pending} migration(s) pending on {url} and role {role} may not apply them; run `uidflow migrate` as the database owner"
    )]
    Pending {
        /// Redacted URL.
        url: String,
        /// Migrations not applied yet.
        pending: usize,
        /// The role we logged in as.
        role: String,
    },
    /// Granting the runtime role its rights failed.
    #[error("granting {RUNTIME_ROLE} its data rights on {url} failed ({cause})")]
    Grant {
        /// Redacted URL.
        url: String,
        /// What the server said (shown in the message, not chained).
        cause: sqlx::Error,
    },
    /// The pool would not fit in the server's connections.
    #[error(
        "{wanted} connections (DATABASE_MAX_CONNECTIONS={pool}, plus {extra} of the vacuum's own) do not fit on {url}: the server allows {limit} for roles like this one (max_connections {max} less {reserved} reserved) and {in_use} are in use; lower DATABASE_MAX_CONNECTIONS or raise max_connections (or put PgBouncer in front, see docs/OPERATIONS.md)"
    )]
    TooManyConnections {
        /// Redacted URL.
        url: String,
        /// The pool's size.
        pool: u32,
        /// Connections outside the pool (the vacuum's).
        extra: u32,
        /// Both.
        wanted: u32,
        /// The server's `max_connections`.
        max: u32,
        /// Slots reserved for superusers (not counted for them).
        reserved: u32,
        /// What a role like ours may open in all.
        limit: u32,
        /// Client connections open now, ours excluded.
        in_use: u32,
    },
    /// Migrations failed.
    #[error("applying migrations to {url} failed ({cause})")]
    Migrate {
        /// Redacted URL.
        url: String,
        /// What the migrator said (shown in the message, not chained).
        cause: sqlx::migrate::MigrateError,
    },
}

/// How long a delivery waits for a pool connection before its handler fails (the delivery then
/// returns to its queue): long, because a small pool makes waiting normal.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(60);

/// Refuses, with one line, a pool of `pool` connections (and `extra` opened beside it) that
/// cannot fit in the server's `max_connections` beside the client connections open now.
/// Superusers may use the reserved slots; other roles may not.
pub async fn check_fits(
    settings: &Settings,
    db: &PgPool,
    pool: u32,
    extra: u32,
) -> Result<(), DbError> {
    let url = settings.database_url_redacted();
    let row: (i32, i32, i64, bool) = sqlx::query_as(
        "SELECT current_setting('max_connections')::int,
                current_setting('superuser_reserved_connections')::int,
                (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()),
                (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
    )
    .fetch_one(db)
    .await
    .map_err(|cause| DbError::Unreachable {
        url: url.clone(),
        cause,
    })?;
    let (max, reserved, in_use, superuser) = row;
    let max = u32::try_from(max).unwrap_or(0);
    let reserved = if superuser {
        0
    } else {
        u32::try_from(reserved).unwrap_or(0)
    };
    let in_use = u32::try_from(in_use).unwrap_or(u32::MAX);
    let limit = max.saturating_sub(reserved);
    let wanted = pool + extra;
    if in_use.saturating_add(wanted) > limit {
        return Err(DbError::TooManyConnections {
            url,
            pool,
            extra,
            wanted,
            max,
            reserved,
            limit,
            in_use,
        });
    }
    Ok(())
}

/// Connects to the database of `DATABASE_URL`, creating it first if it does not exist.
pub async fn connect(settings: &Settings, max_connections: u32) -> Result<PgPool, DbError> {
    let raw = settings.database_url.expose_secret();
    let url = settings.database_url_redacted();
    let unreachable = |cause| DbError::Unreachable {
        url: url.clone(),
        cause,
    };
    let exists = with_backoff(Policy::STARTUP, || Postgres::database_exists(raw))
        .await
        .map_err(unreachable)?;
    if !exists {
        // Two processes may race to create it; the loser's "already exists" is fine.
        if let Err(error) = Postgres::create_database(raw).await
            && !Postgres::database_exists(raw).await.unwrap_or(false)
        {
            return Err(unreachable(error));
        }
        tracing::info!(database = %url, "created the database");
    }
    let options: PgConnectOptions = raw.parse().map_err(unreachable)?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        // A delivery waits for a connection rather than failing: the pool is small on purpose.
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(unreachable)
}

/// The group role (NOLOGIN) that holds the data rights `uidflow run` needs and nothing more:
/// SELECT, INSERT, UPDATE, DELETE on every table, USAGE and SELECT on every sequence, read-only
/// on `_sqlx_migrations`, append-only on the audit trail (`application_history`, `audit_log`,
/// `audit_checkpoints`, `audit_checkpoint_heads`: no UPDATE, no DELETE; the chains' heads may
/// be updated, not deleted); no CREATE on the schema, owns nothing. [`migrate`] creates it if
/// missing and grants after every migration; the operator creates the login role in it
/// (`CREATE ROLE uidflow_run LOGIN PASSWORD '…' IN ROLE uidflow_runtime`).
pub const RUNTIME_ROLE: &str = "uidflow_runtime";

/// Applies the embedded migrations (idempotent), then (re)grants [`RUNTIME_ROLE`] its data
/// rights on every table and sequence, so a table a migration adds is covered. Run as the
/// owner (`uidflow migrate`).
pub async fn migrate(settings: &Settings, pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await.map_err(|cause| DbError::Migrate {
        url: settings.database_url_redacted(),
        cause,
    })?;
    grant_runtime(pool).await.map_err(|cause| DbError::Grant {
        url: settings.database_url_redacted(),
        cause,
    })
}

/// Creates [`RUNTIME_ROLE`] if missing and grants it the data rights on the current schema.
pub async fn grant_runtime(pool: &PgPool) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    // Roles are cluster-wide: two databases migrated at once may both try to create it; the
    // loser's duplicate is fine (caught inside the block, so the transaction goes on).
    sqlx::raw_sql(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'uidflow_runtime') THEN
             CREATE ROLE uidflow_runtime NOLOGIN;
           END IF;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$;
         DO $$ BEGIN
           EXECUTE format('GRANT USAGE ON SCHEMA %I TO uidflow_runtime', current_schema());
           EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO uidflow_runtime', current_schema());
           EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO uidflow_runtime', current_schema());
           REVOKE INSERT, UPDATE, DELETE ON _sqlx_migrations FROM uidflow_runtime;
           REVOKE UPDATE, DELETE ON application_history, audit_log, audit_checkpoints,
             audit_checkpoint_heads FROM uidflow_runtime;
           REVOKE DELETE ON audit_heads, audit_log_head FROM uidflow_runtime;
         END $$;",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Takes the transaction-scoped advisory lock `key` if it is free: false when another
/// transaction holds it (a periodic job that one process at a time runs skips its round).
pub async fn try_advisory_xact_lock(conn: &mut sqlx::PgConnection, key: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await
}

/// The embedded migrations not yet applied to the database (all of them when it has none).
pub async fn pending_migrations(pool: &PgPool) -> sqlx::Result<usize> {
    let applied: Vec<i64> =
        match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
        {
            Ok(applied) => applied,
            // 42P01 undefined_table: never migrated.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
            Err(e) => return Err(e),
        };
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
        .count())
}

/// What `uidflow run` does: nothing when the database is up to date (so a role without DDL
/// rights can run), else [`migrate`] if this role may create in the schema, else
/// [`DbError::Pending`].
pub async fn migrate_if_pending(settings: &Settings, pool: &PgPool) -> Result<(), DbError> {
    let url = settings.database_url_redacted();
    let unreachable = |cause| DbError::Unreachable {
        url: url.clone(),
        cause,
    };
    let pending = pending_migrations(pool).await.map_err(unreachable)?;
    if pending == 0 {
        return Ok(());
    }
    let (role, may_create): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, has_schema_privilege(current_schema(), 'CREATE')",
    )
    .fetch_one(pool)
    .await
    .map_err(unreachable)?;
    if !may_create {
        return Err(DbError::Pending { url, pending, role });
    }
    migrate(settings, pool).await
}

/// PostgreSQL text and jsonb cannot hold a NUL character. Text that came from outside (a
/// message's body, headers or id) goes through this before it is stored: each NUL becomes
/// U+FFFD. The raw bytes are kept elsewhere (`bytea`) where they matter.
pub fn pg_safe_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// [`pg_safe_text`] for every string and key of a JSON value.
pub fn pg_safe_json(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(text) => Value::String(pg_safe_text(text).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(pg_safe_json).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (pg_safe_text(k).into_owned(), pg_safe_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_replaced_everywhere_in_json() {
        let value = serde_json::json!({"a\u{0}": ["x\u{0}y", {"b": "\u{0}"}], "n": 1});
        let safe = pg_safe_json(&value);
        assert!(!safe.to_string().contains("\\u0000"), "{safe}");
        assert_eq!(safe["a\u{FFFD}"][0], "x\u{FFFD}y");
        assert_eq!(pg_safe_text("plain"), "plain");
    }
}
