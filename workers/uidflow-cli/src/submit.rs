//! `uidflow submit`: publishes files to `uid.intake` as an intake system would — persistent,
//! `message_id` = `application_id`, publisher confirms — and reports each file.

use crate::terminal;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;
use uidflow::amqp::{self, Outgoing, PublishResult, Publisher};
use uidflow::config::Settings;
use uidflow::topology::{APPLICATION_ROUTING_KEY, INTAKE_EXCHANGE, PHONE_CONFIRMATION_ROUTING_KEY};

/// One thing to publish.
struct Input {
    label: String,
    body: Vec<u8>,
}

fn collect(paths: &[PathBuf]) -> anyhow::Result<Vec<Input>> {
    let mut inputs = Vec::new();
    for path in paths {
        if path == Path::new("-") {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .context("reading standard input")?;
            inputs.push(Input {
                label: "-".into(),
                body,
            });
        } else if path.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("reading directory {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
                .collect();
            files.sort();
            for file in files {
                let body =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                inputs.push(Input {
                    label: file.display().to_string(),
                    body,
                });
            }
        } else {
            let body =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            inputs.push(Input {
                label: path.display().to_string(),
                body,
            });
        }
    }
    Ok(inputs)
}

/// The routing key for a body: phone confirmation if it looks like one, else application.
fn routing_key_for(body: &[u8]) -> &'static str {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) if o.contains_key("code") && !o.contains_key("kind") => {
            PHONE_CONFIRMATION_ROUTING_KEY
        }
        _ => APPLICATION_ROUTING_KEY,
    }
}

fn application_id(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("application_id")?
        .as_str()
        .map(str::to_owned)
}

/// What to do after publishing, and how to print.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    /// Watch the applications until they end (or `timeout`).
    pub follow: bool,
    /// Type back codes read from the SMS simulator.
    pub confirm_codes: bool,
    /// How long to follow.
    pub timeout: std::time::Duration,
    /// Print one JSON object on stdout instead of lines and a table.
    pub json: bool,
}

/// Publishes every input; exit code 1 if any was not confirmed (or, following, did not end).
pub async fn run(
    settings: &Settings,
    paths: &[PathBuf],
    routing_key: Option<&str>,
    follow: Follow,
) -> anyhow::Result<ExitCode> {
    let inputs = collect(paths)?;
    let connection = amqp::connect(settings, "submit").await?;
    let publisher = Publisher::open(&connection)
        .await
        .context("opening a confirm channel")?;
    let messages: Vec<Outgoing> = inputs
        .iter()
        .map(|input| Outgoing {
            exchange: INTAKE_EXCHANGE.into(),
            routing_key: routing_key
                .unwrap_or_else(|| routing_key_for(&input.body))
                .into(),
            message_id: application_id(&input.body),
            content_type: Some("application/json".into()),
            headers: Value::Object(Default::default()),
            body: input.body.clone(),
            mandatory: true,
            expiration_ms: None,
        })
        .collect();
    let results = publisher.publish_all(&messages).await.context(
        "publishing to uid.intake (has the topology been declared? run `uidflow migrate`)",
    )?;
    let mut failed = 0;
    let mut published = Vec::new();
    for ((input, message), result) in inputs.iter().zip(&messages).zip(results) {
        let what = match &message.message_id {
            Some(id) => format!("{} {}", message.routing_key, terminal::escape(id)),
            None => format!("{} (no application_id)", message.routing_key),
        };
        let refused = match result {
            PublishResult::Confirmed => None,
            PublishResult::Refused(why) => {
                failed += 1;
                Some(why.to_string())
            }
        };
        if !follow.json {
            match &refused {
                None => println!(
                    "published  {}  {what}  confirmed",
                    terminal::escape(&input.label)
                ),
                Some(why) => println!(
                    "FAILED     {}  {what}  {}",
                    terminal::escape(&input.label),
                    terminal::escape(why)
                ),
            }
        }
        published.push(serde_json::json!({
            "file": input.label,
            "routing_key": message.routing_key,
            "message_id": message.message_id,
            "confirmed": refused.is_none(),
            "error": refused,
        }));
    }
    if !follow.json {
        println!("{} published, {failed} failed", inputs.len() - failed);
    }
    let mut ended = true;
    let mut followed = None;
    if follow.follow {
        let ids: Vec<uuid::Uuid> = messages
            .iter()
            .filter(|m| m.routing_key == APPLICATION_ROUTING_KEY)
            .filter_map(|m| {
                m.message_id
                    .as_deref()
                    .and_then(|id| uuid::Uuid::parse_str(id).ok())
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        // Each application's phone, normalised as uidflow stores it, to find its code in the
        // SMS simulator.
        let phones: std::collections::HashMap<uuid::Uuid, String> = messages
            .iter()
            .filter(|m| m.routing_key == APPLICATION_ROUTING_KEY)
            .filter_map(|m| {
                let id = uuid::Uuid::parse_str(m.message_id.as_deref()?).ok()?;
                let body: serde_json::Value = serde_json::from_slice(&m.body).ok()?;
                let phone = uidflow::domain::Phone::parse(body.get("phone")?.as_str()?).ok()?;
                Some((id, phone.as_str().to_owned()))
            })
            .collect();
        let outcome = crate::follow::follow(
            settings,
            &publisher,
            &ids,
            &phones,
            follow.confirm_codes,
            follow.timeout,
            follow.json,
        )
        .await?;
        ended = outcome.ended;
        followed = Some(outcome.rows);
    }
    if follow.json {
        let mut answer = serde_json::json!({
            "published": published,
            "confirmed": inputs.len() - failed,
            "failed": failed,
        });
        if let Some(rows) = followed {
            answer["applications"] = Value::from(rows);
            answer["all_ended"] = Value::from(ended);
        }
        println!("{}", terminal::json(&answer));
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(if failed == 0 && ended {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
