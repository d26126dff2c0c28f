//! Every wait is exact: a retry never waits behind messages with a longer TTL (RabbitMQ
//! expires only at the head of a queue), however many code-expiry timers are pending, and a
//! `Retry-After` longer than a retry delay, or between two, is chained through the wait queues.

use std::time::Duration;

use sqlx::Row;
use uidflow::sim::Faults;
use uidflow::system::RunOptions;

use crate::common::{Person, TestApp, wait_until};

/// Seconds from the note of attempt 1's failure to the first history row of `status`.
async fn waited(app: &TestApp, id: &str, status: &str) -> Duration {
    let times = sqlx::query(
        "SELECT min(at) FILTER (WHERE detail LIKE 'attempt 1 failed%') AS failed,
                min(at) FILTER (WHERE status = $2) AS reached
         FROM application_history WHERE application_id = $1::uuid",
    )
    .bind(id)
    .bind(status)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let failed: chrono::DateTime<chrono::Utc> = times.get("failed");
    let reached: chrono::DateTime<chrono::Utc> = times.get("reached");
    (reached - failed).to_std().unwrap()
}

/// Publishes `count` issue applications and waits until each waits for its code: `count`
/// expiry timers pending in the code-timer queue.
async fn pending_code_timers(app: &TestApp, first: u32, count: u32) {
    for n in first..first + count {
        app.publish_application(&Person::new(n).application("issue"))
            .await;
    }
    wait_until(
        &format!("{count} applications to wait for their code"),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM applications WHERE status = 'awaiting_phone_confirmation'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            (waiting == i64::from(count)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_retry_after_behind_hundreds_of_code_timers_runs_on_time() {
    // RETRY_DELAYS 200ms,400ms,800ms; codes live 10 minutes.
    let app = TestApp::spawn_pipeline("10m").await;
    pending_code_timers(&app, 2000, 200).await;
    let timers =
        uidflow::topology::timer_queue(uidflow::route::CONFIRM_PHONE, Duration::from_secs(600));
    wait_until("200 timers in their queue", || async {
        (app.queue_messages(&timers) == 200).then_some(())
    })
    .await;

    // The code SMS of one more application is refused with a Retry-After longer than the
    // longest retry delay.
    app.sim().set_sms_faults(Faults {
        fail_next: vec![429],
        retry_after: Duration::from_secs(2),
        ..Faults::default()
    });
    let person = Person::new(2300);
    let application = person.application("issue");
    let id = application["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&application).await;
    app.wait_for_status(&id, "awaiting_phone_confirmation")
        .await;
    let waited = waited(&app, &id, "awaiting_phone_confirmation").await;
    eprintln!(
        "wait accuracy: Retry-After 2s behind 200 code timers (delays 200ms,400ms,800ms): the retry ran {waited:?} after the failure"
    );
    assert!(
        waited >= Duration::from_secs(2) && waited <= Duration::from_secs(3),
        "the retry ran {waited:?} after the failure; Retry-After was 2s"
    );
    // The timers still wait, with the new application's among them.
    wait_until("201 timers in their queue", || async {
        (app.queue_messages(&timers) == 201).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_retry_after_between_two_retry_delays_runs_on_time() {
    let overrides = [("RETRY_DELAYS", "1s,5s,30s")];
    let app = TestApp::spawn_pipeline_env("10m", RunOptions::default(), &overrides).await;
    pending_code_timers(&app, 2400, 50).await;
    for (n, after) in [(2500, 3), (2501, 7)] {
        app.sim().set_mvd_faults(Faults {
            fail_next: vec![429],
            retry_after: Duration::from_secs(after),
            ..Faults::default()
        });
        let application = Person::new(n).application("block");
        let id = application["application_id"].as_str().unwrap().to_owned();
        app.publish_application(&application).await;
        // not_issued: the MVD answered on the second attempt.
        app.wait_for_status(&id, "rejected").await;
        let waited = waited(&app, &id, "rejected").await;
        let after = Duration::from_secs(after);
        eprintln!(
            "wait accuracy: Retry-After {after:?} between retry delays (1s,5s,30s), 50 code timers pending: the retry ran {waited:?} after the failure"
        );
        assert!(
            waited >= after && waited <= after + Duration::from_secs(1),
            "the retry ran {waited:?} after the failure; Retry-After was {after:?}"
        );
    }
    app.stop().await;
}
