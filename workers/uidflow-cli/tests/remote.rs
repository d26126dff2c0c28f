//! The operator's and the clerk's commands of the real binary against a running uidflow:
//! `uidflow apps list` (filters, `--cursor` paging, masking, a clerk's scope) and `uidflow
//! queues`, as tables and as `--json`; and `uidflow submit --follow` with its output piped: plain
//! lines, no escape code, no carriage return.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::process::{Output, Stdio};

use common::{Person, TestApp, wait_until};
use serde_json::Value;

/// Runs `uidflow args…` against `app` with stdout and stderr piped; its output.
async fn uidflow(app: &TestApp, dir: &std::path::Path, args: &[&str]) -> Output {
    uidflow_with(app, dir, args, &[]).await
}

/// [`uidflow`] with more environment variables.
async fn uidflow_with(
    app: &TestApp,
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_uidflow"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "AMQP_URL",
            format!("amqp://guest:guest@127.0.0.1:5672/{}", app.vhost),
        )
        .env("DATABASE_URL", app.settings.database_url_redacted())
        .env("API_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(common::DEADLINE, run)
        .await
        .expect("the command ends within the deadline")
        .expect("uidflow runs")
}

/// Its stdout, after checking that it succeeded and that nothing it wrote (stdout or stderr)
/// holds an escape code or a carriage return: its output is piped.
fn succeeded(output: &Output) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for text in [&stdout, &stderr] {
        assert!(
            !text.contains('\u{1b}') && !text.contains('\r'),
            "piped output holds no escape code and no carriage return: {text:?}"
        );
    }
    stdout.into_owned()
}

fn json(output: &Output) -> Value {
    let stdout = succeeded(output);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("JSON on stdout ({e}): {stdout}"))
}

fn scratch_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("uidflow-remote-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_list_pages_filters_and_masks_and_queues_shows_every_queue() {
    let app = TestApp::spawn().await;
    let dir = scratch_dir();
    let api = app.api.clone().expect("the API runs");
    let operator = app.tokens["operator"].clone();
    let other_clerk = app.tokens["clerk-brest-len-oa"].clone();
    let people: Vec<Person> = (0..5).map(|n| Person::new(300 + n)).collect();
    let mut ids = HashSet::new();
    for person in &people {
        let application = person.application("block");
        ids.insert(application["application_id"].as_str().unwrap().to_owned());
        app.publish_application(&application).await;
    }
    wait_until("5 applications", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM applications")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (n == 5).then_some(())
    })
    .await;
    let as_operator = ["--api", api.as_str(), "--token", operator.as_str()];
    let list = |extra: &[&str]| {
        let mut args = vec!["apps", "list"];
        args.extend(as_operator);
        args.extend(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| {
        let (app, dir) = (&app, &dir);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            uidflow(app, dir, &args).await
        }
    };

    // Pages of two, each `next_cursor` passed back as --cursor: every application once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = list(&["--json", "--limit", "2", "--kind", "block"]);
        if let Some(cursor) = &cursor {
            args.extend(["--cursor".to_owned(), cursor.clone()]);
        }
        let page = json(&run(args).await);
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2, "{page}");
        seen.extend(
            items
                .iter()
                .map(|i| i["application_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), ids);

    // Filters: the service, a time window, a status no application has.
    let page = json(&run(list(&["--json", "--service", "minsk-sov-oa"])).await);
    assert_eq!(page["items"].as_array().unwrap().len(), 5, "{page}");
    let page = json(&run(list(&["--json", "--service", "brest-len-oa"])).await);
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");
    let page = json(&run(list(&["--json", "--from", "2999-01-01T00:00:00Z"])).await);
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");
    let page = json(&run(list(&["--json", "--to", "2999-01-01T00:00:00Z"])).await);
    assert_eq!(page["items"].as_array().unwrap().len(), 5, "{page}");
    let page = json(&run(list(&["--json", "--status", "completed"])).await);
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");
    let refused = run(list(&["--from", "yesterday"])).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("400"));

    // A clerk of another service sees none of them, even asking for their service.
    let clerk = |extra: &[&str]| {
        let mut args = vec![
            "apps",
            "list",
            "--json",
            "--api",
            &api,
            "--token",
            &other_clerk,
        ];
        args.extend(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    for args in [clerk(&[]), clerk(&["--service", "minsk-sov-oa"])] {
        let page = json(&run(args).await);
        assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");
    }

    // The table: a header, one line per application, masked, the cursor to go on.
    let table = succeeded(&run(list(&["--limit", "3"])).await);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("application") && lines[0].contains("status"));
    assert_eq!(lines.len(), 5, "a header, 3 rows and the cursor: {table}");
    assert!(lines[4].starts_with("(more: --cursor "), "{table}");
    for person in &people {
        assert!(!table.contains(&person.identification_number), "{table}");
        assert!(!table.contains(&person.phone), "{table}");
    }
    assert!(table.contains("***"), "masked numbers are shown: {table}");

    // Queues: every queue of the topology, with the intake's consumer.
    let mut queues_args = vec!["queues".to_owned(), "--json".to_owned()];
    queues_args.extend(as_operator.iter().map(|s| s.to_string()));
    let answer = json(&run(queues_args.clone()).await);
    let queues = answer["queues"].as_array().expect("queues");
    let intake = queues
        .iter()
        .find(|q| q["name"] == "uid.intake.application")
        .unwrap_or_else(|| panic!("the intake's queue is listed: {answer}"));
    assert!(intake["consumers"].as_u64() >= Some(1), "{intake}");
    assert!(queues.iter().any(|q| q["name"] == "uid.dead-letter"));
    queues_args.retain(|a| a != "--json");
    let table = succeeded(&run(queues_args).await);
    assert!(
        table.lines().next().unwrap().starts_with("queue"),
        "{table}"
    );
    assert_eq!(table.lines().count(), queues.len() + 1, "{table}");
    assert!(table.contains("uid.intake.application"));
    // A clerk may not.
    let refused = run(vec![
        "queues".into(),
        "--api".into(),
        api.clone(),
        "--token".into(),
        other_clerk.clone(),
    ])
    .await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"));

    // Log lines too are plain text when stderr is not a terminal (no colours).
    let mut logged = vec!["queues".to_owned()];
    logged.extend(as_operator.iter().map(|s| s.to_string()));
    let logged: Vec<&str> = logged.iter().map(String::as_str).collect();
    let logged = uidflow_with(&app, &dir, &logged, &[("RUST_LOG", "trace")]).await;
    succeeded(&logged);
    assert!(
        String::from_utf8_lossy(&logged.stderr).contains("TRACE"),
        "trace log lines on stderr: {logged:?}"
    );

    std::fs::remove_dir_all(dir).unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_follow_piped_prints_plain_progress_lines_and_json_on_request() {
    let app = TestApp::spawn().await;
    let dir = scratch_dir();
    // Without consent: rejected by the intake at once, so following ends quickly.
    let write = |n: u32| {
        let mut application = Person::new(400 + n).application("block");
        application["consent_to_verification"] = false.into();
        let path = dir.join(format!("{n}.json"));
        std::fs::write(&path, application.to_string()).unwrap();
        (
            path.display().to_string(),
            application["application_id"].as_str().unwrap().to_owned(),
        )
    };
    let (first, first_id) = write(1);
    let followed = uidflow(
        &app,
        &dir,
        &["submit", "--follow", "--timeout", "30s", &first],
    )
    .await;
    let stdout = succeeded(&followed);
    let stderr = String::from_utf8_lossy(&followed.stderr);
    assert!(
        stderr.contains("1/1 ended"),
        "a plain progress line: {stderr}"
    );
    assert!(
        stdout.contains(&first_id) && stdout.contains("rejected"),
        "{stdout}"
    );

    let (second, second_id) = write(2);
    let answer = json(
        &uidflow(
            &app,
            &dir,
            &["submit", "--follow", "--json", "--timeout", "30s", &second],
        )
        .await,
    );
    assert_eq!(answer["confirmed"], 1, "{answer}");
    assert_eq!(answer["published"][0]["message_id"], second_id.as_str());
    assert_eq!(answer["all_ended"], true, "{answer}");
    assert_eq!(answer["applications"][0]["status"], "rejected", "{answer}");

    std::fs::remove_dir_all(dir).unwrap();
    app.stop().await;
}

#[tokio::test]
async fn tokens_list_json_names_each_token_without_a_secret() {
    let dir = scratch_dir();
    let file = dir.join("tokens.toml");
    std::fs::write(&file, "").unwrap();
    let tokens = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_uidflow"))
            .arg("tokens")
            .args(args)
            .current_dir(&dir)
            .env_clear()
            .env("API_TOKENS_FILE", &file)
            .output()
            .unwrap()
    };
    let added = tokens(&["add", "--role", "clerk", "--service", "minsk-sov-oa"]);
    assert!(added.status.success(), "{added:?}");
    let secret = String::from_utf8(added.stdout).unwrap().trim().to_owned();
    let listed = tokens(&["list", "--json"]);
    let text = String::from_utf8(listed.stdout).unwrap();
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["role"], "clerk");
    assert_eq!(list[0]["issuing_service"], "minsk-sov-oa");
    assert!(!text.contains(&secret));
    std::fs::remove_dir_all(dir).unwrap();
}
