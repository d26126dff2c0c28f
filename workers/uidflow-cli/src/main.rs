//! The `uidflow` binary (CONTRACT §8): parses the command line, loads `Settings`, and calls the
//! library. Every failure ends in one line on stderr and a non-zero exit code: 2 for a problem
//! with how it was started (arguments, configuration, a command not built yet), 1 otherwise.
//!
//! Start-up is careful: SIGINT/SIGTERM are handled from the first moment and end every phase
//! (even a broker connection being retried); everything that can be wrong in the configuration
//! is checked before anything connects; what did connect is closed before the process ends;
//! and writes to a closed stdout or stderr are ignored (never a panic, never a hang). The
//! process ends with `std::process::exit` once its output is flushed, so no client library's
//! background task is cancelled half-way by the runtime's teardown.

mod audit;
mod bench;
mod chaos;
mod follow;
mod privacy;
mod reconcile;
mod remote;
mod resources;
mod status;
mod submit;
mod terminal;

use std::io::Write;
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

/// `uidflow subject …`.
#[derive(Debug, Subcommand)]
enum SubjectCommand {
    /// Prints (JSON) everything held about the person with this identification number; the
    /// export itself is recorded in the audit trail with who and why.
    Export {
        /// The person's identification number.
        number: String,
        /// Why (the request's reference): required, recorded.
        #[arg(long)]
        reason: String,
        /// Who exports (recorded); default: the operating-system user ($USER).
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in one process: migrations, topology, intake, every step, outbox relay,
    /// dead-letter keeper, and the simulators for MVD_URL / SMS_URL set to `sim`.
    Run {
        /// Run the built-in MVD and SMS simulators in-process (as MVD_URL=sim SMS_URL=sim),
        /// never for production; their token is written to .uidflow/sim.token.
        #[arg(long)]
        simulators: bool,
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
        /// Print one JSON object (what was published and, with --follow, each application's
        /// end) instead of lines and a table.
        #[arg(long)]
        json: bool,
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
    /// Applications through the HTTP API (a clerk sees their own service's), masked.
    Apps(remote::AppsArgs),
    /// Every queue's depth, consumers and rates, through the HTTP API (operator).
    Queues {
        /// Where the API is, with an operator token.
        #[command(flatten)]
        via: remote::Via,
    },
    /// The applications past their deadline (nothing happened by the expected event plus
    /// RECONCILE_GRACE) and what each waits for; `--repair` sends their work items again.
    Reconcile {
        /// Send the current work item of each overdue application again (one round, up to
        /// 500; the ledger makes a duplicate harmless).
        #[arg(long)]
        repair: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The grace instead of RECONCILE_GRACE, e.g. `1m`.
        #[arg(long, value_parser = parse_wait)]
        grace: Option<Duration>,
    },
    /// The data keys that seal personal data at rest (DATA_KEYS_FILE): make, list, rotate.
    #[command(subcommand)]
    Keys(privacy::KeysCommand),
    /// Erases the personal data of applications that ended longer than RETENTION ago and the
    /// bodies of dead letters settled as long ago (`uidflow run` does it every hour).
    #[command(group(clap::ArgGroup::new("mode").required(true).args(["dry_run", "apply"])))]
    Retention {
        /// Only count what is due.
        #[arg(long)]
        dry_run: bool,
        /// Erase what is due.
        #[arg(long)]
        apply: bool,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// A person's request for their data (operator only: needs the database and the data keys).
    #[command(subcommand)]
    Subject(SubjectCommand),
    /// The tamper-evident audit trail: verify the chains and signed checkpoints, make a
    /// checkpoint, export one application's chain and verify it offline.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
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
        /// Where to write the token of the control and read-back endpoints (owner-only).
        #[arg(long, default_value = SIM_TOKEN_FILE)]
        token_file: PathBuf,
    },
    /// API tokens: mint one (printed once, only its hash kept) or list them.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// The end-to-end benchmark: the whole pipeline on its own vhost and database.
    Bench(bench::BenchArgs),
    /// The reliability suite: real `uidflow run` processes under faults (kill -9, SIGTERM,
    /// RabbitMQ and PostgreSQL restarts, SMS gateway down, MVD 429s), then every application
    /// accounted for. Restarts the broker node and database cluster it is given.
    Chaos(chaos::ChaosArgs),
}

/// API token commands; the file is `API_TOKENS_FILE`, else `.uidflow/tokens/tokens.toml`.
#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Mint a token, print it once on stdout, and add its SHA-256 to the token file.
    Add {
        /// What the token may do.
        #[arg(long, value_parser = ["clerk", "operator"])]
        role: String,
        /// The clerk's issuing service (clerks only), e.g. `minsk-sov-oa`.
        #[arg(long)]
        service: Option<String>,
        /// A name for histories ("who"), e.g. the clerk's.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the tokens: name, role and issuing service (never a secret).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Where `uidflow run --simulators` and `uidflow sim` write the simulators' token.
const SIM_TOKEN_FILE: &str = ".uidflow/sim.token";
/// The local token file used when `API_TOKENS_FILE` is unset.
const LOCAL_TOKENS_FILE: &str = ".uidflow/tokens/tokens.toml";

/// Prints a line on stdout; a closed or broken stdout is ignored (never a panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Prints a line on stderr; a closed or broken stderr is ignored (never a panic).
macro_rules! err {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub(crate) fn parse_wait(text: &str) -> Result<Duration, String> {
    uidflow::config::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration; write it like 30s or 2m"))
}

fn main() {
    let cli = Cli::parse();
    let code = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(command(cli)),
        Err(error) => {
            err!("error: cannot start the async runtime ({error})");
            ExitCode::FAILURE
        }
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // Ends here, runtime and all: what this process opened is closed by now, and a client
    // library's background task must not be cancelled by a teardown and panic on the way out.
    let status = if code == ExitCode::SUCCESS {
        0
    } else if code == ExitCode::from(2) {
        2
    } else {
        1
    };
    std::process::exit(status)
}

async fn command(cli: Cli) -> ExitCode {
    // First of all, so that a signal in any phase (even before the broker answers) ends a
    // long-running command cleanly; the other commands keep the default (the signal ends them).
    let stop = tokio_util::sync::CancellationToken::new();
    if matches!(cli.command, Command::Run { .. } | Command::Sim { .. }) {
        cancel_on_signal(stop.clone());
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            err!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let default_filter = match cli.command {
        Command::Bench(_) => "warn",
        // The broker and the database go away on purpose: their clients' complaints are noise.
        Command::Chaos(_) => "warn,lapin=off,sqlx=error",
        // `verify` streams every row: sqlx would call that a slow statement.
        Command::Audit(_) => "warn,sqlx=error",
        _ => "info,lapin=warn,sqlx=warn",
    };
    uidflow::telemetry::init_with_default(
        settings.log_format,
        settings.otlp_endpoint.as_ref(),
        default_filter,
    );
    let result = match cli.command {
        Command::Run {
            simulators,
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
            run(settings, options, simulators, stop).await
        }
        Command::Migrate {
            print_definitions: true,
        } => {
            let topology = uidflow::topology::Topology::for_settings(&settings);
            out!(
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
            json,
        } => {
            let follow = submit::Follow {
                follow,
                confirm_codes,
                timeout,
                json,
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
            match remote::Remote::new(args.via.api.clone(), args.via.token.clone(), &settings) {
                Ok(remote) => remote::dead_letters(&remote, &args).await,
                Err(error) => Err(error),
            }
        }
        Command::Apps(args) => {
            match remote::Remote::new(args.via.api.clone(), args.via.token.clone(), &settings) {
                Ok(remote) => remote::apps(&remote, &args).await,
                Err(error) => Err(error),
            }
        }
        Command::Queues { via } => match remote::Remote::new(via.api, via.token, &settings) {
            Ok(remote) => remote::queues(&remote, via.json).await,
            Err(error) => Err(error),
        },
        Command::Sim {
            addr,
            latency,
            error_rate,
            rate_limit_rate,
            retry_after,
            timeout_rate,
            hang,
            token_file,
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
            sim(addr, faults, &token_file, stop).await
        }
        Command::Reconcile {
            repair,
            json,
            grace,
        } => reconcile::run(&settings, grace, repair, json).await,
        Command::Audit(command) => audit::run(&settings, command).await,
        Command::Tokens(command) => tokens(&settings, command),
        Command::Keys(command) => privacy::keys(&settings, command).await,
        Command::Retention {
            dry_run: _,
            apply,
            json,
        } => privacy::retention(&settings, apply, json).await,
        Command::Subject(SubjectCommand::Export { number, reason, by }) => {
            let by = by
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "operator".into());
            privacy::subject_export(&settings, &number, &reason, &by).await
        }
        Command::Bench(args) => bench::run(&settings, &args).await,
        Command::Chaos(args) => chaos::run(&settings, &args).await,
    };
    uidflow::telemetry::flush();
    match result {
        Ok(code) => code,
        Err(error) => {
            err!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn broker_users(
    settings: &Settings,
    dir: &std::path::Path,
    vhost: Option<String>,
) -> anyhow::Result<ExitCode> {
    use uidflow::topology::{BrokerUser, users_definitions};
    let vhost = match vhost {
        Some(vhost) => vhost,
        None => {
            let nodes = settings.amqp_nodes();
            let uri: lapin::uri::AMQPUri = nodes
                .first()
                .map_or(Err("names no node".to_owned()), |node| node.parse())
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
    err!("error: {message}");
    ExitCode::from(2)
}

fn tokens(settings: &Settings, command: TokensCommand) -> anyhow::Result<ExitCode> {
    use uidflow::api::auth::{self, Role};
    let path = settings
        .api_tokens_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(LOCAL_TOKENS_FILE));
    match command {
        TokensCommand::Add {
            role,
            service,
            name,
        } => {
            let role = if role == "clerk" {
                Role::Clerk
            } else {
                Role::Operator
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                && !dir.exists()
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
            match auth::add_token(&path, role, service.as_deref(), name.as_deref()) {
                Ok(token) => {
                    use secrecy::ExposeSecret;
                    err!(
                        "token added to {}; it is shown once, here, and stored nowhere:",
                        path.display()
                    );
                    out!("{}", token.expose_secret());
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => Ok(usage(&error)),
            }
        }
        TokensCommand::List { json } => {
            let entries = match auth::read_entries(&path) {
                Ok(entries) => entries,
                Err(error) => return Ok(usage(&error)),
            };
            let mut table = terminal::Table::new(&[
                terminal::Column::text("name"),
                terminal::Column::text("role"),
                terminal::Column::text("issuing service"),
            ]);
            let mut listed = Vec::new();
            for entry in entries {
                let role = match entry.role {
                    Role::Clerk => "clerk",
                    Role::Operator => "operator",
                };
                let name = entry.name.unwrap_or_else(|| {
                    format!("({role}-{})", &entry.sha256.get(..8).unwrap_or(""))
                });
                table.row([
                    name.as_str(),
                    role,
                    entry.issuing_service.as_deref().unwrap_or("-"),
                ]);
                listed.push(serde_json::json!({
                    "name": name,
                    "role": role,
                    "issuing_service": entry.issuing_service,
                }));
            }
            if json {
                out!("{}", terminal::json(&serde_json::Value::from(listed)));
            } else {
                table.print();
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn migrate(settings: Settings) -> anyhow::Result<ExitCode> {
    let pool = system::migrate(&settings, 2).await?;
    pool.close().await;
    out!(
        "migrations applied to {} and topology declared on {}",
        settings.database_url_redacted(),
        settings.amqp_url_redacted()
    );
    Ok(ExitCode::SUCCESS)
}

async fn run(
    mut settings: Settings,
    mut options: RunOptions,
    simulators: bool,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<ExitCode> {
    // Everything that can be wrong in the configuration, before anything connects.
    let hosts = |part: system::Part| options.parts.contains(&part);
    let needs_mvd = hosts(system::Part::VerifyIdentity);
    let needs_sms = hosts(system::Part::ConfirmPhone) || hosts(system::Part::SendSms);
    if let Err(error) = settings.require_external(needs_mvd, needs_sms, simulators) {
        return Ok(usage(&error.to_string()));
    }
    if hosts(system::Part::Api) && options.tokens.is_none() {
        match system::api_tokens(&settings) {
            Ok(tokens) => options.tokens = Some(tokens),
            Err(error) => return Ok(usage(&format!("{error:#}"))),
        }
    }
    if hosts(system::Part::Outbox) && options.audit_key.is_none() {
        match system::audit_signing_key(&settings) {
            Ok(key) => options.audit_key = Some(key),
            Err(error) => return Ok(usage(&format!("{error:#}"))),
        }
    }
    // A connection is held only while a delivery commits: deliveries wait for one of the
    // pool's few (DATABASE_MAX_CONNECTIONS) rather than each having its own.
    let connections = settings.database_max_connections;
    // A signal while connecting (the broker or the database may be retried for a while) ends
    // the start; what a dropped attempt opened is closed with it.
    let pool = tokio::select! {
        prepared = system::prepare(&settings, connections) => prepared?,
        () = stop.cancelled() => {
            tracing::info!("stopped while starting");
            return Ok(ExitCode::SUCCESS);
        }
    };
    if let Err(error) = uidflow::db::check_fits(
        &settings,
        &pool,
        connections,
        system::extra_connections(&options.parts),
    )
    .await
    {
        pool.close().await;
        return Err(error.into());
    }
    let names: Vec<_> = options.parts.iter().map(|p| p.as_str()).collect();
    let running = match uidflow_cli::start(&settings, &pool, &options, SimConfig::default()).await {
        Ok(running) => running,
        Err(error) => {
            pool.close().await;
            return Err(error);
        }
    };
    if let Some((sims, addr)) = &running.simulators {
        let path = std::path::Path::new(SIM_TOKEN_FILE);
        match sims.write_token(path) {
            Ok(()) => err!(
                "simulators on http://{addr}: their read-back and fault control need the token in {}",
                path.display()
            ),
            Err(error) => {
                tracing::warn!(error = %error, path = %path.display(), "cannot write the simulators' token")
            }
        }
    }
    tracing::info!(parts = ?names, database = %settings.database_url_redacted(), broker = %settings.amqp_url_redacted(), "uidflow running; Ctrl-C to stop");
    let token = running.system.token();
    tokio::spawn(async move {
        stop.cancelled().await;
        tracing::info!("shutting down: finishing in-flight work");
        token.cancel();
    });
    running.system.run_until_cancelled().await;
    pool.close().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn sim(
    addr: std::net::SocketAddr,
    faults: Faults,
    token_file: &std::path::Path,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({e}); choose another --addr"))?;
    let addr = listener.local_addr()?;
    let simulators = Simulators::new(SimConfig {
        mvd: faults.clone(),
        sms: faults,
    });
    simulators.write_token(token_file).map_err(|e| {
        anyhow::anyhow!(
            "cannot write the token to {} ({e}); choose another --token-file",
            token_file.display()
        )
    })?;
    out!("MVD_URL={}", Simulators::mvd_url(addr));
    out!("SMS_URL={}", Simulators::sms_url(addr));
    out!(
        "read SMS back: GET {}/v1/messages?phone=%2B375…; faults: PUT http://{addr}/sim/v1/faults/{{mvd,sms}}; both with Authorization: Bearer <the token in {}>",
        Simulators::sms_url(addr),
        token_file.display()
    );
    simulators.serve(listener, stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// Cancels `stop` on the first SIGINT or SIGTERM; the handlers are installed now.
fn cancel_on_signal(stop: tokio_util::sync::CancellationToken) {
    let signalled = shutdown_signal();
    tokio::spawn(async move {
        signalled.await;
        stop.cancel();
    });
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
