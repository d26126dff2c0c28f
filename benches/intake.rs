//! Intake throughput: N valid applications published first (a backlog), then drained by one
//! in-process intake with the outbox relay, against real RabbitMQ and PostgreSQL on a fresh
//! vhost and database. Prints applications/s for publishing and for the intake.
//!
//! `cargo bench --bench intake -- [N] [CONCURRENCY]` (defaults 5000 and 32). The end-to-end
//! benchmark of the whole pipeline is `uidflow bench` (planned); this one isolates the intake.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::Value;
use uidflow::system::{self, RunOptions};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let concurrency: u16 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(32);
    let app = common::TestApp::prepare().await;
    let template = common::example_json("valid-issue-belarusian.json");

    let started = Instant::now();
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            let mut application: Value = template.clone();
            application["application_id"] = Value::from(uuid::Uuid::new_v4().to_string());
            serde_json::to_vec(&application).expect("serialises")
        })
        .collect();
    let mut confirms = Vec::with_capacity(n);
    for body in &bodies {
        let confirm = app
            .channel
            .basic_publish(
                "uid.intake".into(),
                "application".into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    for confirm in confirms {
        confirm.await.expect("confirmed");
    }
    let published = started.elapsed();
    eprintln!(
        "published {n} applications with confirms in {published:.2?} ({:.0}/s)",
        n as f64 / published.as_secs_f64()
    );

    let options = RunOptions {
        concurrency,
        audit_key: Some(app.audit_key.clone()),
        ..RunOptions::default()
    };
    let started = Instant::now();
    let running = system::start(&app.settings, &app.pool, &options).expect("starts");
    let stats = std::sync::Arc::clone(&running.intake_stats);
    let mut last_report = Instant::now();
    while (stats.total() as usize) < n {
        if last_report.elapsed().as_secs() >= 2 {
            eprintln!("  … {} / {n}", stats.total());
            last_report = Instant::now();
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let intake = started.elapsed();
    app.wait_for_outbox_drained().await;
    let with_outbox = started.elapsed();
    assert_eq!(
        stats.received.load(Ordering::SeqCst) as usize,
        n,
        "every application received"
    );
    println!(
        "intake: {n} applications, concurrency {concurrency}: {:.0} applications/s committed ({intake:.2?}); \
         {:.0}/s including the outbox relay publishing events and hand-offs ({with_outbox:.2?})",
        n as f64 / intake.as_secs_f64(),
        n as f64 / with_outbox.as_secs_f64()
    );
    running.shutdown().await;
    app.stop().await;
}
