//! The reconciler: the database's proof that nothing is stuck.
//!
//! Every unfinished application waits for one next event, and the database knows which and
//! by when (its *deadline*, after [`Settings::reconcile_grace`]):
//!
//! | status | waits for | expected at |
//! | --- | --- | --- |
//! | `awaiting_phone_confirmation` | the clerk's code, or else its expiry timer | the code's `expires_at` |
//! | any other unfinished one | the work item of the route's current step (the first not in the ledger) | the last status change, or a retry's `due_at` |
//!
//! An application whose awaited step calls an external system with an open circuit breaker
//! (`breaker`) is paused, not stuck: it is neither counted nor re-sent.
//!
//! An application past its deadline lost its message somewhere (a purged or deleted queue, a
//! broker that dropped it). `uidflow reconcile` lists them; a repair re-sends the current work
//! item through the outbox (the same attempt, so no retry is gained or lost), notes it in the
//! application's history and moves the deadline on by a grace. A duplicate is harmless: the
//! ledger and [`crate::route::turn`] decide under the row lock, so a step runs once.
//!
//! A step whose queue still holds ready messages has a backlog: its overdue applications wait
//! for the next round (their work is most likely in that queue), so a long backlog is not
//! answered with a storm of duplicates.
//!
//! `uidflow run` repairs every [`Settings::reconcile_interval`] in the processes that host the
//! outbox, one at a time (a transaction-scoped advisory lock), and every such process sets the
//! gauge `uidflow_overdue_applications`.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::sampler::QueueSampler;
use crate::config::{Settings, format_duration};
use crate::domain::{Kind, Status};
use crate::messages::{Purpose, WorkItem};
use crate::route;
use crate::telemetry::metrics::{OVERDUE_APPLICATIONS, RECONCILED_TOTAL};

/// The advisory lock that lets one process at a time repair (`uidflow.reconcile` as a number).
const LOCK: i64 = 0x7569_6466_6c6f_7701;

/// Most applications repaired in one round (the rest wait for the next).
pub const ROUND_LIMIT: i64 = 500;

/// What an overdue application waits for, and what a repair sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WaitsFor {
    /// Attempt `attempt` of `step`.
    Step {
        /// The step.
        step: &'static str,
        /// Its attempt (a retry keeps its number).
        attempt: u32,
    },
    /// The expiry timer of phone-confirmation code `generation` (or the clerk's code).
    CodeExpiry {
        /// The code generation.
        generation: i32,
    },
    /// Nothing uidflow can send (the record is inconsistent: shown, never repaired).
    Unknown {
        /// Why.
        why: String,
    },
}

impl WaitsFor {
    /// The work item that stands for the awaited event.
    pub fn work_item(&self, application_id: Uuid) -> Option<WorkItem> {
        match self {
            WaitsFor::Step { step, attempt } => Some(WorkItem {
                attempt: *attempt,
                ..WorkItem::first(application_id, step)
            }),
            WaitsFor::CodeExpiry { generation } => Some(WorkItem {
                purpose: Purpose::ExpireCode {
                    generation: *generation,
                },
                ..WorkItem::first(application_id, route::CONFIRM_PHONE)
            }),
            WaitsFor::Unknown { .. } => None,
        }
    }

    /// The step label (metrics, the listing).
    pub fn step(&self) -> &'static str {
        match self {
            WaitsFor::Step { step, .. } => step,
            WaitsFor::CodeExpiry { .. } => route::CONFIRM_PHONE,
            WaitsFor::Unknown { .. } => "unknown",
        }
    }

    /// In words, for the history and the listing (no personal data).
    pub fn describe(&self) -> String {
        match self {
            WaitsFor::Step { step, attempt } => format!("step {step}, attempt {attempt}"),
            WaitsFor::CodeExpiry { generation } => {
                format!("the phone code (generation {generation}) or its expiry")
            }
            WaitsFor::Unknown { why } => format!("nothing known ({why})"),
        }
    }
}

/// An application past its deadline.
#[derive(Debug, Clone, Serialize)]
pub struct Overdue {
    /// The external system whose circuit breaker is open and that the awaited step calls:
    /// the application is paused, not stuck (never re-sent, not counted as overdue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<&'static str>,
    /// The application.
    pub application_id: Uuid,
    /// Its kind.
    pub kind: Kind,
    /// Its status.
    pub status: Status,
    /// The event it waits for.
    pub waits_for: WaitsFor,
    /// When that event was expected.
    pub expected_at: DateTime<Utc>,
}

/// What the awaited event is, from the application's kind, status, ledger and due columns.
pub fn waits_for(
    kind: Kind,
    status: Status,
    done: &[String],
    due: Option<(&str, u32)>,
    code_generation: Option<i32>,
) -> WaitsFor {
    if status == Status::AwaitingPhoneConfirmation {
        return match code_generation {
            Some(generation) => WaitsFor::CodeExpiry { generation },
            None => WaitsFor::Unknown {
                why: "waits for a phone code but holds none".into(),
            },
        };
    }
    match route::hops(kind)
        .iter()
        .find(|hop| !done.iter().any(|d| d == hop.step))
    {
        Some(hop) => WaitsFor::Step {
            step: hop.step,
            attempt: due
                .filter(|(step, _)| *step == hop.step)
                .map_or(1, |(_, attempt)| attempt.max(1)),
        },
        None => WaitsFor::Unknown {
            why: "every step of its route is done but it has not ended".into(),
        },
    }
}

/// The statuses of unfinished applications, as SQL.
const UNFINISHED: &str = "('received', 'verifying_identity', 'awaiting_phone_confirmation', 'registering', 'sending_password')";

/// When the next event of an application `a` (joined to its code `pc`) is expected, as SQL.
const EXPECTED_AT: &str = "GREATEST(a.updated_at, a.due_at,
     CASE WHEN a.status = 'awaiting_phone_confirmation' THEN pc.expires_at END)";

/// The applications past their deadline (`grace` after the expected event), oldest first, at
/// most `limit`; with `lock`, their rows are locked (skipping rows a step holds right now).
pub async fn overdue(
    conn: &mut PgConnection,
    grace: Duration,
    limit: i64,
    lock: bool,
) -> sqlx::Result<Vec<Overdue>> {
    let open = open_breakers(&mut *conn).await?;
    overdue_while(conn, grace, limit, lock, &open).await
}

/// [`overdue`], with the systems whose breaker is open already read.
async fn overdue_while(
    conn: &mut PgConnection,
    grace: Duration,
    limit: i64,
    lock: bool,
    open: &[crate::breaker::System],
) -> sqlx::Result<Vec<Overdue>> {
    let sql = format!(
        "SELECT a.application_id, a.kind, a.status, a.due_step, a.due_attempt, pc.generation,
                {EXPECTED_AT} AS expected_at,
                ARRAY(SELECT l.step FROM step_ledger l WHERE l.application_id = a.application_id) AS done
         FROM applications a LEFT JOIN phone_confirmations pc USING (application_id)
         WHERE a.status IN {UNFINISHED} AND a.kind IS NOT NULL
           AND {EXPECTED_AT} < now() - make_interval(secs => $1)
         ORDER BY expected_at LIMIT $2 {lock}",
        lock = if lock { "FOR UPDATE OF a SKIP LOCKED" } else { "" }
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(grace.as_secs_f64())
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let kind = Kind::parse(row.get::<Option<String>, _>("kind")?.as_str())?;
            let status = Status::parse(row.get("status"))?;
            let done: Vec<String> = row.get("done");
            let due_step: Option<String> = row.get("due_step");
            let due_attempt: Option<i32> = row.get("due_attempt");
            let due = due_step
                .as_deref()
                .zip(due_attempt.and_then(|a| u32::try_from(a).ok()));
            let waits_for = waits_for(kind, status, &done, due, row.get("generation"));
            let paused_by = crate::breaker::system_of(waits_for.step())
                .filter(|system| open.contains(system))
                .map(crate::breaker::System::as_str);
            Some(Overdue {
                paused_by,
                application_id: row.get("application_id"),
                kind,
                status,
                waits_for,
                expected_at: row.get("expected_at"),
            })
        })
        .collect())
}

/// The external systems whose circuit breaker is not closed (their steps are paused).
async fn open_breakers(conn: &mut PgConnection) -> sqlx::Result<Vec<crate::breaker::System>> {
    let open: Vec<String> =
        sqlx::query_scalar("SELECT system FROM breakers WHERE state <> 'closed'")
            .fetch_all(&mut *conn)
            .await?;
    Ok(open
        .iter()
        .filter_map(|s| crate::breaker::System::parse(s))
        .collect())
}

/// How many applications are past their deadline (those paused by an open circuit breaker
/// aside).
pub async fn count_overdue(pool: &PgPool, grace: Duration) -> sqlx::Result<i64> {
    let mut conn = pool.acquire().await?;
    let open = open_breakers(&mut conn).await?;
    if !open.is_empty() {
        let all = overdue_while(&mut conn, grace, i64::MAX, false, &open).await?;
        return Ok(all.iter().filter(|o| o.paused_by.is_none()).count() as i64);
    }
    drop(conn);
    let sql = format!(
        "SELECT count(*) FROM applications a LEFT JOIN phone_confirmations pc USING (application_id)
         WHERE a.status IN {UNFINISHED} AND a.kind IS NOT NULL
           AND {EXPECTED_AT} < now() - make_interval(secs => $1)"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(grace.as_secs_f64())
        .fetch_one(pool)
        .await
}

/// What one repair round did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Round {
    /// False when another process held the lock (nothing was done).
    pub ran: bool,
    /// The applications whose work item was sent again, with what it was.
    pub revived: Vec<Overdue>,
    /// Overdue applications that could not be repaired (nothing known to send).
    pub unrepairable: Vec<Overdue>,
}

/// The steps whose queue holds messages ready to be consumed: an application waiting for one
/// of them is behind a backlog, not lost (yet), so a round re-sends nothing for them; once the
/// queue is empty, what is still missing is lost. `Err` when the broker cannot be asked.
pub async fn busy_steps(sampler: &QueueSampler) -> Result<BTreeSet<String>, String> {
    let depths = sampler.sample().await?;
    Ok(route::STEPS
        .iter()
        .filter(|step| {
            let queue = crate::topology::step_queue(step);
            depths.iter().any(|d| d.name == queue && d.messages > 0)
        })
        .map(|step| (*step).to_owned())
        .collect())
}

/// One repair round: unless another process is repairing, re-sends the current work item of
/// up to [`ROUND_LIMIT`] overdue applications, each with a history note, in one transaction.
/// Applications whose step's queue is in `busy` (a backlog) are left for a later round.
pub async fn repair(
    pool: &PgPool,
    grace: Duration,
    busy: &BTreeSet<String>,
) -> sqlx::Result<Round> {
    let mut tx = pool.begin().await?;
    let locked = crate::db::try_advisory_xact_lock(&mut tx, LOCK).await?;
    if !locked {
        return Ok(Round::default());
    }
    let mut round = Round {
        ran: true,
        ..Round::default()
    };
    for found in overdue(&mut tx, grace, ROUND_LIMIT, true).await? {
        if found.paused_by.is_some() || busy.contains(found.waits_for.step()) {
            // Its step waits for an open breaker, or its queue still has a backlog: the work
            // is (most likely) in the queue, not lost.
            continue;
        }
        let Some(item) = found.waits_for.work_item(found.application_id) else {
            round.unrepairable.push(found);
            continue;
        };
        crate::runtime::enqueue_work(&mut tx, &item, None).await?;
        let detail = format!(
            "reconciler: nothing happened by {} (waiting for {} since {}); its work item was sent again",
            format_duration(grace),
            found.waits_for.describe(),
            found.expected_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        );
        crate::applications::note(&mut tx, found.application_id, "reconciler", &detail).await?;
        crate::applications::set_due(
            &mut tx,
            found.application_id,
            item.step.as_str(),
            item.attempt,
            Utc::now(),
        )
        .await?;
        round.revived.push(found);
    }
    crate::outbox::commit(tx, pool).await?;
    for found in &round.revived {
        ::metrics::counter!(RECONCILED_TOTAL, "step" => found.waits_for.step()).increment(1);
        tracing::warn!(application.id = %found.application_id, step = found.waits_for.step(), "overdue application revived: its work item was sent again");
    }
    Ok(round)
}

/// Repairs every `interval` until cancelled, and keeps the overdue gauge.
pub async fn run(settings: Settings, pool: PgPool, token: CancellationToken) {
    let (interval, grace) = (settings.reconcile_interval, settings.reconcile_grace);
    let sampler = QueueSampler::new(settings, Duration::ZERO);
    ::metrics::gauge!(OVERDUE_APPLICATIONS).set(0.0);
    ::metrics::counter!(RECONCILED_TOTAL, "step" => route::VERIFY_IDENTITY).increment(0);
    loop {
        if let Err(error) = tick(&pool, &sampler, grace).await {
            tracing::warn!(error = %error, "reconciler round failed; it runs again");
        }
        if !crate::retry::pause(&token, Some(interval)).await {
            return;
        }
    }
}

/// One round of [`run`]: the gauge, then, only when something is overdue (the usual case is
/// nothing: no broker round-trip then), a repair.
async fn tick(pool: &PgPool, sampler: &QueueSampler, grace: Duration) -> Result<(), String> {
    let count = count_overdue(pool, grace)
        .await
        .map_err(|e| format!("cannot count overdue applications ({e})"))?;
    ::metrics::gauge!(OVERDUE_APPLICATIONS).set(count as f64);
    if count == 0 {
        return Ok(());
    }
    // Without the broker, what a repair sends could not be published either.
    let busy = busy_steps(sampler)
        .await
        .map_err(|e| format!("{e}; no repair this round"))?;
    repair(pool, grace, &busy)
        .await
        .map_err(|e| format!("repair: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(steps: &[&str]) -> Vec<String> {
        steps.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn an_application_waits_for_its_routes_first_step_not_done_at_its_retrys_attempt() {
        let vi = route::VERIFY_IDENTITY;
        assert_eq!(
            waits_for(Kind::Block, Status::VerifyingIdentity, &[], None, None),
            WaitsFor::Step {
                step: vi,
                attempt: 1
            }
        );
        assert_eq!(
            waits_for(Kind::Issue, Status::Received, &[], None, None),
            WaitsFor::Step {
                step: vi,
                attempt: 1
            }
        );
        // A retry of the current step keeps its attempt; a retry of an earlier one does not
        // count for the next step.
        assert_eq!(
            waits_for(
                Kind::Block,
                Status::VerifyingIdentity,
                &[],
                Some((vi, 3)),
                None
            ),
            WaitsFor::Step {
                step: vi,
                attempt: 3
            }
        );
        assert_eq!(
            waits_for(
                Kind::Issue,
                Status::VerifyingIdentity,
                &done(&[vi]),
                Some((vi, 3)),
                None
            ),
            WaitsFor::Step {
                step: route::CONFIRM_PHONE,
                attempt: 1
            }
        );
        assert_eq!(
            waits_for(
                Kind::Unblock,
                Status::SendingPassword,
                &done(&[vi, route::REGISTER]),
                None,
                None
            ),
            WaitsFor::Step {
                step: route::SEND_SMS,
                attempt: 1
            }
        );
    }

    #[test]
    fn waiting_for_a_code_means_its_expiry_timer_and_inconsistent_records_are_not_repaired() {
        let vi = route::VERIFY_IDENTITY;
        let cp = route::CONFIRM_PHONE;
        let waits = waits_for(
            Kind::ChangePhone,
            Status::AwaitingPhoneConfirmation,
            &done(&[vi, cp]),
            None,
            Some(2),
        );
        assert_eq!(waits, WaitsFor::CodeExpiry { generation: 2 });
        let item = waits.work_item(Uuid::nil()).unwrap();
        assert_eq!(item.step, cp);
        assert_eq!(item.purpose, Purpose::ExpireCode { generation: 2 });
        let none = waits_for(
            Kind::Issue,
            Status::AwaitingPhoneConfirmation,
            &[],
            None,
            None,
        );
        assert!(none.work_item(Uuid::nil()).is_none());
        let all = done(&[vi, route::REGISTER, route::SEND_SMS]);
        let ended = waits_for(Kind::Block, Status::SendingPassword, &all, None, None);
        assert!(matches!(ended, WaitsFor::Unknown { .. }));
    }
}
