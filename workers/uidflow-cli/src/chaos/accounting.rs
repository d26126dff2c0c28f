//! The accounting at the end of a run: every application, every registry row, every SMS,
//! every queue. Each check can fail and says what it counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uidflow::sim::SentSms;
use uuid::Uuid;

use super::faults::Injected;
use super::traffic::{Book, Expect};
use super::workers::{Cause, Exit};

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Its name.
    pub name: &'static str,
    /// Passed.
    pub ok: bool,
    /// What was counted.
    pub detail: String,
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok,
        detail: detail.into(),
    }
}

/// What the accounting reads besides the database.
pub struct Inputs<'a> {
    /// What was sent.
    pub book: &'a Book,
    /// Every SMS the gateway accepted.
    pub sms: Vec<SentSms>,
    /// The faults as they happened.
    pub injected: &'a [Injected],
    /// Every worker exit.
    pub exits: &'a [Exit],
    /// Each worker's `--only` parts.
    pub worker_parts: &'a [String],
    /// `len(RETRY_DELAYS) + 1`.
    pub max_attempts: u32,
    /// How close to an interruption an SMS that was never committed must be.
    pub interruption_window: Duration,
    /// Queue depths (ready, unacked) at the end, while the workers ran with nothing to do.
    pub depths: HashMap<String, (u64, u64)>,
    /// Queue depths once the workers stopped: nothing unacknowledged may be left, and only
    /// code-expiry timers (which keep expiring) may have arrived on confirm-phone's queue.
    pub after_stop: HashMap<String, (u64, u64)>,
    /// The queues that must be empty (every work, retry, parking and dead-letter queue).
    pub must_be_empty: Vec<String>,
    /// The wait queue of the code-expiry timers (holds the timers of codes not yet expired).
    pub code_timer_queue: String,
}

/// What an SMS text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmsKind {
    /// A confirmation code.
    Code,
    /// A temporary password.
    Password,
    /// A notification (blocked, phone changed).
    Notification,
}

/// Classifies an SMS by its text (the code first: its text also has a `: `).
pub fn sms_kind(text: &str) -> SmsKind {
    use uidflow::sms::texts;
    if texts::code_in(text).is_some() {
        SmsKind::Code
    } else if text == texts::blocked() || text == texts::phone_changed() {
        SmsKind::Notification
    } else {
        SmsKind::Password
    }
}

/// The faults that can cut an attempt between the gateway's acceptance and the commit, and
/// so leave an SMS that was never committed: a kill of a process that hosts `step`, or the
/// loss of the broker or the database (the consumer drops its deliveries in flight).
pub fn interruptions<'a>(
    injected: &'a [Injected],
    worker_parts: &'a [String],
    step: &'a str,
) -> impl Iterator<Item = DateTime<Utc>> + 'a {
    injected.iter().filter_map(move |fault| {
        let cuts = match fault.kind {
            "kill_9" => fault
                .worker
                .and_then(|w| worker_parts.get(w))
                .is_some_and(|parts| parts.split(',').any(|p| p == step)),
            "rabbitmq_restart" | "postgres_restart" => true,
            _ => false,
        };
        cuts.then_some(fault.started)
    })
}

/// How many of `sent` (acceptance times) lie within `window` of an interruption.
pub fn near_interruptions(
    sent: &[DateTime<Utc>],
    cuts: &[DateTime<Utc>],
    window: Duration,
) -> usize {
    let window = chrono::Duration::from_std(window).unwrap_or_default();
    sent.iter()
        .filter(|at| cuts.iter().any(|cut| (**at - *cut).abs() <= window))
        .count()
}

/// The attempt number of a retry note `attempt N failed (…); attempt N+1 in …`.
pub fn failed_attempt(detail: &str) -> Option<u32> {
    detail
        .strip_prefix("attempt ")?
        .split_once(' ')
        .filter(|(_, rest)| rest.starts_with("failed"))?
        .0
        .parse()
        .ok()
}

/// Runs every check; returns them with the figures.
pub async fn account(pool: &PgPool, inputs: Inputs<'_>) -> anyhow::Result<(Vec<Check>, Value)> {
    let book = inputs.book;
    let mut checks = Vec::new();
    let mut figures = serde_json::Map::new();

    // --- Applications -----------------------------------------------------------------
    let rows: Vec<(Uuid, String, Option<String>)> =
        sqlx::query_as("SELECT application_id, status, reason->>'code' FROM applications")
            .fetch_all(pool)
            .await?;
    let in_db: HashMap<Uuid, (String, Option<String>)> =
        rows.into_iter().map(|(id, s, r)| (id, (s, r))).collect();
    let submitted: Vec<_> = book.apps.iter().filter(|a| a.confirmed).collect();
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut lost, mut unexpected, mut waiting) = (Vec::new(), Vec::new(), 0u64);
    for app in &submitted {
        *by_kind.entry(app.kind).or_default() += 1;
        let Some((status, reason)) = in_db.get(&app.id) else {
            lost.push(app.id);
            continue;
        };
        *by_status.entry(status.clone()).or_default() += 1;
        let ended = ["completed", "rejected", "failed"].contains(&status.as_str());
        let awaiting = status == "awaiting_phone_confirmation";
        if awaiting && app.expect == Expect::CodeNeverTyped {
            waiting += 1;
        } else if !ended {
            lost.push(app.id);
            continue;
        }
        let as_expected = match app.expect {
            Expect::Completed => status == "completed",
            Expect::Rejected(code) => status == "rejected" && reason.as_deref() == Some(code),
            Expect::CodeNeverTyped => {
                awaiting
                    || (status == "rejected" && reason.as_deref() == Some("phone_not_confirmed"))
            }
        };
        if !as_expected {
            unexpected.push(app.id);
        }
    }
    let unconfirmed_landed = book
        .apps
        .iter()
        .filter(|a| !a.confirmed && in_db.contains_key(&a.id))
        .count();
    let unconfirmed = book.apps.iter().filter(|a| !a.confirmed).count();
    let known: HashSet<Uuid> = book.apps.iter().map(|a| a.id).collect();
    let strangers = in_db.keys().filter(|id| !known.contains(id)).count();
    checks.push(check(
        "every_application_accounted",
        lost.is_empty() && strangers == 0,
        format!(
            "{} submitted (confirmed by the broker): {} ended, {waiting} visibly waiting for a code that is never typed, {} lost{}; {strangers} unknown applications in the database",
            submitted.len(),
            submitted.len() as u64 - waiting - lost.len() as u64,
            lost.len(),
            examples(&lost)
        ),
    ));
    let mut histories = Vec::new();
    for id in unexpected.iter().chain(&lost).take(3) {
        let history: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT status, step, detail FROM application_history WHERE application_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(pool)
        .await?;
        histories.push(json!({"application_id": id, "history": history}));
    }
    checks.push(check(
        "outcomes_as_expected",
        unexpected.is_empty(),
        format!(
            "{} of {} ended otherwise than their story says{}",
            unexpected.len(),
            submitted.len(),
            examples(&unexpected)
        ),
    ));
    let ended_twice: Vec<Uuid> = sqlx::query_scalar(
        "SELECT application_id FROM (
             SELECT application_id, status, lag(status) OVER (PARTITION BY application_id ORDER BY id) AS before
             FROM application_history) h
         WHERE status IN ('completed', 'rejected', 'failed') AND before IS DISTINCT FROM status
         GROUP BY application_id HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await?;
    checks.push(check(
        "ended_once",
        ended_twice.is_empty(),
        format!(
            "{} applications reached an end state more than once in their history{}",
            ended_twice.len(),
            examples(&ended_twice)
        ),
    ));

    // --- Registry -----------------------------------------------------------------------
    let registry: Vec<(String, String, String, Option<String>)> =
        sqlx::query_as("SELECT uid, phone, status, password_hash FROM uid_registry")
            .fetch_all(pool)
            .await?;
    let changes: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT application_id, change, count(*) FROM uid_registry_history GROUP BY application_id, change",
    )
    .fetch_all(pool)
    .await?;
    let doubled = changes.iter().filter(|(_, _, n)| *n > 1).count();
    let issued: HashMap<Uuid, i64> = changes
        .iter()
        .filter(|(_, c, _)| c == "issued")
        .map(|(id, _, n)| (*id, *n))
        .collect();
    let status_of = |id: &Uuid| in_db.get(id).map(|(s, _)| s.as_str());
    let person_of_uid: HashMap<&str, usize> = book
        .persons
        .iter()
        .enumerate()
        .map(|(i, p)| (p.uid.as_str(), i))
        .collect();
    // What each person's registry row should be, from their completed applications in order.
    let mut expected: HashMap<usize, (String, &str)> = HashMap::new();
    let mut completed_issues = 0;
    let mut issued_wrong = 0;
    for app in &book.apps {
        let completed = status_of(&app.id) == Some("completed");
        let issued_rows = issued.get(&app.id).copied().unwrap_or(0);
        if app.kind == "issue" && completed {
            completed_issues += 1;
        }
        if issued_rows != i64::from(app.kind == "issue" && completed) {
            issued_wrong += 1;
        }
        if !completed {
            continue;
        }
        let entry = expected
            .entry(app.person)
            .or_insert_with(|| (String::new(), "active"));
        match app.kind {
            "issue" | "change_phone" => entry.0 = app.phone.clone().unwrap_or_default(),
            "block" => entry.1 = "blocked",
            _ => entry.1 = "active",
        }
    }
    let mut mismatched = 0;
    let mut orphans = 0;
    for (uid, phone, status, _) in &registry {
        match person_of_uid
            .get(uid.as_str())
            .and_then(|p| expected.get(p))
        {
            Some((want_phone, want_status)) => {
                if phone != want_phone || status != want_status {
                    mismatched += 1;
                }
            }
            None => orphans += 1,
        }
    }
    checks.push(check(
        "one_registry_row_per_uid",
        registry.len() == completed_issues && orphans == 0 && issued_wrong == 0 && doubled == 0,
        format!(
            "{} registry rows for {completed_issues} completed issues ({orphans} without one); {issued_wrong} applications with a wrong number of `issued` changes; {doubled} registry changes doubled",
            registry.len()
        ),
    ));
    checks.push(check(
        "registry_matches_applications",
        mismatched == 0,
        format!("{mismatched} registry rows whose phone or status differ from the person's completed applications"),
    ));

    // --- SMS ------------------------------------------------------------------------------
    let mut per_phone: HashMap<&str, Vec<(SmsKind, &SentSms)>> = HashMap::new();
    for sms in &inputs.sms {
        per_phone
            .entry(sms.phone.as_str())
            .or_default()
            .push((sms_kind(&sms.text), sms));
    }
    let sms_per_phone_max = per_phone.values().map(Vec::len).max().unwrap_or(0);
    let of_kind = |phones: &[String], kind: SmsKind| -> Vec<&SentSms> {
        let mut found: Vec<&SentSms> = phones
            .iter()
            .flat_map(|p| per_phone.get(p.as_str()).into_iter().flatten())
            .filter(|(k, _)| *k == kind)
            .map(|(_, s)| *s)
            .collect();
        found.sort_by_key(|s| s.accepted_at);
        found
    };

    // The password in the last password SMS to the person's phones verifies against the hash.
    let mut to_verify = Vec::new();
    let mut no_password_sms = 0;
    for (uid, _, _, hash) in &registry {
        let Some(person) = person_of_uid.get(uid.as_str()) else {
            continue;
        };
        let passwords = of_kind(&book.persons[*person].phones, SmsKind::Password);
        match (passwords.last(), hash) {
            (Some(last), Some(hash)) => to_verify.push((
                uidflow::sms::texts::password_in(&last.text)
                    .unwrap_or_default()
                    .to_owned(),
                hash.clone(),
            )),
            _ => no_password_sms += 1,
        }
    }
    let verified = tokio::task::spawn_blocking(move || {
        to_verify
            .iter()
            .filter(|(password, hash)| uidflow::secrets::verify(password, hash))
            .count()
    });
    let rows_with_password = registry.iter().filter(|r| r.3.is_some()).count();
    let verified = verified.await?;
    checks.push(check(
        "last_password_works",
        verified == registry.len() && no_password_sms == 0,
        format!(
            "the last password SMS verifies against the stored hash for {verified} of {} UIDs ({rows_with_password} with a hash, {no_password_sms} without a password SMS)",
            registry.len()
        ),
    ));

    // SMS against the retry policy and the commits.
    let generations: HashMap<Uuid, i32> = sqlx::query_as::<_, (Uuid, i32)>(
        "SELECT application_id, generation FROM phone_confirmations",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let resets: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT uid, count(*) FROM uid_registry_history WHERE change = 'password_reset' GROUP BY uid",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let window = inputs.interruption_window;
    let cuts_code: Vec<_> =
        interruptions(inputs.injected, inputs.worker_parts, "confirm-phone").collect();
    let cuts_password: Vec<_> =
        interruptions(inputs.injected, inputs.worker_parts, "send-sms").collect();
    let (mut uncommitted, mut unexplained, mut missing, mut recommitted) =
        (0usize, 0usize, 0usize, 0usize);
    let (mut code_max, mut password_max, mut notification_over) = (0usize, 0usize, 0usize);
    for app in book
        .apps
        .iter()
        .filter(|a| a.kind == "issue" || a.kind == "change_phone")
    {
        let Some(phone) = &app.phone else { continue };
        if matches!(app.expect, Expect::Rejected(_)) {
            // Refused before a code (the MVD's test people, who also share a phone).
            continue;
        }
        let codes = of_kind(std::slice::from_ref(phone), SmsKind::Code);
        code_max = code_max.max(codes.len());
        let committed =
            usize::try_from(generations.get(&app.id).copied().unwrap_or(0)).unwrap_or(0);
        recommitted += usize::from(committed > 1);
        match codes.len().checked_sub(committed) {
            None => missing += 1,
            Some(extra) if extra > 0 => {
                uncommitted += extra;
                let sent: Vec<_> = codes.iter().map(|s| s.accepted_at).collect();
                unexplained += extra.saturating_sub(near_interruptions(&sent, &cuts_code, window));
            }
            Some(_) => {}
        }
    }
    for (index, person) in book.persons.iter().enumerate() {
        let passwords = of_kind(&person.phones, SmsKind::Password);
        password_max = password_max.max(passwords.len());
        let committed = usize::try_from(resets.get(&person.uid).copied().unwrap_or(0)).unwrap_or(0);
        match passwords.len().checked_sub(committed) {
            None => missing += 1,
            Some(extra) if extra > 0 => {
                uncommitted += extra;
                let sent: Vec<_> = passwords.iter().map(|s| s.accepted_at).collect();
                unexplained +=
                    extra.saturating_sub(near_interruptions(&sent, &cuts_password, window));
            }
            Some(_) => {}
        }
        let notifications = of_kind(&person.phones, SmsKind::Notification).len();
        let notified_kinds = book
            .apps
            .iter()
            .filter(|a| a.person == index)
            .filter(|a| a.kind == "block" || a.kind == "change_phone")
            .count();
        notification_over += notifications.saturating_sub(notified_kinds);
    }
    let notes: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT step, detail FROM application_history WHERE detail LIKE 'attempt % failed%'",
    )
    .fetch_all(pool)
    .await?;
    let mut failed_attempts: BTreeMap<String, u64> = BTreeMap::new();
    let mut highest_attempt = 0;
    for (step, detail) in &notes {
        if let Some(n) = detail.as_deref().and_then(failed_attempt) {
            *failed_attempts.entry(step.clone()).or_default() += 1;
            highest_attempt = highest_attempt.max(n + 1);
        }
    }
    checks.push(check(
        "sms_within_retry_policy",
        missing == 0 && unexplained == 0 && recommitted == 0 && notification_over == 0
            && highest_attempt <= inputs.max_attempts,
        format!(
            "at most one committed code and password per application ({recommitted} over); {uncommitted} SMS accepted by the gateway but never committed, {unexplained} of them not within {window:?} of a kill or restart that cuts an attempt; {missing} committed sends the gateway never accepted; {notification_over} notifications beyond one per application; highest attempt {highest_attempt} of {} allowed",
            inputs.max_attempts
        ),
    ));
    figures.insert(
        "sms".into(),
        json!({
            "accepted": inputs.sms.len(),
            "per_phone_max": sms_per_phone_max,
            "codes_per_application_max": code_max,
            "passwords_per_uid_max": password_max,
            "uncommitted": uncommitted,
            "uncommitted_unexplained": unexplained,
        }),
    );
    figures.insert("failed_attempts_by_step".into(), json!(failed_attempts));

    // --- Queues, outbox, dead letters ---------------------------------------------------
    let mut not_empty = Vec::new();
    for queue in &inputs.must_be_empty {
        match inputs.depths.get(queue) {
            Some((0, 0)) => {}
            Some((ready, unacked)) => {
                not_empty.push(format!("{queue} {ready} ready {unacked} unacked"))
            }
            None => not_empty.push(format!("{queue} missing")),
        }
    }
    let timer_arrivals = uidflow::topology::step_queue(uidflow::route::CONFIRM_PHONE);
    for (queue, (ready, unacked)) in &inputs.after_stop {
        if *unacked > 0
            || (*ready > 0 && *queue != timer_arrivals && *queue != inputs.code_timer_queue)
        {
            not_empty.push(format!(
                "after the workers stopped: {queue} {ready} ready {unacked} unacked"
            ));
        }
    }
    let codes_committed: i64 = generations.values().map(|g| i64::from(*g)).sum();
    let timers = inputs
        .depths
        .get(&inputs.code_timer_queue)
        .copied()
        .unwrap_or((0, 0));
    // Pending timers are expected (one per code sent, more when the outbox published a row
    // twice: the timer that fires finds nothing to do); none may be held by a consumer.
    if timers.1 > 0 {
        not_empty.push(format!(
            "{} {} ready {} unacked for {codes_committed} codes sent",
            inputs.code_timer_queue, timers.0, timers.1
        ));
    }
    checks.push(check(
        "queues_drained",
        not_empty.is_empty(),
        format!(
            "{} queues hold nothing (ready or unacked); the code-expiry queue holds {} timers for {codes_committed} codes{}",
            inputs.must_be_empty.len() - not_empty.len().min(inputs.must_be_empty.len()),
            timers.0,
            if not_empty.is_empty() { String::new() } else { format!("; not empty: {}", not_empty.join(", ")) }
        ),
    ));
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?;
    checks.push(check(
        "outbox_drained",
        outbox == 0,
        format!("{outbox} outbox rows left unpublished"),
    ));
    let dead: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT step, error_kind, count(*) FROM dead_letters GROUP BY step, error_kind ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    let dead_total: i64 = dead.iter().map(|d| d.2).sum();
    checks.push(check(
        "no_unexpected_dead_letters",
        dead_total == 0,
        format!(
            "{dead_total} dead letters{}",
            if dead.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    dead.iter()
                        .map(|(s, k, n)| format!("{n} {k} at {s}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
    ));

    // --- Workers ----------------------------------------------------------------------------
    let terms: Vec<&Exit> = inputs
        .exits
        .iter()
        .filter(|e| matches!(e.cause, Cause::Sigterm | Cause::FinalStop))
        .collect();
    let unclean: Vec<String> = terms
        .iter()
        .filter(|e| e.clean != Some(true))
        .map(|e| {
            format!(
                "worker {} at {:.1}s: code {:?} after {:.1?} s",
                e.worker, e.at, e.code, e.exit_seconds
            )
        })
        .collect();
    checks.push(check(
        "sigterm_exits_clean",
        unclean.is_empty(),
        format!(
            "{} of {} SIGTERMs ended with exit code 0 within the grace{}",
            terms.len() - unclean.len(),
            terms.len(),
            if unclean.is_empty() {
                String::new()
            } else {
                format!("; not: {}", unclean.join("; "))
            }
        ),
    ));
    // A process that cannot reach the broker or the database within 5 s of its start exits
    // (by design); that is expected during an outage and shortly after it.
    let outages: Vec<(f64, f64)> = inputs
        .injected
        .iter()
        .filter(|f| f.kind == "rabbitmq_restart" || f.kind == "postgres_restart")
        .map(|f| (f.at, f.at + f.seconds + 15.0))
        .collect();
    let by_itself: Vec<&Exit> = inputs
        .exits
        .iter()
        .filter(|e| e.cause == Cause::Itself)
        .collect();
    let unexplained_exits: Vec<String> = by_itself
        .iter()
        .filter(|e| {
            !outages
                .iter()
                .any(|(from, to)| e.at >= *from && e.at <= *to)
        })
        .map(|e| {
            format!(
                "worker {} at {:.1}s code {:?} signal {:?}",
                e.worker, e.at, e.code, e.signal
            )
        })
        .collect();
    checks.push(check(
        "no_unexplained_exits",
        unexplained_exits.is_empty(),
        format!(
            "{} exits nobody asked for, {} of them outside a broker or database outage{}",
            by_itself.len(),
            unexplained_exits.len(),
            if unexplained_exits.is_empty() {
                String::new()
            } else {
                format!(": {}", unexplained_exits.join("; "))
            }
        ),
    ));

    figures.insert(
        "applications".into(),
        json!({
            "submitted": submitted.len(),
            "by_kind": by_kind,
            "ended_by_status": by_status,
            "waiting_for_code": waiting,
            "lost": lost.len(),
            "duplicated": ended_twice.len() + doubled + recommitted,
            "unexpected_outcomes": unexpected.len(),
            "not_confirmed_by_broker": unconfirmed,
            "not_confirmed_but_recorded": unconfirmed_landed,
            "stories": book.chains.len(),
            "stories_by_template": book.chains.iter().fold(BTreeMap::<&str, u64>::new(), |mut m, c| {
                *m.entry(c.template).or_default() += 1;
                m
            }),
        }),
    );
    figures.insert("registry_rows".into(), json!(registry.len()));
    figures.insert(
        "dead_letters".into(),
        json!(
            dead.iter()
                .map(|(s, k, n)| json!({"step": s, "kind": k, "count": n}))
                .collect::<Vec<_>>()
        ),
    );
    figures.insert("examples".into(), json!(histories));
    Ok((checks, Value::Object(figures)))
}

/// The audit trail after the run: a last checkpoint with the run's key (so every chain's
/// head is signed), then every chain and checkpoint verified with that key.
pub async fn audit(
    pool: &PgPool,
    key: &ed25519_dalek::SigningKey,
) -> anyhow::Result<(Check, Value)> {
    uidflow::audit::checkpoint(pool, key).await?;
    let report = uidflow::audit::verify(pool, None, &[key.verifying_key()]).await?;
    let first = report.first().map(ToString::to_string);
    let check = check(
        "audit_chains_valid",
        report.ok(),
        match &first {
            None => format!(
                "{} chains with {} history rows and {} checkpoints verified",
                report.chains, report.rows, report.checkpoints
            ),
            Some(first) => format!(
                "{} problem(s) in the audit trail; the first: {first}",
                report.problem_count
            ),
        },
    );
    let figures = json!({
        "chains": report.chains,
        "rows": report.rows,
        "log_rows": report.log_rows,
        "checkpoints": report.checkpoints,
        "problems": report.problem_count,
        "first_problem": first,
    });
    Ok((check, figures))
}

fn examples(ids: &[Uuid]) -> String {
    if ids.is_empty() {
        String::new()
    } else {
        let shown: Vec<String> = ids.iter().take(3).map(Uuid::to_string).collect();
        format!(" (e.g. {})", shown.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_told_apart() {
        use uidflow::sms::texts;
        assert_eq!(
            sms_kind(&texts::confirmation_code("482913", 10)),
            SmsKind::Code
        );
        assert_eq!(
            sms_kind(&texts::temporary_password("Ab3dEf7hJk9m", 72)),
            SmsKind::Password
        );
        assert_eq!(sms_kind(&texts::blocked()), SmsKind::Notification);
        assert_eq!(sms_kind(&texts::phone_changed()), SmsKind::Notification);
    }

    #[test]
    fn retry_notes_give_the_failed_attempt() {
        assert_eq!(
            failed_attempt("attempt 3 failed (sms gateway: 503); attempt 4 in 30s"),
            Some(3)
        );
        assert_eq!(failed_attempt("attempt 12 failed"), Some(12));
        assert_eq!(
            failed_attempt("a confirmation code arrived while the application is completed"),
            None
        );
        assert_eq!(failed_attempt("attempt x failed"), None);
        assert_eq!(failed_attempt("attempt 3 was fine"), None);
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn fault(kind: &'static str, seconds: i64, worker: Option<usize>) -> Injected {
        Injected {
            kind,
            at: 0.0,
            seconds: 0.0,
            worker,
            started: at(seconds),
            ended: at(seconds),
            requests: None,
            clean: None,
            node: None,
            paused_seconds: None,
        }
    }

    #[test]
    fn only_kills_of_a_host_of_the_step_and_restarts_cut_an_attempt() {
        let parts = vec!["intake,send-sms".to_owned(), "verify-identity".to_owned()];
        let injected = vec![
            fault("kill_9", 10, Some(0)),
            fault("kill_9", 20, Some(1)),
            fault("sigterm", 30, Some(0)),
            fault("sms_down", 40, None),
            fault("rabbitmq_restart", 50, None),
            fault("postgres_restart", 60, None),
        ];
        let cuts: Vec<_> = interruptions(&injected, &parts, "send-sms").collect();
        assert_eq!(cuts, vec![at(10), at(50), at(60)]);
        let window = Duration::from_secs(3);
        assert_eq!(
            near_interruptions(&[at(8), at(20), at(52), at(64)], &cuts, window),
            2
        );
        assert_eq!(near_interruptions(&[at(13), at(7)], &cuts, window), 2);
        assert_eq!(near_interruptions(&[at(14)], &cuts, window), 0);
    }
}
