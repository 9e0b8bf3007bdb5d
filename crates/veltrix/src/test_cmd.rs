//! `veltrix test FILE… [--format json]`: runs the `[[tests]]` of config files against the real
//! processors (`veltrix_engine::testing`); exit 0 when every test passes, 1 when one fails, 78
//! when a config is invalid (its diagnostics as `validate` prints them).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{Value as Json, json};
use veltrix_core::config::Diagnostic;
use veltrix_engine::testing::{self, EventOutcome, TestOutcome};

use crate::cli::exit;

/// How `veltrix test` reports.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TestFormat {
    /// For people: one line per test, a diff per failure.
    Text,
    /// One JSON document on stdout, for tools.
    Json,
}

/// The tests of one file, or why they could not run.
enum FileReport {
    Invalid(Vec<Diagnostic>),
    Ran(Vec<TestOutcome>),
}

pub(crate) fn test(files: &[PathBuf], format: TestFormat) -> u8 {
    let reports: Vec<(String, FileReport)> = files
        .iter()
        .map(|file| {
            let report = match crate::load_config(file) {
                Ok(loaded) => {
                    FileReport::Ran(testing::run_config_tests(&loaded.config, &crate::plugins()))
                }
                Err(diagnostics) => FileReport::Invalid(diagnostics),
            };
            (file.display().to_string(), report)
        })
        .collect();
    match format {
        TestFormat::Text => print!("{}", render_text(&reports)),
        TestFormat::Json => println!("{:#}", render_json(&reports)),
    }
    exit_code(&reports)
}

fn exit_code(reports: &[(String, FileReport)]) -> u8 {
    let invalid = reports
        .iter()
        .any(|(_, r)| matches!(r, FileReport::Invalid(_)));
    let failed = reports.iter().any(|(_, r)| match r {
        FileReport::Ran(outcomes) => outcomes.iter().any(|o| !o.passed()),
        FileReport::Invalid(_) => false,
    });
    if invalid {
        exit::CONFIG
    } else if failed {
        exit::FAILURE
    } else {
        exit::OK
    }
}

fn render_text(reports: &[(String, FileReport)]) -> String {
    let mut out = String::new();
    let (mut passed, mut failed, mut invalid) = (0, 0, 0);
    for (file, report) in reports {
        match report {
            FileReport::Invalid(diagnostics) => {
                invalid += 1;
                for d in diagnostics {
                    let _ = write!(out, "{d}");
                }
                let errors = diagnostics.iter().filter(|d| d.is_error()).count();
                let _ = writeln!(out, "{file}: invalid ({errors} error(s)): no test ran\n");
            }
            FileReport::Ran(outcomes) if outcomes.is_empty() => {
                let _ = writeln!(
                    out,
                    "{file}: no tests (add [[tests]] tables: see docs/configuration.md)\n"
                );
            }
            FileReport::Ran(outcomes) => {
                let _ = writeln!(out, "{file}");
                for outcome in outcomes {
                    if outcome.passed() {
                        passed += 1;
                        let _ = writeln!(out, "  ok    {} ({})", outcome.name, outcome.pipeline);
                    } else {
                        failed += 1;
                        render_failure(&mut out, outcome);
                    }
                }
                out.push('\n');
            }
        }
    }
    let _ = write!(
        out,
        "{} test(s): {passed} passed, {failed} failed",
        passed + failed
    );
    if invalid > 0 {
        let _ = write!(out, "; {invalid} invalid config(s)");
    }
    out.push('\n');
    out
}

fn render_failure(out: &mut String, outcome: &TestOutcome) {
    let _ = writeln!(
        out,
        "  FAIL  {} ({})  at {}",
        outcome.name, outcome.pipeline, outcome.location
    );
    for failure in &outcome.failures {
        let _ = writeln!(out, "        {}", failure.message);
        for m in &failure.mismatches {
            let path = if m.path.is_empty() {
                "(the event)"
            } else {
                &m.path
            };
            let actual = m
                .actual
                .as_ref()
                .map_or_else(|| "(missing)".to_owned(), Json::to_string);
            let _ = writeln!(out, "          {path}");
            let _ = writeln!(out, "            - expected: {}", m.expected);
            let _ = writeln!(out, "            + actual:   {actual}");
        }
    }
    let _ = writeln!(out, "        what happened:");
    for r in &outcome.results {
        let what = match &r.outcome {
            EventOutcome::Delivered { event, sink } => format!("delivered {event} (sink {sink})"),
            EventOutcome::Filtered => "filtered".to_owned(),
            EventOutcome::Dropped(by) => format!("dropped by {by}"),
            EventOutcome::Aggregated => "aggregated".to_owned(),
            EventOutcome::DeadLettered(why) => format!("dead-lettered: {why}"),
            EventOutcome::NotReceived(why) => format!("not received: {why}"),
        };
        let _ = writeln!(out, "          input[{}] (id {}): {what}", r.index, r.id);
    }
    for (i, event) in outcome.emitted.iter().enumerate() {
        let _ = writeln!(out, "          emitted[{i}]: {event}");
    }
}

fn render_json(reports: &[(String, FileReport)]) -> Json {
    let mut passed = 0;
    let mut failed = 0;
    let files: Vec<Json> = reports
        .iter()
        .map(|(file, report)| match report {
            FileReport::Invalid(diagnostics) => json!({
                "file": file,
                "valid": false,
                "diagnostics": diagnostics.iter().map(diagnostic_json).collect::<Vec<_>>(),
                "tests": [],
            }),
            FileReport::Ran(outcomes) => {
                let tests: Vec<Json> = outcomes
                    .iter()
                    .map(|o| {
                        if o.passed() {
                            passed += 1;
                        } else {
                            failed += 1;
                        }
                        outcome_json(o)
                    })
                    .collect();
                json!({"file": file, "valid": true, "diagnostics": [], "tests": tests})
            }
        })
        .collect();
    json!({"passed": passed, "failed": failed, "files": files})
}

fn diagnostic_json(d: &Diagnostic) -> Json {
    json!({
        "severity": d.severity.as_str(),
        "code": d.code,
        "file": d.file,
        "line": d.line,
        "col": d.col,
        "message": d.message,
        "hint": d.hint,
    })
}

fn outcome_json(o: &TestOutcome) -> Json {
    let results: Vec<Json> = o
        .results
        .iter()
        .map(|r| {
            let (outcome, detail) = match &r.outcome {
                EventOutcome::Delivered { event, sink } => {
                    ("delivered", json!({"event": event, "sink": sink}))
                }
                EventOutcome::Filtered => ("filtered", json!({})),
                EventOutcome::Dropped(by) => ("dropped", json!({"by": by})),
                EventOutcome::Aggregated => ("aggregated", json!({})),
                EventOutcome::DeadLettered(why) => ("dead_lettered", json!({"reason": why})),
                EventOutcome::NotReceived(why) => ("not_received", json!({"reason": why})),
            };
            let mut entry = json!({"index": r.index, "id": r.id, "outcome": outcome});
            if let (Json::Object(entry), Json::Object(detail)) = (&mut entry, detail) {
                entry.extend(detail);
            }
            entry
        })
        .collect();
    let failures: Vec<Json> = o
        .failures
        .iter()
        .map(|f| {
            let mismatches: Vec<Json> = f
                .mismatches
                .iter()
                .map(|m| json!({"path": m.path, "expected": m.expected, "actual": m.actual, "missing": m.actual.is_none()}))
                .collect();
            json!({"message": f.message, "mismatches": mismatches})
        })
        .collect();
    json!({
        "name": o.name,
        "pipeline": o.pipeline,
        "location": {"file": o.location.file, "line": o.location.line, "col": o.location.col},
        "passed": o.passed(),
        "results": results,
        "emitted": o.emitted,
        "failures": failures,
    })
}
