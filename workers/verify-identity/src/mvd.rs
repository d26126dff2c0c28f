//! The client of MVD data verification: `POST {MVD_URL}/v1/person-verifications` with the
//! applicant's data, keyed by `Idempotency-Key: <application_id>`, and what its answer means
//! for the step (CONTRACT §5): a verdict ([`MvdAnswer`]), or a transient or permanent
//! [`StepError`].
//!
//! What to do with a verdict (approve, reject, ask the clerk) is left to the step that calls
//! it; timeouts and the user agent come from the shared `uidflow::http::client`. Personal
//! data never reaches an error message, a log line or a `Debug` output from here.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use uidflow::http::{classify_status, retry_after, transport_error};
use uidflow::runtime::StepError;

/// The service name in error messages and traces.
const SERVICE: &str = "mvd";

/// What MVD is asked to verify. Its `Debug` shows the `request_id` only.
#[derive(Clone, Serialize)]
pub struct PersonVerification {
    /// Our id of this request, for MVD's logs and ours.
    pub request_id: Uuid,
    /// The identification number in the passport.
    pub identification_number: String,
    /// Surname, as in the document.
    pub surname: String,
    /// Given name, as in the document.
    pub given_name: String,
    /// Patronymic, when the person has one (`null` on the wire otherwise).
    pub patronymic: Option<String>,
    /// Date of birth, `YYYY-MM-DD`.
    pub date_of_birth: String,
    /// The identity document presented.
    pub document: Document,
}

impl fmt::Debug for PersonVerification {
    /// Only the request id: everything else is personal data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersonVerification")
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

/// An identity document. Its `Debug` shows the kind only, never the number.
#[derive(Clone, Serialize)]
pub struct Document {
    /// The document's kind, as MVD names it (`type` on the wire).
    #[serde(rename = "type")]
    pub kind: String,
    /// The document's number.
    pub number: String,
}

impl fmt::Debug for Document {
    /// Only the kind: the number is personal data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Document")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// MVD's verdict on a [`PersonVerification`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MvdAnswer {
    /// The data match MVD's records.
    Match,
    /// The person exists but these fields (names of fields, as MVD gives them) differ.
    Mismatch {
        /// Which fields differ.
        fields: Vec<String>,
    },
    /// MVD has no such person.
    NotFound,
    /// The document cannot be used: `expired`, `lost` or `revoked` (or a reason MVD adds later).
    DocumentInvalid {
        /// Why, as MVD says it.
        reason: String,
    },
}

/// A 200 answer's body as it is on the wire.
#[derive(Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
enum WireAnswer {
    Match,
    Mismatch { fields: Vec<String> },
    NotFound,
    DocumentInvalid { reason: String },
}

impl From<WireAnswer> for MvdAnswer {
    fn from(answer: WireAnswer) -> Self {
        match answer {
            WireAnswer::Match => MvdAnswer::Match,
            WireAnswer::Mismatch { fields } => MvdAnswer::Mismatch { fields },
            WireAnswer::NotFound => MvdAnswer::NotFound,
            WireAnswer::DocumentInvalid { reason } => MvdAnswer::DocumentInvalid { reason },
        }
    }
}

/// The client of MVD data verification; cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct MvdClient {
    url: String,
    client: reqwest::Client,
}

impl MvdClient {
    /// A client of the service at `base_url` (`MVD_URL`, with or without a trailing `/`),
    /// calling it through `client` (build it with `uidflow::http::client`).
    pub fn new(base_url: &str, client: reqwest::Client) -> Self {
        let url = format!("{}/v1/person-verifications", base_url.trim_end_matches('/'));
        MvdClient { url, client }
    }

    /// Asks MVD to verify `request` for the application `application_id` (the idempotency
    /// key, so a retry is not a second verification). 429, 5xx, timeouts and connection
    /// errors are transient; any other 4xx and an unreadable 200 are permanent.
    #[tracing::instrument(skip_all, fields(service = "mvd"))]
    pub async fn verify(
        &self,
        application_id: Uuid,
        request: &PersonVerification,
    ) -> Result<MvdAnswer, StepError> {
        let call = self
            .client
            .post(&self.url)
            .header("Idempotency-Key", application_id.to_string())
            .json(request);
        let response = uidflow::trace::propagate(call)
            .send()
            .await
            .map_err(|error| transport_error(SERVICE, error))?;
        let status = response.status().as_u16();
        let wait = retry_after(response.headers());
        tracing::debug!(status, request_id = %request.request_id, "mvd answered");
        // Only a 2xx body means anything; the others are settled by their status.
        let body = if response.status().is_success() {
            response
                .bytes()
                .await
                .map_err(|error| transport_error(SERVICE, error))?
        } else {
            Default::default()
        };
        classify(status, wait, &body)
    }
}

/// What an MVD answer (status, `Retry-After`, body) means: a verdict for a 2xx with a readable
/// body, otherwise the shared rule of `uidflow::http::classify_status`. An unreadable 2xx
/// body (not JSON, not an object, an unknown `result`, a missing field) is permanent, and it
/// is never quoted.
pub fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<MvdAnswer, StepError> {
    if let Some(error) = classify_status(SERVICE, status, retry_after) {
        return Err(error);
    }
    // An object with a known `result` only (serde would also take `["match"]`); serde_json's
    // messages may quote the body, which may hold personal data, so none is passed on.
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .filter(serde_json::Value::is_object)
        .and_then(|answer| serde_json::from_value::<WireAnswer>(answer).ok())
        .map(MvdAnswer::from)
        .ok_or_else(|| {
            StepError::permanent(anyhow::anyhow!(
                "{SERVICE} answered {status}: unreadable answer"
            ))
        })
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, sync::Arc};

    use axum::{
        Json, Router,
        http::{HeaderMap, StatusCode, header},
        response::{IntoResponse, Response},
        routing::post,
    };
    use tokio::sync::Mutex;

    use super::*;
    use uidflow::http::client;

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

    fn person() -> PersonVerification {
        PersonVerification {
            request_id: Uuid::new_v4(),
            identification_number: "3140585A001PB5".to_owned(),
            surname: "Kupala".to_owned(),
            given_name: "Yanka".to_owned(),
            patronymic: None,
            date_of_birth: "1982-07-07".to_owned(),
            document: Document {
                kind: "passport".to_owned(),
                number: "MP1234567".to_owned(),
            },
        }
    }

    /// The personal data in [`person`], none of which may show up in a message or `Debug`.
    const PERSONAL: [&str; 5] = [
        "3140585A001PB5",
        "Kupala",
        "Yanka",
        "1982-07-07",
        "MP1234567",
    ];

    /// What the test server saw of each request: the Idempotency-Key and the JSON body.
    type Seen = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

    /// An MVD stand-in answering every request with `answer`, recording what it was sent.
    async fn mvd(
        answer: impl Fn() -> Response + Clone + Send + Sync + 'static,
    ) -> (MvdClient, Seen) {
        let seen = Seen::default();
        let record = seen.clone();
        let router = Router::new().route(
            "/v1/person-verifications",
            post(
                move |headers: HeaderMap, Json(body): Json<serde_json::Value>| {
                    let (record, answer) = (record.clone(), answer.clone());
                    async move {
                        let key = headers
                            .get("idempotency-key")
                            .map(|v| v.to_str().unwrap().to_owned());
                        record.lock().await.push((key.unwrap_or_default(), body));
                        answer()
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let client = MvdClient::new(
            &format!("http://{address}/"),
            client(Duration::from_millis(500)),
        );
        (client, seen)
    }

    /// What an answer should come to: a verdict, or the kind of failure and its retry delay.
    type Expected = Result<MvdAnswer, (&'static str, Option<Duration>)>;

    #[test]
    fn answers_are_classified_by_status_and_body() {
        let wait = Some(Duration::from_secs(30));
        let ok = |answer: MvdAnswer| Ok::<_, (&str, Option<Duration>)>(answer);
        let cases: Vec<(u16, Option<Duration>, &str, Expected)> = vec![
            (200, None, r#"{"result":"match"}"#, ok(MvdAnswer::Match)),
            (
                200,
                None,
                r#"{"result":"match","checked_at":"2026-11-23"}"#,
                ok(MvdAnswer::Match),
            ),
            (
                200,
                None,
                r#"{"result":"mismatch","fields":["surname","date_of_birth"]}"#,
                ok(MvdAnswer::Mismatch {
                    fields: vec!["surname".into(), "date_of_birth".into()],
                }),
            ),
            (
                200,
                None,
                r#"{"result":"not_found"}"#,
                ok(MvdAnswer::NotFound),
            ),
            (
                200,
                None,
                r#"{"result":"document_invalid","reason":"expired"}"#,
                ok(MvdAnswer::DocumentInvalid {
                    reason: "expired".into(),
                }),
            ),
            (
                200,
                None,
                r#"{"result":"document_invalid","reason":"lost"}"#,
                ok(MvdAnswer::DocumentInvalid {
                    reason: "lost".into(),
                }),
            ),
            (
                200,
                None,
                r#"{"result":"document_invalid","reason":"revoked"}"#,
                ok(MvdAnswer::DocumentInvalid {
                    reason: "revoked".into(),
                }),
            ),
            (429, wait, "", Err(("transient", wait))),
            (429, None, "slow down", Err(("transient", None))),
            (500, None, "", Err(("transient", None))),
            (503, wait, "", Err(("transient", wait))),
            (
                400,
                None,
                r#"{"error":"bad_request"}"#,
                Err(("permanent", None)),
            ),
            (404, None, "", Err(("permanent", None))),
            (422, None, "", Err(("permanent", None))),
            (200, None, "<html>ok</html>", Err(("permanent", None))),
            (200, None, "", Err(("permanent", None))),
            (200, None, r#"{"result":"maybe"}"#, Err(("permanent", None))),
            (
                200,
                None,
                r#"{"verdict":"match"}"#,
                Err(("permanent", None)),
            ),
            (
                200,
                None,
                r#"{"result":"mismatch"}"#,
                Err(("permanent", None)),
            ),
            (
                200,
                None,
                r#"{"result":"document_invalid"}"#,
                Err(("permanent", None)),
            ),
            (200, None, r#"["match"]"#, Err(("permanent", None))),
        ];
        for (status, retry_after, body, expected) in cases {
            let got = classify(status, retry_after, body.as_bytes()).map_err(|error| {
                let (kind, wait, _) = parts(&error);
                (kind, wait)
            });
            assert_eq!(got, expected, "{status} {body}");
        }
    }

    #[test]
    fn error_messages_name_the_status_but_never_quote_the_body() {
        let cases = [
            (404, r#"{"surname":"Kupala"}"#, "mvd answered 404"),
            (503, "Kupala", "mvd answered 503"),
            (
                200,
                r#"{"result":"mismatch","fields":"Kupala"}"#,
                "mvd answered 200: unreadable answer",
            ),
            (
                200,
                r#"{"result":"Kupala"}"#,
                "mvd answered 200: unreadable answer",
            ),
            (200, "Kupala", "mvd answered 200: unreadable answer"),
        ];
        for (status, body, start) in cases {
            let (_, _, message) = parts(&classify(status, None, body.as_bytes()).unwrap_err());
            assert!(message.starts_with(start), "{message}");
            assert!(!message.contains("Kupala"), "{message}");
        }
    }

    #[test]
    fn debug_shows_the_request_id_and_no_personal_data() {
        let person = person();
        let shown = format!("{person:?} {:?} {person:#?}", person.document);
        assert!(shown.contains(&person.request_id.to_string()), "{shown}");
        assert!(shown.contains("passport"), "{shown}");
        for value in PERSONAL {
            assert!(!shown.contains(value), "{value} in {shown}");
        }
    }

    #[tokio::test]
    async fn a_verification_is_posted_with_its_idempotency_key_and_the_contract_body() {
        let (mvd, seen) =
            mvd(|| Json(serde_json::json!({"result": "match"})).into_response()).await;
        let application_id = Uuid::new_v4();
        let mut person = person();
        assert_eq!(
            mvd.verify(application_id, &person).await.unwrap(),
            MvdAnswer::Match
        );
        person.patronymic = Some("Dominikovich".to_owned());
        mvd.verify(application_id, &person).await.unwrap();

        let seen = seen.lock().await;
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].0, application_id.to_string());
        assert_eq!(
            seen[0].1,
            serde_json::json!({
                "request_id": person.request_id,
                "identification_number": "3140585A001PB5",
                "surname": "Kupala",
                "given_name": "Yanka",
                "patronymic": null,
                "date_of_birth": "1982-07-07",
                "document": {"type": "passport", "number": "MP1234567"},
            })
        );
        assert_eq!(seen[1].1["patronymic"], "Dominikovich");
    }

    #[tokio::test]
    async fn verdicts_come_back_over_http() {
        let cases = [
            (
                serde_json::json!({"result": "not_found"}),
                MvdAnswer::NotFound,
            ),
            (
                serde_json::json!({"result": "mismatch", "fields": ["given_name"]}),
                MvdAnswer::Mismatch {
                    fields: vec!["given_name".into()],
                },
            ),
            (
                serde_json::json!({"result": "document_invalid", "reason": "revoked"}),
                MvdAnswer::DocumentInvalid {
                    reason: "revoked".into(),
                },
            ),
        ];
        for (body, expected) in cases {
            let (mvd, _) = mvd(move || Json(body.clone()).into_response()).await;
            assert_eq!(
                mvd.verify(Uuid::new_v4(), &person()).await.unwrap(),
                expected
            );
        }
    }

    #[tokio::test]
    async fn too_many_requests_is_transient_with_its_retry_after() {
        let (mvd, _) =
            mvd(|| (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "7")]).into_response())
                .await;
        let error = mvd.verify(Uuid::new_v4(), &person()).await.unwrap_err();
        let (kind, wait, message) = parts(&error);
        assert_eq!((kind, wait), ("transient", Some(Duration::from_secs(7))));
        assert_eq!(message, "mvd answered 429");
    }

    #[tokio::test]
    async fn a_client_error_and_an_unreadable_answer_are_permanent() {
        let cases: [fn() -> Response; 2] = [
            || StatusCode::NOT_FOUND.into_response(),
            || (StatusCode::OK, "Kupala Yanka").into_response(),
        ];
        for answer in cases {
            let (mvd, _) = mvd(answer).await;
            let (kind, _, message) =
                parts(&mvd.verify(Uuid::new_v4(), &person()).await.unwrap_err());
            assert_eq!(kind, "permanent", "{message}");
            for value in PERSONAL {
                assert!(!message.contains(value), "{value} in {message}");
            }
        }
    }

    #[tokio::test]
    async fn a_slow_mvd_is_a_transient_timeout() {
        let router = Router::new().route(
            "/v1/person-verifications",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let mvd = MvdClient::new(
            &format!("http://{address}"),
            client(Duration::from_millis(200)),
        );
        let (kind, _, message) = parts(&mvd.verify(Uuid::new_v4(), &person()).await.unwrap_err());
        assert_eq!(kind, "transient");
        assert!(message.starts_with("calling mvd: timed out"), "{message}");
    }

    #[tokio::test]
    async fn an_unreachable_mvd_is_transient() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let mvd = MvdClient::new(&format!("http://{address}"), client(Duration::from_secs(2)));
        let (kind, _, message) = parts(&mvd.verify(Uuid::new_v4(), &person()).await.unwrap_err());
        assert_eq!(kind, "transient");
        assert!(
            message.starts_with("calling mvd: could not connect"),
            "{message}"
        );
    }
}
