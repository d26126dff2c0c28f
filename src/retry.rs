//! Retry policies: the only module that knows the `backoff` crate.
//!
//! `backoff` is unmaintained (RUSTSEC-2025-0012). Everything else in uidflow asks this module
//! for delays through [`Policy`] and [`with_backoff`], so `backon` can replace it here alone.
//! Every policy has an explicit `max_elapsed_time`: `backoff` silently defaults to 15 minutes.

use std::future::Future;
use std::time::Duration;

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff;

/// How to space out attempts of one operation.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// First wait.
    pub initial: Duration,
    /// Longest single wait.
    pub max_interval: Duration,
    /// Give up after this much time in all; `None` retries for ever (reconnection loops that
    /// stop only on shutdown).
    pub max_elapsed: Option<Duration>,
}

impl Policy {
    /// Reconnecting to RabbitMQ or PostgreSQL while running: quick first, then every 10 s.
    pub const RECONNECT: Policy = Policy {
        initial: Duration::from_millis(100),
        max_interval: Duration::from_secs(10),
        max_elapsed: None,
    };
    /// Connecting at start-up: a few quick tries, then a clear error.
    pub const STARTUP: Policy = Policy {
        initial: Duration::from_millis(100),
        max_interval: Duration::from_secs(1),
        max_elapsed: Some(Duration::from_secs(5)),
    };

    /// A fresh delay sequence for this policy (with jitter).
    pub fn delays(&self) -> Delays {
        Delays(ExponentialBackoff {
            initial_interval: self.initial,
            current_interval: self.initial,
            max_interval: self.max_interval,
            max_elapsed_time: self.max_elapsed,
            randomization_factor: 0.3,
            multiplier: 2.0,
            ..ExponentialBackoff::default()
        })
    }
}

/// A sequence of waits; `None` when the policy's time is up.
#[derive(Debug)]
pub struct Delays(ExponentialBackoff);

impl Delays {
    /// The next wait, or `None` to give up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.0.next_backoff()
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.0.reset();
    }
}

/// Adds ±`factor` random jitter to a delay (drawn by `backoff`), never going below `floor`.
pub fn jitter(delay: Duration, factor: f64, floor: Duration) -> Duration {
    let mut one_draw = ExponentialBackoff {
        initial_interval: delay,
        current_interval: delay,
        max_interval: delay.mul_f64(1.0 + factor),
        randomization_factor: factor,
        multiplier: 1.0,
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    };
    one_draw.next_backoff().unwrap_or(delay).max(floor)
}

/// Runs `operation` until it succeeds or the policy gives up; returns the last error then.
pub async fn with_backoff<T, E, F, Fut>(policy: Policy, mut operation: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = policy.delays();
    loop {
        match operation().await {
            Ok(value) => return Ok(value),
            Err(error) => match delays.next_delay() {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Err(error),
            },
        }
    }
}

/// Waits `delay` (or the longest reconnect wait) unless cancelled; false when cancelled.
pub async fn pause(token: &tokio_util::sync::CancellationToken, delay: Option<Duration>) -> bool {
    let delay = delay.unwrap_or(Policy::RECONNECT.max_interval);
    tokio::select! {
        _ = token.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `backoff` measures elapsed time with the real clock, so this test runs in real time
    // with a small budget instead of under `tokio::time::pause`.
    #[tokio::test]
    async fn a_policy_gives_up_rather_than_exceed_its_budget() {
        let policy = Policy {
            initial: Duration::from_millis(10),
            max_interval: Duration::from_millis(40),
            max_elapsed: Some(Duration::from_millis(300)),
        };
        let started = std::time::Instant::now();
        let mut calls = 0;
        let result: Result<(), &str> = with_backoff(policy, || {
            calls += 1;
            async { Err("down") }
        })
        .await;
        assert_eq!(result, Err("down"));
        assert!(calls > 3, "several attempts were made, got {calls}");
        let elapsed = started.elapsed();
        // It stops when the next wait would cross the budget: within it, but not far below.
        assert!(
            elapsed >= Duration::from_millis(150) && elapsed <= Duration::from_millis(400),
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn success_after_failures_returns_the_value() {
        let mut calls = 0;
        let fast = Policy {
            initial: Duration::from_millis(1),
            max_interval: Duration::from_millis(5),
            max_elapsed: None,
        };
        let result: Result<u32, &str> = with_backoff(fast, || {
            calls += 1;
            let attempt = calls;
            async move {
                if attempt < 4 {
                    Err("down")
                } else {
                    Ok(attempt)
                }
            }
        })
        .await;
        assert_eq!(result, Ok(4));
    }

    #[test]
    fn jitter_stays_within_its_spread_and_above_the_floor() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(10), 0.2, Duration::from_secs(9));
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
    }
}
