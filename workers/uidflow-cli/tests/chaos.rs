//! The reliability suite's short form, as CI runs it: `uidflow chaos --short --json` drives
//! three real `uidflow run` processes through kill -9, SIGTERM, a RabbitMQ and a PostgreSQL
//! restart, the SMS gateway down and the MVD answering 429, then accounts for every
//! application. This test reads its JSON report.
//!
//! It restarts real services. `deploy/dev test` (CI) points it at private ones that it
//! started for this: a three-node RabbitMQ cluster (`CHAOS_RABBITMQ_NODE=uid1@localhost,…`,
//! `CHAOS_AMQP_URL` listing the three nodes: each broker restart stops one node, first the one
//! leading the most queues) and a PostgreSQL cluster of its own (`CHAOS_PG_CLUSTER`,
//! `CHAOS_DATABASE_URL`), with `CHAOS_SPREAD=1`: the parts spread over five processes, each
//! part in two. Without those variables it restarts the machine's RabbitMQ node and
//! PostgreSQL 15/main. Whatever it stopped is started again before the command returns; the
//! test checks that both answer afterwards.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

fn run_short_form() -> (Value, Duration, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_uidflow"));
    command.args([
        "chaos",
        "--short",
        "--json",
        "--log-dir",
        env!("CARGO_TARGET_TMPDIR"),
    ]);
    if let Ok(node) = std::env::var("CHAOS_RABBITMQ_NODE") {
        command.args(["--rabbitmq-node", &node]);
    }
    if let Ok(cluster) = std::env::var("CHAOS_PG_CLUSTER") {
        command.args(["--pg-cluster", &cluster]);
    }
    if std::env::var_os("CHAOS_SPREAD").is_some() {
        command.arg("--spread");
    }
    for (from, to) in [
        ("CHAOS_AMQP_URL", "AMQP_URL"),
        ("CHAOS_DATABASE_URL", "DATABASE_URL"),
    ] {
        if let Ok(url) = std::env::var(from) {
            command.env(to, url);
        }
    }
    // Cheap argon2: the code paths are the same, the cost is not the point.
    command
        .env("ARGON2_MEMORY_KIB", "1024")
        .env("ARGON2_ITERATIONS", "1");
    let started = Instant::now();
    let output = command.output().expect("uidflow chaos runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // Kept for a look after the run (CI can keep it as an artifact).
    let kept = format!("{}/chaos-short.json", env!("CARGO_TARGET_TMPDIR"));
    let _ = std::fs::write(&kept, &output.stdout);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("uidflow chaos printed no JSON report ({error}); stderr:\n{stderr}")
    });
    assert_eq!(
        output.status.success(),
        report["ok"] == true,
        "the exit code agrees with the report"
    );
    (report, started.elapsed(), stderr)
}

/// Polls until `probe` succeeds (the service answers), failing after 60 s.
fn answers(what: &str, probe: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !probe() {
        assert!(
            Instant::now() < deadline,
            "{what} does not answer after the run"
        );
        // Polling interval of a condition wait.
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_short_form_loses_nothing_doubles_nothing_and_restores_the_services() {
    let (report, elapsed, stderr) = run_short_form();
    let failed: Vec<String> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["ok"] != true)
        .map(|c| format!("{}: {}", c["name"], c["detail"]))
        .collect();
    assert!(
        failed.is_empty(),
        "failed checks:\n{}\n\nexamples: {:#}\n\nstderr:\n{stderr}",
        failed.join("\n"),
        report["examples"]
    );
    for name in [
        "every_application_accounted",
        "outcomes_as_expected",
        "ended_once",
        "one_registry_row_per_uid",
        "last_password_works",
        "sms_within_retry_policy",
        "queues_drained",
        "outbox_drained",
        "no_unexpected_dead_letters",
        "sigterm_exits_clean",
        "faults_injected",
        "faults_had_effect",
        "services_restored",
        "audit_chains_valid",
    ] {
        assert!(
            report["checks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == name),
            "the report has check {name}"
        );
    }

    // Every kind of fault happened, and the applications flowed through them.
    let faults = &report["faults"];
    let count = |kind: &str| faults[kind]["count"].as_u64().unwrap_or(0);
    assert!(count("kill_9") >= 3, "kills: {faults}");
    for kind in [
        "sigterm",
        "rabbitmq_restart",
        "postgres_restart",
        "sms_down",
        "mvd_429",
        "lose_messages",
    ] {
        assert!(count(kind) >= 1, "{kind}: {faults}");
    }
    assert!(
        faults["lose_messages"]["events"][0]["requests"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "the broker lost messages: {faults}"
    );
    if std::env::var_os("CHAOS_SPREAD").is_some() {
        let workers = report["settings"]["workers"].as_array().expect("workers");
        assert_eq!(workers.len(), 5, "the parts spread over five processes");
    }
    assert!(faults["sms_down"]["seconds_total"].as_f64().unwrap() >= 5.0);
    let apps = &report["applications"];
    assert!(apps["submitted"].as_u64().unwrap() >= 100, "{apps}");
    assert_eq!(apps["lost"], 0);
    assert_eq!(apps["duplicated"], 0);
    for kind in ["issue", "block", "unblock", "change_phone"] {
        assert!(
            apps["by_kind"][kind].as_u64().unwrap_or(0) > 0,
            "{kind}: {apps}"
        );
    }
    assert!(apps["ended_by_status"]["completed"].as_u64().unwrap() > 0);
    assert!(report["sms"]["per_phone_max"].as_u64().unwrap() >= 2);
    // Checkpoints were signed while the faults went on (every 2 s), not only at the end.
    let audit = &report["audit"];
    assert!(audit["checkpoints"].as_u64().unwrap() > 1, "{audit}");
    assert_eq!(audit["problems"], 0, "{audit}");
    eprintln!(
        "uidflow chaos --short: {} applications, {} kills, {:.0} s; report in {}/chaos-short.json",
        apps["submitted"],
        count("kill_9"),
        elapsed.as_secs_f64(),
        env!("CARGO_TARGET_TMPDIR")
    );

    // Both services answer again, every node of a cluster (the command waited for them;
    // check it did).
    let nodes: Vec<String> = std::env::var("CHAOS_RABBITMQ_NODE")
        .map(|list| list.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|_| vec![String::new()]);
    for node in &nodes {
        answers(&format!("RabbitMQ {node}"), || {
            let mut ctl = Command::new("rabbitmqctl");
            if !node.is_empty() {
                ctl.args(["-n", node]);
            }
            ctl.args(["await_startup", "--timeout", "5"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    }
    let cluster = std::env::var("CHAOS_PG_CLUSTER").unwrap_or_else(|_| "15/main".into());
    let port = Command::new("pg_lsclusters")
        .arg("--no-header")
        .output()
        .ok()
        .and_then(|o| {
            let (version, name) = cluster.split_once('/')?;
            String::from_utf8_lossy(&o.stdout).lines().find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                (f.len() > 2 && f[0] == version && f[1] == name).then(|| f[2].to_owned())
            })
        })
        .expect("the cluster is listed");
    answers("PostgreSQL", || {
        Command::new("pg_isready")
            .args(["-h", "127.0.0.1", "-p", &port])
            .output()
            .is_ok_and(|o| o.status.success())
    });
}
