//! The shared fault scenarios (`todo-faults`) with the crate's own Rust client: with retries,
//! 0 errors reach the application and every logical write leaves exactly one row; without (the
//! control), the same fault surfaces errors. The Python and Node clients run the same
//! scenarios from their own test suites (`clients/python/tests`, `clients/node/test`).
//!
//! `todo-faults` starts `todo-server` from the same target directory (`cargo test --workspace`
//! builds it) on a database of its own on `TODO_TEST_POSTGRES_URL`.

use std::process::Command;

fn run(scenario: &str, retries: &str) {
    run_with(scenario, retries, &[]);
}

fn run_with(scenario: &str, retries: &str, args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_todo-faults"))
        .args(["--scenario", scenario, "--rust", "--retries", retries])
        .args(args)
        .output()
        .expect("run todo-faults");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    let report: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| {
            panic!(
                "no report from todo-faults: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    assert!(
        output.status.success(),
        "{scenario} with retries {retries}: {report} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    if retries == "on" {
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(report["missing"], 0, "{report}");
        assert_eq!(report["duplicated"], 0, "{report}");
        assert_eq!(report["rows"], report["writes"], "{report}");
    } else {
        assert!(report["errors"].as_u64().unwrap_or(0) > 0, "{report}");
    }
}

#[test]
fn rust_client_rides_out_responses_cut_after_their_headers() {
    run("cut-after-headers", "on");
    run("cut-after-headers", "off");
}

#[test]
fn rust_client_rides_out_responses_cut_before_their_headers() {
    // More writes and more concurrency than the other scenarios: the lost-response case is
    // the one every retry exists for (each cut also kills the other calls on its connection).
    run_with(
        "cut-before-headers",
        "on",
        &["--writes", "300", "--concurrency", "8"],
    );
    run("cut-before-headers", "off");
}

#[test]
fn rust_client_rides_out_a_postgres_outage() {
    run("postgres-outage", "on");
    run("postgres-outage", "off");
}

#[test]
fn rust_client_rides_out_a_server_restart() {
    run("server-restart", "on");
    run("server-restart", "off");
}
