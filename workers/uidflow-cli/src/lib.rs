//! The composition of a uidflow process: the core parts from `uidflow::system`, the steps from
//! the step crates, and the simulators for the external systems set to `sim` (only when asked
//! for: `Settings::require_external` refuses unset URLs before anything starts). It lives
//! here, above every step crate, because the library cannot depend on the steps (they depend on
//! it). Tests start the whole pipeline through [`start`].

use std::net::SocketAddr;

use sqlx::PgPool;
use uidflow::config::Settings;
use uidflow::runtime;
use uidflow::sim::{self, SimConfig, Simulators};
use uidflow::system::{self, Part, RunOptions, System};

/// A running process.
pub struct Running {
    /// The tasks, under one token.
    pub system: System,
    /// The settings in effect (with the simulators' URLs filled in).
    pub settings: Settings,
    /// The in-process simulators and their address, when they run.
    pub simulators: Option<(Simulators, SocketAddr)>,
}

/// Starts the parts of `options`: core parts, simulators if needed, steps.
pub async fn start(
    settings: &Settings,
    pool: &PgPool,
    options: &RunOptions,
    sim_config: SimConfig,
) -> anyhow::Result<Running> {
    let mut settings = settings.clone();
    let hosts = |part: Part| options.parts.contains(&part);
    settings.clone().require_external(
        hosts(Part::VerifyIdentity),
        hosts(Part::ConfirmPhone) || hosts(Part::SendSms),
        false,
    )?;
    let mut system = system::start(&settings, pool, options)?;
    let calls_out = options.parts.iter().any(|part| part.calls_out());
    let simulated = settings.simulated;
    let simulators = if calls_out && (simulated.mvd || simulated.sms) {
        let (simulators, addr) = sim::spawn_local(sim_config, system.token().child_token()).await?;
        if simulated.mvd {
            settings.mvd_url = Some(Simulators::mvd_url(addr).parse()?);
        }
        if simulated.sms {
            settings.sms_url = Some(Simulators::sms_url(addr).parse()?);
        }
        for service in simulated.names() {
            metrics::gauge!(uidflow::telemetry::metrics::SIMULATORS, "service" => service).set(1.0);
        }
        tracing::warn!(%addr, services = ?simulated.names(), "built-in SIMULATORS in use: they approve the test people and keep messages in memory; set MVD_URL / SMS_URL to the real services in production");
        Some((simulators, addr))
    } else {
        None
    };
    let http = uidflow::http::client(settings.http_timeout);
    let mvd_url = settings
        .mvd_url
        .as_ref()
        .map(|u| u.as_str().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let sms_url = settings
        .sms_url
        .as_ref()
        .map(|u| u.as_str().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let hash_params = settings.hash_params;
    // One view of the shared circuit breakers per process, for the steps that call out.
    let uses: std::collections::BTreeSet<_> = options
        .parts
        .iter()
        .filter_map(|part| uidflow::breaker::system_of(part.as_str()))
        .collect();
    let breakers = uidflow::breaker::Breakers::new(pool.clone(), settings.breaker, uses.clone());
    if !uses.is_empty() {
        let breakers = std::sync::Arc::clone(&breakers);
        system.spawn(move |token| breakers.run(token));
    }
    for part in &options.parts {
        let (settings, pool) = (settings.clone(), pool.clone());
        let breakers = std::sync::Arc::clone(&breakers);
        let vault = std::sync::Arc::clone(&system.vault);
        let concurrency = options.concurrency_of(*part);
        match part {
            Part::VerifyIdentity => {
                let step = verify_identity::VerifyIdentity::new(&mvd_url, http.clone());
                system.spawn(move |token| {
                    runtime::run(settings, pool, step, concurrency, breakers, vault, token)
                });
            }
            Part::ConfirmPhone => {
                let step = confirm_phone::ConfirmPhone::new(&sms_url, http.clone(), hash_params);
                system.spawn(move |token| {
                    runtime::run(settings, pool, step, concurrency, breakers, vault, token)
                });
            }
            Part::Register => {
                system.spawn(move |token| {
                    runtime::run(
                        settings,
                        pool,
                        registry::Register,
                        concurrency,
                        breakers,
                        vault,
                        token,
                    )
                });
            }
            Part::SendSms => {
                let step = send_sms::SendSms::new(&sms_url, http.clone(), hash_params);
                system.spawn(move |token| {
                    runtime::run(settings, pool, step, concurrency, breakers, vault, token)
                });
            }
            Part::PhoneConfirmation => {
                system.spawn(move |token| {
                    confirm_phone::run_consumer(settings, pool, vault, concurrency, token)
                });
            }
            Part::Intake | Part::Outbox | Part::DeadLetterKeeper | Part::Api => {}
        }
    }
    Ok(Running {
        system,
        settings,
        simulators,
    })
}
