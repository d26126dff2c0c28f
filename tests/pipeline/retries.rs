use std::time::Duration;

use sqlx::Row;
use uidflow::sim::Faults;

use crate::common::{Person, TestApp, header};

#[tokio::test]
async fn transient_mvd_failures_are_retried_then_the_application_goes_on() {
    let app = TestApp::spawn_pipeline("10m").await;
    app.sim().set_mvd_faults(Faults::scripted([503, 503]));
    let person = Person::new(40);
    let id = app.complete(&person, "issue").await;

    assert_eq!(app.sim().mvd_requests(), 3, "two failures, then the answer");
    let notes: Vec<String> = app
        .history(&id)
        .await
        .into_iter()
        .filter_map(|(_, _, d)| d)
        .collect();
    assert!(
        notes.iter().any(|d| d.starts_with("attempt 1 failed")),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|d| d.starts_with("attempt 2 failed")),
        "{notes:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn transient_sms_failures_while_sending_the_password_leave_one_row_and_a_working_password() {
    let app = TestApp::spawn_pipeline("10m").await;
    let person = Person::new(41);
    let application = person.application("issue");
    let id = application["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&application).await;
    app.wait_for_status(&id, "awaiting_phone_confirmation")
        .await;
    let code = app.last_code(&person.phone);
    app.sim().set_sms_faults(Faults::scripted([503, 500, 429]));
    app.publish_code(&id, &code).await;
    app.wait_for_status(&id, "completed").await;

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM uid_registry")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    assert!(
        app.last_password_works(&person.identification_number, &person.phone)
            .await
    );
    let resets: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM uid_registry_history WHERE change = 'password_reset'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        resets, 1,
        "only the attempt that committed left a trace in the registry"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_retry_after_is_respected() {
    let app = TestApp::spawn_pipeline("10m").await;
    app.sim().set_mvd_faults(Faults {
        fail_next: vec![429],
        retry_after: Duration::from_secs(2),
        ..Faults::default()
    });
    let person = Person::new(42);
    let application = person.application("block");
    let id = application["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&application).await;
    app.wait_for_status(&id, "rejected").await; // not_issued: the MVD answered on the second try

    let times = sqlx::query(
        "SELECT min(at) FILTER (WHERE detail LIKE 'attempt 1 failed%') AS failed,
                min(at) FILTER (WHERE status = 'rejected') AS answered
         FROM application_history WHERE application_id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let failed: chrono::DateTime<chrono::Utc> = times.get("failed");
    let answered: chrono::DateTime<chrono::Utc> = times.get("answered");
    let waited = (answered - failed).to_std().unwrap();
    assert!(
        waited >= Duration::from_secs(2),
        "waited {waited:?}, Retry-After was 2s (RETRY_DELAYS starts at 200ms)"
    );
    assert_eq!(app.sim().mvd_requests(), 2);
    app.stop().await;
}

#[tokio::test]
async fn an_mvd_outage_outliving_the_retries_fails_the_application_with_an_exhausted_dead_letter() {
    let app = TestApp::spawn_pipeline("10m").await;
    app.sim().set_mvd_faults(Faults {
        outage: true,
        ..Faults::default()
    });
    let person = Person::new(43);
    let application = person.application("block");
    let id = application["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&application).await;
    app.wait_for_status(&id, "failed").await;

    assert_eq!(
        app.sim().mvd_requests(),
        4,
        "RETRY_DELAYS of 3 waits: 4 attempts"
    );
    let rows = app.wait_for_dead_letters(1).await;
    assert_eq!(rows[0].get::<String, _>("error_kind"), "exhausted");
    assert_eq!(rows[0].get::<i32, _>("attempts"), 4);
    assert_eq!(rows[0].get::<String, _>("step"), "verify-identity");
    let parked = app.take("uid.dead-letter", 1).await.remove(0);
    assert_eq!(
        header(&parked, "x-uid-attempts"),
        Some(serde_json::Value::from(4))
    );
    assert_eq!(
        header(&parked, "x-uid-error-kind"),
        Some(serde_json::Value::from("exhausted"))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_permanent_mvd_answer_is_parked_at_once_without_a_retry() {
    let app = TestApp::spawn_pipeline("10m").await;
    app.sim().set_mvd_faults(Faults::scripted([422]));
    let person = Person::new(44);
    let application = person.application("block");
    let id = application["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&application).await;
    app.wait_for_status(&id, "failed").await;

    assert_eq!(app.sim().mvd_requests(), 1, "no retry");
    let rows = app.wait_for_dead_letters(1).await;
    assert_eq!(rows[0].get::<String, _>("error_kind"), "permanent");
    assert_eq!(rows[0].get::<i32, _>("attempts"), 1);
    app.stop().await;
}
