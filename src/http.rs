//! The HTTP plumbing every client of an outside service shares: how the `reqwest::Client` is
//! built (timeouts, user agent, no redirects), how `Retry-After` is read, and the rule of
//! CONTRACT §5 that turns a transport error or an HTTP status into a transient or permanent
//! [`StepError`].
//!
//! It leaves to each client (MVD, SMS gateway) its URL, its request body and what a 2xx answer
//! means: [`classify_status`] answers `None` for a 2xx and the caller reads the body.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::runtime::StepError;

/// The longest wait a `Retry-After` may ask for; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// A client for calling outside services: `timeout` bounds the whole request (connect, send,
/// answer) and the connect alone, the user agent is `uidflow/<version>`, and redirects are
/// not followed (a 3xx comes back to the caller as it is).
///
/// It installs rustls' `ring` crypto provider as the process default when none is installed
/// yet: the workspace builds reqwest with `rustls-no-provider`.
///
/// # Panics
///
/// When the TLS backend cannot be set up, which is a build or platform defect, not something
/// a caller can handle.
pub fn client(timeout: Duration) -> reqwest::Client {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("uidflow/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the http client builds with a tls backend")
}

/// How long the other side asked us to wait, from `Retry-After` as delta-seconds or as an
/// HTTP-date (IMF-fixdate, RFC 850 or asctime form). A date in the past is zero; anything
/// longer than [`MAX_RETRY_AFTER`] is cut to it; a missing or unreadable header is `None`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, Utc::now())
}

/// [`retry_after`] with the current time given, so that dates can be tested.
fn retry_after_at(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: a number too large for u64 is "very long", so it is cut below.
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = http_date(value)?;
        (at - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// An HTTP-date (RFC 9110 §5.6.7) in any of its three forms, always GMT.
fn http_date(value: &str) -> Option<DateTime<Utc>> {
    const FORMATS: [&str; 3] = [
        "%a, %d %b %Y %H:%M:%S GMT", // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        "%A, %d-%b-%y %H:%M:%S GMT", // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        "%a %b %e %H:%M:%S %Y",      // asctime: Sun Nov  6 08:49:37 1994
    ];
    FORMATS
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
        .map(|naive| naive.and_utc())
}

/// A failure to get an answer from `service` at all, as a [`StepError`]: timeouts, connect
/// errors and errors on the wire are transient; an error building the request (a bad URL, a
/// body that does not serialize) or decoding the answer is permanent. The message reads like
/// "calling mvd: timed out"; the URL is left out of it.
pub fn transport_error(service: &'static str, error: reqwest::Error) -> StepError {
    let (what, transient) = if error.is_timeout() {
        ("timed out", true)
    } else if error.is_connect() {
        ("could not connect", true)
    } else if error.is_builder() {
        ("could not build the request", false)
    } else if error.is_decode() {
        ("unreadable answer", false)
    } else if error.is_body() {
        ("broken answer body", true)
    } else {
        ("request failed", true)
    };
    let source =
        anyhow::Error::new(error.without_url()).context(format!("calling {service}: {what}"));
    if transient {
        StepError::transient(source)
    } else {
        StepError::permanent(source)
    }
}

/// The shared rule of CONTRACT §5 for an HTTP status from `service`: 429 and 5xx are transient
/// and carry `retry_after`; any other 4xx is permanent ("mvd answered 404"); a 2xx is `None`
/// and the caller reads the body. Redirects are not followed, so a 1xx or 3xx (or a status
/// outside 100–599) is permanent too: retrying the same request cannot change it.
pub fn classify_status(
    service: &'static str,
    status: u16,
    retry_after: Option<Duration>,
) -> Option<StepError> {
    match status {
        200..=299 => None,
        429 | 500..=599 => Some(StepError::Transient {
            source: anyhow::anyhow!("{service} answered {status}"),
            retry_after,
        }),
        _ => Some(StepError::permanent(anyhow::anyhow!(
            "{service} answered {status}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::{
        Router,
        http::{HeaderMap as AxumHeaders, StatusCode, header},
        response::IntoResponse,
        routing::get,
    };
    use reqwest::header::HeaderValue;

    use super::*;

    /// "transient"/"permanent", the retry delay and the message of a step error.
    fn parts(error: &StepError) -> (&'static str, Option<Duration>, String) {
        match error {
            StepError::Transient {
                source,
                retry_after,
            } => ("transient", *retry_after, format!("{source:#}")),
            StepError::Permanent(source) => ("permanent", None, format!("{source:#}")),
        }
    }

    async fn serve(router: Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        address
    }

    /// What a status should come to: kind, retry delay and message, or nothing for a 2xx.
    type Expected = Option<(&'static str, Option<Duration>, &'static str)>;

    #[test]
    fn statuses_are_classified_by_the_shared_rule() {
        let wait = Some(Duration::from_secs(7));
        let cases: [(u16, Option<Duration>, Expected); 12] = [
            (200, None, None),
            (202, None, None),
            (204, wait, None),
            (429, wait, Some(("transient", wait, "mvd answered 429"))),
            (429, None, Some(("transient", None, "mvd answered 429"))),
            (500, None, Some(("transient", None, "mvd answered 500"))),
            (503, wait, Some(("transient", wait, "mvd answered 503"))),
            (400, wait, Some(("permanent", None, "mvd answered 400"))),
            (404, None, Some(("permanent", None, "mvd answered 404"))),
            (409, None, Some(("permanent", None, "mvd answered 409"))),
            (302, None, Some(("permanent", None, "mvd answered 302"))),
            (600, None, Some(("permanent", None, "mvd answered 600"))),
        ];
        for (status, retry_after, expected) in cases {
            let got = classify_status("mvd", status, retry_after);
            let got = got.as_ref().map(parts);
            let got = got
                .as_ref()
                .map(|(kind, wait, message)| (*kind, *wait, message.as_str()));
            assert_eq!(got, expected, "status {status}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped_at_an_hour() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let secs = |s: u64| Some(Duration::from_secs(s));
        let cases: [(Option<&str>, Option<Duration>); 14] = [
            (None, None),
            (Some("120"), secs(120)),
            (Some("0"), secs(0)),
            (Some(" 5 "), secs(5)),
            (Some("3600"), secs(3600)),
            (Some("7200"), secs(3600)),
            (Some("99999999999999999999999"), secs(3600)),
            (Some("Mon, 23 Nov 2026 12:00:30 GMT"), secs(30)),
            (Some("Monday, 23-Nov-26 12:01:00 GMT"), secs(60)),
            (Some("Mon Nov 23 12:00:10 2026"), secs(10)),
            (Some("Sun, 06 Nov 1994 08:49:37 GMT"), secs(0)),
            (Some("Tue, 24 Nov 2026 12:00:00 GMT"), secs(3600)),
            (Some("-5"), None),
            (Some("soon"), None),
        ];
        for (value, expected) in cases {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
            }
            assert_eq!(
                retry_after_at(&headers, now),
                expected,
                "Retry-After {value:?}"
            );
        }
    }

    #[test]
    fn retry_after_uses_the_current_time_for_dates() {
        let mut headers = HeaderMap::new();
        let in_a_minute =
            (Utc::now() + chrono::Duration::seconds(60)).format("%a, %d %b %Y %H:%M:%S GMT");
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&in_a_minute.to_string()).unwrap(),
        );
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
    }

    #[tokio::test]
    async fn the_client_sends_its_user_agent_and_does_not_follow_redirects() {
        let router = Router::new()
            .route(
                "/agent",
                get(|headers: AxumHeaders| async move {
                    headers
                        .get(header::USER_AGENT)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_owned()
                }),
            )
            .route(
                "/moved",
                get(|| async {
                    (StatusCode::FOUND, [(header::LOCATION, "/agent")]).into_response()
                }),
            );
        let address = serve(router).await;
        let client = client(Duration::from_secs(5));

        let agent = client
            .get(format!("http://{address}/agent"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            agent.text().await.unwrap(),
            format!("uidflow/{}", env!("CARGO_PKG_VERSION"))
        );

        let moved = client
            .get(format!("http://{address}/moved"))
            .send()
            .await
            .unwrap();
        assert_eq!(moved.status().as_u16(), 302);
    }

    #[tokio::test]
    async fn a_timeout_is_transient_and_says_so() {
        let router = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
        let address = serve(router).await;
        let error = client(Duration::from_millis(200))
            .get(format!("http://{address}/slow"))
            .send()
            .await
            .unwrap_err();
        let (kind, _, message) = parts(&transport_error("mvd", error));
        assert_eq!(kind, "transient");
        assert!(message.starts_with("calling mvd: timed out"), "{message}");
        assert!(
            !message.contains("127.0.0.1"),
            "the url is left out: {message}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_transient() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let error = client(Duration::from_secs(2))
            .get(format!("http://{address}/"))
            .send()
            .await
            .unwrap_err();
        let (kind, _, message) = parts(&transport_error("sms", error));
        assert_eq!(kind, "transient");
        assert!(
            message.starts_with("calling sms: could not connect"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_built_is_permanent() {
        let error = client(Duration::from_secs(2))
            .get("not a url")
            .send()
            .await
            .unwrap_err();
        let (kind, _, message) = parts(&transport_error("mvd", error));
        assert_eq!(kind, "permanent");
        assert!(
            message.starts_with("calling mvd: could not build the request"),
            "{message}"
        );
    }
}
