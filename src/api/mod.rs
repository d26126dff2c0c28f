//! The HTTP API (CONTRACT §3) with axum: clerks poll applications and type back codes;
//! operators watch queues and handle dead letters; anyone who reaches it gets `/metrics`,
//! `/healthz` and `/readyz`. Described in `schemas/openapi.yaml`.
//!
//! Every `/v1` route needs a bearer token (`auth`). A clerk sees only the applications of their
//! issuing service — any other answers 404, exactly as an unknown id — and may not use operator
//! routes (403). Responses never hold a password, a code, or a full identification number or
//! phone: applications come masked from `applications`, dead-letter bodies from `dead_letters`.
//! What the API sends to the broker (a typed-back code, a replay) goes through the outbox.

pub mod auth;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::applications::{self, ListFilter, Position};
use crate::config::Settings;
use crate::dead_letters::{self, ActionError};
use crate::domain::{Kind, Status};
use crate::telemetry::{self, metrics as names};
use crate::topology::{self, Topology};
use auth::{Caller, Role, Tokens};

/// An API error, as `{"error": {"code", "message"}}` with its status.
#[derive(Debug)]
pub enum ApiError {
    /// 400.
    BadRequest(String),
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 404.
    NotFound(String),
    /// 409.
    Conflict(String),
    /// 422.
    Unprocessable(String),
    /// 503.
    Unavailable(String),
    /// 500 (details only in the log).
    Internal,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required (Authorization: Bearer <token>)".to_owned(),
            ),
            ApiError::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "this token may not use this endpoint".to_owned(),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the server log".to_owned(),
            ),
        };
        let mut response = (
            status,
            Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        tracing::error!(error = %error, "database error in the API");
        ApiError::Internal
    }
}

/// Totals per queue at one moment, for rates between two `/v1/queues` calls.
type QueueSample = (Instant, HashMap<String, telemetry::QueueTotals>);

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pool: PgPool,
    settings: Settings,
    tokens: Arc<Tokens>,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    /// The last `/v1/queues` sample, for rates.
    last_sample: Arc<Mutex<Option<QueueSample>>>,
}

impl ApiState {
    /// State for the API of `settings`.
    pub fn new(settings: Settings, pool: PgPool, tokens: Tokens) -> Self {
        Self {
            pool,
            settings,
            tokens: Arc::new(tokens),
            prometheus: telemetry::prometheus(),
            last_sample: Arc::new(Mutex::new(None)),
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        state.tokens.caller(presented).ok_or(ApiError::Unauthorized)
    }
}

fn operator(caller: &Caller) -> Result<(), ApiError> {
    match caller.role {
        Role::Operator => Ok(()),
        Role::Clerk => Err(ApiError::Forbidden),
    }
}

/// The router with every route.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/applications", get(list_applications))
        .route("/v1/applications/{id}", get(get_application))
        .route(
            "/v1/applications/{id}/phone-confirmation",
            post(confirm_phone),
        )
        .route("/v1/queues", get(queues))
        .route("/v1/dead-letters", get(list_dead_letters))
        .route(
            "/v1/dead-letters/{id}",
            get(get_dead_letter).delete(discard_dead_letter),
        )
        .route("/v1/dead-letters/{id}/replay", post(replay_dead_letter))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(state)
}

/// Serves the API on `listener` until `token` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    token: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(token.cancelled_owned())
        .await
}

fn parse_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text)
        .map_err(|_| ApiError::BadRequest(format!("{text:?} is not an application id (a UUID)")))
}

fn limit_of(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    match query.get("limit") {
        None => Ok(50),
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "limit {text:?} must be a whole number from 1 to 200"
                ))
            }),
    }
}

fn unknown_parameters(query: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match query.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(ApiError::BadRequest(format!(
            "unknown parameter {key:?}; known: {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

fn encode_cursor(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

fn decode_cursor(text: &str) -> Result<Value, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| ApiError::BadRequest("cursor is not one this API gave out".into()))
}

async fn get_application(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let mut conn = state.pool.acquire().await?;
    match applications::load_view(&mut conn, id).await? {
        Some(view) if caller.sees(view.summary.issuing_service.as_deref()) => {
            Ok(Json(view).into_response())
        }
        _ => Err(ApiError::NotFound(format!("no application {id}"))),
    }
}

async fn list_applications(
    State(state): State<ApiState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    unknown_parameters(&query, &["status", "kind", "limit", "cursor"])?;
    let status = match query.get("status") {
        Some(text) => Some(
            Status::parse(text)
                .ok_or_else(|| ApiError::BadRequest(format!("unknown status {text:?}")))?,
        ),
        None => None,
    };
    let kind = match query.get("kind") {
        Some(text) => Some(
            Kind::parse(text)
                .ok_or_else(|| ApiError::BadRequest(format!("unknown kind {text:?}")))?,
        ),
        None => None,
    };
    let after = match query.get("cursor") {
        Some(text) => {
            let value = decode_cursor(text)?;
            let created_at = value["t"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            let id = value["id"].as_str().and_then(|i| Uuid::parse_str(i).ok());
            match (created_at, id) {
                (Some(t), Some(id)) => Some(Position {
                    created_at: t.to_utc(),
                    application_id: id,
                }),
                _ => {
                    return Err(ApiError::BadRequest(
                        "cursor is not one this API gave out".into(),
                    ));
                }
            }
        }
        None => None,
    };
    let filter = ListFilter {
        status,
        kind,
        issuing_service: match caller.role {
            Role::Operator => None,
            Role::Clerk => caller.issuing_service.clone(),
        },
    };
    let mut conn = state.pool.acquire().await?;
    let (items, next) = applications::list(&mut conn, &filter, limit_of(&query)?, after).await?;
    let next_cursor = next.map(|p| {
        encode_cursor(&json!({"t": p.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true), "id": p.application_id}))
    });
    Ok(Json(json!({"items": items, "next_cursor": next_cursor})).into_response())
}

async fn confirm_phone(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if caller.role != Role::Clerk {
        return Err(ApiError::Forbidden);
    }
    let id = parse_id(&id)?;
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON ({e})")))?;
    let code = request
        .get("code")
        .and_then(Value::as_str)
        .filter(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ApiError::BadRequest("code must be a string of 6 digits".into()))?;
    let mut tx = state.pool.begin().await?;
    let service: Option<Option<String>> =
        sqlx::query_scalar("SELECT issuing_service FROM applications WHERE application_id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    match service {
        Some(service) if caller.sees(service.as_deref()) => {}
        _ => return Err(ApiError::NotFound(format!("no application {id}"))),
    }
    // Exactly the AMQP message of CONTRACT §2.2, through the outbox: the confirmation consumer
    // handles it like any other, and its effect shows in the history.
    let message = crate::amqp::Outgoing {
        exchange: topology::INTAKE_EXCHANGE.into(),
        routing_key: topology::PHONE_CONFIRMATION_ROUTING_KEY.into(),
        message_id: Some(id.to_string()),
        content_type: Some("application/json".into()),
        headers: json!({"x-uid-submitted-by": caller.name}),
        body: serde_json::to_vec(&json!({"application_id": id, "code": code}))
            .expect("JSON serialises"),
        mandatory: true,
        expiration_ms: None,
    };
    crate::outbox::enqueue(&mut tx, &message).await?;
    crate::outbox::commit(tx, &state.pool).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"application_id": id, "status": "accepted"})),
    )
        .into_response())
}

/// Samples every uidflow queue: depth and consumers from the broker (passive declares over
/// AMQP, no management plugin), totals from this process's counters.
async fn sample_queues(settings: &Settings) -> Result<Vec<(String, u32, u32)>, ApiError> {
    let connection = crate::amqp::connect_once(settings, "api")
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot reach RabbitMQ ({e})")))?;
    let mut out = Vec::new();
    for queue in Topology::for_settings(settings).queues {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| ApiError::Unavailable(format!("RabbitMQ: {e}")))?;
        let options = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match channel
            .queue_declare(queue.name.as_str().into(), options, Default::default())
            .await
        {
            Ok(declared) => {
                out.push((
                    queue.name.clone(),
                    declared.message_count(),
                    declared.consumer_count(),
                ));
                let closing = channel.close(200, "sampled".into());
                let _ = tokio::time::timeout(crate::amqp::CLOSE_TIMEOUT, closing).await;
            }
            // Not declared (yet) on this broker: shown empty rather than failing the whole list.
            Err(_) => out.push((queue.name.clone(), 0, 0)),
        }
    }
    crate::amqp::close(&connection, 200, "sampled").await;
    for (name, messages, consumers) in &out {
        ::metrics::gauge!(names::QUEUE_MESSAGES, "queue" => name.clone()).set(f64::from(*messages));
        ::metrics::gauge!(names::QUEUE_CONSUMERS, "queue" => name.clone())
            .set(f64::from(*consumers));
    }
    Ok(out)
}

async fn queues(State(state): State<ApiState>, caller: Caller) -> Result<Response, ApiError> {
    operator(&caller)?;
    let sampled = sample_queues(&state.settings).await?;
    let now = Instant::now();
    let totals: HashMap<String, telemetry::QueueTotals> = sampled
        .iter()
        .map(|(name, _, _)| (name.clone(), telemetry::queue_totals(name)))
        .collect();
    let previous = state
        .last_sample
        .lock()
        .map(|mut last| last.replace((now, totals.clone())))
        .unwrap_or_default();
    let rate = |name: &str, pick: fn(&telemetry::QueueTotals) -> u64| -> f64 {
        match &previous {
            Some((at, before)) => {
                let seconds = now.duration_since(*at).as_secs_f64().max(0.001);
                let earlier = before.get(name).map(pick).unwrap_or(0);
                (pick(&totals[name]).saturating_sub(earlier)) as f64 / seconds
            }
            None => 0.0,
        }
    };
    let list: Vec<Value> = sampled
        .iter()
        .map(|(name, messages, consumers)| {
            let t = totals[name];
            json!({
                "name": name, "messages": messages, "consumers": consumers,
                "published_total": t.published, "acked_total": t.acked, "redelivered_total": t.redelivered,
                "publish_rate": rate(name, |t| t.published), "ack_rate": rate(name, |t| t.acked),
                "redeliver_rate": rate(name, |t| t.redelivered),
            })
        })
        .collect();
    Ok(Json(json!({"queues": list, "sampled_at": chrono::Utc::now()})).into_response())
}

async fn list_dead_letters(
    State(state): State<ApiState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    operator(&caller)?;
    unknown_parameters(&query, &["limit", "cursor", "state"])?;
    let state_filter = match query.get("state").map(String::as_str) {
        None | Some("parked") => Some("parked"),
        Some("all") => None,
        Some(s @ ("replayed" | "discarded")) => Some(s),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown state {other:?}; use parked, replayed, discarded or all"
            )));
        }
    };
    let before =
        match query.get("cursor") {
            Some(text) => Some(decode_cursor(text)?["before"].as_i64().ok_or_else(|| {
                ApiError::BadRequest("cursor is not one this API gave out".into())
            })?),
            None => None,
        };
    let (items, next) =
        dead_letters::list(&state.pool, state_filter, limit_of(&query)?, before).await?;
    let next_cursor = next.map(|id| encode_cursor(&json!({"before": id})));
    Ok(Json(json!({"items": items, "next_cursor": next_cursor})).into_response())
}

fn parse_dead_letter_id(text: &str) -> Result<i64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::BadRequest(format!("{text:?} is not a dead-letter id (a whole number)"))
    })
}

async fn get_dead_letter(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    operator(&caller)?;
    let id = parse_dead_letter_id(&id)?;
    match dead_letters::get(&state.pool, id).await? {
        Some(detail) => Ok(Json(detail).into_response()),
        None => Err(ApiError::NotFound(format!("no dead letter {id}"))),
    }
}

fn reason_of(body: &Bytes) -> Result<String, ApiError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::BadRequest("the body must be JSON: {\"reason\": \"…\"}".into()))?;
    request
        .get("reason")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|r| !r.is_empty() && r.len() <= 500)
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::BadRequest(
                "reason must be a non-empty string of at most 500 characters".into(),
            )
        })
}

fn action_error(error: ActionError) -> ApiError {
    match error {
        ActionError::NotFound(_) => ApiError::NotFound(error.to_string()),
        ActionError::NotParked { .. } => ApiError::Conflict(error.to_string()),
        ActionError::NotReplayable { .. } => ApiError::Unprocessable(error.to_string()),
        ActionError::Database(e) => e.into(),
    }
}

async fn replay_dead_letter(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    operator(&caller)?;
    let id = parse_dead_letter_id(&id)?;
    let why = reason_of(&body)?;
    let summary = dead_letters::replay(&state.pool, id, &caller.name, &why)
        .await
        .map_err(action_error)?;
    Ok(Json(summary).into_response())
}

async fn discard_dead_letter(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    operator(&caller)?;
    let id = parse_dead_letter_id(&id)?;
    // Some clients drop a DELETE's body: `?reason=` says the same.
    let why = match query.get("reason") {
        Some(reason) if body.is_empty() => {
            reason_of(&Bytes::from(json!({"reason": reason}).to_string()))?
        }
        _ => reason_of(&body)?,
    };
    let summary = dead_letters::discard(&state.pool, id, &caller.name, &why)
        .await
        .map_err(action_error)?;
    Ok(Json(summary).into_response())
}

async fn metrics(State(state): State<ApiState>) -> Response {
    // Queue depths are sampled when scraped; a broker outage leaves the last values.
    let _ = sample_queues(&state.settings).await;
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.prometheus.render(),
    )
        .into_response()
}

async fn readyz(State(state): State<ApiState>) -> Response {
    // Anyone may ask, so each check answers `ok` or `not_ready` only; what failed, in the
    // driver's words, goes to the log (it names hosts and users, never personal data).
    let failed = |check: &str, error: &dyn std::fmt::Display| {
        tracing::warn!(check, error = %error, "readiness check failed");
        "not_ready"
    };
    let database = match sqlx::query("SELECT 1").execute(&state.pool).await {
        Ok(_) => "ok",
        Err(e) => failed("database", &e),
    };
    let expected = crate::db::MIGRATOR.iter().count();
    let migrations =
        match sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&state.pool)
            .await
        {
            Ok(n) if n as usize >= expected => "ok",
            Ok(n) => failed(
                "migrations",
                &format!("{n} of {expected} migrations applied; run uidflow migrate"),
            ),
            Err(e) => failed("migrations", &e),
        };
    let broker = match crate::amqp::connect_once(&state.settings, "readyz").await {
        Ok(connection) => {
            crate::amqp::close(&connection, 200, "ready check").await;
            "ok"
        }
        Err(e) => failed("broker", &e),
    };
    let ready = [database, migrations, broker].iter().all(|c| *c == "ok");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"status": if ready { "ready" } else { "not_ready" },
        "checks": {"database": database, "broker": broker, "migrations": migrations},
        "simulators": state.settings.simulated.names()});
    (status, Json(body)).into_response()
}
