//! Fault injection shared by the simulators: the [`Faults`] settings of one simulated
//! service, and the [`FaultGate`] that every request of that service passes through first.
//!
//! The gate counts the request, waits the configured latency, and then either lets the
//! request through or answers it with a fault (503, 429 with `Retry-After`, or a hang that
//! ends in 504). A faulted request never reaches the service, so it has no effect there.
//!
//! The order of decisions for one request is:
//! 1. `outage`: every request answers 503 (`fail_next` is left untouched meanwhile);
//! 2. `fail_next`: the first scripted status is taken off the list and answered (a 2xx
//!    entry means "process this request normally");
//! 3. `timeout_rate`, then `rate_limit_rate`, then `error_rate`, each drawn at random.
//!
//! Over HTTP the durations are whole milliseconds: `latency_ms`, `retry_after_ms`, `hang_ms`.
//! Every field may be left out of a `PUT` body and then takes its default (no fault).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::json;

/// The faults injected into one simulated service; the default injects none.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added before every answer, faulted or not (`latency_ms` over HTTP).
    #[serde(rename = "latency_ms", with = "duration_ms")]
    pub latency: Duration,
    /// Probability (0 to 1) that a request answers 503.
    pub error_rate: f64,
    /// Probability (0 to 1) that a request answers 429 with `Retry-After`.
    pub rate_limit_rate: f64,
    /// The `Retry-After` of a 429, sent in whole seconds rounded up, at least 1
    /// (`retry_after_ms` over HTTP).
    #[serde(rename = "retry_after_ms", with = "duration_ms")]
    pub retry_after: Duration,
    /// Probability (0 to 1) that a request is held for `hang` and then answers 504.
    pub timeout_rate: f64,
    /// How long a timed-out request is held before its 504 (`hang_ms` over HTTP).
    #[serde(rename = "hang_ms", with = "duration_ms")]
    pub hang: Duration,
    /// While true, every request answers 503.
    pub outage: bool,
    /// Scripted statuses for the next requests, in order; a 2xx entry lets that request
    /// through, a 429 entry carries `Retry-After`.
    pub fail_next: Vec<u16>,
}

/// Why a [`Faults`] value was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultsError {
    /// A probability is not a number between 0 and 1.
    #[error("The field {field} must be a number between 0 and 1.")]
    RateOutOfRange {
        /// The name of the offending field.
        field: &'static str,
    },
    /// A scripted status is not an HTTP status code.
    #[error("The fail_next entry {status} is not an HTTP status code between 200 and 599.")]
    BadStatus {
        /// The offending entry.
        status: u16,
    },
}

impl Faults {
    /// Faults that answer exactly `statuses` to the next requests and nothing else.
    pub fn scripted(statuses: impl Into<Vec<u16>>) -> Self {
        Self {
            fail_next: statuses.into(),
            ..Self::default()
        }
    }

    /// Checks that every probability lies in 0..=1 and every scripted status is 200..=599.
    pub fn validate(&self) -> Result<(), FaultsError> {
        for (field, rate) in [
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("timeout_rate", self.timeout_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(FaultsError::RateOutOfRange { field });
            }
        }
        match self.fail_next.iter().find(|s| !(200..=599).contains(*s)) {
            Some(&status) => Err(FaultsError::BadStatus { status }),
            None => Ok(()),
        }
    }
}

/// Serializes a [`Duration`] as whole milliseconds.
mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `d` as whole milliseconds (saturating).
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads whole milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// What the gate decided for one request.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Pass,
    Status(u16),
    Hang(Duration),
}

/// The entry point of one simulated service: holds its [`Faults`] and counts its requests.
#[derive(Debug)]
pub struct FaultGate {
    service: &'static str,
    faults: Mutex<Faults>,
    requests: AtomicU64,
}

impl FaultGate {
    /// A gate for the service named `service` (used in logs only), starting with `faults`.
    pub fn new(service: &'static str, faults: Faults) -> Self {
        Self {
            service,
            faults: Mutex::new(faults),
            requests: AtomicU64::new(0),
        }
    }

    /// Replaces the faults; takes effect from the next request on.
    pub fn set(&self, faults: Faults) {
        tracing::debug!(service = self.service, "faults replaced");
        *self.lock() = faults;
    }

    /// The faults now in force (with what remains of `fail_next`).
    pub fn get(&self) -> Faults {
        self.lock().clone()
    }

    /// How many requests reached the gate, faulted ones included.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts a request, waits the latency, and returns `Some(answer)` if the request is
    /// faulted, or `None` if the service should process it.
    pub async fn admit(&self) -> Option<Response> {
        let count = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let (verdict, latency, retry_after) = {
            let mut faults = self.lock();
            (decide(&mut faults), faults.latency, faults.retry_after)
        };
        tokio::time::sleep(latency).await;
        let status = match verdict {
            Verdict::Pass => return None,
            Verdict::Status(status) => status,
            Verdict::Hang(hang) => {
                tracing::debug!(
                    service = self.service,
                    count,
                    "holding request (injected timeout)"
                );
                tokio::time::sleep(hang).await;
                504
            }
        };
        tracing::debug!(service = self.service, count, status, "injected fault");
        Some(fault_response(status, retry_after))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        // A panic while holding this lock cannot leave `Faults` half-written, so a poisoned
        // lock is still safe to use.
        self.faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn decide(faults: &mut Faults) -> Verdict {
    if faults.outage {
        return Verdict::Status(503);
    }
    if !faults.fail_next.is_empty() {
        let status = faults.fail_next.remove(0);
        return if (200..300).contains(&status) {
            Verdict::Pass
        } else {
            Verdict::Status(status)
        };
    }
    let mut rng = rand::rng();
    if rng.random::<f64>() < faults.timeout_rate {
        Verdict::Hang(faults.hang)
    } else if rng.random::<f64>() < faults.rate_limit_rate {
        Verdict::Status(429)
    } else if rng.random::<f64>() < faults.error_rate {
        Verdict::Status(503)
    } else {
        Verdict::Pass
    }
}

/// `Retry-After` in whole seconds: `retry_after` rounded up, at least 1.
fn retry_after_seconds(retry_after: Duration) -> u64 {
    let rounded_up = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    rounded_up.max(1)
}

fn fault_response(status: u16, retry_after: Duration) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = Json(json!({ "error": format!("Injected fault: {code}.") }));
    let mut response = (code, body).into_response();
    if code == StatusCode::TOO_MANY_REQUESTS {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_seconds(retry_after)),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_faults_let_every_request_through() {
        let mut faults = Faults::default();
        for _ in 0..100 {
            assert_eq!(decide(&mut faults), Verdict::Pass);
        }
    }

    #[test]
    fn scripted_statuses_are_answered_in_order_and_then_requests_pass() {
        let mut faults = Faults::scripted([503, 200, 429]);
        assert_eq!(decide(&mut faults), Verdict::Status(503));
        assert_eq!(decide(&mut faults), Verdict::Pass);
        assert_eq!(decide(&mut faults), Verdict::Status(429));
        assert_eq!(decide(&mut faults), Verdict::Pass);
        assert!(faults.fail_next.is_empty());
    }

    #[test]
    fn an_outage_wins_and_leaves_the_script_untouched() {
        let mut faults = Faults {
            outage: true,
            ..Faults::scripted([429])
        };
        assert_eq!(decide(&mut faults), Verdict::Status(503));
        assert_eq!(faults.fail_next, vec![429]);
    }

    #[test]
    fn certain_rates_always_fault() {
        let hang = Duration::from_millis(5);
        let mut timeouts = Faults {
            timeout_rate: 1.0,
            hang,
            ..Faults::default()
        };
        let mut limits = Faults {
            rate_limit_rate: 1.0,
            ..Faults::default()
        };
        let mut errors = Faults {
            error_rate: 1.0,
            ..Faults::default()
        };
        assert_eq!(decide(&mut timeouts), Verdict::Hang(hang));
        assert_eq!(decide(&mut limits), Verdict::Status(429));
        assert_eq!(decide(&mut errors), Verdict::Status(503));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(200)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn a_429_fault_carries_retry_after() {
        let response = fault_response(429, Duration::from_secs(7));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let response = fault_response(503, Duration::from_secs(7));
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn faults_serialize_durations_as_milliseconds_and_round_trip() {
        let faults = Faults {
            latency: Duration::from_millis(250),
            retry_after: Duration::from_secs(3),
            hang: Duration::from_millis(900),
            error_rate: 0.25,
            fail_next: vec![503, 429],
            ..Faults::default()
        };
        let value = serde_json::to_value(&faults).unwrap();
        assert_eq!(value["latency_ms"], 250);
        assert_eq!(value["retry_after_ms"], 3000);
        assert_eq!(value["hang_ms"], 900);
        let back: Faults = serde_json::from_value(value).unwrap();
        assert_eq!(back, faults);
    }

    #[test]
    fn missing_fields_default_and_unknown_fields_are_refused() {
        let faults: Faults = serde_json::from_str(r#"{"outage": true}"#).unwrap();
        assert_eq!(
            faults,
            Faults {
                outage: true,
                ..Faults::default()
            }
        );
        assert!(serde_json::from_str::<Faults>(r#"{"latency": 5}"#).is_err());
    }

    #[test]
    fn validation_refuses_rates_outside_zero_to_one_and_unknown_statuses() {
        let rate = Faults {
            error_rate: 1.5,
            ..Faults::default()
        };
        assert_eq!(
            rate.validate(),
            Err(FaultsError::RateOutOfRange {
                field: "error_rate"
            })
        );
        let nan = Faults {
            timeout_rate: f64::NAN,
            ..Faults::default()
        };
        assert!(nan.validate().is_err());
        assert_eq!(
            Faults::scripted([503, 42]).validate(),
            Err(FaultsError::BadStatus { status: 42 })
        );
        assert_eq!(Faults::scripted([503, 200, 429]).validate(), Ok(()));
    }

    #[tokio::test]
    async fn the_gate_counts_faulted_and_passed_requests() {
        let gate = FaultGate::new("test", Faults::scripted([503]));
        let first = gate.admit().await.map(|r| r.status());
        let second = gate.admit().await.map(|r| r.status());
        assert_eq!(first, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(second, None);
        assert_eq!(gate.requests(), 2);
    }
}
