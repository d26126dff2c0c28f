use serde_json::json;
use uidflow::sim::Faults;

use crate::common::openapi::OpenApi;
use crate::common::{Person, TestApp};

/// The SMS gateway is down while the password should go out: the application fails after its
/// retries. Once the gateway is back, an operator replays the dead letter: the application goes
/// on from send-sms (verify-identity, the code and the registry do not run again) and the
/// citizen gets exactly one password SMS, which works. A second replay is refused.
#[tokio::test]
async fn a_replay_after_a_fixed_outage_completes_without_a_second_password_sms() {
    let app = TestApp::spawn_pipeline("10m").await;
    let openapi = OpenApi::load();
    let person = Person::new(70);
    let application = person.application("issue");
    let id = application["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&application).await;
    app.wait_for_status(&id, "awaiting_phone_confirmation")
        .await;
    let code = app.last_code(&person.phone);
    app.sim().set_sms_faults(Faults {
        outage: true,
        ..Faults::default()
    });
    app.publish_code(&id, &code).await;
    app.wait_for_status(&id, "failed").await;
    let mvd_calls = app.sim().mvd_requests();
    let registry_changes: i64 = sqlx::query_scalar("SELECT count(*) FROM uid_registry_history")
        .fetch_one(&app.pool)
        .await
        .unwrap();

    app.sim().set_sms_faults(Faults::default());
    let list = app
        .call("GET", "/v1/dead-letters", Some("operator"), None)
        .await;
    openapi
        .check_json("GET", "/v1/dead-letters", 200, &list.json)
        .unwrap();
    let parked = &list.json["items"][0];
    assert_eq!(parked["step"], "send-sms");
    assert_eq!(parked["error_kind"], "exhausted");
    assert_eq!(parked["replayable"], true);
    let dead_id = parked["id"].as_i64().unwrap();
    let path = format!("/v1/dead-letters/{dead_id}/replay");

    let replayed = app
        .call(
            "POST",
            &path,
            Some("operator"),
            Some(json!({"reason": "SMS gateway is back"})),
        )
        .await;
    assert_eq!(replayed.status, 200, "{}", replayed.text);
    openapi
        .check_json("POST", &path, 200, &replayed.json)
        .unwrap();
    assert_eq!(replayed.json["state"], "replayed");
    assert_eq!(replayed.json["state_changed_by"], "operator");
    app.wait_for_status(&id, "completed").await;

    let passwords: Vec<_> = app
        .sim()
        .messages_to(&person.phone)
        .into_iter()
        .filter(|m| uidflow::sms::texts::code_in(&m.text).is_none())
        .collect();
    assert_eq!(
        passwords.len(),
        1,
        "exactly one password SMS reached the citizen"
    );
    assert!(
        app.last_password_works(&person.identification_number, &person.phone)
            .await
    );
    assert_eq!(
        app.sim().mvd_requests(),
        mvd_calls,
        "verify-identity did not run again"
    );
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM uid_registry_history")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        after,
        registry_changes + 1,
        "only the password was set; the UID was not assigned again"
    );
    let history = app.history(&id).await;
    assert!(history.iter().any(|(_, step, detail)| {
        step == "operator"
            && detail
                .as_deref()
                .is_some_and(|d| d.contains("replayed by operator: SMS gateway is back"))
    }));

    let again = app
        .call(
            "POST",
            &path,
            Some("operator"),
            Some(json!({"reason": "once more"})),
        )
        .await;
    assert_eq!(again.status, 409, "a second replay is refused");
    openapi.check_json("POST", &path, 409, &again.json).unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_discard_is_recorded_with_who_when_and_why_and_malformed_letters_are_not_replayed() {
    let app = TestApp::spawn().await;
    let first = Person::new(71).application("block");
    let id = first["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&first).await;
    app.wait_for_application(&id).await;
    let mut conflicting = first.clone();
    conflicting["document"]["number"] = "MP7654321".into();
    app.publish_application(&conflicting).await;
    app.publish("application", &[0xff, 0xfe, 0x00], None).await;
    let rows = app.wait_for_dead_letters(2).await;
    // The two are handled concurrently: find each by its kind, not by its order.
    let id_of = |kind: &str| -> i64 {
        let row = rows
            .iter()
            .find(|r| sqlx::Row::get::<String, _>(*r, "error_kind") == kind)
            .expect("parked");
        sqlx::Row::get(row, "id")
    };
    let ids = [id_of("conflict"), id_of("malformed")];

    let malformed = app
        .call(
            "GET",
            &format!("/v1/dead-letters/{}", ids[1]),
            Some("operator"),
            None,
        )
        .await;
    assert_eq!(
        malformed.json["body"]["encoding"], "base64",
        "bytes that are not text can be exported"
    );
    let refused = app
        .call(
            "POST",
            &format!("/v1/dead-letters/{}/replay", ids[1]),
            Some("operator"),
            Some(json!({"reason": "try"})),
        )
        .await;
    assert_eq!(refused.status, 422);

    let path = format!(
        "/v1/dead-letters/{}?reason=duplicate%20from%20a%20retrying%20office",
        ids[0]
    );
    let discarded = app.call("DELETE", &path, Some("operator"), None).await;
    assert_eq!(discarded.status, 200, "{}", discarded.text);
    assert_eq!(discarded.json["state"], "discarded");
    assert_eq!(
        discarded.json["state_reason"],
        "duplicate from a retrying office"
    );
    assert!(discarded.json["state_changed_at"].is_string());
    let history = app.history(&id).await;
    assert!(history.iter().any(|(_, _, d)| {
        d.as_deref()
            .is_some_and(|d| d.contains("discarded by operator: duplicate from a retrying office"))
    }));
    let listed = app
        .call("GET", "/v1/dead-letters", Some("operator"), None)
        .await;
    let parked: Vec<i64> = listed.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        parked,
        [ids[1]],
        "the parked list no longer holds the discarded one"
    );
    app.stop().await;
}

/// Operators see dead-letter bodies and headers masked by field name, whatever the values look
/// like; a `reason` is limited in characters, so 500 Cyrillic letters (1 000 bytes) are taken.
#[tokio::test]
async fn dead_letters_are_masked_by_field_name_and_reasons_count_characters() {
    let app = TestApp::spawn().await;
    let openapi = OpenApi::load();
    let body =
        br#"{"applicant":{"surname":"Smith","date_of_birth":"1985-03-14"},"code":"12 34 56"}"#;
    let headers = json!({
        "x-applicant": "{\"given_name\": \"Jo\", \"phone\": \"two nine one four\"}",
        "x-contact": {"Phone": "two nine one five", "patronymic": "Petrovich"},
        "x-office": "minsk-1",
    });
    app.publish_with_headers("application", body, None, &headers)
        .await;
    let rows = app.wait_for_dead_letters(1).await;
    let id: i64 = sqlx::Row::get(&rows[0], "id");
    let path = format!("/v1/dead-letters/{id}");
    let shown = app.call("GET", &path, Some("operator"), None).await;
    assert_eq!(shown.status, 200, "{}", shown.text);
    openapi.check_json("GET", &path, 200, &shown.json).unwrap();
    for secret in ["Smith", "1985", "12 34 56", "\"Jo", "two nine", "Petrovich"] {
        assert!(!shown.text.contains(secret), "{secret} in {}", shown.text);
    }
    assert_eq!(shown.json["body"]["masked"], true);
    assert!(shown.json["body"].get("raw_base64").is_none());
    assert_eq!(shown.json["headers"]["x-office"], "minsk-1");

    let cyrillic = |n: usize| "я".repeat(n);
    let too_long = app
        .call(
            "POST",
            &format!("{path}/replay"),
            Some("operator"),
            Some(json!({"reason": cyrillic(501)})),
        )
        .await;
    assert_eq!(too_long.status, 400, "{}", too_long.text);
    openapi
        .check_json("POST", &format!("{path}/replay"), 400, &too_long.json)
        .unwrap();
    let discarded = app
        .call(
            "DELETE",
            &path,
            Some("operator"),
            Some(json!({"reason": cyrillic(500)})),
        )
        .await;
    assert_eq!(discarded.status, 200, "{}", discarded.text);
    assert_eq!(discarded.json["state_reason"], cyrillic(500));
    app.stop().await;
}
