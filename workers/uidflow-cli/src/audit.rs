//! `uidflow audit`: verify the audit trail's chains and checkpoints, make a checkpoint, export
//! one application's chain as a bundle and verify such a bundle offline, print the public
//! key. The database commands talk to `DATABASE_URL` directly, as `uidflow reconcile` does.
//! Ids and hashes only: no personal data is printed (a bundle holds the history as stored).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use ed25519_dalek::VerifyingKey;
use uidflow::audit::{self, Checkpointed, bundle, key};
use uidflow::config::Settings;

/// A line on stdout; a closed pipe is not an error worth a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A line on stderr.
macro_rules! warn {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// The audit commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every chain and checkpoint and check the signatures; exit 1 naming the first
    /// row that does not match.
    Verify {
        /// Only rows and checkpoints from then on (the row before is taken as given): a time
        /// (`2026-12-01T00:00:00Z`, `2026-12-01`) or how long ago (`24h`).
        #[arg(long, value_parser = parse_since)]
        since: Option<DateTime<Utc>>,
        /// A public key to check the signatures with (64 hex digits, or a file holding them),
        /// instead of the one of AUDIT_KEY_FILE or the local key; repeat it to trust several
        /// (an old key after a rotation).
        #[arg(long = "public-key", value_name = "HEX|FILE")]
        public_keys: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign the heads of the chains that changed since the last checkpoint, now.
    Checkpoint,
    /// Write one application's chain, the latest checkpoint that signed it and the public key
    /// as a JSON bundle, for `uidflow audit verify-bundle` on another machine.
    Export {
        /// The application.
        application_id: uuid::Uuid,
        /// Write to this file (owner-only) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check a bundle offline (no database): its chain, its checkpoint and the signature.
    #[command(name = "verify-bundle")]
    VerifyBundle {
        /// The bundle.
        file: PathBuf,
        /// The public key the signature must be made with (64 hex digits, or a file holding
        /// them); without it the bundle's own key is used, which shows only that the bundle is
        /// intact, not who signed it.
        #[arg(long = "public-key", value_name = "HEX|FILE")]
        public_key: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the public key of the signing key (AUDIT_KEY_FILE, or the local one, made if
    /// missing): give it to whoever verifies.
    #[command(name = "public-key")]
    PublicKey,
}

/// `--since`: RFC 3339, a date (midnight UTC), or a duration ago.
fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    if let Some(ago) = uidflow::config::parse_duration(text)
        && let Ok(ago) = chrono::Duration::from_std(ago)
    {
        return Ok(Utc::now() - ago);
    }
    Err(format!(
        "{text:?} is not a time; write it like 2026-12-01T08:00:00Z, 2026-12-01 or 24h (ago)"
    ))
}

/// Runs one audit command. Usage problems (a key that is missing or malformed) exit 2.
pub async fn run(settings: &Settings, command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            since,
            public_keys,
            json,
        } => {
            let trusted = match trusted_keys(settings, &public_keys) {
                Ok(trusted) => trusted,
                Err(error) => return Ok(usage(&error)),
            };
            let pool = connect(settings).await?;
            let report = audit::verify(&pool, since, &trusted).await;
            pool.close().await;
            print_report(&report?, json)
        }
        AuditCommand::Checkpoint => {
            let key = match uidflow::system::audit_signing_key(settings) {
                Ok(key) => key,
                Err(error) => return Ok(usage(&format!("{error:#}"))),
            };
            let pool = connect(settings).await?;
            let done = audit::checkpoint(&pool, &key).await;
            pool.close().await;
            match done? {
                Checkpointed::Made { id, heads, hash } => {
                    say!("checkpoint {id} signed {heads} chain head(s); its hash: {hash}")
                }
                Checkpointed::NothingNew => {
                    say!("no chain changed since the last checkpoint; none made")
                }
                Checkpointed::Busy | Checkpointed::TooSoon => {
                    say!("another process is making a checkpoint right now; none made")
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export {
            application_id,
            out,
        } => {
            let key = match key::existing_key(settings) {
                Ok(Some(source)) => source.key.verifying_key(),
                Ok(None) => return Ok(usage(NO_KEY)),
                Err(error) => return Ok(usage(&error)),
            };
            let pool = connect(settings).await?;
            let exported = bundle::export(&pool, application_id, &key).await;
            pool.close().await;
            let exported = exported?;
            let text = crate::terminal::json(&serde_json::to_value(&exported)?);
            match out {
                None => say!("{text}"),
                Some(path) => {
                    write_owner_only(&path, &format!("{text}\n"))?;
                    warn!(
                        "bundle of application {application_id} ({} history rows, {}) written to {}",
                        exported.history.len(),
                        match &exported.checkpoint {
                            Some(c) => format!("signed by checkpoint {}", c.id),
                            None => "not signed by any checkpoint yet".to_owned(),
                        },
                        path.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::VerifyBundle {
            file,
            public_key,
            json,
        } => verify_bundle(&file, public_key.as_deref(), json),
        AuditCommand::PublicKey => {
            match uidflow::system::audit_signing_key(settings) {
                Ok(key) => say!("{}", key::public_hex(&key.verifying_key())),
                Err(error) => return Ok(usage(&format!("{error:#}"))),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

const NO_KEY: &str = "no audit key to check signatures with: set AUDIT_KEY_FILE, pass --public-key HEX|FILE, or run where .uidflow/keys/audit-signing.key is";

fn usage(message: &str) -> ExitCode {
    warn!("error: {message}");
    ExitCode::from(2)
}

/// The keys `--public-key` names, else the one of AUDIT_KEY_FILE or the local key; never the
/// keys stored in the database.
fn trusted_keys(settings: &Settings, given: &[String]) -> Result<Vec<VerifyingKey>, String> {
    if !given.is_empty() {
        return given
            .iter()
            .map(|text| key::parse_public(text).map_err(|e| format!("--public-key: {e}")))
            .collect();
    }
    match key::existing_key(settings)? {
        Some(source) => Ok(vec![source.key.verifying_key()]),
        None => Err(NO_KEY.to_owned()),
    }
}

async fn connect(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let pool = uidflow::db::connect(settings, 2).await?;
    let pending = uidflow::db::pending_migrations(&pool).await;
    if !matches!(pending, Ok(0)) {
        pool.close().await;
        anyhow::bail!(
            "{} is not migrated to this version; run `uidflow migrate` as the database owner",
            settings.database_url_redacted()
        );
    }
    Ok(pool)
}

fn print_report(report: &audit::Report, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        say!("{}", crate::terminal::json(&serde_json::to_value(report)?));
    } else if let Some(first) = report.first() {
        let more = report.problem_count - 1;
        say!(
            "audit trail INVALID: {first}{}",
            if more > 0 {
                format!(" (and {more} more problem(s): --json lists them)")
            } else {
                String::new()
            }
        );
    } else {
        let since = report
            .since
            .map(|at| format!(" since {}", at.format("%Y-%m-%dT%H:%M:%SZ")))
            .unwrap_or_default();
        let latest = match &report.latest_checkpoint {
            Some(c) => format!(
                "; latest checkpoint {} at {} (hash {}); {} chain(s) changed since, their newest rows only hash-chained",
                c.id,
                c.at.format("%Y-%m-%dT%H:%M:%SZ"),
                c.hash,
                report.unsealed_chains
            ),
            None => "; no checkpoint yet: nothing is signed".to_owned(),
        };
        say!(
            "audit trail valid{since}: {} chain(s) with {} history row(s), {} audit log row(s), {} checkpoint(s) verified{latest}",
            report.chains,
            report.rows,
            report.log_rows,
            report.checkpoints,
        );
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn verify_bundle(file: &Path, public_key: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let expected = match public_key.map(key::parse_public).transpose() {
        Ok(expected) => expected,
        Err(error) => return Ok(usage(&format!("--public-key: {error}"))),
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {} ({e})", file.display()))?;
    let result = serde_json::from_str::<bundle::Bundle>(&text)
        .map_err(|e| bundle::BundleError::Format(e.to_string()))
        .and_then(|read| bundle::verify_bundle(&read, expected.as_ref()));
    if json {
        let answer = match &result {
            Ok(report) => serde_json::json!({"ok": true, "report": report}),
            Err(error) => serde_json::json!({"ok": false, "problem": error.to_string()}),
        };
        say!("{}", crate::terminal::json(&answer));
    } else {
        match &result {
            Ok(report) => {
                say!(
                    "bundle valid: application {}, {} history row(s); rows 1 to {} signed by checkpoint {} at {} with key {}{}",
                    report.application_id,
                    report.rows,
                    report.signed_up_to,
                    report.checkpoint,
                    report.checkpoint_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    report.public_key,
                    if report.rows as i64 > report.signed_up_to {
                        format!(
                            "; rows {} to {} only hash-chained",
                            report.signed_up_to + 1,
                            report.rows
                        )
                    } else {
                        String::new()
                    }
                );
                if !report.pinned {
                    say!(
                        "the bundle's own key was used: it shows the bundle is intact, not who signed it; pass --public-key with the key `uidflow audit public-key` printed at the source"
                    );
                }
            }
            Err(error) => say!("bundle INVALID: {error}"),
        }
    }
    Ok(if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn write_owner_only(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot write {} ({e})", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_time_a_date_or_how_long_ago() {
        assert_eq!(
            parse_since("2026-12-01T08:00:00+03:00").unwrap(),
            "2026-12-01T05:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            parse_since("2026-12-01").unwrap(),
            "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let ago = Utc::now() - parse_since("24h").unwrap();
        assert!((ago.num_seconds() - 86_400).abs() < 60, "{ago}");
        assert!(parse_since("yesterday").unwrap_err().contains("24h (ago)"));
    }
}
