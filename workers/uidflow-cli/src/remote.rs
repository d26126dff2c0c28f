//! The operator's and the clerk's commands against a running API (`--api`, `--token`):
//! `uidflow dead-letters list | show | replay | discard` and `uidflow status --api`.
//! Tables for people, `--json` for scripts.

use crate::terminal::{self, Column, Table};
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

/// `uidflow dead-letters …`.
pub async fn dead_letters(remote: &Remote, args: &DeadLetterArgs) -> anyhow::Result<ExitCode> {
    match &args.action {
        Action::List {
            state,
            limit,
            cursor,
            filter,
        } => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("state", state);
            query.append_pair("limit", &limit.to_string());
            if let Some(cursor) = cursor {
                query.append_pair("cursor", cursor);
            }
            for (key, value) in filter.pairs() {
                query.append_pair(key, &value);
            }
            let path = format!("/v1/dead-letters?{}", query.finish());
            let page = remote.call(reqwest::Method::GET, &path, None).await?;
            if args.via.json {
                println!("{}", terminal::json(&page));
                return Ok(ExitCode::SUCCESS);
            }
            print_summaries(&page["items"]);
            if let Some(next) = page["next_cursor"].as_str() {
                println!("(more: --cursor {})", terminal::escape(next));
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
            if args.via.json {
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
        Action::Replay {
            id,
            reason,
            filter,
            yes,
        }
        | Action::Discard {
            id,
            reason,
            filter,
            yes,
        } => {
            let replay = matches!(&args.action, Action::Replay { .. });
            let Some(id) = id else {
                return bulk(remote, args, replay, reason, filter, *yes).await;
            };
            if !filter.pairs().is_empty() {
                anyhow::bail!("give a dead letter's id or filters, not both");
            }
            let (method, path, verb) = if replay {
                (
                    reqwest::Method::POST,
                    format!("/v1/dead-letters/{id}/replay"),
                    "replayed",
                )
            } else {
                (
                    reqwest::Method::DELETE,
                    format!("/v1/dead-letters/{id}"),
                    "discarded",
                )
            };
            let done = remote
                .call(method, &path, Some(json!({"reason": reason})))
                .await?;
            if args.via.json {
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

fn print_summaries(items: &Value) {
    let mut table = Table::new(&[
        Column::number("id"),
        Column::text("state"),
        Column::text("kind"),
        Column::text("step"),
        Column::number("try"),
        Column::fixed("parked"),
        Column::fixed("application"),
        Column::text("error"),
    ]);
    for item in items.as_array().into_iter().flatten() {
        table.row([
            text(&item["id"]),
            text(&item["state"]),
            text(&item["error_kind"]),
            text(&item["step"]),
            text(&item["attempts"]),
            when(&item["parked_at"]),
            text(&item["application_id"]),
            text(&item["error"]),
        ]);
    }
    table.print();
}

/// `uidflow dead-letters replay|discard` with filters instead of an id: the preview (how many,
/// which), then, with `--yes`, the action with one reason, bounded by what the preview saw.
async fn bulk(
    remote: &Remote,
    args: &DeadLetterArgs,
    replay: bool,
    reason: &str,
    filter: &FilterArgs,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    if filter.pairs().is_empty() && !filter.all {
        anyhow::bail!(
            "give a dead letter's id, or filters (--kind, --step, --error, --service, --from, --to), or --all"
        );
    }
    let (action, done_verb) = if replay {
        ("replay", "replayed")
    } else {
        ("discard", "discarded")
    };
    let mut request = serde_json::Map::new();
    request.insert("action".into(), Value::from(action));
    for (key, value) in filter.pairs() {
        request.insert(key.into(), Value::from(value));
    }
    let mut asked = request.clone();
    asked.insert("preview".into(), Value::from(true));
    let preview = remote
        .call(
            reqwest::Method::POST,
            "/v1/dead-letters/bulk",
            Some(Value::Object(asked)),
        )
        .await?;
    if !yes {
        if args.via.json {
            println!("{}", terminal::json(&preview));
        } else {
            println!(
                "{} parked dead letters match; {} would be {done_verb} (the newest {} below). Run again with --yes to {action} them.",
                text(&preview["count"]),
                text(&preview["applicable"]),
                preview["items"].as_array().map_or(0, Vec::len)
            );
            print_summaries(&preview["items"]);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(through) = preview["through_id"].as_i64() else {
        if args.via.json {
            println!(
                "{}",
                terminal::json(&json!({"action": action, "done": [], "skipped": []}))
            );
        } else {
            println!("nothing to {action}: no parked dead letter matches");
        }
        return Ok(ExitCode::SUCCESS);
    };
    request.insert("through_id".into(), Value::from(through));
    request.insert("reason".into(), Value::from(reason));
    let done = remote
        .call(
            reqwest::Method::POST,
            "/v1/dead-letters/bulk",
            Some(Value::Object(request)),
        )
        .await?;
    if args.via.json {
        println!("{}", terminal::json(&done));
    } else {
        println!(
            "{} dead letters {done_verb}, {} skipped",
            done["done"].as_array().map_or(0, Vec::len),
            done["skipped"].as_array().map_or(0, Vec::len)
        );
        for skipped in done["skipped"].as_array().into_iter().flatten() {
            println!("  {}: {}", text(&skipped["id"]), text(&skipped["error"]));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Which dead letters (the filters of the list, the console and a bulk action).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only this kind (exhausted, permanent, malformed, invalid, conflict, out_of_order).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only letters parked by this step (intake, verify-identity, send-sms, …).
    #[arg(long)]
    pub step: Option<String>,
    /// Only letters whose error contains this text.
    #[arg(long)]
    pub error: Option<String>,
    /// Only letters of this issuing service's applications.
    #[arg(long)]
    pub service: Option<String>,
    /// Parked at or after (RFC 3339, e.g. 2026-12-02T08:00:00Z).
    #[arg(long)]
    pub from: Option<String>,
    /// Parked before (RFC 3339).
    #[arg(long)]
    pub to: Option<String>,
    /// Without an id or other filters: every parked dead letter (replay and discard).
    #[arg(long)]
    pub all: bool,
}

impl FilterArgs {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        [
            ("kind", &self.kind),
            ("step", &self.step),
            ("error", &self.error),
            ("service", &self.service),
            ("from", &self.from),
            ("to", &self.to),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

/// Arguments of `uidflow dead-letters`.
#[derive(Debug, clap::Args)]
pub struct DeadLetterArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
    /// Where the API is, with an operator token.
    #[command(flatten)]
    pub via: Via,
}

/// How a command reaches the HTTP API, and how it prints (shared by every command that goes
/// through the API).
#[derive(Debug, clap::Args)]
pub struct Via {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// The API's base URL (default `http://API_ADDR`).
    #[arg(long, global = true)]
    pub api: Option<String>,
    /// The token (default `UIDFLOW_TOKEN`, else `.uidflow/tokens/operator.token`); a clerk's
    /// sees its own issuing service only, the operator commands need an operator's.
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
        /// Continue from the `--cursor` a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
        /// Filters.
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// One dead letter with its headers and (masked) body.
    Show {
        /// Its id.
        id: i64,
        /// Write the original body byte for byte to stdout (export; refused when it holds personal data).
        #[arg(long)]
        raw: bool,
    },
    /// Put it back where it failed; the application goes on. Without an id, every parked one
    /// the filters select: a preview first, then the same with --yes.
    Replay {
        /// Its id.
        id: Option<i64>,
        /// Why (recorded in the history).
        #[arg(long)]
        reason: String,
        /// Filters (instead of an id).
        #[command(flatten)]
        filter: FilterArgs,
        /// Apply the bulk action (without: only the preview).
        #[arg(long)]
        yes: bool,
    },
    /// Discard it (recorded in the history; the row stays). Without an id, every parked one
    /// the filters select: a preview first, then the same with --yes.
    Discard {
        /// Its id.
        id: Option<i64>,
        /// Why (recorded in the history).
        #[arg(long)]
        reason: String,
        /// Filters (instead of an id).
        #[command(flatten)]
        filter: FilterArgs,
        /// Apply the bulk action (without: only the preview).
        #[arg(long)]
        yes: bool,
    },
}

/// Arguments of `uidflow apps`.
#[derive(Debug, clap::Args)]
pub struct AppsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: AppsAction,
    /// Where the API is, with a clerk's or an operator's token.
    #[command(flatten)]
    pub via: Via,
}

/// The application commands.
#[derive(Debug, clap::Subcommand)]
pub enum AppsAction {
    /// Applications, newest first, masked as the API answers.
    List {
        /// Only this status (received, verifying_identity, …, completed, rejected, failed).
        #[arg(long)]
        status: Option<String>,
        /// Only this kind (issue, block, unblock, change_phone).
        #[arg(long)]
        kind: Option<String>,
        /// Only this issuing service.
        #[arg(long)]
        service: Option<String>,
        /// Created at or after (RFC 3339, e.g. 2026-12-02T08:00:00Z).
        #[arg(long)]
        from: Option<String>,
        /// Created before (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// How many (1 to 200).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue from the `--cursor` a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
}

/// `uidflow apps …`.
pub async fn apps(remote: &Remote, args: &AppsArgs) -> anyhow::Result<ExitCode> {
    let AppsAction::List {
        status,
        kind,
        service,
        from,
        to,
        limit,
        cursor,
    } = &args.action;
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("limit", &limit.to_string());
    for (key, value) in [
        ("status", status),
        ("kind", kind),
        ("service", service),
        ("from", from),
        ("to", to),
        ("cursor", cursor),
    ] {
        if let Some(value) = value {
            query.append_pair(key, value);
        }
    }
    let path = format!("/v1/applications?{}", query.finish());
    let page = remote.call(reqwest::Method::GET, &path, None).await?;
    if args.via.json {
        println!("{}", terminal::json(&page));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        Column::fixed("application"),
        Column::text("kind"),
        Column::text("status"),
        Column::text("service"),
        Column::text("applicant"),
        Column::text("phone"),
        Column::fixed("created"),
        Column::text("reason"),
    ]);
    for item in page["items"].as_array().into_iter().flatten() {
        let reason = &item["reason"];
        table.row([
            text(&item["application_id"]),
            text(&item["kind"]),
            text(&item["status"]),
            text(&item["issuing_service"]),
            text(&item["identification_number"]),
            text(&item["phone"]),
            when(&item["created_at"]),
            match reason["code"].as_str() {
                Some(code) => code.to_owned(),
                None if reason.is_null() => String::new(),
                None => text(reason),
            },
        ]);
    }
    table.print();
    if let Some(next) = page["next_cursor"].as_str() {
        println!("(more: --cursor {})", terminal::escape(next));
    }
    Ok(ExitCode::SUCCESS)
}

/// `uidflow queues`: every queue's depth, consumers and rates (operator).
pub async fn queues(remote: &Remote, json_out: bool) -> anyhow::Result<ExitCode> {
    let answer = remote
        .call(reqwest::Method::GET, "/v1/queues", None)
        .await?;
    if json_out {
        println!("{}", terminal::json(&answer));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        Column::fixed("queue"),
        Column::number("messages"),
        Column::number("consumers"),
        Column::number("publish/s"),
        Column::number("ack/s"),
        Column::number("redeliver/s"),
    ]);
    let rate = |value: &Value| {
        value
            .as_f64()
            .map_or_else(|| text(value), |r| format!("{r:.1}"))
    };
    for queue in answer["queues"].as_array().into_iter().flatten() {
        table.row([
            text(&queue["name"]),
            text(&queue["messages"]),
            text(&queue["consumers"]),
            rate(&queue["publish_rate"]),
            rate(&queue["ack_rate"]),
            rate(&queue["redeliver_rate"]),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}
