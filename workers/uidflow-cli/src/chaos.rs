//! `uidflow chaos`: the reliability suite. It drives real `uidflow run` processes (supervised
//! and restarted whenever they exit) on a scratch vhost and database, publishes applications
//! throughout a schedule of faults — `kill -9` and SIGTERM of workers, RabbitMQ `stop_app` /
//! `start_app`, PostgreSQL stop / start, the SMS gateway's listener closed, the MVD answering
//! 429 with `Retry-After` — and then accounts for every application (see [`accounting`]).
//!
//! The simulators run in this process, so what was sent survives the kills and the SMS log can
//! be read back. The RabbitMQ node and the PostgreSQL cluster it restarts are options and must
//! serve `AMQP_URL` / `DATABASE_URL`; whatever it stopped it starts again, also on failure.
//! `--short` is the form CI runs (about a minute of faults); the default is the long form.

mod accounting;
mod faults;
pub(crate) mod services;
mod traffic;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uidflow::config::{Settings, format_duration};
use uidflow::sim::{Faults, SimConfig, Simulators, Switchable};
use uidflow::topology::{Topology, timer_queue};

use faults::{Fault, Injected, Injector};
use services::{Scratch, Services};
use traffic::{Book, Counters, Expect, Intake, Traffic};
use workers::{Launch, Workers};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// The short form (what CI runs): about a minute of faults, a few of each kind.
    #[arg(long)]
    pub short: bool,
    /// The outages form instead (issue 12): production RETRY_DELAYS, the MVD down 5 min, then
    /// the SMS gateway down 15 min (longer than all the retries), covered by the circuit
    /// breakers; no kills, no broker or database restarts. With --short: seconds, not minutes.
    #[arg(long)]
    pub outages: bool,
    /// Print the report as JSON (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// The RabbitMQ node(s) to restart (`rabbitmqctl -n NODE`), comma-separated for a
    /// cluster (then AMQP_URL lists their addresses; each restart stops one node: the one
    /// leading the most queues, then any); default rabbitmqctl's own node. They must serve
    /// AMQP_URL.
    #[arg(long, value_name = "NODE,…", value_delimiter = ',')]
    pub rabbitmq_node: Vec<String>,
    /// The PostgreSQL cluster to restart (`pg_ctlcluster VERSION NAME`). It must serve
    /// DATABASE_URL.
    #[arg(long, value_name = "VERSION/NAME", default_value = "15/main")]
    pub pg_cluster: String,
    /// `uidflow run` processes (every third hosts only the parts that call out).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=6))]
    pub workers: u8,
    /// Spread the parts over five processes instead (`--only`), each part in two of them, so
    /// that a kill takes one step's consumer, not a whole pipeline (--workers is ignored).
    #[arg(long)]
    pub spread: bool,
    /// Deliveries in flight per consumer in each worker.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Seed of every random choice (fault moments, targets, the mix); printed in the report.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Kills instead of the form's (4 short, 24 long).
    #[arg(long)]
    pub kills: Option<u32>,
    /// How long the SMS gateway stays down instead of the form's (10s short, 150s long).
    #[arg(long, value_parser = crate::parse_wait)]
    pub sms_down: Option<Duration>,
    /// How long PostgreSQL stays stopped in each of its restarts instead of the form's.
    #[arg(long, value_parser = crate::parse_wait)]
    pub pg_down: Option<Duration>,
    /// New applicants per second instead of the form's (4 short, 1.5 long).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Where the workers' logs go (a directory per run inside).
    #[arg(long, default_value = ".uidflow/chaos")]
    pub log_dir: PathBuf,
    /// Keep the scratch vhost and database (they are kept anyway when a check fails).
    #[arg(long)]
    pub keep: bool,
}

/// The parts of a full worker (everything but the HTTP API) and of a caller-only worker.
const FULL: &str = "intake,outbox,dead-letter-keeper,phone-confirmation,verify-identity,confirm-phone,register,send-sms";
const CALLERS: &str = "outbox,verify-identity,confirm-phone,send-sms";
/// `--spread`: five processes, every part in two of them.
const SPREAD: [&str; 5] = [
    "intake,outbox,dead-letter-keeper,phone-confirmation",
    "verify-identity,confirm-phone",
    "register,send-sms",
    "verify-identity,confirm-phone,register,send-sms,outbox",
    "intake,dead-letter-keeper,phone-confirmation",
];

/// One form of the suite.
#[derive(Debug, Clone)]
struct Plan {
    form: &'static str,
    rate: f64,
    kills: u32,
    sequence: Vec<Fault>,
    lead_in: Duration,
    gap: Duration,
    tail: Duration,
    retry_delays: &'static str,
    /// `RECONCILE_GRACE` and `RECONCILE_INTERVAL` of the workers.
    reconcile_grace: &'static str,
    reconcile_interval: &'static str,
    /// `BREAKER_FAILURES` and `BREAKER_PROBE_INTERVAL` of the workers.
    breaker_failures: u32,
    breaker_probe: &'static str,
    retry_after: Duration,
    phone_code_ttl: &'static str,
    http_timeout: Duration,
    settle: Duration,
}

impl Plan {
    fn short() -> Self {
        let s = Duration::from_secs;
        Self {
            form: "short",
            rate: 4.0,
            kills: 4,
            sequence: vec![
                Fault::Mvd429(s(8)),
                Fault::Sigterm,
                Fault::SmsDown(s(10)),
                Fault::LoseMessages(s(6)),
                Fault::Rabbitmq(s(5)),
                Fault::Postgres(s(3)),
                Fault::Rabbitmq(s(5)),
            ],
            lead_in: s(3),
            gap: s(2),
            tail: s(3),
            retry_delays: "1s,2s,4s,8s,15s",
            reconcile_grace: "5s",
            reconcile_interval: "1s",
            breaker_failures: uidflow::breaker::DEFAULT_FAILURES,
            breaker_probe: "5s",
            retry_after: s(2),
            phone_code_ttl: "5m",
            http_timeout: s(2),
            settle: s(180),
        }
    }

    fn long() -> Self {
        let s = Duration::from_secs;
        Self {
            form: "long",
            rate: 1.5,
            kills: 24,
            sequence: vec![
                Fault::Mvd429(s(90)),
                Fault::Sigterm,
                Fault::SmsDown(s(150)),
                Fault::LoseMessages(s(20)),
                Fault::Rabbitmq(s(20)),
                Fault::Sigterm,
                Fault::Postgres(s(10)),
                Fault::Rabbitmq(s(45)),
                Fault::Sigterm,
                Fault::Postgres(s(30)),
            ],
            lead_in: s(20),
            gap: s(30),
            tail: s(30),
            retry_delays: "2s,10s,30s,1m,2m,4m",
            reconcile_grace: "30s",
            reconcile_interval: "5s",
            breaker_failures: uidflow::breaker::DEFAULT_FAILURES,
            breaker_probe: "30s",
            retry_after: s(10),
            phone_code_ttl: "10m",
            http_timeout: s(5),
            settle: s(900),
        }
    }

    /// The outages form (issue 12): outages far longer than the retries, and nothing else.
    fn outages(short: bool) -> Self {
        let s = Duration::from_secs;
        if short {
            Self {
                form: "outages-short",
                rate: 4.0,
                kills: 0,
                sequence: vec![Fault::MvdDown(s(5)), Fault::SmsDown(s(15))],
                lead_in: s(3),
                gap: s(2),
                tail: s(3),
                // Five attempts over 2.4 s (less jitter): each outage is several times longer.
                retry_delays: "150ms,300ms,600ms,1200ms",
                breaker_failures: uidflow::breaker::DEFAULT_FAILURES,
                breaker_probe: "1s",
                reconcile_grace: "5s",
                reconcile_interval: "1s",
                retry_after: s(2),
                phone_code_ttl: "5m",
                http_timeout: s(2),
                settle: s(120),
            }
        } else {
            Self {
                form: "outages",
                rate: 1.5,
                kills: 0,
                sequence: vec![Fault::MvdDown(s(300)), Fault::SmsDown(s(900))],
                lead_in: s(20),
                gap: s(30),
                tail: s(30),
                retry_delays: uidflow::config::DEFAULT_RETRY_DELAYS,
                breaker_failures: uidflow::breaker::DEFAULT_FAILURES,
                breaker_probe: "30s",
                reconcile_grace: "30s",
                reconcile_interval: "5s",
                retry_after: s(10),
                phone_code_ttl: "30m",
                http_timeout: s(5),
                settle: s(900),
            }
        }
    }

    /// Whether the circuit breakers cover an outage of any length: a single application's
    /// attempts are enough to open its breaker (then no attempt is spent until it closes).
    fn breakers_cover_outages(&self) -> bool {
        self.delays().len() + 1 >= self.breaker_failures as usize
    }

    fn from_args(args: &ChaosArgs) -> Result<Self, String> {
        let mut plan = match (args.outages, args.short) {
            (true, short) => Self::outages(short),
            (false, true) => Self::short(),
            (false, false) => Self::long(),
        };
        if let Some(kills) = args.kills {
            plan.kills = kills;
        }
        if let Some(rate) = args.rate {
            if !(rate > 0.0 && rate <= 100.0) {
                return Err("--rate must be above 0 and at most 100".into());
            }
            plan.rate = rate;
        }
        if let Some(length) = args.sms_down {
            for fault in &mut plan.sequence {
                if let Fault::SmsDown(d) = fault {
                    *d = length;
                }
            }
        }
        if let Some(length) = args.pg_down {
            for fault in &mut plan.sequence {
                if let Fault::Postgres(d) = fault {
                    *d = length;
                }
            }
        }
        // Every step's retries must outlast the longest outage of an outside service, or its
        // applications fail by design: the shortest total wait (each delay less 20 % jitter)
        // — unless the circuit breakers cover the outages (they open before the attempts run
        // out, and then no attempt is spent).
        let budget = plan.retry_budget();
        let longest = plan
            .sequence
            .iter()
            .filter_map(|f| match f {
                Fault::SmsDown(d)
                | Fault::Mvd429(d)
                | Fault::MvdDown(d)
                | Fault::LoseMessages(d) => Some(*d),
                _ => None,
            })
            .max()
            .unwrap_or_default();
        if longest.mul_f64(1.2) > budget && !plan.breakers_cover_outages() {
            return Err(format!(
                "an outage of {longest:?} outlasts the retries of the {} form (RETRY_DELAYS={}: at least {budget:?}); choose a shorter one",
                plan.form, plan.retry_delays
            ));
        }
        Ok(plan)
    }

    fn delays(&self) -> Vec<Duration> {
        self.retry_delays
            .split(',')
            .filter_map(uidflow::config::parse_duration)
            .collect()
    }

    fn retry_budget(&self) -> Duration {
        self.delays().iter().sum::<Duration>().mul_f64(0.8)
    }
}

/// Runs the suite; exit code 0 when every check passed, 1 otherwise.
pub async fn run(base: &Settings, args: &ChaosArgs) -> anyhow::Result<ExitCode> {
    let plan = match Plan::from_args(args) {
        Ok(plan) => plan,
        Err(problem) => {
            eprintln!("error: {problem}");
            return Ok(ExitCode::from(2));
        }
    };
    let services = Services::check(args.rabbitmq_node.clone(), &args.pg_cluster, base)?;
    // Whatever happens below, what we stopped is started again.
    let _restore = services.restore_on_drop();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let report = tokio::select! {
        report = drive(base, args, &plan, &services) => report?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; services restored"),
        _ = terminate.recv() => anyhow::bail!("terminated; services restored"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report["ok"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn drive(
    base: &Settings,
    args: &ChaosArgs,
    plan: &Plan,
    services: &Services,
) -> anyhow::Result<Value> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let started = Instant::now();
    eprintln!(
        "chaos: {} form, seed {seed}, RabbitMQ node {}, PostgreSQL {}/{}",
        plan.form,
        services.node_name(),
        services.pg_version,
        services.pg_cluster
    );

    // The simulators, in this process; the SMS gateway on a listener that can go away.
    let gentle = Faults {
        latency: Duration::from_millis(2),
        ..Faults::default()
    };
    let sims = Simulators::new(SimConfig {
        mvd: gentle.clone(),
        sms: gentle,
    });
    let any = "127.0.0.1:0".parse().expect("an address");
    let mvd = Switchable::start(any, Router::new().nest("/mvd", sims.mvd().router())).await?;
    let sms =
        Arc::new(Switchable::start(any, Router::new().nest("/sms", sims.sms().router())).await?);
    let log_dir = args.log_dir.join(format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        plan.form
    ));
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    // The workers sign audit checkpoints with a key of this run's, every few seconds, so
    // checkpoints are made under the faults too; the accounting verifies with it.
    let audit_key = uidflow::audit::key::local(&log_dir.join("keys/audit-signing.key"))
        .map_err(|e| anyhow::anyhow!(e))?;
    let extra = [
        ("AUDIT_KEY_FILE", audit_key.path.display().to_string()),
        ("AUDIT_CHECKPOINT_INTERVAL", "2s".to_owned()),
        ("RETRY_DELAYS", plan.retry_delays.to_owned()),
        ("BREAKER_FAILURES", plan.breaker_failures.to_string()),
        ("BREAKER_PROBE_INTERVAL", plan.breaker_probe.to_owned()),
        ("PHONE_CODE_TTL", plan.phone_code_ttl.to_owned()),
        ("RECONCILE_GRACE", plan.reconcile_grace.to_owned()),
        ("RECONCILE_INTERVAL", plan.reconcile_interval.to_owned()),
        ("HTTP_TIMEOUT", format_duration(plan.http_timeout)),
        ("MVD_URL", Simulators::mvd_url(mvd.addr())),
        ("SMS_URL", Simulators::sms_url(sms.addr())),
    ];
    let scratch = Scratch::create(base, "chaos", &|args| services.rabbitmqctl(args), &extra)?;
    let settings = scratch.settings.clone();
    let pool = uidflow::system::prepare(&settings, 4).await?;
    let code_ttl = settings.phone_code_ttl;

    let mut env: HashMap<String, String> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    env.insert("AMQP_URL".into(), scratch.amqp_url.clone());
    env.insert("DATABASE_URL".into(), scratch.database_url.clone());
    env.insert("API_ADDR".into(), "127.0.0.1:0".into());
    if std::env::var_os("RUST_LOG").is_none() {
        env.insert("RUST_LOG".into(), "info,lapin=warn,sqlx=warn".into());
    }
    let program = std::env::current_exe().context("where is the uidflow binary?")?;
    let layout: Vec<&str> = if args.spread {
        SPREAD.to_vec()
    } else {
        (0..usize::from(args.workers))
            .map(|w| if w % 3 == 2 { CALLERS } else { FULL })
            .collect()
    };
    let launches: Vec<Launch> = layout
        .iter()
        .enumerate()
        .map(|(w, parts)| Launch {
            program: program.clone(),
            parts: (*parts).to_owned(),
            concurrency: args.concurrency,
            env: env.clone(),
            log: log_dir.join(format!("worker-{w}.log")),
        })
        .collect();

    let mut schedule_rng = StdRng::seed_from_u64(seed);
    let (planned, window) = faults::schedule(
        &plan.sequence,
        plan.kills,
        plan.lead_in,
        plan.gap,
        plan.tail,
        &mut schedule_rng,
    );
    eprintln!(
        "chaos: {} workers, logs in {}; {} faults over {:.0} s, then settling",
        launches.len(),
        log_dir.display(),
        planned.len(),
        window.as_secs_f64()
    );

    let epoch = Instant::now();
    let workers = Arc::new(Workers::start(launches, epoch));
    let counters = Arc::new(Counters::default());
    let book = Arc::new(Mutex::new(Book::default()));
    let traffic = Traffic {
        book: Arc::clone(&book),
        intake: Arc::new(Intake::new(settings.clone(), Arc::clone(&counters))),
        pool: pool.clone(),
        sims: sims.clone(),
        counters: Arc::clone(&counters),
        deadline: epoch + window + plan.settle,
    };
    let stop = CancellationToken::new();
    let stories = tokio::spawn(traffic.clone().start_stories(
        plan.rate,
        epoch + window,
        StdRng::seed_from_u64(seed.wrapping_add(1)),
    ));
    let follow = tokio::spawn(traffic.clone().follow_stories(stop.clone()));
    let clerk = tokio::spawn(traffic.clone().clerk(stop.clone()));
    let injected = Arc::new(Mutex::new(Vec::<Injected>::new()));
    let injector = Arc::new(Injector {
        services: services.clone(),
        settings: settings.clone(),
        sims: sims.clone(),
        sms: Arc::clone(&sms),
        workers: Arc::clone(&workers),
        retry_after: plan.retry_after,
        epoch,
        log: Arc::clone(&injected),
        vhost: scratch.vhost.clone(),
        broker_restarts: Default::default(),
        rng: Mutex::new(StdRng::seed_from_u64(seed.wrapping_add(3))),
    });
    let fault_errors = injector
        .run(planned.clone(), StdRng::seed_from_u64(seed.wrapping_add(2)))
        .await;
    stories.await?;
    let window_seconds = epoch.elapsed().as_secs_f64();

    // Settle: every story told, every application ended (or waiting for a code never typed).
    let settled = wait_for(plan.settle, "applications to settle", || {
        let (pool, book) = (pool.clone(), Arc::clone(&book));
        async move { unsettled(&pool, &book).await }
    })
    .await;
    let settle_seconds = epoch.elapsed().as_secs_f64() - window_seconds;
    // Quiesce: duplicates and retries still queued are consumed (as no-ops) by the workers.
    let topology = Topology::for_settings(&settings);
    let code_timer_queue = timer_queue(uidflow::route::CONFIRM_PHONE, code_ttl);
    let must_be_empty: Vec<String> = topology
        .queues
        .iter()
        .map(|q| q.name.clone())
        .filter(|name| *name != code_timer_queue)
        .collect();
    let longest_delay = settings
        .retry_delays
        .iter()
        .max()
        .copied()
        .unwrap_or_default();
    let drained_depths = Arc::new(Mutex::new(HashMap::new()));
    let quiet = wait_for(
        longest_delay + Duration::from_secs(60),
        "queues and outbox to drain",
        || {
            let (pool, services, vhost, must_be_empty) = (
                pool.clone(),
                services.clone(),
                scratch.vhost.clone(),
                must_be_empty.clone(),
            );
            let last = Arc::clone(&drained_depths);
            async move {
                let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(-1);
                let depths = tokio::task::spawn_blocking(move || services.queue_depths(&vhost))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                let busy: usize = must_be_empty
                    .iter()
                    .filter(|q| depths.get(*q) != Some(&(0, 0)))
                    .count();
                *last
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = depths;
                (outbox != 0 || busy > 0)
                    .then(|| format!("{outbox} outbox rows, {busy} queues not empty"))
            }
        },
    )
    .await;
    stop.cancel();
    let _ = tokio::join!(follow, clerk);
    let exits_arc = Arc::clone(&workers.exits);
    let starts = workers.starts.lock().map(|s| s.clone()).unwrap_or_default();
    let parts = workers.parts.clone();
    workers.stop_all().await;
    let exits = exits_arc.lock().map(|e| e.clone()).unwrap_or_default();
    // The queues while the workers still ran and had nothing left to do, and after they
    // stopped (nothing may have stayed unacknowledged).
    let depths = drained_depths.lock().map(|d| d.clone()).unwrap_or_default();
    let after_stop = {
        let (services, vhost) = (services.clone(), scratch.vhost.clone());
        tokio::task::spawn_blocking(move || services.queue_depths(&vhost)).await??
    };
    let broker_back = services::wait_for_broker(&settings).await.is_ok();
    let database_back = services::wait_for_database(&settings).await.is_ok();

    let mut injected = injected.lock().map(|i| i.clone()).unwrap_or_default();
    measure_pauses(&pool, &mut injected).await?;
    let (mut checks, figures) = {
        // Every task that wrote to the book has ended: take it.
        let book = std::mem::take(
            &mut *book
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let inputs = accounting::Inputs {
            book: &book,
            sms: sims.sms().messages(None),
            injected: &injected,
            exits: &exits,
            worker_parts: &parts,
            max_attempts: u32::try_from(settings.retry_delays.len()).unwrap_or(u32::MAX) + 1,
            interruption_window: plan.http_timeout + Duration::from_secs(5),
            depths,
            after_stop,
            must_be_empty,
            code_timer_queue,
        };
        accounting::account(&pool, inputs).await?
    };
    let (audit_check, audit_figures) = accounting::audit(&pool, &audit_key.key).await?;
    checks.push(audit_check);
    checks.insert(
        0,
        accounting_check(
            "settled_in_time",
            settled.is_none() && quiet.is_none(),
            match (&settled, &quiet) {
                (None, None) => format!(
                    "every story told and every application settled {settle_seconds:.0} s after the faults; queues drained"
                ),
                _ => format!(
                    "gave up waiting: {}",
                    [settled.clone(), quiet.clone()].into_iter().flatten().collect::<Vec<_>>().join("; ")
                ),
            },
        ),
    );
    checks.push(faults_check(&planned, &injected, &fault_errors));
    checks.push(effects_check(&pool, &injected).await?);
    let breakers = breaker_figures(&pool).await?;
    let spent_while_open = breakers["attempts_spent_while_open"].as_i64().unwrap_or(-1);
    let saved = breakers["attempts_saved"].as_i64().unwrap_or(0);
    let outlasting = injected.iter().any(|i| {
        ["sms_down", "mvd_down"].contains(&i.kind) && i.seconds > plan.retry_budget().as_secs_f64()
    });
    checks.push(accounting_check(
        "breakers_spent_no_attempt_while_open",
        spent_while_open == 0 && (!outlasting || saved > 0),
        format!(
            "attempts spent while a breaker was open: {spent_while_open}; attempts saved (put back with their attempt untouched): {saved}; breakers opened: {}",
            breakers["opened"]
        ),
    ));
    checks.push(accounting_check(
        "services_restored",
        broker_back && database_back,
        format!("RabbitMQ answers: {broker_back}; PostgreSQL answers: {database_back}"),
    ));
    let ok = checks.iter().all(|c| c.ok);
    pool.close().await;
    mvd.down().await;
    sms.down().await;
    if ok && !args.keep {
        scratch.drop_all(&|args| services.rabbitmqctl(args)).await;
    } else {
        eprintln!(
            "chaos: kept vhost {} and database {} for inspection",
            scratch.vhost, scratch.database
        );
    }

    let mut report = json!({
        "ok": ok,
        "form": plan.form,
        "seed": seed,
        "elapsed_seconds": started.elapsed().as_secs_f64(),
        "window_seconds": window_seconds,
        "settle_seconds": settle_seconds,
        "settings": {
            "workers": parts,
            "concurrency": args.concurrency,
            "rate_per_second": plan.rate,
            "retry_delays": plan.retry_delays,
            "breaker_failures": plan.breaker_failures,
            "breaker_probe_interval": plan.breaker_probe,
            "retry_budget_seconds": plan.retry_budget().as_secs_f64(),
            "phone_code_ttl": plan.phone_code_ttl,
            "http_timeout": format_duration(plan.http_timeout),
            "argon2": {"memory_kib": settings.hash_params.memory_kib, "iterations": settings.hash_params.iterations},
            "rabbitmq_node": services.node_name(),
            "pg_cluster": format!("{}/{}", services.pg_version, services.pg_cluster),
            "logs": log_dir,
        },
        "faults": fault_figures(&injected),
        "workers": {
            "starts": starts,
            "exits_by_cause": exits.iter().fold(BTreeMap::<String, u64>::new(), |mut m, e| {
                *m.entry(format!("{:?}", e.cause)).or_default() += 1;
                m
            }),
            "exits": exits,
        },
        "publishing": {
            "confirmed": counters.confirmed.load(std::sync::atomic::Ordering::Relaxed),
            "republished_until_confirmed": counters.republished.load(std::sync::atomic::Ordering::Relaxed),
            "published_twice_on_purpose": counters.duplicates.load(std::sync::atomic::Ordering::Relaxed),
            "codes_typed": counters.codes_typed.load(std::sync::atomic::Ordering::Relaxed),
            "codes_typed_again": counters.codes_retyped.load(std::sync::atomic::Ordering::Relaxed),
        },
        "breakers": breakers,
        "audit": audit_figures,
        "checks": checks,
    });
    if let (Value::Object(report), Value::Object(figures)) = (&mut report, figures) {
        report.extend(figures);
    }
    Ok(report)
}

fn accounting_check(name: &'static str, ok: bool, detail: String) -> accounting::Check {
    accounting::Check { name, ok, detail }
}

/// Waits until `probe` has nothing left to report (`None`), polling under `deadline`;
/// returns what was still left at the deadline.
async fn wait_for<F, Fut>(deadline: Duration, what: &str, mut probe: F) -> Option<String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let started = Instant::now();
    let mut told = Instant::now();
    loop {
        let left = probe().await?;
        if started.elapsed() >= deadline {
            eprintln!("chaos: gave up after {deadline:?} waiting for {what}: {left}");
            return Some(format!("{what}: {left}"));
        }
        if told.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "chaos: [{:>5.0}s] waiting for {what}: {left}",
                started.elapsed().as_secs_f64()
            );
            told = Instant::now();
        }
        // Polling interval of a condition wait.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What still keeps the run from settling, or `None`.
async fn unsettled(pool: &sqlx::PgPool, book: &Mutex<Book>) -> Option<String> {
    let (open, submitted) = {
        let book = book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let submitted: Vec<(uuid::Uuid, Expect)> = book
            .apps
            .iter()
            .filter(|a| a.confirmed)
            .map(|a| (a.id, a.expect))
            .collect();
        (book.open_chains(), submitted)
    };
    let ids: Vec<uuid::Uuid> = submitted.iter().map(|(id, _)| *id).collect();
    let Ok(rows) = traffic::statuses(pool, &ids).await else {
        return Some("the database does not answer".into());
    };
    let status: HashMap<uuid::Uuid, String> = rows.into_iter().collect();
    let pending = submitted
        .iter()
        .filter(|(id, expect)| match status.get(id).map(String::as_str) {
            Some("completed" | "rejected" | "failed") => false,
            Some("awaiting_phone_confirmation") => *expect != Expect::CodeNeverTyped,
            _ => true,
        })
        .count();
    (open > 0 || pending > 0)
        .then(|| format!("{open} stories open, {pending} applications not settled"))
}

/// How long the pipeline stood still at each fault (kills aside): the longest stretch from
/// the fault's start to 10 s after its end without a history row (no application moved).
async fn measure_pauses(pool: &sqlx::PgPool, injected: &mut [Injected]) -> anyhow::Result<()> {
    for fault in injected.iter_mut().filter(|f| f.kind != "kill_9") {
        let until = fault.ended + chrono::Duration::seconds(10);
        let moments: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "SELECT at FROM application_history WHERE at BETWEEN $1 AND $2 ORDER BY at",
        )
        .bind(fault.started)
        .bind(until)
        .fetch_all(pool)
        .await?;
        let points = std::iter::once(fault.started)
            .chain(moments)
            .chain(std::iter::once(until));
        let mut longest = 0.0f64;
        let mut previous = None;
        for point in points {
            if let Some(previous) = previous {
                let gap: chrono::TimeDelta = point - previous;
                longest = longest.max(gap.as_seconds_f64());
            }
            previous = Some(point);
        }
        fault.paused_seconds = Some(longest);
    }
    Ok(())
}

fn fault_figures(injected: &[Injected]) -> Value {
    let mut kinds: BTreeMap<&str, Vec<&Injected>> = BTreeMap::new();
    for fault in injected {
        kinds.entry(fault.kind).or_default().push(fault);
    }
    kinds
        .into_iter()
        .map(|(kind, events)| {
            let seconds: Vec<f64> = events.iter().map(|e| e.seconds).collect();
            let paused = events.iter().filter_map(|e| e.paused_seconds);
            (
                kind.to_owned(),
                json!({
                    "count": events.len(),
                    "seconds_total": seconds.iter().sum::<f64>(),
                    "seconds_max": seconds.iter().copied().fold(0.0, f64::max),
                    "paused_seconds_max": paused.fold(0.0, f64::max),
                    "events": events,
                }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Every planned fault happened and was undone (a kill may be skipped when no worker runs at
/// its moment).
fn faults_check(
    planned: &[faults::Planned],
    injected: &[Injected],
    errors: &[String],
) -> accounting::Check {
    let count = |kind: &str, list: &mut dyn Iterator<Item = &'static str>| {
        list.filter(|k| *k == kind).count()
    };
    let kinds = [
        "kill_9",
        "sigterm",
        "rabbitmq_restart",
        "postgres_restart",
        "sms_down",
        "mvd_429",
        "lose_messages",
        "mvd_down",
    ];
    let mut short = Vec::new();
    for kind in kinds {
        let wanted = count(kind, &mut planned.iter().map(|p| p.fault.kind()));
        let done = count(kind, &mut injected.iter().map(|i| i.kind));
        let enough = if kind == "kill_9" {
            done * 10 >= wanted * 9
        } else {
            done == wanted
        };
        if !enough {
            short.push(format!("{kind} {done} of {wanted}"));
        }
    }
    let summary: Vec<String> = kinds
        .iter()
        .map(|k| format!("{} {k}", injected.iter().filter(|i| i.kind == *k).count()))
        .collect();
    accounting::Check {
        name: "faults_injected",
        ok: short.is_empty() && errors.is_empty(),
        detail: format!(
            "{}{}{}",
            summary.join(", "),
            if short.is_empty() {
                String::new()
            } else {
                format!("; short of plan: {}", short.join(", "))
            },
            if errors.is_empty() {
                String::new()
            } else {
                format!("; failed: {}", errors.join("; "))
            }
        ),
    }
}

/// The outside-service faults bit: the MVD answered 429s, attempts of both steps that send
/// SMS failed in the gateway's outage, and the messages the broker lost were revived.
async fn effects_check(
    pool: &sqlx::PgPool,
    injected: &[Injected],
) -> anyhow::Result<accounting::Check> {
    let rate_limited: u64 = injected
        .iter()
        .filter(|i| i.kind == "mvd_429")
        .filter_map(|i| i.requests)
        .sum();
    let (mut codes, mut passwords) = (0i64, 0i64);
    for outage in injected.iter().filter(|i| i.kind == "sms_down") {
        let failed: Vec<(String, i64)> = sqlx::query_as(
            "SELECT step, count(*) FROM application_history WHERE step IN ('confirm-phone', 'send-sms')
               AND detail LIKE 'attempt % failed%' AND at BETWEEN $1 AND $2 GROUP BY step",
        )
        .bind(outage.started)
        .bind(outage.ended)
        .fetch_all(pool)
        .await?;
        for (step, n) in failed {
            if step == "send-sms" {
                passwords += n;
            } else {
                codes += n;
            }
        }
    }
    let mvd_down: u64 = injected
        .iter()
        .filter(|i| i.kind == "mvd_down")
        .filter_map(|i| i.requests)
        .sum();
    let lost: u64 = injected
        .iter()
        .filter(|i| i.kind == "lose_messages")
        .filter_map(|i| i.requests)
        .sum();
    let revived: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT application_id) FROM application_history WHERE step = 'reconciler'",
    )
    .fetch_one(pool)
    .await?;
    let had = |kind: &str| injected.iter().any(|i| i.kind == kind);
    // With the circuit breakers, an SMS outage fails only the calls made before the breaker
    // opened (either step's); both steps must have met it only when it was long enough.
    let sms_ok = !had("sms_down") || codes + passwords > 0;
    let lost_ok = !had("lose_messages") || (lost > 0 && revived > 0);
    Ok(accounting::Check {
        name: "faults_had_effect",
        ok: (!had("mvd_429") || rate_limited > 0)
            && (!had("mvd_down") || mvd_down > 0)
            && sms_ok
            && lost_ok,
        detail: format!(
            "the MVD answered {rate_limited} requests with 429 and {mvd_down} with 503 (down); while the SMS gateway was down {codes} confirm-phone and {passwords} send-sms attempts failed; the broker lost {lost} messages and the reconciler revived {revived} applications"
        ),
    })
}

/// The circuit breakers' figures: how often each opened, the attempts they saved, and the
/// attempts spent while one was open (the figure that must stay 0).
async fn breaker_figures(pool: &sqlx::PgPool) -> anyhow::Result<Value> {
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT system, opened_total, saved_attempts FROM breakers ORDER BY system")
            .fetch_all(pool)
            .await?;
    let mut conn = pool.acquire().await?;
    let spent = uidflow::breaker::spent_while_open(&mut conn).await?;
    Ok(json!({
        "opened": rows.iter().map(|(s, o, _)| (s.clone(), json!(o))).collect::<serde_json::Map<_, _>>(),
        "saved_by_system": rows.iter().map(|(s, _, v)| (s.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "attempts_saved": rows.iter().map(|(_, _, v)| v).sum::<i64>(),
        "attempts_spent_while_open": spent,
    }))
}

fn print_report(report: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    println!(
        "uidflow chaos ({} form, seed {}): {}",
        report["form"].as_str().unwrap_or("?"),
        report["seed"],
        if report["ok"] == true {
            "PASSED"
        } else {
            "FAILED"
        }
    );
    println!(
        "  elapsed {:.0} s (faults {:.0} s, settling {:.0} s); workers: {}",
        f(&report["elapsed_seconds"]),
        f(&report["window_seconds"]),
        f(&report["settle_seconds"]),
        report["settings"]["workers"]
    );
    println!("  faults injected:");
    for (kind, figures) in report["faults"].as_object().into_iter().flatten() {
        println!(
            "    {kind:<18} {:>3} × (total {:.1} s, longest {:.1} s; pipeline paused at most {:.1} s)",
            figures["count"],
            f(&figures["seconds_total"]),
            f(&figures["seconds_max"]),
            f(&figures["paused_seconds_max"])
        );
        for event in figures["events"].as_array().into_iter().flatten() {
            if let Some(node) = event["node"].as_str() {
                println!(
                    "      at {:.0} s: node {node}, paused {:.1} s",
                    f(&event["at"]),
                    f(&event["paused_seconds"])
                );
            }
        }
    }
    let apps = &report["applications"];
    println!(
        "  applications: {} submitted in {} stories, by kind {}",
        apps["submitted"], apps["stories"], apps["by_kind"]
    );
    println!(
        "    ended by status {}; waiting for a code never typed {}",
        apps["ended_by_status"], apps["waiting_for_code"]
    );
    println!(
        "    lost {}, duplicated {}, unexpected outcomes {}",
        apps["lost"], apps["duplicated"], apps["unexpected_outcomes"]
    );
    let sms = &report["sms"];
    println!(
        "  sms: {} accepted, at most {} per phone, {} codes per application, {} passwords per UID; {} never committed ({} unexplained)",
        sms["accepted"],
        sms["per_phone_max"],
        sms["codes_per_application_max"],
        sms["passwords_per_uid_max"],
        sms["uncommitted"],
        sms["uncommitted_unexplained"]
    );
    let breakers = &report["breakers"];
    println!(
        "  circuit breakers: opened {}; attempts saved {}; attempts spent while a breaker was open {}",
        breakers["opened"], breakers["attempts_saved"], breakers["attempts_spent_while_open"]
    );
    println!("  worker exits: {}", report["workers"]["exits_by_cause"]);
    println!("  checks:");
    for check in report["checks"].as_array().into_iter().flatten() {
        println!(
            "    [{}] {}: {}",
            if check["ok"] == true { "ok" } else { "FAIL" },
            check["name"].as_str().unwrap_or("?"),
            check["detail"].as_str().unwrap_or("")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(short: bool) -> ChaosArgs {
        ChaosArgs {
            short,
            outages: false,
            json: false,
            rabbitmq_node: Vec::new(),
            pg_cluster: "15/main".into(),
            workers: 3,
            spread: false,
            concurrency: 8,
            seed: None,
            kills: None,
            sms_down: None,
            pg_down: None,
            rate: None,
            log_dir: ".uidflow/chaos".into(),
            keep: false,
        }
    }

    #[test]
    fn both_forms_inject_every_kind_of_fault_and_retries_outlast_the_outages() {
        for short in [true, false] {
            let plan = Plan::from_args(&args(short)).unwrap();
            let kinds: Vec<&str> = plan.sequence.iter().map(|f| f.kind()).collect();
            for kind in [
                "sigterm",
                "rabbitmq_restart",
                "postgres_restart",
                "sms_down",
                "mvd_429",
            ] {
                assert!(kinds.contains(&kind), "{} form lacks {kind}", plan.form);
            }
            assert!(plan.kills >= if short { 3 } else { 20 });
            assert_eq!(plan.delays().len(), plan.retry_delays.split(',').count());
        }
        let long = Plan::from_args(&args(false)).unwrap();
        assert!(
            long.sequence
                .contains(&Fault::SmsDown(Duration::from_secs(150)))
        );
    }

    #[test]
    fn the_spread_layout_hosts_every_part_but_the_api_in_exactly_two_processes() {
        for part in uidflow::system::Part::ALL {
            let hosts = SPREAD
                .iter()
                .filter(|p| p.split(',').any(|n| n == part.as_str()))
                .count();
            let expected = if part == uidflow::system::Part::Api {
                0
            } else {
                2
            };
            assert_eq!(hosts, expected, "{}", part.as_str());
        }
    }

    #[test]
    fn an_outage_longer_than_the_retries_is_refused_unless_the_breakers_cover_it() {
        // The breakers open within a single application's attempts: any length goes.
        let mut long_outage = args(true);
        long_outage.sms_down = Some(Duration::from_secs(60));
        let plan = Plan::from_args(&long_outage).unwrap();
        assert!(plan.breakers_cover_outages());
        // Breakers that would open only after more failures than one application's attempts
        // do not cover it: refused, as before the breakers.
        let mut plan = Plan::short();
        plan.breaker_failures = 7;
        assert!(!plan.breakers_cover_outages());
        let mut fine = args(true);
        fine.sms_down = Some(Duration::from_secs(15));
        assert!(Plan::from_args(&fine).is_ok());
        let mut rate = args(true);
        rate.rate = Some(0.0);
        assert!(Plan::from_args(&rate).is_err());
    }

    #[test]
    fn the_outages_forms_take_the_issues_figures_and_restart_nothing() {
        for short in [true, false] {
            let mut outages = args(short);
            outages.outages = true;
            let plan = Plan::from_args(&outages).unwrap();
            assert_eq!(plan.kills, 0);
            assert!(plan.breakers_cover_outages());
            let kinds: Vec<&str> = plan.sequence.iter().map(|f| f.kind()).collect();
            assert_eq!(kinds, ["mvd_down", "sms_down"], "no restarts, no kills");
            // The SMS outage outlasts all the retries (in the long form the MVD's 5 minutes
            // do not: production's retries last about 13 minutes).
            let budget = plan.retry_budget();
            let sms = plan
                .sequence
                .iter()
                .find(|f| f.kind() == "sms_down")
                .unwrap();
            assert!(sms.length() > budget, "{} form", plan.form);
        }
        let mut long = args(false);
        long.outages = true;
        let long = Plan::from_args(&long).unwrap();
        assert_eq!(long.retry_delays, "1s,5s,30s,2m,10m");
        assert_eq!(
            long.sequence,
            [
                Fault::MvdDown(Duration::from_secs(300)),
                Fault::SmsDown(Duration::from_secs(900))
            ]
        );
    }
}
