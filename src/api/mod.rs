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
pub mod console;
pub mod sampler;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
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
use crate::topology;
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
        let mut response = error_body(status, code, &message);
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The JSON error shape every error answer has.
fn error_body(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        tracing::error!(error = %error, "database error in the API");
        ApiError::Internal
    }
}

/// Totals per queue at one moment, for rates between two `/v1/queues` calls.
type QueueSample = (Instant, HashMap<String, telemetry::QueueTotals>);

/// The bounds the API puts on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body (413 above it).
    pub body_bytes: usize,
    /// Longest a request may take once its head is read (503 after it).
    pub request_timeout: Duration,
    /// Longest a client may take to send a request's head (the connection is closed after it).
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pool: PgPool,
    settings: Settings,
    tokens: Arc<Tokens>,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    /// The last `/v1/queues` sample, for rates.
    last_sample: Arc<Mutex<Option<QueueSample>>>,
    /// Queue depths for `/metrics` and `/v1/queues`.
    sampler: Arc<sampler::QueueSampler>,
    limits: Limits,
    /// The console's sign-in sessions.
    console: Arc<console::Sessions>,
    /// The data keys (a dead letter's body is stored sealed).
    vault: Arc<crate::vault::Vault>,
}

impl ApiState {
    /// State for the API of `settings`.
    pub fn new(
        settings: Settings,
        pool: PgPool,
        tokens: Tokens,
        vault: Arc<crate::vault::Vault>,
    ) -> Self {
        Self {
            vault,
            sampler: Arc::new(sampler::QueueSampler::new(
                settings.clone(),
                sampler::SAMPLE_TTL,
            )),
            pool,
            settings,
            tokens: Arc::new(tokens),
            prometheus: telemetry::prometheus(),
            last_sample: Arc::new(Mutex::new(None)),
            limits: Limits::default(),
            console: Arc::new(console::Sessions::default()),
        }
    }

    /// The same state with other limits (tests shorten the timeouts).
    pub fn with_limits(self, limits: Limits) -> Self {
        Self { limits, ..self }
    }

    /// The queue sampler of this API.
    pub fn queue_sampler(&self) -> Arc<sampler::QueueSampler> {
        Arc::clone(&self.sampler)
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
    let limits = state.limits;
    Router::new()
        .route("/v1/applications", get(list_applications))
        .route("/v1/applications/{id}", get(get_application))
        .route(
            "/v1/applications/{id}/phone-confirmation",
            post(confirm_phone),
        )
        .route("/v1/queues", get(queues))
        .route("/v1/dead-letters", get(list_dead_letters))
        .route("/v1/dead-letters/bulk", post(bulk_dead_letters))
        .route(
            "/v1/dead-letters/{id}",
            get(get_dead_letter).delete(discard_dead_letter),
        )
        .route("/v1/dead-letters/{id}/replay", post(replay_dead_letter))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .merge(console::router())
        // Route layers run after routing: innermost the timeout, then the route's template
        // handed out to `observe` (outside the router, where it would not be known yet).
        .route_layer(middleware::from_fn_with_state(
            limits.request_timeout,
            time_limit,
        ))
        .route_layer(middleware::from_fn(tag_route))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(limits.body_bytes))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// A request's route template (`/v1/applications/{id}`), never its path: ids are no labels.
#[derive(Debug, Clone)]
struct RouteLabel(String);

async fn tag_route(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(RouteLabel(route));
    }
    response
}

async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!(
            "the request took longer than {}; try again",
            humantime::format_duration(limit)
        ))
        .into_response(),
    }
}

/// Counts every answer by route, method and status, and times it.
async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map_or_else(|| "unmatched".to_owned(), |r| r.0.clone());
    // Any method string a client invents would be a label value: only the standard ones count.
    let method = match method.as_str() {
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method,
        _ => "other".to_owned(),
    };
    ::metrics::counter!(names::HTTP_REQUESTS_TOTAL, "route" => route.clone(),
        "method" => method.clone(), "status" => response.status().as_u16().to_string())
    .increment(1);
    ::metrics::histogram!(names::HTTP_REQUEST_DURATION_SECONDS, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Gives axum's own refusals (a body over the limit, a wrong method, a path or query it could
/// not parse) the JSON error shape of every other error.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        // The console's pages answer errors in HTML of their own.
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let mut shaped = error_body(status, code, &message);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    shaped.extensions_mut().extend(parts.extensions);
    shaped
}

/// Serves the API on `listener` until `token` is cancelled, with the limits of `state`: a
/// client that does not finish a request's head within `header_read_timeout` is disconnected.
/// (`axum::serve` sets no header timeout, so the accept loop is hyper-util's.)
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    token: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let limits = state.limits;
    let app = router(state);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %error, "the API cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service =
            hyper_util::service::TowerToHyperService::new(app.clone().map_request(
                |request: hyper::Request<hyper::body::Incoming>| request.map(Body::new),
            ));
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "an API connection ended with an error");
            }
        });
    }
    // Requests under way finish (each is bounded by the request timeout).
    let _ = tokio::time::timeout(limits.request_timeout, graceful.shutdown()).await;
    Ok(())
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
    unknown_parameters(
        &query,
        &["status", "kind", "limit", "cursor", "service", "from", "to"],
    )?;
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
    let created = |key: &str| match query.get(key) {
        None => Ok(None),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| Some(t.to_utc()))
            .map_err(|_| {
                ApiError::BadRequest(format!(
                    "{key} {text:?} is not a date-time (RFC 3339, e.g. 2026-12-02T08:00:00Z)"
                ))
            }),
    };
    // A clerk sees their own service only: asking for another one finds nothing.
    let service = query.get("service").cloned();
    let issuing_service = match caller.role {
        Role::Operator => service,
        Role::Clerk if service.is_some() && service != caller.issuing_service => {
            return Ok(Json(json!({"items": [], "next_cursor": null})).into_response());
        }
        Role::Clerk => caller.issuing_service.clone(),
    };
    let filter = ListFilter {
        status,
        kind,
        issuing_service,
        created_from: created("from")?,
        created_to: created("to")?,
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
    send_confirmation(&state.pool, &caller, id, code).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"application_id": id, "status": "accepted"})),
    )
        .into_response())
}

/// Sends a typed-back code of `caller` (a clerk who sees the application) for application `id`:
/// the AMQP message of CONTRACT §2.2, through the outbox. Used by the API and the console.
pub(crate) async fn send_confirmation(
    pool: &PgPool,
    caller: &Caller,
    id: Uuid,
    code: &str,
) -> Result<(), ApiError> {
    let mut tx = pool.begin().await?;
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
    crate::outbox::commit(tx, pool).await?;
    Ok(())
}

async fn queues(State(state): State<ApiState>, caller: Caller) -> Result<Response, ApiError> {
    operator(&caller)?;
    let sampled = state
        .sampler
        .sample()
        .await
        .map_err(ApiError::Unavailable)?;
    let now = Instant::now();
    let totals: HashMap<String, telemetry::QueueTotals> = sampled
        .iter()
        .map(|q| (q.name.clone(), telemetry::queue_totals(&q.name)))
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
        .map(|q| {
            let (name, t) = (q.name.as_str(), totals[&q.name]);
            json!({
                "name": name, "messages": q.messages, "consumers": q.consumers,
                "published_total": t.published, "acked_total": t.acked, "redelivered_total": t.redelivered,
                "publish_rate": rate(name, |t| t.published), "ack_rate": rate(name, |t| t.acked),
                "redeliver_rate": rate(name, |t| t.redelivered),
            })
        })
        .collect();
    Ok(Json(json!({"queues": list, "sampled_at": chrono::Utc::now()})).into_response())
}

/// The filter fields of `GET /v1/dead-letters` and of a bulk action, from their text.
fn dead_letter_filter(
    get: impl Fn(&str) -> Option<String>,
) -> Result<dead_letters::Filter, ApiError> {
    let state = match get("state").as_deref() {
        None | Some("parked") => Some("parked".to_owned()),
        Some("all") => None,
        Some(s @ ("replayed" | "discarded")) => Some(s.to_owned()),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown state {other:?}; use parked, replayed, discarded or all"
            )));
        }
    };
    let time = |key: &str| -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
        match get(key) {
            None => Ok(None),
            Some(text) => chrono::DateTime::parse_from_rfc3339(&text)
                .map(|t| Some(t.to_utc()))
                .map_err(|_| {
                    ApiError::BadRequest(format!(
                        "{key} {text:?} is not a date-time (RFC 3339, e.g. 2026-12-02T08:00:00Z)"
                    ))
                }),
        }
    };
    let kind = get("kind");
    if let Some(kind) = &kind
        && ![
            "malformed",
            "invalid",
            "conflict",
            "permanent",
            "exhausted",
            "out_of_order",
        ]
        .contains(&kind.as_str())
    {
        return Err(ApiError::BadRequest(format!("unknown kind {kind:?}")));
    }
    Ok(dead_letters::Filter {
        state,
        kind,
        step: get("step"),
        error: get("error"),
        issuing_service: get("service"),
        parked_from: time("from")?,
        parked_to: time("to")?,
        through_id: None,
    })
}

async fn list_dead_letters(
    State(state): State<ApiState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    operator(&caller)?;
    unknown_parameters(
        &query,
        &[
            "limit", "cursor", "state", "kind", "step", "error", "service", "from", "to",
        ],
    )?;
    let filter = dead_letter_filter(|key| query.get(key).cloned())?;
    let before =
        match query.get("cursor") {
            Some(text) => Some(decode_cursor(text)?["before"].as_i64().ok_or_else(|| {
                ApiError::BadRequest("cursor is not one this API gave out".into())
            })?),
            None => None,
        };
    let (items, next) = dead_letters::list(&state.pool, &filter, limit_of(&query)?, before).await?;
    let next_cursor = next.map(|id| encode_cursor(&json!({"before": id})));
    Ok(Json(json!({"items": items, "next_cursor": next_cursor})).into_response())
}

/// `POST /v1/dead-letters/bulk`: with `"preview": true`, how many and which parked dead letters
/// the filter selects (and the `through_id` to apply with); without, applies `action` with one
/// `reason` to those up to `through_id`, each as a single replay or discard would.
async fn bulk_dead_letters(
    State(state): State<ApiState>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    operator(&caller)?;
    let request: Value = serde_json::from_slice(&body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| ApiError::BadRequest("the body must be a JSON object".into()))?;
    let known = [
        "action",
        "preview",
        "reason",
        "through_id",
        "kind",
        "step",
        "error",
        "service",
        "from",
        "to",
    ];
    if let Some(key) = request
        .as_object()
        .and_then(|o| o.keys().find(|k| !known.contains(&k.as_str())))
    {
        return Err(ApiError::BadRequest(format!(
            "unknown field {key:?}; known: {}",
            known.join(", ")
        )));
    }
    let text = |key: &str| -> Result<Option<String>, ApiError> {
        match request.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= 200 => {
                Ok(Some(s.trim().to_owned()))
            }
            Some(_) => Err(ApiError::BadRequest(format!(
                "{key} must be a non-empty string of at most 200 characters"
            ))),
        }
    };
    let action = text("action")?
        .as_deref()
        .and_then(dead_letters::BulkAction::parse)
        .ok_or_else(|| ApiError::BadRequest("action must be \"replay\" or \"discard\"".into()))?;
    let mut fields = HashMap::new();
    for key in ["kind", "step", "error", "service", "from", "to"] {
        if let Some(value) = text(key)? {
            fields.insert(key, value);
        }
    }
    let mut filter = dead_letter_filter(|key| fields.get(key).cloned())?;
    let preview = match request.get("preview") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::BadRequest("preview must be a boolean".into())),
    };
    if preview {
        let shown = dead_letters::bulk_preview(&state.pool, &filter, action, 50).await?;
        return Ok(Json(json!({
            "action": action.as_str(), "count": shown.count, "applicable": shown.applicable,
            "through_id": shown.through_id, "items": shown.items,
        }))
        .into_response());
    }
    let through = request
        .get("through_id")
        .and_then(Value::as_i64)
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            ApiError::BadRequest(
                "through_id (from a preview) is required to apply a bulk action".into(),
            )
        })?;
    filter.through_id = Some(through);
    let why = reason_of(&Bytes::from(
        json!({"reason": request.get("reason").cloned().unwrap_or(Value::Null)}).to_string(),
    ))?;
    let outcome = dead_letters::bulk_apply(
        &state.pool,
        &state.vault,
        &filter,
        action,
        &caller.name,
        &why,
    )
    .await
    .map_err(action_error)?;
    let skipped: Vec<Value> = outcome
        .skipped
        .iter()
        .map(|(id, error)| json!({"id": id, "error": error}))
        .collect();
    Ok(
        Json(json!({"action": action.as_str(), "done": outcome.done, "skipped": skipped}))
            .into_response(),
    )
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
    match dead_letters::get(&state.pool, &state.vault, id).await? {
        Some(detail) => Ok(Json(detail).into_response()),
        None => Err(ApiError::NotFound(format!("no dead letter {id}"))),
    }
}

/// The longest `reason` of a replay or a discard, in characters (not bytes).
pub const MAX_REASON_CHARS: usize = 500;

fn reason_of(body: &Bytes) -> Result<String, ApiError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::BadRequest("the body must be JSON: {\"reason\": \"…\"}".into()))?;
    request
        .get("reason")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|r| !r.is_empty() && r.chars().count() <= MAX_REASON_CHARS)
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "reason must be a non-empty string of at most {MAX_REASON_CHARS} characters"
            ))
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
    let summary = dead_letters::replay(&state.pool, &state.vault, id, &caller.name, &why)
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
    let _ = state.sampler.sample().await;
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
    // The circuit breakers (not a readiness check: an open one means the work waits, the
    // process is fine): `closed`, `open` or `half_open` per external system.
    let mut breakers = serde_json::Map::new();
    if database == "ok" && migrations == "ok" {
        let states = async {
            let mut conn = state.pool.acquire().await?;
            crate::breaker::states(&mut conn).await
        };
        match states.await {
            Ok(states) => {
                for (system, breaker, _) in states {
                    breakers.insert(system.as_str().into(), breaker.as_str().into());
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the circuit breakers"),
        }
    }
    let ready = [database, migrations, broker].iter().all(|c| *c == "ok");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"status": if ready { "ready" } else { "not_ready" },
        "checks": {"database": database, "broker": broker, "migrations": migrations},
        "simulators": state.settings.simulated.names(), "breakers": breakers});
    (status, Json(body)).into_response()
}
