//! `kill -9` of the real `uidflow run` process at random moments while 200 applications are in
//! flight, then a restart: every application reaches its end state once, nothing is lost, no
//! step's side effect is doubled, and the audit trail (checkpoints every second) verifies. Real RabbitMQ and PostgreSQL; the simulators run in the
//! test process, so what was sent survives the kills.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::process::{Child, Command};
use uidflow::sim::{Faults, SimConfig};

use common::{Person, TestApp, wait_until};

/// Kills in the short form that runs in CI.
const KILLS: usize = 5;
const ISSUES: u32 = 170;
const BLOCKS: u32 = 30;

fn spawn(env: &HashMap<String, String>, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_uidflow"))
        .args(["run", "--concurrency", "16"])
        .env_clear()
        .envs(env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("uidflow starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing_and_doubles_nothing() {
    let token = tokio_util::sync::CancellationToken::new();
    let slow = Faults {
        latency: Duration::from_millis(5),
        ..Faults::default()
    };
    let (sim, addr) = uidflow::sim::spawn_local(
        SimConfig {
            mvd: slow.clone(),
            sms: slow,
        },
        token.clone(),
    )
    .await
    .expect("simulators");
    let key_dir = std::env::temp_dir().join(format!("uidflow-crash-{}", uuid::Uuid::new_v4()));
    let audit_key = uidflow::audit::key::local(&key_dir.join("keys/audit-signing.key"))
        .expect("an audit key for the run");
    // The processes and the test's clerk (which opens phones to find codes) share data keys.
    let data_keys = key_dir.join("keys/data-keys.toml");
    let (vault, _) = uidflow::vault::Vault::create_or_open(&data_keys).expect("data keys");
    let extra: Vec<(&str, String)> = vec![
        ("AUDIT_KEY_FILE", audit_key.path.display().to_string()),
        ("DATA_KEYS_FILE", data_keys.display().to_string()),
        ("AUDIT_CHECKPOINT_INTERVAL", "1s".into()),
        ("RETRY_DELAYS", "200ms,400ms,800ms,1s,2s".into()),
        ("MVD_URL", uidflow::sim::Simulators::mvd_url(addr)),
        ("SMS_URL", uidflow::sim::Simulators::sms_url(addr)),
        ("HTTP_TIMEOUT", "2s".into()),
        (
            common::TEST_HASH_ENV[0].0,
            common::TEST_HASH_ENV[0].1.into(),
        ),
        (
            common::TEST_HASH_ENV[1].0,
            common::TEST_HASH_ENV[1].1.into(),
        ),
    ];
    let mut app = TestApp::prepare_with(&extra).await;
    app.sim = Some(sim.clone());
    app.vault = std::sync::Arc::new(vault);
    let mut env: HashMap<String, String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    env.insert(
        "AMQP_URL".into(),
        format!("amqp://guest:guest@127.0.0.1:5672/{}", app.vhost),
    );
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://postgres@127.0.0.1:5432/{}", app.database),
    );
    env.insert("RUST_LOG".into(), "info".into());
    let log = std::env::temp_dir().join(format!("{}.log", app.vhost));

    let issuers: Vec<Person> = (0..ISSUES).map(|n| Person::new(1000 + n)).collect();
    let strangers: Vec<Person> = (0..BLOCKS).map(|n| Person::new(3000 + n)).collect();
    let mut ids = Vec::new();
    for (person, kind) in issuers
        .iter()
        .map(|p| (p, "issue"))
        .chain(strangers.iter().map(|p| (p, "block")))
    {
        let application = person.application(kind);
        ids.push((
            application["application_id"].as_str().unwrap().to_owned(),
            kind,
        ));
        app.publish_application(&application).await;
    }

    let clerk = common::spawn_clerk(&app, token.clone()).await;

    let mut child = spawn(&env, &log);
    for kill in 0..KILLS {
        // A random moment to die: the point of the test is not to choose it.
        let after = Duration::from_millis(rand::rng().random_range(300..1500));
        tokio::time::sleep(after).await;
        child.start_kill().expect("kill -9");
        child.wait().await.expect("reaped");
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM applications WHERE status NOT IN ('completed', 'rejected', 'failed')")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        eprintln!(
            "kill -9 #{} after {after:?}: {open} applications recorded and not ended",
            kill + 1
        );
        child = spawn(&env, &log);
    }

    let ended = |s: &str| ["completed", "rejected", "failed"].contains(&s);
    let started = Instant::now();
    // Should the wait fail, say where the open applications stand.
    let report = {
        let pool = app.pool.clone();
        tokio::spawn(async move {
            tokio::time::sleep(common::DEADLINE - Duration::from_secs(2)).await;
            let open: Vec<(String, String)> = sqlx::query_as(
                "SELECT application_id::text, status FROM applications WHERE status NOT IN ('completed', 'rejected', 'failed') LIMIT 5",
            )
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            for (id, status) in open {
                let history: Vec<(String, String, Option<String>)> = sqlx::query_as(
                    "SELECT status, step, detail FROM application_history WHERE application_id = $1::uuid ORDER BY id",
                )
                .bind(&id)
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                eprintln!("still open: {id} {status}: {history:?}");
            }
        })
    };
    wait_until("every application to end", || async {
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM applications WHERE status NOT IN ('completed', 'rejected', 'failed')")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM applications").fetch_one(&app.pool).await.unwrap();
        (total == ids.len() as i64 && open == 0).then_some(())
    })
    .await;
    report.abort();
    eprintln!(
        "all {} applications ended {:?} after the last restart",
        ids.len(),
        started.elapsed()
    );
    let work_queues: Vec<String> = [
        "uid.intake.application",
        "uid.intake.phone-confirmation",
        "uid.parking",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(
        uidflow::topology::STEPS
            .iter()
            .map(|s| uidflow::topology::step_queue(s)),
    )
    .collect();
    // Nothing left behind: duplicates that were still queued when the last application ended
    // are consumed (as no-ops) by the running process.
    for queue in &work_queues {
        wait_until(&format!("{queue} to be empty"), || async {
            (app.ready_count(queue).await == 0).then_some(())
        })
        .await;
    }
    token.cancel();
    clerk.await.unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status();
    let status = child.wait().await.expect("uidflow exits");
    assert!(status.success(), "SIGTERM ends uidflow cleanly: {status:?}");

    let statuses: HashMap<String, (String, Option<String>)> =
        sqlx::query_as::<_, (String, String, Option<String>)>(
            "SELECT application_id::text, status, reason->>'code' FROM applications",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, status, reason)| (id, (status, reason)))
        .collect();
    let mut completed = 0;
    for (id, kind) in &ids {
        let (status, reason) = &statuses[id];
        assert!(ended(status), "{id} ended");
        let transitions_to_end: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT status, lag(status) OVER (ORDER BY id) AS before FROM application_history WHERE application_id = $1::uuid) h
             WHERE status IN ('completed', 'rejected', 'failed') AND before IS DISTINCT FROM status",
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(transitions_to_end, 1, "{id} ended exactly once");
        match *kind {
            "block" => assert_eq!(
                (status.as_str(), reason.as_deref()),
                ("rejected", Some("not_issued")),
                "{id}"
            ),
            _ if status == "completed" => completed += 1,
            _ => assert_eq!(
                reason.as_deref(),
                Some("phone_not_confirmed"),
                "{id}: {status}"
            ),
        }
    }
    assert!(
        completed >= ISSUES as usize * 9 / 10,
        "most issues complete: {completed} of {ISSUES}"
    );

    // No side effect doubled: one registry row and one `issued` per completed issue, and the
    // last SMS to each phone carries the password that works.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM uid_registry")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, completed as i64);
    let doubled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT application_id FROM uid_registry_history WHERE change = 'issued' GROUP BY application_id HAVING count(*) > 1) d",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(doubled, 0);
    for person in &issuers {
        if app.registry(&person.identification_number).await.is_some() {
            assert!(
                app.last_password_works(&person.identification_number, &person.phone)
                    .await,
                "the last SMS works"
            );
            let passwords = sim
                .messages_to(&person.phone)
                .iter()
                .filter(|m| uidflow::sms::texts::code_in(&m.text).is_none())
                .count();
            assert!(
                passwords <= 1 + KILLS,
                "password SMS at most once per attempt a kill interrupted: {passwords}"
            );
        }
    }
    // Nothing left behind: work queues drained, outbox empty, nothing parked.
    for queue in &work_queues {
        assert_eq!(app.ready_count(queue).await, 0, "{queue} is empty");
    }
    app.wait_for_outbox_drained().await;
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(parked, 0, "nothing was parked");
    // Every chain and every checkpoint signed between the kills verifies.
    let report = uidflow::audit::verify(&app.pool, None, &[audit_key.key.verifying_key()])
        .await
        .expect("verify runs");
    assert!(report.ok(), "{:?}", report.first());
    assert!(report.checkpoints >= 1 && report.chains >= u64::from(ISSUES + BLOCKS));
    std::fs::remove_dir_all(key_dir).unwrap();
    let _ = std::fs::remove_file(&log);
    app.stop().await;
}
