//! `uidflow submit --follow`: watch the submitted applications until each ends, with a
//! progress line, then print their final statuses. With `--confirm-codes`, play the clerk:
//! read each code from the SMS gateway's read-back (the simulator's `GET /v1/messages`, with the
//! simulators' token from `SIM_TOKEN` or `.uidflow/sim.token`) and publish it as a phone
//! confirmation. For demos and trials, not for production.

use crate::terminal::{self, Column, Table};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use sqlx::PgPool;
use uidflow::amqp::{Outgoing, Publisher};
use uidflow::config::Settings;
use uidflow::topology::{INTAKE_EXCHANGE, PHONE_CONFIRMATION_ROUTING_KEY};
use uuid::Uuid;

const ENDED: [&str; 3] = ["completed", "rejected", "failed"];

/// Follows `ids` until they end or `timeout` passes, then prints their final statuses (a
/// table, or nothing with `json`: the caller prints [`Followed::rows`]).
pub async fn follow(
    settings: &Settings,
    publisher: &Publisher,
    ids: &[Uuid],
    phones: &HashMap<Uuid, String>,
    confirm_codes: bool,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<Followed> {
    let pool = uidflow::db::connect(settings, 2).await?;
    let sms_url = settings
        .sms_url
        .as_ref()
        .map(|u| u.as_str().trim_end_matches('/').to_owned());
    if confirm_codes && sms_url.is_none() {
        anyhow::bail!(
            "--confirm-codes reads codes from the SMS gateway: set SMS_URL to the simulator's address (see `uidflow sim`)"
        );
    }
    let sim_token = if confirm_codes {
        sim_token()?
    } else {
        String::new()
    };
    let http = uidflow::http::client(Duration::from_secs(5));
    let mut typed: HashMap<Uuid, String> = HashMap::new();
    let started = Instant::now();
    let mut statuses = load(&pool, ids).await?;
    let ended = |statuses: &HashMap<Uuid, Progress>| {
        statuses
            .values()
            .filter(|row| ENDED.contains(&row.status.as_str()))
            .count()
    };
    // On a terminal one line redrawn in place; piped, a plain line whenever the counts change
    // (no carriage return, no escape code in a log).
    let redraw = terminal::progress_on_stderr();
    let mut shown = String::new();
    loop {
        let mut counts = BTreeMap::<&str, usize>::new();
        for row in statuses.values() {
            *counts.entry(row.status.as_str()).or_default() += 1;
        }
        let line: Vec<String> = counts
            .iter()
            .map(|(s, n)| format!("{} {n}", terminal::escape(s)))
            .collect();
        let progress = format!(
            "{}/{} ended · {}",
            ended(&statuses),
            ids.len(),
            line.join(" · ")
        );
        let elapsed = started.elapsed().as_secs_f64();
        if redraw {
            eprint!("\r\x1b[2K[{elapsed:>5.1}s] {progress}");
            let _ = std::io::stderr().flush();
        } else if progress != shown {
            eprintln!("[{elapsed:>5.1}s] {progress}");
        }
        shown = progress;
        if ended(&statuses) == ids.len() || started.elapsed() > timeout {
            if redraw {
                eprintln!();
            }
            break;
        }
        if let Some(sms_url) = sms_url.as_deref().filter(|_| confirm_codes) {
            for (id, row) in &statuses {
                let waiting = row.status == "awaiting_phone_confirmation";
                // The phone the submitted application named (the database holds it sealed).
                let Some(phone) = phones.get(id).map(String::as_str).filter(|_| waiting) else {
                    continue;
                };
                let Some(code) = newest_code(&http, sms_url, &sim_token, phone).await else {
                    continue;
                };
                if typed.get(id) == Some(&code) {
                    continue;
                }
                let body = serde_json::json!({"application_id": id, "code": code});
                publisher
                    .publish_all(&[Outgoing {
                        exchange: INTAKE_EXCHANGE.into(),
                        routing_key: PHONE_CONFIRMATION_ROUTING_KEY.into(),
                        message_id: Some(id.to_string()),
                        content_type: Some("application/json".into()),
                        headers: Value::Object(Default::default()),
                        body: serde_json::to_vec(&body)?,
                        mandatory: true,
                        expiration_ms: None,
                    }])
                    .await
                    .context("publishing a phone confirmation")?;
                typed.insert(*id, code);
            }
        }
        // The refresh rate of the progress line.
        tokio::time::sleep(Duration::from_millis(200)).await;
        statuses = load(&pool, ids).await?;
    }
    let mut table = Table::new(&[
        Column::fixed("application"),
        Column::text("kind"),
        Column::text("status"),
        Column::text("reason"),
    ]);
    let mut rows = Vec::new();
    for id in ids {
        let row = statuses.get(id);
        rows.push(serde_json::json!({
            "application_id": id,
            "kind": row.and_then(|r| r.kind.as_deref()),
            "status": row.map(|r| r.status.as_str()),
            "reason": row.and_then(|r| r.reason.as_deref()),
        }));
        match row {
            Some(row) => table.row([
                id.to_string().as_str(),
                row.kind.as_deref().unwrap_or("-"),
                &row.status,
                row.reason.as_deref().unwrap_or(""),
            ]),
            None => table.row([id.to_string().as_str(), "-", "(unknown)", ""]),
        }
    }
    if !json {
        table.print();
    }
    pool.close().await;
    Ok(Followed {
        ended: ended(&statuses) == ids.len(),
        rows,
    })
}

/// What following found: whether every application ended, and each one's final state
/// (`application_id`, `kind`, `status`, `reason`; `status` null when unknown).
pub struct Followed {
    /// Every application ended in time.
    pub ended: bool,
    /// One object per application, in the order asked.
    pub rows: Vec<Value>,
}

/// One application's progress.
#[derive(Debug, sqlx::FromRow)]
struct Progress {
    application_id: Uuid,
    status: String,
    kind: Option<String>,
    reason: Option<String>,
}

async fn load(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<HashMap<Uuid, Progress>> {
    let rows: Vec<Progress> = sqlx::query_as(
        "SELECT application_id, status, kind,
                nullif(concat_ws(': ', reason->>'code', reason->>'detail'), '') AS reason
         FROM applications WHERE application_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.application_id, row))
        .collect())
}

/// The simulators' token: `SIM_TOKEN`, else the file `uidflow sim` / `uidflow run --simulators`
/// wrote in the working directory.
fn sim_token() -> anyhow::Result<String> {
    if let Some(token) = std::env::var("SIM_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok(token.trim().to_owned());
    }
    let path = std::path::Path::new(".uidflow/sim.token");
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .with_context(|| {
            format!(
                "--confirm-codes needs the simulators' token: set SIM_TOKEN, or run where `uidflow sim` wrote {}",
                path.display()
            )
        })
}

async fn newest_code(
    http: &reqwest::Client,
    sms_url: &str,
    token: &str,
    phone: &str,
) -> Option<String> {
    let answer: Value = http
        .get(format!(
            "{sms_url}/v1/messages?phone={}",
            phone.replace('+', "%2B")
        ))
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    answer["messages"]
        .as_array()?
        .iter()
        .rev()
        .find_map(|m| uidflow::sms::texts::code_in(m["text"].as_str()?).map(str::to_owned))
}
