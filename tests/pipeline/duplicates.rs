use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use uidflow::messages::{Purpose, WorkItem};

use crate::common::{Person, TestApp, wait_until};

/// Every message type delivered again after the application completed changes nothing: no
/// second SMS, no second registry change, no status change.
#[tokio::test]
async fn duplicate_deliveries_of_every_message_type_change_nothing() {
    let mut app = TestApp::spawn_pipeline("10m").await;
    let person = Person::new(50);
    let application = person.application("issue");
    let id = application["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&application).await;
    app.confirm_phone(&id, &person.phone).await;
    app.wait_for_status(&id, "completed").await;
    let sms_before = app.sim().sms_requests();
    let mvd_before = app.sim().mvd_requests();
    let history_before = app.history(&id).await.len();
    let registry_before: i64 = sqlx::query_scalar("SELECT count(*) FROM uid_registry_history")
        .fetch_one(&app.pool)
        .await
        .unwrap();

    // Every step's work item again, as a redelivery or a replay would bring it.
    for step in uidflow::topology::STEPS {
        let item = WorkItem {
            purpose: Purpose::Run,
            ..WorkItem::first(id.parse().unwrap(), step)
        };
        app.channel
            .basic_publish(
                "uid.work".into(),
                step.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &serde_json::to_vec(&item).unwrap(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // The application again (identical), and a code again.
    app.publish_application(&application).await;
    let code = app.last_code(&person.phone);
    app.publish_code(&id, &code).await;

    // The confirmation is answered in the history; the work items leave no trace at all.
    wait_until("the repeated code to be noted", || async {
        let history = app.history(&id).await;
        (history.len() == history_before + 1).then_some(())
    })
    .await;
    for step in uidflow::topology::STEPS {
        let queue = uidflow::topology::step_queue(step);
        wait_until(&format!("{queue} to be drained"), || async {
            (app.ready_count(&queue).await == 0).then_some(())
        })
        .await;
    }
    // Stopping waits for work in flight, so nothing can still be running below.
    app.shutdown_system().await;
    assert_eq!(app.status_of(&id).await.as_deref(), Some("completed"));
    assert_eq!(app.history(&id).await.len(), history_before + 1);
    assert_eq!(app.sim().sms_requests(), sms_before, "no second SMS");
    assert_eq!(app.sim().mvd_requests(), mvd_before, "no second MVD call");
    let registry_after: i64 = sqlx::query_scalar("SELECT count(*) FROM uid_registry_history")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(registry_after, registry_before, "no second registry change");
    assert!(
        app.last_password_works(&person.identification_number, &person.phone)
            .await
    );
    app.stop().await;
}
