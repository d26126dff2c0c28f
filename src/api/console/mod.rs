//! The console: web pages for clerks and operators at `/ui`, served by the API with the same
//! tokens and roles (`auth`). Pages render on the server from templates compiled into the
//! binary (`templates/console/`, MiniJinja with HTML auto-escaping), with one small stylesheet
//! and one small script (the overview's polling) embedded: there is nothing to build.
//!
//! Sign-in: a token is posted once; the answer sets an `HttpOnly`, `SameSite=Strict` cookie
//! holding a random session id (only its SHA-256 is kept, in memory, with the caller and the
//! session's CSRF token; sessions end after [`SESSION_TTL`], at sign-out, or when the process
//! restarts). Every change (`POST`) carries the session's CSRF token in a hidden field, compared
//! in constant time, and is refused when its `Origin` is another site's.
//!
//! A clerk sees only their issuing service's applications (any other answers 404, exactly as an
//! unknown id) and no operator page (403). Personal data is shown masked only: applications
//! come masked from `applications`, dead-letter bodies and headers from `dead_letters`.

pub mod overview;

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDate, Utc};
use minijinja::{Environment, Value as Tv, context};
use serde::Serialize;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::auth::{Caller, Role, digest};
use super::{ApiError, ApiState, MAX_REASON_CHARS};
use crate::applications::{self, ListFilter, Position};
use crate::dead_letters::{self, ActionError, BulkAction, Filter};
use crate::domain::{Kind, Status};

/// The session cookie's name.
pub const COOKIE: &str = "uidflow_console";
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// At most this many sessions at once; the oldest go first.
const MAX_SESSIONS: usize = 10_000;
/// Rows per page of the lists.
const PAGE: i64 = 50;

/// A signed-in session.
#[derive(Debug, Clone)]
struct Session {
    caller: Caller,
    csrf: String,
    expires: Instant,
}

/// The console's sessions, by the SHA-256 of their id.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// Starts a session for `caller`: its id (for the cookie only) and its CSRF token.
    fn start(&self, caller: Caller) -> (String, String) {
        let id = random_hex();
        let csrf = random_hex();
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires > now);
        while map.len() >= MAX_SESSIONS {
            let oldest = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k);
            match oldest {
                Some(key) => map.remove(&key),
                None => break,
            };
        }
        map.insert(
            digest(&id),
            Session {
                caller,
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        (id, csrf)
    }

    fn get(&self, id: &str) -> Option<Session> {
        let key = digest(id);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&key) {
            Some(session) if session.expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    fn end(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&digest(id));
    }
}

/// 32 bytes of the OS CSPRNG, hex.
fn random_hex() -> String {
    use secrecy::ExposeSecret;
    crate::secrets::generate_token().expose_secret().to_owned()
}

/// The templates, compiled into the binary.
static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in [
        (
            "base.html",
            include_str!("../../../templates/console/base.html"),
        ),
        (
            "sign_in.html",
            include_str!("../../../templates/console/sign_in.html"),
        ),
        (
            "error.html",
            include_str!("../../../templates/console/error.html"),
        ),
        (
            "applications.html",
            include_str!("../../../templates/console/applications.html"),
        ),
        (
            "application.html",
            include_str!("../../../templates/console/application.html"),
        ),
        (
            "overview.html",
            include_str!("../../../templates/console/overview.html"),
        ),
        (
            "overview_live.html",
            include_str!("../../../templates/console/overview_live.html"),
        ),
        (
            "dead_letters.html",
            include_str!("../../../templates/console/dead_letters.html"),
        ),
        (
            "dead_letter.html",
            include_str!("../../../templates/console/dead_letter.html"),
        ),
        (
            "bulk.html",
            include_str!("../../../templates/console/bulk.html"),
        ),
        (
            "audit.html",
            include_str!("../../../templates/console/audit.html"),
        ),
    ] {
        env.add_template(name, source)
            .unwrap_or_else(|e| panic!("console template {name} is invalid: {e}"));
    }
    env.add_filter("when", |at: String| -> String { short_time(&at) });
    env
});

const CSS: &str = include_str!("../../../templates/console/console.css");
const JS: &str = include_str!("../../../templates/console/console.js");

/// `2026-12-02T08:47:03.123456Z` as `2026-12-02 08:47:03`.
fn short_time(at: &str) -> String {
    DateTime::parse_from_rfc3339(at)
        .map(|t| t.to_utc().format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| at.to_owned())
}

/// The headers every page carries: not cached, not framed, no inline script or style.
fn page_headers(response: &mut Response) {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// Renders template `name` with `ctx` (and the signed-in session's caller and CSRF token).
fn render(status: StatusCode, name: &str, me: Option<&Me>, ctx: Tv) -> Response {
    let me_ctx = me.map(|me| {
        context! {
            name => me.caller.name,
            role => match me.caller.role { Role::Operator => "operator", Role::Clerk => "clerk" },
            service => me.caller.issuing_service,
            csrf => me.csrf,
        }
    });
    let full = context! { me => me_ctx, ..ctx };
    let html = TEMPLATES
        .get_template(name)
        .and_then(|t| t.render(full))
        .unwrap_or_else(|e| {
            tracing::error!(template = name, error = %e, "a console page did not render");
            "<!doctype html><title>Error</title><p>This page could not be shown; see the server log.</p>".to_owned()
        });
    let mut response = (status, html).into_response();
    page_headers(&mut response);
    response
}

/// An error shown as a page.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    message: String,
    /// Boxed: an error stays small on its way up.
    me: Option<Box<Me>>,
}

impl PageError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            me: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn for_me(mut self, me: &Me) -> Self {
        self.me = Some(Box::new(me.clone()));
        self
    }
}

impl From<sqlx::Error> for PageError {
    fn from(error: sqlx::Error) -> Self {
        tracing::error!(error = %error, "database error in the console");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error; see the server log.",
        )
    }
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::BadRequest(m) => Self::bad(m),
            ApiError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, m),
            ApiError::Forbidden => Self::new(StatusCode::FORBIDDEN, "Operators only."),
            ApiError::Conflict(m) => Self::new(StatusCode::CONFLICT, m),
            ApiError::Unprocessable(m) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, m),
            ApiError::Unavailable(m) => Self::new(StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::Unauthorized => Self::new(StatusCode::UNAUTHORIZED, "Sign in first."),
            ApiError::Internal => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error; see the server log.",
            ),
        }
    }
}

impl From<ActionError> for PageError {
    fn from(error: ActionError) -> Self {
        super::action_error(error).into()
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        render(
            self.status,
            "error.html",
            self.me.as_deref(),
            context! { status => self.status.as_u16(), message => self.message },
        )
    }
}

/// The signed-in caller of a page, with the session's id and CSRF token.
#[derive(Debug, Clone)]
pub struct Me {
    caller: Caller,
    csrf: String,
    session: String,
}

impl Me {
    fn operator(&self) -> Result<(), PageError> {
        match self.caller.role {
            Role::Operator => Ok(()),
            Role::Clerk => Err(PageError::new(
                StatusCode::FORBIDDEN,
                "This page is for operators; clerks see their service's applications.",
            )
            .for_me(self)),
        }
    }

    /// Refuses a change without this session's CSRF token.
    fn check_csrf(&self, presented: &str) -> Result<(), PageError> {
        if bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes())) {
            Ok(())
        } else {
            Err(PageError::new(
                StatusCode::FORBIDDEN,
                "This form is stale or did not come from this console (CSRF check failed); reload the page and try again.",
            )
            .for_me(self))
        }
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty())
}

/// Refuses a request whose `Origin` (or, without one, `Referer`) names another site than the
/// one it was sent to. Browsers send `Origin` on every cross-site `POST`.
fn same_origin(headers: &HeaderMap) -> Result<(), PageError> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let source = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    match source {
        None => Ok(()),
        Some(source) => {
            let authority = url::Url::parse(source).ok().map(|u| {
                let host = u.host_str().unwrap_or_default().to_owned();
                match u.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                }
            });
            if authority.as_deref() == Some(host) && !host.is_empty() {
                Ok(())
            } else {
                Err(PageError::new(
                    StatusCode::FORBIDDEN,
                    "This request came from another site and was refused.",
                ))
            }
        }
    }
}

/// Not signed in: pages send the browser to the sign-in page.
pub struct SignInFirst;

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        let mut response = Redirect::to("/ui/sign-in").into_response();
        page_headers(&mut response);
        response
    }
}

impl FromRequestParts<ApiState> for Me {
    type Rejection = SignInFirst;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let id = cookie_value(&parts.headers).ok_or(SignInFirst)?;
        let session = state.console.get(&id).ok_or(SignInFirst)?;
        Ok(Me {
            caller: session.caller,
            csrf: session.csrf,
            session: id,
        })
    }
}

/// The console's routes (merged into the API's router).
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(home))
        .route("/ui/", get(home))
        .route("/ui/static/console.css", get(css))
        .route("/ui/static/console.js", get(js))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/applications", get(applications_page))
        .route("/ui/applications/{id}", get(application_page))
        .route("/ui/applications/{id}/confirm", post(confirm))
        .route("/ui/overview", get(overview_page))
        .route("/ui/overview/live", get(overview_live))
        .route("/ui/dead-letters", get(dead_letters_page))
        .route("/ui/dead-letters/bulk", get(bulk_preview).post(bulk_apply))
        .route("/ui/dead-letters/{id}", get(dead_letter_page))
        .route("/ui/dead-letters/{id}/replay", post(replay))
        .route("/ui/dead-letters/{id}/discard", post(discard))
        .route("/ui/audit", get(audit_page))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

async fn home(me: Option<Me>) -> Response {
    match me.map(|me| me.caller.role) {
        None => Redirect::to("/ui/sign-in"),
        Some(Role::Clerk) => Redirect::to("/ui/applications"),
        Some(Role::Operator) => Redirect::to("/ui/overview"),
    }
    .into_response()
}

impl axum::extract::OptionalFromRequestParts<ApiState> for Me {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(
            <Me as FromRequestParts<ApiState>>::from_request_parts(parts, state)
                .await
                .ok(),
        )
    }
}

async fn sign_in_page(me: Option<Me>) -> Response {
    render(
        StatusCode::OK,
        "sign_in.html",
        me.as_ref(),
        context! { title => "Sign in" },
    )
}

#[derive(serde::Deserialize)]
struct SignInForm {
    #[serde(default)]
    token: String,
}

fn session_cookie(value: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .expect("a cookie of hex digits is a valid header")
}

async fn sign_in(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Result<Response, PageError> {
    same_origin(&headers)?;
    let Some(caller) = state.tokens.caller(form.token.trim()) else {
        return Ok(render(
            StatusCode::UNAUTHORIZED,
            "sign_in.html",
            None,
            context! { title => "Sign in", error => "That token is not valid." },
        ));
    };
    let role = caller.role.clone();
    tracing::info!(by = caller.name, "console sign-in");
    let (id, _) = state.console.start(caller);
    let mut response = Redirect::to(match role {
        Role::Operator => "/ui/overview",
        Role::Clerk => "/ui/applications",
    })
    .into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&id, SESSION_TTL.as_secs()),
    );
    page_headers(&mut response);
    Ok(response)
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(
    State(state): State<ApiState>,
    me: Me,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    same_origin(&headers).map_err(|e| e.for_me(&me))?;
    me.check_csrf(&form.csrf)?;
    state.console.end(&me.session);
    let mut response = Redirect::to("/ui/sign-in").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie("", 0));
    page_headers(&mut response);
    Ok(response)
}

/// A query value, `None` when absent or blank (an empty select of a filter form).
fn given<'a>(query: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    query.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// A day (`2026-12-02`, as a date input sends it) as its start in UTC; `end` takes the next
/// day's start, so a range includes its last day.
fn day(text: Option<&str>, end: bool, what: &str) -> Result<Option<DateTime<Utc>>, PageError> {
    let Some(text) = text else { return Ok(None) };
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| PageError::bad(format!("{what} {text:?} is not a date (YYYY-MM-DD)")))?;
    let date = if end {
        date.succ_opt().unwrap_or(date)
    } else {
        date
    };
    Ok(Some(date.and_hms_opt(0, 0, 0).expect("midnight").and_utc()))
}

/// The query string of `pairs` (blank values left out), for links that keep the filters.
fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            out.append_pair(key, value);
        }
    }
    out.finish()
}

/// The statuses and kinds a list can be filtered by.
fn statuses() -> Vec<&'static str> {
    crate::domain::Status::ALL
        .map(crate::domain::Status::as_str)
        .to_vec()
}
fn kinds() -> Vec<&'static str> {
    crate::domain::Kind::ALL
        .map(crate::domain::Kind::as_str)
        .to_vec()
}

async fn applications_page(
    State(state): State<ApiState>,
    me: Me,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let fail = |e: PageError| e.for_me(&me);
    // Find by id: straight to its page (which answers 404 for another service's).
    if let Some(id) = given(&query, "id") {
        let id = Uuid::parse_str(id)
            .map_err(|_| fail(PageError::bad(format!("{id:?} is not an application id"))))?;
        return Ok(Redirect::to(&format!("/ui/applications/{id}")).into_response());
    }
    let status = match given(&query, "status") {
        Some(text) => Some(
            Status::parse(text)
                .ok_or_else(|| fail(PageError::bad(format!("unknown status {text:?}"))))?,
        ),
        None => None,
    };
    let kind = match given(&query, "kind") {
        Some(text) => Some(
            Kind::parse(text)
                .ok_or_else(|| fail(PageError::bad(format!("unknown kind {text:?}"))))?,
        ),
        None => None,
    };
    let service = match me.caller.role {
        Role::Clerk => me.caller.issuing_service.clone(),
        Role::Operator => given(&query, "service").map(str::to_owned),
    };
    let filter = ListFilter {
        status,
        kind,
        issuing_service: service,
        created_from: day(given(&query, "from"), false, "from").map_err(fail)?,
        created_to: day(given(&query, "to"), true, "to").map_err(fail)?,
    };
    let after = match given(&query, "after") {
        Some(text) => Some(position(text).ok_or_else(|| fail(PageError::bad("bad page link")))?),
        None => None,
    };
    let mut conn = state.pool.acquire().await?;
    let (items, next) = applications::list(&mut conn, &filter, PAGE, after).await?;
    let keep = |key: &'static str| (key, given(&query, key).map(str::to_owned));
    let filters = [
        keep("status"),
        keep("kind"),
        keep("service"),
        keep("from"),
        keep("to"),
    ];
    let next_link = next.map(|p| {
        let mut pairs = filters.to_vec();
        pairs.push((
            "after",
            Some(format!(
                "{}_{}",
                p.created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                p.application_id
            )),
        ));
        format!("/ui/applications?{}", query_string(&pairs))
    });
    Ok(render(
        StatusCode::OK,
        "applications.html",
        Some(&me),
        context! {
            title => "Applications",
            items, next_link,
            statuses => statuses(), kinds => kinds(),
            q => context! {
                status => given(&query, "status"), kind => given(&query, "kind"),
                service => given(&query, "service"), from => given(&query, "from"),
                to => given(&query, "to"),
            },
            filtered => after.is_some() || filters.iter().any(|(_, v)| v.is_some()),
        },
    ))
}

fn position(text: &str) -> Option<Position> {
    let (at, id) = text.split_once('_')?;
    Some(Position {
        created_at: DateTime::parse_from_rfc3339(at).ok()?.to_utc(),
        application_id: Uuid::parse_str(id).ok()?,
    })
}

async fn application_page(
    State(state): State<ApiState>,
    me: Me,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let not_found =
        || PageError::new(StatusCode::NOT_FOUND, format!("No application {id}.")).for_me(&me);
    let parsed = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let mut conn = state.pool.acquire().await?;
    let view = match applications::load_view(&mut conn, parsed).await? {
        Some(view) if me.caller.sees(view.summary.issuing_service.as_deref()) => view,
        _ => return Err(not_found()),
    };
    // Retries are the history's notes of failed attempts.
    let retries = view
        .history
        .iter()
        .filter(|h| {
            h.detail
                .as_deref()
                .is_some_and(|d| d.starts_with("attempt ") && d.contains(" failed"))
        })
        .count();
    let can_confirm = me.caller.role == Role::Clerk
        && view.summary.status == Status::AwaitingPhoneConfirmation.as_str();
    Ok(render(
        StatusCode::OK,
        "application.html",
        Some(&me),
        context! {
            title => format!("Application {}", view.summary.application_id),
            app => view.summary, history => view.history, retries, can_confirm,
            sent => given(&query, "sent").is_some(),
        },
    ))
}

#[derive(serde::Deserialize)]
struct ConfirmForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    code: String,
}

async fn confirm(
    State(state): State<ApiState>,
    me: Me,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ConfirmForm>,
) -> Result<Response, PageError> {
    same_origin(&headers).map_err(|e| e.for_me(&me))?;
    me.check_csrf(&form.csrf)?;
    if me.caller.role != Role::Clerk {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "Only the clerk of the application's service types a confirmation code.",
        )
        .for_me(&me));
    }
    let parsed = Uuid::parse_str(&id)
        .map_err(|_| PageError::new(StatusCode::NOT_FOUND, format!("No application {id}.")))
        .map_err(|e| e.for_me(&me))?;
    let code = form.code.trim();
    if !(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())) {
        return Err(PageError::bad("The code is 6 digits.").for_me(&me));
    }
    super::send_confirmation(&state.pool, &me.caller, parsed, code)
        .await
        .map_err(|e| PageError::from(e).for_me(&me))?;
    Ok(Redirect::to(&format!("/ui/applications/{parsed}?sent=1")).into_response())
}

async fn overview_page(State(state): State<ApiState>, me: Me) -> Result<Response, PageError> {
    me.operator()?;
    let data =
        overview::gather(&state.pool, &state.sampler, state.settings.reconcile_grace).await?;
    Ok(render(
        StatusCode::OK,
        "overview.html",
        Some(&me),
        context! { title => "Overview", o => data },
    ))
}

async fn overview_live(State(state): State<ApiState>, me: Me) -> Result<Response, PageError> {
    me.operator()?;
    let data =
        overview::gather(&state.pool, &state.sampler, state.settings.reconcile_grace).await?;
    Ok(render(
        StatusCode::OK,
        "overview_live.html",
        Some(&me),
        context! { o => data },
    ))
}

/// The dead-letter filter of a query (the list's and the bulk action's form fields).
fn dead_letter_filter(query: &HashMap<String, String>) -> Result<Filter, PageError> {
    let state = match given(query, "state") {
        None | Some("parked") => Some("parked".to_owned()),
        Some("all") => None,
        Some(s @ ("replayed" | "discarded")) => Some(s.to_owned()),
        Some(other) => return Err(PageError::bad(format!("unknown state {other:?}"))),
    };
    let through_id = match given(query, "through") {
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| PageError::bad("bad bulk form (through)"))?,
        ),
        None => None,
    };
    Ok(Filter {
        state,
        kind: given(query, "kind").map(str::to_owned),
        step: given(query, "step").map(str::to_owned),
        error: given(query, "error").map(str::to_owned),
        issuing_service: given(query, "service").map(str::to_owned),
        parked_from: day(given(query, "from"), false, "from")?,
        parked_to: day(given(query, "to"), true, "to")?,
        through_id,
    })
}

/// The filter fields as the forms and links carry them.
fn filter_pairs(query: &HashMap<String, String>) -> Vec<(&'static str, Option<String>)> {
    ["state", "kind", "step", "error", "service", "from", "to"]
        .into_iter()
        .map(|k| (k, given(query, k).map(str::to_owned)))
        .collect()
}

const ERROR_KINDS: [&str; 6] = [
    "exhausted",
    "permanent",
    "malformed",
    "invalid",
    "conflict",
    "out_of_order",
];

fn filter_context(query: &HashMap<String, String>) -> Tv {
    context! {
        state => given(query, "state"), kind => given(query, "kind"), step => given(query, "step"),
        error => given(query, "error"), service => given(query, "service"),
        from => given(query, "from"), to => given(query, "to"),
    }
}

fn steps_for_filter() -> Vec<&'static str> {
    let mut steps = vec!["intake", "phone-confirmation"];
    steps.extend(crate::topology::STEPS);
    steps
}

async fn dead_letters_page(
    State(state): State<ApiState>,
    me: Me,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, PageError> {
    me.operator()?;
    let filter = dead_letter_filter(&query).map_err(|e| e.for_me(&me))?;
    let before = match given(&query, "before") {
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| PageError::bad("bad page link").for_me(&me))?,
        ),
        None => None,
    };
    let (items, next) = dead_letters::list(&state.pool, &filter, PAGE, before).await?;
    let pairs = filter_pairs(&query);
    let next_link = next.map(|id| {
        let mut pairs = pairs.clone();
        pairs.push(("before", Some(id.to_string())));
        format!("/ui/dead-letters?{}", query_string(&pairs))
    });
    let done = given(&query, "done").map(str::to_owned);
    Ok(render(
        StatusCode::OK,
        "dead_letters.html",
        Some(&me),
        context! {
            title => "Dead letters", items, next_link, done,
            q => filter_context(&query), kinds => ERROR_KINDS, steps => steps_for_filter(),
            filter_query => query_string(&pairs),
        },
    ))
}

async fn dead_letter_page(
    State(state): State<ApiState>,
    me: Me,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    me.operator()?;
    let not_found =
        || PageError::new(StatusCode::NOT_FOUND, format!("No dead letter {id}.")).for_me(&me);
    let parsed: i64 = id.parse().map_err(|_| not_found())?;
    let detail = dead_letters::get(&state.pool, &state.vault, parsed)
        .await?
        .ok_or_else(not_found)?;
    let body = match detail.body.encoding {
        "json" => serde_json::to_string_pretty(&detail.body.content).unwrap_or_default(),
        _ => detail.body.content.as_str().unwrap_or_default().to_owned(),
    };
    let headers = serde_json::to_string_pretty(&detail.headers).unwrap_or_default();
    Ok(render(
        StatusCode::OK,
        "dead_letter.html",
        Some(&me),
        context! {
            title => format!("Dead letter {parsed}"),
            d => detail, body, headers, max_reason => MAX_REASON_CHARS,
        },
    ))
}

#[derive(serde::Deserialize)]
struct ReasonForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

fn reason(text: &str) -> Result<String, PageError> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > MAX_REASON_CHARS {
        return Err(PageError::bad(format!(
            "Give a reason of 1 to {MAX_REASON_CHARS} characters."
        )));
    }
    Ok(text.to_owned())
}

async fn single_action(
    state: ApiState,
    me: Me,
    headers: HeaderMap,
    id: String,
    form: ReasonForm,
    action: BulkAction,
) -> Result<Response, PageError> {
    me.operator()?;
    same_origin(&headers).map_err(|e| e.for_me(&me))?;
    me.check_csrf(&form.csrf)?;
    let parsed: i64 = id
        .parse()
        .map_err(|_| PageError::new(StatusCode::NOT_FOUND, format!("No dead letter {id}.")))
        .map_err(|e| e.for_me(&me))?;
    let why = reason(&form.reason).map_err(|e| e.for_me(&me))?;
    let result = match action {
        BulkAction::Replay => {
            dead_letters::replay(&state.pool, &state.vault, parsed, &me.caller.name, &why).await
        }
        BulkAction::Discard => {
            dead_letters::discard(&state.pool, parsed, &me.caller.name, &why).await
        }
    };
    result.map_err(|e| PageError::from(e).for_me(&me))?;
    Ok(Redirect::to(&format!("/ui/dead-letters/{parsed}")).into_response())
}

async fn replay(
    State(state): State<ApiState>,
    me: Me,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Result<Response, PageError> {
    single_action(state, me, headers, id, form, BulkAction::Replay).await
}

async fn discard(
    State(state): State<ApiState>,
    me: Me,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Result<Response, PageError> {
    single_action(state, me, headers, id, form, BulkAction::Discard).await
}

/// How many of the selected dead letters a preview lists.
const PREVIEW_SHOWN: i64 = 20;

async fn bulk_preview(
    State(state): State<ApiState>,
    me: Me,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, PageError> {
    me.operator()?;
    let action = given(&query, "action")
        .and_then(BulkAction::parse)
        .ok_or_else(|| PageError::bad("Choose replay or discard.").for_me(&me))?;
    let filter = dead_letter_filter(&query).map_err(|e| e.for_me(&me))?;
    let preview = dead_letters::bulk_preview(&state.pool, &filter, action, PREVIEW_SHOWN).await?;
    let pairs = filter_pairs(&query)
        .into_iter()
        .filter(|(k, _)| *k != "state")
        .filter_map(|(k, v)| v.map(|v| context! { name => k, value => v }))
        .collect::<Vec<_>>();
    Ok(render(
        StatusCode::OK,
        "bulk.html",
        Some(&me),
        context! {
            title => format!("Bulk {}", action.as_str()),
            p => preview, action => action.as_str(), hidden => pairs,
            back => format!("/ui/dead-letters?{}", query_string(&filter_pairs(&query))),
            bulk_max => dead_letters::BULK_MAX, max_reason => MAX_REASON_CHARS,
        },
    ))
}

async fn bulk_apply(
    State(state): State<ApiState>,
    me: Me,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, PageError> {
    me.operator()?;
    same_origin(&headers).map_err(|e| e.for_me(&me))?;
    me.check_csrf(form.get("csrf").map(String::as_str).unwrap_or_default())?;
    let action = given(&form, "action")
        .and_then(BulkAction::parse)
        .ok_or_else(|| PageError::bad("Choose replay or discard.").for_me(&me))?;
    if given(&form, "through").is_none() {
        return Err(PageError::bad("Preview the set first.").for_me(&me));
    }
    let why = reason(form.get("reason").map(String::as_str).unwrap_or_default())
        .map_err(|e| e.for_me(&me))?;
    let filter = dead_letter_filter(&form).map_err(|e| e.for_me(&me))?;
    let outcome = dead_letters::bulk_apply(
        &state.pool,
        &state.vault,
        &filter,
        action,
        &me.caller.name,
        &why,
    )
    .await
    .map_err(|e| PageError::from(e).for_me(&me))?;
    #[derive(Serialize)]
    struct Skipped {
        id: i64,
        why: String,
    }
    let skipped: Vec<Skipped> = outcome
        .skipped
        .iter()
        .map(|(id, why)| Skipped {
            id: *id,
            why: why.clone(),
        })
        .collect();
    Ok(render(
        StatusCode::OK,
        "bulk.html",
        Some(&me),
        context! {
            title => format!("Bulk {}: done", action.as_str()),
            action => action.as_str(), done => outcome.done, skipped,
            applied => true,
        },
    ))
}

async fn audit_page(
    State(state): State<ApiState>,
    me: Me,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, PageError> {
    me.operator()?;
    let before = match given(&query, "before") {
        Some(text) => {
            let (at, id) = text
                .split_once('_')
                .and_then(|(at, id)| {
                    Some((
                        DateTime::parse_from_rfc3339(at).ok()?.to_utc(),
                        id.parse::<i64>().ok()?,
                    ))
                })
                .ok_or_else(|| PageError::bad("bad page link").for_me(&me))?;
            Some((at, id))
        }
        None => None,
    };
    let (items, next) = dead_letters::audit(&state.pool, PAGE, before).await?;
    let next_link = next.map(|(at, id)| {
        format!(
            "/ui/audit?{}",
            query_string(&[(
                "before",
                Some(format!(
                    "{}_{id}",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                ))
            )])
        )
    });
    Ok(render(
        StatusCode::OK,
        "audit.html",
        Some(&me),
        context! { title => "Audit", items, next_link },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pages_that_need_no_data_render_without_a_session() {
        // The pages with data are rendered with real data by tests/api/console.rs and in a
        // browser by deploy/console-test.
        for name in ["sign_in.html", "error.html"] {
            let html = TEMPLATES
                .get_template(name)
                .and_then(|t| t.render(context! { me => None::<()> }))
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(html.contains("<main id=\"main\""), "{name}");
        }
    }

    #[test]
    fn the_session_cookie_is_http_only_and_same_site_strict() {
        let cookie = session_cookie("abc", 60);
        let text = cookie.to_str().unwrap();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict"));
        assert!(text.starts_with("uidflow_console=abc;"));
    }

    #[test]
    fn sessions_end_and_are_kept_by_hash() {
        let sessions = Sessions::default();
        let caller = Caller {
            name: "op".into(),
            role: Role::Operator,
            issuing_service: None,
        };
        let (id, csrf) = sessions.start(caller);
        assert_ne!(id, csrf);
        assert_eq!(sessions.get(&id).unwrap().csrf, csrf);
        assert!(
            !sessions
                .map
                .lock()
                .unwrap()
                .keys()
                .any(|k| hex::encode(k) == id)
        );
        sessions.end(&id);
        assert!(sessions.get(&id).is_none());
    }

    #[test]
    fn cross_site_origins_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&headers).is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&headers).is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(same_origin(&headers).is_err());
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin(&headers).is_err());
    }
}
