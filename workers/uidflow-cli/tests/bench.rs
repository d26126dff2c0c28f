//! `uidflow bench` end to end, small: it must drive every application to its end state,
//! in-process and with uidflow as a separate process, and report what it measured. Its
//! numbers are not asserted (performance is measured by running the bench, not by tests);
//! what is asserted is that the report is complete and agrees with what was asked.

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_uidflow"))
        .arg("bench")
        .args(args)
        // Few deliveries in flight, so few database connections: the two tests run at once,
        // and each of their pools may grow to 3 × concurrency (PostgreSQL allows 100).
        .args(["--json", "--concurrency", "4"])
        // Cheap argon2: the code paths are the same, the cost is not the point.
        .env("ARGON2_MEMORY_KIB", "1024")
        .env("ARGON2_ITERATIONS", "1")
        .output()
        .expect("uidflow bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "uidflow bench failed:\n{stderr}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("no JSON report ({error}); stderr:\n{stderr}"))
}

fn assert_complete(report: &Value, n: u64) {
    assert_eq!(report["applications"], n);
    assert_eq!(
        report["outcomes"],
        serde_json::json!({"completed": n}),
        "every application completes: {report:#}"
    );
    assert!(report["applications_per_second"].as_f64().unwrap() > 0.0);
    for what in ["end_to_end", "verifying_identity", "registering"] {
        let latency = &report["latency_ms"][what];
        let (p50, p99, max) = (
            latency["p50"].as_f64().unwrap(),
            latency["p99"].as_f64().unwrap(),
            latency["max"].as_f64().unwrap(),
        );
        assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{what}: {latency}");
    }
    assert!(report["resources"]["saturated"].is_string(), "{report:#}");
}

#[test]
fn a_block_run_with_its_floor_completes_every_application_and_reports_the_ratio() {
    let report = bench(&["-n", "40", "--mix", "block", "--floor"]);
    assert_complete(&report, 40);
    assert_eq!(report["mode"], "backlog");
    assert_eq!(report["floor"]["hops_per_application"], 4);
    let ratio = report["ratio_to_floor"].as_f64().unwrap();
    let expected = report["applications_per_second"].as_f64().unwrap()
        / report["floor"]["applications_per_second"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{ratio} vs {expected}");
    assert!(report["uidflow_process"].is_null(), "in-process by default");
    // Per block: 5 status events (received … completed) and 3 work items.
    assert_eq!(report["broker_publishes_per_application"], 8.0);
}

#[test]
fn an_issue_run_at_a_steady_rate_in_a_separate_process_reports_that_process() {
    let report = bench(&["-n", "12", "--mix", "issue", "--rate", "20", "--separate"]);
    assert_complete(&report, 12);
    assert_eq!(report["mode"], "rate");
    // The clerk typed every code back: issue passes through phone confirmation.
    assert!(report["latency_ms"]["awaiting_phone_confirmation"].is_object());
    let child = &report["uidflow_process"];
    assert!(child["pid"].as_u64().unwrap() != u64::from(std::process::id()));
    let rss = child["peak_rss_mib"].as_f64().unwrap();
    assert!(rss > 1.0, "the child's own peak RSS: {child}");
    assert!(
        report["resources"]["cpu_cores"]["bench_driver"].is_number(),
        "{report:#}"
    );
}
