//! `uidflow run` works as a role with data rights only (`uidflow::db::RUNTIME_ROLE`), and that
//! role can do no DDL.

use secrecy::ExposeSecret;
use sqlx::{Connection, PgConnection};
use uidflow::system::RunOptions;
use uuid::Uuid;

use crate::common::{Person, TestApp};

/// SQLSTATE insufficient_privilege.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

fn sqlstate(result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> Option<String> {
    match result {
        Ok(done) => panic!("expected a refusal, got {done:?}"),
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
        Err(other) => panic!("expected a database error, got {other}"),
    }
}

#[tokio::test]
async fn the_pipeline_runs_as_the_runtime_role_which_cannot_do_ddl() {
    // Migrated as the owner (postgres), which also creates and grants uidflow_runtime.
    let app = TestApp::prepare_pipeline("30s").await;
    let role = format!("uidflow_test_run_{}", Uuid::new_v4().simple());
    let admin = |sql: String| {
        let pool = app.pool.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .expect("admin statement")
        }
    };
    admin(format!(
        "CREATE ROLE {role} LOGIN IN ROLE {}",
        uidflow::db::RUNTIME_ROLE
    ))
    .await;
    let mut settings = app.settings.clone();
    let url = format!("postgres://{role}@127.0.0.1:5432/{}", app.database);
    settings.database_url = url.clone().into();
    assert_eq!(uidflow::db::pending_migrations(&app.pool).await.unwrap(), 0);

    // The whole pipeline, started as `uidflow run` under the restricted role.
    let mut app = app
        .start_pipeline_as(&settings, RunOptions::default())
        .await;
    // Ready: it reads `_sqlx_migrations` (granted read-only) like everything else.
    let ready = app.call("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    let person = Person::new(4822);
    let id = app.complete(&person, "issue").await;
    let uid: String = sqlx::query_scalar("SELECT uid FROM uid_registry WHERE phone = $1")
        .bind(&person.phone)
        .fetch_one(&app.pool)
        .await
        .expect("a UID was assigned");
    assert!(app.last_password_works(&uid, &person.phone).await, "{id}");
    app.shutdown_system().await;

    // No DDL for the role: neither a new table nor a change to one of ours.
    let mut conn = PgConnection::connect(&url).await.expect("the role logs in");
    let create = sqlx::raw_sql("CREATE TABLE intruder (x int)")
        .execute(&mut conn)
        .await;
    assert_eq!(sqlstate(create).as_deref(), Some(INSUFFICIENT_PRIVILEGE));
    let alter = sqlx::raw_sql("ALTER TABLE applications ADD COLUMN intruder int")
        .execute(&mut conn)
        .await;
    assert_eq!(sqlstate(alter).as_deref(), Some(INSUFFICIENT_PRIVILEGE));
    let drop = sqlx::raw_sql("DROP TABLE outbox").execute(&mut conn).await;
    assert_eq!(sqlstate(drop).as_deref(), Some(INSUFFICIENT_PRIVILEGE));
    let rewrite = sqlx::raw_sql("DELETE FROM _sqlx_migrations")
        .execute(&mut conn)
        .await;
    assert_eq!(sqlstate(rewrite).as_deref(), Some(INSUFFICIENT_PRIVILEGE));
    // The audit trail is append-only for it: no row of the history, the audit log or the
    // checkpoints can be changed or deleted, and no chain's head deleted.
    for statement in [
        "UPDATE application_history SET detail = 'rewritten'",
        "DELETE FROM application_history",
        "UPDATE audit_log SET actor = 'someone else'",
        "DELETE FROM audit_log",
        "UPDATE audit_checkpoints SET signature = '\\x00'",
        "DELETE FROM audit_checkpoints",
        "UPDATE audit_checkpoint_heads SET seq = 1",
        "DELETE FROM audit_checkpoint_heads",
        "DELETE FROM audit_heads",
        "DELETE FROM audit_log_head",
        "TRUNCATE application_history",
    ] {
        let refused = sqlx::raw_sql(statement).execute(&mut conn).await;
        assert_eq!(
            sqlstate(refused).as_deref(),
            Some(INSUFFICIENT_PRIVILEGE),
            "{statement}"
        );
    }
    // What it may do: append (the trigger chains the row) and make checkpoints.
    uidflow::audit::record(&mut conn, &role, "test_event", None, &serde_json::json!({}))
        .await
        .expect("the runtime role appends to the audit log");
    conn.close().await.unwrap();

    // It may not vacuum either: the vacuum task sees that once and stops (see `vacuum::run`).
    let restricted = sqlx::PgPool::connect(settings.database_url.expose_secret())
        .await
        .unwrap();
    assert_eq!(
        uidflow::vacuum::not_permitted(&restricted).await.unwrap(),
        vec!["outbox", "applications"]
    );
    assert!(
        uidflow::vacuum::not_permitted(&app.pool)
            .await
            .unwrap()
            .is_empty()
    );
    let made = uidflow::audit::checkpoint(&restricted, &app.audit_key)
        .await
        .expect("the runtime role makes checkpoints");
    assert!(
        matches!(made, uidflow::audit::Checkpointed::Made { .. }),
        "{made:?}"
    );
    let report = uidflow::audit::verify(&restricted, None, &[app.audit_key.verifying_key()])
        .await
        .expect("the runtime role reads the audit trail");
    assert!(report.ok() && report.rows > 0, "{report:?}");
    restricted.close().await;

    // With a migration pending, `uidflow run` under the role stops with one clear line instead
    // of trying DDL.
    let last = uidflow::db::MIGRATOR.iter().last().unwrap().version;
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(last)
        .execute(&app.pool)
        .await
        .unwrap();
    let error = uidflow::system::prepare(&settings, 2)
        .await
        .expect_err("the start is refused")
        .to_string();
    assert!(
        error.contains("1 migration(s) pending")
            && error.contains("run `uidflow migrate` as the database owner"),
        "{error}"
    );
    assert!(!error.contains('\n'), "one line: {error}");

    app.stop().await;
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .execute(&admin)
        .await
        .expect("drop the test role");
    admin.close().await;
}
