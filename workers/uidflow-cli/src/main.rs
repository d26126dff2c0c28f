//! The `uidflow` binary (CONTRACT §8): parses the command line, loads `Settings`, and calls the
//! library. Every failure ends in one line on stderr and a non-zero exit code: 2 for a problem
//! with how it was started (arguments, configuration, a command not built yet), 1 otherwise.

mod bench;
mod chaos;
mod follow;
mod remote;
mod resources;
mod status;
mod submit;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use uidflow::config::Settings;
use uidflow::sim::{Faults, SimConfig, Simulators};
use uidflow::system::{self, RunOptions};

#[derive(Debug, Parser)]
#[command(
    name = "uidflow",
    version,
    about = "Issues and manages UIDs: intake, pipeline, registry and operator tools."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in one process: migrations, topology, intake, every step, outbox relay,
    /// dead-letter keeper, and the simulators for MVD_URL / SMS_URL when unset.
    Run {
        /// Host only these parts (comma-separated), e.g. `--only intake`.
        #[arg(long, value_name = "PART,…")]
        only: Option<String>,
        /// Deliveries in flight per consumer.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1000))]
        concurrency: u16,
        /// Per-part overrides of --concurrency, e.g. `register=8,verify-identity=64`.
        #[arg(long, value_name = "PART=N,…")]
        part_concurrency: Option<String>,
    },
    /// Apply migrations and declare the topology, then exit.
    Migrate {
        /// Print the topology as RabbitMQ definitions JSON (for deploy/rabbitmq/definitions.json)
        /// and touch nothing.
        #[arg(long)]
        print_definitions: bool,
    },
    /// Broker users and their permissions as RabbitMQ definitions, for
    /// `rabbitmqctl import_definitions`: passwords are read from files and printed only as
    /// RabbitMQ's salted hashes.
    #[command(name = "broker-users")]
    BrokerUsers {
        /// A directory with one file per user, named after it (`uidflow`, `uid-intake`,
        /// `uid-events`) and holding its password; a user without a file is left out.
        #[arg(long, value_name = "DIR")]
        passwords: PathBuf,
        /// The vhost to grant on (default: the one of AMQP_URL).
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Publish applications as an intake system would (publisher confirms).
    Submit {
        /// Files, directories (their *.json files) or `-` for standard input.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Routing key; by default `phone-confirmation` for an object with `code` and no
        /// `kind`, else `application`.
        #[arg(long, value_parser = ["application", "phone-confirmation"])]
        routing_key: Option<String>,
        /// Then watch the applications until each ends (progress on stderr, a table at the end).
        #[arg(long)]
        follow: bool,
        /// With --follow: type back each confirmation code, read from the SMS simulator at
        /// SMS_URL, as a clerk would (demos and trials).
        #[arg(long, requires = "follow")]
        confirm_codes: bool,
        /// With --follow: give up after this long.
        #[arg(long, value_parser = parse_wait, default_value = "2m")]
        timeout: Duration,
    },
    /// What a clerk would see of applications: status, reason and history (masked).
    Status {
        /// Application ids.
        #[arg(required = true)]
        ids: Vec<uuid::Uuid>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Wait up to this long (e.g. `30s`) for each application to appear.
        #[arg(long, value_parser = parse_wait)]
        wait: Option<Duration>,
        /// With --wait: also wait until the status is not `received` any more.
        #[arg(long, requires = "wait")]
        settled: bool,
        /// Ask a running API instead of the database (e.g. `http://10.0.0.5:8080`).
        #[arg(long)]
        api: Option<String>,
        /// The token for --api (default `UIDFLOW_TOKEN`, else `.uidflow/tokens/operator.token`).
        #[arg(long, requires = "api")]
        token: Option<String>,
    },
    /// The operator's dead-letter tools, through the HTTP API.
    #[command(name = "dead-letters")]
    DeadLetters(remote::DeadLetterArgs),
    /// Only the external-system simulators (MVD and SMS gateway), for tests of other systems.
    Sim {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8090")]
        addr: std::net::SocketAddr,
        /// Added before every answer, e.g. `50ms`.
        #[arg(long, value_parser = parse_wait, default_value = "0ms")]
        latency: Duration,
        /// Share of requests answered 503 (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Share of requests answered 429 with `Retry-After` (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        rate_limit_rate: f64,
        /// The `Retry-After` of those 429s.
        #[arg(long, value_parser = parse_wait, default_value = "1s")]
        retry_after: Duration,
        /// Share of requests held for `--hang` and then answered 504 (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        timeout_rate: f64,
        /// How long a timed-out request is held.
        #[arg(long, value_parser = parse_wait, default_value = "15s")]
        hang: Duration,
    },
    /// The end-to-end benchmark: the whole pipeline on its own vhost and database.
    Bench(bench::BenchArgs),
    /// The reliability suite: real `uidflow run` processes under faults (kill -9, SIGTERM,
    /// RabbitMQ and PostgreSQL restarts, SMS gateway down, MVD 429s), then every application
    /// accounted for. Restarts the broker node and database cluster it is given.
    Chaos(chaos::ChaosArgs),
}

fn parse_wait(text: &str) -> Result<Duration, String> {
    uidflow::config::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration; write it like 30s or 2m"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let default_filter = match cli.command {
        Command::Bench(_) => "warn",
        // The broker and the database go away on purpose: their clients' complaints are noise.
        Command::Chaos(_) => "warn,lapin=off,sqlx=error",
        _ => "info,lapin=warn,sqlx=warn",
    };
    uidflow::telemetry::init_with_default(
        settings.log_format,
        settings.otlp_endpoint.as_ref(),
        default_filter,
    );
    let result = match cli.command {
        Command::Run {
            only,
            concurrency,
            part_concurrency,
        } => {
            let parts = match only.as_deref().map(system::parse_parts).transpose() {
                Ok(parts) => parts,
                Err(error) => return usage(&error),
            };
            let overrides = match part_concurrency
                .as_deref()
                .map(system::parse_part_concurrency)
                .transpose()
            {
                Ok(overrides) => overrides.unwrap_or_default(),
                Err(error) => return usage(&error),
            };
            let mut options = RunOptions {
                concurrency,
                part_concurrency: overrides,
                ..RunOptions::default()
            };
            if let Some(parts) = parts {
                options.parts = parts;
            }
            run(settings, options).await
        }
        Command::Migrate {
            print_definitions: true,
        } => {
            let topology = uidflow::topology::Topology::for_settings(&settings);
            println!(
                "{}",
                serde_json::to_string_pretty(&topology.definitions())
                    .expect("definitions serialise")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate {
            print_definitions: false,
        } => migrate(settings).await,
        Command::BrokerUsers { passwords, vhost } => broker_users(&settings, &passwords, vhost),
        Command::Submit {
            paths,
            routing_key,
            follow,
            confirm_codes,
            timeout,
        } => {
            let follow = submit::Follow {
                follow,
                confirm_codes,
                timeout,
            };
            submit::run(&settings, &paths, routing_key.as_deref(), follow).await
        }
        Command::Status {
            ids,
            json,
            wait,
            settled,
            api: Some(api),
            token,
        } => {
            if wait.is_some() || settled {
                return usage("--wait and --settled read the database; use them without --api");
            }
            match remote::Remote::new(Some(api), token, &settings) {
                Ok(remote) => remote_status(&remote, &ids, json).await,
                Err(error) => Err(error),
            }
        }
        Command::Status {
            ids,
            json,
            wait,
            settled,
            api: None,
            ..
        } => status::run(&settings, &ids, json, wait, settled).await,
        Command::DeadLetters(args) => {
            match remote::Remote::new(args.api.clone(), args.token.clone(), &settings) {
                Ok(remote) => remote::dead_letters(&remote, &args).await,
                Err(error) => Err(error),
            }
        }
        Command::Sim {
            addr,
            latency,
            error_rate,
            rate_limit_rate,
            retry_after,
            timeout_rate,
            hang,
        } => {
            let faults = Faults {
                latency,
                error_rate,
                rate_limit_rate,
                retry_after,
                timeout_rate,
                hang,
                ..Faults::default()
            };
            if let Err(error) = faults.validate() {
                return usage(&error.to_string());
            }
            sim(addr, faults).await
        }
        Command::Bench(args) => bench::run(&settings, &args).await,
        Command::Chaos(args) => chaos::run(&settings, &args).await,
    };
    uidflow::telemetry::flush();
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn broker_users(
    settings: &Settings,
    dir: &std::path::Path,
    vhost: Option<String>,
) -> anyhow::Result<ExitCode> {
    use secrecy::ExposeSecret;
    use uidflow::topology::{BrokerUser, users_definitions};
    let vhost = match vhost {
        Some(vhost) => vhost,
        None => {
            let uri: lapin::uri::AMQPUri = settings
                .amqp_url
                .expose_secret()
                .parse()
                .map_err(|e| anyhow::anyhow!("AMQP_URL: {e}"))?;
            uri.vhost
        }
    };
    let mut users = Vec::new();
    for user in BrokerUser::ALL {
        let path = dir.join(user.name());
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => {
                users.push((user.name().to_owned(), user, text.trim().to_owned()));
            }
            Ok(_) => anyhow::bail!("{} is empty; write the password in it", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("no {}: user {} left out", path.display(), user.name());
            }
            Err(e) => anyhow::bail!("cannot read {} ({e})", path.display()),
        }
    }
    if users.is_empty() {
        anyhow::bail!(
            "no password file in {}; create uidflow, uid-intake and/or uid-events there",
            dir.display()
        );
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&users_definitions(&users, &vhost))
            .expect("definitions serialise")
    );
    Ok(ExitCode::SUCCESS)
}

async fn remote_status(
    remote: &remote::Remote,
    ids: &[uuid::Uuid],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut views = Vec::new();
    for id in ids {
        views.push(remote.status(*id, false).await?);
    }
    status::print_all(&views, ids.len(), json)?;
    Ok(ExitCode::SUCCESS)
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

async fn migrate(settings: Settings) -> anyhow::Result<ExitCode> {
    let pool = system::migrate(&settings, 2).await?;
    pool.close().await;
    println!(
        "migrations applied to {} and topology declared on {}",
        settings.database_url_redacted(),
        settings.amqp_url_redacted()
    );
    Ok(ExitCode::SUCCESS)
}

async fn run(settings: Settings, options: RunOptions) -> anyhow::Result<ExitCode> {
    // Listen for SIGINT/SIGTERM before anything else, so a signal during start-up also ends
    // the process cleanly (once it has started, after in-flight work).
    let stop = tokio_util::sync::CancellationToken::new();
    let signalled = shutdown_signal();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        signalled.await;
        tracing::info!("shutting down: finishing in-flight work");
        on_signal.cancel();
    });
    // Steps hold a connection while they commit; leave room for every consumer at once.
    let busiest = options
        .parts
        .iter()
        .map(|p| u32::from(options.concurrency_of(*p)))
        .max()
        .unwrap_or(1);
    let connections = busiest.saturating_mul(3).clamp(8, 90);
    let pool = system::prepare(&settings, connections).await?;
    let names: Vec<_> = options.parts.iter().map(|p| p.as_str()).collect();
    let running = uidflow_cli::start(&settings, &pool, &options, SimConfig::default()).await?;
    tracing::info!(parts = ?names, database = %settings.database_url_redacted(), broker = %settings.amqp_url_redacted(), "uidflow running; Ctrl-C to stop");
    let token = running.system.token();
    tokio::spawn(async move {
        stop.cancelled().await;
        token.cancel();
    });
    running.system.run_until_cancelled().await;
    pool.close().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn sim(addr: std::net::SocketAddr, faults: Faults) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({e}); choose another --addr"))?;
    let addr = listener.local_addr()?;
    let simulators = Simulators::new(SimConfig {
        mvd: faults.clone(),
        sms: faults,
    });
    let token = tokio_util::sync::CancellationToken::new();
    println!("MVD_URL={}", Simulators::mvd_url(addr));
    println!("SMS_URL={}", Simulators::sms_url(addr));
    println!(
        "read SMS back: GET {}/v1/messages?phone=%2B375…; faults: PUT http://{addr}/sim/v1/faults/{{mvd,sms}}",
        Simulators::sms_url(addr)
    );
    let stop = token.clone();
    let signalled = shutdown_signal();
    tokio::spawn(async move {
        signalled.await;
        stop.cancel();
    });
    simulators.serve(listener, token).await?;
    Ok(ExitCode::SUCCESS)
}

/// Installs the SIGINT and SIGTERM handlers now; the future resolves on the first signal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt =
        signal(SignalKind::interrupt()).expect("installing a SIGINT handler works on Unix");
    let mut term =
        signal(SignalKind::terminate()).expect("installing a SIGTERM handler works on Unix");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    }
}
