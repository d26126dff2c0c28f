//! The operator's and the clerk's commands against a running API (`--api`, `--token`):
//! `uidflow dead-letters list | show | replay | discard` and `uidflow status --api`.
//! Tables for people, `--json` for scripts.

use crate::terminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use serde_json::{Value, json};

/// Where and as whom to call the API.
pub struct Remote {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Remote {
    /// `api` (default `http://API_ADDR`) and `token` (default: `UIDFLOW_TOKEN`, else the local
    /// operator token in `.uidflow/tokens/operator.token`).
    pub fn new(
        api: Option<String>,
        token: Option<String>,
        settings: &uidflow::config::Settings,
    ) -> anyhow::Result<Self> {
        let base = api
            .unwrap_or_else(|| format!("http://{}", settings.api_addr))
            .trim_end_matches('/')
            .to_owned();
        let local = Path::new(".uidflow/tokens/operator.token");
        let token = match token.or_else(|| std::env::var("UIDFLOW_TOKEN").ok()) {
            Some(token) => token,
            None => std::fs::read_to_string(local)
                .map(|t| t.trim().to_owned())
                .map_err(|_| anyhow::anyhow!("no token: pass --token, set UIDFLOW_TOKEN, or run `uidflow run` here once to make {}", local.display()))?,
        };
        Ok(Self {
            base,
            token,
            client: uidflow::http::client(std::time::Duration::from_secs(30)),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {}{path}", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["error"]["message"].as_str().unwrap_or("no message");
            anyhow::bail!(
                "{} answered {}: {}",
                self.base,
                status.as_u16(),
                terminal::escape(message)
            );
        }
        Ok(body)
    }

    /// `uidflow status --api`: what a clerk sees.
    pub async fn status(&self, id: uuid::Uuid, json_out: bool) -> anyhow::Result<Value> {
        let view = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/applications/{id}"),
                None,
            )
            .await?;
        if json_out {
            println!("{}", terminal::json(&view));
        }
        Ok(view)
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => terminal::escape(s).into_owned(),
        other => terminal::escape(&other.to_string()).into_owned(),
    }
}

fn when(value: &Value) -> String {
    value
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| text(value))
}

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(width - 1).collect::<String>())
    }
}

/// `uidflow dead-letters …`.
pub async fn dead_letters(remote: &Remote, args: &DeadLetterArgs) -> anyhow::Result<ExitCode> {
    match &args.action {
        Action::List { state, limit } => {
            let path = format!("/v1/dead-letters?state={state}&limit={limit}");
            let page = remote.call(reqwest::Method::GET, &path, None).await?;
            if args.json {
                println!("{}", terminal::json(&page));
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:>6}  {:<9}  {:<9}  {:<18}  {:>3}  {:<20}  {:<36}  error",
                "id", "state", "kind", "step", "try", "parked", "application"
            );
            for item in page["items"].as_array().into_iter().flatten() {
                println!(
                    "{:>6}  {:<9}  {:<9}  {:<18}  {:>3}  {:<20}  {:<36}  {}",
                    text(&item["id"]),
                    text(&item["state"]),
                    text(&item["error_kind"]),
                    text(&item["step"]),
                    text(&item["attempts"]),
                    when(&item["parked_at"]),
                    text(&item["application_id"]),
                    clip(&text(&item["error"]), 70)
                );
            }
            if page["next_cursor"].is_string() {
                println!("(more: raise --limit)");
            }
        }
        Action::Show { id, raw } => {
            let letter = remote
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/dead-letters/{id}"),
                    None,
                )
                .await?;
            if *raw {
                let Some(encoded) = letter["body"]["raw_base64"].as_str() else {
                    anyhow::bail!("dead letter {id} holds personal data: it is shown masked only");
                };
                let bytes = base64::engine::general_purpose::STANDARD.decode(encoded)?;
                std::io::Write::write_all(&mut std::io::stdout(), &bytes)?;
                return Ok(ExitCode::SUCCESS);
            }
            if args.json {
                println!("{}", terminal::json(&letter));
                return Ok(ExitCode::SUCCESS);
            }
            for key in [
                "id",
                "state",
                "error_kind",
                "step",
                "attempts",
                "error",
                "reason_code",
                "application_id",
                "routing_key",
                "first_failed_at",
                "last_failed_at",
                "parked_at",
                "state_changed_at",
                "state_changed_by",
                "state_reason",
                "replayable",
            ] {
                println!("{key:<17} {}", text(&letter[key]));
            }
            println!("headers");
            for (name, value) in letter["headers"].as_object().into_iter().flatten() {
                println!("  {}: {}", terminal::escape(name), text(value));
            }
            let body = &letter["body"];
            println!(
                "body ({}, {} bytes{})",
                text(&body["encoding"]),
                text(&body["bytes"]),
                if body["masked"] == true {
                    ", masked"
                } else {
                    ""
                }
            );
            match &body["content"] {
                Value::String(s) => println!("{}", terminal::block(s)),
                other => println!("{}", terminal::json(other)),
            }
        }
        Action::Replay { id, reason } | Action::Discard { id, reason } => {
            let (method, path, verb) = match &args.action {
                Action::Replay { .. } => (
                    reqwest::Method::POST,
                    format!("/v1/dead-letters/{id}/replay"),
                    "replayed",
                ),
                _ => (
                    reqwest::Method::DELETE,
                    format!("/v1/dead-letters/{id}"),
                    "discarded",
                ),
            };
            let done = remote
                .call(method, &path, Some(json!({"reason": reason})))
                .await?;
            if args.json {
                println!("{}", terminal::json(&done));
            } else {
                println!(
                    "dead letter {id} {verb} by {} at {}",
                    text(&done["state_changed_by"]),
                    text(&done["state_changed_at"])
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `uidflow dead-letters`.
#[derive(Debug, clap::Args)]
pub struct DeadLetterArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// The API's base URL (default `http://API_ADDR`).
    #[arg(long, global = true)]
    pub api: Option<String>,
    /// An operator token (default `UIDFLOW_TOKEN`, else `.uidflow/tokens/operator.token`).
    #[arg(long, global = true)]
    pub token: Option<String>,
}

/// The dead-letter actions.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Parked dead letters, newest first.
    List {
        /// parked, replayed, discarded or all.
        #[arg(long, default_value = "parked")]
        state: String,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One dead letter with its headers and (masked) body.
    Show {
        /// Its id.
        id: i64,
        /// Write the original body byte for byte to stdout (export; refused when it holds personal data).
        #[arg(long)]
        raw: bool,
    },
    /// Put it back where it failed; the application goes on.
    Replay {
        /// Its id.
        id: i64,
        /// Why (recorded in the history).
        #[arg(long)]
        reason: String,
    },
    /// Discard it (recorded in the history; the row stays).
    Discard {
        /// Its id.
        id: i64,
        /// Why (recorded in the history).
        #[arg(long)]
        reason: String,
    },
}
