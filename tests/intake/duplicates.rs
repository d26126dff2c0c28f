use std::sync::atomic::Ordering;

use serde_json::Value;

use crate::common::{TestApp, example_json, header, wait_until};

#[tokio::test]
async fn identical_repeats_are_a_no_op_even_with_keys_reordered() {
    let app = TestApp::spawn().await;
    let application = example_json("valid-issue-russian-names.json");
    let id = application["application_id"].as_str().unwrap().to_owned();
    let bytes = serde_json::to_vec(&application).unwrap();
    // The same object with its keys in reverse order.
    let reordered = {
        let object = application.as_object().unwrap();
        let pairs: Vec<String> = object
            .iter()
            .rev()
            .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v))
            .collect();
        format!("{{{}}}", pairs.join(","))
    };

    app.publish("application", &bytes, Some(&id)).await;
    app.publish("application", &bytes, Some(&id)).await;
    app.publish("application", reordered.as_bytes(), Some(&id))
        .await;

    let stats = std::sync::Arc::clone(&app.system.as_ref().unwrap().intake_stats);
    wait_until("three deliveries handled", || async {
        (stats.total() == 3).then_some(())
    })
    .await;
    assert_eq!(stats.received.load(Ordering::SeqCst), 1);
    assert_eq!(stats.duplicates.load(Ordering::SeqCst), 2);
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
        "received, then handed to verify-identity"
    );
    assert_eq!(app.ready_count("uid.step.verify-identity").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM dead_letters WHERE $1 = $1", "x")
            .await,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn conflicting_repeat_is_parked_and_the_first_application_is_untouched() {
    let app = TestApp::spawn().await;
    let first = example_json("valid-issue-belarusian.json");
    let id = first["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&first).await;
    assert_eq!(app.wait_for_application(&id).await, "verifying_identity");

    let mut second = first.clone();
    second["phone"] = Value::from("+375447654321");
    let second_bytes = serde_json::to_vec(&second).unwrap();
    app.publish("application", &second_bytes, Some(&id)).await;

    let rows = app.wait_for_dead_letters(1).await;
    let row = &rows[0];
    use sqlx::Row;
    assert_eq!(row.get::<String, _>("error_kind"), "conflict");
    assert_eq!(
        row.get::<Option<String>, _>("reason_code").as_deref(),
        Some("duplicate_conflict")
    );
    assert_eq!(app.opened_body(row), second_bytes);
    assert_eq!(
        row.get::<Option<uuid::Uuid>, _>("application_id")
            .map(|u| u.to_string()),
        Some(id.clone())
    );

    let parked = app.take("uid.dead-letter", 1).await.remove(0);
    assert_eq!(parked.data, second_bytes);
    assert_eq!(
        header(&parked, "x-uid-error-kind"),
        Some(Value::from("conflict"))
    );

    assert_eq!(
        app.status_of(&id).await.as_deref(),
        Some("verifying_identity")
    );
    let phone: Value = app.payload(&id).await.expect("a payload")["phone"].clone();
    assert_eq!(
        phone, first["phone"],
        "the first application keeps its content"
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM application_history WHERE application_id = $1::uuid",
            &id
        )
        .await,
        2,
        "received, then handed to verify-identity"
    );
    app.stop().await;
}
