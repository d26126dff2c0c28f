//! `uidflow reconcile`: the applications past their deadline and what each waits for; with
//! `--repair`, one repair round (the current work item of each sent again). Ids only: no
//! personal data.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use crate::terminal::{Column, Table};
use chrono::Utc;
use uidflow::config::{Settings, format_duration};
use uidflow::reconcile::{self, Overdue, ROUND_LIMIT};

/// A line on stdout; a closed pipe is not an error worth a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Lists (or repairs) the overdue applications.
pub async fn run(
    settings: &Settings,
    grace: Option<Duration>,
    repair: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let grace = grace.unwrap_or(settings.reconcile_grace);
    let pool = uidflow::db::connect(settings, 2).await?;
    let result = report(settings, &pool, grace, repair, json).await;
    pool.close().await;
    result
}

async fn report(
    settings: &Settings,
    pool: &sqlx::PgPool,
    grace: Duration,
    repair: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let total = reconcile::count_overdue(pool, grace).await?;
    if repair {
        let sampler = uidflow::api::sampler::QueueSampler::new(settings.clone(), Duration::ZERO);
        let busy = reconcile::busy_steps(&sampler)
            .await
            .map_err(|e| anyhow::anyhow!("{e}; nothing re-sent"))?;
        let round = reconcile::repair(pool, grace, &busy).await?;
        if json {
            let answer = serde_json::json!({
                "grace": format_duration(grace),
                "overdue": total,
                "ran": round.ran,
                "revived": round.revived,
                "unrepairable": round.unrepairable,
            });
            say!("{}", crate::terminal::json(&answer));
        } else if !round.ran {
            say!("another process is repairing right now; nothing done (try again)");
        } else {
            print_table(&round.revived);
            say!(
                "{} of {total} overdue application(s) revived (their work item sent again); {} could not be repaired",
                round.revived.len(),
                round.unrepairable.len()
            );
            if !round.unrepairable.is_empty() {
                print_table(&round.unrepairable);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut conn = pool.acquire().await?;
    let listed = reconcile::overdue(&mut conn, grace, ROUND_LIMIT, false).await?;
    if json {
        let answer = serde_json::json!({
            "grace": format_duration(grace),
            "overdue": total,
            "applications": listed,
        });
        say!("{}", crate::terminal::json(&answer));
    } else if listed.is_empty() {
        say!(
            "no application is past its deadline (grace {})",
            format_duration(grace)
        );
    } else {
        print_table(&listed);
        say!(
            "{total} application(s) past their deadline (grace {}){}; `uidflow reconcile --repair` sends their work items again",
            format_duration(grace),
            if total > listed.len() as i64 {
                format!(", the oldest {} shown", listed.len())
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[Overdue]) {
    let mut table = Table::new(&[
        Column::fixed("application"),
        Column::text("kind"),
        Column::text("status"),
        Column::number("late by"),
        Column::text("waits for"),
    ]);
    let now = Utc::now();
    for row in rows {
        let late = (now - row.expected_at).to_std().unwrap_or_default();
        table.row([
            row.application_id.to_string(),
            row.kind.as_str().to_owned(),
            row.status.as_str().to_owned(),
            format_duration(Duration::from_secs(late.as_secs())),
            match row.paused_by {
                Some(system) => format!(
                    "{} (paused: the {system} breaker is open)",
                    row.waits_for.describe()
                ),
                None => row.waits_for.describe(),
            },
        ]);
    }
    table.print();
}
