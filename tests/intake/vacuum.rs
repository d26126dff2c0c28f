use uidflow::vacuum;

use crate::common::{TestApp, wait_until};

/// Dead outbox rows are reclaimed by uidflow itself when, and only when, the server's
/// autovacuum is off (as on the CI machines).
#[tokio::test]
async fn dead_outbox_rows_are_vacuumed_when_autovacuum_is_off() {
    let app = TestApp::prepare().await;
    let dead = 12_000;
    sqlx::query(
        "INSERT INTO outbox (exchange, routing_key, body)
         SELECT 'uid.events', 'application.filler', '\\x00' FROM generate_series(1, $1)",
    )
    .bind(dead)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM outbox")
        .execute(&app.pool)
        .await
        .unwrap();
    let dead_rows = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'outbox'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    // The statistics reach the shared view within a second of the commit.
    wait_until("the dead rows to show in the statistics", || async {
        (dead_rows().await >= dead).then_some(())
    })
    .await;
    let autovacuum: bool = sqlx::query_scalar("SELECT current_setting('autovacuum')::bool")
        .fetch_one(&app.pool)
        .await
        .unwrap();

    let vacuumed = vacuum::reclaim_once(&app.pool).await.unwrap();

    if autovacuum {
        assert!(vacuumed.is_empty(), "autovacuum's job: {vacuumed:?}");
    } else {
        assert_eq!(vacuumed, ["outbox"]);
        wait_until("the vacuum to show in the statistics", || async {
            (dead_rows().await == 0).then_some(())
        })
        .await;
        assert!(
            vacuum::due(&app.pool).await.unwrap().is_empty(),
            "nothing is due right after"
        );
    }
    app.stop().await;
}
