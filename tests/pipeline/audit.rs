//! The audit trail (`uidflow::audit`): a processed application's chain verifies and is what the
//! server computes; the intake's two history rows of one statement chain in order; and every
//! tampering with the history or the checkpoints as a database superuser is named by
//! `verify`, down to the row, except what docs/AUDIT.md says is out of reach.

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::json;
use sqlx::{Connection, PgConnection, Row};
use uidflow::applications::{self, HandOff, NewApplication};
use uidflow::audit::{self, Chain, Checkpointed, GENESIS, Problem, Report, What};
use uidflow::domain::{Kind, Status};
use uuid::Uuid;

use crate::common::{Person, TestApp};

async fn verify(app: &TestApp) -> Report {
    audit::verify(&app.pool, None, &[app.audit_key.verifying_key()])
        .await
        .expect("verify runs")
}

fn first(report: &Report) -> &Problem {
    report
        .first()
        .unwrap_or_else(|| panic!("verify found nothing: {report:?}"))
}

/// Runs `sql` on a connection of its own, as the database superuser.
async fn superuser(app: &TestApp, sql: &str) {
    let url = format!("postgres://postgres@127.0.0.1:5432/{}", app.database);
    let mut conn = PgConnection::connect(&url)
        .await
        .expect("superuser connects");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.expect("closes");
}

/// Like [`superuser`], with triggers off (`session_replication_role = replica`), as a forger
/// who writes around the chain's trigger.
async fn around_the_trigger(app: &TestApp, sql: &str) {
    superuser(
        app,
        &format!(
            "SET session_replication_role = replica; {sql}; SET session_replication_role = origin"
        ),
    )
    .await;
}

/// The tables of the audit trail.
const TABLES: [&str; 6] = [
    "application_history",
    "audit_heads",
    "audit_log",
    "audit_log_head",
    "audit_checkpoints",
    "audit_checkpoint_heads",
];

async fn snapshot(app: &TestApp) {
    for table in TABLES {
        superuser(app, &format!("CREATE TABLE saved_{table} AS TABLE {table}")).await;
    }
}

/// Puts the snapshot back and checks that the trail verifies again.
async fn restore(app: &TestApp) {
    let mut sql = format!("TRUNCATE {}", TABLES.join(", "));
    for table in TABLES {
        sql.push_str(&format!(
            "; INSERT INTO {table} SELECT * FROM saved_{table}"
        ));
    }
    around_the_trigger(app, &sql).await;
    let report = verify(app).await;
    assert!(report.ok(), "restored: {report:?}");
}

/// Records `count` applications with `notes` notes each, as the intake and the steps would.
async fn seed(app: &TestApp, count: usize, notes: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let id = Uuid::new_v4();
        let payload = json!({"application_id": id});
        let mut tx = app.pool.begin().await.unwrap();
        applications::insert_received(
            &mut tx,
            &app.vault,
            &NewApplication {
                application_id: id,
                kind: Some(Kind::Issue),
                issuing_service: Some("minsk-sov-oa"),
                canonical: b"{}",
                payload: &payload,
            },
            "intake",
            Some(HandOff {
                status: Status::VerifyingIdentity,
                step: "verify-identity",
                work: &[],
            }),
        )
        .await
        .unwrap();
        for n in 0..notes {
            applications::note(&mut tx, id, "verify-identity", &format!("note {n}: é"))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        ids.push(id);
    }
    ids
}

/// The history id of `id`'s row `seq`.
async fn row_id(app: &TestApp, id: Uuid, seq: i32) -> i64 {
    sqlx::query_scalar("SELECT id FROM application_history WHERE application_id = $1 AND seq = $2")
        .bind(id)
        .bind(seq)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn made(app: &TestApp, key: &SigningKey) -> i64 {
    match audit::checkpoint(&app.pool, key).await.unwrap() {
        Checkpointed::Made { id, .. } => id,
        other => panic!("no checkpoint made: {other:?}"),
    }
}

#[tokio::test]
async fn a_processed_applications_chain_verifies_and_is_the_servers_encoding() {
    let mut app = TestApp::spawn_pipeline("30s").await;
    let id: Uuid = app
        .complete(&Person::new(5101), "issue")
        .await
        .parse()
        .unwrap();
    app.shutdown_system().await;

    // What Rust recomputes is what the trigger hashed, byte for byte.
    let rows = sqlx::query(
        "SELECT application_id, seq, at, status, step, detail, hash,
                audit_history_content(application_id, seq, at, status, step, detail) AS content
         FROM application_history ORDER BY seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(rows.len() >= 6, "a completed issue has its history");
    let mut previous = GENESIS;
    for (n, row) in rows.iter().enumerate() {
        assert_eq!(row.get::<i32, _>("seq"), n as i32 + 1);
        let content = audit::history_content(
            row.get("application_id"),
            row.get("seq"),
            row.get("at"),
            row.get("status"),
            row.get("step"),
            row.get("detail"),
        );
        assert_eq!(content, row.get::<Vec<u8>, _>("content"), "row {n}");
        previous = audit::link(&previous, &content);
        assert_eq!(previous.to_vec(), row.get::<Vec<u8>, _>("hash"), "row {n}");
    }
    let head: (i64, Vec<u8>) =
        sqlx::query_as("SELECT seq, hash FROM audit_heads WHERE application_id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(head, (rows.len() as i64, previous.to_vec()));

    // The global chain, with a detail whose text form the server chooses.
    let mut conn = app.pool.acquire().await.unwrap();
    let detail = json!({"reason": "yearly", "n": 1.50, "nested": {"b": [1, "é\u{0}"]}, "a": null});
    audit::record(
        &mut conn,
        "operator",
        "key_rotation",
        Some("key-2"),
        &detail,
    )
    .await
    .unwrap();
    audit::record(&mut conn, "retention", "retention_run", None, &json!({}))
        .await
        .unwrap();
    drop(conn);
    let logged = sqlx::query(
        "SELECT seq, at, actor, action, subject, detail::text AS detail,
                audit_log_content(seq, at, actor, action, subject, detail) AS content
         FROM audit_log ORDER BY seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for row in &logged {
        let content = audit::log_content(
            row.get("seq"),
            row.get("at"),
            row.get("actor"),
            row.get("action"),
            row.get("subject"),
            row.get("detail"),
        );
        assert_eq!(content, row.get::<Vec<u8>, _>("content"));
    }

    let key = app.audit_key.clone();
    let before = verify(&app).await;
    assert!(before.ok(), "{before:?}");
    assert_eq!(before.unsealed_chains, 2, "the application and the log");
    match audit::checkpoint(&app.pool, &key).await.unwrap() {
        Checkpointed::Made { heads, .. } => assert_eq!(heads, 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        audit::checkpoint(&app.pool, &key).await.unwrap(),
        Checkpointed::NothingNew
    );
    let report = verify(&app).await;
    assert!(report.ok(), "{report:?}");
    assert_eq!(
        (
            report.chains,
            report.rows,
            report.log_rows,
            report.unsealed_chains
        ),
        (1, rows.len() as u64, 2, 0)
    );
    assert!(report.checkpoints >= 1 && report.latest_checkpoint.is_some());

    // From a time on: only what came after it is recomputed.
    let later = audit::verify(&app.pool, Some(Utc::now()), &[key.verifying_key()])
        .await
        .unwrap();
    assert!(
        later.ok() && later.rows == 0 && later.checkpoints == 0,
        "{later:?}"
    );
    app.stop().await;
}

/// seq, status, at, step, hash.
type HistoryRow = (i32, String, DateTime<Utc>, String, Vec<u8>);

#[tokio::test]
async fn the_intakes_two_history_rows_of_one_statement_chain_in_order() {
    let app = TestApp::prepare().await;
    let id = seed(&app, 1, 0).await[0];
    let rows: Vec<HistoryRow> = sqlx::query_as(
        "SELECT seq, status, at, step, hash FROM application_history
         WHERE application_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let statuses: Vec<(i32, &str)> = rows.iter().map(|r| (r.0, r.1.as_str())).collect();
    assert_eq!(statuses, [(1, "received"), (2, "verifying_identity")]);
    // The second row's trigger saw the first row's head: it chains to it.
    let first = audit::link(
        &GENESIS,
        &audit::history_content(id, 1, rows[0].2, &rows[0].1, &rows[0].3, None),
    );
    assert_eq!(rows[0].4, first.to_vec());
    let second = audit::link(
        &first,
        &audit::history_content(id, 2, rows[1].2, &rows[1].1, &rows[1].3, None),
    );
    assert_eq!(rows[1].4, second.to_vec());
    let head: i64 = sqlx::query_scalar("SELECT seq FROM audit_heads WHERE application_id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(head, 2);
    // A seq or hash given by an inserter is the trigger's to decide, not theirs.
    sqlx::query(
        "INSERT INTO application_history (application_id, status, step, seq, hash)
         VALUES ($1, 'received', 'forger', 1, '\\x00')",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
    assert!(verify(&app).await.ok());
    app.stop().await;
}

#[tokio::test]
async fn every_tampering_with_the_history_or_the_checkpoints_is_named() {
    let app = TestApp::prepare().await;
    let key = app.audit_key.clone();
    let ids = seed(&app, 3, 3).await; // seq 1 to 5 each
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let first_checkpoint = made(&app, &key).await;
    let mut conn = app.pool.acquire().await.unwrap();
    applications::note(
        &mut conn,
        b,
        "operator",
        "replayed by anna: the MVD is back",
    )
    .await
    .unwrap();
    drop(conn);
    let second_checkpoint = made(&app, &key).await;
    let report = verify(&app).await;
    assert!(report.ok(), "{report:?}");
    assert_eq!((report.chains, report.rows, report.checkpoints), (3, 16, 2));
    snapshot(&app).await;
    let a = Chain::Application(a);

    // A row's detail changed: that row is named.
    let changed = row_id(&app, ids[0], 2).await;
    superuser(
        &app,
        &format!("UPDATE application_history SET detail = 'nothing to see' WHERE id = {changed}"),
    )
    .await;
    let report = verify(&app).await;
    let problem = first(&report);
    assert_eq!(
        (problem.chain, problem.seq, problem.row_id, &problem.what),
        (Some(a), Some(2), Some(changed), &What::ContentChanged)
    );
    assert_eq!(report.problem_count, 1, "{report:?}");
    assert_eq!(
        problem.to_string(),
        format!(
            "application {}, history row {changed} (seq 2): content changed (its hash does not match its content and the row before it)",
            ids[0]
        )
    );
    restore(&app).await;

    // A middle row deleted: the row after the gap is named.
    let deleted = row_id(&app, ids[0], 3).await;
    let after = row_id(&app, ids[0], 4).await;
    superuser(
        &app,
        &format!("DELETE FROM application_history WHERE id = {deleted}"),
    )
    .await;
    let problem = first(&verify(&app).await).clone();
    assert_eq!(
        (problem.chain, problem.seq, problem.row_id, problem.what),
        (
            Some(a),
            Some(4),
            Some(after),
            What::RowsMissingBefore { after: 2 }
        )
    );
    restore(&app).await;

    // The last row deleted: the head and the checkpoint both say it is missing.
    let last = row_id(&app, ids[0], 5).await;
    superuser(
        &app,
        &format!("DELETE FROM application_history WHERE id = {last}"),
    )
    .await;
    let report = verify(&app).await;
    let problem = first(&report);
    assert_eq!(
        (problem.chain, problem.seq, &problem.what),
        (
            Some(a),
            Some(5),
            &What::RowsMissingAtEnd {
                ends_at: 4,
                head: 5
            }
        )
    );
    assert!(
        report.problems.iter().any(|p| p.chain == Some(a)
            && p.what
                == What::MissingSinceCheckpoint {
                    checkpoint: first_checkpoint
                }),
        "{report:?}"
    );
    restore(&app).await;

    // A row inserted around the trigger with the right hash (no key needed for that): past
    // the head, named.
    let forge = |hash: &str| {
        format!(
            "INSERT INTO application_history (application_id, at, status, step, detail, seq, hash)
             SELECT '{id}', '2026-12-03 10:00:00+00', 'completed', 'operator', 'forged', 6, {hash}
             FROM application_history WHERE application_id = '{id}' AND seq = 5",
            id = ids[0]
        )
    };
    around_the_trigger(
        &app,
        &forge(
            "sha256(hash || audit_history_content(application_id, 6, '2026-12-03 10:00:00+00', 'completed', 'operator', 'forged'))",
        ),
    )
    .await;
    let forged = row_id(&app, ids[0], 6).await;
    let problem = first(&verify(&app).await).clone();
    assert_eq!(
        (problem.chain, problem.seq, problem.row_id, problem.what),
        (
            Some(a),
            Some(6),
            Some(forged),
            What::RowInserted { head: Some(5) }
        )
    );
    restore(&app).await;
    // … and with a wrong hash: its content is named first.
    around_the_trigger(&app, &forge("sha256('x')")).await;
    let forged = row_id(&app, ids[0], 6).await;
    let report = verify(&app).await;
    let problem = first(&report);
    assert_eq!(
        (problem.row_id, &problem.what),
        (Some(forged), &What::ContentChanged)
    );
    assert_eq!(report.problem_count, 2, "and past the head: {report:?}");
    restore(&app).await;

    // A careful forger changes a row and recomputes every later hash and the head: the chain
    // adds up, and the checkpoint that signed the old head names the row it signed.
    let mut sql = format!(
        "UPDATE application_history SET detail = 'rewritten' WHERE application_id = '{}' AND seq = 2",
        ids[0]
    );
    for seq in 2..=5 {
        sql.push_str(&format!(
            "; UPDATE application_history h SET hash = sha256(p.hash || audit_history_content(h.application_id, h.seq, h.at, h.status, h.step, h.detail))
               FROM application_history p
               WHERE h.application_id = '{id}' AND h.seq = {seq} AND p.application_id = h.application_id AND p.seq = {seq} - 1",
            id = ids[0]
        ));
    }
    sql.push_str(&format!(
        "; UPDATE audit_heads SET hash = (SELECT hash FROM application_history WHERE application_id = '{id}' AND seq = 5) WHERE application_id = '{id}'",
        id = ids[0]
    ));
    superuser(&app, &sql).await;
    let report = verify(&app).await;
    let problem = first(&report);
    assert_eq!(
        (problem.chain, problem.seq, problem.row_id, &problem.what),
        (
            Some(a),
            Some(5),
            Some(last),
            &What::DiffersFromCheckpoint {
                checkpoint: first_checkpoint
            }
        )
    );
    assert_eq!(report.problem_count, 1, "{report:?}");
    restore(&app).await;

    // A checkpoint signed by another key (a forger's, stored with its public key).
    let other = SigningKey::from_bytes(&[9; 32]);
    let mut conn = app.pool.acquire().await.unwrap();
    applications::note(&mut conn, c, "operator", "discarded by ivan: a duplicate")
        .await
        .unwrap();
    drop(conn);
    let foreign = made(&app, &other).await;
    let problem = first(&verify(&app).await).clone();
    assert_eq!(
        (problem.checkpoint, problem.what),
        (
            Some(foreign),
            What::SignedByAnotherKey {
                public_key: hex::encode(other.verifying_key().as_bytes())
            }
        )
    );
    // Trusting both keys (an old key after a rotation), it verifies.
    let both = audit::verify(
        &app.pool,
        None,
        &[key.verifying_key(), other.verifying_key()],
    )
    .await
    .unwrap();
    assert!(both.ok(), "{both:?}");
    restore(&app).await;

    // A checkpoint re-signed by a forger who kept the trusted key's name.
    let hash: Vec<u8> = sqlx::query_scalar("SELECT hash FROM audit_checkpoints WHERE id = $1")
        .bind(second_checkpoint)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let forged = hex::encode(other.sign(&hash).to_bytes());
    superuser(
        &app,
        &format!(
            "UPDATE audit_checkpoints SET signature = '\\x{forged}' WHERE id = {second_checkpoint}"
        ),
    )
    .await;
    let problem = first(&verify(&app).await).clone();
    assert_eq!(
        (problem.checkpoint, problem.what),
        (Some(second_checkpoint), What::BadSignature)
    );
    restore(&app).await;

    // A checkpoint deleted: the next one does not follow anything.
    superuser(
        &app,
        &format!(
            "DELETE FROM audit_checkpoint_heads WHERE checkpoint_id = {first_checkpoint};
             DELETE FROM audit_checkpoints WHERE id = {first_checkpoint}"
        ),
    )
    .await;
    let problem = first(&verify(&app).await).clone();
    assert_eq!(problem.checkpoint, Some(second_checkpoint));
    assert!(
        matches!(&problem.what, What::CheckpointBroken { why } if why.contains("does not start")),
        "{problem}"
    );
    restore(&app).await;

    // A signed head changed (to hide a rewrite): the checkpoint's digest no longer adds up.
    superuser(
        &app,
        &format!(
            "UPDATE audit_checkpoint_heads SET seq = seq - 1 WHERE checkpoint_id = {first_checkpoint} AND application_id = '{}'",
            ids[0]
        ),
    )
    .await;
    let problem = first(&verify(&app).await).clone();
    assert_eq!(problem.checkpoint, Some(first_checkpoint));
    assert!(
        matches!(&problem.what, What::CheckpointBroken { why } if why.contains("heads were changed")),
        "{problem}"
    );
    restore(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn an_exported_bundle_verifies_offline_and_one_edited_byte_fails_it() {
    use uidflow::audit::bundle::{self, Bundle, BundleError};
    let app = TestApp::prepare().await;
    let key = app.audit_key.clone();
    let ids = seed(&app, 2, 2).await;
    let checkpoint = made(&app, &key).await;
    let mut conn = app.pool.acquire().await.unwrap();
    applications::note(&mut conn, ids[0], "operator", "after the checkpoint")
        .await
        .unwrap();
    drop(conn);

    let exported = bundle::export(&app.pool, ids[0], &key.verifying_key())
        .await
        .unwrap();
    assert_eq!(exported.history.len(), 5);
    assert_eq!(exported.checkpoint.as_ref().unwrap().id, checkpoint);
    let text = serde_json::to_string_pretty(&exported).unwrap();
    let read: Bundle = serde_json::from_str(&text).unwrap();
    let report = bundle::verify_bundle(&read, Some(&key.verifying_key())).unwrap();
    assert_eq!(
        (
            report.rows,
            report.signed_up_to,
            report.checkpoint,
            report.pinned
        ),
        (5, 4, checkpoint, true)
    );

    // One byte of a row's status.
    let edited = text.replacen("\"received\"", "\"receivee\"", 1);
    assert_eq!(edited.len(), text.len());
    let read: Bundle = serde_json::from_str(&edited).unwrap();
    assert!(matches!(
        bundle::verify_bundle(&read, Some(&key.verifying_key())),
        Err(BundleError::ContentChanged { seq: 1, .. })
    ));
    // One hex digit of the signature.
    let signature = &exported.checkpoint.as_ref().unwrap().signature;
    let flipped = format!(
        "{}{}",
        if signature.starts_with('0') { '1' } else { '0' },
        &signature[1..]
    );
    let read: Bundle = serde_json::from_str(&text.replacen(signature, &flipped, 1)).unwrap();
    assert_eq!(
        bundle::verify_bundle(&read, Some(&key.verifying_key())),
        Err(BundleError::BadSignature { checkpoint })
    );
    // Pinned to another key, the genuine bundle is refused.
    let other = SigningKey::from_bytes(&[3; 32]);
    assert!(matches!(
        bundle::verify_bundle(&exported, Some(&other.verifying_key())),
        Err(BundleError::OtherKey { .. })
    ));
    // No history, no bundle.
    assert!(
        bundle::export(&app.pool, Uuid::new_v4(), &key.verifying_key())
            .await
            .unwrap_err()
            .to_string()
            .contains("has no history")
    );
    app.stop().await;
}
