use std::collections::BTreeSet;

use lapin::BasicProperties;
use lapin::options::{BasicNackOptions, BasicPublishOptions};
use serde_json::Value;
use sqlx::Row;

use crate::common::{TestApp, header};

#[tokio::test]
async fn malformed_bodies_are_parked_byte_for_byte_with_the_contract_headers() {
    let app = TestApp::spawn().await;
    let mut too_big = b"{\"padding\": \"".to_vec();
    too_big.extend(std::iter::repeat_n(b'x', 64 * 1024));
    too_big.extend(b"\"}");
    let bodies: Vec<Vec<u8>> = vec![
        too_big,
        b"{\"application_id\": \"\xff\xfe\"}".to_vec(),
        b"this is not json".to_vec(),
        b"[1, 2, 3]".to_vec(),
        b"".to_vec(),
        b"{\"truncated\": ".to_vec(),
    ];
    for body in &bodies {
        app.publish("application", body, None).await;
    }

    let parked = app.take("uid.dead-letter", bodies.len()).await;
    let got: BTreeSet<Vec<u8>> = parked.iter().map(|d| d.data.clone()).collect();
    assert_eq!(
        got,
        bodies.iter().cloned().collect::<BTreeSet<_>>(),
        "every body kept byte for byte"
    );
    for delivery in &parked {
        assert_eq!(
            header(delivery, "x-uid-error-kind"),
            Some(Value::from("malformed"))
        );
        assert_eq!(header(delivery, "x-uid-step"), Some(Value::from("intake")));
        assert_eq!(header(delivery, "x-uid-attempts"), Some(Value::from(1)));
        let error = header(delivery, "x-uid-error")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap();
        assert!(error.starts_with("the body is"), "{error}");
        for name in ["x-uid-first-failed-at", "x-uid-last-failed-at"] {
            let at = header(delivery, name)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap();
            chrono::DateTime::parse_from_rfc3339(&at).expect("an RFC 3339 time");
        }
    }
    let rows = app.wait_for_dead_letters(bodies.len() as i64).await;
    let stored: BTreeSet<Vec<u8>> = rows.iter().map(|r| app.opened_body(r)).collect();
    assert_eq!(stored, bodies.iter().cloned().collect::<BTreeSet<_>>());
    let big = rows
        .iter()
        .find(|r| app.opened_body(r).len() > 64 * 1024)
        .unwrap();
    assert!(big.get::<String, _>("error").contains("limit is 65536"));
    assert_eq!(
        app.count("SELECT count(*) FROM applications WHERE $1 = $1", "x")
            .await,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn an_object_without_a_valid_id_is_parked_as_invalid_with_every_error() {
    let app = TestApp::spawn().await;
    let body = br#"{"application_id": "nope", "kind": "renew"}"#;
    app.publish("application", body, None).await;

    let rows = app.wait_for_dead_letters(1).await;
    assert_eq!(rows[0].get::<String, _>("error_kind"), "invalid");
    let error = rows[0].get::<String, _>("error");
    assert!(error.contains("application_id: must be a UUID"), "{error}");
    assert!(error.contains("kind: must be one of"), "{error}");
    assert_eq!(app.opened_body(&rows[0]), body.to_vec());
    app.stop().await;
}

#[tokio::test]
async fn a_message_over_its_delivery_limit_is_parked_by_the_keeper_as_exhausted() {
    let app = TestApp::spawn().await;
    let body = br#"{"application_id": "6a0c2d4e-1111-4c55-9a43-2f4a3b1c9d10", "step": "register", "attempt": 1}"#;
    app.channel
        .basic_publish(
            "uid.work".into(),
            "register".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    // A consumer that fails on the message every time: the broker gives up after
    // x-delivery-limit and dead-letters it to uid.parking, where the keeper parks it.
    let channel = app.connection.create_channel().await.unwrap();
    let mut returned = 0;
    let deadline = std::time::Instant::now() + crate::common::DEADLINE;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker never dead-lettered the message"
        );
        match channel
            .basic_get("uid.step.register".into(), Default::default())
            .await
            .unwrap()
        {
            Some(message) => {
                message
                    .delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                returned += 1;
            }
            None if returned > 0 => break,
            // Not yet routed: poll again.
            None => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    let rows = app.wait_for_dead_letters(1).await;
    assert_eq!(rows[0].get::<String, _>("error_kind"), "exhausted");
    assert_eq!(rows[0].get::<String, _>("step"), "register");
    assert_eq!(app.opened_body(&rows[0]), body.to_vec());
    assert!(
        returned > uidflow::topology::DELIVERY_LIMIT as usize,
        "returned {returned} times"
    );
    let parked = app.take("uid.dead-letter", 1).await.remove(0);
    assert_eq!(parked.data, body.to_vec());
    assert_eq!(
        header(&parked, "x-uid-error-kind"),
        Some(Value::from("exhausted"))
    );
    app.stop().await;
}

/// The keeper may die after its commit and before its ack; the broker then delivers the same
/// dead-lettered message again. It is parked once.
#[tokio::test]
async fn the_keeper_parks_a_redelivered_dead_lettering_once() {
    let mut app = TestApp::spawn().await;
    let body = br#"{"application_id": "6a0c2d4e-2222-4c55-9a43-2f4a3b1c9d10", "step": "register", "attempt": 1}"#;
    let headers = serde_json::json!({
        "x-first-death-queue": "uid.step.register",
        "x-first-death-reason": "delivery_limit",
        "x-death": [{"queue": "uid.step.register", "reason": "delivery_limit", "count": 1, "time": 1_790_000_000}]
    });
    for _ in 0..2 {
        app.channel
            .basic_publish(
                "uid.parking".into(),
                "".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(uidflow::amqp::json_to_headers(&headers)),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let parked = app.take("uid.dead-letter", 1).await;
    assert_eq!(parked[0].data, body.to_vec());
    // Both deliveries were handled (the queue is empty) and only one row exists.
    crate::common::wait_until("uid.parking to drain", || async {
        (app.ready_count("uid.parking").await == 0).then_some(())
    })
    .await;
    app.shutdown_system().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    app.stop().await;
}
