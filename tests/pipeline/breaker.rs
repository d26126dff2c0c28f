//! The shared circuit breakers: an outage of the SMS gateway or the MVD far longer than all the
//! retries, with applications in flight through three step runners, fails nothing, sends
//! nothing twice, and spends no attempt while the breaker is open.

use std::collections::BTreeSet;

use serde_json::Value;
use sqlx::Row;
use uidflow::sim::Faults;
use uidflow::system::{Part, RunOptions};

use crate::common::{Person, TestApp, test_tokens, wait_until};

/// Short retries (4 attempts over 0.7 s), a breaker that opens on the 3rd failure in a row and
/// probes every 300 ms, each process reading the shared state every 50 ms.
const ENV: [(&str, &str); 4] = [
    ("RETRY_DELAYS", "100ms,200ms,400ms"),
    ("BREAKER_FAILURES", "3"),
    ("BREAKER_PROBE_INTERVAL", "300ms"),
    ("BREAKER_REFRESH", "50ms"),
];

/// How long each outage lasts once the breaker opened: several times all the retries (0.7 s).
const OUTAGE_SECONDS: f64 = 3.0;

/// The test app (a whole process) and two more processes hosting only the steps.
async fn three_runners() -> (TestApp, Vec<uidflow_cli::Running>) {
    let app = TestApp::spawn_pipeline_env("10m", RunOptions::default(), &ENV).await;
    let parts: BTreeSet<Part> = [
        Part::VerifyIdentity,
        Part::ConfirmPhone,
        Part::Register,
        Part::SendSms,
        Part::PhoneConfirmation,
    ]
    .into();
    let mut others = Vec::new();
    for _ in 0..2 {
        let options = RunOptions {
            parts: parts.clone(),
            concurrency: 4,
            tokens: Some(test_tokens().0),
            vault: Some(std::sync::Arc::clone(&app.vault)),
            audit_key: Some(app.audit_key.clone()),
            ..RunOptions::default()
        };
        let running = uidflow_cli::start(&app.settings, &app.pool, &options, Default::default())
            .await
            .expect("a step runner starts");
        others.push(running);
    }
    (app, others)
}

/// The breaker's row (state, opened_total, saved_attempts), and the attempts spent (by any
/// step) while a breaker was open, from the history and the breakers' log.
async fn breaker(app: &TestApp, system: &str) -> (String, i64, i64, i64) {
    let row =
        sqlx::query("SELECT state, opened_total, saved_attempts FROM breakers WHERE system = $1")
            .bind(system)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let mut conn = app.pool.acquire().await.unwrap();
    let spent_while_open = uidflow::breaker::spent_while_open(&mut conn).await.unwrap();
    (
        row.get("state"),
        row.get("opened_total"),
        row.get("saved_attempts"),
        spent_while_open,
    )
}

/// Waits until the breaker of `system` has been open (or probing) for [`OUTAGE_SECONDS`].
async fn wait_open_long(app: &TestApp, system: &str) {
    wait_until(
        &format!("the {system} breaker open for a while"),
        || async {
            let open_for: Option<f64> = sqlx::query_scalar(
                "SELECT extract(epoch FROM clock_timestamp() - opened_at)::float8 FROM breakers
             WHERE system = $1 AND state <> 'closed'",
            )
            .bind(system)
            .fetch_optional(&app.pool)
            .await
            .unwrap()
            .flatten();
            open_for.filter(|s| *s >= OUTAGE_SECONDS).map(drop)
        },
    )
    .await;
}

/// Attempts spent on a transient failure (history notes "attempt N failed (…); attempt N+1 in
/// …"), over all applications.
async fn spent_attempts(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM application_history WHERE detail LIKE 'attempt % failed%; attempt % in %'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn wait_closed(app: &TestApp, system: &str) {
    wait_until(&format!("the {system} breaker closed"), || async {
        (breaker(app, system).await.0 == "closed").then_some(())
    })
    .await;
}

/// Every application completed, none failed, nothing parked.
async fn assert_all_completed(app: &TestApp, ids: &[String]) {
    for id in ids {
        app.wait_for_status(id, "completed").await;
    }
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM applications WHERE status <> 'completed'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(failed, 0);
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(parked, 0, "nothing exhausted its attempts");
}

async fn stop(app: TestApp, others: Vec<uidflow_cli::Running>) {
    for running in others {
        running.system.shutdown().await;
    }
    app.stop().await;
}

#[tokio::test]
async fn an_sms_outage_longer_than_the_retries_pauses_the_work_and_spends_no_attempt() {
    let (app, others) = three_runners().await;
    let people: Vec<Person> = (0..6).map(|n| Person::new(9100 + n)).collect();

    // The code SMS: the gateway is down while the applications reach confirm-phone.
    app.sim().set_sms_faults(Faults {
        outage: true,
        ..Faults::default()
    });
    let mut ids = Vec::new();
    for person in &people {
        let application = person.application("issue");
        ids.push(application["application_id"].as_str().unwrap().to_owned());
        app.publish_application(&application).await;
    }
    wait_open_long(&app, "sms").await;
    // Shown to operators and to clerks while it lasts.
    let ready = app.call("GET", "/readyz", None, None).await;
    assert_eq!(
        ready.status, 200,
        "an open breaker does not make a process unready"
    );
    assert_ne!(ready.json["breakers"]["sms"], "closed", "{}", ready.text);
    assert_eq!(ready.json["breakers"]["mvd"], "closed");
    let waiting = wait_until("an application waiting for the SMS gateway", || async {
        for id in &ids {
            let answer = app
                .call(
                    "GET",
                    &format!("/v1/applications/{id}"),
                    Some("operator"),
                    None,
                )
                .await;
            let last = answer.json["history"].as_array()?.last()?.clone();
            if last["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("waiting: the SMS gateway is unavailable"))
            {
                return Some(last);
            }
        }
        None
    })
    .await;
    assert_eq!(waiting["step"], Value::from("confirm-phone"));
    app.sim().set_sms_faults(Faults::default());
    wait_closed(&app, "sms").await;
    let mut codes = Vec::new();
    for (id, person) in ids.iter().zip(&people) {
        app.wait_for_status(id, "awaiting_phone_confirmation").await;
        codes.push(app.last_code(&person.phone));
    }
    let spent_on_codes = spent_attempts(&app).await;

    // The password SMS (sent under the row lock): the gateway is down again.
    app.sim().set_sms_faults(Faults {
        outage: true,
        ..Faults::default()
    });
    for (id, code) in ids.iter().zip(&codes) {
        app.publish_code(id, code).await;
    }
    wait_open_long(&app, "sms").await;
    app.sim().set_sms_faults(Faults::default());
    assert_all_completed(&app, &ids).await;

    // Each person got one code and one password, and the password works: nothing twice.
    for person in &people {
        let texts: Vec<String> = app
            .sim()
            .messages_to(&person.phone)
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts.len(), 2, "one code, one password");
        assert!(
            app.last_password_works(&person.identification_number, &person.phone)
                .await
        );
    }
    // Only the failures before the breaker opened spent an attempt (fewer than 3 per outage,
    // whatever its length); while it was open none did, and the rest were put back.
    let spent = spent_attempts(&app).await;
    assert!(
        spent_on_codes <= 2,
        "{spent_on_codes} attempts spent on the codes"
    );
    assert!(spent - spent_on_codes <= 2, "{spent} attempts spent in all");
    let (state, opened, saved, spent_while_open) = breaker(&app, "sms").await;
    assert_eq!(state, "closed");
    assert!(opened >= 2, "opened once per outage: {opened}");
    assert!(
        saved >= 2,
        "at least the failure that opened it, per outage: {saved}"
    );
    assert_eq!(spent_while_open, 0);
    // The count is real: an attempt spent on an SMS failure after the breaker opened counts
    // (and a database failure, not the gateway's, does not).
    sqlx::query("INSERT INTO breaker_events (system, change) VALUES ('sms', 'opened')")
        .execute(&app.pool)
        .await
        .unwrap();
    for detail in [
        "attempt 1 failed (sms answered 503); attempt 2 in 1s",
        "attempt 1 failed (pool timed out while waiting for an open connection); attempt 2 in 1s",
    ] {
        sqlx::query(
            "INSERT INTO application_history (application_id, status, step, detail)
             SELECT application_id, status, 'send-sms', $2 FROM applications WHERE application_id = $1::uuid",
        )
        .bind(&ids[0])
        .bind(detail)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    assert_eq!(breaker(&app, "sms").await.3, 1);
    stop(app, others).await;
}

#[tokio::test]
async fn an_mvd_outage_longer_than_the_retries_pauses_the_work_and_spends_no_attempt() {
    let (app, others) = three_runners().await;
    let people: Vec<Person> = (0..6).map(|n| Person::new(9200 + n)).collect();
    app.sim().set_mvd_faults(Faults {
        outage: true,
        ..Faults::default()
    });
    let mut ids = Vec::new();
    for person in &people {
        let application = person.application("issue");
        ids.push(application["application_id"].as_str().unwrap().to_owned());
        app.publish_application(&application).await;
    }
    wait_open_long(&app, "mvd").await;
    let view = {
        let mut conn = app.pool.acquire().await.unwrap();
        let id = uuid::Uuid::parse_str(&ids[5]).unwrap();
        uidflow::applications::load_view(&mut conn, id)
            .await
            .unwrap()
            .unwrap()
    };
    let last = view.history.last().unwrap();
    assert_eq!(last.step, "verify-identity");
    assert!(
        last.detail
            .as_deref()
            .is_some_and(|d| d.starts_with("waiting: the MVD is unavailable")),
        "{last:?}"
    );
    app.sim().set_mvd_faults(Faults::default());
    for (id, person) in ids.iter().zip(&people) {
        app.confirm_phone(id, &person.phone).await;
    }
    assert_all_completed(&app, &ids).await;

    let spent = spent_attempts(&app).await;
    assert!(spent <= 2, "{spent} attempts spent");
    let (state, opened, saved, spent_while_open) = breaker(&app, "mvd").await;
    assert_eq!(state, "closed");
    assert!(opened >= 1);
    assert!(saved >= 1, "{saved}");
    assert_eq!(spent_while_open, 0);
    assert_eq!(
        breaker(&app, "sms").await.1,
        0,
        "the SMS breaker never opened"
    );
    stop(app, others).await;
}
