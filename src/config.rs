//! Configuration: one `Settings` tree read from the environment (CONTRACT §8), validated once.
//!
//! A `.env` file in the working directory (only there: parent directories are not searched)
//! may add variables; the real environment wins.
//! Every error names the variable, what is wrong and how to fix it, in one line, so that
//! `main` can print it and exit non-zero. Nothing else in the crate reads the environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// Default of `AMQP_URL` (CONTRACT §2).
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default of `DATABASE_URL` (CONTRACT §8).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/uidflow";
/// Default of `API_ADDR`.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:8080";
/// Default of `RETRY_DELAYS`: 6 attempts in all.
pub const DEFAULT_RETRY_DELAYS: &str = "1s,5s,30s,2m,10m";

/// A configuration problem, phrased for the person starting the process.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong and how to fix it.
    pub problem: String,
}

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (default).
    Text,
    /// One JSON object per line.
    Json,
}

/// The external systems the built-in simulators stand in for: only when asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Simulated {
    /// `MVD_URL=sim`.
    pub mvd: bool,
    /// `SMS_URL=sim`.
    pub sms: bool,
}

impl Simulated {
    /// The simulated services by name (`mvd`, `sms`), for logs, `/readyz` and the metric.
    pub fn names(self) -> Vec<&'static str> {
        [("mvd", self.mvd), ("sms", self.sms)]
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect()
    }
}

/// The value of `MVD_URL` / `SMS_URL` that selects the built-in simulator.
pub const SIMULATOR: &str = "sim";

/// Everything the system is wired to. Built once in `main` and passed down.
#[derive(Debug, Clone)]
pub struct Settings {
    /// RabbitMQ URL; secret because it may hold a password.
    pub amqp_url: SecretString,
    /// PostgreSQL URL; secret because it may hold a password.
    pub database_url: SecretString,
    /// Where the HTTP API listens.
    pub api_addr: SocketAddr,
    /// The MVD verification service; `None`: unset, or the simulator (see `simulated`).
    pub mvd_url: Option<Url>,
    /// The SMS gateway; `None`: unset, or the simulator (see `simulated`).
    pub sms_url: Option<Url>,
    /// The external systems the built-in simulators stand in for (`MVD_URL=sim`, `SMS_URL=sim`,
    /// or `uidflow run --simulators`).
    pub simulated: Simulated,
    /// TOML file of API tokens; `None` means local tokens are generated.
    pub api_tokens_file: Option<PathBuf>,
    /// The data keys that seal personal data at rest (`DATA_KEYS_FILE`, see `vault`); `None`:
    /// a local file is made when the external systems are simulated, else start-up fails.
    pub data_keys_file: Option<PathBuf>,
    /// How long an ended application keeps its personal data (`RETENTION`, 90d); settled dead
    /// letters keep their bodies as long.
    pub retention: Duration,
    /// Waits between attempts of a step that failed transiently.
    pub retry_delays: Vec<Duration>,
    /// How long a phone-confirmation code is valid.
    pub phone_code_ttl: Duration,
    /// How long a temporary password is valid.
    pub temp_password_ttl: Duration,
    /// Timeout of one call to the MVD or the SMS gateway.
    pub http_timeout: Duration,
    /// Log output format.
    pub log_format: LogFormat,
    /// OTLP collector base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`, e.g. `http://127.0.0.1:4318`);
    /// spans are exported only when it is set and the build has the `otel` feature.
    pub otlp_endpoint: Option<Url>,
    /// argon2id cost of password and code hashes (`ARGON2_MEMORY_KIB`, `ARGON2_ITERATIONS`,
    /// `ARGON2_PARALLELISM`; default OWASP's 19456 KiB, 2, 1).
    pub hash_params: crate::secrets::HashParams,
    /// PostgreSQL connections this process's pool may hold (`DATABASE_MAX_CONNECTIONS`).
    pub database_max_connections: u32,
    /// How often the reconciler looks for overdue applications (`RECONCILE_INTERVAL`, 30s).
    pub reconcile_interval: Duration,
    /// How long after its expected event an application counts as overdue
    /// (`RECONCILE_GRACE`, 5m): longer than a step queue's backlog normally takes to drain.
    pub reconcile_grace: Duration,
    /// The shared circuit breakers of the external systems (`BREAKER_*`, see `breaker`).
    pub breaker: crate::breaker::BreakerConfig,
    /// The Ed25519 seed that signs audit checkpoints (`AUDIT_KEY_FILE`, owner-only, 64 hex
    /// digits); `None`: a local key made once in `.uidflow/keys/audit-signing.key`.
    pub audit_key_file: Option<PathBuf>,
    /// How often the heads of the changed audit chains are signed (`AUDIT_CHECKPOINT_INTERVAL`,
    /// 1m): the rows after the last checkpoint are only hash-chained.
    pub audit_checkpoint_interval: Duration,
}

/// Default of `DATABASE_MAX_CONNECTIONS`: a connection is held only while a delivery commits
/// (and, for a code or password SMS, while it is sent under the row lock), so a few serve a
/// process (each outbox relay keeps one for its `LISTEN`); eleven processes (two whole, one
/// per part) fit PostgreSQL's default 100.
pub const DEFAULT_DATABASE_MAX_CONNECTIONS: u32 = 8;

impl Settings {
    /// Reads the process environment, after loading `.env` if present.
    pub fn from_env() -> Result<Self, ConfigError> {
        // A missing .env is normal; a broken one is an error worth one line.
        // Only the working directory's .env: `dotenvy::dotenv()` would also search the parent
        // directories and pick up some other project's settings.
        match dotenvy::from_path(".env") {
            Ok(_) => {}
            Err(error) if error.not_found() => {}
            Err(error) => {
                return Err(ConfigError {
                    variable: ".env",
                    problem: format!("cannot read the .env file ({error}); fix or remove it"),
                });
            }
        }
        Self::from_map(&std::env::vars().collect())
    }

    /// Builds settings from a map of variables (the environment, or a test's own values).
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());

        let amqp_url = get("AMQP_URL").unwrap_or(DEFAULT_AMQP_URL);
        let mut vhosts = std::collections::BTreeSet::new();
        for node in amqp_nodes(amqp_url) {
            let url = check_url("AMQP_URL", node, &["amqp", "amqps"])?;
            vhosts.insert(url.path().trim_start_matches('/').to_owned());
        }
        if vhosts.len() > 1 {
            return Err(ConfigError {
                variable: "AMQP_URL",
                problem: "its nodes name different vhosts; list the nodes of one cluster, each with the same vhost".into(),
            });
        }
        let database_url = get("DATABASE_URL").unwrap_or(DEFAULT_DATABASE_URL);
        let parsed_db = check_url("DATABASE_URL", database_url, &["postgres", "postgresql"])?;
        if parsed_db.path().trim_start_matches('/').is_empty() {
            return Err(ConfigError {
                variable: "DATABASE_URL",
                problem:
                    "names no database; add one, e.g. postgres://postgres@127.0.0.1:5432/uidflow"
                        .into(),
            });
        }
        let api_addr_text = get("API_ADDR").unwrap_or(DEFAULT_API_ADDR);
        let api_addr = api_addr_text.parse().map_err(|_| ConfigError {
            variable: "API_ADDR",
            problem: format!(
                "{api_addr_text:?} is not a socket address; write it like 127.0.0.1:8080"
            ),
        })?;
        let external = |variable: &'static str| match get(variable) {
            Some(SIMULATOR) => Ok((None, true)),
            Some(v) => check_url(variable, v, &["http", "https"]).map(|url| (Some(url), false)),
            None => Ok((None, false)),
        };
        let (mvd_url, mvd_simulated) = external("MVD_URL")?;
        let (sms_url, sms_simulated) = external("SMS_URL")?;
        let api_tokens_file = optional_file(
            get("API_TOKENS_FILE"),
            "API_TOKENS_FILE",
            "point it at the TOML token file or unset it",
        )?;
        let data_keys_file = optional_file(
            get("DATA_KEYS_FILE"),
            "DATA_KEYS_FILE",
            "point it at the data key file (`uidflow keys init FILE` makes one) or unset it for local keys (a trial only)",
        )?;
        let audit_key_file = optional_file(
            get("AUDIT_KEY_FILE"),
            "AUDIT_KEY_FILE",
            "point it at the audit signing key or unset it",
        )?;
        let retry_delays = parse_duration_list(
            "RETRY_DELAYS",
            get("RETRY_DELAYS").unwrap_or(DEFAULT_RETRY_DELAYS),
        )?;
        let otlp_endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|v| check_url("OTEL_EXPORTER_OTLP_ENDPOINT", v, &["http", "https"]))
            .transpose()?;
        let log_format = match get("LOG_FORMAT").unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError {
                    variable: "LOG_FORMAT",
                    problem: format!("{other:?} is not a log format; use text or json"),
                });
            }
        };
        Ok(Self {
            amqp_url: amqp_url.into(),
            database_url: database_url.into(),
            api_addr,
            mvd_url,
            sms_url,
            simulated: Simulated {
                mvd: mvd_simulated,
                sms: sms_simulated,
            },
            api_tokens_file,
            retry_delays,
            phone_code_ttl: parse_duration_var("PHONE_CODE_TTL", get("PHONE_CODE_TTL"), "10m")?,
            temp_password_ttl: parse_duration_var(
                "TEMP_PASSWORD_TTL",
                get("TEMP_PASSWORD_TTL"),
                "72h",
            )?,
            http_timeout: parse_duration_var("HTTP_TIMEOUT", get("HTTP_TIMEOUT"), "10s")?,
            log_format,
            otlp_endpoint,
            hash_params: hash_params(&get)?,
            database_max_connections: match get("DATABASE_MAX_CONNECTIONS") {
                None => DEFAULT_DATABASE_MAX_CONNECTIONS,
                Some(text) => text
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| ConfigError {
                        variable: "DATABASE_MAX_CONNECTIONS",
                        problem: format!("{text:?} is not a whole number from 1 to 1000"),
                    })?,
            },
            reconcile_interval: parse_duration_var(
                "RECONCILE_INTERVAL",
                get("RECONCILE_INTERVAL"),
                "30s",
            )?,
            reconcile_grace: parse_duration_var("RECONCILE_GRACE", get("RECONCILE_GRACE"), "5m")?,
            data_keys_file,
            retention: parse_duration_var("RETENTION", get("RETENTION"), "90d")?,
            breaker: crate::breaker::BreakerConfig {
                failures: match get("BREAKER_FAILURES") {
                    None => crate::breaker::DEFAULT_FAILURES,
                    Some(text) => text
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=1_000_000).contains(n))
                        .ok_or_else(|| ConfigError {
                            variable: "BREAKER_FAILURES",
                            problem: format!("{text:?} is not a whole number from 1 to 1000000"),
                        })?,
                },
                probe_interval: parse_duration_var(
                    "BREAKER_PROBE_INTERVAL",
                    get("BREAKER_PROBE_INTERVAL"),
                    "30s",
                )?,
                refresh: parse_duration_var("BREAKER_REFRESH", get("BREAKER_REFRESH"), "1s")?,
            },
            audit_key_file,
            audit_checkpoint_interval: parse_duration_var(
                "AUDIT_CHECKPOINT_INTERVAL",
                get("AUDIT_CHECKPOINT_INTERVAL"),
                "1m",
            )?,
        })
    }

    /// Checks that the external systems a process needs are configured: the real service or
    /// the simulator, never nothing. `simulators` (`uidflow run --simulators`) selects the
    /// simulator for both, and contradicts a URL that is set. Unset is an error naming both
    /// ways, so that a forgotten URL never quietly approves everyone.
    pub fn require_external(
        &mut self,
        needs_mvd: bool,
        needs_sms: bool,
        simulators: bool,
    ) -> Result<(), ConfigError> {
        if simulators {
            for (variable, url) in [("MVD_URL", &self.mvd_url), ("SMS_URL", &self.sms_url)] {
                if url.is_some() {
                    return Err(ConfigError {
                        variable,
                        problem: "is set to a service, and --simulators asks for the simulator; \
                                  unset it (or set it to sim) or drop --simulators"
                            .into(),
                    });
                }
            }
            self.simulated = Simulated {
                mvd: true,
                sms: true,
            };
            return Ok(());
        }
        let mvd_missing = needs_mvd && self.mvd_url.is_none() && !self.simulated.mvd;
        let sms_missing = needs_sms && self.sms_url.is_none() && !self.simulated.sms;
        let variable = match (mvd_missing, sms_missing) {
            (false, false) => return Ok(()),
            (true, false) => "MVD_URL",
            (false, true) => "SMS_URL",
            (true, true) => "MVD_URL and SMS_URL",
        };
        Err(ConfigError {
            variable,
            problem: "not set; set MVD_URL and SMS_URL to the services, or to sim / run with \
                      --simulators for the built-in simulators"
                .into(),
        })
    }

    /// The AMQP URL with any password replaced by `***`, for messages and logs (every node).
    pub fn amqp_url_redacted(&self) -> String {
        amqp_nodes(self.amqp_url.expose_secret())
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes of `AMQP_URL` (one URL each), in the order given (CONTRACT §8: several nodes
    /// of one cluster, comma-separated).
    pub fn amqp_nodes(&self) -> Vec<String> {
        amqp_nodes(self.amqp_url.expose_secret())
            .map(str::to_owned)
            .collect()
    }

    /// The database URL with any password replaced by `***`, for messages and logs.
    pub fn database_url_redacted(&self) -> String {
        redact_url(self.database_url.expose_secret())
    }
}

/// The node URLs of an `AMQP_URL` (comma-separated; a comma inside a password is written `%2C`).
fn amqp_nodes(list: &str) -> impl Iterator<Item = &str> {
    list.split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
}

/// Replaces the password of a URL with `***`; an unparsable URL is hidden whole.
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "<unparsable url>".into(),
    }
}

fn check_url(variable: &'static str, value: &str, schemes: &[&str]) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|error| ConfigError {
        variable,
        problem: format!(
            "{} is not a URL ({error}); write it like {}://host:port/…",
            redact_url(value),
            schemes[0]
        ),
    })?;
    if !schemes.contains(&url.scheme()) {
        return Err(ConfigError {
            variable,
            problem: format!(
                "scheme {:?} is not supported; use {}",
                url.scheme(),
                schemes.join(" or ")
            ),
        });
    }
    Ok(url)
}

/// Parses a duration written like `250ms`, `5s`, `2m`, `72h` (CONTRACT §8), via `humantime`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok()
}

/// Writes a duration compactly (`1s`, `2m`, `250ms`), as used in queue names.
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

fn hash_params<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<crate::secrets::HashParams, ConfigError> {
    let owasp = crate::secrets::HashParams::owasp();
    let number = |variable: &'static str, default: u32, minimum: u32| -> Result<u32, ConfigError> {
        match get(variable) {
            None => Ok(default),
            Some(text) => match text.parse::<u32>() {
                Ok(n) if n >= minimum => Ok(n),
                _ => Err(ConfigError {
                    variable,
                    problem: format!("{text:?} is not a whole number of at least {minimum}"),
                }),
            },
        }
    };
    let parallelism = number("ARGON2_PARALLELISM", owasp.parallelism, 1)?;
    Ok(crate::secrets::HashParams {
        memory_kib: number("ARGON2_MEMORY_KIB", owasp.memory_kib, 8 * parallelism)?,
        iterations: number("ARGON2_ITERATIONS", owasp.iterations, 1)?,
        parallelism,
    })
}

/// A file named by `variable`, if set: it must be a readable file (`hint` says what to point
/// it at).
fn optional_file(
    value: Option<&str>,
    variable: &'static str,
    hint: &str,
) -> Result<Option<PathBuf>, ConfigError> {
    let path = value.map(PathBuf::from);
    match &path {
        Some(file) if !file.is_file() => Err(ConfigError {
            variable,
            problem: format!("{} is not a readable file; {hint}", file.display()),
        }),
        _ => Ok(path),
    }
}

fn parse_duration_var(
    variable: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or(default);
    match parse_duration(text) {
        Some(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(ConfigError {
            variable,
            problem: format!(
                "{text:?} is not a positive duration; write it like 250ms, 5s, 2m or 72h"
            ),
        }),
    }
}

fn parse_duration_list(variable: &'static str, text: &str) -> Result<Vec<Duration>, ConfigError> {
    let mut delays = Vec::new();
    for part in text.split(',') {
        delays.push(parse_duration_var(variable, Some(part.trim()), "")?);
    }
    if delays.len() > 20 {
        return Err(ConfigError {
            variable,
            problem: format!("{} delays is too many; give at most 20", delays.len()),
        });
    }
    Ok(delays)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_map(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn amqp_url_may_list_the_nodes_of_one_cluster() {
        let s = settings(&[(
            "AMQP_URL",
            "amqp://u:s3cret@10.0.0.1:5672/prod, amqp://u:s3cret@10.0.0.2:5672/prod,amqps://u:s3cret@10.0.0.3:5671/prod",
        )])
        .expect("three nodes of one vhost");
        assert_eq!(s.amqp_nodes().len(), 3);
        assert_eq!(s.amqp_nodes()[1], "amqp://u:s3cret@10.0.0.2:5672/prod");
        let redacted = s.amqp_url_redacted();
        assert!(
            !redacted.contains("s3cret") && redacted.matches("***").count() == 3,
            "{redacted}"
        );
        for (value, problem) in [
            ("amqp://a:5672/one,amqp://b:5672/two", "different vhosts"),
            ("amqp://a:5672/one,http://b/one", "scheme"),
            ("amqp://a:5672/one,not a url", "not a URL"),
        ] {
            let error = settings(&[("AMQP_URL", value)]).expect_err(value);
            assert_eq!(error.variable, "AMQP_URL");
            assert!(
                error.problem.contains(problem),
                "{value}: {}",
                error.problem
            );
        }
        assert_eq!(settings(&[]).unwrap().amqp_nodes().len(), 1);
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = settings(&[]).expect("defaults are valid");
        assert_eq!(s.amqp_url.expose_secret(), DEFAULT_AMQP_URL);
        assert_eq!(s.database_url.expose_secret(), DEFAULT_DATABASE_URL);
        assert_eq!(s.api_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.retry_delays.len(), 5);
        assert_eq!(s.retry_delays[4], Duration::from_secs(600));
        assert_eq!(s.phone_code_ttl, Duration::from_secs(600));
        assert_eq!(s.temp_password_ttl, Duration::from_secs(72 * 3600));
        assert_eq!(s.http_timeout, Duration::from_secs(10));
        assert_eq!(s.reconcile_interval, Duration::from_secs(30));
        assert_eq!(s.reconcile_grace, Duration::from_secs(300));
        assert_eq!(s.retention, Duration::from_secs(90 * 86_400));
        assert!(s.data_keys_file.is_none());
        assert_eq!(s.audit_checkpoint_interval, Duration::from_secs(60));
        assert!(s.audit_key_file.is_none());
        assert!(s.mvd_url.is_none() && s.sms_url.is_none());
        assert_eq!(s.simulated, Simulated::default());
        assert_eq!(s.hash_params, crate::secrets::HashParams::owasp());
    }

    #[test]
    fn durations_parse_in_every_unit_of_the_contract() {
        for (text, millis) in [
            ("250ms", 250),
            ("5s", 5_000),
            ("2m", 120_000),
            ("72h", 259_200_000),
        ] {
            assert_eq!(
                parse_duration(text),
                Some(Duration::from_millis(millis)),
                "{text}"
            );
        }
        for (millis, text) in [
            (250, "250ms"),
            (1_000, "1s"),
            (120_000, "2m"),
            (600_000, "10m"),
        ] {
            assert_eq!(format_duration(Duration::from_millis(millis)), text);
        }
        for bad in ["", "5", "s", "-1s", "5x", "1.5.2s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn each_bad_variable_is_named_with_a_fix() {
        for (var, value, needle) in [
            ("AMQP_URL", "http://x", "use amqp or amqps"),
            ("AMQP_URL", "not a url", "is not a URL"),
            ("DATABASE_URL", "postgres://h:5432", "names no database"),
            ("API_ADDR", "localhost", "socket address"),
            ("RETRY_DELAYS", "1s,5x", "positive duration"),
            ("PHONE_CODE_TTL", "0s", "positive duration"),
            ("MVD_URL", "ftp://x", "use http or https"),
            ("LOG_FORMAT", "xml", "text or json"),
            ("ARGON2_ITERATIONS", "0", "at least 1"),
            ("ARGON2_MEMORY_KIB", "4", "at least 8"),
            (
                "API_TOKENS_FILE",
                "/no/such/file.toml",
                "not a readable file",
            ),
            (
                "AUDIT_KEY_FILE",
                "/no/such/audit.key",
                "not a readable file",
            ),
            ("AUDIT_CHECKPOINT_INTERVAL", "soon", "positive duration"),
        ] {
            let error = settings(&[(var, value)]).expect_err(var);
            assert_eq!(error.variable, var);
            assert!(error.to_string().contains(needle), "{error}");
        }
    }

    #[test]
    fn the_simulators_run_only_when_asked_for() {
        let mut unset = settings(&[]).unwrap();
        let error = unset.require_external(true, true, false).unwrap_err();
        assert_eq!(
            error.to_string(),
            "MVD_URL and SMS_URL: not set; set MVD_URL and SMS_URL to the services, or to sim / \
             run with --simulators for the built-in simulators"
        );
        assert_eq!(
            unset
                .require_external(true, false, false)
                .unwrap_err()
                .variable,
            "MVD_URL"
        );
        unset.require_external(false, false, false).unwrap();
        unset.require_external(true, true, true).unwrap();
        assert_eq!(unset.simulated.names(), ["mvd", "sms"]);

        let mut mixed =
            settings(&[("MVD_URL", "https://mvd.example/api"), ("SMS_URL", "sim")]).unwrap();
        assert_eq!(mixed.simulated.names(), ["sms"]);
        assert!(mixed.sms_url.is_none());
        mixed.require_external(true, true, false).unwrap();
        let contradiction = mixed.require_external(true, true, true).unwrap_err();
        assert_eq!(contradiction.variable, "MVD_URL");
        assert!(contradiction.to_string().contains("--simulators"));

        let mut both = settings(&[("MVD_URL", "sim"), ("SMS_URL", "sim")]).unwrap();
        both.require_external(true, true, false).unwrap();
        assert_eq!(both.simulated.names(), ["mvd", "sms"]);
    }

    #[test]
    fn passwords_never_show_in_redacted_urls() {
        let s = settings(&[("AMQP_URL", "amqp://user:s3cret@host:5672/%2f")]).unwrap();
        assert!(!s.amqp_url_redacted().contains("s3cret"));
        assert!(!format!("{s:?}").contains("s3cret"));
        let bad = settings(&[("DATABASE_URL", "http://u:s3cret@h/db")]).unwrap_err();
        assert!(!bad.to_string().contains("s3cret"), "{bad}");
    }
}
