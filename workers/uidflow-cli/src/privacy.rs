//! The personal-data commands (docs/PRIVACY.md): `uidflow keys init | list | rotate`,
//! `uidflow retention --dry-run | --apply` and `uidflow subject export`. They talk to the
//! database directly (DATABASE_URL) with the data keys of DATA_KEYS_FILE (or the local ones).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use sqlx::Row;
use uidflow::config::{Settings, format_duration};
use uidflow::domain::IdentificationNumber;
use uidflow::vault::Vault;

use crate::terminal::{Column, Table};

/// A line on stdout; a closed pipe is not an error worth a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `uidflow keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Makes a new data key file (owner-only) for DATA_KEYS_FILE; refuses to overwrite one.
    Init {
        /// Where to write it.
        file: PathBuf,
    },
    /// The data keys (never their secrets) and how many stored values each seals.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Adds a data key that only opens (not yet active): distribute the file to every host,
    /// then `rotate` activates it. Not needed when every process reads one file on one host.
    Add,
    /// Activates a key `add` made (or adds one), seals every stored payload and dead-letter
    /// body again under it in batches (uidflow may keep running), then retires the old keys.
    /// Safe to interrupt: run it again to finish.
    Rotate {
        /// Rows per transaction.
        #[arg(long, default_value_t = uidflow::rotation::DEFAULT_BATCH,
              value_parser = clap::value_parser!(i64).range(1..=10_000))]
        batch: i64,
        /// The wait between the last two passes: longer than every process takes to see the
        /// new file (a second on one host; the platform's secret sync time across hosts).
        #[arg(long, value_parser = crate::parse_wait, default_value = "5s")]
        settle: std::time::Duration,
        /// Keep the old keys (hosts still to receive the new file may seal with them); run
        /// `rotate` again once they have it, to retire them.
        #[arg(long)]
        no_retire: bool,
        /// Print JSON (the summary) instead of progress lines.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `keys` command.
pub async fn keys(settings: &Settings, command: KeysCommand) -> anyhow::Result<ExitCode> {
    if let KeysCommand::Init { file } = &command {
        if file.exists() {
            anyhow::bail!(
                "{} exists; a key file is never overwritten (it may be the only copy of the keys)",
                file.display()
            );
        }
        let (vault, _) = Vault::create_or_open(file)?;
        say!(
            "made {} (owner-only) with data key {}; set DATA_KEYS_FILE={0} and keep a copy apart from the database's backups",
            file.display(),
            vault.active_key()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let vault = uidflow::system::data_keys(settings)?;
    let pool = uidflow::db::connect(settings, 2).await?;
    let result = match command {
        KeysCommand::Init { .. } => unreachable!("handled above"),
        KeysCommand::List { json } => list(&pool, &vault, json).await,
        KeysCommand::Add => {
            let id = vault.add_key(false)?;
            say!(
                "added data key {id} (opens only); distribute {} to every host, then run `uidflow keys rotate`",
                vault
                    .path()
                    .map_or("the key file".into(), |p| p.display().to_string())
            );
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Rotate {
            batch,
            settle,
            no_retire,
            json,
        } => {
            let options = uidflow::rotation::Options {
                batch,
                settle,
                retire: !no_retire,
            };
            rotate(&pool, &vault, options, json).await
        }
    };
    pool.close().await;
    result
}

async fn list(pool: &sqlx::PgPool, vault: &Vault, json: bool) -> anyhow::Result<ExitCode> {
    let counts: Vec<(Option<String>, i64)> = sqlx::query(
        "SELECT key_id, count(*) FROM (
             SELECT key_id FROM application_payloads
             UNION ALL SELECT body_key_id FROM dead_letters WHERE body_erased_at IS NULL
             UNION ALL SELECT NULL FROM applications WHERE payload IS NOT NULL) v
         GROUP BY key_id",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect();
    let sealed_by = |id: Option<&str>| {
        counts
            .iter()
            .find(|(k, _)| k.as_deref() == id)
            .map_or(0, |(_, n)| *n)
    };
    let keys = vault.keys();
    if json {
        let answer = serde_json::json!({
            "file": vault.path().map(|p| p.display().to_string()),
            "keys": keys.iter().map(|k| serde_json::json!({
                "id": k.id, "active": k.active, "created_at": k.created_at,
                "retired_at": k.retired_at, "values": sealed_by(Some(&k.id)),
            })).collect::<Vec<_>>(),
            "in_the_clear": sealed_by(None),
        });
        say!("{}", crate::terminal::json(&answer));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        Column::fixed("key"),
        Column::text("state"),
        Column::text("created"),
        Column::number("values"),
    ]);
    for key in &keys {
        let state = match (key.active, key.retired_at) {
            (true, _) => "active".to_owned(),
            (false, None) => "opens only".to_owned(),
            (false, Some(at)) => format!("retired {}", at.format("%Y-%m-%d")),
        };
        table.row(vec![
            key.id.clone(),
            state,
            key.created_at.format("%Y-%m-%d %H:%M").to_string(),
            sealed_by(Some(&key.id)).to_string(),
        ]);
    }
    table.print();
    let clear = sealed_by(None);
    if clear > 0 {
        say!(
            "{clear} values are still in the clear (stored before sealing): `uidflow keys rotate` seals them"
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn rotate(
    pool: &sqlx::PgPool,
    vault: &Vault,
    options: uidflow::rotation::Options,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let before = vault.active_key();
    let mut last = None;
    let rotation = uidflow::rotation::rotate(pool, vault, options, |left| {
        if !json && last != Some(*left) {
            let _ = writeln!(
                std::io::stderr(),
                "left to seal under {}: {} payloads, {} dead-letter bodies",
                vault.active_key(),
                left.applications,
                left.dead_letters
            );
        }
        last = Some(*left);
    })
    .await?;
    if json {
        say!(
            "{}",
            crate::terminal::json(&serde_json::to_value(&rotation)?)
        );
    } else {
        say!(
            "{} {} (was {before}); sealed again: {} payloads, {} dead-letter bodies; retired: {}",
            if rotation.added {
                "added and activated key"
            } else {
                "rotated to key"
            },
            rotation.active,
            rotation.applications,
            rotation.dead_letters,
            if rotation.retired.is_empty() {
                "none (run again to retire the old keys)".to_owned()
            } else {
                rotation.retired.join(", ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `uidflow retention`: what is due, or erase it.
pub async fn retention(settings: &Settings, apply: bool, json: bool) -> anyhow::Result<ExitCode> {
    let pool = uidflow::db::connect(settings, 2).await?;
    let counts = if apply {
        uidflow::retention::apply(&pool, settings.retention).await
    } else {
        uidflow::retention::due(&pool, settings.retention).await
    };
    pool.close().await;
    let counts = counts?;
    if json {
        let answer = serde_json::json!({
            "retention": format_duration(settings.retention),
            "applied": apply,
            "applications": counts.applications,
            "dead_letters": counts.dead_letters,
        });
        say!("{}", crate::terminal::json(&answer));
    } else {
        say!(
            "{} {} ended applications' personal data and {} settled dead letters' bodies (RETENTION {})",
            if apply { "erased" } else { "due: would erase" },
            counts.applications,
            counts.dead_letters,
            format_duration(settings.retention)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `uidflow subject export`: everything held about one person, as JSON on stdout.
pub async fn subject_export(
    settings: &Settings,
    number: &str,
    reason: &str,
    by: &str,
) -> anyhow::Result<ExitCode> {
    let number = IdentificationNumber::parse(number)
        .map_err(|e| anyhow::anyhow!("not an identification number: {e}"))?;
    if reason.trim().is_empty() {
        anyhow::bail!("--reason must say why (it is recorded in the audit trail)");
    }
    let vault = uidflow::system::data_keys(settings)?;
    let pool = uidflow::db::connect(settings, 2).await?;
    let result = uidflow::subject::export(&pool, &vault, &number, by, reason).await;
    pool.close().await;
    say!("{}", crate::terminal::json(&result?));
    Ok(ExitCode::SUCCESS)
}
