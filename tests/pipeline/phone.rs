use crate::common::{Person, TestApp, wait_until};

#[tokio::test]
async fn the_third_wrong_code_rejects_and_each_wrong_one_is_in_the_history() {
    let app = TestApp::spawn_pipeline("10m").await;
    let person = Person::new(20);
    let application = person.application("issue");
    let id = application["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&application).await;
    app.wait_for_status(&id, "awaiting_phone_confirmation")
        .await;
    let right = app.last_code(&person.phone);
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 1) % 1_000_000);

    // The same wrong message three times: confirmations are never deduplicated.
    for _ in 0..3 {
        app.publish_code(&id, &wrong).await;
    }
    app.wait_for_status(&id, "rejected").await;
    assert_eq!(
        app.reason_code(&id).await.as_deref(),
        Some("phone_not_confirmed")
    );
    let notes: Vec<_> = app
        .history(&id)
        .await
        .into_iter()
        .filter_map(|(_, _, d)| d)
        .collect();
    assert!(
        notes
            .iter()
            .any(|d| d == "wrong confirmation code (1 of 3)"),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|d| d == "wrong confirmation code (2 of 3)"),
        "{notes:?}"
    );

    // The right code now is too late: answered in the history, status unchanged.
    app.publish_code(&id, &right).await;
    wait_until("the late code to be noted", || async {
        let history = app.history(&id).await;
        history
            .iter()
            .any(|(_, _, d)| {
                d.as_deref()
                    .is_some_and(|d| d.contains("while the application is rejected"))
            })
            .then_some(())
    })
    .await;
    assert_eq!(app.status_of(&id).await.as_deref(), Some("rejected"));
    assert!(app.registry(&person.identification_number).await.is_none());
    app.stop().await;
}

#[tokio::test]
async fn an_unconfirmed_code_expires_on_time_without_any_message() {
    let app = TestApp::spawn_pipeline("1s").await;
    let person = Person::new(21);
    let application = person.application("change_phone");
    let id = application["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&application).await;
    app.wait_for_status(&id, "awaiting_phone_confirmation")
        .await;
    let waiting_since = std::time::Instant::now();

    app.wait_for_status(&id, "rejected").await;
    assert!(
        waiting_since.elapsed() < std::time::Duration::from_secs(10),
        "expired close to its 1s TTL"
    );
    assert_eq!(
        app.reason_code(&id).await.as_deref(),
        Some("phone_not_confirmed")
    );
    let (_, _, detail) = app.history(&id).await.pop().unwrap();
    assert!(detail.unwrap().contains("expired"));
    app.stop().await;
}

#[tokio::test]
async fn two_applications_racing_for_one_phone_end_with_one_owner() {
    let app = TestApp::spawn_pipeline("10m").await;
    let phone = "+375251234321".to_owned();
    let first = Person {
        phone: phone.clone(),
        ..Person::new(30)
    };
    let second = Person {
        phone: phone.clone(),
        ..Person::new(31)
    };
    let a = first.application("issue");
    let b = second.application("issue");
    let (id_a, id_b) = (
        a["application_id"].as_str().unwrap().to_owned(),
        b["application_id"].as_str().unwrap().to_owned(),
    );
    app.publish_application(&a).await;
    app.publish_application(&b).await;
    app.wait_for_status(&id_a, "awaiting_phone_confirmation")
        .await;
    app.wait_for_status(&id_b, "awaiting_phone_confirmation")
        .await;
    // Both codes went to the same phone; each application gets its own.
    let codes: Vec<String> = app
        .sim()
        .messages_to(&phone)
        .iter()
        .map(|m| uidflow::sms::texts::code_in(&m.text).unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 2);
    // Which code belongs to which application is not in the SMS; try both on each.
    for code in &codes {
        app.publish_code(&id_a, code).await;
        app.publish_code(&id_b, code).await;
    }
    let ends = wait_until("both applications to end", || async {
        let a = app.status_of(&id_a).await?;
        let b = app.status_of(&id_b).await?;
        let done = |s: &str| ["completed", "rejected"].contains(&s);
        (done(&a) && done(&b)).then_some((a, b))
    })
    .await;
    let mut statuses = [ends.0.clone(), ends.1.clone()];
    statuses.sort();
    assert_eq!(
        statuses,
        ["completed".to_owned(), "rejected".to_owned()],
        "exactly one wins"
    );
    let loser = if ends.0 == "rejected" { &id_a } else { &id_b };
    assert_eq!(
        app.reason_code(loser).await.as_deref(),
        Some("phone_in_use")
    );
    let owners: i64 = sqlx::query_scalar("SELECT count(*) FROM uid_registry WHERE phone = $1")
        .bind(&phone)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(owners, 1);
    app.stop().await;
}
