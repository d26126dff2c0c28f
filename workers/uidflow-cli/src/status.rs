//! `uidflow status`: what a clerk sees of an application, read from the database, masked.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use uidflow::applications::{ApplicationView, load_view};
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
    if json {
        let out = if ids.len() == 1 && views.len() == 1 {
            serde_json::to_string_pretty(&views[0])?
        } else {
            serde_json::to_string_pretty(&views)?
        };
        println!("{out}");
    } else {
        for view in &views {
            print_view(view);
        }
    }
    pool.close().await;
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_view(full: &ApplicationView) {
    let view = &full.summary;
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("application {}", view.application_id);
    println!("  kind        {}", dash(&view.kind));
    println!("  status      {}", view.status);
    println!("  service     {}", dash(&view.issuing_service));
    println!(
        "  applicant   {}  phone {}",
        dash(&view.identification_number),
        dash(&view.phone)
    );
    if let Some(reason) = &view.reason {
        let code = reason["code"].as_str().unwrap_or("?");
        let detail = reason["detail"].as_str().unwrap_or("");
        println!("  reason      {code}: {detail}");
        for error in reason["errors"].as_array().into_iter().flatten() {
            println!(
                "                - {}: {}",
                error["field"].as_str().unwrap_or("?"),
                error["message"].as_str().unwrap_or("?")
            );
        }
    }
    println!("  history");
    for entry in &full.history {
        println!(
            "    {}  {:<28} {:<16} {}",
            entry.at.format("%Y-%m-%d %H:%M:%S%.3f"),
            entry.status,
            entry.step,
            entry.detail.as_deref().unwrap_or("")
        );
    }
}
