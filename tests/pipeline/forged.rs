//! Forged work items, published straight to the steps' queues as anyone with broker access
//! could: none may skip a step. Each test holds a genuine application in one status (by
//! leaving out the part that would move it on), forges items for every step, and checks that
//! those out of turn are parked `out_of_order` and noted, that nothing changed (status,
//! registry, SMS, MVD calls), and that the genuine application still completes with exactly
//! one working password.

use serde_json::{Value, json};
use uidflow::route::{CONFIRM_PHONE, REGISTER, SEND_SMS, STEPS, VERIFY_IDENTITY};
use uidflow::system::{Part, RunOptions};

use crate::common::{Person, TestApp, test_tokens, wait_until, without};

/// Replaces the running system with one hosting the parts of `options`.
async fn restart(app: &mut TestApp, options: RunOptions) {
    app.shutdown_system().await;
    let options = RunOptions {
        tokens: Some(test_tokens().0),
        audit_key: Some(app.audit_key.clone()),
        vault: Some(std::sync::Arc::clone(&app.vault)),
        ..options
    };
    let running = uidflow_cli::start(&app.settings, &app.pool, &options, Default::default())
        .await
        .expect("the system starts again");
    app.system = Some(running.system);
}

/// Publishes `item` straight to the queue of `queue_step` (the default exchange), as a forger.
async fn forge_on(app: &TestApp, queue_step: &str, item: &Value) {
    let queue = uidflow::topology::step_queue(queue_step);
    let body = serde_json::to_vec(item).unwrap();
    app.publish_to("", &queue, &body, None, &Value::Null).await;
}

/// Publishes an application of `kind` for `person` and returns its id.
async fn submit(app: &TestApp, person: &Person, kind: &str) -> String {
    let application = person.application(kind);
    app.publish_application(&application).await;
    application["application_id"].as_str().unwrap().to_owned()
}

/// A work item for `step` of application `id`, on that step's own queue.
async fn forge(app: &TestApp, id: &str, step: &str, attempt: u32) {
    let item = json!({"application_id": id, "step": step, "attempt": attempt});
    forge_on(app, step, &item).await;
}

/// Every step's item (attempts 1 and 4), a code timer, and a register item on the send-sms
/// queue; only the steps whose consumers run in this process are published.
async fn forge_everything(app: &TestApp, id: &str, running: &[&str]) {
    for step in STEPS.iter().filter(|s| running.contains(s)) {
        forge(app, id, step, 1).await;
        forge(app, id, step, 4).await;
    }
    if running.contains(&CONFIRM_PHONE) {
        let timer = json!({"application_id": id, "step": CONFIRM_PHONE, "attempt": 1,
            "purpose": {"kind": "expire_code", "generation": 1}});
        forge_on(app, CONFIRM_PHONE, &timer).await;
    }
    if running.contains(&SEND_SMS) {
        forge_on(
            app,
            SEND_SMS,
            &json!({"application_id": id, "step": REGISTER, "attempt": 1}),
        )
        .await;
    }
}

/// Dead letters of kind `out_of_order` for the application.
async fn out_of_order(app: &TestApp, id: &str) -> i64 {
    app.count(
        "SELECT count(*) FROM dead_letters WHERE application_id = $1::uuid AND error_kind = 'out_of_order'",
        id,
    )
    .await
}

/// Waits until the queues of the `running` steps are empty (ready and unacknowledged): each
/// forged item was handled and acked.
async fn wait_for_steps_idle(app: &TestApp, running: &[&str]) {
    wait_until("the step queues to be empty", || async {
        running
            .iter()
            .all(|s| app.queue_messages(&uidflow::topology::step_queue(s)) == 0)
            .then_some(())
    })
    .await;
}

/// Waits for exactly `expected` out-of-order dead letters (and idle queues), then checks that
/// each is noted in the history.
async fn expect_refused(app: &TestApp, id: &str, expected: i64, running: &[&str]) {
    wait_until(&format!("{expected} out-of-order dead letters"), || async {
        (out_of_order(app, id).await >= expected).then_some(())
    })
    .await;
    wait_for_steps_idle(app, running).await;
    app.wait_for_outbox_drained().await;
    assert_eq!(out_of_order(app, id).await, expected);
    let notes = app
        .history(id)
        .await
        .into_iter()
        .filter(|(_, _, detail)| {
            detail
                .as_deref()
                .is_some_and(|d| d.contains("arrived out of turn"))
        })
        .count();
    assert_eq!(notes as i64, expected, "each refusal is in the history");
    let replayable: i64 = app
        .count(
            "SELECT count(*) FROM dead_letters WHERE application_id = $1::uuid AND error_kind = 'out_of_order' AND state <> 'parked'",
            id,
        )
        .await;
    assert_eq!(replayable, 0);
}

/// The registry row of the person, and its history length.
async fn registry_state(
    app: &TestApp,
    uid: &str,
) -> (Option<(String, String, Option<String>)>, i64) {
    let history: i64 =
        sqlx::query_scalar("SELECT count(*) FROM uid_registry_history WHERE uid = $1")
            .bind(uid)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    (app.registry(uid).await, history)
}

#[tokio::test]
async fn no_step_runs_before_the_identity_is_verified() {
    // verify-identity does not run: the application stays `verifying_identity`.
    let mut app = TestApp::spawn_pipeline_with("10m", without(&[Part::VerifyIdentity])).await;
    let person = Person::new(801);
    let id = submit(&app, &person, "issue").await;
    app.wait_for_status(&id, "verifying_identity").await;

    let running = [CONFIRM_PHONE, REGISTER, SEND_SMS];
    forge_everything(&app, &id, &running).await;
    // confirm-phone ×2, register ×2, send-sms ×2, the timer, register on send-sms's queue.
    expect_refused(&app, &id, 8, &running).await;
    assert_eq!(
        app.status_of(&id).await.as_deref(),
        Some("verifying_identity")
    );
    assert_eq!(
        registry_state(&app, &person.identification_number).await,
        (None, 0)
    );
    assert_eq!(app.sim().sms_requests(), 0, "no SMS at all");
    assert_eq!(app.sim().mvd_requests(), 0);

    restart(&mut app, RunOptions::default()).await;
    app.confirm_phone(&id, &person.phone).await;
    app.wait_for_status(&id, "completed").await;
    assert_eq!(
        app.sim().messages_to(&person.phone).len(),
        2,
        "code, password"
    );
    assert!(
        app.last_password_works(&person.identification_number, &person.phone)
            .await
    );
    app.stop().await;
}

#[tokio::test]
async fn nothing_registers_before_the_code_is_typed_back() {
    let app = TestApp::spawn_pipeline("10m").await;
    let person = Person::new(802);
    let id = submit(&app, &person, "issue").await;
    app.wait_for_status(&id, "awaiting_phone_confirmation")
        .await;

    forge_everything(&app, &id, &STEPS).await;
    // register ×2, send-sms ×2, register on send-sms's queue; verify-identity and
    // confirm-phone are done (silent duplicates); the timer finds its code still valid.
    expect_refused(&app, &id, 5, &STEPS).await;
    assert_eq!(
        app.status_of(&id).await.as_deref(),
        Some("awaiting_phone_confirmation")
    );
    assert_eq!(
        registry_state(&app, &person.identification_number).await,
        (None, 0)
    );
    assert_eq!(
        app.sim().messages_to(&person.phone).len(),
        1,
        "the code only"
    );
    assert_eq!(app.sim().mvd_requests(), 1, "one verification");

    app.confirm_phone(&id, &person.phone).await;
    app.wait_for_status(&id, "completed").await;
    assert_eq!(
        app.sim().messages_to(&person.phone).len(),
        2,
        "code, password"
    );
    assert!(
        app.last_password_works(&person.identification_number, &person.phone)
            .await
    );
    app.stop().await;
}

#[tokio::test]
async fn registering_and_sending_hold_against_forged_items_and_completion_ignores_them() {
    // register does not run: the application stays `registering` after the right code.
    let mut app = TestApp::spawn_pipeline_with("10m", without(&[Part::Register])).await;
    let person = Person::new(803);
    let id = submit(&app, &person, "issue").await;
    app.confirm_phone(&id, &person.phone).await;
    app.wait_for_status(&id, "registering").await;

    let running = [VERIFY_IDENTITY, CONFIRM_PHONE, SEND_SMS];
    forge_everything(&app, &id, &running).await;
    // send-sms ×2 and register on send-sms's queue; the others are done.
    expect_refused(&app, &id, 3, &running).await;
    assert_eq!(app.status_of(&id).await.as_deref(), Some("registering"));
    assert_eq!(
        registry_state(&app, &person.identification_number).await,
        (None, 0)
    );
    assert_eq!(
        app.sim().messages_to(&person.phone).len(),
        1,
        "the code only"
    );

    // Now register runs and send-sms does not: the application waits in `sending_password`.
    restart(&mut app, without(&[Part::SendSms])).await;
    app.wait_for_status(&id, "sending_password").await;
    let registered = registry_state(&app, &person.identification_number).await;
    assert_eq!(registered.1, 1, "issued (the password comes with its SMS)");
    let running = [VERIFY_IDENTITY, CONFIRM_PHONE, REGISTER];
    forge_everything(&app, &id, &running).await;
    // Every step it may run is done: nothing is refused, nothing runs again.
    wait_for_steps_idle(&app, &running).await;
    assert_eq!(out_of_order(&app, &id).await, 3, "no new refusal");
    assert_eq!(
        app.status_of(&id).await.as_deref(),
        Some("sending_password")
    );
    assert_eq!(
        registry_state(&app, &person.identification_number).await,
        registered
    );

    restart(&mut app, RunOptions::default()).await;
    app.wait_for_status(&id, "completed").await;
    let completed = registry_state(&app, &person.identification_number).await;
    forge_everything(&app, &id, &STEPS).await;
    // Done steps are duplicates; register on send-sms's queue is refused.
    expect_refused(&app, &id, 4, &STEPS).await;
    assert_eq!(app.status_of(&id).await.as_deref(), Some("completed"));
    assert_eq!(
        registry_state(&app, &person.identification_number).await,
        completed
    );
    assert_eq!(
        app.sim().messages_to(&person.phone).len(),
        2,
        "code, password"
    );
    assert!(
        app.last_password_works(&person.identification_number, &person.phone)
            .await
    );
    app.stop().await;
}

#[tokio::test]
async fn an_existing_uid_cannot_be_taken_over_by_skipping_verification() {
    let mut app = TestApp::spawn_pipeline("10m").await;
    let owner = Person::new(804);
    app.complete(&owner, "issue").await;
    let issued = registry_state(&app, &owner.identification_number).await;
    let sms_to_owner = app.sim().messages_to(&owner.phone).len();

    // An attacker's applications for the owner's UID, held before verification.
    restart(&mut app, without(&[Part::VerifyIdentity])).await;
    let attacker = Person {
        phone: "+375447654321".into(),
        ..Person::new(804)
    };
    let mut ids = Vec::new();
    for kind in ["change_phone", "block", "unblock"] {
        let id = submit(&app, &attacker, kind).await;
        app.wait_for_status(&id, "verifying_identity").await;
        forge(&app, &id, REGISTER, 1).await;
        forge(&app, &id, SEND_SMS, 1).await;
        // Another kind's step: confirm-phone is on no route of block and unblock.
        forge(&app, &id, CONFIRM_PHONE, 1).await;
        ids.push(id);
    }
    for id in &ids {
        expect_refused(&app, id, 3, &[CONFIRM_PHONE, REGISTER, SEND_SMS]).await;
        assert_eq!(
            app.status_of(id).await.as_deref(),
            Some("verifying_identity")
        );
    }
    assert_eq!(
        registry_state(&app, &owner.identification_number).await,
        issued
    );
    assert_eq!(app.sim().messages_to(&owner.phone).len(), sms_to_owner);
    assert!(app.sim().messages_to(&attacker.phone).is_empty());
    assert!(
        app.last_password_works(&owner.identification_number, &owner.phone)
            .await
    );
    app.stop().await;
}
