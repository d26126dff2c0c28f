//! `uidflow audit` as an operator runs it: the local key made once and its public key
//! printed, a checkpoint, `verify` passing with counts and failing with exit 1 and one line
//! that names the changed row, and a bundle exported to a file that `verify-bundle` accepts,
//! pinned to the key, and refuses once one byte of it is edited.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;
use uuid::Uuid;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn uidflow(dir: &Path, database_url: &str, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_uidflow"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("uidflow runs");
    Run {
        code: output.status.code().expect("an exit, not a signal"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("uidflow-audit-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn an_operator_verifies_the_trail_and_carries_a_bundle_to_another_machine() {
    let app = common::TestApp::prepare().await;
    let url = format!("postgres://postgres@127.0.0.1:5432/{}", app.database);
    let dir = scratch_dir();

    // Without AUDIT_KEY_FILE and with no local key, verify has nothing to trust: exit 2.
    let run = uidflow(&dir, &url, &["audit", "verify"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("set AUDIT_KEY_FILE"), "{}", run.stderr);

    // The local key is made once, owner-only, and its public key printed.
    let run = uidflow(&dir, &url, &["audit", "public-key"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let public = run.stdout.trim().to_owned();
    assert_eq!(public.len(), 64, "{public}");
    let key_file = dir.join(".uidflow/keys/audit-signing.key");
    assert!(run.stderr.contains("audit signing key"), "{}", run.stderr);
    assert_eq!(mode(&key_file), 0o600);
    let again = uidflow(&dir, &url, &["audit", "public-key"]).await;
    assert_eq!(again.stdout.trim(), public);
    assert!(again.stderr.is_empty(), "made once: {}", again.stderr);

    // An application with three history rows (the trigger chains them).
    let id = Uuid::new_v4();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO applications (application_id, status, content_hmac)
             VALUES ('{id}', 'registering', '\\x01');
         INSERT INTO application_history (application_id, status, step, detail) VALUES
             ('{id}', 'received', 'intake', NULL),
             ('{id}', 'verifying_identity', 'verify-identity', 'found by the MVD'),
             ('{id}', 'registering', 'confirm-phone', NULL)"
    )))
    .execute(&app.pool)
    .await
    .unwrap();

    let run = uidflow(&dir, &url, &["audit", "verify"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("audit trail valid: 1 chain(s) with 3 history row(s)")
            && run.stdout.contains("no checkpoint yet"),
        "{}",
        run.stdout
    );
    let run = uidflow(&dir, &url, &["audit", "checkpoint"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("signed 1 chain head(s)"),
        "{}",
        run.stdout
    );
    let run = uidflow(&dir, &url, &["audit", "checkpoint"]).await;
    assert!(run.stdout.contains("none made"), "{}", run.stdout);
    let run = uidflow(&dir, &url, &["audit", "verify"]).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout.contains("1 checkpoint(s) verified"),
        "{}",
        run.stdout
    );

    // The bundle, on "another machine": no database, the key pinned.
    let bundle = dir.join("bundle.json");
    let run = uidflow(
        &dir,
        &url,
        &[
            "audit",
            "export",
            &id.to_string(),
            "--out",
            bundle.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(mode(&bundle), 0o600);
    let offline = scratch_dir();
    let nowhere = "postgres://nobody@127.0.0.1:1/none";
    let bundle_path = bundle.to_str().unwrap();
    let run = uidflow(
        &offline,
        nowhere,
        &[
            "audit",
            "verify-bundle",
            bundle_path,
            "--public-key",
            &public,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with(&format!(
            "bundle valid: application {id}, 3 history row(s); rows 1 to 3 signed by checkpoint"
        )),
        "{}",
        run.stdout
    );
    let run = uidflow(&offline, nowhere, &["audit", "verify-bundle", bundle_path]).await;
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("the bundle's own key was used"));
    let other = "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737";
    let run = uidflow(
        &offline,
        nowhere,
        &["audit", "verify-bundle", bundle_path, "--public-key", other],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("not by the expected key"),
        "{}",
        run.stdout
    );

    // One byte of the bundle edited.
    let text = std::fs::read_to_string(&bundle).unwrap();
    let edited = text.replacen("found by the MVD", "found by the MVE", 1);
    assert_ne!(edited, text);
    std::fs::write(&bundle, edited).unwrap();
    let run = uidflow(
        &offline,
        nowhere,
        &[
            "audit",
            "verify-bundle",
            bundle_path,
            "--public-key",
            &public,
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.starts_with("bundle INVALID: row ")
            && run.stdout.contains("(seq 2): content changed"),
        "{}",
        run.stdout
    );

    // A row changed in the database: exit 1 and one line naming it.
    let changed: i64 = sqlx::query_scalar(
        "UPDATE application_history SET detail = 'found by nobody'
         WHERE application_id = $1 AND seq = 2 RETURNING id",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let run = uidflow(&dir, &url, &["audit", "verify"]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        run.stdout,
        format!(
            "audit trail INVALID: application {id}, history row {changed} (seq 2): content changed (its hash does not match its content and the row before it)\n"
        )
    );
    let run = uidflow(&dir, &url, &["audit", "verify", "--json"]).await;
    assert_eq!(run.code, 1);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["problems"][0]["row_id"], changed);
    assert_eq!(report["problems"][0]["what"]["kind"], "content_changed");
    // Checked with another key, the checkpoint is named as someone else's.
    let run = uidflow(
        &dir,
        &url,
        &["audit", "verify", "--public-key", other, "--json"],
    )
    .await;
    assert_eq!(run.code, 1);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let kinds: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["what"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["content_changed", "signed_by_another_key"]);
    let run = uidflow(&dir, &url, &["audit", "verify", "--public-key", "xyz"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("--public-key"), "{}", run.stderr);

    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(offline).unwrap();
    app.stop().await;
}
