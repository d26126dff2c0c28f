//! The step runtime: everything a step needs except its business decision.
//!
//! For each work item on `uid.step.<NAME>` it: decodes it (an unreadable one is parked), waits
//! out a `not_before` that has not come yet, loads the application and asks
//! [`route::turn`] whether it is this item's turn, calls [`Step::call`] (outside any
//! transaction), then opens one transaction that locks the application row, reads the ledger
//! and asks [`route::turn`] again — only that answer counts — runs [`Step::commit`], and writes
//! the ledger row, the status change, the history row, the event and the hand-off — and only
//! after that commit is the delivery acked. An item that is not its application's turn (a
//! step out of order, of another route, an unknown one, or for an application that ended
//! before the step ran) calls nothing and changes nothing: it is parked `out_of_order`, noted in
//! the history and counted in `uidflow_out_of_order_total`.
//!
//! A transient failure schedules the next attempt through `uid.retry.<NAME>.<delay>` (delay from
//! `RETRY_DELAYS` with jitter, never earlier than a `Retry-After`), with a history note, and acks.
//! After the last attempt, or at once for a permanent failure, the work item is parked and the
//! application is `failed`. A step never sees the broker and never acks.
//!
//! A step that calls an external system (`breaker::system_of`) is guarded by its shared
//! circuit breaker (`crate::breaker`): while it is open the step's consumer takes nothing, a
//! delivery that still comes is put back with its attempt untouched, and so is the one whose
//! transient failure opened it (or failed while it was open): an outage spends no attempts.

mod error;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

pub use error::StepError;

use crate::amqp::Outgoing;
use crate::applications::{self, Loaded};
use crate::breaker::{self, Admit, Breakers, Call, System};
use crate::config::{Settings, format_duration};
use crate::consumer::{self, ConsumerConfig, Handled, Handler, Message};
use crate::dead_letters::{self, ErrorKind, Parked};
use crate::domain::{Reason, Status};
use crate::messages::WorkItem;
use crate::outbox;
use crate::route::{self, Next, Turn};
use crate::topology::{
    RETRY_EXCHANGE, TIMER_EXCHANGE, WORK_EXCHANGE, retry_routing_key, step_queue,
};
use crate::vault::Vault;

use crate::telemetry::metrics::{OUT_OF_ORDER_TOTAL, STEP_DURATION_SECONDS};

/// What the runtime hands a step.
#[derive(Clone)]
pub struct StepContext {
    /// The process's settings.
    pub settings: Settings,
    /// The database.
    pub pool: PgPool,
    /// The data keys (personal data is sealed at rest).
    pub vault: Arc<Vault>,
}

/// What a step decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done: go on to the next step of the route.
    Next,
    /// Done for now: the application waits in `status` for something outside (a phone code).
    Waiting(Status),
    /// The application is refused.
    Rejected(Reason),
    /// Something that needs no status change (a timer that found nothing to do).
    Nothing,
}

impl Outcome {
    /// A short label (ledger rows, metrics).
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Next => "next",
            Outcome::Waiting(_) => "waiting",
            Outcome::Rejected(_) => "rejected",
            Outcome::Nothing => "nothing",
        }
    }
}

/// The one contract a step implements.
pub trait Step: Send + Sync + 'static {
    /// Stable name: queue `uid.step.<NAME>`, metric label `step`, header `x-uid-step`.
    const NAME: &'static str;
    /// What [`Step::call`] hands to [`Step::commit`].
    type Prepared: Send;
    /// False for a step whose [`Step::call`] does nothing: the runtime then skips the unlocked
    /// read that guards an external call, and makes the call under the lock.
    const CALLS_OUT: bool = true;

    /// Work outside the database transaction (an idempotent external call). No lock is held.
    fn call(
        &self,
        cx: &StepContext,
        application: &Loaded,
        item: &WorkItem,
    ) -> impl Future<Output = Result<Self::Prepared, StepError>> + Send;

    /// The decision and its database effects, in the runtime's transaction, with the
    /// application row locked. A step whose external call must not interleave with another
    /// attempt (a secret sent by SMS) makes that call here.
    fn commit(
        &self,
        cx: &StepContext,
        tx: &mut PgConnection,
        application: &Loaded,
        item: &WorkItem,
        prepared: Self::Prepared,
    ) -> impl Future<Output = Result<Outcome, StepError>> + Send;
}

/// Runs `step` on its queue until cancelled, `concurrency` deliveries at a time; a step that
/// calls an external system follows that system's breaker in `breakers`.
pub async fn run<S: Step>(
    settings: Settings,
    pool: PgPool,
    step: S,
    concurrency: u16,
    breakers: Arc<Breakers>,
    vault: Arc<Vault>,
    token: CancellationToken,
) {
    let config = ConsumerConfig {
        role: S::NAME,
        queue: step_queue(S::NAME),
        prefetch: concurrency,
    };
    let system = breaker::system_of(S::NAME);
    let gate = system.map(|system| breakers.flow(system));
    let runner = Arc::new(StepRunner {
        cx: StepContext {
            settings: settings.clone(),
            pool,
            vault,
        },
        step,
        breakers,
        system,
    });
    consumer::run_gated(settings, config, runner, gate, token).await;
}

/// Adds the hand-off of `item` to its step's queue (or a wait queue) to the outbox.
pub async fn enqueue_work(
    conn: &mut PgConnection,
    item: &WorkItem,
    wait: Option<Wait>,
) -> sqlx::Result<()> {
    outbox::enqueue(conn, &work_message(item, wait)).await
}

/// The message that hands `item` to its step's queue, or to a wait queue. A wait queue's TTL
/// is the queue's own (`x-message-ttl`), never the message's: every message of a queue waits
/// the same time, so none is ever held behind another (RabbitMQ expires only at the head).
pub fn work_message(item: &WorkItem, wait: Option<Wait>) -> Outgoing {
    let (exchange, routing_key) = match wait {
        None => (WORK_EXCHANGE, item.step.clone()),
        Some(Wait::Retry(ttl)) => (RETRY_EXCHANGE, retry_routing_key(&item.step, ttl)),
        Some(Wait::Timer(ttl)) => (TIMER_EXCHANGE, retry_routing_key(&item.step, ttl)),
    };
    Outgoing {
        exchange: exchange.into(),
        routing_key,
        message_id: Some(format!(
            "{}:{}:{}",
            item.application_id, item.step, item.attempt
        )),
        content_type: Some("application/json".into()),
        headers: serde_json::json!({}),
        body: serde_json::to_vec(item).expect("a work item serialises"),
        mandatory: true,
        expiration_ms: None,
    }
}

/// A wait queue a work item goes through before it runs (again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The step's retry queue whose TTL is this `RETRY_DELAYS` entry.
    Retry(Duration),
    /// The step's timer queue whose TTL is this (a phone code's `PHONE_CODE_TTL`).
    Timer(Duration),
}

/// How much longer than the time left a wait queue's TTL may be (the relay and the broker
/// take a few milliseconds per hop, so a remainder is rarely an exact multiple).
pub const WAIT_SLACK: Duration = Duration::from_millis(50);

/// The next hop of a wait with `left` to go: the longest retry queue (of `delays`) whose TTL
/// is not longer than `left` (give or take [`WAIT_SLACK`]); `None` when less than the shortest
/// is left. A long wait is chained through the longest queue, then the right shorter ones:
/// the runtime sends an item that comes back before its `not_before` on its next hop.
pub fn next_wait(left: Duration, delays: &[Duration]) -> Option<Duration> {
    delays
        .iter()
        .copied()
        .filter(|d| *d <= left + WAIT_SLACK)
        .max()
}

/// The retry plan after attempt `attempt` failed transiently: `None` when the attempts are used
/// up. The delay is `RETRY_DELAYS[attempt-1]` minus up to 20 % jitter, rounded to a multiple
/// of the shortest delay (so the wait queues add up to it exactly), and never less than a
/// `Retry-After` (rounded up to that multiple: at most one shortest delay late).
pub fn retry_delay(
    attempt: u32,
    delays: &[Duration],
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let base = *delays.get(usize::try_from(attempt).ok()?.checked_sub(1)?)?;
    let grid = delays.iter().copied().min()?.max(Duration::from_millis(1));
    let jittered = crate::retry::jitter(base, 0.2, Duration::ZERO).min(base);
    let steps = (jittered.as_secs_f64() / grid.as_secs_f64())
        .round()
        .max(1.0);
    let delay = grid.mul_f64(steps).min(base.max(grid));
    let after = retry_after.map_or(Duration::ZERO, |after| {
        grid.mul_f64((after.as_secs_f64() / grid.as_secs_f64()).ceil())
    });
    Some(delay.max(after))
}

/// The longest a work item is held in the consumer instead of a wait queue: the part of a
/// wait shorter than the shortest retry queue, or a timer that came back early.
pub const MAX_HELD_WAIT: Duration = Duration::from_secs(1);

struct StepRunner<S: Step> {
    cx: StepContext,
    step: S,
    breakers: Arc<Breakers>,
    /// The external system the step calls (its breaker).
    system: Option<System>,
}

impl<S: Step> Handler for StepRunner<S> {
    async fn handle(&self, message: &Message) -> anyhow::Result<Handled> {
        let started = Instant::now();
        let outcome = self.handle_item(message).await?;
        ::metrics::histogram!(STEP_DURATION_SECONDS, "step" => S::NAME, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        Ok(Handled::Ack)
    }
}

impl<S: Step> StepRunner<S> {
    /// Handles one delivery; returns the outcome label. `Err` only when the database fails.
    async fn handle_item(&self, message: &Message) -> anyhow::Result<&'static str> {
        let pool = &self.cx.pool;
        let item: WorkItem = match serde_json::from_slice(&message.body) {
            Ok(item) => item,
            Err(error) => {
                let mut tx = pool.begin().await?;
                let why = format!("the work item is not readable ({error})");
                self.park(&mut tx, message, None, ErrorKind::Malformed, why, 1)
                    .await?;
                crate::outbox::commit(tx, pool).await?;
                return Ok("malformed");
            }
        };
        let id = item.application_id;
        let trace_id = crate::trace::current()
            .unwrap_or_else(|| crate::trace::TraceContext::for_application(id))
            .trace_id_hex();
        let span = tracing::info_span!("step", step = S::NAME, application.id = %id, attempt = item.attempt, trace_id = %trace_id);
        // The span covers the attempt's awaits as well (an entered guard would not).
        tracing::Instrument::instrument(self.attempt(message, item), span).await
    }

    /// One attempt of the step for a decoded work item.
    async fn attempt(&self, message: &Message, item: WorkItem) -> anyhow::Result<&'static str> {
        let pool = &self.cx.pool;
        if let Some(not_before) = item.not_before {
            let left = (not_before - Utc::now()).to_std().unwrap_or_default();
            if item.purpose.is_run()
                && left > WAIT_SLACK
                && let Some(ttl) = next_wait(left, &self.cx.settings.retry_delays)
            {
                // Back before its time (a long wait is chained): on to its next wait queue.
                let mut tx = pool.begin().await?;
                enqueue_work(&mut tx, &item, Some(Wait::Retry(ttl))).await?;
                crate::outbox::commit(tx, pool).await?;
                return Ok("waiting");
            }
            // Less than the shortest wait queue is left (or a timer came back a moment
            // early): wait it out here, never run before `not_before` (it may carry a
            // `Retry-After`).
            tokio::time::sleep(left.min(MAX_HELD_WAIT)).await;
        }
        // The breaker: no call while it is open (nor a second probe), and the attempt is kept.
        let permit = match self.system {
            Some(system) if item.purpose.is_run() => match self.breakers.admit(system) {
                Admit::Go(permit) => permit,
                Admit::Refuse => return self.put_back(&item, system, None).await,
            },
            _ => None,
        };
        let (result, call) = breaker::watching_calls(self.attempt_admitted(message, item)).await;
        if let Some(system) = self.system {
            // What `failed` did not handle: an answer (success, or a permanent failure).
            let reported = match call {
                Some(Call::Answered) => self.breakers.success(system).await,
                Some(Call::Failed) => self.breakers.failure(system).await,
                None => Ok(()),
            };
            if let Err(error) = reported {
                tracing::warn!(error = %error, "cannot update the circuit breaker");
            }
        }
        drop(permit);
        result
    }

    /// The attempt once the breaker let it call.
    async fn attempt_admitted(
        &self,
        message: &Message,
        item: WorkItem,
    ) -> anyhow::Result<&'static str> {
        let pool = &self.cx.pool;
        let id = item.application_id;
        // A step that calls out makes its call before the lock, after an unlocked look at
        // whose turn it is (the locked one below decides; this one only spares the call).
        let prepared = if S::CALLS_OUT {
            let mut conn = pool.acquire().await?;
            let found = applications::load_for_step(&mut conn, &self.cx.vault, id).await;
            drop(conn);
            let found = match found {
                Err(sqlx::Error::Decode(why)) => return self.unreadable(message, &item, why).await,
                found => found?,
            };
            let Some((application, done)) = found else {
                let tx = pool.begin().await?;
                return self.park_unknown(tx, message, &item).await;
            };
            match self.turn(&application, &done, &item) {
                Turn::Run { .. } => match self.step.call(&self.cx, &application, &item).await {
                    Ok(prepared) => Some(prepared),
                    Err(error) => return self.failed(message, &item, error).await,
                },
                Turn::Done => {
                    tracing::debug!("already done; nothing to do");
                    return Ok("duplicate");
                }
                // Confirmed (and parked) under the lock below.
                Turn::OutOfOrder(_) => None,
            }
        } else {
            None
        };
        let mut tx = pool.begin().await?;
        let locked = match applications::load(&mut tx, &self.cx.vault, id, true).await {
            Err(sqlx::Error::Decode(why)) => {
                drop(tx);
                return self.unreadable(message, &item, why).await;
            }
            locked => locked?,
        };
        let Some(mut locked) = locked else {
            return self.park_unknown(tx, message, &item).await;
        };
        // The ledger is read in a statement of its own, after the lock: a statement that had to
        // wait for the lock still sees its own (older) snapshot in its subqueries, and would
        // miss the ledger row that the attempt holding the lock just committed.
        let done = ledger_steps(&mut tx, id).await?;
        match self.turn(&locked, &done, &item) {
            Turn::Run { enter: None } => {}
            Turn::Run {
                enter: Some(status),
            } => {
                applications::transition(&mut tx, id, status, S::NAME, None, None).await?;
                locked.status = status;
            }
            Turn::Done => return Ok("duplicate"),
            Turn::OutOfOrder(why) => return self.out_of_order(tx, message, &item, why).await,
        }
        let prepared = match prepared {
            Some(prepared) => prepared,
            // A step that calls nothing out does its (empty) call here, under the lock; so
            // does one whose unlocked look came before the application's turn did.
            None => match self.step.call(&self.cx, &locked, &item).await {
                Ok(prepared) => prepared,
                Err(error) => {
                    drop(tx);
                    return self.failed(message, &item, error).await;
                }
            },
        };
        match self
            .step
            .commit(&self.cx, &mut tx, &locked, &item, prepared)
            .await
        {
            Ok(outcome) => {
                let label = apply(&mut tx, &locked, &item, S::NAME, &outcome).await?;
                crate::outbox::commit(tx, pool).await?;
                Ok(label)
            }
            Err(error) => {
                drop(tx);
                self.failed(message, &item, error).await
            }
        }
    }

    /// Whose turn it is, for this step's queue: an item naming another step is out of order
    /// whatever the route says.
    fn turn(&self, application: &Loaded, done: &[String], item: &WorkItem) -> Turn {
        if item.step != S::NAME {
            return Turn::OutOfOrder(format!(
                "a work item for step {:?} on the queue of step {}",
                item.step.chars().take(64).collect::<String>(),
                S::NAME
            ));
        }
        let done: Vec<&str> = done.iter().map(String::as_str).collect();
        route::turn(
            application.kind,
            application.status,
            &done,
            S::NAME,
            &item.purpose,
        )
    }

    /// Parks a work item that is not its application's turn, notes it in the application's
    /// history and counts it; nothing else changes and nothing was called.
    async fn out_of_order(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        message: &Message,
        item: &WorkItem,
        why: String,
    ) -> anyhow::Result<&'static str> {
        let id = item.application_id;
        let dead = self
            .park_work(
                &mut tx,
                message,
                item,
                ErrorKind::OutOfOrder,
                format!("not this application's turn: {why}"),
                item.first_failed_at,
            )
            .await?;
        let detail = format!(
            "a work item (attempt {}) arrived out of turn and was refused: {why}; nothing was done; parked as dead letter {dead}",
            item.attempt
        );
        applications::note(&mut tx, id, S::NAME, &detail).await?;
        crate::outbox::commit(tx, &self.cx.pool).await?;
        ::metrics::counter!(OUT_OF_ORDER_TOTAL, "step" => S::NAME).increment(1);
        tracing::warn!(dead_letter.id = dead, reason = %why, "work item out of turn; parked");
        Ok("out_of_order")
    }

    /// Parks a work item whose application does not exist or is not valid, in `tx`.
    async fn park_unknown(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        message: &Message,
        item: &WorkItem,
    ) -> anyhow::Result<&'static str> {
        let id = item.application_id;
        let why = format!("application {id} does not exist or is not a valid application");
        self.park(
            &mut tx,
            message,
            Some(id),
            ErrorKind::Invalid,
            why,
            item.attempt,
        )
        .await?;
        crate::outbox::commit(tx, &self.cx.pool).await?;
        Ok("invalid")
    }

    /// The application's sealed payload does not open (a key this process's key file lacks, or
    /// a payload changed in the database): a transient failure of the step, retried with its
    /// delays (the key file may arrive meanwhile), then `failed` and parked with the reason.
    async fn unreadable(
        &self,
        message: &Message,
        item: &WorkItem,
        why: Box<dyn std::error::Error + Send + Sync>,
    ) -> anyhow::Result<&'static str> {
        let error = anyhow::anyhow!("the application's personal data cannot be opened: {why}");
        tracing::error!(error = %error, "a sealed payload does not open");
        self.failed(message, item, StepError::transient(error))
            .await
    }

    /// Puts `item` back, attempt untouched, because the breaker of `system` is open: through
    /// the shortest wait queue (so a consumer that has not paused yet does not spin on it).
    /// `failed_with`: the failure of the call that opened it, noted in the history.
    async fn put_back(
        &self,
        item: &WorkItem,
        system: System,
        failed_with: Option<&str>,
    ) -> anyhow::Result<&'static str> {
        let mut tx = self.cx.pool.begin().await?;
        self.put_back_in(&mut tx, item, system, failed_with).await?;
        crate::outbox::commit(tx, &self.cx.pool).await?;
        Ok("breaker_open")
    }

    /// [`Self::put_back`] in `tx`.
    async fn put_back_in(
        &self,
        tx: &mut PgConnection,
        item: &WorkItem,
        system: System,
        failed_with: Option<&str>,
    ) -> sqlx::Result<()> {
        let delays = &self.cx.settings.retry_delays;
        let ttl = delays
            .iter()
            .copied()
            .min()
            .unwrap_or(Duration::from_secs(1));
        Breakers::saved(tx, system).await?;
        enqueue_work(tx, item, Some(Wait::Retry(ttl))).await?;
        if let Some(why) = failed_with {
            let detail = format!(
                "attempt {} failed ({why}); not counted: {} is unavailable and its circuit breaker is open, so the step waits for it",
                item.attempt,
                system.describe()
            );
            applications::note(tx, item.application_id, S::NAME, &detail).await?;
            tracing::warn!(error = %why, system = system.as_str(), "step failed with its breaker open; put back, attempt not counted");
        } else {
            tracing::debug!(system = system.as_str(), "breaker open; put back");
        }
        Ok(())
    }

    async fn failed(
        &self,
        message: &Message,
        item: &WorkItem,
        error: StepError,
    ) -> anyhow::Result<&'static str> {
        let mut tx = self.cx.pool.begin().await?;
        // A transient failure of the external call counts on the breaker, in this transaction
        // (which then holds the breaker's row until it commits); if the breaker is (now) open,
        // the attempt is not spent: the item goes back as it came.
        if let (StepError::Transient { source, .. }, Some(system), Some(Call::Failed)) =
            (&error, self.system, breaker::last_call())
        {
            breaker::clear_call();
            if self.breakers.failure_in(&mut tx, system).await? {
                let why = format!("{source:#}");
                self.put_back_in(&mut tx, item, system, Some(&why)).await?;
                crate::outbox::commit(tx, &self.cx.pool).await?;
                return Ok("breaker_open");
            }
        }
        let id = item.application_id;
        let label = match &error {
            StepError::Transient {
                source,
                retry_after,
            } => match retry_delay(item.attempt, &self.cx.settings.retry_delays, *retry_after) {
                Some(delay) => {
                    let next = WorkItem {
                        attempt: item.attempt + 1,
                        not_before: Some(
                            Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                        ),
                        first_failed_at: item.first_failed_at.or(Some(Utc::now())),
                        ..item.clone()
                    };
                    let delays = &self.cx.settings.retry_delays;
                    let ttl = next_wait(delay, delays).unwrap_or(delay);
                    enqueue_work(&mut tx, &next, Some(Wait::Retry(ttl))).await?;
                    let detail = format!(
                        "attempt {} failed ({source:#}); attempt {} in {}",
                        item.attempt,
                        item.attempt + 1,
                        format_duration(Duration::from_secs(delay.as_secs().max(1)))
                    );
                    applications::note(&mut tx, id, S::NAME, &detail).await?;
                    let due = next.not_before.unwrap_or_else(Utc::now);
                    applications::set_due(&mut tx, id, S::NAME, next.attempt, due).await?;
                    tracing::warn!(
                        error = format!("{source:#}"),
                        delay_ms = delay.as_millis() as u64,
                        "step failed; will retry"
                    );
                    "retried"
                }
                None => {
                    let why = format!("gave up after {} attempts: {source:#}", item.attempt);
                    let first = item.first_failed_at;
                    let dead = self
                        .park_work(
                            &mut tx,
                            message,
                            item,
                            ErrorKind::Exhausted,
                            why.clone(),
                            first,
                        )
                        .await?;
                    let detail = format!("{why}; parked as dead letter {dead}");
                    applications::transition(
                        &mut tx,
                        id,
                        Status::Failed,
                        S::NAME,
                        None,
                        Some(&detail),
                    )
                    .await?;
                    tracing::error!(
                        error = format!("{source:#}"),
                        dead_letter.id = dead,
                        "step exhausted its attempts; application failed"
                    );
                    "exhausted"
                }
            },
            StepError::Permanent(source) => {
                let why = format!("{source:#}");
                let dead = self
                    .park_work(
                        &mut tx,
                        message,
                        item,
                        ErrorKind::Permanent,
                        why.clone(),
                        item.first_failed_at,
                    )
                    .await?;
                let detail = format!("permanent failure: {why}; parked as dead letter {dead}");
                applications::transition(&mut tx, id, Status::Failed, S::NAME, None, Some(&detail))
                    .await?;
                tracing::error!(error = %why, dead_letter.id = dead, "step failed permanently; application failed");
                "permanent"
            }
        };
        crate::outbox::commit(tx, &self.cx.pool).await?;
        Ok(label)
    }
}

/// Writes the ledger row and carries out the outcome (status, history, event, hand-off).
async fn apply(
    tx: &mut PgConnection,
    application: &Loaded,
    item: &WorkItem,
    step: &'static str,
    outcome: &Outcome,
) -> sqlx::Result<&'static str> {
    let ledger = item
        .purpose
        .is_run()
        .then(|| serde_json::json!({"outcome": outcome.label()}));
    let ledger = ledger.as_ref();
    match outcome {
        Outcome::Next => hand_off_recording(tx, application, step, ledger).await?,
        Outcome::Waiting(status) if *status != application.status => {
            applications::change_locked(tx, application, *status, step, None, &[], ledger).await?;
        }
        Outcome::Rejected(reason) => {
            applications::change_locked(
                tx,
                application,
                Status::Rejected,
                step,
                Some(reason),
                &[],
                ledger,
            )
            .await?;
        }
        Outcome::Waiting(_) | Outcome::Nothing => record(tx, application, step, ledger).await?,
    }
    Ok(outcome.label())
}

/// The step's ledger row, in a statement of its own (when no status change carries it).
async fn record(
    tx: &mut PgConnection,
    application: &Loaded,
    step: &str,
    ledger: Option<&serde_json::Value>,
) -> sqlx::Result<()> {
    if let Some(outcome) = ledger {
        sqlx::query("INSERT INTO step_ledger (application_id, step, outcome) VALUES ($1, $2, $3)")
            .bind(application.application_id)
            .bind(step)
            .bind(outcome)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// The steps in the ledger of an application.
async fn ledger_steps(
    conn: &mut PgConnection,
    application_id: uuid::Uuid,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT step FROM step_ledger WHERE application_id = $1")
        .bind(application_id)
        .fetch_all(&mut *conn)
        .await
}

/// Moves an application, locked by the caller, past `step`: the next step's status and work
/// item, or `completed`.
pub async fn hand_off(tx: &mut PgConnection, application: &Loaded, step: &str) -> sqlx::Result<()> {
    hand_off_recording(tx, application, step, None).await
}

/// [`hand_off`], with the step's ledger row in the same statement as the status change.
async fn hand_off_recording(
    tx: &mut PgConnection,
    application: &Loaded,
    step: &str,
    ledger: Option<&serde_json::Value>,
) -> sqlx::Result<()> {
    let (to, also) = match route::next(application.kind, step) {
        Next::Step { step: next, status } => {
            let work = work_message(&WorkItem::first(application.application_id, next), None);
            match status.filter(|s| *s != application.status) {
                Some(status) => (status, vec![work]),
                None => {
                    record(tx, application, step, ledger).await?;
                    return outbox::enqueue(tx, &work).await;
                }
            }
        }
        Next::Done => (Status::Completed, vec![]),
    };
    applications::change_locked(tx, application, to, step, None, &also, ledger).await
}

impl<S: Step> StepRunner<S> {
    async fn park(
        &self,
        tx: &mut PgConnection,
        message: &Message,
        application_id: Option<uuid::Uuid>,
        kind: ErrorKind,
        error: String,
        attempts: u32,
    ) -> sqlx::Result<i64> {
        let parked = Parked {
            application_id,
            step: S::NAME,
            kind,
            error,
            reason_code: None,
            message,
            attempts,
            first_failed_at: message.received_at,
        };
        dead_letters::park(tx, &self.cx.vault, &parked).await
    }

    async fn park_work(
        &self,
        tx: &mut PgConnection,
        message: &Message,
        item: &WorkItem,
        kind: ErrorKind,
        error: String,
        first_failed_at: Option<chrono::DateTime<Utc>>,
    ) -> sqlx::Result<i64> {
        let parked = Parked {
            application_id: Some(item.application_id),
            step: S::NAME,
            kind,
            error,
            reason_code: None,
            message,
            attempts: item.attempt,
            first_failed_at: first_failed_at.unwrap_or(message.received_at),
        };
        dead_letters::park(tx, &self.cx.vault, &parked).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays() -> Vec<Duration> {
        [1, 5, 30, 120, 600].map(Duration::from_secs).to_vec()
    }

    #[test]
    fn retry_delays_follow_the_schedule_with_downward_jitter_then_give_up() {
        for (attempt, base) in [(1, 1), (2, 5), (3, 30), (4, 120), (5, 600)] {
            for _ in 0..100 {
                let delay = retry_delay(attempt, &delays(), None).expect("an attempt is left");
                let base = Duration::from_secs(base);
                assert!(
                    delay <= base && delay >= base.mul_f64(0.8),
                    "attempt {attempt}: {delay:?}"
                );
            }
        }
        assert_eq!(retry_delay(6, &delays(), None), None, "6 attempts in all");
        assert_eq!(retry_delay(0, &delays(), None), None);
    }

    #[test]
    fn a_retry_after_is_never_undercut() {
        for _ in 0..100 {
            let delay = retry_delay(1, &delays(), Some(Duration::from_secs(7))).unwrap();
            assert_eq!(delay, Duration::from_secs(7));
        }
        let long = retry_delay(5, &delays(), Some(Duration::from_secs(3600))).unwrap();
        assert_eq!(long, Duration::from_secs(3600));
    }

    /// The hops a wait of `delay` takes (clock-independent: the TTLs chosen, in order), and
    /// what is left for the consumer to hold.
    fn chain(delay: Duration, delays: &[Duration]) -> (Vec<Duration>, Duration) {
        let (mut hops, mut left) = (Vec::new(), delay);
        while left > WAIT_SLACK
            && let Some(ttl) = next_wait(left, delays)
        {
            assert!(
                ttl <= left + WAIT_SLACK,
                "{ttl:?} is longer than the {left:?} left of {delay:?}"
            );
            hops.push(ttl);
            left = left.saturating_sub(ttl);
        }
        (hops, left)
    }

    #[test]
    fn every_retry_wait_is_chained_through_queues_no_longer_than_what_is_left() {
        let secs = |s: u64| Duration::from_secs(s);
        let afters = [
            None,
            Some(secs(2)),
            Some(secs(7)),
            Some(secs(45)),
            Some(secs(3600)),
        ];
        for attempt in 1..=5 {
            for retry_after in afters {
                for _ in 0..50 {
                    let delay = retry_delay(attempt, &delays(), retry_after).unwrap();
                    let (hops, held) = chain(delay, &delays());
                    assert_eq!(hops.iter().sum::<Duration>(), delay, "{hops:?}");
                    assert_eq!(held, Duration::ZERO, "nothing held in the consumer");
                    assert!(hops.iter().all(|h| delays().contains(h)));
                    let base = delays()[attempt as usize - 1];
                    let after = retry_after.unwrap_or_default();
                    // Never early; late only by the rounding of a Retry-After (under 1 s).
                    assert!(delay >= after, "{delay:?}");
                    assert!(delay <= base || delay < after + secs(1), "{delay:?}");
                }
            }
        }
        // The test delays, and a Retry-After longer than the longest of them.
        let short = [200, 400, 800].map(Duration::from_millis).to_vec();
        let delay = retry_delay(3, &short, Some(secs(2))).unwrap();
        assert_eq!(delay, secs(2));
        assert_eq!(
            chain(delay, &short).0,
            [800, 800, 400].map(Duration::from_millis)
        );
        // A hop that came back a few milliseconds late still takes the right next queue.
        let late = Duration::from_millis(1190);
        assert_eq!(chain(late, &short).0, [800, 400].map(Duration::from_millis));
    }

    #[test]
    fn retries_and_code_timers_wait_in_queues_of_their_own_with_one_ttl_each() {
        let vars: std::collections::HashMap<String, String> = [
            ("PHONE_CODE_TTL", "10m"),
            ("MVD_URL", "http://127.0.0.1:1/mvd"),
            ("SMS_URL", "http://127.0.0.1:1/sms"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let settings = Settings::from_map(&vars).unwrap();
        let topology = crate::topology::Topology::for_settings(&settings);
        let item = WorkItem::first(uuid::Uuid::nil(), route::CONFIRM_PHONE);
        let ten = Duration::from_secs(600);
        let mut landed = Vec::new();
        for wait in [Wait::Retry(ten), Wait::Timer(ten)] {
            let message = work_message(&item, Some(wait));
            assert_eq!(message.expiration_ms, None, "no per-message TTL");
            let queue = crate::topology::queue_for(&message.exchange, &message.routing_key)
                .expect("a wait queue");
            let declared = topology
                .queues
                .iter()
                .find(|q| q.name == queue)
                .expect("declared");
            assert!(declared.arguments.contains_key("x-message-ttl"));
            landed.push(queue);
        }
        assert_eq!(
            landed,
            ["uid.retry.confirm-phone.10m", "uid.timer.confirm-phone.10m"]
        );
    }
}
