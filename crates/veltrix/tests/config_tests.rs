//! `veltrix test` and `veltrix config` end to end, through the real binary: every example's
//! `[[tests]]` pass (this is how CI runs `veltrix test` on every example), failures exit 1 with
//! a diff, invalid configs exit 78, `--format json` is one document, and
//! `docs/configuration.md` is exactly `veltrix config reference`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_veltrix");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn veltrix(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(repo_root())
        .env_remove("VELTRIX_DATA_DIR")
        .output()
        .expect("run veltrix")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

const TOPOLOGY: &str = r#"
[queues.default]
types = ["*"]

[pipelines.archive]
from = ["default"]
sink = "out"
processors = [
  { type = "filter", condition = '.type != "debug.ping"' },
  { type = "remap", source = '.data.total = int!(.data.amount) * 2' },
]

[sinks.out]
type = "blackhole"
"#;

const PASSING: &str = r#"
[[tests]]
name = "doubles"
pipeline = "archive"
input = [{ type = "order.created", source = "/shop", id = "o-1", data = { amount = 20 } }]
expect = [{ data = { total = 40 } }]

[[tests]]
name = "pings are dropped"
pipeline = "archive"
input = [{ type = "debug.ping", source = "/probe" }]
expect_none = true

[[tests]]
name = "a bad amount is dead-lettered"
pipeline = "archive"
input = [{ type = "order.created", source = "/shop", id = "o-2", data = { amount = "x" } }]
expect_dead_letter = "remap"
"#;

const FAILING: &str = r#"
[[tests]]
name = "wrong total"
pipeline = "archive"
input = [{ type = "order.created", source = "/shop", id = "o-1", data = { amount = 20 } }]
expect = [{ data = { total = 400, currency = "EUR" } }]
"#;

#[test]
fn every_example_passes_its_tests() {
    let dir = repo_root().join("examples");
    let mut examples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 2, "{examples:?}");
    for example in examples {
        let file = example.display().to_string();
        let output = veltrix(&["test", &file]);
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(0), "{file}:\n{text}");
        assert!(
            !text.contains("no tests"),
            "{file} carries no [[tests]]:\n{text}"
        );
        assert!(text.contains(", 0 failed"), "{text}");
    }
}

#[test]
fn passing_tests_exit_0_and_list_each_test() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_config(dir.path(), "ok.toml", &format!("{TOPOLOGY}{PASSING}"));
    let output = veltrix(&["test", &file]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("  ok    doubles (archive)\n"), "{text}");
    assert!(
        text.contains("  ok    a bad amount is dead-lettered (archive)\n"),
        "{text}"
    );
    assert!(text.ends_with("3 test(s): 3 passed, 0 failed\n"), "{text}");
}

#[test]
fn a_failing_test_exits_1_with_a_diff_per_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_config(
        dir.path(),
        "fail.toml",
        &format!("{TOPOLOGY}{PASSING}{FAILING}"),
    );
    let output = veltrix(&["test", &file]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let line = format!("{TOPOLOGY}{PASSING}").matches('\n').count() + 2;
    let expected = format!(
        "  FAIL  wrong total (archive)  at {file}:{line}:1\n\
         \x20       delivered event 0 (from input[0], id o-1) does not match expect[0]\n\
         \x20         data.currency\n\
         \x20           - expected: \"EUR\"\n\
         \x20           + actual:   (missing)\n\
         \x20         data.total\n\
         \x20           - expected: 400\n\
         \x20           + actual:   40\n\
         \x20       what happened:\n\
         \x20         input[0] (id o-1): delivered {{\"data\":{{\"amount\":20,\"total\":40}},"
    );
    assert!(
        text.contains(&expected),
        "{text}\n--- expected ---\n{expected}"
    );
    assert!(text.ends_with("4 test(s): 3 passed, 1 failed\n"), "{text}");
}

#[test]
fn json_format_is_one_document_for_tools() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_config(
        dir.path(),
        "fail.toml",
        &format!("{TOPOLOGY}{PASSING}{FAILING}"),
    );
    let output = veltrix(&["test", &file, "--format", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert_eq!(
        (doc["passed"].as_u64(), doc["failed"].as_u64()),
        (Some(3), Some(1))
    );
    let tests = &doc["files"][0]["tests"];
    assert_eq!(doc["files"][0]["valid"], true);
    assert_eq!(tests[1]["results"][0]["outcome"], "filtered");
    assert_eq!(tests[2]["results"][0]["outcome"], "dead_lettered");
    assert!(
        tests[2]["results"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("processor 1 (remap)")),
        "{doc:#}"
    );
    let failing = &tests[3];
    assert_eq!(failing["name"], "wrong total");
    assert_eq!(failing["passed"], false);
    assert_eq!(failing["results"][0]["event"]["data"]["total"], 40);
    let mismatches = &failing["failures"][0]["mismatches"];
    assert_eq!(mismatches[0]["path"], "data.currency");
    assert_eq!(mismatches[0]["missing"], true);
    assert_eq!(mismatches[1]["path"], "data.total");
    assert_eq!(
        (&mismatches[1]["expected"], &mismatches[1]["actual"]),
        (&Value::from(400), &Value::from(40))
    );
}

#[test]
fn an_invalid_config_exits_78_with_located_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = FAILING.replace("pipeline = \"archive\"", "pipeline = \"archiv\"");
    let file = write_config(dir.path(), "bad.toml", &format!("{TOPOLOGY}{bad}"));
    let output = veltrix(&["test", &file]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(78), "{text}");
    let line = format!("{TOPOLOGY}{bad}")
        .lines()
        .position(|l| l.contains("archiv\""))
        .expect("line")
        + 1;
    assert!(text.contains(&format!("{file}:{line}:12: error")), "{text}");
    assert!(text.contains("unknown pipeline `archiv`"), "{text}");
    assert!(text.contains("did you mean `archive`?"), "{text}");

    let output = veltrix(&["test", &file, "--format", "json"]);
    assert_eq!(output.status.code(), Some(78));
    let doc: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(doc["files"][0]["valid"], false);
    assert_eq!(doc["files"][0]["diagnostics"][0]["line"], line);
}

#[test]
fn a_config_without_tests_passes_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_config(dir.path(), "none.toml", TOPOLOGY);
    let output = veltrix(&["test", &file]);
    assert_eq!(output.status.code(), Some(0));
    assert!(
        stdout(&output).contains(": no tests"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn docs_configuration_md_is_the_generated_reference() {
    let output = veltrix(&["config", "reference"]);
    assert_eq!(output.status.code(), Some(0));
    let committed = std::fs::read_to_string(repo_root().join("docs/configuration.md"))
        .expect("docs/configuration.md");
    assert!(
        committed == stdout(&output),
        "docs/configuration.md is stale: regenerate it with \
         `cargo run -- config reference > docs/configuration.md`"
    );
}

#[test]
fn config_default_prints_the_built_in_config_which_validates() {
    let output = veltrix(&["config", "default"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert_eq!(text, veltrix_core::config::DEFAULT_CONFIG_TOML);
    assert!(text.starts_with("# "), "commented");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_config(dir.path(), "default.toml", &text);
    let output = veltrix(&["validate", &file]);
    assert_eq!(output.status.code(), Some(0), "{:?}", output);
}
