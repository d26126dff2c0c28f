//! Reclaiming the dead rows of the tables uidflow churns, when nothing else does.
//!
//! Every application leaves dead rows behind: eight outbox rows deleted after their publish,
//! and one old version of its `applications` row per status change. PostgreSQL's autovacuum
//! reclaims them (the migration `outbox_autovacuum` tunes it for the outbox, a queue table). But
//! a server may run with `autovacuum = off` — this repository's CI machines do — and then
//! nothing reclaims them: measured, the outbox reached 6 million dead rows in 54 minutes and
//! every relay round and every status change got slower.
//!
//! So each process that relays the outbox also watches [`TABLES`] and, only while the server's
//! autovacuum is off for a table, runs `VACUUM` on it when its dead rows pass the same kind of
//! threshold autovacuum would use. `VACUUM (SKIP_LOCKED)` lets two processes, or a manual
//! vacuum, never wait for each other. While autovacuum is on, this does nothing.
//!
//! PostgreSQL 15 lets only a table's owner (or the database's owner, or a superuser) vacuum
//! it; for anyone else `VACUUM` just warns and skips. A process running as the runtime role
//! (`db::RUNTIME_ROLE`) therefore checks once, says so in one line, and stops: with that
//! role, the server's autovacuum must be on (as it must in production anyway).

use std::time::Duration;

use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// A table and when it needs a vacuum: `dead rows >= base + scale × live rows`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Table {
    /// The table's name.
    pub name: &'static str,
    /// Dead rows that always justify a pass.
    pub base: i64,
    /// The share of live rows added to `base`.
    pub scale: f64,
}

impl Table {
    /// True when `dead` dead rows next to `live` live ones call for a vacuum.
    pub fn needs_vacuum(&self, live: i64, dead: i64) -> bool {
        dead as f64 >= self.base as f64 + self.scale * live as f64
    }
}

/// The tables uidflow churns. The outbox is a queue (its live rows are few; every dead one is
/// in the way of the relays), so a fixed number of dead rows is enough; `applications` is
/// vacuumed like autovacuum's default would (a fifth of it dead).
pub const TABLES: [Table; 2] = [
    Table {
        name: "outbox",
        base: 10_000,
        scale: 0.0,
    },
    Table {
        name: "applications",
        base: 10_000,
        scale: 0.2,
    },
];

/// How often the tables' statistics are read.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// The tables of [`TABLES`] the current role may not vacuum (it owns neither them nor the
/// database and is no superuser).
pub async fn not_permitted(pool: &PgPool) -> sqlx::Result<Vec<&'static str>> {
    let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
    let refused: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c
         WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY ($1)
           AND NOT (pg_has_role(c.relowner, 'USAGE')
                    OR pg_has_role((SELECT datdba FROM pg_database
                                    WHERE datname = current_database()), 'USAGE')
                    OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user))",
    )
    .bind(&names)
    .fetch_all(pool)
    .await?;
    Ok(TABLES
        .iter()
        .map(|t| t.name)
        .filter(|name| refused.iter().any(|r| r == name))
        .collect())
}

/// The tables of [`TABLES`] that need a vacuum now, because autovacuum is off for them and
/// their dead rows passed the threshold.
pub async fn due(pool: &PgPool) -> sqlx::Result<Vec<Table>> {
    let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
    let rows: Vec<(String, i64, i64, bool)> = sqlx::query_as(
        "SELECT s.relname::text, s.n_live_tup, s.n_dead_tup,
                current_setting('autovacuum')::bool
                  AND NOT coalesce('autovacuum_enabled=false' = ANY (c.reloptions), false)
         FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
         WHERE s.schemaname = current_schema() AND s.relname = ANY ($1)",
    )
    .bind(&names)
    .fetch_all(pool)
    .await?;
    Ok(TABLES
        .iter()
        .filter(|table| {
            rows.iter().any(|(name, live, dead, autovacuum)| {
                name == table.name && !autovacuum && table.needs_vacuum(*live, *dead)
            })
        })
        .copied()
        .collect())
}

/// Vacuums the tables that are [`due`]; returns their names.
pub async fn reclaim_once(pool: &PgPool) -> sqlx::Result<Vec<&'static str>> {
    let tables = due(pool).await?;
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    // A connection of its own: a pass over `applications` takes seconds, which should neither
    // hold one of the pool's connections nor be logged as a slow statement (it is logged
    // below, with its table).
    let options = (*pool.connect_options())
        .clone()
        .disable_statement_logging();
    let mut conn = PgConnection::connect_with(&options).await?;
    let mut done = Vec::new();
    for table in tables {
        let started = std::time::Instant::now();
        // VACUUM cannot run in a transaction block: the simple query protocol, not a prepared
        // statement. The name comes from `TABLES`, never from input.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "VACUUM (SKIP_LOCKED) {}",
            table.name
        )))
        .execute(&mut conn)
        .await?;
        tracing::info!(
            table = table.name,
            took_ms = started.elapsed().as_millis() as u64,
            "vacuumed (the server's autovacuum is off)"
        );
        done.push(table.name);
    }
    let _ = conn.close().await;
    Ok(done)
}

/// Runs [`reclaim_once`] every [`CHECK_EVERY`] until `token` is cancelled; stops at once,
/// with one line, when the role may not vacuum the tables (see the module's doc).
pub async fn run(pool: PgPool, token: CancellationToken) {
    loop {
        match not_permitted(&pool).await {
            Ok(refused) if refused.is_empty() => break,
            Ok(refused) => {
                let autovacuum: bool =
                    sqlx::query_scalar("SELECT current_setting('autovacuum')::bool")
                        .fetch_one(&pool)
                        .await
                        .unwrap_or(false);
                if autovacuum {
                    tracing::info!(tables = ?refused, "this role may not VACUUM the tables (only their owner may); the server's autovacuum does it");
                } else {
                    tracing::warn!(tables = ?refused, "this role may not VACUUM the tables (only their owner may) and the server's autovacuum is off: dead rows will pile up; turn autovacuum on (production must run with it)");
                }
                return;
            }
            Err(error) => {
                tracing::debug!(error = %error, "cannot check vacuum rights now; will try again")
            }
        }
        if !crate::retry::pause(&token, Some(CHECK_EVERY)).await {
            return;
        }
    }
    loop {
        if let Err(error) = reclaim_once(&pool).await {
            tracing::debug!(error = %error, "cannot vacuum now; will try again");
        }
        if !crate::retry::pause(&token, Some(CHECK_EVERY)).await {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_needs_a_fixed_number_of_dead_rows_applications_a_share() {
        let [outbox, applications] = TABLES;
        assert!(!outbox.needs_vacuum(0, 9_999));
        assert!(outbox.needs_vacuum(1_000_000, 10_000));
        assert!(!applications.needs_vacuum(1_000_000, 200_000));
        assert!(applications.needs_vacuum(1_000_000, 210_000));
        assert!(applications.needs_vacuum(0, 10_000));
    }
}
