//! The client of the SMS gateway: `POST {SMS_URL}/v1/messages` with a message id, a phone
//! number and a text, and what the gateway's answer means for the step (CONTRACT §5). The
//! gateway deduplicates on the message id, so a retry with the same id never sends twice, and
//! "already accepted" (409) is a success.
//!
//! Writing the texts is left to `texts`, choosing the message id (stable per notification) to
//! the caller. Phone numbers and texts never reach an error message or a log line from here.

pub mod texts;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::http::{classify_status, retry_after, transport_error};
use crate::runtime::StepError;

/// The service name in error messages and traces.
const SERVICE: &str = "sms";

/// The gateway took the message: either now, or it already had it (a retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsAccepted {
    /// Accepted now (202).
    Accepted,
    /// Accepted by an earlier call with the same message id (409).
    AlreadyAccepted,
}

/// The request body on the wire.
#[derive(Serialize)]
struct Message<'a> {
    message_id: Uuid,
    phone: &'a str,
    text: &'a str,
}

/// A 2xx answer's body on the wire.
#[derive(Deserialize)]
struct AcceptedBody {
    #[allow(dead_code)] // read to check the answer's shape only
    message_id: Uuid,
    status: String,
}

/// A 400 answer's body on the wire.
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// The client of the SMS gateway; cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct SmsClient {
    url: String,
    client: reqwest::Client,
}

impl SmsClient {
    /// A client of the gateway at `base_url` (`SMS_URL`, with or without a trailing `/`),
    /// calling it through `client` (build it with `crate::http::client`).
    pub fn new(base_url: &str, client: reqwest::Client) -> Self {
        let url = format!("{}/v1/messages", base_url.trim_end_matches('/'));
        SmsClient { url, client }
    }

    /// Sends `text` to `phone` (`+375…`) as the message `message_id`. 202 and 409 are
    /// successes; 429, 5xx, timeouts and connection errors are transient; a 400 (naming the
    /// gateway's error code), any other 4xx and an unreadable 2xx are permanent.
    #[tracing::instrument(skip_all, fields(service = "sms", %message_id))]
    pub async fn send(
        &self,
        message_id: Uuid,
        phone: &str,
        text: &str,
    ) -> Result<SmsAccepted, StepError> {
        let started = std::time::Instant::now();
        let result = self.send_once(message_id, phone, text).await;
        crate::telemetry::observe_call(SERVICE, started, &result);
        crate::breaker::note_call(&result);
        result
    }

    async fn send_once(
        &self,
        message_id: Uuid,
        phone: &str,
        text: &str,
    ) -> Result<SmsAccepted, StepError> {
        let request = self.client.post(&self.url).json(&Message {
            message_id,
            phone,
            text,
        });
        let response = crate::trace::propagate(request)
            .send()
            .await
            .map_err(|error| transport_error(SERVICE, error))?;
        let status = response.status();
        let wait = retry_after(response.headers());
        tracing::debug!(status = status.as_u16(), "sms gateway answered");
        let body = if status.is_success() {
            response
                .bytes()
                .await
                .map_err(|error| transport_error(SERVICE, error))?
        } else if status.as_u16() == 400 {
            // The body only names the error code; without it the 400 is still permanent.
            response.bytes().await.unwrap_or_default()
        } else {
            Default::default()
        };
        classify(status.as_u16(), wait, &body)
    }
}

/// What a gateway answer (status, `Retry-After`, body) means: a 2xx with
/// `{"message_id", "status": "accepted"}` is [`SmsAccepted::Accepted`], a 409 is
/// [`SmsAccepted::AlreadyAccepted`], a 400 is permanent and names the gateway's error code
/// (`invalid_phone`, …) when it is a plain code; the rest follows
/// `crate::http::classify_status`. An unreadable 2xx body is permanent ("unreadable
/// answer"); bodies are never quoted.
pub fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<SmsAccepted, StepError> {
    match status {
        409 => Ok(SmsAccepted::AlreadyAccepted),
        400 => {
            let code = serde_json::from_slice::<ErrorBody>(body)
                .ok()
                .map(|body| body.error)
                .filter(|code| is_plain_code(code));
            Err(StepError::permanent(match code {
                Some(code) => anyhow::anyhow!("{SERVICE} answered 400: {code}"),
                None => anyhow::anyhow!("{SERVICE} answered 400"),
            }))
        }
        _ => {
            if let Some(error) = classify_status(SERVICE, status, retry_after) {
                return Err(error);
            }
            match serde_json::from_slice::<AcceptedBody>(body) {
                Ok(answer) if answer.status == "accepted" => Ok(SmsAccepted::Accepted),
                _ => Err(StepError::permanent(anyhow::anyhow!(
                    "{SERVICE} answered {status}: unreadable answer"
                ))),
            }
        }
    }
}

/// Whether a gateway error code is safe to repeat: short, only lower case letters and `_` (so
/// a gateway that puts the phone number, or any digits, in its error does not put them in our
/// logs).
fn is_plain_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, sync::Arc};

    use axum::{
        Json, Router,
        http::{StatusCode, header},
        response::{IntoResponse, Response},
        routing::post,
    };
    use tokio::sync::Mutex;

    use super::*;
    use crate::http::client;

    const PHONE: &str = "+375291234567";
    const TEXT: &str = "Portal UID: to confirm this phone, give the clerk the code 482913.";

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

    async fn gateway(router: Router) -> SmsClient {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        SmsClient::new(
            &format!("http://{address}/"),
            client(Duration::from_millis(500)),
        )
    }

    /// A gateway answering every message with `answer`.
    async fn answering(answer: fn() -> Response) -> SmsClient {
        gateway(Router::new().route("/v1/messages", post(move || async move { answer() }))).await
    }

    /// What an answer should come to: a success, or the kind of failure, its retry delay and
    /// message.
    type Expected = Result<SmsAccepted, (&'static str, Option<Duration>, &'static str)>;

    #[test]
    fn answers_are_classified_by_status_and_body() {
        let wait = Some(Duration::from_secs(12));
        let id = Uuid::nil();
        let accepted = format!(r#"{{"message_id":"{id}","status":"accepted"}}"#);
        let cases: Vec<(u16, Option<Duration>, &str, Expected)> = vec![
            (202, None, &accepted, Ok(SmsAccepted::Accepted)),
            (200, None, &accepted, Ok(SmsAccepted::Accepted)),
            (409, None, "", Ok(SmsAccepted::AlreadyAccepted)),
            (409, None, &accepted, Ok(SmsAccepted::AlreadyAccepted)),
            (
                400,
                None,
                r#"{"error":"invalid_phone"}"#,
                Err(("permanent", None, "sms answered 400: invalid_phone")),
            ),
            (
                400,
                None,
                r#"{"error":"text_too_long"}"#,
                Err(("permanent", None, "sms answered 400: text_too_long")),
            ),
            (
                400,
                None,
                r#"{"error":"bad phone +375291234567"}"#,
                Err(("permanent", None, "sms answered 400")),
            ),
            (400, None, "", Err(("permanent", None, "sms answered 400"))),
            (429, wait, "", Err(("transient", wait, "sms answered 429"))),
            (500, None, "", Err(("transient", None, "sms answered 500"))),
            (503, wait, "", Err(("transient", wait, "sms answered 503"))),
            (403, None, "", Err(("permanent", None, "sms answered 403"))),
            (404, None, "", Err(("permanent", None, "sms answered 404"))),
            (
                202,
                None,
                "",
                Err(("permanent", None, "sms answered 202: unreadable answer")),
            ),
            (
                202,
                None,
                "queued",
                Err(("permanent", None, "sms answered 202: unreadable answer")),
            ),
            (
                202,
                None,
                r#"{"message_id":"00000000-0000-0000-0000-000000000000","status":"rejected"}"#,
                Err(("permanent", None, "sms answered 202: unreadable answer")),
            ),
            (
                202,
                None,
                r#"{"status":"accepted"}"#,
                Err(("permanent", None, "sms answered 202: unreadable answer")),
            ),
        ];
        for (status, retry_after, body, expected) in cases {
            let got = classify(status, retry_after, body.as_bytes()).map_err(|error| parts(&error));
            let got = got
                .as_ref()
                .copied()
                .map_err(|(kind, wait, message)| (*kind, *wait, message.as_str()));
            assert_eq!(got, expected, "{status} {body}");
        }
    }

    #[tokio::test]
    async fn a_message_is_posted_once_and_its_retry_is_already_accepted() {
        let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let record = seen.clone();
        let router = Router::new().route(
            "/v1/messages",
            post(move |Json(body): Json<serde_json::Value>| {
                let record = record.clone();
                async move {
                    let mut seen = record.lock().await;
                    let ids: HashSet<_> = seen.iter().map(|m| m["message_id"].clone()).collect();
                    let duplicate = ids.contains(&body["message_id"]);
                    seen.push(body.clone());
                    if duplicate {
                        StatusCode::CONFLICT.into_response()
                    } else {
                        let answer = serde_json::json!({"message_id": body["message_id"], "status": "accepted"});
                        (StatusCode::ACCEPTED, Json(answer)).into_response()
                    }
                }
            }),
        );
        let sms = gateway(router).await;
        let message_id = Uuid::new_v4();
        assert_eq!(
            sms.send(message_id, PHONE, TEXT).await.unwrap(),
            SmsAccepted::Accepted
        );
        assert_eq!(
            sms.send(message_id, PHONE, TEXT).await.unwrap(),
            SmsAccepted::AlreadyAccepted
        );

        let seen = seen.lock().await;
        assert_eq!(
            seen[0],
            serde_json::json!({"message_id": message_id, "phone": PHONE, "text": TEXT})
        );
        assert_eq!(seen[1], seen[0], "the retry is the same message");
    }

    /// A gateway's answer, and the kind, retry delay and message of the failure it comes to.
    type Case = (
        fn() -> Response,
        &'static str,
        Option<Duration>,
        &'static str,
    );

    #[tokio::test]
    async fn failures_over_http_are_classified_without_the_phone_or_the_text() {
        let cases: [Case; 5] = [
            (
                || {
                    (
                        StatusCode::BAD_REQUEST,
                        Json(serde_json::json!({"error": "invalid_phone"})),
                    )
                        .into_response()
                },
                "permanent",
                None,
                "sms answered 400: invalid_phone",
            ),
            (
                || {
                    (
                        StatusCode::BAD_REQUEST,
                        Json(serde_json::json!({"error": format!("no such {PHONE}")})),
                    )
                        .into_response()
                },
                "permanent",
                None,
                "sms answered 400",
            ),
            (
                || (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "3")]).into_response(),
                "transient",
                Some(Duration::from_secs(3)),
                "sms answered 429",
            ),
            (
                || StatusCode::BAD_GATEWAY.into_response(),
                "transient",
                None,
                "sms answered 502",
            ),
            (
                || (StatusCode::ACCEPTED, TEXT).into_response(),
                "permanent",
                None,
                "sms answered 202: unreadable answer",
            ),
        ];
        for (answer, kind, wait, message) in cases {
            let sms = answering(answer).await;
            let error = sms.send(Uuid::new_v4(), PHONE, TEXT).await.unwrap_err();
            assert_eq!(parts(&error), (kind, wait, message.to_owned()));
        }
    }

    #[tokio::test]
    async fn a_slow_gateway_is_a_transient_timeout() {
        let router = Router::new().route(
            "/v1/messages",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                StatusCode::ACCEPTED
            }),
        );
        let sms = gateway(router).await;
        let (kind, _, message) = parts(&sms.send(Uuid::new_v4(), PHONE, TEXT).await.unwrap_err());
        assert_eq!(kind, "transient");
        assert!(message.starts_with("calling sms: timed out"), "{message}");
        assert!(
            !message.contains(PHONE) && !message.contains("482913"),
            "{message}"
        );
    }
}
