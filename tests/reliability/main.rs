//! Reliability of the intake against a corpus of malformed and hostile inputs: each one ends as
//! a clear rejection or a dead letter parked with its bytes, and nothing gets past or breaks.

#[path = "../common/mod.rs"]
mod common;
mod corpus;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use crate::common::{DEADLINE, TestApp, wait_until};
use crate::corpus::{Case, Expect, LIMIT, corpus};

/// A multiset of bodies.
fn multiset<'a>(bodies: impl IntoIterator<Item = &'a [u8]>) -> BTreeMap<&'a [u8], usize> {
    let mut counted = BTreeMap::new();
    for body in bodies {
        *counted.entry(body).or_insert(0) += 1;
    }
    counted
}

/// A plain sentence for a person: not empty, not padded, short enough to hold no body.
fn assert_sentence(text: &str, case: &Case) {
    assert!(!text.trim().is_empty(), "{}: an empty error", case.name);
    assert_eq!(text.trim(), text, "{}: a padded error {text:?}", case.name);
    assert!(
        text.chars().count() < 300,
        "{}: an error of {} characters echoes too much: {text:?}",
        case.name,
        text.chars().count()
    );
}

/// Names the cases with no committed outcome yet, to make a timeout readable.
async fn unhandled(app: &TestApp, cases: &[&Case]) -> Vec<String> {
    let parked: Vec<Vec<u8>> = app.dead_letter_bodies().await;
    let parked: BTreeSet<&[u8]> = parked.iter().map(Vec::as_slice).collect();
    let recorded: Vec<Uuid> = sqlx::query_scalar("SELECT application_id FROM applications")
        .fetch_all(&app.pool)
        .await
        .expect("applications");
    let recorded: BTreeSet<Uuid> = recorded.into_iter().collect();
    cases
        .iter()
        .filter(|case| {
            !parked.contains(case.body.as_slice())
                && !case.application_id.is_some_and(|id| recorded.contains(&id))
        })
        .map(|case| match case.fixme {
            Some(bug) => format!("{} ({:?}) — known bug: {bug}", case.name, case.expect),
            None => format!("{} ({:?})", case.name, case.expect),
        })
        .collect()
}

/// Waits until every case in `cases` has its outcome, then checks each one and the totals.
async fn check(app: &TestApp, cases: &[&Case], queued: &mut Vec<Vec<u8>>) {
    let mut by_expectation: BTreeMap<&str, usize> = BTreeMap::new();
    for case in cases {
        *by_expectation.entry(case.expect.label()).or_insert(0) += 1;
    }
    let count = |label: &str| by_expectation.get(label).copied().unwrap_or(0);
    let stats = Arc::clone(&app.system.as_ref().unwrap().intake_stats);
    let handled = tokio::time::timeout(
        DEADLINE - Duration::from_secs(1),
        wait_until(&format!("{} intake outcomes", cases.len()), || async {
            (stats.total() as usize >= cases.len()).then_some(())
        }),
    )
    .await;
    if handled.is_err() {
        let missing = unhandled(app, cases).await;
        panic!(
            "{} of {} cases have no outcome after {DEADLINE:?}: {missing:#?}",
            cases.len() - stats.total() as usize,
            cases.len()
        );
    }
    assert_eq!(stats.total() as usize, cases.len(), "one outcome per case");
    let counters = [
        ("malformed", &stats.malformed),
        ("invalid", &stats.invalid),
        ("rejected", &stats.rejected),
        ("received", &stats.received),
    ];
    for (label, counter) in counters {
        assert_eq!(
            counter.load(Ordering::Relaxed) as usize,
            count(label),
            "{label} outcomes"
        );
    }
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 0);
    assert_eq!(stats.conflicts.load(Ordering::Relaxed), 0);

    // Dead letters: the exact bytes, the right kind, a short sentence.
    let rows = sqlx::query("SELECT body, body_key_id, body_erased_at, error_kind, error, application_id FROM dead_letters")
        .fetch_all(&app.pool)
        .await
        .expect("dead letters");
    let parked_count = count("malformed") + count("invalid");
    assert_eq!(rows.len(), parked_count, "one dead letter per parked case");
    let parked: HashMap<Vec<u8>, (String, String, Option<Uuid>)> = rows
        .iter()
        .map(|r| {
            (
                app.opened_body(r),
                (r.get("error_kind"), r.get("error"), r.get("application_id")),
            )
        })
        .collect();

    // Applications: status and the fields at fault.
    let rows = sqlx::query("SELECT application_id, status, reason FROM applications")
        .fetch_all(&app.pool)
        .await
        .expect("applications");
    assert_eq!(
        rows.len(),
        count("rejected") + count("received"),
        "one application per rejected or received case, none for parked ones"
    );
    let applications: HashMap<Uuid, (String, Option<Value>)> = rows
        .iter()
        .map(|r| (r.get("application_id"), (r.get("status"), r.get("reason"))))
        .collect();

    for case in cases {
        match &case.expect {
            Expect::Malformed | Expect::Invalid => {
                let (kind, error, application_id) = parked.get(&case.body).unwrap_or_else(|| {
                    panic!("{}: no dead letter with its exact bytes", case.name)
                });
                assert_eq!(kind, case.expect.label(), "{}: {error}", case.name);
                assert_eq!(*application_id, None, "{}", case.name);
                assert_sentence(error, case);
                if case.body.len() > LIMIT {
                    assert!(error.contains("limit is 65536"), "{}: {error}", case.name);
                }
            }
            Expect::Rejected { fields } => {
                let id = case.application_id.unwrap();
                let (status, reason) = applications
                    .get(&id)
                    .unwrap_or_else(|| panic!("{}: no application {id}", case.name));
                let reason = reason.as_ref().unwrap_or(&Value::Null);
                assert_eq!(status, "rejected", "{}: {reason}", case.name);
                assert_eq!(
                    reason["code"], "invalid_application",
                    "{}: {reason}",
                    case.name
                );
                let errors = reason["errors"].as_array().cloned().unwrap_or_default();
                assert!(!errors.is_empty(), "{}: no field errors", case.name);
                let got: BTreeSet<&str> = errors
                    .iter()
                    .map(|e| e["field"].as_str().unwrap_or_default())
                    .collect();
                for field in fields {
                    assert!(
                        got.contains(field),
                        "{}: {field} is not among the errors {reason}",
                        case.name
                    );
                }
                for error in &errors {
                    assert_sentence(error["message"].as_str().unwrap_or_default(), case);
                }
            }
            Expect::Received => {
                let id = case.application_id.unwrap();
                let (status, reason) = applications
                    .get(&id)
                    .unwrap_or_else(|| panic!("{}: no application {id}", case.name));
                assert_eq!(status, "verifying_identity", "{}: {reason:?}", case.name);
            }
        }
    }

    // Every dead letter also reached the dead-letter queue, byte for byte. The outbox
    // publishes at least once (a publish whose confirm or delete was lost goes out again),
    // so a second copy is allowed only as the same bytes of a dead letter already copied.
    let copies = app
        .take("uid.dead-letter", parked_count - queued.len())
        .await;
    queued.extend(copies.into_iter().map(|d| d.data));
    app.wait_for_outbox_drained().await;
    let left = app.ready_count("uid.dead-letter").await as usize;
    for again in app.take("uid.dead-letter", left).await {
        let position = queued.iter().position(|q| *q == again.data);
        assert!(
            position.is_some(),
            "an extra dead-letter copy that repeats none of the parked bodies"
        );
        eprintln!("a dead-letter copy arrived twice (at-least-once publishing)");
    }
    assert_eq!(
        multiset(queued.iter().map(Vec::as_slice)),
        multiset(parked.keys().map(Vec::as_slice)),
        "the queued copies are the parked bodies"
    );

    // The injections did nothing: every table is still there and answers.
    for table in [
        "applications",
        "application_history",
        "dead_letters",
        "outbox",
        "uid_registry",
    ] {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&app.pool)
                .await
                .unwrap_or_else(|e| panic!("{table} is intact: {e}"));
        assert!(n >= 0);
    }
    let applications_left: i64 = sqlx::query_scalar("SELECT count(*) FROM applications")
        .fetch_one(&app.pool)
        .await
        .expect("applications intact");
    assert_eq!(
        applications_left as usize,
        count("rejected") + count("received")
    );
}

#[tokio::test]
async fn every_hostile_input_ends_as_a_clear_rejection_or_a_parked_dead_letter() {
    let started = Instant::now();
    let cases = corpus();
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    let distinct: BTreeSet<&[u8]> = cases.iter().map(|c| c.body.as_slice()).collect();
    assert_eq!(distinct.len(), cases.len(), "every body is distinct");
    let ids: Vec<Uuid> = cases.iter().filter_map(|c| c.application_id).collect();
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "every application id is distinct"
    );
    for case in &cases {
        let recorded = matches!(case.expect, Expect::Rejected { .. } | Expect::Received);
        assert_eq!(
            case.application_id.is_some(),
            recorded,
            "{}: an application id exactly where an application is recorded",
            case.name
        );
    }
    let mut by_expectation: BTreeMap<&str, usize> = BTreeMap::new();
    for case in &cases {
        *by_expectation.entry(case.expect.label()).or_insert(0) += 1;
    }
    let count = |label: &str| by_expectation.get(label).copied().unwrap_or(0);

    let app = TestApp::spawn().await;
    // Cases known to hit a product bug go last, so that everything else is checked first.
    let (clean, known_bugs): (Vec<&Case>, Vec<&Case>) =
        cases.iter().partition(|c| c.fixme.is_none());
    eprintln!(
        "hostile corpus: {} cases — {} malformed, {} invalid, {} rejected, {} received ({} known to hit a product bug, published last)",
        cases.len(),
        count("malformed"),
        count("invalid"),
        count("rejected"),
        count("received"),
        known_bugs.len()
    );
    let mut published: Vec<&Case> = Vec::new();
    let mut queued = Vec::new();
    for batch in [clean, known_bugs] {
        if batch.is_empty() {
            continue;
        }
        for case in &batch {
            app.publish("application", &case.body, case.message_id.as_deref())
                .await;
        }
        published.extend(batch);
        check(&app, &published, &mut queued).await;
        eprintln!(
            "hostile corpus: {} cases checked after {:.1?}",
            published.len(),
            started.elapsed()
        );
    }
    app.stop().await;
}
