use std::collections::BTreeSet;

use serde_json::Value;
use sqlx::Row;

use crate::common::{TestApp, example, wait_until};

/// Publishes every example of `schemas/examples/*.json` and checks each against
/// `schemas/expected-outcomes.json`: every rule of CONTRACT §2.1 ends as `invalid_application`
/// naming exactly its fields, the valid ones are `received`, the malformed ones are parked.
#[tokio::test]
async fn every_example_ends_as_the_manifest_says() {
    let manifest: Value =
        serde_json::from_str(include_str!("../../schemas/expected-outcomes.json")).unwrap();
    let manifest = manifest.as_object().unwrap();
    let dir = format!("{}/schemas/examples", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    files.sort();
    let listed: BTreeSet<_> = manifest.keys().cloned().collect();
    assert_eq!(
        files.iter().cloned().collect::<BTreeSet<_>>(),
        listed,
        "every example has an expected outcome"
    );

    let app = TestApp::spawn().await;
    for name in &files {
        let body = example(name);
        let id = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
            v.get("application_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        app.publish("application", &body, id.as_deref()).await;
    }

    let parked_expected = manifest
        .values()
        .filter(|e| e["outcome"] == "dead_letter")
        .count();
    let stats = std::sync::Arc::clone(&app.system.as_ref().unwrap().intake_stats);
    wait_until("every example handled", || async {
        (stats.total() as usize == files.len()).then_some(())
    })
    .await;
    let dead = app.wait_for_dead_letters(parked_expected as i64).await;

    for (name, expected) in manifest {
        let body = example(name);
        match expected["outcome"].as_str().unwrap() {
            "received" => {
                let id = expected["application_id"].as_str().unwrap();
                assert_eq!(
                    app.status_of(id).await.as_deref(),
                    Some("verifying_identity"),
                    "{name}"
                );
            }
            "rejected" => {
                let id = expected["application_id"].as_str().unwrap();
                let row = sqlx::query(
                    "SELECT status, reason FROM applications WHERE application_id = $1::uuid",
                )
                .bind(id)
                .fetch_one(&app.pool)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(row.get::<String, _>("status"), "rejected", "{name}");
                let reason: Value = row.get("reason");
                assert_eq!(reason["code"], expected["reason"], "{name}");
                let got: BTreeSet<String> = reason["errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["field"].as_str().unwrap().to_owned())
                    .collect();
                let want: BTreeSet<String> = expected["fields"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_owned())
                    .collect();
                assert_eq!(
                    got, want,
                    "{name}: fields at fault; errors were {}",
                    reason["errors"]
                );
                for error in reason["errors"].as_array().unwrap() {
                    let message = error["message"].as_str().unwrap();
                    assert!(
                        message.len() > 5,
                        "{name}: a plain sentence, got {message:?}"
                    );
                }
                let history: Vec<String> = sqlx::query_scalar(
                    "SELECT status FROM application_history WHERE application_id = $1::uuid ORDER BY id",
                )
                .bind(id)
                .fetch_all(&app.pool)
                .await
                .unwrap();
                assert_eq!(history, ["received", "rejected"], "{name}");
            }
            "dead_letter" => {
                let row = dead
                    .iter()
                    .find(|r| app.opened_body(r) == body)
                    .unwrap_or_else(|| panic!("{name}: parked byte for byte"));
                assert_eq!(
                    row.get::<String, _>("error_kind"),
                    expected["kind"].as_str().unwrap(),
                    "{name}"
                );
            }
            other => panic!("{name}: unknown outcome {other}"),
        }
    }
    app.stop().await;
}
