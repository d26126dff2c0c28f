//! The operator's overview: what the pipeline does now and did in the last hour, computed from
//! PostgreSQL (`application_history`, `dead_letters`, `outbox`) and the API's queue sampler.
//!
//! Each section is one function, and a section whose source is missing says "not available"
//! instead of failing the page:
//! - [`overdue`]: applications past their deadline, from the reconciler (`uidflow::reconcile`,
//!   not in this build yet: the section is shown as not available until it is wired there);
//! - [`breakers`]: the health of the MVD and the SMS gateway as uidflow sees them, from the
//!   circuit breakers' `breakers` table when it exists.

use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Row};

use crate::api::sampler::QueueSampler;

/// One section whose source may be absent.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Section<T> {
    /// The data.
    Available {
        /// It.
        value: T,
    },
    /// Why there is none.
    NotAvailable {
        /// One sentence.
        why: String,
    },
}

/// One step's activity.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepActivity {
    /// The step (`intake`, `verify-identity`, …).
    pub step: String,
    /// Status changes it made in the last 5 minutes, per second.
    pub rate_per_s: f64,
    /// The same, written with two decimals.
    pub rate: String,
    /// Status changes it made in the last hour.
    pub changes_hour: i64,
    /// Failed attempts that were retried, in the last hour.
    pub retries_hour: i64,
    /// Applications it failed, in the last hour.
    pub failures_hour: i64,
    /// Dead letters it parked, in the last hour.
    pub dead_letters_hour: i64,
    /// Status changes per 5 minutes over the hour, oldest first (12 buckets), as a bar line.
    pub spark: String,
}

/// One queue now.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueueRow {
    /// Name.
    pub name: String,
    /// Messages ready.
    pub messages: u32,
    /// Consumers.
    pub consumers: u32,
    /// A work queue nobody consumes (retry and dead-letter queues have no consumers).
    pub unserved: bool,
}

/// The intake's admission gate as the outbox shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Intake {
    /// Rows waiting in the outbox (counted up to the pause mark).
    pub outbox_rows: i64,
    /// True when the outbox is at or above the mark where the intake pauses.
    pub paused: bool,
    /// The mark.
    pub pause_at: i64,
}

/// Everything on the overview.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// When it was gathered.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Per step.
    pub steps: Vec<StepActivity>,
    /// Queue depths and consumers, or why the broker could not be asked.
    pub queues: Section<Vec<QueueRow>>,
    /// Dead letters waiting for an operator.
    pub dead_letters_parked: i64,
    /// Applications by status that have not ended.
    pub in_flight: i64,
    /// The admission gate.
    pub intake: Intake,
    /// Applications past their deadline.
    pub overdue: Section<i64>,
    /// The external services' breakers.
    pub breakers: Section<Vec<Breaker>>,
}

/// One external service's circuit breaker.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Breaker {
    /// The service (`mvd`, `sms`).
    pub name: String,
    /// `closed`, `open`, `half_open`, …
    pub state: String,
    /// Anything else the row says, as `key: value` pairs.
    pub details: Vec<(String, String)>,
}

/// Gathers the overview.
pub async fn gather(
    pool: &PgPool,
    sampler: &QueueSampler,
    grace: std::time::Duration,
) -> sqlx::Result<Overview> {
    let queues = match sampler.sample().await {
        Ok(queues) => Section::Available {
            value: queues
                .iter()
                .map(|q| QueueRow {
                    name: q.name.clone(),
                    messages: q.messages,
                    consumers: q.consumers,
                    unserved: q.consumers == 0
                        && !q.name.starts_with("uid.retry.")
                        && !q.name.starts_with("uid.timer")
                        && q.name != crate::topology::DEAD_LETTER_QUEUE,
                })
                .collect(),
        },
        Err(why) => Section::NotAvailable {
            why: format!("the broker could not be asked ({why})"),
        },
    };
    let counts = sqlx::query(
        "SELECT (SELECT count(*) FROM dead_letters WHERE state = 'parked') AS parked,
                (SELECT count(*) FROM applications
                   WHERE status NOT IN ('completed', 'rejected', 'failed')) AS in_flight",
    )
    .fetch_one(pool)
    .await?;
    Ok(Overview {
        at: chrono::Utc::now(),
        steps: steps(pool).await?,
        queues,
        dead_letters_parked: counts.get("parked"),
        in_flight: counts.get("in_flight"),
        intake: intake(pool).await?,
        overdue: overdue(pool, grace).await,
        breakers: breakers(pool).await,
    })
}

/// Per-step activity over the last hour, from the history and the dead letters.
pub async fn steps(pool: &PgPool) -> sqlx::Result<Vec<StepActivity>> {
    let rows = sqlx::query(
        "WITH h AS (
             SELECT step, at, status,
                    (detail LIKE 'attempt % failed%') AS retry
             FROM application_history WHERE at >= now() - interval '1 hour'),
         d AS (
             SELECT step, count(*) AS n FROM dead_letters
             WHERE parked_at >= now() - interval '1 hour' GROUP BY step),
         per_step AS (
             SELECT step,
                    count(*) FILTER (WHERE NOT retry AND at >= now() - interval '5 minutes') AS recent,
                    count(*) FILTER (WHERE NOT retry) AS changes,
                    count(*) FILTER (WHERE retry) AS retries,
                    count(*) FILTER (WHERE status = 'failed' AND NOT retry) AS failures,
                    array_agg(floor(extract(epoch FROM (at - (now() - interval '1 hour'))) / 300)::int)
                        FILTER (WHERE NOT retry) AS buckets
             FROM h GROUP BY step)
         SELECT coalesce(p.step, d.step) AS step, coalesce(p.recent, 0) AS recent,
                coalesce(p.changes, 0) AS changes, coalesce(p.retries, 0) AS retries,
                coalesce(p.failures, 0) AS failures, coalesce(d.n, 0) AS dead,
                coalesce(p.buckets, '{}') AS buckets
         FROM per_step p FULL JOIN d ON d.step = p.step
         WHERE coalesce(p.step, d.step) <> 'operator'
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    let mut order: Vec<&str> = vec!["intake"];
    order.extend(crate::topology::STEPS);
    let mut steps: Vec<StepActivity> = rows
        .iter()
        .map(|row| {
            let buckets: Vec<Option<i32>> = row.get("buckets");
            let mut counts = [0u32; 12];
            for b in buckets.into_iter().flatten() {
                counts[b.clamp(0, 11) as usize] += 1;
            }
            StepActivity {
                step: row.get("step"),
                rate_per_s: row.get::<i64, _>("recent") as f64 / 300.0,
                rate: format!("{:.2}", row.get::<i64, _>("recent") as f64 / 300.0),
                changes_hour: row.get("changes"),
                retries_hour: row.get("retries"),
                failures_hour: row.get("failures"),
                dead_letters_hour: row.get("dead"),
                spark: spark(&counts),
            }
        })
        .collect();
    steps.sort_by_key(|s| {
        order
            .iter()
            .position(|o| *o == s.step)
            .unwrap_or(usize::MAX)
    });
    Ok(steps)
}

/// Counts as a line of block characters, each scaled to the largest.
pub fn spark(counts: &[u32]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let top = counts.iter().copied().max().unwrap_or(0);
    counts
        .iter()
        .map(|&n| {
            if top == 0 || n == 0 {
                ' '
            } else {
                BARS[((n as usize * (BARS.len() - 1)) / top as usize).min(BARS.len() - 1)]
            }
        })
        .collect()
}

/// The admission gate: the intake pauses while the outbox holds [`crate::admission::PAUSE_AT`]
/// rows or more (each intake process decides for itself; this is the same count).
pub async fn intake(pool: &PgPool) -> sqlx::Result<Intake> {
    let pause_at = crate::admission::PAUSE_AT;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT $1) o")
        .bind(pause_at)
        .fetch_one(pool)
        .await?;
    Ok(Intake {
        outbox_rows: rows,
        paused: rows >= pause_at,
        pause_at,
    })
}

/// Applications past their deadline (`RECONCILE_GRACE` after their expected event).
pub async fn overdue(pool: &PgPool, grace: std::time::Duration) -> Section<i64> {
    match crate::reconcile::count_overdue(pool, grace).await {
        Ok(value) => Section::Available { value },
        Err(e) => {
            tracing::warn!(error = %e, "cannot count overdue applications");
            Section::NotAvailable {
                why: "the database could not be asked".into(),
            }
        }
    }
}

/// The MVD's and the SMS gateway's health as uidflow sees it: its circuit breakers, one row
/// each in the `breakers` table. Each row is read as JSON: its `name` (or `service`) and its
/// `state`, and the other columns as details, so the section needs no change when the table
/// gains a column.
pub async fn breakers(pool: &PgPool) -> Section<Vec<Breaker>> {
    let exists: Result<bool, _> = sqlx::query_scalar("SELECT to_regclass('breakers') IS NOT NULL")
        .fetch_one(pool)
        .await;
    match exists {
        Ok(true) => {}
        Ok(false) => {
            return Section::NotAvailable {
                why: "no circuit breakers in this build (no breakers table)".into(),
            };
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for the breakers table");
            return Section::NotAvailable {
                why: "the database could not be asked".into(),
            };
        }
    }
    let rows: Result<Vec<Value>, _> =
        sqlx::query_scalar("SELECT to_jsonb(b) FROM breakers b ORDER BY 1")
            .fetch_all(pool)
            .await;
    match rows {
        Ok(rows) => Section::Available {
            value: rows.iter().map(breaker_of).collect(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the breakers table");
            Section::NotAvailable {
                why: "the breakers table could not be read".into(),
            }
        }
    }
}

fn breaker_of(row: &Value) -> Breaker {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".into(),
        other => other.to_string(),
    };
    let pick = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| row.get(*k))
            .map(text)
            .unwrap_or_else(|| "unknown".into())
    };
    let details = row
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !["name", "service", "state"].contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), text(v)))
                .collect()
        })
        .unwrap_or_default();
    Breaker {
        name: pick(&["name", "service"]),
        state: pick(&["state"]),
        details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparks_scale_to_the_largest_bucket() {
        assert_eq!(spark(&[0, 1, 2, 4]), " ▂▄█");
        assert_eq!(spark(&[0, 0]), "  ");
    }

    #[test]
    fn breaker_rows_are_read_whatever_their_columns() {
        let b = breaker_of(&serde_json::json!({"service": "mvd", "state": "open", "failures": 5}));
        assert_eq!((b.name.as_str(), b.state.as_str()), ("mvd", "open"));
        assert_eq!(b.details, vec![("failures".to_owned(), "5".to_owned())]);
    }
}
