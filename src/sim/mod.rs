//! Simulators of the external systems uidflow talks to, served over real HTTP for tests,
//! demos and local runs: the MVD data verification service ([`mvd`]) and the SMS gateway
//! ([`sms`]), each with run-time fault injection ([`faults`]).
//!
//! One [`Simulators`] value serves everything on one address:
//! - `/mvd/...`: the MVD service, so `MVD_URL` is [`Simulators::mvd_url`];
//! - `/sms/...`: the SMS gateway, so `SMS_URL` is [`Simulators::sms_url`];
//! - `/sim/v1/faults/mvd` and `/sim/v1/faults/sms`: `GET` reads and `PUT` replaces the
//!   [`Faults`] JSON of that service (a simulator control API; it is never faulted).
//!
//! The control endpoints and the SMS read-back need the simulators' token, random per
//! [`Simulators`] value (32 bytes of the OS CSPRNG, hex): `Authorization: Bearer <token>`,
//! else 401. In process it is [`Simulators::token`]; `uidflow run --simulators` and
//! `uidflow sim` write it owner-only to a file ([`Simulators::write_token`]). The contract
//! endpoints (`POST /mvd/v1/person-verifications`, `POST /sms/v1/messages`) stay open.
//!
//! The state (remembered MVD answers, accepted messages, faults, request counts) lives in
//! memory and is shared by every clone of the handle; it is lost when the process ends.
//!
//! [`Switchable`] serves one router on a fixed address that can be taken down (connections
//! refused) and brought back, for outages harsher than a 503 (`uidflow chaos`).

pub mod faults;
pub mod mvd;
pub mod sms;
pub mod switch;

use std::net::SocketAddr;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use faults::{FaultGate, Faults, FaultsError};
pub use mvd::{InvalidReason, MvdAnswer, MvdSim, TEST_PEOPLE, TestPerson};
pub use sms::{SentSms, SmsSim};
pub use switch::Switchable;

/// The faults each simulator starts with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimConfig {
    /// Initial faults of the MVD service.
    pub mvd: Faults,
    /// Initial faults of the SMS gateway.
    pub sms: Faults,
}

/// The token of the simulators' control and read-back endpoints; clones share it.
#[derive(Debug, Clone)]
pub struct SimToken(Arc<SecretString>);

impl SimToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        Self(Arc::new(crate::secrets::generate_token()))
    }

    /// The token, for `Authorization: Bearer`.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// True if `headers` carry `Authorization: Bearer <this token>` (compared in constant time).
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        use subtle::ConstantTimeEq;
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let known = crate::api::auth::digest(self.expose());
        bool::from(known.ct_eq(&crate::api::auth::digest(presented.trim())))
    }
}

/// Handle to the simulators; clones share the same state.
#[derive(Debug, Clone)]
pub struct Simulators {
    mvd: MvdSim,
    sms: SmsSim,
    token: SimToken,
}

impl Simulators {
    /// Fresh simulators with the initial faults of `config` and a fresh random token.
    pub fn new(config: SimConfig) -> Self {
        let token = SimToken::generate();
        Self {
            mvd: MvdSim::new(config.mvd),
            sms: SmsSim::new(config.sms, token.clone()),
            token,
        }
    }

    /// The token of the control and read-back endpoints (`Authorization: Bearer <token>`).
    pub fn token(&self) -> &str {
        self.token.expose()
    }

    /// Writes the token to `path`, readable and writable by the owner only (0600; a missing
    /// directory is made 0700). An existing file is replaced.
    pub fn write_token(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let _ = std::fs::remove_file(path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        writeln!(file, "{}", self.token())
    }

    /// Every route: MVD under `/mvd`, SMS under `/sms`, fault control under `/sim`.
    pub fn router(&self) -> Router {
        let control = Router::new()
            .route("/v1/faults/{service}", get(get_faults).put(put_faults))
            .with_state(self.clone());
        Router::new()
            .nest("/mvd", self.mvd.router())
            .nest("/sms", self.sms.router())
            .nest("/sim", control)
            .fallback(not_found)
    }

    /// Serves [`Self::router`] on `listener` until `shutdown` is cancelled, then lets the
    /// requests in flight finish (a held request finishes when its `hang` ends).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        tracing::debug!(addr = ?listener.local_addr().ok(), "simulators serving");
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }

    /// `MVD_URL` for simulators listening on `addr`: `http://{addr}/mvd`.
    pub fn mvd_url(addr: SocketAddr) -> String {
        format!("http://{addr}/mvd")
    }

    /// `SMS_URL` for simulators listening on `addr`: `http://{addr}/sms`.
    pub fn sms_url(addr: SocketAddr) -> String {
        format!("http://{addr}/sms")
    }

    /// The MVD simulator.
    pub fn mvd(&self) -> &MvdSim {
        &self.mvd
    }

    /// The SMS simulator.
    pub fn sms(&self) -> &SmsSim {
        &self.sms
    }

    /// The SMS messages accepted for `phone`, in acceptance order.
    pub fn messages_to(&self, phone: &str) -> Vec<SentSms> {
        self.sms.messages_to(phone)
    }

    /// Replaces the MVD faults; takes effect from the next request on.
    pub fn set_mvd_faults(&self, f: Faults) {
        self.mvd.gate().set(f);
    }

    /// Replaces the SMS faults; takes effect from the next request on.
    pub fn set_sms_faults(&self, f: Faults) {
        self.sms.gate().set(f);
    }

    /// The MVD faults now in force.
    pub fn mvd_faults(&self) -> Faults {
        self.mvd.gate().get()
    }

    /// The SMS faults now in force.
    pub fn sms_faults(&self) -> Faults {
        self.sms.gate().get()
    }

    /// How many MVD verification requests arrived, faulted ones included.
    pub fn mvd_requests(&self) -> u64 {
        self.mvd.requests()
    }

    /// A test aid: the last `traceparent` header the MVD simulator saw per `Idempotency-Key`
    /// (that is, per application), in no particular order.
    pub fn mvd_traceparents(&self) -> Vec<String> {
        self.mvd.traceparents()
    }

    /// How many SMS send requests arrived, faulted ones included (read-back not counted).
    pub fn sms_requests(&self) -> u64 {
        self.sms.requests()
    }

    fn gate(&self, service: &str) -> Option<&FaultGate> {
        match service {
            "mvd" => Some(self.mvd.gate()),
            "sms" => Some(self.sms.gate()),
            _ => None,
        }
    }
}

/// Starts the simulators on 127.0.0.1:0 in the background; returns the handle and the bound address.
pub async fn spawn_local(
    config: SimConfig,
    shutdown: CancellationToken,
) -> std::io::Result<(Simulators, SocketAddr)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let sims = Simulators::new(config);
    let serving = sims.clone();
    tokio::spawn(async move {
        if let Err(e) = serving.serve(listener, shutdown).await {
            tracing::error!(error = %e, "simulators stopped serving");
        }
    });
    Ok((sims, addr))
}

fn error(status: StatusCode, sentence: impl Into<String>) -> Response {
    (status, Json(json!({ "error": sentence.into() }))).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "There is no such endpoint.")
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "This endpoint needs the simulators' token: Authorization: Bearer <token>.",
    )
}

fn unknown_service() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "There is no such simulated service; use mvd or sms.",
    )
}

async fn get_faults(
    State(sims): State<Simulators>,
    headers: HeaderMap,
    Path(service): Path<String>,
) -> Response {
    if !sims.token.admits(&headers) {
        return unauthorized();
    }
    match sims.gate(&service) {
        Some(gate) => Json(gate.get()).into_response(),
        None => unknown_service(),
    }
}

async fn put_faults(
    State(sims): State<Simulators>,
    headers: HeaderMap,
    Path(service): Path<String>,
    body: Bytes,
) -> Response {
    if !sims.token.admits(&headers) {
        return unauthorized();
    }
    let Some(gate) = sims.gate(&service) else {
        return unknown_service();
    };
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(faults) => faults,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("The body is not valid faults: {e}."),
            );
        }
    };
    if let Err(e) = faults.validate() {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    gate.set(faults.clone());
    Json(faults).into_response()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::Value;
    use uuid::Uuid;

    use super::*;

    async fn start() -> (Simulators, SocketAddr, CancellationToken) {
        let shutdown = CancellationToken::new();
        let (sims, addr) = spawn_local(SimConfig::default(), shutdown.clone())
            .await
            .unwrap();
        (sims, addr, shutdown)
    }

    fn client() -> reqwest::Client {
        // uidflow builds reqwest with `rustls-no-provider`: a crypto provider must be
        // installed before a client is built (a second install is refused, harmlessly).
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    fn verification(addr: SocketAddr) -> reqwest::RequestBuilder {
        client()
            .post(format!(
                "{}/v1/person-verifications",
                Simulators::mvd_url(addr)
            ))
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&TEST_PEOPLE[6].request_body())
    }

    fn sms(addr: SocketAddr) -> reqwest::RequestBuilder {
        let body = json!({"message_id": Uuid::new_v4(), "phone": "+375291234567", "text": "Hi"});
        client()
            .post(format!("{}/v1/messages", Simulators::sms_url(addr)))
            .json(&body)
    }

    async fn status_and_retry_after(request: reqwest::RequestBuilder) -> (u16, Option<String>) {
        let response = request.send().await.unwrap();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), retry_after)
    }

    #[tokio::test]
    async fn scripted_faults_answer_503_429_503_then_succeed_and_every_request_is_counted() {
        let (sims, addr, shutdown) = start().await;
        let script = Faults {
            retry_after: Duration::from_secs(2),
            ..Faults::scripted([503, 429, 503])
        };
        sims.set_mvd_faults(script.clone());
        sims.set_sms_faults(script);
        let mut mvd = Vec::new();
        let mut sms_answers = Vec::new();
        for _ in 0..4 {
            mvd.push(status_and_retry_after(verification(addr)).await);
            sms_answers.push(status_and_retry_after(sms(addr)).await);
        }
        let expected = vec![
            (503, None),
            (429, Some("2".to_owned())),
            (503, None),
            (200, None),
        ];
        assert_eq!(mvd, expected);
        let mut expected_sms = expected;
        expected_sms[3].0 = 202;
        assert_eq!(sms_answers, expected_sms);
        assert_eq!(sims.mvd_requests(), 4);
        assert_eq!(sims.sms_requests(), 4);
        assert_eq!(sims.messages_to("+375291234567").len(), 1);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn an_outage_answers_503_until_cleared_and_stores_nothing() {
        let (sims, addr, shutdown) = start().await;
        let outage = Faults {
            outage: true,
            ..Faults::default()
        };
        sims.set_mvd_faults(outage.clone());
        sims.set_sms_faults(outage);
        for _ in 0..3 {
            assert_eq!(
                verification(addr).send().await.unwrap().status().as_u16(),
                503
            );
            assert_eq!(sms(addr).send().await.unwrap().status().as_u16(), 503);
        }
        assert!(sims.messages_to("+375291234567").is_empty());
        sims.set_mvd_faults(Faults::default());
        sims.set_sms_faults(Faults::default());
        assert_eq!(
            verification(addr).send().await.unwrap().status().as_u16(),
            200
        );
        assert_eq!(sms(addr).send().await.unwrap().status().as_u16(), 202);
        assert_eq!(sims.messages_to("+375291234567").len(), 1);
        assert_eq!((sims.mvd_requests(), sims.sms_requests()), (4, 4));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn latency_delays_the_answer_by_at_least_the_configured_time() {
        let (sims, addr, shutdown) = start().await;
        let latency = Duration::from_millis(200);
        let slow = Faults {
            latency,
            ..Faults::default()
        };
        sims.set_mvd_faults(slow.clone());
        sims.set_sms_faults(slow);
        let started = Instant::now();
        assert_eq!(
            verification(addr).send().await.unwrap().status().as_u16(),
            200
        );
        assert!(started.elapsed() >= latency);
        let started = Instant::now();
        assert_eq!(sms(addr).send().await.unwrap().status().as_u16(), 202);
        assert!(started.elapsed() >= latency);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_hanging_request_times_out_a_client_with_a_shorter_timeout() {
        let (sims, addr, shutdown) = start().await;
        let hang = Faults {
            timeout_rate: 1.0,
            hang: Duration::from_millis(300),
            ..Faults::default()
        };
        sims.set_mvd_faults(hang.clone());
        sims.set_sms_faults(hang);
        let short = Duration::from_millis(100);
        let mvd_error = verification(addr).timeout(short).send().await.unwrap_err();
        assert!(mvd_error.is_timeout(), "{mvd_error}");
        let sms_error = sms(addr).timeout(short).send().await.unwrap_err();
        assert!(sms_error.is_timeout(), "{sms_error}");
        assert!(sims.messages_to("+375291234567").is_empty());
        // A patient client gets the 504 once the hang ends.
        assert_eq!(sms(addr).send().await.unwrap().status().as_u16(), 504);
        assert_eq!(sims.sms_requests(), 2);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn faults_put_over_http_read_back_the_same_and_take_effect() {
        let (sims, addr, shutdown) = start().await;
        let faults = json!({
            "latency_ms": 5,
            "error_rate": 0.0,
            "rate_limit_rate": 0.0,
            "retry_after_ms": 3000,
            "timeout_rate": 0.0,
            "hang_ms": 1000,
            "outage": false,
            "fail_next": [429],
        });
        for service in ["mvd", "sms"] {
            let url = format!("http://{addr}/sim/v1/faults/{service}");
            let put = client().put(&url).json(&faults).send().await.unwrap();
            assert_eq!(put.status().as_u16(), 401, "no token");
            let put = client()
                .put(&url)
                .bearer_auth(sims.token())
                .json(&faults)
                .send()
                .await
                .unwrap();
            assert_eq!(put.status().as_u16(), 200);
            assert_eq!(put.json::<Value>().await.unwrap(), faults);
            let got = client().get(&url).send().await.unwrap();
            assert_eq!(got.status().as_u16(), 401, "no token");
            let got = client()
                .get(&url)
                .bearer_auth(sims.token())
                .send()
                .await
                .unwrap();
            assert_eq!(got.status().as_u16(), 200);
            assert_eq!(got.json::<Value>().await.unwrap(), faults);
        }
        let expected = Faults {
            latency: Duration::from_millis(5),
            retry_after: Duration::from_secs(3),
            hang: Duration::from_secs(1),
            ..Faults::scripted([429])
        };
        assert_eq!(sims.mvd_faults(), expected);
        assert_eq!(sims.sms_faults(), expected);
        let answer = status_and_retry_after(verification(addr)).await;
        assert_eq!(answer, (429, Some("3".to_owned())));
        assert!(sims.mvd_faults().fail_next.is_empty());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn bad_fault_control_requests_are_refused_and_change_nothing() {
        let (sims, addr, shutdown) = start().await;
        let url = format!("http://{addr}/sim/v1/faults/mvd");
        for body in [
            json!({"error_rate": 2.0}),
            json!({"fail_next": [42]}),
            json!({"latency": 5}),
            json!({"outage": "yes"}),
        ] {
            let response = client()
                .put(&url)
                .bearer_auth(sims.token())
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 400, "{body}");
            let answer: Value = response.json().await.unwrap();
            assert!(answer["error"].is_string());
        }
        assert_eq!(sims.mvd_faults(), Faults::default());
        let unknown = format!("http://{addr}/sim/v1/faults/tax");
        let response = client()
            .get(&unknown)
            .bearer_auth(sims.token())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 404);
        let nowhere = format!("http://{addr}/nowhere");
        assert_eq!(
            client()
                .get(&nowhere)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            404
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn initial_config_faults_apply_from_the_first_request() {
        let shutdown = CancellationToken::new();
        let config = SimConfig {
            mvd: Faults::scripted([503]),
            sms: Faults::default(),
        };
        let (sims, addr) = spawn_local(config, shutdown.clone()).await.unwrap();
        assert_eq!(
            verification(addr).send().await.unwrap().status().as_u16(),
            503
        );
        assert_eq!(sms(addr).send().await.unwrap().status().as_u16(), 202);
        assert_eq!(sims.mvd_requests(), 1);
        shutdown.cancel();
    }

    #[test]
    fn the_token_is_random_and_its_file_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let (one, two) = (
            Simulators::new(SimConfig::default()),
            Simulators::new(SimConfig::default()),
        );
        assert_ne!(one.token(), two.token());
        assert_eq!(one.token().len(), 64);
        assert!(one.token().bytes().all(|b| b.is_ascii_hexdigit()));
        let dir = std::env::temp_dir().join(format!("uidflow-sim-{}", Uuid::new_v4()));
        let path = dir.join("sim.token");
        one.write_token(&path).unwrap();
        two.write_token(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            two.token(),
            "a new start replaces the file"
        );
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&dir), mode(&path)), (0o700, 0o600));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn serving_stops_when_shutdown_is_cancelled() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server =
            tokio::spawn(Simulators::new(SimConfig::default()).serve(listener, shutdown.clone()));
        assert_eq!(sms(addr).send().await.unwrap().status().as_u16(), 202);
        shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(5), server).await;
        assert!(matches!(stopped, Ok(Ok(Ok(())))));
    }
}
