//! The test harness: each test gets its own RabbitMQ vhost and PostgreSQL database, the real
//! system started in-process on them, and helpers that wait on conditions with a deadline.
//!
//! Real services only: RabbitMQ at 127.0.0.1:5672 (guest/guest, `rabbitmqctl` on the PATH to
//! create vhosts) and PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres). Set
//! `TEST_LOG=1` to see the system's logs.

#![allow(dead_code)]

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
}

fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl is on the PATH (the harness creates a vhost per test)");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl TestApp {
    /// Starts every part with default options.
    pub async fn spawn() -> Self {
        Self::spawn_with(RunOptions::default()).await
    }

    /// Prepares a fresh vhost and database and starts the system with `options`.
    pub async fn spawn_with(options: RunOptions) -> Self {
        let app = Self::prepare().await;
        let system = system::start(&app.settings, &app.pool, &options);
        Self {
            system: Some(system),
            ..app
        }
    }

    /// A fresh vhost and database, migrated and declared, with nothing running.
    pub async fn prepare() -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            uidflow::telemetry::init(uidflow::config::LogFormat::Text);
        }
        let suffix = Uuid::new_v4().simple().to_string();
        let vhost = format!("uidflow-test-{suffix}");
        let database = format!("uidflow_test_{suffix}");
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        let vars: HashMap<String, String> = [
            (
                "AMQP_URL",
                format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"),
            ),
            (
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:5432/{database}"),
            ),
            ("RETRY_DELAYS", "1s,5s,30s,2m,10m".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
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
        }
    }

    /// Publishes raw bytes to `uid.intake` as an intake system would, and waits for the confirm.
    pub async fn publish(&self, routing_key: &str, body: &[u8], message_id: Option<&str>) {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                "uid.intake".into(),
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
