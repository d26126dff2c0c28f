//! A pool that fits the server: two whole `uidflow run` processes and one process per part
//! (`--only` each of the nine), with the default `DATABASE_MAX_CONNECTIONS`, against a
//! PostgreSQL with its default `max_connections` of 100, process applications together
//! without a single connection error; and a pool that cannot fit is refused at start.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};
use uidflow::system::Part;

use common::{Person, TestApp, wait_until};

/// The environment of a `uidflow run` on the test's vhost and database.
async fn environment(app: &TestApp, dir: &Path) -> HashMap<String, String> {
    let tokens = dir.join("tokens.toml");
    std::fs::write(
        &tokens,
        "[[token]]\nrole = \"operator\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
    )
    .unwrap();
    let sim_addr = app.sim_addr.expect("the test serves the simulators");
    [
        (
            "AMQP_URL",
            format!("amqp://guest:guest@127.0.0.1:5672/{}", app.vhost),
        ),
        (
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:5432/{}", app.database),
        ),
        ("MVD_URL", uidflow::sim::Simulators::mvd_url(sim_addr)),
        ("SMS_URL", uidflow::sim::Simulators::sms_url(sim_addr)),
        ("RETRY_DELAYS", "200ms,400ms,800ms".into()),
        ("HTTP_TIMEOUT", "2s".into()),
        ("API_ADDR", "127.0.0.1:0".into()),
        ("API_TOKENS_FILE", tokens.display().to_string()),
        ("RUST_LOG", "info".into()),
        (
            common::TEST_HASH_ENV[0].0,
            common::TEST_HASH_ENV[0].1.into(),
        ),
        (
            common::TEST_HASH_ENV[1].0,
            common::TEST_HASH_ENV[1].1.into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn spawn(env: &HashMap<String, String>, args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_uidflow"))
        .arg("run")
        .args(args)
        .env_clear()
        .envs(env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(log_dir_of(env))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("uidflow starts")
}

fn log_dir_of(env: &HashMap<String, String>) -> PathBuf {
    Path::new(&env["API_TOKENS_FILE"])
        .parent()
        .unwrap()
        .to_path_buf()
}

/// What the server allows and what is open now.
async fn connections(app: &TestApp) -> (i32, i64) {
    sqlx::query_as(
        "SELECT current_setting('max_connections')::int, (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_processes_with_the_default_pool_fit_postgresql_default_max_connections() {
    let mut app = TestApp::prepare_pipeline("10m").await;
    let (max, _) = connections(&app).await;
    assert_eq!(
        max, 100,
        "this test is about PostgreSQL's default max_connections"
    );
    let dir = std::env::temp_dir().join(format!("{}-pool", app.vhost));
    std::fs::create_dir_all(&dir).unwrap();
    let mut env = environment(&app, &dir).await;
    // The processes and the test's clerk (which opens phones to find codes) share data keys.
    let data_keys = dir.join("data-keys.toml");
    let (vault, _) = uidflow::vault::Vault::create_or_open(&data_keys).expect("data keys");
    app.vault = std::sync::Arc::new(vault);
    env.insert("DATA_KEYS_FILE".into(), data_keys.display().to_string());

    let mut processes: Vec<(String, Child)> = Vec::new();
    for n in 0..2 {
        let name = format!("whole-{n}");
        let child = spawn(&env, &[], &dir.join(format!("{name}.log")));
        processes.push((name, child));
    }
    for part in Part::ALL {
        let name = part.as_str().to_owned();
        let child = spawn(&env, &["--only", &name], &dir.join(format!("{name}.log")));
        processes.push((name, child));
    }
    // Every process is up once each has said so.
    wait_until("eleven processes to be running", || async {
        processes
            .iter()
            .all(|(name, _)| {
                std::fs::read_to_string(dir.join(format!("{name}.log")))
                    .is_ok_and(|log| log.contains("uidflow running"))
            })
            .then_some(())
    })
    .await;

    let token = tokio_util::sync::CancellationToken::new();
    let clerk = common::spawn_clerk(&app, token.clone()).await;
    let people: Vec<Person> = (0..60).map(|n| Person::new(5000 + n)).collect();
    let mut ids = Vec::new();
    for (n, person) in people.iter().enumerate() {
        // Blocks of people without a UID end `rejected` (not_issued) at register.
        let kind = if n % 4 == 3 { "block" } else { "issue" };
        let application = person.application(kind);
        ids.push(application["application_id"].as_str().unwrap().to_owned());
        app.publish_application(&application).await;
    }
    let peak = std::sync::atomic::AtomicI64::new(0);
    wait_until("every application to end", || async {
        let (_, open_connections) = connections(&app).await;
        peak.fetch_max(open_connections, std::sync::atomic::Ordering::Relaxed);
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM applications WHERE status NOT IN ('completed', 'rejected', 'failed')",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM applications")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (total == ids.len() as i64 && open == 0).then_some(())
    })
    .await;
    token.cancel();
    clerk.await.unwrap();
    let peak = peak.into_inner();
    eprintln!("peak client connections on the server while the eleven ran: {peak}");

    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM applications GROUP BY status ORDER BY 1")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        by_status,
        [("completed".to_owned(), 45), ("rejected".to_owned(), 15)],
        "issues complete, blocks of people without a UID are rejected"
    );
    for (name, child) in &mut processes {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().unwrap().to_string()])
            .status();
        let status = child.wait().await.unwrap();
        assert!(
            status.success(),
            "{name} ends cleanly on SIGTERM: {status:?}"
        );
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap();
        for sign in [
            "too many clients",
            "pool timed out",
            "remaining connection slots",
        ] {
            assert!(
                !log.contains(sign),
                "{name} logged a connection error: {log}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}

#[tokio::test]
async fn a_pool_that_cannot_fit_is_refused_with_one_line() {
    let app = TestApp::prepare_pipeline("10m").await;
    let dir = std::env::temp_dir().join(format!("{}-pool", app.vhost));
    std::fs::create_dir_all(&dir).unwrap();
    let mut env = environment(&app, &dir).await;
    env.insert("DATABASE_MAX_CONNECTIONS".into(), "200".into());
    let log = dir.join("refused.log");
    let status = spawn(&env, &["--only", "intake"], &log)
        .wait()
        .await
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(
        errors[0].contains("DATABASE_MAX_CONNECTIONS=200") && errors[0].contains("max_connections"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}
