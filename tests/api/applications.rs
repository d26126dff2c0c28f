use std::collections::HashSet;

use crate::common::openapi::OpenApi;
use crate::common::{Person, TestApp, wait_until};

#[tokio::test]
async fn pages_hold_each_application_once_while_new_ones_arrive() {
    let app = TestApp::spawn().await;
    let openapi = OpenApi::load();
    let mut before = HashSet::new();
    for n in 0..30 {
        let application = Person::new(100 + n).application("block");
        before.insert(application["application_id"].as_str().unwrap().to_owned());
        app.publish_application(&application).await;
    }
    wait_until("30 applications", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM applications")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (n == 30).then_some(())
    })
    .await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut extra = 200;
    loop {
        // New applications keep arriving between the pages.
        for _ in 0..4 {
            app.publish_application(&Person::new(extra).application("block"))
                .await;
            extra += 1;
        }
        let path = match &cursor {
            Some(c) => format!("/v1/applications?limit=7&cursor={c}"),
            None => "/v1/applications?limit=7".to_owned(),
        };
        let page = app.call("GET", &path, Some("operator"), None).await;
        assert_eq!(page.status, 200, "{}", page.text);
        openapi.check_json("GET", &path, 200, &page.json).unwrap();
        for item in page.json["items"].as_array().unwrap() {
            seen.push(item["application_id"].as_str().unwrap().to_owned());
        }
        match page.json["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no application twice");
    assert!(
        before.is_subset(&unique),
        "every application that existed is listed"
    );
    let filtered = app
        .call("GET", "/v1/applications?kind=issue", Some("operator"), None)
        .await;
    assert_eq!(filtered.json["items"].as_array().unwrap().len(), 0);
    app.stop().await;
}

/// Every response body, for every endpoint and both roles, is scanned for the full
/// identification number, phone, code and password of the test's person.
#[tokio::test]
async fn no_response_ever_holds_personal_data_or_a_secret() {
    let app = TestApp::spawn_pipeline("10m").await;
    let person = Person::new(61);
    let id = app.complete(&person, "issue").await;
    let code = app.last_code(&person.phone);
    let password = {
        let messages = app.sim().messages_to(&person.phone);
        uidflow::sms::texts::password_in(&messages.last().unwrap().text)
            .unwrap()
            .to_owned()
    };
    // A dead letter that holds the person's application (a conflicting repeat).
    let mut conflicting = person.application("issue");
    conflicting["application_id"] = id.clone().into();
    conflicting["document"]["number"] = "MP7654321".into();
    app.publish_application(&conflicting).await;
    let dead = app.wait_for_dead_letters(1).await;
    let dead_id: i64 = sqlx::Row::get(&dead[0], "id");

    let secrets = [
        person.identification_number.clone(),
        person.phone.clone(),
        code,
        password,
    ];
    for (path, token) in [
        (format!("/v1/applications/{id}"), "operator"),
        (format!("/v1/applications/{id}"), "clerk-minsk-sov-oa"),
        ("/v1/applications".to_owned(), "operator"),
        ("/v1/applications".to_owned(), "clerk-minsk-sov-oa"),
        ("/v1/dead-letters".to_owned(), "operator"),
        (format!("/v1/dead-letters/{dead_id}"), "operator"),
        ("/v1/queues".to_owned(), "operator"),
        ("/metrics".to_owned(), "operator"),
    ] {
        let answer = app.call("GET", &path, Some(token), None).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text);
        for secret in &secrets {
            assert!(
                !answer.text.contains(secret.as_str()),
                "{path} leaks a secret or personal data"
            );
        }
    }
    let shown = app
        .call(
            "GET",
            &format!("/v1/dead-letters/{dead_id}"),
            Some("operator"),
            None,
        )
        .await;
    assert_eq!(shown.json["body"]["masked"], true);
    assert_eq!(
        shown.json["body"]["content"]["applicant"]["identification_number"],
        uidflow::domain::mask_identification_number(&person.identification_number)
    );
    let view = app
        .call(
            "GET",
            &format!("/v1/applications/{id}"),
            Some("operator"),
            None,
        )
        .await;
    assert_eq!(
        view.json["phone"],
        uidflow::domain::mask_phone(&person.phone)
    );
    assert_eq!(view.json["status"], "completed");
    app.stop().await;
}
