use std::sync::atomic::Ordering;

use uidflow::admission::PAUSE_AT;

use crate::common::{TestApp, example_json, wait_until};

/// With the outbox behind, the intake leaves new applications in the queue (unacked, not
/// recorded) and takes them as soon as the outbox has caught up.
#[tokio::test]
async fn the_intake_waits_while_the_outbox_is_behind() {
    let app = TestApp::spawn().await;
    // Rows the relays will not take (due at 'infinity') hold the outbox at the pause mark.
    sqlx::query(
        "INSERT INTO outbox (exchange, routing_key, body, not_before)
         SELECT 'uid.events', 'application.filler', '\\x00', 'infinity' FROM generate_series(1, $1)",
    )
    .bind(PAUSE_AT)
    .execute(&app.pool)
    .await
    .unwrap();
    let stats = &app.system.as_ref().unwrap().intake_stats;
    wait_until("the intake to pause", || async {
        stats.paused.load(Ordering::Relaxed).then_some(())
    })
    .await;
    let application = example_json("valid-issue-russian-names.json");
    let id = application["application_id"].as_str().unwrap().to_owned();

    app.publish_application(&application).await;

    wait_until("the delivery to wait for the outbox", || async {
        (stats.waited_for_outbox.load(Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
    assert_eq!(
        app.status_of(&id).await,
        None,
        "nothing is recorded while the intake is paused"
    );
    assert_eq!(stats.total(), 0);

    sqlx::query("DELETE FROM outbox WHERE not_before = 'infinity'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.wait_for_application(&id).await, "verifying_identity");
    assert!(!stats.paused.load(Ordering::Relaxed));
    assert_eq!(stats.received.load(Ordering::Relaxed), 1);
    app.wait_for_outbox_drained().await;
    app.stop().await;
}
