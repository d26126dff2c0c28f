//! End-to-end throughput of the whole pipeline: N applications published first (a backlog),
//! then every part started in-process against real RabbitMQ and PostgreSQL on a fresh vhost
//! and database, with zero-latency simulators and a clerk task that types back each code from
//! the SMS simulator. Prints applications/s from start to the last end state.
//!
//! `cargo bench --bench pipeline -- [N] [issue|block] [CONCURRENCY]` (defaults 1000, issue, 32).
//! `issue` runs 3 argon2id operations per application at `ARGON2_*` (default OWASP); `block`
//! runs none (its applications end `not_issued` after verify-identity and register). The full
//! instrument with percentiles and the machine's floor is `uidflow bench` (planned).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use uidflow::system::RunOptions;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: u32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let kind = args.get(1).cloned().unwrap_or_else(|| "issue".into());
    let concurrency: u16 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(32);

    let token = tokio_util::sync::CancellationToken::new();
    let (sim, addr) = uidflow::sim::spawn_local(Default::default(), token.clone())
        .await
        .expect("simulators");
    let extra = [
        ("MVD_URL", uidflow::sim::Simulators::mvd_url(addr)),
        ("SMS_URL", uidflow::sim::Simulators::sms_url(addr)),
    ];
    let mut app = common::TestApp::prepare_with(&extra).await;
    for i in 0..n {
        app.publish_application(&common::Person::new(i).application(&kind))
            .await;
    }
    eprintln!(
        "published {n} {kind} applications; starting the pipeline (concurrency {concurrency})"
    );

    let options = RunOptions {
        concurrency,
        audit_key: Some(app.audit_key.clone()),
        ..RunOptions::default()
    };
    let started = Instant::now();
    let running = uidflow_cli::start(&app.settings, &app.pool, &options, Default::default())
        .await
        .expect("starts");
    app.system = Some(running.system);
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut last_report = Instant::now();
    loop {
        let open: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT application_id::text, status, payload->>'phone' FROM applications
             WHERE status NOT IN ('completed', 'rejected', 'failed')",
        )
        .fetch_all(&app.pool)
        .await
        .expect("query");
        let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM applications")
            .fetch_one(&app.pool)
            .await
            .expect("count");
        if open.is_empty() && recorded == i64::from(n) {
            break;
        }
        for (id, status, phone) in &open {
            let Some(phone) = phone
                .as_deref()
                .filter(|_| status == "awaiting_phone_confirmation")
            else {
                continue;
            };
            let newest = sim
                .messages_to(phone)
                .iter()
                .rev()
                .find_map(|m| uidflow::sms::texts::code_in(&m.text).map(str::to_owned));
            if let Some(code) = newest
                && typed.get(id) != Some(&code)
            {
                app.publish_code(id, &code).await;
                typed.insert(id.clone(), code);
            }
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "  … {} of {n} ended after {:.1?}",
                i64::from(n) - open.len() as i64,
                started.elapsed()
            );
            last_report = Instant::now();
        }
        // The clerk's pace.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM applications GROUP BY status ORDER BY status")
            .fetch_all(&app.pool)
            .await
            .expect("summary");
    println!(
        "pipeline: {n} {kind} applications, concurrency {concurrency}, argon2 m={} t={} p={}: {:.1} applications/s end to end ({elapsed:.2?}); {by_status:?}",
        app.settings.hash_params.memory_kib,
        app.settings.hash_params.iterations,
        app.settings.hash_params.parallelism,
        f64::from(n) / elapsed.as_secs_f64()
    );
    token.cancel();
    app.stop().await;
}
