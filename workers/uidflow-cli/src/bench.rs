//! `uidflow bench`: the whole pipeline, end to end, on N applications, with real RabbitMQ and
//! PostgreSQL (a fresh vhost and database of their own), the simulators in-process at a chosen
//! latency, and phone codes typed back from the SMS simulator.
//!
//! Backlog mode: publish N first, then start every part and drain. Prints applications/s,
//! per-step and end-to-end latency percentiles (from the history's timestamps), peak RSS, CPU
//! time, and database transactions and broker messages per application. `--floor` measures, in
//! the same run, the same shape of work with no uidflow logic (see [`floor`]).

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use sqlx::PgPool;
use uidflow::amqp::{Outgoing, Publisher};
use uidflow::config::Settings;
use uidflow::sim::{Faults, SimConfig};
use uidflow::system::{self, RunOptions};
use uidflow::topology::{APPLICATION_ROUTING_KEY, INTAKE_EXCHANGE, PHONE_CONFIRMATION_ROUTING_KEY};
use uuid::Uuid;

use crate::chaos::services::Scratch;
use crate::resources::{Sample, own_cpu_seconds};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Applications.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub applications: u32,
    /// The kind of every application: issue (3 argon2id hashes each) or block (none).
    #[arg(long, default_value = "issue", value_parser = ["issue", "block"])]
    pub mix: String,
    /// Simulator latency per call, e.g. `50ms`.
    #[arg(long, default_value = "0ms", value_parser = crate::parse_wait)]
    pub latency: Duration,
    /// Deliveries in flight per consumer.
    #[arg(long, default_value_t = 32)]
    pub concurrency: u16,
    /// Steady rate: publish this many applications per second while the parts run (default:
    /// backlog mode, all published before the parts start).
    #[arg(long, value_parser = positive_rate)]
    pub rate: Option<f64>,
    /// Also measure the machine's floor for the same shape of work, and the ratio.
    #[arg(long)]
    pub floor: bool,
    /// Print JSON instead of a report.
    #[arg(long)]
    pub json: bool,
    /// Run uidflow as a separate `uidflow run` process (this binary), so that its CPU time and
    /// peak RSS are measured apart from the bench's publisher, clerk and simulators.
    #[arg(long)]
    pub separate: bool,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate: give applications per second, e.g. 100"
        )),
    }
}

/// Runs the benchmark.
pub async fn run(base: &Settings, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let scratch = Scratch::create(base, "bench", &rabbitmqctl, &[])?;
    let result = measure(&scratch, args).await;
    scratch.drop_all(&rabbitmqctl).await;
    let mut report = result?;
    if args.floor {
        let scratch = Scratch::create(base, "bench", &rabbitmqctl, &[])?;
        let floor = floor(&scratch, args).await;
        scratch.drop_all(&rabbitmqctl).await;
        let floor = floor?;
        let ratio = report["applications_per_second"].as_f64().unwrap_or(0.0)
            / floor["applications_per_second"]
                .as_f64()
                .unwrap_or(f64::MAX);
        report["floor"] = floor;
        report["ratio_to_floor"] = json!(ratio);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// `rabbitmqctl` on the broker's machine (with the suite's bound on how long it may hang).
fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    crate::chaos::services::run("rabbitmqctl", args).context(
        "uidflow bench makes its own vhost with rabbitmqctl, which must be on the PATH (run it on the broker's machine)",
    )
}

/// A made-up person, distinct for each `n` below 18 million: birthday, identification number
/// (= the UID) and phone.
fn person(n: u32) -> (chrono::NaiveDate, String, String) {
    // 1 000 people per birthday (the 3-digit serial), birthdays over 18 000 days.
    let born = chrono::NaiveDate::from_ymd_opt(1950, 1, 1).expect("a date")
        + chrono::Duration::days(i64::from(n / 1000 % 18_000));
    let century = if chrono::Datelike::year(&born) < 2000 {
        3
    } else {
        5
    };
    let first13 = format!("{century}{}B{:03}PB", born.format("%d%m%y"), n % 1000);
    let digit = uidflow::domain::check_digit(&first13).expect("valid characters");
    let phone = format!("+37533{:07}", n % 10_000_000);
    (born, format!("{first13}{digit}"), phone)
}

/// The application of person `n` of a `kind`: its id, the phone and the message body.
fn applicant(n: u32, kind: &str) -> (Uuid, String, Vec<u8>) {
    let (born, uid, phone) = person(n);
    let id = Uuid::new_v4();
    let mut body = json!({
        "application_id": id, "kind": kind, "submitted_at": "2026-11-23T10:00:00+03:00",
        "issuing_service": {"code": "bench-oa"},
        "applicant": {"surname": "Bench", "given_name": "Test", "patronymic": null,
            "date_of_birth": born.format("%Y-%m-%d").to_string(), "identification_number": uid},
        "document": {"type": "passport", "number": "MP0000001"},
        "consent_to_verification": true
    });
    if kind == "issue" {
        body["phone"] = json!(phone);
        body["phone_use_attested"] = json!(true);
    }
    (
        id,
        phone,
        serde_json::to_vec(&body).expect("JSON serialises"),
    )
}

/// The applications of a run, made batch by batch as they are published, so the bench's own
/// memory does not grow with N: only the clerk's phone → application map is kept, and only for
/// kinds whose phone is confirmed by a code.
struct Applications {
    kind: String,
    /// For the clerk: whose code arrives at which phone.
    phones: HashMap<String, Uuid>,
}

impl Applications {
    fn new(kind: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            phones: HashMap::new(),
        }
    }

    /// The messages of applications `range`.
    fn batch(&mut self, range: std::ops::Range<u32>) -> Vec<Outgoing> {
        range
            .map(|n| {
                let (id, phone, body) = applicant(n, &self.kind);
                if self.kind == "issue" {
                    self.phones.insert(phone, id);
                }
                publish_message(APPLICATION_ROUTING_KEY, id, body)
            })
            .collect()
    }
}

/// For `block`: an active UID for each of the N applicants, written before the clock starts,
/// so every block finds one to block (and the run does every step, notification SMS included).
async fn seed_registry(pool: &PgPool, n: u32) -> anyhow::Result<()> {
    for start in (0..n).step_by(10_000) {
        let (uids, phones): (Vec<String>, Vec<String>) = (start..(start + 10_000).min(n))
            .map(|i| {
                let (_, uid, phone) = person(i);
                (uid, phone)
            })
            .unzip();
        sqlx::query(
            "INSERT INTO uid_registry (uid, phone, status, password_temporary, issued_at, updated_at)
             SELECT uid, phone, 'active', false, now(), now() FROM unnest($1::text[], $2::text[]) AS t (uid, phone)",
        )
        .bind(&uids)
        .bind(&phones)
        .execute(pool)
        .await
        .context("seeding the registry for the block applications")?;
    }
    Ok(())
}

fn publish_message(routing_key: &str, id: Uuid, body: Vec<u8>) -> Outgoing {
    Outgoing {
        exchange: INTAKE_EXCHANGE.into(),
        routing_key: routing_key.into(),
        message_id: Some(id.to_string()),
        content_type: Some("application/json".into()),
        headers: json!({}),
        body,
        mandatory: true,
        expiration_ms: None,
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// uidflow's parts for the run: in this process, or a `uidflow run` child (`--separate`).
enum Workers {
    InProcess(Box<uidflow_cli::Running>),
    Child(tokio::process::Child),
}

impl Workers {
    async fn start(
        scratch: &Scratch,
        settings: &Settings,
        pool: &PgPool,
        options: &RunOptions,
        args: &BenchArgs,
    ) -> anyhow::Result<Self> {
        if !args.separate {
            let running = uidflow_cli::start(settings, pool, options, SimConfig::default()).await?;
            return Ok(Self::InProcess(Box::new(running)));
        }
        let url = |u: &Option<url::Url>| u.as_ref().map(url::Url::to_string).unwrap_or_default();
        let program = std::env::current_exe().context("where is the uidflow binary?")?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(["run", "--concurrency", &args.concurrency.to_string()])
            .env("AMQP_URL", &scratch.amqp_url)
            .env("DATABASE_URL", &scratch.database_url)
            .env("MVD_URL", url(&settings.mvd_url))
            .env("SMS_URL", url(&settings.sms_url))
            .env("API_ADDR", "127.0.0.1:0")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            // As in-process: warnings and errors only.
            command.env("RUST_LOG", "warn");
        }
        Ok(Self::Child(
            command.spawn().context("cannot start `uidflow run`")?,
        ))
    }

    /// The child's pid (`None` in-process).
    fn pid(&self) -> Option<u32> {
        match self {
            Self::InProcess(_) => None,
            Self::Child(child) => child.id(),
        }
    }

    /// Stops the parts; a child gets SIGTERM and 30 s to finish its in-flight work.
    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::InProcess(running) => running.system.shutdown().await,
            Self::Child(mut child) => {
                if let Some(pid) = child.id() {
                    crate::chaos::services::sigterm(pid);
                }
                match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                    Ok(status) => anyhow::ensure!(
                        status?.success(),
                        "`uidflow run` did not end cleanly on SIGTERM"
                    ),
                    Err(_) => {
                        child.kill().await?;
                        anyhow::bail!("`uidflow run` did not stop within 30 s of SIGTERM");
                    }
                }
            }
        }
        Ok(())
    }
}

/// How many applications have ended, counted from their final status events on `uid.events`
/// (`application.completed`, `.rejected`, `.failed`) through an exclusive queue of the
/// bench's own: a count that costs the database nothing, whatever N. An event published twice
/// (at-least-once) counts once.
async fn count_ended(
    connection: &lapin::Connection,
) -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicUsize>> {
    use futures_lite::StreamExt;
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await?;
    for status in ["completed", "rejected", "failed"] {
        channel
            .queue_bind(
                queue.name().as_str().into(),
                uidflow::topology::EVENTS_EXCHANGE.into(),
                format!("application.{status}").as_str().into(),
                QueueBindOptions::default(),
                Default::default(),
            )
            .await?;
    }
    let mut events = channel
        .basic_consume(
            queue.name().as_str().into(),
            "bench-ended".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await?;
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = ended.clone();
    tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        while let Some(Ok(event)) = events.next().await {
            let id = serde_json::from_slice::<Value>(&event.data)
                .ok()
                .and_then(|e| {
                    e["application_id"]
                        .as_str()
                        .and_then(|i| i.parse::<Uuid>().ok())
                });
            if let Some(id) = id {
                seen.insert(id);
                count.store(seen.len(), std::sync::atomic::Ordering::Relaxed);
            }
        }
        drop(channel);
    });
    Ok(ended)
}

/// Waits until every queue uidflow consumes has a consumer (a `--separate` child is up).
async fn wait_for_consumers(
    connection: &lapin::Connection,
    settings: &Settings,
    workers: &mut Workers,
) -> anyhow::Result<()> {
    let queues: Vec<String> = uidflow::topology::Topology::for_settings(settings)
        .queues
        .iter()
        .filter(|q| {
            q.name == uidflow::topology::APPLICATION_QUEUE || q.name.starts_with("uid.step.")
        })
        .map(|q| q.name.clone())
        .collect();
    let channel = connection.create_channel().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Workers::Child(child) = workers
            && let Some(status) = child.try_wait()?
        {
            anyhow::bail!("`uidflow run` ended before it consumed anything ({status})");
        }
        let mut waiting = 0;
        for queue in &queues {
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await?;
            if declared.consumer_count() == 0 {
                waiting += 1;
            }
        }
        if waiting == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{waiting} of uidflow's queues still have no consumer after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = channel.close(200, "ready".into()).await;
    Ok(())
}

async fn measure(scratch: &Scratch, args: &BenchArgs) -> anyhow::Result<Value> {
    let token = tokio_util::sync::CancellationToken::new();
    let faults = Faults {
        latency: args.latency,
        ..Faults::default()
    };
    let (sim, addr) = uidflow::sim::spawn_local(
        SimConfig {
            mvd: faults.clone(),
            sms: faults,
        },
        token.clone(),
    )
    .await?;
    let mut settings = scratch.settings.clone();
    settings.mvd_url = Some(uidflow::sim::Simulators::mvd_url(addr).parse()?);
    settings.sms_url = Some(uidflow::sim::Simulators::sms_url(addr).parse()?);
    // A separate `uidflow run` sizes its own pool; the bench then needs only a few.
    let connections = if args.separate {
        4
    } else {
        u32::from(args.concurrency).saturating_mul(3).clamp(8, 90)
    };
    let pool = system::prepare(&settings, connections).await?;
    let n = args.applications;
    if args.mix == "block" {
        seed_registry(&pool, n).await?;
    }

    let connection = uidflow::amqp::connect(&settings, "bench").await?;
    let publisher = Publisher::open(&connection).await?;
    let ended_events = count_ended(&connection).await?;
    let mut applications = Applications::new(&args.mix);
    let options = RunOptions {
        concurrency: args.concurrency,
        parts: RunOptions::default().parts,
        // A key of its own: a bench's scratch database is dropped with its checkpoints.
        audit_key: Some(ed25519_dalek::SigningKey::from_bytes(&rand::random())),
        ..RunOptions::default()
    };
    let mut workers = None;
    let mut paced = None;
    match args.rate {
        // Backlog: everything is queued before any part starts.
        None => {
            let publishing = bar(u64::from(n), "publish");
            for start in (0..n).step_by(500) {
                let batch = applications.batch(start..(start + 500).min(n));
                publisher.publish_all(&batch).await?;
                publishing.inc(batch.len() as u64);
            }
            publishing.finish();
        }
        // Steady rate: the parts run first; applications arrive at `rate` per second, in a
        // batch every 20 ms, from a task of their own. They are made beforehand (the clerk
        // needs their phones), so rate runs keep N in memory.
        Some(rate) => {
            let mut started = Workers::start(scratch, &settings, &pool, &options, args).await?;
            wait_for_consumers(&connection, &settings, &mut started).await?;
            workers = Some(started);
            let messages = applications.batch(0..n);
            let publisher = publisher.clone();
            paced = Some(tokio::spawn(async move {
                let tick = Duration::from_millis(20);
                let mut interval = tokio::time::interval(tick);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let started = Instant::now();
                let mut sent = 0usize;
                while sent < messages.len() {
                    interval.tick().await;
                    let due = ((started.elapsed().as_secs_f64() * rate) as usize)
                        .clamp(sent + 1, messages.len());
                    publisher.publish_all(&messages[sent..due]).await?;
                    sent = due;
                }
                anyhow::Ok(started.elapsed())
            }));
        }
    }
    let phones = applications.phones;

    let before = db_commits(&pool).await?;
    let outbox_before = outbox_rows(&pool).await?;
    let (cpu_before, started, started_at) = (own_cpu_seconds(), Instant::now(), chrono::Utc::now());
    let (workers, resources) = match workers {
        Some(workers) => {
            let resources = Sample::take(&pool, workers.pid()).await;
            (workers, resources)
        }
        None => {
            let workers = Workers::start(scratch, &settings, &pool, &options, args).await?;
            // The sample follows the spawn: a child's first milliseconds of start-up are not
            // counted, whereas in-process start-up is (it runs on after the sample).
            let resources = Sample::take(&pool, workers.pid()).await;
            (workers, resources)
        }
    };
    let draining = bar(u64::from(n), "drain");
    let mut seen_sms = 0;
    loop {
        // The clerk: type back every new code as soon as the SMS simulator has it.
        let messages = sim.sms().messages_from(seen_sms);
        seen_sms += messages.len();
        let mut confirmations = Vec::new();
        for message in &messages {
            if let (Some(code), Some(id)) = (
                uidflow::sms::texts::code_in(&message.text),
                phones.get(&message.phone),
            ) {
                let body = serde_json::to_vec(&json!({"application_id": id, "code": code}))?;
                confirmations.push(publish_message(PHONE_CONFIRMATION_ROUTING_KEY, *id, body));
            }
        }
        if !confirmations.is_empty() {
            publisher.publish_all(&confirmations).await?;
        }
        let ended = ended_events.load(std::sync::atomic::Ordering::Relaxed);
        draining.set_position(ended as u64);
        if ended >= n as usize {
            break;
        }
        if let Some(pid) = workers.pid() {
            anyhow::ensure!(
                std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "`uidflow run` (pid {pid}) ended during the run"
            );
        }
        // The clerk's pace.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let noticed = started.elapsed();
    // The events said so; the table must agree.
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM applications WHERE status IN ('completed', 'rejected', 'failed')",
    )
    .fetch_one(&pool)
    .await?;
    anyhow::ensure!(
        ended == i64::from(n),
        "{n} final status events arrived but {ended} applications have ended"
    );
    let last_ended: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT max(at) FROM application_history WHERE status IN ('completed', 'rejected', 'failed')",
    )
    .fetch_one(&pool)
    .await?;
    let elapsed = (last_ended - started_at)
        .to_std()
        .unwrap_or(noticed)
        .min(noticed);
    let publishing_seconds = match paced {
        Some(task) => Some(task.await??.as_secs_f64()),
        None => None,
    };
    let cpu = own_cpu_seconds() - cpu_before;
    let usage = resources.usage(
        &Sample::take(&pool, workers.pid()).await,
        elapsed.as_secs_f64(),
        n,
    );
    let child = workers
        .pid()
        .map(|pid| json!({"pid": pid, "peak_rss_mib": peak_rss_mib(&pid.to_string())}));
    draining.finish();
    workers.stop().await?;
    token.cancel();
    let _ = connection.close(200, "bench done".into()).await;

    let commits = db_commits(&pool).await? - before;
    let published = outbox_rows(&pool).await? - outbox_before;
    let outcomes: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM applications GROUP BY status ORDER BY status")
            .fetch_all(&pool)
            .await?;
    let report = json!({
        "applications": n,
        "mix": args.mix,
        "simulator_latency_ms": args.latency.as_millis() as u64,
        "mode": if args.rate.is_some() { "rate" } else { "backlog" },
        "offered_rate": args.rate,
        "publishing_seconds": publishing_seconds,
        "concurrency": args.concurrency,
        "argon2": {"memory_kib": settings.hash_params.memory_kib, "iterations": settings.hash_params.iterations, "parallelism": settings.hash_params.parallelism},
        "seconds": elapsed.as_secs_f64(),
        "applications_per_second": f64::from(n) / elapsed.as_secs_f64(),
        "outcomes": outcomes.into_iter().collect::<HashMap<_, _>>(),
        "latency_ms": latencies(&pool).await?,
        "peak_rss_mib": peak_rss_mib("self"),
        "uidflow_process": child,
        "cpu_seconds": cpu,
        "resources": usage,
        "db_transactions_per_application": commits as f64 / f64::from(n),
        "broker_publishes_per_application": published as f64 / f64::from(n),
    });
    pool.close().await;
    Ok(report)
}

/// Percentiles of the end-to-end latency and of each status's time, from the history.
async fn latencies(pool: &PgPool) -> anyhow::Result<Value> {
    let rows: Vec<(String, f64, f64, f64, f64)> = sqlx::query_as(
        "WITH h AS (
             SELECT application_id, status, at,
                    lead(at) OVER (PARTITION BY application_id ORDER BY id) AS next_at
             FROM application_history),
         spans AS (
             SELECT status AS what, extract(epoch FROM next_at - at) * 1000 AS ms FROM h WHERE next_at IS NOT NULL
             UNION ALL
             SELECT 'end_to_end', extract(epoch FROM max(at) - min(at)) * 1000 FROM h GROUP BY application_id)
         SELECT what,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                percentile_cont(0.95) WITHIN GROUP (ORDER BY ms),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),
                max(ms)::float8
         FROM spans GROUP BY what ORDER BY what",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(what, p50, p95, p99, max)| {
            (
                what,
                json!({"p50": p50, "p95": p95, "p99": p99, "max": max}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into())
}

/// Outbox rows ever written in the run's database: the messages uidflow published with
/// confirms (status events, work items, retries, dead-letter copies), in-process or not. The
/// relay publishes each row once, but for a crash between confirm and delete.
async fn outbox_rows(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outbox_id_seq",
    )
    .fetch_one(pool)
    .await?)
}

async fn db_commits(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?)
}

/// Peak resident memory (`VmHWM`) of process `pid` (`self` for this one), in MiB.
fn peak_rss_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The floor: the same number of hops per application, each a confirmed persistent publish, a
/// consume with manual ack and one PostgreSQL transaction that writes a row and its history,
/// plus the argon2id hashes an application needs (3 for `issue`: the code, its check, the
/// password), with the same concurrency — and no uidflow logic.
async fn floor(scratch: &Scratch, args: &BenchArgs) -> anyhow::Result<Value> {
    use futures_lite::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
    };
    let settings = &scratch.settings;
    let hops: u32 = if args.mix == "issue" { 6 } else { 4 };
    let hashes: u32 = if args.mix == "issue" { 3 } else { 0 };
    let pool = uidflow::db::connect(settings, 64).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS floor_rows (id uuid PRIMARY KEY, hop int, payload jsonb)",
    )
    .execute(&pool)
    .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS floor_history (id bigserial PRIMARY KEY, row_id uuid, hop int, at timestamptz DEFAULT now())")
        .execute(&pool)
        .await?;
    let connection = uidflow::amqp::connect(settings, "bench-floor").await?;
    let setup = connection.create_channel().await?;
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    setup
        .queue_declare(
            "bench.floor".into(),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await?;
    let publisher = Publisher::open(&connection).await?;
    let n = args.applications;
    let total = u64::from(n) * u64::from(hops);
    let message = |id: Uuid, hop: u32| Outgoing {
        exchange: String::new(),
        routing_key: "bench.floor".into(),
        message_id: Some(id.to_string()),
        content_type: Some("application/json".into()),
        headers: json!({}),
        body: serde_json::to_vec(&json!({"id": id, "hop": hop})).expect("JSON serialises"),
        mandatory: true,
        expiration_ms: None,
    };
    let resources = Sample::take(&pool, None).await;
    let started = Instant::now();
    for start in (0..n).step_by(500) {
        let batch: Vec<Outgoing> = (start..(start + 500).min(n))
            .map(|_| message(Uuid::new_v4(), 1))
            .collect();
        publisher.publish_all(&batch).await?;
    }
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(args.concurrency, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            "bench.floor".into(),
            "floor".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await?;
    let progress = bar(total, "floor");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let params = settings.hash_params;
    while done.load(std::sync::atomic::Ordering::Relaxed) < total {
        tokio::select! {
            Some(delivery) = consumer.next() => {
                let delivery = delivery?;
                let (pool, publisher, done) = (pool.clone(), publisher.clone(), done.clone());
                tasks.spawn(async move {
                    let body: Value = serde_json::from_slice(&delivery.data)?;
                    let id: Uuid = serde_json::from_value(body["id"].clone())?;
                    let hop = body["hop"].as_u64().unwrap_or(1) as u32;
                    let mut tx = pool.begin().await?;
                    sqlx::query("INSERT INTO floor_rows (id, hop, payload) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET hop = EXCLUDED.hop")
                        .bind(id).bind(hop as i32).bind(&body).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO floor_history (row_id, hop) VALUES ($1, $2)").bind(id).bind(hop as i32).execute(&mut *tx).await?;
                    tx.commit().await?;
                    if hop == 1 {
                        for _ in 0..hashes {
                            let secret = uidflow::secrets::generate_password();
                            uidflow::secrets::hash_off_thread(secret, params).await;
                        }
                    }
                    if hop < hops {
                        publisher.publish_all(&[message(id, hop + 1)]).await?;
                    }
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    anyhow::Ok(())
                });
            }
            Some(finished) = tasks.join_next() => { finished??; }
        }
        progress.set_position(done.load(std::sync::atomic::Ordering::Relaxed));
    }
    progress.finish();
    let elapsed = started.elapsed();
    let usage = resources.usage(&Sample::take(&pool, None).await, elapsed.as_secs_f64(), n);
    let _ = connection.close(200, "floor done".into()).await;
    pool.close().await;
    Ok(json!({
        "resources": usage,
        "hops_per_application": hops,
        "argon2_hashes_per_application": hashes,
        "seconds": elapsed.as_secs_f64(),
        "applications_per_second": f64::from(n) / elapsed.as_secs_f64(),
    }))
}

fn print_report(report: &Value) {
    let mode = match report["offered_rate"].as_f64() {
        Some(rate) => format!("steady rate of {rate} applications/s"),
        None => "backlog".to_owned(),
    };
    println!(
        "uidflow bench: {} {} applications ({mode}), simulator latency {} ms, concurrency {}",
        report["applications"],
        report["mix"].as_str().unwrap_or("?"),
        report["simulator_latency_ms"],
        report["concurrency"]
    );
    println!(
        "  throughput      {:.1} applications/s end to end ({:.2} s)",
        report["applications_per_second"].as_f64().unwrap_or(0.0),
        report["seconds"].as_f64().unwrap_or(0.0)
    );
    println!("  outcomes        {}", report["outcomes"]);
    println!(
        "  latency (ms)    {:<28} {:>9} {:>9} {:>9} {:>9}",
        "", "p50", "p95", "p99", "max"
    );
    for (what, l) in report["latency_ms"].as_object().into_iter().flatten() {
        let f = |k: &str| l[k].as_f64().unwrap_or(0.0);
        println!(
            "                  {what:<28} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            f("p50"),
            f("p95"),
            f("p99"),
            f("max")
        );
    }
    let bench_rss = report["peak_rss_mib"].as_f64().unwrap_or(0.0);
    let cpu = report["cpu_seconds"].as_f64().unwrap_or(0.0);
    match report["uidflow_process"]["peak_rss_mib"].as_f64() {
        Some(child) => println!(
            "  peak RSS        uidflow run {child:.1} MiB; the bench (publisher, clerk, simulators) {bench_rss:.1} MiB, CPU {cpu:.1} s"
        ),
        None => println!("  peak RSS        {bench_rss:.1} MiB   CPU {cpu:.1} s"),
    }
    let transactions = report["db_transactions_per_application"]
        .as_f64()
        .unwrap_or(0.0);
    match report["broker_publishes_per_application"].as_f64() {
        Some(publishes) => println!(
            "  per application {transactions:.1} database transactions, {publishes:.1} broker publishes by uidflow"
        ),
        None => println!("  per application {transactions:.1} database transactions"),
    }
    print_resources("uidflow", &report["resources"]);
    if report["floor"].is_object() {
        print_resources("floor", &report["floor"]["resources"]);
        println!(
            "  floor           {:.1} applications/s ({} hops of publish+consume+transaction, {} argon2id hashes each): uidflow at {:.0} % of it",
            report["floor"]["applications_per_second"]
                .as_f64()
                .unwrap_or(0.0),
            report["floor"]["hops_per_application"],
            report["floor"]["argon2_hashes_per_application"],
            report["ratio_to_floor"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
}

fn print_resources(what: &str, usage: &Value) {
    let cores = |k: &str| usage["cpu_cores"][k].as_f64().unwrap_or(0.0);
    let driver = usage["cpu_cores"]["bench_driver"]
        .as_f64()
        .map(|c| format!(" (bench driver {c:.2})"))
        .unwrap_or_default();
    println!(
        "  resources       {what}: CPU cores uidflow {:.2}{driver}, RabbitMQ {:.2}, PostgreSQL {:.2}; machine {} % idle, {} % I/O wait; {:.2} WAL syncs per application",
        cores("uidflow"),
        cores("rabbitmq"),
        cores("postgresql"),
        usage["machine_idle_percent"],
        usage["machine_iowait_percent"],
        usage["wal_syncs_per_application"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  saturated       {what}: {}",
        usage["saturated"].as_str().unwrap_or("?")
    );
}
