//! Simulator of the MVD (Ministry of Internal Affairs) data verification service:
//! `POST {MVD_URL}/v1/person-verifications`.
//!
//! A request carries `{"request_id": "<uuid>", "identification_number", "surname",
//! "given_name", "patronymic" (string or null; the key must be present), "date_of_birth"
//! ("YYYY-MM-DD"), "document": {"type", "number"}}` and the header
//! `Idempotency-Key: <application_id>`. The answer is 200 with one of
//! `{"result": "match"}`, `{"result": "mismatch", "fields": [...]}`,
//! `{"result": "not_found"}` or `{"result": "document_invalid", "reason": "expired" | "lost" |
//! "revoked"}`; a wrong request (not JSON, a field missing, of the wrong type or empty, no
//! `Idempotency-Key`) answers 400 `{"error": "<plain sentence>"}`. Faults (see
//! [`super::faults`]) are applied before any of this, and a faulted request is not remembered.
//!
//! The answer to an `Idempotency-Key` is remembered: the same key always gets the first
//! answer given to it again, whatever the later request carries.
//!
//! # Deterministic test people
//!
//! The answer is chosen by the identification number alone: the other fields of the
//! request do not matter (a "mismatch" person answers mismatch even if the request carries
//! exactly the data below). Every well-formed request for any other person answers `match`.
//! All test numbers are valid, use region letter `Z` and sequence `9xx`, so they cannot
//! collide with ordinary examples. The same table is [`TEST_PEOPLE`].
//!
//! | name (surname given patronymic)  | identification number | date of birth | answer |
//! |----------------------------------|------------------------|---------------|--------|
//! | Kavaliou Ales Mikalaevich        | `3120785Z901PB9` | 1985-07-12 | `mismatch`, fields `["surname"]` |
//! | Sidarenka Hanna Ivanauna         | `4031192Z902PB6` | 1992-11-03 | `mismatch`, fields `["given_name", "date_of_birth"]` |
//! | Marozau Siarhei Piatrovich       | `5280201Z903PB7` | 2001-02-28 | `not_found` |
//! | Lukashevich Volha Andreeuna      | `4190578Z904PB6` | 1978-05-19 | `document_invalid`, reason `expired` |
//! | Bahdanovich Maksim (no patronymic) | `5090905Z905PB7` | 2005-09-09 | `document_invalid`, reason `lost` |
//! | Zhuk Katsiaryna Aliaksandrauna   | `4311269Z906PB4` | 1969-12-31 | `document_invalid`, reason `revoked` |
//! | Navumchyk Dzmitry Uladzimiravich | `3010190Z907PB1` | 1990-01-01 | `match` (an explicit happy path) |
//!
//! Each person holds passport `MP9000` + the sequence (e.g. `MP9000901`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::faults::{FaultGate, Faults};

/// Why MVD considers a document invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidReason {
    /// The document's validity has ended.
    Expired,
    /// The document was reported lost.
    Lost,
    /// The document was revoked.
    Revoked,
}

/// One answer of the verification service; serializes to the 200 body of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum MvdAnswer {
    /// The data matches MVD's records.
    Match,
    /// The person is known but the named request fields differ from MVD's records.
    Mismatch {
        /// The request fields that differ, e.g. `["surname"]`.
        fields: &'static [&'static str],
    },
    /// MVD has no person with this identification number.
    NotFound,
    /// The person is known but the document is not valid.
    DocumentInvalid {
        /// Why the document is not valid.
        reason: InvalidReason,
    },
}

impl MvdAnswer {
    /// The `result` string of this answer, for logs.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Match => "match",
            Self::Mismatch { .. } => "mismatch",
            Self::NotFound => "not_found",
            Self::DocumentInvalid { .. } => "document_invalid",
        }
    }
}

/// A person whose verification answer is fixed, for demos and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestPerson {
    /// Full name for display: surname, given name, patronymic.
    pub name: &'static str,
    /// Surname.
    pub surname: &'static str,
    /// Given name.
    pub given_name: &'static str,
    /// Patronymic, if the person has one.
    pub patronymic: Option<&'static str>,
    /// The (valid) identification number that selects the answer.
    pub identification_number: &'static str,
    /// Date of birth, `YYYY-MM-DD`.
    pub date_of_birth: &'static str,
    /// Passport number.
    pub document_number: &'static str,
    /// The answer the simulator gives for this person.
    pub expected: MvdAnswer,
}

impl TestPerson {
    /// A well-formed request body for this person, with a fresh `request_id`.
    pub fn request_body(&self) -> serde_json::Value {
        json!({
            "request_id": Uuid::new_v4(),
            "identification_number": self.identification_number,
            "surname": self.surname,
            "given_name": self.given_name,
            "patronymic": self.patronymic,
            "date_of_birth": self.date_of_birth,
            "document": { "type": "passport", "number": self.document_number },
        })
    }
}

/// The deterministic test people (see the module documentation).
pub const TEST_PEOPLE: &[TestPerson] = &[
    TestPerson {
        name: "Kavaliou Ales Mikalaevich",
        surname: "Kavaliou",
        given_name: "Ales",
        patronymic: Some("Mikalaevich"),
        identification_number: "3120785Z901PB9",
        date_of_birth: "1985-07-12",
        document_number: "MP9000901",
        expected: MvdAnswer::Mismatch {
            fields: &["surname"],
        },
    },
    TestPerson {
        name: "Sidarenka Hanna Ivanauna",
        surname: "Sidarenka",
        given_name: "Hanna",
        patronymic: Some("Ivanauna"),
        identification_number: "4031192Z902PB6",
        date_of_birth: "1992-11-03",
        document_number: "MP9000902",
        expected: MvdAnswer::Mismatch {
            fields: &["given_name", "date_of_birth"],
        },
    },
    TestPerson {
        name: "Marozau Siarhei Piatrovich",
        surname: "Marozau",
        given_name: "Siarhei",
        patronymic: Some("Piatrovich"),
        identification_number: "5280201Z903PB7",
        date_of_birth: "2001-02-28",
        document_number: "MP9000903",
        expected: MvdAnswer::NotFound,
    },
    TestPerson {
        name: "Lukashevich Volha Andreeuna",
        surname: "Lukashevich",
        given_name: "Volha",
        patronymic: Some("Andreeuna"),
        identification_number: "4190578Z904PB6",
        date_of_birth: "1978-05-19",
        document_number: "MP9000904",
        expected: MvdAnswer::DocumentInvalid {
            reason: InvalidReason::Expired,
        },
    },
    TestPerson {
        name: "Bahdanovich Maksim",
        surname: "Bahdanovich",
        given_name: "Maksim",
        patronymic: None,
        identification_number: "5090905Z905PB7",
        date_of_birth: "2005-09-09",
        document_number: "MP9000905",
        expected: MvdAnswer::DocumentInvalid {
            reason: InvalidReason::Lost,
        },
    },
    TestPerson {
        name: "Zhuk Katsiaryna Aliaksandrauna",
        surname: "Zhuk",
        given_name: "Katsiaryna",
        patronymic: Some("Aliaksandrauna"),
        identification_number: "4311269Z906PB4",
        date_of_birth: "1969-12-31",
        document_number: "MP9000906",
        expected: MvdAnswer::DocumentInvalid {
            reason: InvalidReason::Revoked,
        },
    },
    TestPerson {
        name: "Navumchyk Dzmitry Uladzimiravich",
        surname: "Navumchyk",
        given_name: "Dzmitry",
        patronymic: Some("Uladzimiravich"),
        identification_number: "3010190Z907PB1",
        date_of_birth: "1990-01-01",
        document_number: "MP9000907",
        expected: MvdAnswer::Match,
    },
];

/// The answer for an identification number: the test person's, or `match` for anyone else.
pub fn answer_for(identification_number: &str) -> MvdAnswer {
    TEST_PEOPLE
        .iter()
        .find(|p| p.identification_number == identification_number)
        .map_or(MvdAnswer::Match, |p| p.expected)
}

/// The simulated MVD service; clones share the same state.
#[derive(Debug, Clone)]
pub struct MvdSim {
    inner: Arc<MvdState>,
}

#[derive(Debug)]
struct MvdState {
    gate: FaultGate,
    /// Answers given, by `Idempotency-Key`.
    answers: Mutex<HashMap<String, MvdAnswer>>,
    /// The last `traceparent` header seen, by `Idempotency-Key` (a test aid, see
    /// [`MvdSim::traceparents`]).
    traceparents: Mutex<HashMap<String, String>>,
}

impl MvdSim {
    /// A fresh simulator that starts with `faults`.
    pub fn new(faults: Faults) -> Self {
        Self {
            inner: Arc::new(MvdState {
                gate: FaultGate::new("mvd", faults),
                answers: Mutex::new(HashMap::new()),
                traceparents: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The routes of the service, relative to `MVD_URL`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/person-verifications", post(verify))
            .with_state(self.clone())
    }

    /// The fault gate of the service (faults and request count).
    pub fn gate(&self) -> &FaultGate {
        &self.inner.gate
    }

    /// How many verification requests arrived, faulted ones included.
    pub fn requests(&self) -> u64 {
        self.inner.gate.requests()
    }

    /// A test aid: the last `traceparent` header each `Idempotency-Key` came with (well-formed
    /// requests that were not faulted; the value as sent, unchecked).
    pub fn traceparents(&self) -> Vec<String> {
        self.inner
            .traceparents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

/// The request body of the contract.
#[derive(Debug, Deserialize)]
struct VerificationRequest {
    request_id: Uuid,
    identification_number: String,
    surname: String,
    given_name: String,
    #[serde(deserialize_with = "string_or_null")]
    patronymic: Option<String>,
    date_of_birth: String,
    document: Document,
}

#[derive(Debug, Deserialize)]
struct Document {
    #[serde(rename = "type")]
    kind: String,
    number: String,
}

/// Makes an `Option` field required (`null` allowed, a missing key refused).
fn string_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

fn bad_request(sentence: impl Into<String>) -> Response {
    let body = Json(json!({ "error": sentence.into() }));
    (StatusCode::BAD_REQUEST, body).into_response()
}

/// Checks what serde cannot: no empty strings, a real `YYYY-MM-DD` date.
fn check(request: &VerificationRequest) -> Result<(), String> {
    let required = [
        ("identification_number", &request.identification_number),
        ("surname", &request.surname),
        ("given_name", &request.given_name),
        ("document.type", &request.document.kind),
        ("document.number", &request.document.number),
    ];
    if let Some((field, _)) = required.iter().find(|(_, v)| v.trim().is_empty()) {
        return Err(format!("The field {field} must not be empty."));
    }
    if request
        .patronymic
        .as_deref()
        .is_some_and(|p| p.trim().is_empty())
    {
        return Err("The field patronymic must be null or a non-empty string.".to_owned());
    }
    let dob = &request.date_of_birth;
    if dob.len() != 10 || chrono::NaiveDate::parse_from_str(dob, "%Y-%m-%d").is_err() {
        return Err("The field date_of_birth must be a date written YYYY-MM-DD.".to_owned());
    }
    Ok(())
}

async fn verify(State(sim): State<MvdSim>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(fault) = sim.inner.gate.admit().await {
        return fault;
    }
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(key)) if !key.trim().is_empty() => key.to_owned(),
        Some(_) => return bad_request("The Idempotency-Key header must be non-empty text."),
        None => return bad_request("The Idempotency-Key header is missing."),
    };
    let request: VerificationRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return bad_request(format!(
                "The request body is not a valid verification request: {e}."
            ));
        }
    };
    if let Err(sentence) = check(&request) {
        return bad_request(sentence);
    }
    if let Some(Ok(traceparent)) = headers.get("traceparent").map(|v| v.to_str()) {
        sim.inner
            .traceparents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), traceparent.to_owned());
    }
    let (answer, replayed) = {
        let mut answers = sim
            .inner
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match answers.get(&key) {
            Some(answer) => (*answer, true),
            None => {
                let answer = answer_for(&request.identification_number);
                answers.insert(key, answer);
                (answer, false)
            }
        }
    };
    tracing::debug!(
        request_id = %request.request_id,
        result = answer.result(),
        replayed,
        "mvd verification answered"
    );
    (StatusCode::OK, Json(answer)).into_response()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use serde_json::Value;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::sim::{SimConfig, Simulators, spawn_local};

    async fn start() -> (Simulators, String, CancellationToken) {
        let shutdown = CancellationToken::new();
        let (sims, addr): (Simulators, SocketAddr) =
            spawn_local(SimConfig::default(), shutdown.clone())
                .await
                .unwrap();
        let url = format!("{}/v1/person-verifications", Simulators::mvd_url(addr));
        (sims, url, shutdown)
    }

    fn client() -> reqwest::Client {
        // uidflow builds reqwest with `rustls-no-provider`: a crypto provider must be
        // installed before a client is built (a second install is refused, harmlessly).
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    async fn verify_as(url: &str, key: &str, body: &Value) -> (u16, Value) {
        let response = client()
            .post(url)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    fn char_value(c: char) -> Option<u32> {
        match c {
            '0'..='9' => c.to_digit(10),
            'A'..='Z' => Some(c as u32 - 'A' as u32 + 10),
            _ => None,
        }
    }

    #[test]
    fn every_test_persons_identification_number_is_valid_and_matches_the_birth_date() {
        for person in TEST_PEOPLE {
            let id: Vec<char> = person.identification_number.chars().collect();
            assert_eq!(id.len(), 14, "{}", person.name);
            let weighted: u32 = id[..13]
                .iter()
                .zip([7, 3, 1].iter().cycle())
                .map(|(c, w)| char_value(*c).unwrap() * w)
                .sum();
            assert_eq!(id[13].to_digit(10), Some(weighted % 10), "{}", person.name);

            let (year, rest) = person.date_of_birth.split_at(4);
            let (month, day) = (&rest[1..3], &rest[4..6]);
            let ddmmyy = format!("{day}{month}{}", &year[2..]);
            assert_eq!(
                id[1..7].iter().collect::<String>(),
                ddmmyy,
                "{}",
                person.name
            );
            let century_digits = if year.starts_with("19") {
                ['3', '4']
            } else {
                ['5', '6']
            };
            assert!(century_digits.contains(&id[0]), "{}", person.name);
            assert_eq!(id[7], 'Z');
            assert_eq!(id[8], '9');
            assert!(id[9].is_ascii_digit() && id[10].is_ascii_digit());
            assert_eq!(id[11..13], ['P', 'B']);
        }
    }

    #[test]
    fn the_known_good_example_passes_the_same_check_digit_rule() {
        let weighted: u32 = "3140385A001PB"
            .chars()
            .zip([7, 3, 1].iter().cycle())
            .map(|(c, w)| char_value(c).unwrap() * w)
            .sum();
        assert_eq!(weighted % 10, 5);
    }

    #[test]
    fn the_table_covers_every_required_answer() {
        let answers: Vec<MvdAnswer> = TEST_PEOPLE.iter().map(|p| p.expected).collect();
        for required in [
            MvdAnswer::Mismatch {
                fields: &["surname"],
            },
            MvdAnswer::Mismatch {
                fields: &["given_name", "date_of_birth"],
            },
            MvdAnswer::NotFound,
            MvdAnswer::DocumentInvalid {
                reason: InvalidReason::Expired,
            },
            MvdAnswer::DocumentInvalid {
                reason: InvalidReason::Lost,
            },
            MvdAnswer::DocumentInvalid {
                reason: InvalidReason::Revoked,
            },
        ] {
            assert!(answers.contains(&required), "{required:?}");
        }
    }

    #[test]
    fn answers_serialize_as_the_contract_says() {
        let mismatch = MvdAnswer::Mismatch {
            fields: &["surname"],
        };
        let invalid = MvdAnswer::DocumentInvalid {
            reason: InvalidReason::Lost,
        };
        assert_eq!(
            serde_json::to_value(MvdAnswer::Match).unwrap(),
            json!({"result": "match"})
        );
        assert_eq!(
            serde_json::to_value(mismatch).unwrap(),
            json!({"result": "mismatch", "fields": ["surname"]})
        );
        assert_eq!(
            serde_json::to_value(MvdAnswer::NotFound).unwrap(),
            json!({"result": "not_found"})
        );
        assert_eq!(
            serde_json::to_value(invalid).unwrap(),
            json!({"result": "document_invalid", "reason": "lost"})
        );
    }

    #[tokio::test]
    async fn every_test_person_answers_as_documented() {
        let (_sims, url, shutdown) = start().await;
        for person in TEST_PEOPLE {
            let key = Uuid::new_v4().to_string();
            let (status, body) = verify_as(&url, &key, &person.request_body()).await;
            assert_eq!(status, 200, "{}", person.name);
            assert_eq!(
                body,
                serde_json::to_value(person.expected).unwrap(),
                "{}",
                person.name
            );
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn an_unknown_valid_person_answers_match() {
        let (_sims, url, shutdown) = start().await;
        let body = json!({
            "request_id": Uuid::new_v4(),
            "identification_number": "3140385A001PB5",
            "surname": "Ivanou",
            "given_name": "Ivan",
            "patronymic": null,
            "date_of_birth": "1985-03-14",
            "document": {"type": "passport", "number": "MP1234567"},
        });
        let (status, answer) = verify_as(&url, "application-1", &body).await;
        assert_eq!((status, answer), (200, json!({"result": "match"})));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_repeated_idempotency_key_gets_the_first_answer_again() {
        let (sims, url, shutdown) = start().await;
        let not_found = TEST_PEOPLE
            .iter()
            .find(|p| p.expected == MvdAnswer::NotFound)
            .unwrap();
        let (_, first) = verify_as(&url, "application-7", &not_found.request_body()).await;
        let (_, same) = verify_as(&url, "application-7", &not_found.request_body()).await;
        // Even a request for someone else under the same key gets the remembered answer.
        let (_, other) = verify_as(&url, "application-7", &TEST_PEOPLE[6].request_body()).await;
        assert_eq!(first, json!({"result": "not_found"}));
        assert_eq!(same, first);
        assert_eq!(other, first);
        assert_eq!(sims.mvd_requests(), 3);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn malformed_requests_answer_400_with_an_error_sentence() {
        let (_sims, url, shutdown) = start().await;
        let good = TEST_PEOPLE[6].request_body();
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("surname");
        let mut no_patronymic_key = good.clone();
        no_patronymic_key
            .as_object_mut()
            .unwrap()
            .remove("patronymic");
        let mut ill_typed = good.clone();
        ill_typed["date_of_birth"] = json!(19900101);
        let mut bad_date = good.clone();
        bad_date["date_of_birth"] = json!("1990-02-30");
        let mut bad_uuid = good.clone();
        bad_uuid["request_id"] = json!("not-a-uuid");
        let mut empty = good.clone();
        empty["document"]["number"] = json!("");
        for body in [
            missing,
            no_patronymic_key,
            ill_typed,
            bad_date,
            bad_uuid,
            empty,
        ] {
            let (status, answer) = verify_as(&url, "k", &body).await;
            assert_eq!(status, 400, "{body}");
            assert!(
                answer["error"].as_str().is_some_and(|e| e.ends_with('.')),
                "{answer}"
            );
        }
        let response = client()
            .post(&url)
            .header("Idempotency-Key", "k")
            .body("this is not json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
        let answer: Value = response.json().await.unwrap();
        assert!(answer["error"].is_string());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_request_without_idempotency_key_answers_400() {
        let (_sims, url, shutdown) = start().await;
        let response = client()
            .post(&url)
            .json(&TEST_PEOPLE[6].request_body())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "The Idempotency-Key header is missing.");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_faulted_verification_is_not_remembered() {
        let (sims, url, shutdown) = start().await;
        sims.set_mvd_faults(Faults::scripted([503]));
        let person = &TEST_PEOPLE[0];
        let response = client()
            .post(&url)
            .header("Idempotency-Key", "application-9")
            .json(&person.request_body())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 503);
        // Had the faulted request been remembered, this other person would get its answer.
        let (status, answer) =
            verify_as(&url, "application-9", &TEST_PEOPLE[2].request_body()).await;
        assert_eq!((status, answer), (200, json!({"result": "not_found"})));
        shutdown.cancel();
    }
}
