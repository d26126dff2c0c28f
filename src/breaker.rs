//! The circuit breakers of the external systems (the MVD, the SMS gateway): one per system,
//! shared by every process through its row in table `breakers`.
//!
//! - **closed**: calls go through; `failures` counts the consecutive transient failures of the
//!   calls of all processes (a success, or any answer that is not a transient failure, sets it
//!   back to 0). The `BREAKER_FAILURES`-th opens the breaker.
//! - **open**: nobody calls. The consumers of the steps that call the system cancel their AMQP
//!   consumer (the work waits in its queue), and a delivery that still arrives is put back with
//!   its attempt untouched ([`crate::runtime`]); so is the one whose failure opened the breaker.
//! - **half-open**: after `BREAKER_PROBE_INTERVAL`, one process claims the probe (a row lock
//!   decides who) and takes one real work item; if its call succeeds the breaker closes and
//!   every consumer resumes; if it fails, the breaker opens again for another interval. A
//!   prober that dies holds the probe only until `next_probe_at`; then another takes over.
//!
//! The state machine is [`Breaker::apply`], pure; the database only stores it and serialises
//! the processes (`SELECT … FOR UPDATE`). Each process keeps a cached [`View`] per system
//! (refreshed every `BREAKER_REFRESH`, and after each of its own changes), so the hot path
//! costs nothing: a success with the breaker closed and no failure counted writes nothing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::runtime::StepError;
use crate::telemetry::metrics::{BREAKER_OPEN, BREAKER_SAVED_ATTEMPTS_TOTAL};

/// Default of `BREAKER_FAILURES`.
pub const DEFAULT_FAILURES: u32 = 5;

/// `BREAKER_FAILURES`, `BREAKER_PROBE_INTERVAL`, `BREAKER_REFRESH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive transient failures (of all processes) that open a breaker.
    pub failures: u32,
    /// How long a breaker stays open before a probe, and how long a probe may take.
    pub probe_interval: Duration,
    /// How often a process reads the shared state (and claims a due probe).
    pub refresh: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: DEFAULT_FAILURES,
            probe_interval: Duration::from_secs(30),
            refresh: Duration::from_secs(1),
        }
    }
}

/// An external system with a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum System {
    /// MVD data verification (CONTRACT §5.1).
    Mvd,
    /// The SMS gateway (CONTRACT §5.2).
    Sms,
}

impl System {
    /// Every system.
    pub const ALL: [System; 2] = [System::Mvd, System::Sms];

    /// Its name: the row's key, the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            System::Mvd => "mvd",
            System::Sms => "sms",
        }
    }

    /// Its name for people.
    pub fn describe(self) -> &'static str {
        match self {
            System::Mvd => "the MVD",
            System::Sms => "the SMS gateway",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The system named `name`.
    pub fn parse(name: &str) -> Option<System> {
        System::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// The external system the step `step` calls, if any (the breaker that guards it).
pub fn system_of(step: &str) -> Option<System> {
    match step {
        crate::route::VERIFY_IDENTITY => Some(System::Mvd),
        crate::route::CONFIRM_PHONE | crate::route::SEND_SMS => Some(System::Sms),
        _ => None,
    }
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls go through.
    Closed,
    /// Nobody calls until the next probe.
    Open,
    /// One process probes.
    HalfOpen,
}

impl State {
    /// Its name in the table and in `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    fn parse(text: &str) -> State {
        match text {
            "open" => State::Open,
            "half_open" => State::HalfOpen,
            _ => State::Closed,
        }
    }
}

/// A breaker's shared state (its row, without the counters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    /// Closed, open or half-open.
    pub state: State,
    /// Consecutive transient failures while closed.
    pub failures: u32,
    /// When it opened (kept while it is open or half-open).
    pub opened_at: Option<DateTime<Utc>>,
    /// Open: when a probe may start; half-open: when the probe's holder loses it.
    pub next_probe_at: Option<DateTime<Utc>>,
    /// Half-open: the process that probes.
    pub prober: Option<String>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: State::Closed,
            failures: 0,
            opened_at: None,
            next_probe_at: None,
            prober: None,
        }
    }
}

/// What happened to a system's calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A call failed transiently (timeout, connection refused, 429, 5xx), made by process `by`.
    Failure {
        /// The process.
        by: String,
    },
    /// The system answered.
    Success,
    /// Process `by` would like to probe.
    Claim {
        /// The process.
        by: String,
    },
}

/// A change worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Closed → open.
    Opened,
    /// Open → half-open (a process probes).
    Probing,
    /// Half-open → open (the probe failed).
    Reopened,
    /// Open or half-open → closed.
    Closed,
}

impl Change {
    /// Its name in `breaker_events`.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Opened => "opened",
            Change::Probing => "probing",
            Change::Reopened => "reopened",
            Change::Closed => "closed",
        }
    }
}

impl Breaker {
    /// The state after `event` at `now` (the database's clock), and the change, if any.
    pub fn apply(
        &self,
        event: &Event,
        now: DateTime<Utc>,
        config: &BreakerConfig,
    ) -> (Breaker, Option<Change>) {
        let later = now + chrono::Duration::from_std(config.probe_interval).unwrap_or_default();
        match (self.state, event) {
            (State::Closed, Event::Success) => (
                Breaker {
                    failures: 0,
                    ..self.clone()
                },
                None,
            ),
            // Any answer closes it: the system is back (a probe, or a call that was in flight).
            (State::Open | State::HalfOpen, Event::Success) => {
                (Breaker::default(), Some(Change::Closed))
            }
            (State::Closed, Event::Failure { .. }) => {
                let failures = self.failures.saturating_add(1);
                if failures >= config.failures.max(1) {
                    let open = Breaker {
                        state: State::Open,
                        failures,
                        opened_at: Some(now),
                        next_probe_at: Some(later),
                        prober: None,
                    };
                    (open, Some(Change::Opened))
                } else {
                    let counted = Breaker {
                        failures,
                        ..self.clone()
                    };
                    (counted, None)
                }
            }
            (State::HalfOpen, Event::Failure { by }) if self.prober.as_ref() == Some(by) => {
                let open = Breaker {
                    state: State::Open,
                    next_probe_at: Some(later),
                    prober: None,
                    ..self.clone()
                };
                (open, Some(Change::Reopened))
            }
            // A call that was in flight when it opened, or another process's: nothing new.
            (State::Open | State::HalfOpen, Event::Failure { .. }) => (self.clone(), None),
            (State::Open | State::HalfOpen, Event::Claim { by })
                if self.next_probe_at.is_none_or(|at| at <= now) =>
            {
                let probing = Breaker {
                    state: State::HalfOpen,
                    next_probe_at: Some(later),
                    prober: Some(by.clone()),
                    ..self.clone()
                };
                (probing, Some(Change::Probing))
            }
            (_, Event::Claim { .. }) => (self.clone(), None),
        }
    }
}

/// What one process knows of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Closed; `clean` when no failure is counted (then a success writes nothing).
    Closed {
        /// No failure counted.
        clean: bool,
    },
    /// Open, or half-open with another process probing.
    Open,
    /// Half-open, and this process probes.
    Probe,
}

/// What a consumer of a step that calls the system should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Consume as usual.
    Consume,
    /// Take one delivery at a time (this process probes).
    One,
    /// Take nothing: the work waits in the queue.
    Pause,
}

impl View {
    fn of(breaker: &Breaker, me: &str) -> View {
        match breaker.state {
            State::Closed => View::Closed {
                clean: breaker.failures == 0,
            },
            State::HalfOpen if breaker.prober.as_deref() == Some(me) => View::Probe,
            State::Open | State::HalfOpen => View::Open,
        }
    }

    /// The consumers' flow in this view.
    pub fn flow(self) -> Flow {
        match self {
            View::Closed { .. } => Flow::Consume,
            View::Probe => Flow::One,
            View::Open => Flow::Pause,
        }
    }
}

/// Whether a work item may call the system now.
#[derive(Debug)]
pub enum Admit {
    /// Yes (closed, or the probe of this process: released on drop).
    Go(Option<ProbePermit>),
    /// No: put the work item back, its attempt untouched.
    Refuse,
}

/// This process's one probe in flight.
#[derive(Debug)]
pub struct ProbePermit(Arc<Local>, System);

impl Drop for ProbePermit {
    fn drop(&mut self) {
        let _ = self.1;
        self.0.probing.store(false, Ordering::Release);
    }
}

#[derive(Debug)]
struct Local {
    view: watch::Sender<View>,
    probing: AtomicBool,
}

/// The breakers as one process sees them; shared by its steps (`Arc`).
#[derive(Debug)]
pub struct Breakers {
    pool: PgPool,
    config: BreakerConfig,
    me: String,
    uses: BTreeSet<System>,
    local: [Arc<Local>; 2],
}

impl Breakers {
    /// The breakers of a process whose steps call `uses` (it probes only those).
    pub fn new(pool: PgPool, config: BreakerConfig, uses: BTreeSet<System>) -> Arc<Self> {
        let local = || {
            Arc::new(Local {
                view: watch::Sender::new(View::Closed { clean: true }),
                probing: AtomicBool::new(false),
            })
        };
        let me = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        for system in &uses {
            // Exported from the start (at 0), so that dashboards and alerts see them.
            ::metrics::gauge!(BREAKER_OPEN, "service" => system.as_str()).set(0.0);
            ::metrics::counter!(BREAKER_SAVED_ATTEMPTS_TOTAL, "service" => system.as_str())
                .increment(0);
        }
        Arc::new(Self {
            pool,
            config,
            me,
            uses,
            local: [local(), local()],
        })
    }

    /// This process's name in the `prober` column.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The cached view of `system`.
    pub fn view(&self, system: System) -> View {
        *self.local[system.index()].view.borrow()
    }

    /// Follows the consumers' [`Flow`] of `system`.
    pub fn flow(&self, system: System) -> watch::Receiver<View> {
        self.local[system.index()].view.subscribe()
    }

    /// May a work item call `system` now? Reads only the cached view.
    pub fn admit(&self, system: System) -> Admit {
        let local = &self.local[system.index()];
        match self.view(system) {
            View::Closed { .. } => Admit::Go(None),
            View::Open => Admit::Refuse,
            View::Probe => {
                if local
                    .probing
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    Admit::Go(Some(ProbePermit(Arc::clone(local), system)))
                } else {
                    Admit::Refuse
                }
            }
        }
    }

    /// The system answered a call: writes only when the breaker is not closed-and-clean.
    pub async fn success(&self, system: System) -> sqlx::Result<()> {
        if self.view(system) != (View::Closed { clean: true }) {
            self.event(system, Event::Success).await?;
        }
        Ok(())
    }

    /// A call failed transiently (counted in a transaction of its own).
    pub async fn failure(&self, system: System) -> sqlx::Result<()> {
        let by = self.me.clone();
        self.event(system, Event::Failure { by }).await.map(drop)
    }

    /// A call failed transiently, counted in `tx`, which holds the breaker's row lock until it
    /// ends: the caller spends the attempt in that same transaction only when this returns
    /// false, so no attempt is ever spent while another process opens the breaker. True: the
    /// breaker is (now) open or half-open; put the work item back, attempt untouched.
    pub async fn failure_in(
        &self,
        tx: &mut sqlx::PgConnection,
        system: System,
    ) -> sqlx::Result<bool> {
        let by = self.me.clone();
        let (after, change) = self.event_in(tx, system, Event::Failure { by }).await?;
        if let Some(change) = change {
            self.log(system, change, &after);
        }
        self.show(system, &after);
        Ok(after.state != State::Closed)
    }

    /// Counts a work item put back because of the breaker (the attempt it did not spend).
    pub async fn saved(conn: &mut sqlx::PgConnection, system: System) -> sqlx::Result<()> {
        sqlx::query("UPDATE breakers SET saved_attempts = saved_attempts + 1 WHERE system = $1")
            .bind(system.as_str())
            .execute(&mut *conn)
            .await?;
        ::metrics::counter!(BREAKER_SAVED_ATTEMPTS_TOTAL, "service" => system.as_str())
            .increment(1);
        Ok(())
    }

    /// Applies `event` to the shared row under its lock; updates the view, logs a change.
    async fn event(&self, system: System, event: Event) -> sqlx::Result<Breaker> {
        let mut tx = self.pool.begin().await?;
        let (after, change) = self.event_in(&mut tx, system, event).await?;
        tx.commit().await?;
        if let Some(change) = change {
            self.log(system, change, &after);
        }
        self.show(system, &after);
        Ok(after)
    }

    /// Applies `event` to the shared row in `tx` (locking it until `tx` ends).
    async fn event_in(
        &self,
        tx: &mut sqlx::PgConnection,
        system: System,
        event: Event,
    ) -> sqlx::Result<(Breaker, Option<Change>)> {
        let row = sqlx::query(
            "SELECT state, failures, opened_at, next_probe_at, prober, clock_timestamp() AS now
             FROM breakers WHERE system = $1 FOR UPDATE",
        )
        .bind(system.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let (before, now) = match &row {
            Some(row) => (breaker_of(row), row.get::<DateTime<Utc>, _>("now")),
            None => (Breaker::default(), Utc::now()),
        };
        let (after, change) = before.apply(&event, now, &self.config);
        if after != before {
            sqlx::query(
                "INSERT INTO breakers (system, state, failures, opened_at, next_probe_at, prober, opened_total)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (system) DO UPDATE SET state = EXCLUDED.state, failures = EXCLUDED.failures,
                   opened_at = EXCLUDED.opened_at, next_probe_at = EXCLUDED.next_probe_at,
                   prober = EXCLUDED.prober, opened_total = breakers.opened_total + EXCLUDED.opened_total,
                   updated_at = now()",
            )
            .bind(system.as_str())
            .bind(after.state.as_str())
            .bind(i32::try_from(after.failures).unwrap_or(i32::MAX))
            .bind(after.opened_at)
            .bind(after.next_probe_at)
            .bind(&after.prober)
            .bind(i64::from(change == Some(Change::Opened)))
            .execute(&mut *tx)
            .await?;
        }
        if let Some(change) = change {
            sqlx::query("INSERT INTO breaker_events (system, change, by) VALUES ($1, $2, $3)")
                .bind(system.as_str())
                .bind(change.as_str())
                .bind(&self.me)
                .execute(&mut *tx)
                .await?;
        }
        Ok((after, change))
    }

    fn log(&self, system: System, change: Change, after: &Breaker) {
        let name = system.as_str();
        let interval = crate::config::format_duration(self.config.probe_interval);
        match change {
            Change::Opened => tracing::warn!(
                system = name,
                failures = after.failures,
                probe_in = %interval,
                "circuit breaker opened: {} is failing; its steps stop taking work (no attempts spent) until a probe succeeds",
                system.describe()
            ),
            Change::Probing => tracing::info!(
                system = name,
                "circuit breaker half-open: this process probes with one work item"
            ),
            Change::Reopened => {
                tracing::warn!(system = name, probe_in = %interval, "circuit breaker probe failed; open again")
            }
            Change::Closed => tracing::info!(
                system = name,
                "circuit breaker closed: {} answers again; its steps resume",
                system.describe()
            ),
        }
    }

    fn show(&self, system: System, breaker: &Breaker) {
        let view = View::of(breaker, &self.me);
        ::metrics::gauge!(BREAKER_OPEN, "service" => system.as_str()).set(
            if breaker.state == State::Closed {
                0.0
            } else {
                1.0
            },
        );
        self.local[system.index()].view.send_if_modified(|old| {
            let changed = *old != view;
            *old = view;
            changed
        });
    }

    /// Reads every breaker once; claims the probe of a due one this process uses.
    pub async fn refresh(&self) -> sqlx::Result<()> {
        let rows = sqlx::query(
            "SELECT system, state, failures, opened_at, next_probe_at, prober,
                    next_probe_at <= clock_timestamp() AS due
             FROM breakers",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let Some(system) = System::parse(row.get::<&str, _>("system")) else {
                continue;
            };
            let breaker = breaker_of(&row);
            let due = row.get::<Option<bool>, _>("due").unwrap_or(false);
            if breaker.state != State::Closed && due && self.uses.contains(&system) {
                self.event(
                    system,
                    Event::Claim {
                        by: self.me.clone(),
                    },
                )
                .await?;
            } else {
                self.show(system, &breaker);
            }
        }
        Ok(())
    }

    /// Refreshes every `BREAKER_REFRESH` until cancelled.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        let every = self.config.refresh.max(Duration::from_millis(10));
        loop {
            if let Err(error) = self.refresh().await {
                tracing::warn!(error = %error, "cannot read the circuit breakers; keeping the last state");
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

fn breaker_of(row: &sqlx::postgres::PgRow) -> Breaker {
    Breaker {
        state: State::parse(row.get::<&str, _>("state")),
        failures: u32::try_from(row.get::<i32, _>("failures")).unwrap_or(0),
        opened_at: row.get("opened_at"),
        next_probe_at: row.get("next_probe_at"),
        prober: row.get("prober"),
    }
}

/// Every breaker's state by system name (`/readyz`, the clerk's view): one small query.
pub async fn states(
    conn: &mut sqlx::PgConnection,
) -> sqlx::Result<Vec<(System, State, Option<DateTime<Utc>>)>> {
    let rows = sqlx::query("SELECT system, state, opened_at FROM breakers ORDER BY system")
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let system = System::parse(row.get::<&str, _>("system"))?;
            Some((system, State::parse(row.get("state")), row.get("opened_at")))
        })
        .collect())
}

/// The attempts spent on a system's failures (a retry scheduled, or given up) while that
/// system's breaker was open or half-open, from the history and `breaker_events`: the figure
/// the breaker keeps at 0 (the tests and `uidflow chaos` check it). A failure is the system's
/// when its note quotes the client's error ("sms answered 503", "calling mvd: timed out").
pub async fn spent_while_open(conn: &mut sqlx::PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "WITH noted AS (
           SELECT h.at, h.detail, CASE h.step WHEN 'verify-identity' THEN 'mvd'
                                              WHEN 'confirm-phone' THEN 'sms'
                                              WHEN 'send-sms' THEN 'sms' END AS system
           FROM application_history h
           WHERE h.detail LIKE 'attempt % failed%; attempt % in %' OR h.detail LIKE 'gave up after %'),
         spent AS (
           SELECT at, system FROM noted
           WHERE detail LIKE '% (' || system || ' answered %' OR detail LIKE '% (calling ' || system || ':%'
              OR detail LIKE '%attempts: ' || system || ' answered %' OR detail LIKE '%attempts: calling ' || system || ':%')
         SELECT count(*) FROM spent s
         WHERE (SELECT e.change FROM breaker_events e
                WHERE e.system = s.system AND e.at <= s.at
                ORDER BY e.at DESC, e.id DESC LIMIT 1) IN ('opened', 'probing', 'reopened')",
    )
    .fetch_one(&mut *conn)
    .await
}

/// What a step's call to its external system came to, noted by the system's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// The system answered (a success, or an answer that is a permanent failure).
    Answered,
    /// A transient failure (timeout, connection, 429, 5xx).
    Failed,
}

tokio::task_local! {
    static LAST_CALL: std::cell::Cell<Option<Call>>;
}

/// Notes the result of an external call for the runtime's breaker (a no-op outside a step).
/// Called by the MVD and SMS clients.
pub fn note_call<T>(result: &Result<T, StepError>) {
    let call = match result {
        Err(StepError::Transient { .. }) => Call::Failed,
        Ok(_) | Err(StepError::Permanent(_)) => Call::Answered,
    };
    let _ = LAST_CALL.try_with(|cell| {
        // A failure sticks: a step that calls twice and fails once failed.
        if cell.get() != Some(Call::Failed) {
            cell.set(Some(call));
        }
    });
}

/// The call noted in this step's attempt so far.
pub fn last_call() -> Option<Call> {
    LAST_CALL.try_with(std::cell::Cell::get).ok().flatten()
}

/// Forgets the noted call (the runtime handled it).
pub fn clear_call() {
    let _ = LAST_CALL.try_with(|cell| cell.set(None));
}

/// Runs `future` (one attempt) with its own note of the external call; returns its output and
/// the call noted and not cleared.
pub async fn watching_calls<F: std::future::Future>(future: F) -> (F::Output, Option<Call>) {
    LAST_CALL
        .scope(std::cell::Cell::new(None), async {
            let output = future.await;
            (output, last_call())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failures: 3,
            probe_interval: Duration::from_secs(30),
            refresh: Duration::from_secs(1),
        }
    }

    fn failure(by: &str) -> Event {
        Event::Failure { by: by.into() }
    }

    fn claim(by: &str) -> Event {
        Event::Claim { by: by.into() }
    }

    #[test]
    fn the_breaker_opens_on_a_run_of_failures_probes_once_and_closes_on_success() {
        let t0 = Utc::now();
        let secs = |s: i64| t0 + chrono::Duration::seconds(s);
        let cfg = config();
        let mut b = Breaker::default();
        // Two failures (of any processes) count; a success resets the run.
        for by in ["a", "b"] {
            (b, _) = b.apply(&failure(by), t0, &cfg);
        }
        assert_eq!((b.state, b.failures), (State::Closed, 2));
        let (reset, change) = b.apply(&Event::Success, t0, &cfg);
        assert_eq!((reset.failures, change), (0, None));
        b = reset;
        // Three in a row open it.
        let mut change = None;
        for by in ["a", "b", "a"] {
            (b, change) = b.apply(&failure(by), secs(1), &cfg);
        }
        assert_eq!(change, Some(Change::Opened));
        assert_eq!(b.state, State::Open);
        assert_eq!(b.next_probe_at, Some(secs(31)));
        assert_eq!(View::of(&b, "a").flow(), Flow::Pause);
        // Failures while open change nothing; nobody probes before its time.
        assert_eq!(b.apply(&failure("b"), secs(2), &cfg), (b.clone(), None));
        assert_eq!(b.apply(&claim("a"), secs(30), &cfg), (b.clone(), None));
        // At its time one process claims the probe; the other's claim is refused.
        let (probing, change) = b.apply(&claim("a"), secs(31), &cfg);
        assert_eq!(change, Some(Change::Probing));
        assert_eq!(probing.state, State::HalfOpen);
        assert_eq!(View::of(&probing, "a"), View::Probe);
        assert_eq!(View::of(&probing, "b"), View::Open);
        assert_eq!(
            probing.apply(&claim("b"), secs(32), &cfg),
            (probing.clone(), None)
        );
        // Another process's failure is not the probe's; the prober's failure reopens it.
        assert_eq!(
            probing.apply(&failure("b"), secs(32), &cfg),
            (probing.clone(), None)
        );
        let (reopened, change) = probing.apply(&failure("a"), secs(33), &cfg);
        assert_eq!(change, Some(Change::Reopened));
        assert_eq!(reopened.state, State::Open);
        assert_eq!(reopened.next_probe_at, Some(secs(63)));
        assert_eq!(
            reopened.opened_at,
            Some(secs(1)),
            "open since the first time"
        );
        // A prober that never reports loses the probe at the end of its interval.
        let (probing, _) = reopened.apply(&claim("a"), secs(63), &cfg);
        let (taken, change) = probing.apply(&claim("b"), secs(93), &cfg);
        assert_eq!(change, Some(Change::Probing));
        assert_eq!(taken.prober.as_deref(), Some("b"));
        // The probe's success closes it, and clean.
        let (closed, change) = taken.apply(&Event::Success, secs(94), &cfg);
        assert_eq!(change, Some(Change::Closed));
        assert_eq!(closed, Breaker::default());
        assert_eq!(View::of(&closed, "a"), View::Closed { clean: true });
    }

    #[test]
    fn a_threshold_of_one_opens_on_the_first_failure_and_steps_map_to_their_systems() {
        let cfg = BreakerConfig {
            failures: 1,
            ..config()
        };
        let (b, change) = Breaker::default().apply(&failure("a"), Utc::now(), &cfg);
        assert_eq!((b.state, change), (State::Open, Some(Change::Opened)));
        assert_eq!(system_of(crate::route::VERIFY_IDENTITY), Some(System::Mvd));
        assert_eq!(system_of(crate::route::CONFIRM_PHONE), Some(System::Sms));
        assert_eq!(system_of(crate::route::SEND_SMS), Some(System::Sms));
        assert_eq!(system_of(crate::route::REGISTER), None);
    }

    #[tokio::test]
    async fn a_noted_call_is_seen_by_its_attempt_only_and_a_failure_sticks() {
        let ((), call) = watching_calls(async {
            note_call::<()>(&Err(StepError::transient(anyhow::anyhow!("503"))));
            note_call(&Ok(()));
        })
        .await;
        assert_eq!(call, Some(Call::Failed));
        let ((), call) = watching_calls(async {
            note_call::<()>(&Err(StepError::permanent(anyhow::anyhow!("400"))));
        })
        .await;
        assert_eq!(call, Some(Call::Answered));
        let ((), call) = watching_calls(async {}).await;
        assert_eq!(call, None);
        note_call(&Ok(())); // outside a step: nothing, no panic
        assert_eq!(last_call(), None);
    }
}
