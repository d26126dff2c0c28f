//! The dashboard and the alert rules of `deploy/observability/` name only metrics that a
//! running uidflow exports (a renamed metric would otherwise leave a panel empty and an alert
//! silent, with nothing failing).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Value, json};

use crate::common::{Person, TestApp, wait_until};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The metric names in a PromQL expression: identifiers starting with `uidflow_`, with a
/// histogram's `_bucket`, `_sum` and `_count` suffix taken off.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let identifier = regex::Regex::new(r"\buidflow_[a-zA-Z0-9_]+").unwrap();
    for found in identifier.find_iter(expr) {
        let name = found.as_str();
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        into.insert(name.to_owned());
    }
}

/// Every `expr` string anywhere in a JSON document (Grafana targets).
fn exprs_in_json(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match value {
                    Value::String(text) if key == "expr" => into.push(text.clone()),
                    _ => exprs_in_json(value, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| exprs_in_json(item, into)),
        _ => {}
    }
}

fn read(relative: &str) -> String {
    let path = Path::new(ROOT).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The metrics the dashboard and the rules name, each with where it is named.
fn named_metrics() -> Vec<(String, &'static str)> {
    let mut named = Vec::new();

    let dashboard: Value =
        serde_json::from_str(&read("deploy/observability/grafana/uidflow.json")).unwrap();
    let mut exprs = Vec::new();
    exprs_in_json(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "the dashboard has its panels' queries");
    let mut names = BTreeSet::new();
    exprs.iter().for_each(|e| metric_names(e, &mut names));
    named.extend(names.into_iter().map(|n| (n, "the dashboard")));

    let rules: Value = serde_norway::from_str(&read("deploy/observability/rules.yml")).unwrap();
    let mut names = BTreeSet::new();
    let mut count = 0;
    for group in rules["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().expect("rules") {
            metric_names(rule["expr"].as_str().expect("an expr"), &mut names);
            count += 1;
        }
    }
    assert!(count >= 8, "the rules file has its alerts");
    named.extend(names.into_iter().map(|n| (n, "the alert rules")));
    named
}

/// Metrics that other work of this round adds and that this tree does not export yet; a
/// name here is accepted only while it is absent from `/metrics`.
fn pending_metrics() -> BTreeSet<String> {
    read("deploy/observability/pending-metrics.txt")
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exported() {
    let app = TestApp::spawn_pipeline("10m").await;
    // Samples for the histograms and the labelled counters: one issue through every step,
    // then a forged work item for it: a register item on send-sms's queue, which is refused
    // (parked `out_of_order` and counted, what `UidflowOutOfOrder` alerts on).
    let id = app.complete(&Person::new(81), "issue").await;
    let item = json!({"application_id": id, "step": "register", "attempt": 1});
    let queue = uidflow::topology::step_queue("send-sms");
    app.publish_to(
        "",
        &queue,
        &serde_json::to_vec(&item).unwrap(),
        None,
        &Value::Null,
    )
    .await;
    // An API request is counted once answered: the next scrape shows the HTTP metrics.
    assert_eq!(app.call("GET", "/healthz", None, None).await.status, 200);
    let exported = wait_until("the out-of-order item counted on /metrics", || async {
        let text = app.call("GET", "/metrics", None, None).await.text;
        (text.contains("uidflow_out_of_order_total")
            && text.contains("uidflow_dead_letters_total")
            && text.contains("uidflow_http_requests_total"))
        .then_some(text)
    })
    .await;
    // The name of every sample line (a histogram's series folded into its name).
    let mut exported_names = BTreeSet::new();
    for line in exported.lines().filter(|l| !l.starts_with('#')) {
        let series = line.split(['{', ' ']).next().unwrap_or_default();
        metric_names(series, &mut exported_names);
    }
    let exported = exported_names;

    let pending = pending_metrics();
    let mut missing = Vec::new();
    for (name, place) in named_metrics() {
        match (exported.contains(&name), pending.contains(&name)) {
            (true, false) | (false, true) => {}
            (false, false) => missing.push(format!("{name} (named in {place})")),
            (true, true) => missing.push(format!(
                "{name} is exported now: take it out of deploy/observability/pending-metrics.txt"
            )),
        }
    }
    assert!(
        missing.is_empty(),
        "named but not exported by uidflow: {missing:#?}\nexported: {exported:#?}"
    );
    app.stop().await;
}
