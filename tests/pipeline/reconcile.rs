//! The reconciler proves nothing is stuck: work items lost in a purged step queue, a purged
//! wait queue or a deleted queue are sent again, and every application still ends exactly
//! once, with no side effect repeated.

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::options::{QueueDeleteOptions, QueuePurgeOptions};
use uidflow::reconcile::{self, WaitsFor};
use uidflow::route;
use uidflow::sim::Faults;
use uidflow::system::{Part, RunOptions};
use uidflow::topology::{retry_queue, step_queue};

use crate::common::{Person, TestApp, spawn_clerk, wait_until};

/// The reconciler's notes in an application's history.
async fn revivals(app: &TestApp, id: &str) -> Vec<String> {
    app.history(id)
        .await
        .into_iter()
        .filter(|(_, step, _)| step == "reconciler")
        .filter_map(|(_, _, detail)| detail)
        .collect()
}

#[tokio::test]
async fn work_items_purged_from_a_step_queue_are_listed_and_repaired() {
    // No verify-identity consumer yet: the work items wait in its queue. The periodic
    // reconciler is held off by a long grace; this test drives the rounds itself.
    let options = crate::common::without(&[Part::VerifyIdentity]);
    let app = TestApp::spawn_pipeline_env("10m", options, &[("RECONCILE_GRACE", "1h")]).await;
    let people: Vec<Person> = (0..12).map(|n| Person::new(4100 + n)).collect();
    let ids = app.publish_issues(&people).await;
    let queue = step_queue(route::VERIFY_IDENTITY);
    wait_until("the work items to wait in the step queue", || async {
        (app.queue_messages(&queue) == ids.len() as u64).then_some(())
    })
    .await;
    // Waiting in a queue that holds ready messages is a backlog, not a loss: nothing is
    // re-sent for them, however late they are.
    let sampler = uidflow::api::sampler::QueueSampler::new(app.settings.clone(), Duration::ZERO);
    let busy = reconcile::busy_steps(&sampler).await.unwrap();
    assert!(busy.contains(route::VERIFY_IDENTITY), "{busy:?}");
    let round = reconcile::repair(&app.pool, Duration::ZERO, &busy)
        .await
        .unwrap();
    assert!(round.ran && round.revived.is_empty(), "{round:?}");
    // The broker loses them.
    let purged = app
        .channel
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(purged as usize, ids.len());

    // Within the grace nothing is overdue; past it, each is, waiting for its first step.
    assert_eq!(
        reconcile::count_overdue(&app.pool, Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    let mut conn = app.pool.acquire().await.unwrap();
    let overdue = reconcile::overdue(&mut conn, Duration::ZERO, 100, false)
        .await
        .unwrap();
    drop(conn);
    let listed: BTreeSet<String> = overdue
        .iter()
        .map(|o| o.application_id.to_string())
        .collect();
    assert_eq!(listed, ids.iter().cloned().collect());
    for found in &overdue {
        assert_eq!(
            found.waits_for,
            WaitsFor::Step {
                step: route::VERIFY_IDENTITY,
                attempt: 1
            }
        );
    }

    // One repair round sends each work item again and notes it; the next round finds none
    // overdue within a grace of a minute (the deadline moved on).
    let busy = reconcile::busy_steps(&sampler).await.unwrap();
    assert!(busy.is_empty(), "the purged step queue is empty: {busy:?}");
    let round = reconcile::repair(&app.pool, Duration::ZERO, &busy)
        .await
        .unwrap();
    assert!(round.ran);
    assert_eq!(round.revived.len(), ids.len());
    assert!(round.unrepairable.is_empty());
    assert_eq!(
        reconcile::count_overdue(&app.pool, Duration::from_secs(60))
            .await
            .unwrap(),
        0
    );
    wait_until("the re-sent work items in the step queue", || async {
        (app.queue_messages(&queue) == ids.len() as u64).then_some(())
    })
    .await;
    for id in &ids {
        let notes = revivals(&app, id).await;
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("step verify-identity, attempt 1"),
            "{notes:?}"
        );
    }

    // The step's consumer starts (another process): every application ends once.
    let only = RunOptions {
        parts: [Part::VerifyIdentity].into_iter().collect(),
        vault: Some(std::sync::Arc::clone(&app.vault)),
        ..RunOptions::default()
    };
    let second = uidflow_cli::start(&app.settings, &app.pool, &only, Default::default())
        .await
        .expect("the verify-identity part starts");
    let token = tokio_util::sync::CancellationToken::new();
    let clerk = spawn_clerk(&app, token.clone()).await;
    app.each_completed_once(&ids, &people).await;
    token.cancel();
    clerk.await.unwrap();
    second.system.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn uidflow_run_revives_work_lost_in_a_purged_wait_queue_and_a_deleted_queue() {
    // Retries wait 10 s, then 20 s; the reconciler looks every 200 ms with a grace of 2 s.
    let app = TestApp::spawn_pipeline_env(
        "10m",
        RunOptions::default(),
        &[
            ("RETRY_DELAYS", "10s,20s"),
            ("RECONCILE_GRACE", "2s"),
            ("RECONCILE_INTERVAL", "200ms"),
            // Ten MVD failures in a row would open its circuit breaker (that pause is
            // tests/pipeline/breaker.rs's subject, not this test's).
            ("BREAKER_FAILURES", "1000"),
        ],
    )
    .await;
    let people: Vec<Person> = (0..10).map(|n| Person::new(4200 + n)).collect();
    // Every first MVD call fails: each application's attempt 2 waits in the 10 s queue.
    app.sim().set_mvd_faults(Faults {
        fail_next: vec![503; people.len()],
        ..Faults::default()
    });
    let ids = app.publish_issues(&people).await;
    wait_until("every attempt 1 to fail", || async {
        let failed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM application_history WHERE detail LIKE 'attempt 1 failed%'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        (failed == ids.len() as i64).then_some(())
    })
    .await;
    app.wait_for_outbox_drained().await;
    // The broker loses the retries (each waits 10 s in its queue), and the register step's
    // queue with whatever is in it.
    let wait_queue = retry_queue(route::VERIFY_IDENTITY, Duration::from_secs(10));
    let purged = app
        .channel
        .queue_purge(wait_queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(
        purged as usize,
        ids.len(),
        "every retry was in its wait queue"
    );
    let register = step_queue(route::REGISTER);
    app.channel
        .queue_delete(register.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();

    // The reconciler sends each attempt 2 again (the attempt is kept: no retry gained or
    // lost); the register queue is declared again by its consumer or the relay.
    let token = tokio_util::sync::CancellationToken::new();
    let clerk = spawn_clerk(&app, token.clone()).await;
    app.each_completed_once(&ids, &people).await;
    token.cancel();
    clerk.await.unwrap();
    for id in &ids {
        // Revived at least once; a revival after attempt 1 failed sends attempt 2 (the
        // attempt is kept). (On a slow machine a revival may come before attempt 1 ran: a
        // duplicate, which the ledger makes harmless.)
        let history = app.history(id).await;
        let failed_at = history
            .iter()
            .position(|(_, _, d)| {
                d.as_deref()
                    .is_some_and(|d| d.starts_with("attempt 1 failed"))
            })
            .expect("attempt 1 failed");
        let after: Vec<&String> = history[failed_at..]
            .iter()
            .filter(|(_, step, _)| step == "reconciler")
            .filter_map(|(_, _, d)| d.as_ref())
            .collect();
        assert!(
            !after.is_empty(),
            "{id}: revived after its retry was lost: {history:#?}"
        );
        assert!(
            after
                .iter()
                .all(|n| n.contains("step verify-identity, attempt 2")),
            "{id}: {after:?}"
        );
    }
    assert_eq!(
        app.ready_count(&register).await,
        0,
        "the register queue exists again and is drained"
    );
    assert_eq!(
        reconcile::count_overdue(&app.pool, Duration::ZERO)
            .await
            .unwrap(),
        0,
        "nothing unfinished is left"
    );
    app.stop().await;
}
