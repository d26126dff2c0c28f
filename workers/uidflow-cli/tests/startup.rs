//! `uidflow run` starting up, as a new user would: every start-up error ends the process with
//! one line and the documented exit code (2 configuration, 1 runtime), many times over, also
//! with its output going to a pipe that is already closed; never a panic, never a hang. A
//! SIGTERM while it waits for the broker ends it promptly. And `--simulators` is the only way
//! to the built-in simulators, shown in `/readyz` and guarded by an owner-only token.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Runs of each start-up error: half read, half with the output closed at once.
const RUNS: usize = 10;
/// How long one start-up error may take to end the process (the broker and the database are
/// retried for about 5 s at start).
const DEADLINE: Duration = Duration::from_secs(30);

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("uidflow-startup-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn command(dir: &Path, env: &HashMap<&str, String>, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_uidflow"));
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("API_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// One run: its exit code and, when `read`, its output (else the pipes are closed at once).
async fn run_once(dir: &Path, env: &HashMap<&'static str, String>, read: bool) -> (i32, String) {
    let mut child = command(dir, env, &["run"]).spawn().expect("uidflow starts");
    if read {
        let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
            .await
            .expect("uidflow run ends by itself within the deadline")
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code().expect("an exit, not a signal"), text)
    } else {
        drop(child.stdout.take());
        drop(child.stderr.take());
        let status = tokio::time::timeout(DEADLINE, child.wait())
            .await
            .expect("uidflow run with closed output ends by itself within the deadline")
            .unwrap();
        (status.code().expect("an exit, not a signal"), String::new())
    }
}

/// Runs `uidflow run` RUNS times at once and checks each run's end.
async fn check(case: &str, env: HashMap<&'static str, String>, code: i32, says: &str) {
    let dir = scratch_dir();
    let started = Instant::now();
    let runs = (0..RUNS).map(|n| {
        let (dir, env) = (dir.clone(), env.clone());
        async move { run_once(&dir, &env, n % 2 == 0).await }
    });
    for (n, (exit, output)) in join_all(runs).await.into_iter().enumerate() {
        assert_eq!(exit, code, "{case}, run {n}: exit code; output: {output}");
        assert!(!output.contains("panicked"), "{case}, run {n}: {output}");
        if n % 2 == 0 {
            assert!(output.contains(says), "{case}, run {n}: {output}");
            let errors: Vec<_> = output.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(errors.len(), 1, "{case}, run {n}: one error line: {output}");
        }
    }
    eprintln!("{case}: {RUNS} runs in {:?}", started.elapsed());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Awaits every future, concurrently.
async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.expect("the run's task"));
    }
    outputs
}

fn vars(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_start_up_error_ends_the_process_cleanly_many_times_over() {
    let app = common::TestApp::prepare().await;
    let database = app.settings.database_url_redacted();
    let broker = format!("amqp://guest:guest@127.0.0.1:5672/{}", app.vhost);
    let refused_broker = "amqp://nobody:wrong@127.0.0.1:5672/%2f";
    let no_database = "postgres://postgres@127.0.0.1:1/uidflow_nowhere";

    // Configuration errors: found before anything connects (the broker and the database given
    // here would refuse, and slowly), exit 2.
    let unset = [("AMQP_URL", refused_broker), ("DATABASE_URL", no_database)];
    check(
        "MVD_URL and SMS_URL unset",
        vars(&unset),
        2,
        "error: MVD_URL and SMS_URL: not set; set MVD_URL and SMS_URL to the services, or to sim / run with --simulators",
    )
    .await;
    let tokens = std::env::temp_dir().join(format!("uidflow-bad-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&tokens, "[[token]\nrole = ").unwrap();
    let mut bad_tokens = vars(&unset);
    bad_tokens.extend(vars(&[("MVD_URL", "sim"), ("SMS_URL", "sim")]));
    bad_tokens.insert("API_TOKENS_FILE", tokens.display().to_string());
    check(
        "unparsable API_TOKENS_FILE",
        bad_tokens,
        2,
        "is not a valid token file",
    )
    .await;
    std::fs::remove_file(&tokens).unwrap();
    check(
        "bad AMQP_URL",
        vars(&[
            ("AMQP_URL", "amqp//nope"),
            ("MVD_URL", "sim"),
            ("SMS_URL", "sim"),
        ]),
        2,
        "error: AMQP_URL:",
    )
    .await;

    // Runtime errors: the connection is tried, refused, and given up; exit 1.
    check(
        "refused broker credentials",
        vars(&[
            ("AMQP_URL", refused_broker),
            ("DATABASE_URL", &database),
            ("MVD_URL", "sim"),
            ("SMS_URL", "sim"),
        ]),
        1,
        "error:",
    )
    .await;
    check(
        "unreachable database port",
        vars(&[
            ("AMQP_URL", &broker),
            ("DATABASE_URL", no_database),
            ("MVD_URL", "sim"),
            ("SMS_URL", "sim"),
        ]),
        1,
        "error:",
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_start_waiting_for_the_broker_promptly() {
    let app = common::TestApp::prepare().await;
    let database = app.settings.database_url_redacted();
    // A "broker" that accepts connections and never answers: the start waits on it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("amqp://guest:guest@{}/%2f", silent.local_addr().unwrap());
    let env = vars(&[
        ("AMQP_URL", &silent_url),
        ("DATABASE_URL", &database),
        ("MVD_URL", "sim"),
        ("SMS_URL", "sim"),
    ]);
    let dir = scratch_dir();
    for closed_output in [false, true, false, true] {
        let mut child = command(&dir, &env, &["run"]).spawn().unwrap();
        if closed_output {
            drop(child.stdout.take());
            drop(child.stderr.take());
        }
        // Held until the end of this round: the process is waiting for the broker.
        let held = tokio::time::timeout(DEADLINE, silent.accept())
            .await
            .expect("uidflow connects to the broker")
            .unwrap();
        let asked = Instant::now();
        terminate(&child);
        let status = tokio::time::timeout(Duration::from_secs(3), child.wait())
            .await
            .expect("SIGTERM ends a start waiting for the broker within 3 s")
            .unwrap();
        assert!(status.code().is_some(), "an exit, not death by signal");
        assert!(asked.elapsed() < Duration::from_secs(3));
        if !closed_output {
            let mut stderr = String::new();
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                stderr.push_str(&line);
            }
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
        drop(held);
    }
    std::fs::remove_dir_all(dir).unwrap();
    app.stop().await;
}

fn terminate(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulators_only_when_asked_for_shown_in_readyz_and_guarded_by_a_token() {
    use std::os::unix::fs::PermissionsExt;
    let app = common::TestApp::prepare().await;
    let env = vars(&[
        (
            "AMQP_URL",
            &format!("amqp://guest:guest@127.0.0.1:5672/{}", app.vhost),
        ),
        ("DATABASE_URL", &app.settings.database_url_redacted()),
        ("LOG_FORMAT", "json"),
    ]);
    let dir = scratch_dir();
    let mut child = command(&dir, &env, &["run", "--simulators"])
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut api, mut sims, mut warned) = (None, None, false);
    let mut log = String::new();
    let waited = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
            if let Some(rest) = line.split("simulators on ").nth(1) {
                sims = rest.split(':').take(3).collect::<Vec<_>>().join(":").into();
            }
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let message = event["message"].as_str().unwrap_or("");
            warned |= event["level"] == "WARN" && message.contains("SIMULATORS");
            if message == "HTTP API listening" {
                api = event["addr"].as_str().map(str::to_owned);
            }
            if api.is_some() && sims.is_some() {
                break;
            }
        }
    })
    .await;
    assert!(waited.is_ok() && api.is_some(), "uidflow started: {log}");
    assert!(warned, "a warning names the simulators: {log}");
    let sims = sims.expect("the simulators' address is printed");
    let token_file = dir.join(".uidflow/sim.token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();

    let _installs_the_tls_provider = uidflow::http::client(Duration::from_secs(5));
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let ready: serde_json::Value = http
        .get(format!("http://{}/readyz", api.unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["simulators"], serde_json::json!(["mvd", "sms"]));
    let read_back = format!("{sims}/sms/v1/messages");
    let anonymous = http.get(&read_back).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let with_token = http
        .get(&read_back)
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status().as_u16(), 200);

    terminate(&child);
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("SIGTERM stops a running uidflow")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    std::fs::remove_dir_all(dir).unwrap();
    app.stop().await;
}

#[tokio::test]
async fn tokens_add_prints_the_token_once_and_list_shows_no_secret() {
    let dir = scratch_dir();
    let file = dir.join("tokens.toml");
    let env = vars(&[("API_TOKENS_FILE", &file.display().to_string())]);
    std::fs::write(&file, "").unwrap();
    let output = |args: &[&str]| {
        let mut command = command(&dir, &env, args);
        async move { command.output().await.unwrap() }
    };
    let added = output(&[
        "tokens",
        "add",
        "--role",
        "clerk",
        "--service",
        "minsk-sov-oa",
        "--name",
        "anna",
    ])
    .await;
    assert!(added.status.success(), "{added:?}");
    let token = String::from_utf8(added.stdout).unwrap().trim().to_owned();
    assert_eq!(token.len(), 64, "one token, alone on stdout");
    let operator = output(&["tokens", "add", "--role", "operator"]).await;
    assert!(operator.status.success(), "{operator:?}");
    let refused = output(&["tokens", "add", "--role", "clerk"]).await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("needs --service"));

    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains(&token), "only the hash is kept");
    let tokens = uidflow::api::auth::Tokens::from_file(&file).unwrap();
    let anna = tokens.caller(&token).expect("the printed token is known");
    assert_eq!(anna.issuing_service.as_deref(), Some("minsk-sov-oa"));

    let listed = output(&["tokens", "list"]).await;
    assert!(listed.status.success());
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains("anna") && listed.contains("minsk-sov-oa") && listed.contains("operator")
    );
    assert_eq!(
        listed.lines().count(),
        3,
        "a header and two tokens: {listed}"
    );
    for entry in uidflow::api::auth::read_entries(&file).unwrap() {
        assert!(!listed.contains(&entry.sha256), "no hash listed");
    }
    assert!(!listed.contains(&token));
    std::fs::remove_dir_all(dir).unwrap();
}
