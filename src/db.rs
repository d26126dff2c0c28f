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
    /// Migrations failed.
    #[error("applying migrations to {url} failed ({cause})")]
    Migrate {
        /// Redacted URL.
        url: String,
        /// What the migrator said (shown in the message, not chained).
        cause: sqlx::migrate::MigrateError,
    },
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
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(unreachable)
}

/// Applies the embedded migrations (idempotent).
pub async fn migrate(settings: &Settings, pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await.map_err(|cause| DbError::Migrate {
        url: settings.database_url_redacted(),
        cause,
    })
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
