//! The example binary as a user runs it: the whole CLI with the custom handler types.

#[path = "../../../crates/veltrix/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::{Engine, post, wait_until};

const PROGRAM: &str = env!("CARGO_BIN_EXE_custom-handler");
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/veltrix.toml");

fn run(args: &[&str], data_dir: &Path) -> (i32, String) {
    let out = Command::new(PROGRAM)
        .args(args)
        .env("VELTRIX_DATA_DIR", data_dir)
        .output()
        .expect("run the example");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn events_are_redacted_by_the_custom_processor_and_spooled_by_the_custom_sink() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("veltrix.toml");
    let text = std::fs::read_to_string(CONFIG)
        .unwrap()
        .replace(
            "${VELTRIX_DATA_DIR:-./veltrix-data}",
            &data.display().to_string(),
        )
        .replace("${VELTRIX_API_ADDRESS:-127.0.0.1:8081}", "127.0.0.1:0")
        .replace("${VELTRIX_INGEST_ADDRESS:-127.0.0.1:8080}", "127.0.0.1:0");
    std::fs::write(&config, text).unwrap();
    let engine = Engine::start_program(PROGRAM, &config);
    let events: Vec<Value> = (0..20)
        .map(|i| {
            json!({"specversion": "1.0", "type": "user.created", "source": "/signup",
                   "id": format!("u-{i}"), "data": {"name": format!("user {i}"), "email": "x@y", "card": "4111"}})
        })
        .collect();
    let (status, body) = post(
        &engine.ingest,
        "application/x-ndjson",
        support::ndjson(&events),
        &[],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let spool = data.join("spool");
    let count = || {
        std::fs::read_dir(&spool)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(
        wait_until(async || count() == 20).await,
        "{} of 20 spooled",
        count()
    );
    let delivered: Value =
        serde_json::from_slice(&std::fs::read(spool.join("u-7.json")).unwrap()).unwrap();
    assert_eq!(
        delivered["data"],
        json!({"name": "user 7", "redacted": true})
    );
    assert!(engine.stop().success());
}

#[test]
fn validate_reports_a_bad_custom_option_at_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(CONFIG)
        .unwrap()
        .replace(r#"fields = ["email", "card"]"#, r#"feilds = ["email"]"#);
    std::fs::write(&config, &text).unwrap();
    let (code, out) = run(&["validate", config.to_str().unwrap()], dir.path());
    assert_eq!(code, 78, "{out}");
    let line = text.lines().position(|l| l.contains("feilds")).unwrap() + 1;
    assert!(
        out.contains(&format!("bad.toml:{line}:")) && out.contains("unknown option `feilds`"),
        "{out}"
    );
}

#[test]
fn config_tests_run_the_custom_processor() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run(&["test", CONFIG], dir.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("e-mail and card are removed"), "{out}");
}

#[test]
fn the_plain_veltrix_binary_does_not_know_the_custom_types() {
    // The registry is what makes `redact` valid: without it the same file is an error.
    let loaded = veltrix_core_check(CONFIG);
    assert!(
        loaded.contains("unknown processor type \"redact\""),
        "{loaded}"
    );
}

fn veltrix_core_check(path: &str) -> String {
    let extensions = veltrix_engine::handler::Plugins::new().extensions();
    match veltrix_core::config::load_with(Path::new(path), 2, &extensions) {
        Ok(_) => "loaded".to_owned(),
        Err(diagnostics) => diagnostics.iter().map(ToString::to_string).collect(),
    }
}
