use crate::common::{Person, TestApp};

async fn rejected_with(app: &TestApp, application: serde_json::Value, code: &str) -> String {
    let id = application["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&application).await;
    app.wait_for_status(&id, "rejected").await;
    assert_eq!(
        app.reason_code(&id).await.as_deref(),
        Some(code),
        "{:#?}",
        app.history(&id).await
    );
    id
}

#[tokio::test]
async fn the_mvd_answers_become_their_rejections() {
    let app = TestApp::spawn_pipeline("10m").await;
    for (index, code) in [
        (0, "identity_mismatch"),
        (1, "identity_mismatch"),
        (2, "identity_not_found"),
        (3, "document_invalid"),
        (4, "document_invalid"),
        (5, "document_invalid"),
    ] {
        let person = Person::from_test_table(index);
        let id = rejected_with(&app, person.application("issue"), code).await;
        if index == 1 {
            let fields: Vec<String> = sqlx::query_scalar(
                "SELECT e->>'field' FROM applications, jsonb_array_elements(reason->'errors') e WHERE application_id = $1::uuid",
            )
            .bind(&id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
            assert_eq!(fields, ["applicant.given_name", "applicant.date_of_birth"]);
        }
    }
    assert!(
        app.sim().sms_requests() == 0,
        "no SMS for a rejected identity"
    );
    app.stop().await;
}

#[tokio::test]
async fn registry_rules_reject_with_their_reasons() {
    let app = TestApp::spawn_pipeline("10m").await;
    let issued = Person::new(10);
    app.complete(&issued, "issue").await;

    let again = issued.application("issue");
    let id = again["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&again).await;
    app.confirm_phone(&id, &issued.phone).await;
    app.wait_for_status(&id, "rejected").await;
    assert_eq!(
        app.reason_code(&id).await.as_deref(),
        Some("already_issued")
    );

    let stranger = Person::new(11);
    rejected_with(&app, stranger.application("block"), "not_issued").await;
    rejected_with(&app, stranger.application("unblock"), "not_issued").await;
    rejected_with(&app, issued.application("unblock"), "not_blocked").await;
    app.complete(&issued, "block").await;
    rejected_with(&app, issued.application("block"), "already_blocked").await;

    // A phone that belongs to another UID is refused before any code is sent.
    let thief = Person {
        phone: issued.phone.clone(),
        ..Person::new(12)
    };
    let sms_before = app.sim().sms_requests();
    rejected_with(&app, thief.application("issue"), "phone_in_use").await;
    assert_eq!(app.sim().sms_requests(), sms_before);
    app.stop().await;
}
