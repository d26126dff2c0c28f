//! Personal data at rest (docs/PRIVACY.md): nothing personal in the clear in any column after
//! every kind and every rejection; a key rotation under load loses nothing; retention erases
//! exactly what is due; a subject export finds a person's data and only theirs.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};
use sqlx::Row;
use uidflow::system::RunOptions;
use uidflow::vault::Vault;
use uuid::Uuid;

use crate::common::{Person, TestApp, example_json, spawn_clerk, wait_until};

/// The contract's registry (CONTRACT §7) holds the identification number (its key) and the
/// phone in the clear, for the portal; its history names the UID. Nothing else may.
const CONTRACT_CLEAR: [(&str, &str); 3] = [
    ("uid_registry", "uid"),
    ("uid_registry", "phone"),
    ("uid_registry_history", "uid"),
];

/// Every text, json and bytea column of every table in which one of `needles` occurs (as text,
/// or as its UTF-8 bytes), but the contract's registry columns: `(table.column, needle)`.
async fn found_in_the_clear(
    app: &TestApp,
    needles: &BTreeSet<String>,
    skip_contract: bool,
) -> Vec<(String, String)> {
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = current_schema()
           AND data_type IN ('text', 'character varying', 'json', 'jsonb', 'bytea', 'ARRAY')
         ORDER BY 1, 2",
    )
    .fetch_all(&app.pool)
    .await
    .expect("the catalogue");
    assert!(
        columns
            .iter()
            .any(|(t, c, _)| t == "application_payloads" && c == "sealed"),
        "the scan sees the payload column"
    );
    let mut found = Vec::new();
    for (table, column, data_type) in &columns {
        if skip_contract && CONTRACT_CLEAR.contains(&(table.as_str(), column.as_str())) {
            continue;
        }
        let haystack = match data_type.as_str() {
            "bytea" => format!("\"{column}\""),
            _ => format!("convert_to(\"{column}\"::text, 'UTF8')"),
        };
        for needle in needles {
            let sql = format!(
                "SELECT count(*) FROM \"{table}\" WHERE position($1::bytea IN {haystack}) > 0"
            );
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(needle.as_bytes())
                .fetch_one(&app.pool)
                .await
                .expect("a scan query");
            if n > 0 {
                found.push((format!("{table}.{column}"), needle.clone()));
            }
        }
    }
    found
}

/// The personal values of an application body: names, numbers, dates of birth, phones.
fn personal_values(application: &Value) -> Vec<String> {
    [
        "/applicant/surname",
        "/applicant/given_name",
        "/applicant/patronymic",
        "/applicant/date_of_birth",
        "/applicant/identification_number",
        "/document/number",
        "/phone",
    ]
    .iter()
    .filter_map(|p| application.pointer(p).and_then(Value::as_str))
    .map(str::to_owned)
    .collect()
}

/// An application for `person` with names and a document number of its own (distinct
/// needles for the scan).
fn distinct(person: &Person, kind: &str, n: u32) -> Value {
    let mut application = person.application(kind);
    application["applicant"]["surname"] = Value::from(format!("Privatnaja{}", letters(n)));
    application["applicant"]["given_name"] = Value::from(format!("Aliaksandra{}", letters(n)));
    application["applicant"]["patronymic"] = Value::from(format!("Sciapanauna{}", letters(n)));
    application["document"]["number"] = Value::from(format!("KH{:07}", 7_000_000 + n));
    application
}

/// `n` as letters (names may not hold digits).
fn letters(n: u32) -> String {
    n.to_string()
        .chars()
        .map(|d| char::from(b'a' + d.to_digit(10).unwrap() as u8))
        .collect()
}

#[tokio::test]
async fn nothing_personal_is_stored_in_the_clear_after_every_kind_and_rejection() {
    let app = TestApp::spawn_pipeline("10m").await;
    let clerk_token = tokio_util::sync::CancellationToken::new();
    let clerk = spawn_clerk(&app, clerk_token.clone()).await;
    let mut needles = BTreeSet::new();
    let mut ids = Vec::new();
    let mut publish = |application: Value, needles: &mut BTreeSet<String>| {
        needles.extend(personal_values(&application));
        ids.push(application["application_id"].as_str().unwrap().to_owned());
        application
    };

    // Every kind, to completed.
    let person = Person::new(7_301);
    let mut moved = Person::new(7_302);
    moved.identification_number = person.identification_number.clone();
    moved.date_of_birth = person.date_of_birth.clone();
    for (kind, who) in [
        ("issue", &person),
        ("change_phone", &moved),
        ("block", &person),
        ("unblock", &person),
    ] {
        let application = publish(distinct(who, kind, 1), &mut needles);
        let id = application["application_id"].as_str().unwrap().to_owned();
        app.publish_application(&application).await;
        app.wait_for_status(&id, "completed").await;
    }
    // An extra field that names somebody (kept, as received, sealed).
    let mut extra = example_json("valid-extra-field.json");
    extra["clerk_note"] = Value::from("Notatka pra Hanna Zaslauskaja");
    needles.insert("Hanna Zaslauskaja".into());
    let extra = publish(extra, &mut needles);
    let extra_id = extra["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&extra).await;
    app.wait_for_status(&extra_id, "completed").await;
    // The MVD's rejections (the simulator's test people) and the registry's.
    for index in 0..6 {
        let application = publish(
            Person::from_test_table(index).application("issue"),
            &mut needles,
        );
        app.publish_application(&application).await;
    }
    let stranger = Person::new(7_303);
    let application = publish(distinct(&stranger, "block", 3), &mut needles);
    app.publish_application(&application).await;
    // A code typed wrong three times.
    clerk_token.cancel();
    clerk.await.unwrap();
    let unlucky = Person::new(7_304);
    let application = publish(distinct(&unlucky, "issue", 4), &mut needles);
    let unlucky_id = application["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&application).await;
    app.wait_for_status(&unlucky_id, "awaiting_phone_confirmation")
        .await;
    let right = app.last_code(&unlucky.phone);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    for _ in 0..3 {
        app.publish_code(&unlucky_id, wrong).await;
    }
    // The same id with other content (duplicate_conflict), invalid applications with every
    // kind of field error (and an extra field naming a person), and bodies that are not JSON.
    let mut conflicting = application.clone();
    conflicting["applicant"]["surname"] = Value::from("Kanfliktava");
    needles.insert("Kanfliktava".into());
    app.publish_application(&conflicting).await;
    for name in [
        "invalid-many-errors.json",
        "invalid-id-number-check-digit.json",
        "invalid-phone-operator-17.json",
    ] {
        let mut example = example_json(name);
        example["application_id"] = Value::from(Uuid::new_v4().to_string());
        example["clerk_note"] = Value::from("Notatka pra Hanna Zaslauskaja");
        let example = publish(example, &mut needles);
        app.publish_application(&example).await;
    }
    let raw = b"{\"applicant\": {\"surname\": \"Niedapisanaja\", \"phone\": \"+375447654321\"";
    needles.extend(["Niedapisanaja".to_owned(), "+375447654321".to_owned()]);
    app.publish("application", raw, None).await;

    let ended = ["completed", "rejected", "failed"];
    for id in &ids {
        wait_until(&format!("application {id} to end"), || async {
            app.status_of(id)
                .await
                .filter(|s| ended.contains(&s.as_str()))
        })
        .await;
    }
    app.wait_for_outbox_drained().await;
    // The conflict and the malformed body are parked (invalid applications are recorded as
    // rejected, refused codes are counted: neither is parked).
    app.wait_for_dead_letters(2).await;
    needles.retain(|n| n.chars().count() >= 6);
    let found = found_in_the_clear(&app, &needles, true).await;
    assert!(found.is_empty(), "personal data in the clear: {found:#?}");
    // The scan does find what is in the clear: the registry's (the contract's) columns.
    let control = BTreeSet::from([person.identification_number.clone(), moved.phone.clone()]);
    let found: BTreeSet<String> = found_in_the_clear(&app, &control, false)
        .await
        .into_iter()
        .map(|(column, _)| column)
        .collect();
    assert_eq!(
        found,
        BTreeSet::from(CONTRACT_CLEAR.map(|(t, c)| format!("{t}.{c}")))
    );

    // …and all of it reads back with the keys.
    for id in &ids {
        let stored = app.payload(id).await.expect("a payload");
        assert_eq!(stored["application_id"], Value::from(id.as_str()));
    }
    let bodies = app.dead_letter_bodies().await;
    assert!(
        bodies.iter().any(|b| b == raw),
        "the raw bytes of the malformed body"
    );
    app.stop().await;
}

/// A checkpoint now, then the whole audit trail verifies against the test's key.
async fn trail_verifies(app: &TestApp) {
    uidflow::audit::checkpoint(&app.pool, &app.audit_key)
        .await
        .expect("a checkpoint");
    let report = uidflow::audit::verify(&app.pool, None, &[app.audit_key.verifying_key()])
        .await
        .expect("the trail is read");
    assert!(report.ok(), "{report:?}");
}

/// A data key file of the test's own, in a fresh directory.
fn key_file() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("uidflow-test-keys-{}", Uuid::new_v4()));
    dir.join("data-keys.toml")
}

#[tokio::test]
async fn a_key_rotation_under_load_loses_nothing_and_retires_the_old_key() {
    let path = key_file();
    let (vault, _) = Vault::create_or_open(&path).unwrap();
    let vault = Arc::new(vault);
    let old_key = vault.active_key();
    let options = RunOptions {
        vault: Some(Arc::clone(&vault)),
        ..RunOptions::default()
    };
    let mut app = TestApp::spawn_pipeline_with("10m", options).await;
    app.vault = Arc::clone(&vault);
    let clerk_token = tokio_util::sync::CancellationToken::new();
    let clerk = spawn_clerk(&app, clerk_token.clone()).await;
    app.publish("application", b"not json, +375291230000", None)
        .await;
    app.wait_for_dead_letters(1).await;
    let people: Vec<Person> = (0..60).map(|n| Person::new(7_400 + n)).collect();
    let first = app.publish_issues(&people[..30]).await;

    // `uidflow keys rotate` is another process: another reader of the same file.
    let (rotator, _) = Vault::create_or_open(&path).unwrap();
    let pool = app.pool.clone();
    let rotation = tokio::spawn(async move {
        // Stopped before retiring (as an interrupted run, or `--no-retire` across hosts)…
        let options = uidflow::rotation::Options {
            batch: 7,
            settle: std::time::Duration::from_millis(1500),
            retire: false,
        };
        let first = uidflow::rotation::rotate(&pool, &rotator, options, |_| {}).await;
        // …and run again: it finishes that rotation, adds no key, retires the old one.
        let options = uidflow::rotation::Options {
            retire: true,
            ..options
        };
        let second = uidflow::rotation::rotate(&pool, &rotator, options, |_| {}).await;
        (first, second)
    });
    let second = app.publish_issues(&people[30..]).await;
    let (interrupted, rotation) = rotation.await.unwrap();
    let interrupted = interrupted.expect("the first rotation ends");
    assert!(interrupted.added && interrupted.retired.is_empty());
    assert!(
        interrupted.applications > 0 && interrupted.dead_letters > 0,
        "{interrupted:?}"
    );
    let rotation = rotation.expect("the second rotation ends");
    assert!(!rotation.added);
    assert_eq!(rotation.active, interrupted.active);
    assert_ne!(rotation.active, old_key);
    assert_eq!(rotation.retired, vec![old_key.clone()]);

    let ids: Vec<String> = first.into_iter().chain(second).collect();
    app.each_completed_once(&ids, &people).await;
    clerk_token.cancel();
    clerk.await.unwrap();
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT key_id FROM application_payloads
         UNION SELECT DISTINCT body_key_id FROM dead_letters",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        keys,
        vec![rotation.active.clone()],
        "everything under the new key"
    );
    // A process that starts now (the file only) opens every payload and body.
    let fresh = Arc::new(Vault::from_file(&path).unwrap());
    assert!(
        fresh
            .keys()
            .iter()
            .any(|k| k.id == old_key && k.retired_at.is_some())
    );
    app.vault = fresh;
    for id in &ids {
        assert!(app.payload(id).await.is_some());
    }
    assert_eq!(
        app.dead_letter_bodies().await,
        vec![b"not json, +375291230000".to_vec()]
    );
    let steps: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE actor = 'uidflow keys rotate' ORDER BY seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        steps,
        [
            "data_key_activated",
            "data_keys_rotated",
            "data_key_activated",
            "data_keys_rotated"
        ]
    );
    trail_verifies(&app).await;
    app.stop().await;
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn retention_erases_exactly_what_is_due() {
    let app = TestApp::spawn_pipeline("10m").await;
    let clerk_token = tokio_util::sync::CancellationToken::new();
    let clerk = spawn_clerk(&app, clerk_token.clone()).await;
    let people: Vec<Person> = (0..4).map(|n| Person::new(7_500 + n)).collect();
    let ids = app.publish_issues(&people).await;
    app.each_completed_once(&ids, &people).await;
    clerk_token.cancel();
    clerk.await.unwrap();
    // One unfinished application (waits for its code), and two dead letters: one settled.
    let waiting = Person::new(7_510).application("issue");
    let waiting_id = waiting["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&waiting).await;
    app.wait_for_status(&waiting_id, "awaiting_phone_confirmation")
        .await;
    app.publish_with_headers(
        "application",
        b"{not json 1",
        None,
        &json!({"x-clerk": "Hanna"}),
    )
    .await;
    app.publish("application", b"{not json 2", None).await;
    let letters = app.wait_for_dead_letters(2).await;
    // The two are parked in either order: told apart by their bodies.
    let id_of = |body: &[u8]| -> i64 {
        letters
            .iter()
            .find(|r| app.opened_body(r) == body)
            .expect("a dead letter with this body")
            .get("id")
    };
    let (settled, parked) = (id_of(b"{not json 1"), id_of(b"{not json 2"));
    uidflow::dead_letters::discard(&app.pool, settled, "test", "retention test")
        .await
        .unwrap();

    // Two ended applications, the unfinished one and both dead letters are made 91 days old.
    let aged = [ids[0].clone(), ids[1].clone(), waiting_id.clone()];
    sqlx::query(
        "UPDATE applications SET updated_at = now() - interval '91 days' WHERE application_id::text = ANY($1)",
    )
    .bind(&aged[..])
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE dead_letters SET state_changed_at = now() - interval '91 days', parked_at = now() - interval '91 days'")
        .execute(&app.pool)
        .await
        .unwrap();

    let ninety_days = std::time::Duration::from_secs(90 * 86_400);
    let due = uidflow::retention::due(&app.pool, ninety_days)
        .await
        .unwrap();
    assert_eq!((due.applications, due.dead_letters), (2, 1));
    let erased = uidflow::retention::apply(&app.pool, ninety_days)
        .await
        .unwrap();
    assert_eq!(erased, due);
    let again = uidflow::retention::apply(&app.pool, ninety_days)
        .await
        .unwrap();
    assert_eq!((again.applications, again.dead_letters), (0, 0));

    for (i, id) in ids.iter().enumerate() {
        let row = sqlx::query(
            "SELECT status, masked_identification_number, personal_data_erased_at IS NOT NULL AS erased
             FROM applications WHERE application_id = $1::uuid",
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let erased = i < 2;
        assert_eq!(row.get::<bool, _>("erased"), erased, "application {i}");
        assert_eq!(
            app.payload(id).await.is_none(),
            erased,
            "application {i}'s payload"
        );
        // The skeleton stays: status, masked number, the history, with the erasure in it.
        assert_eq!(row.get::<String, _>("status"), "completed");
        assert!(
            row.get::<String, _>("masked_identification_number")
                .contains("***")
        );
        let history = app.history(id).await;
        assert_eq!(
            history
                .iter()
                .filter(|(_, step, _)| step == "retention")
                .count(),
            usize::from(erased)
        );
        assert!(history.iter().any(|(status, _, _)| status == "completed"));
    }
    assert!(
        app.payload(&waiting_id).await.is_some(),
        "an unfinished application keeps its data"
    );
    let codes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM phone_confirmations WHERE application_id::text = ANY($1)",
    )
    .bind(&ids[..2])
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(codes, 0, "the erased applications' code hashes are gone");

    let rows = sqlx::query(
        "SELECT id, body, body_key_id, body_erased_at, headers FROM dead_letters ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let settled_row = rows
        .iter()
        .find(|r| r.get::<i64, _>("id") == settled)
        .unwrap();
    assert!(settled_row.get::<Vec<u8>, _>("body").is_empty());
    let headers: Value = settled_row.get("headers");
    assert!(
        headers.get("x-clerk").is_none() && headers.get("x-uid-error-kind").is_some(),
        "{headers}"
    );
    let parked_row = rows
        .iter()
        .find(|r| r.get::<i64, _>("id") == parked)
        .unwrap();
    assert_eq!(
        app.opened_body(parked_row),
        b"{not json 2",
        "a parked letter keeps its body"
    );
    // The run is in the audit trail, and the erasures in the histories keep every chain valid.
    let erased_in_trail: i64 = sqlx::query_scalar(
        "SELECT (detail->>'applications')::int8 FROM audit_log WHERE action = 'personal_data_erased'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(erased_in_trail, 2);
    trail_verifies(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_subject_export_holds_the_persons_data_and_nobody_elses() {
    let app = TestApp::spawn_pipeline("10m").await;
    let clerk_token = tokio_util::sync::CancellationToken::new();
    let clerk = spawn_clerk(&app, clerk_token.clone()).await;
    let (person, other) = (Person::new(7_601), Person::new(7_602));
    let issued = app.complete(&person, "issue").await;
    app.complete(&other, "issue").await;
    let blocked = app.complete(&person, "block").await;
    clerk_token.cancel();
    clerk.await.unwrap();
    // An invalid application (a landline), and a dead letter that names the person: the same
    // id again with other content.
    let mut bad = person.application("issue");
    bad["phone"] = Value::from("+375170000000");
    app.publish_application(&bad).await;
    let bad_id = bad["application_id"].as_str().unwrap().to_owned();
    app.wait_for_status(&bad_id, "rejected").await;
    bad["document"]["number"] = Value::from("MP7654321");
    app.publish_application(&bad).await;
    app.wait_for_dead_letters(1).await;

    // Lower case and spaces, as a request may write it: normalised.
    let asked = format!(" {} ", person.identification_number.to_lowercase());
    let number = uidflow::domain::IdentificationNumber::parse(&asked).unwrap();
    let export =
        uidflow::subject::export(&app.pool, &app.vault, &number, "operator-1", "request 42")
            .await
            .unwrap();
    let ids: BTreeSet<&str> = export["applications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["application_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([issued.as_str(), blocked.as_str(), bad_id.as_str()])
    );
    let first = &export["applications"][0];
    assert_eq!(
        first["application"]["applicant"]["identification_number"],
        Value::from(person.identification_number.as_str())
    );
    assert!(!first["history"].as_array().unwrap().is_empty());
    assert_eq!(
        export["registry"]["uid"],
        Value::from(person.identification_number.as_str())
    );
    assert_eq!(export["registry"]["status"], "blocked");
    assert_eq!(export["dead_letters"].as_array().unwrap().len(), 1);
    let text = export.to_string();
    assert!(!text.contains(&other.identification_number) && !text.contains(&other.phone));
    assert!(!text.contains("$argon2id$"), "no hash of a secret");
    // The export is in the audit trail: who, why, whom (masked), and the trail verifies.
    let recorded: (String, String, String) = sqlx::query_as(
        "SELECT actor, subject, detail->>'reason' FROM audit_log WHERE action = 'subject_export'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let masked = uidflow::domain::mask_identification_number(&person.identification_number);
    assert_eq!(recorded, ("operator-1".into(), masked, "request 42".into()));
    assert!(!recorded.1.contains(&person.identification_number[8..11]));
    trail_verifies(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_payload_changed_in_the_database_fails_its_application_with_the_reason() {
    use uidflow::system::Part;
    let options = crate::common::without(&[Part::VerifyIdentity]);
    let app = TestApp::spawn_pipeline_with("10m", options).await;
    let application = Person::new(7_701).application("issue");
    let id = application["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&application).await;
    app.wait_for_status(&id, "verifying_identity").await;
    // One bit of the sealed payload flipped, as by someone with database access.
    sqlx::query(
        "UPDATE application_payloads
         SET sealed = set_byte(sealed, 30, get_byte(sealed, 30) # 1) WHERE application_id = $1::uuid",
    )
    .bind(&id)
    .execute(&app.pool)
    .await
    .unwrap();
    let only = RunOptions {
        parts: [Part::VerifyIdentity].into_iter().collect(),
        vault: Some(Arc::clone(&app.vault)),
        ..RunOptions::default()
    };
    let step = uidflow_cli::start(&app.settings, &app.pool, &only, Default::default())
        .await
        .expect("the verify-identity part starts");
    app.wait_for_status(&id, "failed").await;
    let letters = app.wait_for_dead_letters(1).await;
    let error: String = letters[0].get("error");
    assert!(
        error.contains("personal data cannot be opened") && error.contains("changed or moved"),
        "{error}"
    );
    assert_eq!(app.sim().mvd_requests(), 0, "nothing was sent to the MVD");
    step.system.shutdown().await;
    app.stop().await;
}
