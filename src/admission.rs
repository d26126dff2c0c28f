//! Admission control: the intake takes new applications only while the outbox keeps up.
//!
//! Recording an application is cheap next to what follows it (seven more publishes, three or
//! four steps), so with a deep `uid.intake.application` queue the intake can record
//! applications far faster than the relays publish their hand-offs. Unchecked, the backlog
//! moves from RabbitMQ, which is built to hold it, into the `outbox` table, which is not:
//! measured with 1 000 000 applications queued, the table reached 913 000 live and 6 million
//! dead rows, every relay round scanned past them, and throughput fell by a quarter.
//!
//! So each intake process watches how many rows wait in the outbox (counting at most
//! [`PAUSE_AT`] of them, so the check stays cheap however deep the table is). At [`PAUSE_AT`]
//! it stops taking deliveries: those it holds wait unacked, and the broker sends no more past
//! the prefetch, so the backlog stays in the queue. It starts again at [`RESUME_AT`] — a gap
//! of several relay rounds, so it does not flap. Nothing is dropped or reordered; an
//! application simply waits in the queue instead of in the table.
//!
//! A pause that lasts (relays down, the broker refusing publishes) is logged once as a
//! warning; `uidflow_intake_paused` shows the state and `uidflow_intake_pauses_total` counts
//! the pauses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::outbox::BATCH;
use crate::telemetry::metrics as names;

/// Outbox rows at which the intake pauses: twenty relay rounds.
pub const PAUSE_AT: i64 = 20 * BATCH;
/// Outbox rows at or below which a paused intake resumes: five relay rounds.
pub const RESUME_AT: i64 = 5 * BATCH;
const _: () = assert!(RESUME_AT < PAUSE_AT, "the gate needs a gap to not flap");
/// How often the outbox is counted.
pub const CHECK_EVERY: Duration = Duration::from_millis(50);
/// A pause longer than this is logged as a warning.
pub const LONG_PAUSE: Duration = Duration::from_secs(60);

/// The intake's view of the gate: open (take deliveries) or paused.
#[derive(Debug, Clone)]
pub struct Admission {
    open: watch::Receiver<bool>,
}

impl Admission {
    /// Starts watching the outbox of `pool` until `token` is cancelled; `changed` hears each
    /// change of state (`true`: open).
    pub fn watch(
        pool: PgPool,
        token: CancellationToken,
        changed: impl Fn(bool) + Send + 'static,
    ) -> Self {
        let (sender, open) = watch::channel(true);
        tokio::spawn(watch_outbox(pool, sender, changed, token));
        Admission { open }
    }

    /// Returns when new applications may be taken: at once while the gate is open, otherwise
    /// once it opens again, after adding one to `waits`.
    pub async fn admitted(&self, waits: &AtomicU64) {
        if *self.open.borrow() {
            return;
        }
        waits.fetch_add(1, Ordering::Relaxed);
        let mut open = self.open.clone();
        // An error means the watcher is gone (shutting down): let the delivery through; the
        // consumer is stopping and the outbox is still the outbox.
        let _ = open.wait_for(|open| *open).await;
    }
}

/// Outbox rows, counted up to `PAUSE_AT` (beyond it the exact number does not matter). In id
/// order, so the scan walks the primary key, whose entries for deleted rows are skipped once
/// seen dead, and not the heap, where a minute of deleted rows may wait for autovacuum.
pub async fn outbox_depth(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM (SELECT FROM outbox ORDER BY id LIMIT $1) AS waiting")
        .bind(PAUSE_AT)
        .fetch_one(pool)
        .await
}

/// The gate's next state for `depth` rows, given whether it is open now.
pub fn next_state(open: bool, depth: i64) -> bool {
    if open {
        depth < PAUSE_AT
    } else {
        depth <= RESUME_AT
    }
}

async fn watch_outbox(
    pool: PgPool,
    sender: watch::Sender<bool>,
    changed: impl Fn(bool),
    token: CancellationToken,
) {
    let mut paused_since: Option<(Instant, bool)> = None;
    ::metrics::gauge!(names::INTAKE_PAUSED).set(0.0);
    loop {
        // A failed count leaves the gate as it is: the intake's own statements fail too, and
        // its consumer deals with that.
        match outbox_depth(&pool).await {
            Err(error) => {
                tracing::debug!(error = %error, "cannot count the outbox rows; the gate stays as it is");
            }
            Ok(depth) => {
                let open = *sender.borrow();
                let next = next_state(open, depth);
                if next != open {
                    sender.send_replace(next);
                    changed(next);
                    ::metrics::gauge!(names::INTAKE_PAUSED).set(if next { 0.0 } else { 1.0 });
                    if next {
                        paused_since = None;
                        tracing::debug!(outbox.rows = depth, "intake resumed");
                    } else {
                        paused_since = Some((Instant::now(), false));
                        ::metrics::counter!(names::INTAKE_PAUSES_TOTAL).increment(1);
                        tracing::debug!(outbox.rows = depth, "intake paused: the outbox is behind");
                    }
                }
                if let Some((since, warned @ false)) = paused_since.as_mut()
                    && since.elapsed() >= LONG_PAUSE
                {
                    *warned = true;
                    tracing::warn!(
                        outbox.rows = depth,
                        paused_s = since.elapsed().as_secs(),
                        "the intake has been paused for a minute: the outbox is not being published (are the relays running, is RabbitMQ refusing publishes?)"
                    );
                }
            }
        }
        if !crate::retry::pause(&token, Some(CHECK_EVERY)).await {
            break;
        }
    }
    // Whoever still waits is let through (see `admitted`).
    sender.send_replace(true);
    changed(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_pauses_at_the_high_mark_and_resumes_only_at_the_low_one() {
        let cases = [
            (true, 0, true),
            (true, PAUSE_AT - 1, true),
            (true, PAUSE_AT, false),
            (false, PAUSE_AT, false),
            (false, RESUME_AT + 1, false),
            (false, RESUME_AT, true),
            (false, 0, true),
        ];
        for (open, depth, expected) in cases {
            assert_eq!(
                next_state(open, depth),
                expected,
                "open={open} depth={depth}"
            );
        }
    }
}
