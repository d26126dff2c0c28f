//! One trace per application across processes: the `traceparent` an intake system sends is
//! carried by every message uidflow publishes for the application and by its MVD call; without
//! one, the trace id is the application id.

use std::collections::BTreeSet;

use lapin::message::Delivery;
use serde_json::{Value, json};
use uidflow::trace::TraceContext;

use crate::common::{Person, TestApp, header};

const STATUSES: [&str; 6] = [
    "received",
    "verifying_identity",
    "awaiting_phone_confirmation",
    "registering",
    "sending_password",
    "completed",
];

/// The status of each event and the trace id of its `traceparent` (which must be valid).
fn statuses_and_traces(events: &[Delivery], id: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut statuses = BTreeSet::new();
    let mut traces = BTreeSet::new();
    for event in events {
        let body: Value = serde_json::from_slice(&event.data).unwrap();
        assert_eq!(body["application_id"], id);
        statuses.insert(body["status"].as_str().unwrap().to_owned());
        let traceparent = header(event, "traceparent").expect("every event has a traceparent");
        let context = TraceContext::parse(traceparent.as_str().unwrap())
            .unwrap_or_else(|| panic!("a valid traceparent: {traceparent}"));
        traces.insert(context.trace_id_hex());
    }
    (statuses, traces)
}

#[tokio::test]
async fn the_callers_trace_follows_the_application_through_events_and_the_mvd_call() {
    let app = TestApp::spawn_pipeline("10m").await;
    let events = app.observe("uid.events", "application.*").await;
    let person = Person::new(4701);
    let application = person.application("issue");
    let id = application["application_id"].as_str().unwrap().to_owned();
    // A trace of the intake system's own, unrelated to the application id.
    let caller = TraceContext::random();
    let trace_id = caller.trace_id_hex();
    app.publish_with_headers(
        "application",
        &serde_json::to_vec(&application).unwrap(),
        Some(&id),
        &json!({"traceparent": caller.to_header()}),
    )
    .await;
    app.wait_for_status(&id, "awaiting_phone_confirmation")
        .await;
    // The clerk's confirmation comes from the same system, within the same trace.
    let confirmation = json!({"application_id": id, "code": app.last_code(&person.phone)});
    app.publish_with_headers(
        "phone-confirmation",
        &serde_json::to_vec(&confirmation).unwrap(),
        Some(&id),
        &json!({"traceparent": caller.child().to_header()}),
    )
    .await;
    app.wait_for_status(&id, "completed").await;

    let (statuses, traces) = statuses_and_traces(&app.take(&events, STATUSES.len()).await, &id);
    assert_eq!(statuses, STATUSES.map(str::to_owned).into());
    assert_eq!(traces, BTreeSet::from([trace_id.clone()]));

    let mvd = app.sim().mvd_traceparents();
    assert_eq!(mvd.len(), 1, "one MVD call, with a traceparent: {mvd:?}");
    let sent = TraceContext::parse(&mvd[0]).expect("a valid traceparent to the MVD");
    assert_eq!(sent.trace_id_hex(), trace_id);
    assert_ne!(sent.span_id, caller.span_id, "the call is a child span");
    app.stop().await;
}

#[tokio::test]
async fn without_a_traceparent_the_trace_is_the_application_id() {
    let app = TestApp::spawn_pipeline("10m").await;
    let events = app.observe("uid.events", "application.*").await;
    let person = Person::new(4702);
    let id = app.complete(&person, "issue").await;
    let trace_id = uuid::Uuid::parse_str(&id).unwrap().simple().to_string();

    let (statuses, traces) = statuses_and_traces(&app.take(&events, STATUSES.len()).await, &id);
    assert_eq!(statuses, STATUSES.map(str::to_owned).into());
    assert_eq!(traces, BTreeSet::from([trace_id.clone()]));
    let mvd = app.sim().mvd_traceparents();
    assert_eq!(mvd.len(), 1, "{mvd:?}");
    assert_eq!(
        TraceContext::parse(&mvd[0]).unwrap().trace_id_hex(),
        trace_id
    );
    app.stop().await;
}
