//! The test harness: each test gets its own RabbitMQ vhost and PostgreSQL database, the real
//! system started in-process on them, and helpers that wait on conditions with a deadline.
//!
//! Real services only: RabbitMQ at 127.0.0.1:5672 (guest/guest, `rabbitmqctl` on the PATH to
//! create vhosts) and PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres). Set
//! `TEST_LOG=1` to see the system's logs.

#![allow(dead_code)]

pub mod openapi;

use std::collections::HashMap;
use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;
use sqlx::{PgPool, Row};
use uidflow::config::Settings;
use uidflow::system::{self, RunOptions, System};
use uuid::Uuid;

/// How long any wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running system on its own vhost and database.
pub struct TestApp {
    pub settings: Settings,
    pub pool: PgPool,
    pub vhost: String,
    pub database: String,
    pub system: Option<System>,
    pub connection: Connection,
    pub channel: Channel,
    /// The MVD and SMS simulators (pipeline tests), served from the test process.
    pub sim: Option<uidflow::sim::Simulators>,
    /// Where those simulators listen.
    pub sim_addr: Option<std::net::SocketAddr>,
    /// The API's base URL, e.g. `http://127.0.0.1:41234`, when the system runs.
    pub api: Option<String>,
    /// Tokens by name: `operator`, `clerk-<service>` (see `test_tokens`).
    pub tokens: HashMap<String, String>,
    /// The data keys of the system the test starts (held in memory).
    pub vault: std::sync::Arc<uidflow::vault::Vault>,
    /// The key the system signs audit checkpoints with (a fresh one per test).
    pub audit_key: ed25519_dalek::SigningKey,
}

/// Run options hosting every part but `left_out`.
pub fn without(left_out: &[uidflow::system::Part]) -> RunOptions {
    RunOptions {
        parts: uidflow::system::Part::ALL
            .into_iter()
            .filter(|p| !left_out.contains(p))
            .collect(),
        ..RunOptions::default()
    }
}

/// Tokens for tests: an operator and a clerk per example issuing service, with their names.
pub fn test_tokens() -> (uidflow::api::auth::Tokens, HashMap<String, String>) {
    use uidflow::api::auth::{Role, TokenEntry, Tokens, digest};
    let mut plain = HashMap::new();
    let mut entries = Vec::new();
    let mut add = |name: String, role: Role, service: Option<&str>| {
        let token = format!("test-{}", Uuid::new_v4().simple());
        entries.push(TokenEntry {
            name: Some(name.clone()),
            role,
            issuing_service: service.map(str::to_owned),
            sha256: hex::encode(digest(&token)),
        });
        plain.insert(name, token);
    };
    add("operator".into(), Role::Operator, None);
    for service in uidflow::api::auth::EXAMPLE_SERVICES {
        add(format!("clerk-{service}"), Role::Clerk, Some(service));
    }
    (
        Tokens::from_entries(entries).expect("test tokens are valid"),
        plain,
    )
}

/// Fast argon2 parameters for tests (`ARGON2_MEMORY_KIB`, `ARGON2_ITERATIONS`): the code
/// paths are the same, the cost is not the point.
pub const TEST_HASH_ENV: [(&str, &str); 2] =
    [("ARGON2_MEMORY_KIB", "1024"), ("ARGON2_ITERATIONS", "1")];

/// How long one `rabbitmqctl` call may take (it can hang on a node that is not answering).
const RABBITMQCTL_TIMEOUT: &str = "120";

pub fn rabbitmqctl(args: &[&str]) -> String {
    rabbitmqctl_with_input(args, b"")
}

/// `rabbitmqctl` with `input` on its standard input (e.g. `import_definitions`); its output.
pub fn rabbitmqctl_with_input(args: &[&str], input: &[u8]) -> String {
    use std::io::Write;
    // coreutils' `timeout` bounds the call: a test fails with a message instead of hanging CI.
    let mut child = Command::new("timeout")
        .args([RABBITMQCTL_TIMEOUT, "rabbitmqctl"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("timeout (coreutils) and rabbitmqctl are on the PATH (the harness creates a vhost per test)");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input)
        .expect("rabbitmqctl reads its input");
    let output = child.wait_with_output().expect("rabbitmqctl ends");
    assert!(
        output.status.code() != Some(124),
        "rabbitmqctl {args:?} did not answer within {RABBITMQCTL_TIMEOUT} s"
    );
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl TestApp {
    /// Starts every part with default options.
    pub async fn spawn() -> Self {
        Self::spawn_with(RunOptions::default()).await
    }

    /// Prepares a fresh vhost and database and starts the system with `options`.
    pub async fn spawn_with(mut options: RunOptions) -> Self {
        let app = Self::prepare().await;
        let (tokens, plain) = test_tokens();
        options.tokens = Some(tokens);
        options
            .vault
            .get_or_insert_with(|| std::sync::Arc::clone(&app.vault));
        options
            .audit_key
            .get_or_insert_with(|| app.audit_key.clone());
        let system = system::start(&app.settings, &app.pool, &options).expect("the system starts");
        let api = system.api_addr.map(|addr| format!("http://{addr}"));
        Self {
            system: Some(system),
            api,
            tokens: plain,
            ..app
        }
    }

    /// The whole pipeline (every part) against simulators served by the test, with short
    /// retry delays (`200ms,400ms,800ms`: 4 attempts) and `PHONE_CODE_TTL` of `code_ttl`.
    pub async fn spawn_pipeline(code_ttl: &str) -> Self {
        Self::spawn_pipeline_with(code_ttl, RunOptions::default()).await
    }

    /// [`TestApp::spawn_pipeline`] with options.
    pub async fn spawn_pipeline_with(code_ttl: &str, options: RunOptions) -> Self {
        Self::spawn_pipeline_env(code_ttl, options, &[]).await
    }

    /// [`TestApp::spawn_pipeline_with`] with configuration variables that override the
    /// pipeline's (e.g. `RETRY_DELAYS`).
    pub async fn spawn_pipeline_env(
        code_ttl: &str,
        options: RunOptions,
        overrides: &[(&str, &str)],
    ) -> Self {
        let app = Self::prepare_pipeline_env(code_ttl, overrides).await;
        let (settings, pool) = (app.settings.clone(), app.pool.clone());
        app.run_pipeline(&settings, &pool, options).await
    }

    /// Starts the whole pipeline of a [`TestApp::prepare_pipeline`] app as `uidflow run` would
    /// with `settings` (e.g. other credentials in `AMQP_URL` / `DATABASE_URL`): its own start
    /// (`system::prepare`) and pool. The test keeps the owner's pool and guest's channel.
    pub async fn start_pipeline_as(self, settings: &Settings, options: RunOptions) -> Self {
        let pool = system::prepare(settings, 16)
            .await
            .expect("the system's start succeeds with these credentials");
        self.run_pipeline(settings, &pool, options).await
    }

    async fn run_pipeline(self, settings: &Settings, pool: &PgPool, options: RunOptions) -> Self {
        let (tokens, plain) = test_tokens();
        let mut options = RunOptions {
            tokens: Some(tokens),
            vault: Some(
                options
                    .vault
                    .unwrap_or_else(|| std::sync::Arc::clone(&self.vault)),
            ),
            ..options
        };
        options
            .audit_key
            .get_or_insert_with(|| self.audit_key.clone());
        let running = uidflow_cli::start(settings, pool, &options, Default::default())
            .await
            .expect("the pipeline starts");
        let api = running.system.api_addr.map(|addr| format!("http://{addr}"));
        Self {
            system: Some(running.system),
            api,
            tokens: plain,
            ..self
        }
    }

    /// A fresh vhost and database for the whole pipeline (simulators served by the test,
    /// short retry delays, `PHONE_CODE_TTL` of `code_ttl`), migrated, with nothing running.
    pub async fn prepare_pipeline(code_ttl: &str) -> Self {
        Self::prepare_pipeline_env(code_ttl, &[]).await
    }

    /// [`TestApp::prepare_pipeline`] with overriding configuration variables.
    pub async fn prepare_pipeline_env(code_ttl: &str, overrides: &[(&str, &str)]) -> Self {
        let token = tokio_util::sync::CancellationToken::new();
        let (sim, addr) = uidflow::sim::spawn_local(uidflow::sim::SimConfig::default(), token)
            .await
            .expect("simulators start");
        let extra = [
            ("RETRY_DELAYS", "200ms,400ms,800ms".to_owned()),
            ("PHONE_CODE_TTL", code_ttl.to_owned()),
            ("MVD_URL", uidflow::sim::Simulators::mvd_url(addr)),
            ("SMS_URL", uidflow::sim::Simulators::sms_url(addr)),
            ("HTTP_TIMEOUT", "2s".to_owned()),
            (TEST_HASH_ENV[0].0, TEST_HASH_ENV[0].1.to_owned()),
            (TEST_HASH_ENV[1].0, TEST_HASH_ENV[1].1.to_owned()),
        ];
        let mut extra = extra.to_vec();
        extra.extend(overrides.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let app = Self::prepare_with(&extra).await;
        Self {
            sim: Some(sim),
            sim_addr: Some(addr),
            ..app
        }
    }

    /// A fresh vhost and database, migrated and declared, with nothing running.
    pub async fn prepare() -> Self {
        Self::prepare_with(&[]).await
    }

    /// [`TestApp::prepare`] with extra configuration variables.
    pub async fn prepare_with(extra: &[(&str, String)]) -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            uidflow::telemetry::init(uidflow::config::LogFormat::Text, None);
        }
        let suffix = Uuid::new_v4().simple().to_string();
        let vhost = format!("uidflow-test-{suffix}");
        let database = format!("uidflow_test_{suffix}");
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        let mut vars: HashMap<String, String> = [
            (
                "AMQP_URL",
                format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"),
            ),
            (
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:5432/{database}"),
            ),
            ("RETRY_DELAYS", "1s,5s,30s,2m,10m".to_owned()),
            ("API_ADDR", "127.0.0.1:0".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let settings = Settings::from_map(&vars).expect("test settings are valid");
        let pool = system::prepare(&settings, 16)
            .await
            .expect("database and topology are prepared");
        let connection = Connection::connect(
            &format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"),
            ConnectionProperties::default(),
        )
        .await
        .expect("the test connects to RabbitMQ");
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        Self {
            settings,
            pool,
            vhost,
            database,
            system: None,
            connection,
            channel,
            sim: None,
            sim_addr: None,
            api: None,
            tokens: HashMap::new(),
            vault: std::sync::Arc::new(uidflow::vault::Vault::ephemeral()),
            audit_key: ed25519_dalek::SigningKey::from_bytes(&rand::random()),
        }
    }

    /// Publishes raw bytes to `uid.intake` as an intake system would, and waits for the confirm.
    pub async fn publish(&self, routing_key: &str, body: &[u8], message_id: Option<&str>) {
        self.publish_with_headers(routing_key, body, message_id, &Value::Null)
            .await;
    }

    /// [`TestApp::publish`] with AMQP headers given as a JSON object (e.g. `traceparent`).
    pub async fn publish_with_headers(
        &self,
        routing_key: &str,
        body: &[u8],
        message_id: Option<&str>,
        headers: &Value,
    ) {
        self.publish_to("uid.intake", routing_key, body, message_id, headers)
            .await;
    }

    /// Publishes raw bytes to any exchange (`""`: straight to the queue named `routing_key`,
    /// as a forger with broker access could), persistent JSON, and waits for the confirm.
    pub async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        message_id: Option<&str>,
        headers: &Value,
    ) {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if headers.is_object() {
            properties = properties.with_headers(uidflow::amqp::json_to_headers(headers));
        }
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(
            matches!(confirm, lapin::Confirmation::Ack(None)),
            "the broker took the message: {confirm:?}"
        );
    }

    /// Publishes an application object (`message_id` = its `application_id`).
    pub async fn publish_application(&self, application: &Value) {
        let id = application["application_id"].as_str();
        self.publish("application", &serde_json::to_vec(application).unwrap(), id)
            .await;
    }

    /// Binds a new exclusive queue to `exchange` with `routing_key`, to observe what is published.
    pub async fn observe(&self, exchange: &str, routing_key: &str) -> String {
        let name = format!("test-observer-{}", Uuid::new_v4().simple());
        self.channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("observer queue");
        self.channel
            .queue_bind(
                name.as_str().into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("observer binding");
        name
    }

    /// Takes messages from `queue` until `count` arrived (or the deadline passes).
    pub async fn take(&self, queue: &str, count: usize) -> Vec<Delivery> {
        let channel = self.connection.create_channel().await.expect("channel");
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut taken = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        while taken.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .expect("ack");
                    taken.push(delivery);
                }
                _ => panic!(
                    "waited {DEADLINE:?} for {count} messages on {queue}, got {}",
                    taken.len()
                ),
            }
        }
        let _ = channel.close(200, "done".into()).await;
        taken
    }

    /// Messages ready in `queue` now (not counting unacked ones).
    pub async fn ready_count(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.expect("channel");
        let queue = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists");
        let _ = channel.close(200, "done".into()).await;
        queue.message_count()
    }

    /// Messages in `queue` now, ready and unacknowledged (from the broker, `rabbitmqctl`).
    pub fn queue_messages(&self, queue: &str) -> u64 {
        let out = rabbitmqctl(&["-q", "list_queues", "-p", &self.vhost, "name", "messages"]);
        out.lines()
            .filter_map(|line| line.split_once('\t'))
            .find(|(name, _)| *name == queue)
            .map(|(_, n)| n.trim().parse().expect("a message count"))
            .unwrap_or_else(|| panic!("queue {queue} is listed: {out}"))
    }

    /// The application's status, if it exists.
    pub async fn status_of(&self, id: &str) -> Option<String> {
        sqlx::query_scalar("SELECT status FROM applications WHERE application_id = $1::uuid")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .expect("query")
    }

    /// Waits until the application exists and returns its status.
    pub async fn wait_for_application(&self, id: &str) -> String {
        wait_until(&format!("application {id} to be recorded"), || async {
            self.status_of(id).await
        })
        .await
    }

    /// The payload of an application as stored, opened with the test's data keys (`None` when
    /// erased or unknown).
    pub async fn payload(&self, id: &str) -> Option<Value> {
        let id = Uuid::parse_str(id).expect("an application id");
        let row = sqlx::query(
            "SELECT a.payload, p.key_id, p.sealed FROM applications a
             LEFT JOIN application_payloads p USING (application_id) WHERE a.application_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .expect("query")?;
        uidflow::applications::payload_of(&row, &self.vault, id).expect("the payload opens")
    }

    /// The body of a `dead_letters` row as the message had it (opened with the test's keys).
    pub fn opened_body(&self, row: &sqlx::postgres::PgRow) -> Vec<u8> {
        uidflow::dead_letters::body_of(row, &self.vault)
            .expect("the body opens")
            .expect("the body is not erased")
    }

    /// The body of every dead letter as the message had it (opened), oldest first.
    pub async fn dead_letter_bodies(&self) -> Vec<Vec<u8>> {
        sqlx::query("SELECT body, body_key_id, body_erased_at FROM dead_letters ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .expect("query")
            .iter()
            .map(|row| {
                uidflow::dead_letters::body_of(row, &self.vault)
                    .expect("the body opens")
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Waits until `count` dead letters exist and returns them, oldest first.
    pub async fn wait_for_dead_letters(&self, count: i64) -> Vec<sqlx::postgres::PgRow> {
        wait_until(&format!("{count} dead letters"), || async {
            let rows = sqlx::query("SELECT * FROM dead_letters ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .expect("query");
            (rows.len() as i64 >= count).then_some(rows)
        })
        .await
    }

    /// Rows of a table matching an application, for exactly-once checks.
    pub async fn count(&self, sql: &'static str, id: &str) -> i64 {
        sqlx::query(sql)
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("count query")
            .get::<i64, _>(0)
    }

    /// Waits until the outbox is empty (everything committed was published).
    pub async fn wait_for_outbox_drained(&self) {
        wait_until("the outbox to drain", || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&self.pool)
                .await
                .expect("query");
            (n == 0).then_some(())
        })
        .await
    }

    /// Stops the running system, waiting for its work in flight.
    pub async fn shutdown_system(&mut self) {
        if let Some(system) = self.system.take() {
            system.shutdown().await;
        }
    }

    /// Stops the system and removes the vhost and the database.
    pub async fn stop(mut self) {
        if let Some(system) = self.system.take() {
            system.shutdown().await;
        }
        let _ = self.connection.close(200, "test done".into()).await;
        self.pool.close().await;
        rabbitmqctl(&["delete_vhost", &self.vhost]);
        let admin = PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .expect("admin connection");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.database
        )))
        .execute(&admin)
        .await
        .expect("drop test database");
        admin.close().await;
    }
}

/// A clerk at work: until `token` is cancelled, types back the newest code of every
/// application that waits for one (read from the test's simulators), as an intake system would.
pub async fn spawn_clerk(
    app: &TestApp,
    token: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let pool = app.pool.clone();
    let vault = std::sync::Arc::clone(&app.vault);
    let sim = app.sim().clone();
    let channel = app.connection.create_channel().await.unwrap();
    tokio::spawn(async move {
        let mut typed: HashMap<String, String> = HashMap::new();
        while !token.is_cancelled() {
            let waiting: Vec<Uuid> = sqlx::query_scalar(
                "SELECT application_id FROM applications WHERE status = 'awaiting_phone_confirmation'",
            )
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            for id in waiting {
                // The phone is sealed in the database: opened as a step opens it.
                let Ok(mut conn) = pool.acquire().await else {
                    continue;
                };
                let Ok(Some(application)) =
                    uidflow::applications::load(&mut conn, &vault, id, false).await
                else {
                    continue;
                };
                let Some(phone) = application.phone.map(|p| p.as_str().to_owned()) else {
                    continue;
                };
                let id = id.to_string();
                let newest = sim
                    .messages_to(&phone)
                    .iter()
                    .rev()
                    .find_map(|m| uidflow::sms::texts::code_in(&m.text).map(str::to_owned));
                if let Some(code) = newest
                    && typed.get(&id) != Some(&code)
                {
                    let body = serde_json::json!({"application_id": id, "code": code});
                    let published = channel
                        .basic_publish(
                            "uid.intake".into(),
                            "phone-confirmation".into(),
                            Default::default(),
                            &serde_json::to_vec(&body).unwrap(),
                            lapin::BasicProperties::default().with_delivery_mode(2),
                        )
                        .await;
                    if published.is_ok() {
                        typed.insert(id, code);
                    }
                }
            }
            // The clerk's pace; not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Polls `probe` until it returns `Some`, failing the test after [`DEADLINE`].
pub async fn wait_until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {DEADLINE:?} for {what}");
        // Polling interval of a condition wait, not a guess at how long something takes.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads an example message from `schemas/examples`.
pub fn example(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/schemas/examples/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("example exists")
}

/// Reads an example as JSON.
pub fn example_json(name: &str) -> Value {
    serde_json::from_slice(&example(name)).expect("example is JSON")
}

/// A header's value as text, from a delivery.
pub fn header(delivery: &Delivery, name: &str) -> Option<Value> {
    let headers = uidflow::amqp::headers_to_json(delivery.properties.headers().as_ref());
    headers.get(name).cloned()
}

/// A valid applicant made up for a test: `n` picks the date of birth, the sequence and the phone.
pub struct Person {
    pub identification_number: String,
    pub date_of_birth: String,
    pub phone: String,
}

impl Person {
    /// A distinct valid person for each `n` below 100 000.
    pub fn new(n: u32) -> Self {
        let born = chrono::NaiveDate::from_ymd_opt(1960, 1, 1).unwrap()
            + chrono::Duration::days(i64::from(n % 15_000));
        let first13 = format!(
            "{}{}A{:03}PB",
            if chrono::Datelike::year(&born) < 2000 {
                3
            } else {
                5
            },
            born.format("%d%m%y"),
            n % 1000
        );
        let digit = uidflow::domain::check_digit(&first13).expect("valid characters");
        Self {
            identification_number: format!("{first13}{digit}"),
            date_of_birth: born.format("%Y-%m-%d").to_string(),
            phone: format!("+37529{:07}", 1_000_000 + n),
        }
    }

    /// A person from the MVD simulator's test table.
    pub fn from_test_table(index: usize) -> Self {
        let person = &uidflow::sim::mvd::TEST_PEOPLE[index];
        Self {
            identification_number: person.identification_number.to_owned(),
            date_of_birth: person.date_of_birth.to_owned(),
            phone: format!("+37533{:07}", 5_000_000 + index),
        }
    }

    /// An application of `kind` for this person (with this person's phone where the kind needs one).
    pub fn application(&self, kind: &str) -> Value {
        let mut application = serde_json::json!({
            "application_id": Uuid::new_v4().to_string(),
            "kind": kind,
            "submitted_at": "2026-11-22T10:15:00+03:00",
            "issuing_service": {"code": "minsk-sov-oa"},
            "applicant": {
                "surname": "Іваноў", "given_name": "Іван", "patronymic": null,
                "date_of_birth": self.date_of_birth, "identification_number": self.identification_number
            },
            "document": {"type": "passport", "number": "MP1234567"},
            "consent_to_verification": true
        });
        if kind == "issue" || kind == "change_phone" {
            application["phone"] = Value::from(self.phone.clone());
            application["phone_use_attested"] = Value::from(true);
        }
        application
    }
}

impl TestApp {
    /// The simulators (pipeline tests only).
    pub fn sim(&self) -> &uidflow::sim::Simulators {
        self.sim
            .as_ref()
            .expect("a pipeline test app has simulators")
    }

    /// Waits until the application reaches `status`; fails early on another end state.
    pub async fn wait_for_status(&self, id: &str, status: &str) {
        let reached = wait_until(&format!("application {id} to be {status}"), || async {
            match self.status_of(id).await {
                Some(s) if s == status => Some(Ok(())),
                Some(s) if ["completed", "rejected", "failed"].contains(&s.as_str()) => {
                    Some(Err(s))
                }
                _ => None,
            }
        })
        .await;
        if let Err(other) = reached {
            let history = self.history(id).await;
            panic!("application {id} ended {other}, not {status}; history: {history:#?}");
        }
    }

    /// The application's history as (status, step, detail).
    pub async fn history(&self, id: &str) -> Vec<(String, String, Option<String>)> {
        sqlx::query_as("SELECT status, step, detail FROM application_history WHERE application_id = $1::uuid ORDER BY id")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .expect("history")
    }

    /// The reason code of a rejected application.
    pub async fn reason_code(&self, id: &str) -> Option<String> {
        sqlx::query_scalar(
            "SELECT reason->>'code' FROM applications WHERE application_id = $1::uuid",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .expect("reason")
    }

    /// Publishes a phone confirmation.
    pub async fn publish_code(&self, id: &str, code: &str) {
        let body = serde_json::json!({"application_id": id, "code": code});
        self.publish(
            "phone-confirmation",
            &serde_json::to_vec(&body).unwrap(),
            Some(id),
        )
        .await;
    }

    /// The code in the last code SMS to `phone`.
    pub fn last_code(&self, phone: &str) -> String {
        let messages = self.sim().messages_to(phone);
        messages
            .iter()
            .rev()
            .find_map(|m| uidflow::sms::texts::code_in(&m.text))
            .expect("a code SMS was sent to the phone")
            .to_owned()
    }

    /// Waits for the code SMS, then types it back as the clerk would.
    pub async fn confirm_phone(&self, id: &str, phone: &str) {
        self.wait_for_status(id, "awaiting_phone_confirmation")
            .await;
        let code = self.last_code(phone);
        self.publish_code(id, &code).await;
    }

    /// Runs an application of `kind` for `person` to `completed` (confirming the phone if asked).
    pub async fn complete(&self, person: &Person, kind: &str) -> String {
        let application = person.application(kind);
        let id = application["application_id"].as_str().unwrap().to_owned();
        self.publish_application(&application).await;
        if kind == "issue" || kind == "change_phone" {
            self.confirm_phone(&id, &person.phone).await;
        }
        self.wait_for_status(&id, "completed").await;
        id
    }

    /// The registry row of a UID: (status, phone, password_hash).
    pub async fn registry(&self, uid: &str) -> Option<(String, String, Option<String>)> {
        sqlx::query_as("SELECT status, phone, password_hash FROM uid_registry WHERE uid = $1")
            .bind(uid)
            .fetch_optional(&self.pool)
            .await
            .expect("registry")
    }

    /// Publishes an issue application for each person; returns their ids.
    pub async fn publish_issues(&self, people: &[Person]) -> Vec<String> {
        let mut ids = Vec::new();
        for person in people {
            let application = person.application("issue");
            ids.push(application["application_id"].as_str().unwrap().to_owned());
            self.publish_application(&application).await;
        }
        ids
    }

    /// Waits until each issue application of `ids` (for `people`, in order) completed, and
    /// checks it did so exactly once: one `completed` history row, one code SMS and one
    /// password SMS to its phone, and the password works.
    pub async fn each_completed_once(&self, ids: &[String], people: &[Person]) {
        for (id, person) in ids.iter().zip(people) {
            self.wait_for_status(id, "completed").await;
            assert_eq!(
                self.count(
                    "SELECT count(*) FROM application_history WHERE application_id = $1::uuid AND status = 'completed'",
                    id
                )
                .await,
                1,
                "{id} completed once"
            );
            let texts = self.sim().messages_to(&person.phone);
            assert_eq!(
                texts.len(),
                2,
                "one code SMS and one password SMS: {texts:?}"
            );
            assert!(
                self.last_password_works(&person.identification_number, &person.phone)
                    .await
            );
        }
    }

    /// True if the password in the last SMS to `phone` verifies against the registry's hash.
    pub async fn last_password_works(&self, uid: &str, phone: &str) -> bool {
        let (_, _, hash) = self.registry(uid).await.expect("a registry row");
        let messages = self.sim().messages_to(phone);
        let text = &messages.last().expect("an SMS to the phone").text;
        let password =
            uidflow::sms::texts::password_in(text).expect("the last SMS carries a password");
        uidflow::secrets::verify(password, &hash.expect("a password hash"))
    }
}

/// One HTTP answer of the API, for assertions.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub text: String,
    pub json: Value,
}

impl TestApp {
    /// Calls the API: `token` is a name from [`test_tokens`] (`operator`, `clerk-<service>`),
    /// `Some("")`-like unknown names send that literal string, `None` sends no token.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let base = self.api.as_ref().expect("the API runs in this test app");
        let client = uidflow::http::client(Duration::from_secs(10));
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = client.request(method, format!("{base}{path}"));
        if let Some(name) = token {
            let token = self
                .tokens
                .get(name)
                .cloned()
                .unwrap_or_else(|| name.to_owned());
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.expect("a body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            content_type,
            text,
            json,
        }
    }
}
