use std::collections::HashMap;

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

/// An API served by the test itself on its own port, with `limits`, so the test holds its
/// state (the queue sampler) and its timeouts.
async fn own_api(
    app: &TestApp,
    limits: uidflow::api::Limits,
) -> (
    String,
    std::sync::Arc<uidflow::api::sampler::QueueSampler>,
    HashMap<String, String>,
    tokio_util::sync::CancellationToken,
) {
    let (tokens, plain) = crate::common::test_tokens();
    let state = uidflow::api::ApiState::new(
        app.settings.clone(),
        app.pool.clone(),
        tokens,
        app.vault.clone(),
    )
    .with_limits(limits);
    let sampler = state.queue_sampler();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(uidflow::api::serve(listener, state, token.clone()));
    (base, sampler, plain, token)
}

/// 50 concurrent scrapes of `/metrics` and `/v1/queues` cost the broker one connection (the
/// sampler is single-flight and caches its sample), and every answer has the true depths.
#[tokio::test]
async fn concurrent_scrapes_share_one_broker_connection_and_see_true_depths() {
    let app = TestApp::prepare().await;
    for n in 0..3 {
        app.publish_application(&Person::new(300 + n).application("issue"))
            .await;
    }
    let (base, sampler, tokens, token) = own_api(&app, Default::default()).await;
    let client = uidflow::http::client(std::time::Duration::from_secs(10));
    let operator = tokens["operator"].clone();
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..50 {
        let (client, base, operator) = (client.clone(), base.clone(), operator.clone());
        calls.spawn(async move {
            let path = if n % 2 == 0 { "/metrics" } else { "/v1/queues" };
            let response = client
                .get(format!("{base}{path}"))
                .bearer_auth(operator)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
            (path, response.text().await.unwrap())
        });
    }
    let answers = calls.join_all().await;
    assert_eq!(
        sampler.connections_opened(),
        1,
        "one broker connection for 50 concurrent scrapes"
    );
    let depth = app.ready_count("uid.intake.application").await;
    assert_eq!(depth, 3);
    for (path, text) in answers {
        if path == "/metrics" {
            // The recorder is the process's: other tests of this binary sample their own
            // vhosts into the same gauge, so only /v1/queues below can show this one's depth.
            assert!(
                text.contains(r#"uidflow_queue_messages{queue="uid.intake.application"}"#),
                "{text}"
            );
        } else {
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            let intake = json["queues"]
                .as_array()
                .unwrap()
                .iter()
                .find(|q| q["name"] == "uid.intake.application")
                .unwrap()
                .clone();
            assert_eq!(intake["messages"], 3, "{json}");
        }
    }
    token.cancel();
    app.stop().await;
}

/// Each answer is counted by its route template (never the raw path) and timed; an unknown
/// path counts as `unmatched`.
#[tokio::test]
async fn http_requests_are_counted_by_route_template_and_timed() {
    let app = TestApp::spawn().await;
    let id = uuid::Uuid::new_v4();
    let missing = app
        .call(
            "GET",
            &format!("/v1/applications/{id}"),
            Some("operator"),
            None,
        )
        .await;
    assert_eq!(missing.status, 404);
    let nowhere = app.call("GET", "/no/such/thing", None, None).await;
    assert_eq!(nowhere.status, 404);
    assert_eq!(nowhere.json["error"]["code"], "not_found");
    let metrics = app.call("GET", "/metrics", None, None).await.text;
    let value_of = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from {metrics}"))
    };
    // The recorder is process-wide: other tests in this binary count too, hence "at least".
    assert!(
        value_of(
            r#"uidflow_http_requests_total{route="/v1/applications/{id}",method="GET",status="404"}"#
        ) >= 1.0
    );
    assert!(
        value_of(r#"uidflow_http_requests_total{route="unmatched",method="GET",status="404"}"#)
            >= 1.0
    );
    assert!(
        value_of(
            r#"uidflow_http_request_duration_seconds_count{route="/v1/applications/{id}",method="GET"}"#
        ) >= 1.0
    );
    assert!(!metrics.contains(&id.to_string()), "an id became a label");
    app.stop().await;
}

/// A body over the limit, a body that is not JSON where JSON is due, a wrong method: each is
/// answered in the JSON error shape the spec documents.
#[tokio::test]
async fn oversized_bodies_and_refusals_of_axum_have_the_json_error_shape() {
    let app = TestApp::spawn().await;
    let openapi = OpenApi::load();
    let client = uidflow::http::client(std::time::Duration::from_secs(10));
    let base = app.api.clone().unwrap();
    let path = format!("/v1/dead-letters/{}/replay", 1);
    let big = serde_json::json!({"reason": "x".repeat(20 * 1024)}).to_string();
    let response = client
        .post(format!("{base}{path}"))
        .bearer_auth(&app.tokens["operator"])
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "payload_too_large", "{json}");
    openapi.check_json("POST", &path, 413, &json).unwrap();

    let wrong_method = client
        .patch(format!("{base}/v1/queues"))
        .bearer_auth(&app.tokens["operator"])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    let json: serde_json::Value = wrong_method.json().await.unwrap();
    assert_eq!(json["error"]["code"], "method_not_allowed", "{json}");
    app.stop().await;
}

/// A client that sends half a request line and stalls is disconnected after the header read
/// timeout.
#[tokio::test]
async fn a_client_that_stalls_in_the_request_head_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::prepare().await;
    let timeout = std::time::Duration::from_millis(300);
    let limits = uidflow::api::Limits {
        header_read_timeout: timeout,
        ..Default::default()
    };
    let (base, _, _, token) = own_api(&app, limits).await;
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    stream.write_all(b"GET /healthz HT").await.unwrap();
    let mut buffer = Vec::new();
    // Whatever the server says before closing (a 408, or nothing), the read ends at its close.
    let closed = tokio::time::timeout(timeout * 10, stream.read_to_end(&mut buffer)).await;
    assert!(
        closed.is_ok(),
        "the connection is still open after {:?}",
        timeout * 10
    );
    let elapsed = started.elapsed();
    assert!(elapsed >= timeout, "closed too early: {elapsed:?}");
    // A complete request on a new connection is answered.
    let client = uidflow::http::client(std::time::Duration::from_secs(10));
    let answer = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    token.cancel();
    app.stop().await;
}

#[tokio::test]
async fn readyz_says_not_ready_without_the_drivers_words() {
    let openapi = OpenApi::load();
    let app = TestApp::prepare().await;
    let mut settings = app.settings.clone();
    settings.amqp_url = "amqp://nobody:wrong@127.0.0.1:5672/%2f".to_owned().into();
    let (tokens, _) = crate::common::test_tokens();
    let state = uidflow::api::ApiState::new(settings, app.pool.clone(), tokens, app.vault.clone());
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
