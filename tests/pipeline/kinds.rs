use crate::common::{Person, TestApp};

#[tokio::test]
async fn issue_ends_completed_with_one_registry_row_and_a_password_that_works() {
    let app = TestApp::spawn_pipeline("10m").await;
    let person = Person::new(1);
    let id = app.complete(&person, "issue").await;

    let statuses: Vec<String> = app
        .history(&id)
        .await
        .into_iter()
        .map(|(status, _, _)| status)
        .collect();
    let mut changes = statuses.clone();
    changes.dedup();
    assert_eq!(
        changes,
        [
            "received",
            "verifying_identity",
            "awaiting_phone_confirmation",
            "registering",
            "sending_password",
            "completed"
        ]
    );
    let (status, phone, _) = app
        .registry(&person.identification_number)
        .await
        .expect("a registry row");
    assert_eq!(
        (status.as_str(), phone.as_str()),
        ("active", person.phone.as_str())
    );
    assert!(
        app.last_password_works(&person.identification_number, &person.phone)
            .await
    );
    assert_eq!(
        app.sim().messages_to(&person.phone).len(),
        2,
        "one code SMS and one password SMS"
    );
    let history: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM uid_registry_history WHERE uid = $1 AND application_id = $2::uuid",
    )
    .bind(&person.identification_number)
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(history, 2, "issued + password_reset");
    let temporary: (bool, bool) = sqlx::query_as(
        "SELECT password_temporary, password_expires_at > now() + interval '71 hours' FROM uid_registry WHERE uid = $1",
    )
    .bind(&person.identification_number)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        temporary,
        (true, true),
        "temporary, valid for TEMP_PASSWORD_TTL (72h)"
    );
    app.stop().await;
}

#[tokio::test]
async fn block_then_unblock_keeps_the_row_and_sends_a_new_password() {
    let app = TestApp::spawn_pipeline("10m").await;
    let person = Person::new(2);
    app.complete(&person, "issue").await;

    app.complete(&person, "block").await;
    let (status, _, _) = app.registry(&person.identification_number).await.unwrap();
    assert_eq!(status, "blocked");
    let last = app.sim().messages_to(&person.phone).pop().unwrap();
    assert!(
        uidflow::sms::texts::password_in(&last.text).is_none(),
        "the block notification carries no password"
    );

    app.complete(&person, "unblock").await;
    let (status, phone, _) = app.registry(&person.identification_number).await.unwrap();
    assert_eq!(
        (status.as_str(), phone.as_str()),
        ("active", person.phone.as_str())
    );
    assert!(
        app.last_password_works(&person.identification_number, &person.phone)
            .await
    );
    let changes: Vec<String> =
        sqlx::query_scalar("SELECT change FROM uid_registry_history WHERE uid = $1 ORDER BY id")
            .bind(&person.identification_number)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        changes,
        [
            "issued",
            "password_reset",
            "blocked",
            "unblocked",
            "password_reset"
        ]
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM uid_registry")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    app.stop().await;
}

#[tokio::test]
async fn change_phone_moves_the_uid_to_the_confirmed_new_number_and_notifies_it() {
    let app = TestApp::spawn_pipeline("10m").await;
    let person = Person::new(3);
    app.complete(&person, "issue").await;
    let moved = Person {
        phone: "+375447777777".into(),
        ..Person::new(3)
    };

    app.complete(&moved, "change_phone").await;

    let (_, phone, _) = app.registry(&person.identification_number).await.unwrap();
    assert_eq!(phone, moved.phone);
    let to_new = app.sim().messages_to(&moved.phone);
    assert_eq!(
        to_new.len(),
        2,
        "the code and the notification go to the new number"
    );
    assert!(uidflow::sms::texts::code_in(&to_new[0].text).is_some());
    assert!(
        app.last_password_works(&person.identification_number, &person.phone)
            .await,
        "the password is unchanged"
    );
    app.stop().await;
}
