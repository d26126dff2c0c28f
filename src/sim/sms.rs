//! Simulator of the SMS gateway: `POST {SMS_URL}/v1/messages`.
//!
//! A request carries `{"message_id": "<uuid>", "phone": "+375291234567", "text": "…"}`.
//! Answers: 202 `{"message_id", "status": "accepted"}`; 409 `{"message_id", "status":
//! "duplicate"}` when that `message_id` was already accepted; 400 `{"error":
//! "invalid_phone"}` when the phone is not `+375` followed by 25, 29, 33 or 44 and seven
//! digits; 400 `{"error": "<sentence>"}` for any other malformed request (not JSON, a field
//! missing, of the wrong type, an empty text). Faults (see [`super::faults`]) are applied
//! before any of this: a faulted message is not stored.
//!
//! **Read-back is a simulator extension, not part of the real gateway:**
//! `GET {SMS_URL}/v1/messages?phone=%2B375291234567` answers 200 `{"messages":
//! [{"message_id", "phone", "text", "accepted_at"}, …]}` in acceptance order; without
//! `phone` it lists every message. Read-back is neither faulted nor counted as a request. It
//! needs the simulators' token (`Authorization: Bearer <token>`, see [`super::Simulators::token`]),
//! since the texts hold codes and passwords; without it the answer is 401.
//! In process, [`SmsSim::messages_to`] gives the same list.
//!
//! Memory is bounded: the gateway keeps the last [`MAX_MESSAGES`] accepted messages; older
//! ones (and their ids, so a very late resend of one is accepted again) are dropped.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::faults::{FaultGate, Faults};

/// How many accepted messages the simulated gateway keeps (the oldest are dropped).
pub const MAX_MESSAGES: usize = 10_000;

/// A message the simulated gateway accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentSms {
    /// The client's message id (the deduplication key).
    pub message_id: Uuid,
    /// The phone number, `+375XXXXXXXXX`.
    pub phone: String,
    /// The message text.
    pub text: String,
    /// When the gateway accepted the message.
    pub accepted_at: DateTime<Utc>,
}

/// Whether `phone` is a Belarusian mobile number: `^\+375(25|29|33|44)[0-9]{7}$`.
pub fn is_valid_phone(phone: &str) -> bool {
    let Some(rest) = phone.strip_prefix("+375") else {
        return false;
    };
    let (operator, subscriber) = rest.split_at_checked(2).unwrap_or(("", ""));
    matches!(operator, "25" | "29" | "33" | "44")
        && subscriber.len() == 7
        && subscriber.bytes().all(|b| b.is_ascii_digit())
}

/// The simulated SMS gateway; clones share the same state.
#[derive(Debug, Clone)]
pub struct SmsSim {
    inner: Arc<SmsState>,
}

#[derive(Debug)]
struct SmsState {
    gate: FaultGate,
    outbox: Mutex<Outbox>,
    token: super::SimToken,
}

/// The last accepted messages in acceptance order, with their ids for deduplication.
#[derive(Debug)]
struct Outbox {
    ids: HashSet<Uuid>,
    messages: VecDeque<SentSms>,
    /// How many messages were dropped to keep at most `capacity`.
    dropped: usize,
    capacity: usize,
}

impl Outbox {
    /// Stores a message unless its id is known; false for a duplicate.
    fn accept(&mut self, message: SentSms) -> bool {
        if !self.ids.insert(message.message_id) {
            return false;
        }
        self.messages.push_back(message);
        while self.messages.len() > self.capacity {
            if let Some(old) = self.messages.pop_front() {
                self.ids.remove(&old.message_id);
                self.dropped += 1;
            }
        }
        true
    }
}

impl SmsSim {
    /// A fresh gateway that starts with `faults`; `token` guards the read-back.
    pub fn new(faults: Faults, token: super::SimToken) -> Self {
        Self::with_capacity(faults, token, MAX_MESSAGES)
    }

    fn with_capacity(faults: Faults, token: super::SimToken, capacity: usize) -> Self {
        Self {
            inner: Arc::new(SmsState {
                gate: FaultGate::new("sms", faults),
                outbox: Mutex::new(Outbox {
                    ids: HashSet::new(),
                    messages: VecDeque::new(),
                    dropped: 0,
                    capacity,
                }),
                token,
            }),
        }
    }

    /// The routes of the gateway, relative to `SMS_URL`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/messages", post(send).get(read_back))
            .with_state(self.clone())
    }

    /// The fault gate of the gateway (faults and request count).
    pub fn gate(&self) -> &FaultGate {
        &self.inner.gate
    }

    /// How many send requests arrived, faulted ones included.
    pub fn requests(&self) -> u64 {
        self.inner.gate.requests()
    }

    /// The messages accepted for `phone`, in acceptance order.
    pub fn messages_to(&self, phone: &str) -> Vec<SentSms> {
        self.messages(Some(phone))
    }

    /// The accepted messages, all of them or those for one phone, in acceptance order.
    pub fn messages(&self, phone: Option<&str>) -> Vec<SentSms> {
        self.outbox()
            .messages
            .iter()
            .filter(|m| phone.is_none_or(|p| m.phone == p))
            .cloned()
            .collect()
    }

    /// The accepted messages from the `start`-th on (0-based, counted over every message ever
    /// accepted, in acceptance order): what a reader that has seen `start` messages has not
    /// seen yet, as far as they are still kept.
    pub fn messages_from(&self, start: usize) -> Vec<SentSms> {
        let outbox = self.outbox();
        let skip = start.saturating_sub(outbox.dropped);
        outbox.messages.iter().skip(skip).cloned().collect()
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.inner
            .outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The send request body of the contract.
#[derive(Debug, Deserialize)]
struct SendRequest {
    message_id: Uuid,
    phone: String,
    text: String,
}

fn bad_request(error: impl Into<String>) -> Response {
    let body = Json(json!({ "error": error.into() }));
    (StatusCode::BAD_REQUEST, body).into_response()
}

async fn send(State(sim): State<SmsSim>, body: Bytes) -> Response {
    if let Some(fault) = sim.inner.gate.admit().await {
        return fault;
    }
    let request: SendRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return bad_request(format!("The request body is not a valid message: {e}."));
        }
    };
    if !is_valid_phone(&request.phone) {
        tracing::debug!(message_id = %request.message_id, "sms refused: invalid phone");
        return bad_request("invalid_phone");
    }
    if request.text.trim().is_empty() {
        return bad_request("The field text must not be empty.");
    }
    let message_id = request.message_id;
    let accepted = {
        sim.outbox().accept(SentSms {
            message_id,
            phone: request.phone,
            text: request.text,
            accepted_at: Utc::now(),
        })
    };
    let (status, word) = if accepted {
        (StatusCode::ACCEPTED, "accepted")
    } else {
        (StatusCode::CONFLICT, "duplicate")
    };
    tracing::debug!(%message_id, status = word, "sms answered");
    let body = Json(json!({ "message_id": message_id, "status": word }));
    (status, body).into_response()
}

/// The query of the read-back extension.
#[derive(Debug, Deserialize)]
struct ReadBack {
    phone: Option<String>,
}

async fn read_back(
    State(sim): State<SmsSim>,
    headers: HeaderMap,
    Query(query): Query<ReadBack>,
) -> Response {
    if !sim.inner.token.admits(&headers) {
        return super::unauthorized();
    }
    let messages = sim.messages(query.phone.as_deref());
    tracing::debug!(count = messages.len(), "sms read-back");
    Json(json!({ "messages": messages })).into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::sim::{SimConfig, Simulators, spawn_local};

    async fn start() -> (Simulators, String, CancellationToken) {
        let shutdown = CancellationToken::new();
        let (sims, addr) = spawn_local(SimConfig::default(), shutdown.clone())
            .await
            .unwrap();

        let url = format!("{}/v1/messages", Simulators::sms_url(addr));
        (sims, url, shutdown)
    }

    fn client() -> reqwest::Client {
        // uidflow builds reqwest with `rustls-no-provider`: a crypto provider must be
        // installed before a client is built (a second install is refused, harmlessly).
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    async fn send_sms(url: &str, body: &Value) -> (u16, Value) {
        let response = client().post(url).json(body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn read_back(sims: &Simulators, url: &str, phone: Option<&str>) -> Vec<SentSms> {
        let url = match phone {
            Some(phone) => format!("{url}?phone={}", phone.replace('+', "%2B")),
            None => url.to_owned(),
        };
        let request = client().get(url).bearer_auth(sims.token());
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let mut body: Value = response.json().await.unwrap();
        serde_json::from_value(body["messages"].take()).unwrap()
    }

    #[test]
    fn only_belarusian_mobile_numbers_are_valid_phones() {
        for good in [
            "+375291234567",
            "+375251234567",
            "+375331234567",
            "+375441234567",
        ] {
            assert!(is_valid_phone(good), "{good}");
        }
        for bad in [
            "",
            "+375",
            "375291234567",
            "+375171234567",
            "+37529123456",
            "+3752912345678",
            "+37529123456a",
            "+375 29 1234567",
            "+7291234567890",
            "+3752",
        ] {
            assert!(!is_valid_phone(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_message_is_accepted_once_and_then_answers_duplicate() {
        let (sims, url, shutdown) = start().await;
        let id = Uuid::new_v4();
        let body = json!({"message_id": id, "phone": "+375291234567", "text": "Code 1234"});
        let (status, first) = send_sms(&url, &body).await;
        assert_eq!(status, 202);
        assert_eq!(first, json!({"message_id": id, "status": "accepted"}));
        let (status, second) = send_sms(&url, &body).await;
        assert_eq!(status, 409);
        assert_eq!(second, json!({"message_id": id, "status": "duplicate"}));
        assert_eq!(sims.messages_to("+375291234567").len(), 1);
        assert_eq!(sims.sms_requests(), 2);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_reader_gets_only_the_messages_it_has_not_seen() {
        let (sims, url, shutdown) = start().await;
        for (phone, text) in [("+375291234567", "one"), ("+375331234567", "two")] {
            let body = json!({"message_id": Uuid::new_v4(), "phone": phone, "text": text});
            assert_eq!(send_sms(&url, &body).await.0, 202);
        }
        let texts = |from| -> Vec<String> {
            sims.sms()
                .messages_from(from)
                .into_iter()
                .map(|m| m.text)
                .collect()
        };
        assert_eq!(texts(0), ["one", "two"]);
        assert_eq!(texts(1), ["two"]);
        assert!(texts(2).is_empty());
        assert!(texts(7).is_empty());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn an_invalid_phone_answers_400_invalid_phone() {
        let (sims, url, shutdown) = start().await;
        let body = json!({"message_id": Uuid::new_v4(), "phone": "+375171234567", "text": "Hi"});
        let (status, answer) = send_sms(&url, &body).await;
        assert_eq!((status, answer), (400, json!({"error": "invalid_phone"})));
        assert!(sims.sms().messages(None).is_empty());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn malformed_messages_answer_400_with_a_sentence() {
        let (_sims, url, shutdown) = start().await;
        for body in [
            json!({"phone": "+375291234567", "text": "Hi"}),
            json!({"message_id": "nope", "phone": "+375291234567", "text": "Hi"}),
            json!({"message_id": Uuid::new_v4(), "phone": 375291234567_u64, "text": "Hi"}),
            json!({"message_id": Uuid::new_v4(), "phone": "+375291234567", "text": ""}),
        ] {
            let (status, answer) = send_sms(&url, &body).await;
            assert_eq!(status, 400, "{body}");
            let error = answer["error"].as_str().unwrap();
            assert!(error.ends_with('.') && error != "invalid_phone", "{error}");
        }
        let response = client().post(&url).body("{").send().await.unwrap();
        assert_eq!(response.status().as_u16(), 400);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn read_back_lists_texts_in_acceptance_order_filtered_by_phone() {
        let (sims, url, shutdown) = start().await;
        let sends = [
            ("+375291234567", "first"),
            ("+375441111111", "other"),
            ("+375291234567", "second"),
            ("+375291234567", "third"),
        ];
        for (phone, text) in sends {
            let body = json!({"message_id": Uuid::new_v4(), "phone": phone, "text": text});
            assert_eq!(send_sms(&url, &body).await.0, 202);
        }
        let texts = |messages: Vec<SentSms>| -> Vec<String> {
            messages.into_iter().map(|m| m.text).collect()
        };
        let mine = read_back(&sims, &url, Some("+375291234567")).await;
        assert!(mine.iter().all(|m| m.phone == "+375291234567"));
        assert!(
            mine.windows(2)
                .all(|w| w[0].accepted_at <= w[1].accepted_at)
        );
        assert_eq!(texts(mine), ["first", "second", "third"]);
        assert_eq!(
            texts(read_back(&sims, &url, None).await),
            ["first", "other", "second", "third"]
        );
        assert_eq!(texts(sims.messages_to("+375441111111")), ["other"]);
        assert!(
            read_back(&sims, &url, Some("+375330000000"))
                .await
                .is_empty()
        );
        // Read-back is not counted as a gateway request.
        assert_eq!(sims.sms_requests(), 4);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn read_back_needs_the_token() {
        let (sims, url, shutdown) = start().await;
        let body = json!({"message_id": Uuid::new_v4(), "phone": "+375291234567", "text": "1"});
        assert_eq!(send_sms(&url, &body).await.0, 202, "sending needs no token");
        for request in [
            client().get(&url),
            client().get(&url).bearer_auth("wrong"),
            client().get(&url).bearer_auth(format!("{}x", sims.token())),
        ] {
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), 401);
            let answer: Value = response.json().await.unwrap();
            assert!(answer.get("messages").is_none());
        }
        assert_eq!(read_back(&sims, &url, None).await.len(), 1);
        shutdown.cancel();
    }

    #[test]
    fn the_outbox_keeps_the_last_messages_and_readers_keep_their_place() {
        let sim = SmsSim::with_capacity(Faults::default(), crate::sim::SimToken::generate(), 3);
        let message = |n: usize| SentSms {
            message_id: Uuid::from_u128(n as u128),
            phone: "+375291234567".into(),
            text: n.to_string(),
            accepted_at: Utc::now(),
        };
        for n in 0..5 {
            assert!(sim.outbox().accept(message(n)));
        }
        let texts = |messages: Vec<SentSms>| -> Vec<String> {
            messages.into_iter().map(|m| m.text).collect()
        };
        assert_eq!(texts(sim.messages(None)), ["2", "3", "4"]);
        assert!(!sim.outbox().accept(message(4)), "a kept id is a duplicate");
        assert_eq!(texts(sim.messages_from(0)), ["2", "3", "4"]);
        assert_eq!(texts(sim.messages_from(4)), ["4"]);
        assert!(sim.messages_from(5).is_empty());
        assert!(sim.outbox().accept(message(0)), "a dropped id is forgotten");
        assert_eq!(texts(sim.messages(None)), ["3", "4", "0"]);
        assert_eq!(sim.outbox().ids.len(), 3);
        assert_eq!(MAX_MESSAGES, 10_000);
    }

    #[tokio::test]
    async fn a_faulted_message_is_not_stored() {
        let (sims, url, shutdown) = start().await;
        sims.set_sms_faults(Faults::scripted([503]));
        let id = Uuid::new_v4();
        let body = json!({"message_id": id, "phone": "+375291234567", "text": "Hi"});
        let response = client().post(&url).json(&body).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 503);
        assert!(sims.messages_to("+375291234567").is_empty());
        // The retry with the same id is accepted, not a duplicate.
        assert_eq!(send_sms(&url, &body).await.0, 202);
        shutdown.cancel();
    }
}
