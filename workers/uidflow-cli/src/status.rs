//! `uidflow status`: what a clerk sees of an application, masked: read from the database, or
//! with `--api` from a running API (`remote`). One printer for both.

use crate::terminal::{self, Column, Table};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;
use uidflow::applications::load_view;
use uidflow::config::Settings;
use uuid::Uuid;

/// Prints each application; exit code 1 if any is unknown.
pub async fn run(
    settings: &Settings,
    ids: &[Uuid],
    json: bool,
    wait: Option<Duration>,
    settled: bool,
) -> anyhow::Result<ExitCode> {
    let pool = uidflow::db::connect(settings, 2).await?;
    let mut missing = 0;
    let mut views = Vec::new();
    for id in ids {
        let deadline = Instant::now() + wait.unwrap_or_default();
        let view = loop {
            let mut conn = pool.acquire().await?;
            let view = load_view(&mut conn, *id).await?;
            let ready = match &view {
                Some(v) => !settled || v.summary.status != "received",
                None => false,
            };
            if ready || Instant::now() >= deadline {
                break view;
            }
            drop(conn);
            // Polling the database with a deadline: this is the condition we wait for.
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        match view {
            Some(view) => views.push(view),
            None => {
                missing += 1;
                eprintln!("error: no application {id}");
            }
        }
    }
    let views: Vec<Value> = views
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    print_all(&views, ids.len(), json)?;
    pool.close().await;
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints views as tables, or as JSON (one object for one id, else a list).
pub fn print_all(views: &[Value], asked: usize, json: bool) -> anyhow::Result<()> {
    if json {
        let out = if asked == 1 && views.len() == 1 {
            terminal::json(&views[0])
        } else {
            terminal::json(&Value::from(views.to_vec()))
        };
        println!("{out}");
    } else {
        for view in views {
            print_view(view);
        }
    }
    Ok(())
}

fn print_view(view: &Value) {
    let text = |key: &str| match &view[key] {
        Value::String(s) => terminal::escape(s).into_owned(),
        _ => "-".to_owned(),
    };
    println!("application {}", text("application_id"));
    println!("  kind        {}", text("kind"));
    println!("  status      {}", text("status"));
    println!("  service     {}", text("issuing_service"));
    println!(
        "  applicant   {}  phone {}",
        text("identification_number"),
        text("phone")
    );
    let reason = &view["reason"];
    if reason.is_object() {
        let code = terminal::escape(reason["code"].as_str().unwrap_or("?"));
        let detail = terminal::escape(reason["detail"].as_str().unwrap_or(""));
        println!("  reason      {code}: {detail}");
        for error in reason["errors"].as_array().into_iter().flatten() {
            println!(
                "                - {}: {}",
                terminal::escape(error["field"].as_str().unwrap_or("?")),
                terminal::escape(error["message"].as_str().unwrap_or("?"))
            );
        }
    }
    println!("  history");
    let mut table = Table::new(&[
        Column::fixed("at"),
        Column::text("status"),
        Column::text("step"),
        Column::text("detail"),
    ])
    .indented(4);
    for entry in view["history"].as_array().into_iter().flatten() {
        let at = entry["at"].as_str().unwrap_or("?");
        let at = chrono::DateTime::parse_from_rfc3339(at)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_else(|_| at.to_owned());
        table.row([
            at.as_str(),
            entry["status"].as_str().unwrap_or("?"),
            entry["step"].as_str().unwrap_or("?"),
            entry["detail"].as_str().unwrap_or(""),
        ]);
    }
    table.print();
}
