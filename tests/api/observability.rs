use crate::common::openapi::OpenApi;
use crate::common::{Person, TestApp};

/// `/metrics` is Prometheus text that counts what happened; `/v1/queues` shows every queue.
#[tokio::test]
async fn metrics_and_queues_show_what_happened() {
    let app = TestApp::spawn_pipeline("10m").await;
    let openapi = OpenApi::load();
    let person = Person::new(80);
    app.complete(&person, "issue").await;

    let metrics = app.call("GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    openapi
        .check_documented("GET", "/metrics", 200, &metrics.content_type)
        .unwrap();
    let mut samples = std::collections::HashMap::new();
    for line in metrics
        .text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line:?}"
        );
        samples.insert(series.to_owned(), value);
    }
    let at_least = |series: &str, minimum: f64| {
        let value = samples
            .get(series)
            .copied()
            .unwrap_or_else(|| panic!("{series} missing from /metrics"));
        assert!(value >= minimum, "{series} = {value}");
    };
    at_least(r#"uidflow_intake_messages_total{outcome="received"}"#, 1.0);
    at_least(r#"uidflow_status_changes_total{status="completed"}"#, 1.0);
    at_least(
        r#"uidflow_step_duration_seconds_count{step="send-sms",outcome="next"}"#,
        1.0,
    );
    at_least(
        r#"uidflow_external_call_duration_seconds_count{service="mvd",outcome="ok"}"#,
        1.0,
    );
    at_least(
        r#"uidflow_application_duration_seconds_count{kind="issue",status="completed"}"#,
        1.0,
    );
    at_least(r#"uidflow_queue_consumers{queue="uid.step.register"}"#, 1.0);

    let queues = app.call("GET", "/v1/queues", Some("operator"), None).await;
    openapi
        .check_json("GET", "/v1/queues", 200, &queues.json)
        .unwrap();
    let names: Vec<&str> = queues.json["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    for expected in [
        "uid.intake.application",
        "uid.step.verify-identity",
        "uid.dead-letter",
        "uid.parking",
    ] {
        assert!(names.contains(&expected), "{expected} listed");
    }
    let register = queues.json["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "uid.step.register")
        .unwrap();
    assert!(register["acked_total"].as_u64().unwrap() >= 1);
    assert!(register["consumers"].as_u64().unwrap() >= 1);

    let ready = app.call("GET", "/readyz", None, None).await;
    assert_eq!(ready.json["status"], "ready");
    assert_eq!(
        ready.json["simulators"],
        serde_json::json!([]),
        "the test's simulators are real URLs to this process"
    );
    openapi
        .check_json("GET", "/readyz", 200, &ready.json)
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn readyz_says_not_ready_without_the_drivers_words() {
    let openapi = OpenApi::load();
    let app = TestApp::prepare().await;
    let mut settings = app.settings.clone();
    settings.amqp_url = "amqp://nobody:wrong@127.0.0.1:5672/%2f".to_owned().into();
    let (tokens, _) = crate::common::test_tokens();
    let state = uidflow::api::ApiState::new(settings, app.pool.clone(), tokens);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(uidflow::api::serve(listener, state, stop.clone()));
    let response = uidflow::http::client(std::time::Duration::from_secs(30))
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(
        body["checks"],
        serde_json::json!({"database": "ok", "broker": "not_ready", "migrations": "ok"})
    );
    let text = body.to_string();
    for word in ["ACCESS", "refused", "nobody", "127.0.0.1"] {
        assert!(!text.contains(word), "{text}");
    }
    openapi.check_json("GET", "/readyz", 503, &body).unwrap();
    stop.cancel();
    server.await.unwrap().unwrap();
    app.stop().await;
}
