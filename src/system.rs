//! `uidflow run` as a library: prepare the database and the topology, then start the parts
//! this process hosts, each as a task under one cancellation token.
//!
//! The step parts are started by the binary's composition (`uidflow_cli::start`), which knows
//! the step crates. A part not built yet (the HTTP API) is refused by name with a clear message
//! rather than pretending to run.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::intake::IntakeStats;
use crate::vault::Vault;
use crate::{amqp, db, dead_letters, intake, outbox};

/// A part of the system one process can host (`uidflow run --only <part>,…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// The intake consumer of `uid.intake.application`.
    Intake,
    /// The outbox relay.
    Outbox,
    /// The dead-letter keeper of `uid.parking`.
    DeadLetterKeeper,
    /// The consumer of `uid.intake.phone-confirmation`.
    PhoneConfirmation,
    /// Step verify-identity.
    VerifyIdentity,
    /// Step confirm-phone.
    ConfirmPhone,
    /// Step register.
    Register,
    /// Step send-sms.
    SendSms,
    /// The HTTP API (with `/metrics`, `/healthz`, `/readyz`).
    Api,
}

impl Part {
    /// Every part.
    pub const ALL: [Part; 9] = [
        Part::Intake,
        Part::Outbox,
        Part::DeadLetterKeeper,
        Part::PhoneConfirmation,
        Part::VerifyIdentity,
        Part::ConfirmPhone,
        Part::Register,
        Part::SendSms,
        Part::Api,
    ];

    /// Name on the command line (a step's part is named after the step).
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Intake => "intake",
            Part::Outbox => "outbox",
            Part::DeadLetterKeeper => "dead-letter-keeper",
            Part::PhoneConfirmation => "phone-confirmation",
            Part::VerifyIdentity => crate::route::VERIFY_IDENTITY,
            Part::ConfirmPhone => crate::route::CONFIRM_PHONE,
            Part::Register => crate::route::REGISTER,
            Part::SendSms => crate::route::SEND_SMS,
            Part::Api => "api",
        }
    }

    /// True for the parts that call the MVD or the SMS gateway.
    pub fn calls_out(self) -> bool {
        matches!(
            self,
            Part::VerifyIdentity | Part::ConfirmPhone | Part::SendSms
        )
    }
}

/// PostgreSQL connections a process with `parts` opens beside its pool: the vacuum's own (the
/// outbox relays' listeners are pool connections).
pub fn extra_connections(parts: &BTreeSet<Part>) -> u32 {
    u32::from(parts.contains(&Part::Outbox))
}

/// Parses `--only intake,outbox`.
pub fn parse_parts(list: &str) -> Result<BTreeSet<Part>, String> {
    let mut parts = BTreeSet::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match Part::ALL.iter().find(|p| p.as_str() == name) {
            Some(part) => {
                parts.insert(*part);
            }
            None => {
                return Err(format!(
                    "unknown part {name:?}; choose from {}",
                    Part::ALL.map(Part::as_str).join(", ")
                ));
            }
        }
    }
    if parts.is_empty() {
        return Err("--only names no part".into());
    }
    Ok(parts)
}

/// How this process runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Which parts to host.
    pub parts: BTreeSet<Part>,
    /// Deliveries in flight per consumer.
    pub concurrency: u16,
    /// Overrides of `concurrency` for single parts (`--part-concurrency register=8`).
    pub part_concurrency: std::collections::BTreeMap<Part, u16>,
    /// Fault injection for tests (see `intake::Intake`); zero in production.
    pub crash_intake_after_commit: Arc<AtomicU32>,
    /// API tokens; `None`: from `API_TOKENS_FILE`, or local ones made in `.uidflow/tokens`.
    pub tokens: Option<crate::api::auth::Tokens>,
    /// Data keys; `None`: from `DATA_KEYS_FILE`, or local ones made in `.uidflow/keys`.
    pub vault: Option<Arc<Vault>>,
    /// The key that signs audit checkpoints (with the outbox); `None`: from `AUDIT_KEY_FILE`,
    /// or a local one made in `.uidflow/keys`.
    pub audit_key: Option<ed25519_dalek::SigningKey>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            parts: Part::ALL.into_iter().collect(),
            concurrency: 32,
            part_concurrency: Default::default(),
            crash_intake_after_commit: Arc::new(AtomicU32::new(0)),
            tokens: None,
            vault: None,
            audit_key: None,
        }
    }
}

impl RunOptions {
    /// Deliveries in flight for `part`.
    pub fn concurrency_of(&self, part: Part) -> u16 {
        self.part_concurrency
            .get(&part)
            .copied()
            .unwrap_or(self.concurrency)
    }
}

/// Parses `register=8,verify-identity=64` (each 1 to 1000).
pub fn parse_part_concurrency(list: &str) -> Result<std::collections::BTreeMap<Part, u16>, String> {
    let mut map = std::collections::BTreeMap::new();
    for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, number) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not PART=N, e.g. register=8"))?;
        let part = *parse_parts(name)?
            .iter()
            .next()
            .expect("parse_parts returns at least one part");
        let number: u16 = number
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| format!("{pair:?}: the number must be 1 to 1000"))?;
        map.insert(part, number);
    }
    Ok(map)
}

/// `uidflow run`'s start: connects to the database (creating it if missing), migrates it if
/// migrations are pending (as the owner; a runtime role gets a clear error instead), and
/// declares the topology. On an error the pool is closed before returning, so nothing opened
/// here outlives it.
pub async fn prepare(settings: &Settings, max_connections: u32) -> anyhow::Result<PgPool> {
    open(settings, max_connections, false).await
}

/// `uidflow migrate`: like [`prepare`], but always migrates and (re)grants the runtime role
/// (run as the database owner).
pub async fn migrate(settings: &Settings, max_connections: u32) -> anyhow::Result<PgPool> {
    open(settings, max_connections, true).await
}

async fn open(
    settings: &Settings,
    max_connections: u32,
    always_migrate: bool,
) -> anyhow::Result<PgPool> {
    let pool = db::connect(settings, max_connections).await?;
    let prepared = async {
        if always_migrate {
            db::migrate(settings, &pool).await?;
        } else {
            db::migrate_if_pending(settings, &pool).await?;
        }
        amqp::declare_topology(settings).await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = prepared {
        pool.close().await;
        return Err(error);
    }
    Ok(pool)
}

/// A running system.
pub struct System {
    token: CancellationToken,
    tasks: JoinSet<()>,
    /// The intake's counters.
    pub intake_stats: Arc<IntakeStats>,
    /// Where the HTTP API listens, if this process hosts it.
    pub api_addr: Option<std::net::SocketAddr>,
    /// The data keys the parts seal and open personal data with.
    pub vault: Arc<Vault>,
}

/// Starts the core parts of `options` (intake, outbox, keeper) on a prepared database; the
/// step parts are started by the binary's composition (`uidflow_cli::start`), which knows the
/// step crates, with [`System::spawn`].
pub fn start(settings: &Settings, pool: &PgPool, options: &RunOptions) -> anyhow::Result<System> {
    crate::telemetry::prometheus();
    let token = CancellationToken::new();
    let mut api_addr = None;
    // What can fail here (the tokens, the API's port) is done before any task starts, so a
    // failure leaves nothing running behind it.
    let mut api = None;
    if options.parts.contains(&Part::Api) {
        let tokens = match &options.tokens {
            Some(tokens) => tokens.clone(),
            None => api_tokens(settings)?,
        };
        let listener = std::net::TcpListener::bind(settings.api_addr).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on API_ADDR {} ({e}); free the port or set API_ADDR",
                settings.api_addr
            )
        })?;
        listener.set_nonblocking(true)?;
        api_addr = Some(listener.local_addr()?);
        api = Some((listener, tokens));
    }
    let vault = match &options.vault {
        Some(vault) => Arc::clone(vault),
        None => data_keys(settings)?,
    };
    let mut audit_key = None;
    if options.parts.contains(&Part::Outbox) {
        audit_key = Some(match &options.audit_key {
            Some(key) => key.clone(),
            None => audit_signing_key(settings)?,
        });
    }
    let mut tasks = JoinSet::new();
    let intake_stats = Arc::new(IntakeStats::default());
    for part in &options.parts {
        let (settings, pool, token) = (settings.clone(), pool.clone(), token.child_token());
        match part {
            Part::Intake => {
                let stats = Arc::clone(&intake_stats);
                let crash = Arc::clone(&options.crash_intake_after_commit);
                let prefetch = options.concurrency_of(Part::Intake);
                let vault = Arc::clone(&vault);
                tasks.spawn(intake::run(
                    settings, pool, vault, prefetch, stats, crash, token,
                ));
            }
            Part::Outbox => {
                for _ in 0..outbox::RELAYS {
                    let (settings, pool, token) = (settings.clone(), pool.clone(), token.clone());
                    tasks.spawn(outbox::run_relay(settings, pool, token));
                }
                tasks.spawn(crate::reconcile::run(
                    settings.clone(),
                    pool.clone(),
                    token.clone(),
                ));
                tasks.spawn(crate::retention::run(
                    settings.clone(),
                    pool.clone(),
                    token.clone(),
                ));
                let key = audit_key.take().expect("made above for the outbox");
                tasks.spawn(crate::audit::run(
                    settings.clone(),
                    pool.clone(),
                    key,
                    token.clone(),
                ));
                tasks.spawn(crate::vacuum::run(pool, token));
            }
            Part::DeadLetterKeeper => {
                let vault = Arc::clone(&vault);
                tasks.spawn(dead_letters::run_keeper(settings, pool, vault, token));
            }
            Part::Api => {
                let (listener, tokens) = api.take().expect("bound above");
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let state = crate::api::ApiState::new(settings, pool, tokens, Arc::clone(&vault));
                tasks.spawn(async move {
                    if let Err(error) = crate::api::serve(listener, state, token).await {
                        tracing::error!(error = %error, "the HTTP API stopped");
                    }
                });
            }
            _ => {}
        }
    }
    if let Some(addr) = api_addr {
        tracing::info!(%addr, "HTTP API listening");
    }
    Ok(System {
        token,
        tasks,
        intake_stats,
        api_addr,
        vault,
    })
}

/// Where `uidflow run` keeps data keys it made itself (`DATA_KEYS_FILE` unset).
pub const LOCAL_DATA_KEYS: &str = ".uidflow/keys/data-keys.toml";

/// The data keys of `settings`: the file of `DATA_KEYS_FILE`, or a local file made (once) in
/// [`LOCAL_DATA_KEYS`], whose place is printed, like local API tokens.
pub fn data_keys(settings: &Settings) -> anyhow::Result<Arc<Vault>> {
    match &settings.data_keys_file {
        Some(path) => Vault::from_file(path)
            .map(Arc::new)
            .map_err(|e| anyhow::anyhow!("DATA_KEYS_FILE: {e}")),
        None => {
            let path = std::path::Path::new(LOCAL_DATA_KEYS);
            let (vault, made) = Vault::create_or_open(path).map_err(|e| {
                anyhow::anyhow!("cannot use local data keys ({e}); set DATA_KEYS_FILE")
            })?;
            let _ = writeln!(
                std::io::stderr(),
                "data keys (DATA_KEYS_FILE unset): {} {} (local only: losing it loses the personal data it sealed; in production set DATA_KEYS_FILE)",
                if made { "made" } else { "using" },
                path.display()
            );
            Ok(Arc::new(vault))
        }
    }
}

/// The API tokens of `settings`: the file of `API_TOKENS_FILE`, or local tokens made (once)
/// in `.uidflow/tokens`, whose place is printed.
pub fn api_tokens(settings: &Settings) -> anyhow::Result<crate::api::auth::Tokens> {
    match &settings.api_tokens_file {
        Some(path) => crate::api::auth::Tokens::from_file(path)
            .map_err(|e| anyhow::anyhow!("API_TOKENS_FILE: {e}")),
        None => {
            let dir = std::path::Path::new(".uidflow/tokens");
            let local = crate::api::auth::local_tokens(dir).map_err(|e| {
                anyhow::anyhow!(
                    "cannot write local API tokens to {} ({e}); set API_TOKENS_FILE",
                    dir.display()
                )
            })?;
            // A closed or full stderr must not stop the start (nor panic, as eprintln! would).
            let _ = writeln!(
                std::io::stderr(),
                "API tokens (API_TOKENS_FILE unset): operator in {0}/operator.token, clerks in {0}/clerk-<service>.token",
                local.dir.display()
            );
            Ok(local.tokens)
        }
    }
}

/// The audit checkpoints' signing key of `settings`: the file of `AUDIT_KEY_FILE`, or a local
/// key made (once) in `.uidflow/keys/audit-signing.key`, whose place is printed when made.
pub fn audit_signing_key(settings: &Settings) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let source = crate::audit::key::signing_key(settings).map_err(|e| {
        anyhow::anyhow!("{e}; fix it, or set AUDIT_KEY_FILE to the audit signing key")
    })?;
    if source.created {
        // A closed or full stderr must not stop the start (nor panic, as eprintln! would).
        let _ = writeln!(
            std::io::stderr(),
            "audit signing key (AUDIT_KEY_FILE unset) made in {}; keep it safe and apart from the database, and note its public key: uidflow audit public-key",
            source.path.display()
        );
    }
    Ok(source.key)
}

impl System {
    /// Runs `task` as part of the system; it gets a child of the system's token.
    pub fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task(self.token.child_token()));
    }

    /// A token that stops the system when cancelled (wire it to SIGINT/SIGTERM).
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Stops every part and waits for them (each finishes its in-flight work first).
    pub async fn shutdown(mut self) {
        self.token.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Waits until the token is cancelled, then shuts down.
    pub async fn run_until_cancelled(self) {
        self.token.cancelled().await;
        self.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_parse_and_later_parts_are_named_as_such() {
        assert_eq!(parse_parts("intake, outbox").unwrap().len(), 2);
        assert!(
            parse_parts("verify-identity")
                .unwrap()
                .contains(&Part::VerifyIdentity)
        );
        assert!(parse_parts("api").unwrap().contains(&Part::Api));
        assert!(
            parse_parts("nonsense")
                .unwrap_err()
                .contains("unknown part")
        );
        assert!(parse_parts(",").is_err());
        let overrides = parse_part_concurrency("register=8, verify-identity=64").unwrap();
        let options = RunOptions {
            part_concurrency: overrides,
            ..RunOptions::default()
        };
        assert_eq!(options.concurrency_of(Part::Register), 8);
        assert_eq!(options.concurrency_of(Part::VerifyIdentity), 64);
        assert_eq!(options.concurrency_of(Part::SendSms), 32);
        assert!(parse_part_concurrency("register=0").is_err());
        assert!(parse_part_concurrency("register").is_err());
    }
}
