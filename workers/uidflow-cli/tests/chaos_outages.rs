//! The outages form of the reliability suite, short (issue 12): `uidflow chaos --outages
//! --short --json` runs three real `uidflow run` processes while the MVD is down and then the
//! SMS gateway is down, each several times longer than all the retries, with the circuit
//! breakers covering them. Nothing is restarted (no broker, no database, no kills), so it may
//! run beside other tests. This test reads its JSON report.

use std::process::Command;

use serde_json::Value;

#[test]
fn outages_longer_than_the_retries_fail_nothing_and_spend_no_attempt_while_a_breaker_is_open() {
    let output = Command::new(env!("CARGO_BIN_EXE_uidflow"))
        .args([
            "chaos",
            "--outages",
            "--short",
            "--json",
            "--log-dir",
            env!("CARGO_TARGET_TMPDIR"),
        ])
        // Cheap argon2: the code paths are the same, the cost is not the point.
        .env("ARGON2_MEMORY_KIB", "1024")
        .env("ARGON2_ITERATIONS", "1")
        .output()
        .expect("uidflow chaos runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let kept = format!("{}/chaos-outages-short.json", env!("CARGO_TARGET_TMPDIR"));
    let _ = std::fs::write(&kept, &output.stdout);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("uidflow chaos printed no JSON report ({error}); stderr:\n{stderr}")
    });
    let failed: Vec<String> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["ok"] != true)
        .map(|c| format!("{}: {}", c["name"], c["detail"]))
        .collect();
    assert!(
        failed.is_empty(),
        "failed checks:\n{}\n\nstderr:\n{stderr}",
        failed.join("\n")
    );
    assert!(output.status.success());
    assert_eq!(report["form"], "outages-short");

    // Both outages happened, each longer than all the retries.
    let budget = report["settings"]["retry_budget_seconds"].as_f64().unwrap();
    for kind in ["mvd_down", "sms_down"] {
        let seconds = report["faults"][kind]["seconds_max"]
            .as_f64()
            .unwrap_or(0.0);
        assert!(seconds > 2.0 * budget, "{kind}: {seconds} s");
    }
    assert!(report["faults"].get("kill_9").is_none());
    assert!(report["faults"].get("rabbitmq_restart").is_none());
    // Nothing failed or doubled, no attempt was spent while a breaker was open, and both
    // breakers opened and saved attempts.
    let apps = &report["applications"];
    assert!(apps["submitted"].as_u64().unwrap() >= 20, "{apps}");
    assert_eq!(apps["lost"], 0);
    assert_eq!(apps["duplicated"], 0);
    assert_eq!(
        apps["ended_by_status"]["failed"].as_u64().unwrap_or(0),
        0,
        "{apps}"
    );
    let breakers = &report["breakers"];
    assert_eq!(breakers["attempts_spent_while_open"], 0, "{breakers}");
    assert!(
        breakers["attempts_saved"].as_i64().unwrap() > 0,
        "{breakers}"
    );
    for system in ["mvd", "sms"] {
        assert!(
            breakers["opened"][system].as_i64().unwrap() >= 1,
            "{system}: {breakers}"
        );
    }
}
