use std::sync::atomic::Ordering;

use serde_json::Value;
use uidflow::messages::WorkItem;

use crate::common::{TestApp, example_json, wait_until};

#[tokio::test]
async fn valid_application_is_received_with_history_event_and_hand_off() {
    let app = TestApp::spawn().await;
    let events = app.observe("uid.events", "application.#").await;
    let application = example_json("valid-issue-russian-names.json");
    let id = application["application_id"].as_str().unwrap().to_owned();

    app.publish_application(&application).await;

    // Received and handed over to the first step in one commit.
    assert_eq!(app.wait_for_application(&id).await, "verifying_identity");
    let history = sqlx::query_as::<_, (String, String, Option<String>)>(
        "SELECT status, step, detail FROM application_history WHERE application_id = $1::uuid ORDER BY id",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        history,
        vec![
            ("received".into(), "intake".into(), None),
            ("verifying_identity".into(), "verify-identity".into(), None)
        ]
    );

    let mut taken = app.take(&events, 2).await;
    let handed_over = taken.remove(1);
    let event = taken.remove(0);
    assert_eq!(
        handed_over.routing_key.as_str(),
        "application.verifying_identity",
        "an event per status change, in order"
    );
    assert_eq!(event.routing_key.as_str(), "application.received");
    let body: Value = serde_json::from_slice(&event.data).unwrap();
    let schema: Value =
        serde_json::from_str(include_str!("../../schemas/status-event.v1.json")).unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    assert!(
        validator.is_valid(&body),
        "event matches status-event.v1.json: {body}"
    );
    assert_eq!(body["application_id"], id.as_str());
    assert_eq!(body["status"], "received");
    assert_eq!(body["kind"], "issue");
    assert_eq!(body["previous_status"], Value::Null);

    let hand_off = app.take("uid.step.verify-identity", 1).await.remove(0);
    let item: WorkItem = serde_json::from_slice(&hand_off.data).unwrap();
    assert_eq!(item.application_id.to_string(), id);
    assert_eq!(item.step, "verify-identity");
    assert_eq!(
        hand_off.properties.delivery_mode(),
        &Some(2),
        "the hand-off is persistent"
    );
    let text = String::from_utf8_lossy(&hand_off.data);
    let number = application["applicant"]["identification_number"]
        .as_str()
        .unwrap();
    assert!(
        !text.contains(number),
        "no personal data on internal queues"
    );

    let stored: Value = app.payload(&id).await.expect("a payload");
    let expected = uidflow::domain::Phone::parse(application["phone"].as_str().unwrap()).unwrap();
    assert_eq!(
        stored["phone"],
        expected.as_str(),
        "the phone is stored normalised"
    );
    app.stop().await;
}

#[tokio::test]
async fn crash_between_commit_and_ack_does_not_duplicate_anything() {
    let options = uidflow::system::RunOptions::default();
    options.crash_intake_after_commit.store(1, Ordering::SeqCst);
    let app = TestApp::spawn_with(options).await;
    let application = example_json("valid-change-phone.json");
    let id = application["application_id"].as_str().unwrap().to_owned();

    app.publish_application(&application).await;

    // The first delivery commits, then the connection is dropped without an ack; RabbitMQ
    // redelivers it to the reconnected consumer, which must find it already recorded.
    let stats = std::sync::Arc::clone(&app.system.as_ref().unwrap().intake_stats);
    wait_until("the redelivery to be handled", || async {
        (stats.duplicates.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    assert_eq!(stats.received.load(Ordering::SeqCst), 1);
    app.wait_for_outbox_drained().await;
    assert_eq!(
        app.count(
            "SELECT count(*) FROM applications WHERE application_id = $1::uuid",
            &id
        )
        .await,
        1
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM application_history WHERE application_id = $1::uuid",
            &id
        )
        .await,
        2,
        "received and verifying_identity, once each"
    );
    assert_eq!(
        app.ready_count("uid.step.verify-identity").await,
        1,
        "exactly one hand-off"
    );
    assert_eq!(app.ready_count("uid.intake.application").await, 0);
    app.stop().await;
}
