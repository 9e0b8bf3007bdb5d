//! The live dashboard (`GET /` on the admin address) in a real browser: the real binary with a
//! token-guarded admin API, events posted all along, and `tests/browser/dashboard.test.mjs`
//! (playwright-core driving Debian's headless Chromium) checking that the page asks for the
//! token, draws every stage, shows live numbers that change, marks the bottleneck, and reports
//! an unreachable engine. It saves a screenshot to `target/dashboard.png`.
//!
//! Needs node, Chromium (`/usr/bin/chromium`, or `CHROMIUM`) and
//! `npm ci --prefix crates/veltrix/tests/browser`; `.ci/run` installs them. Without them the
//! test says SKIPPED and passes, unless `VELTRIX_REQUIRE_SERVICES=1` (CI), where it fails.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

mod support;
use support::*;

const TOKEN: &str = "dashboard-test-token";

/// Two queues, a fast file pipeline reading both and a slower HTTP pipeline (a receiver that
/// takes 40 ms per request, small batches, one worker), which becomes the bottleneck.
const TOPOLOGY: &str = r#"
[queues.critical]
types = ["payment.*"]
priority = 0
[queues.default]
types = ["*"]
[pipelines.archive]
from = ["critical", "default"]
workers = 2
sink = "archive"
[pipelines.notify]
from = ["critical"]
workers = 1
batch_events_max = 5
sink = "webhook"
[sinks.archive]
type = "file"
path = "{dir}/out/archive.ndjson"
[sinks.webhook]
type = "http"
url = "{receiver}"
"#;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Whether everything the browser test needs is installed; if not, what is missing.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node {
        missing.push("node is not on PATH".to_owned());
    }
    if !chromium().exists() {
        missing.push(format!(
            "{} is missing (apt-get install -y chromium)",
            chromium().display()
        ));
    }
    if !browser_dir()
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push(
            "playwright-core is not installed (npm ci --prefix crates/veltrix/tests/browser)"
                .to_owned(),
        );
    }
    missing
}

/// Runs `node dashboard.test.mjs` to completion (at most `limit`), returning whether it passed
/// and everything it printed.
fn run_browser_test(api: &str, screenshot: &Path, limit: Duration) -> (bool, String) {
    let mut child = Command::new("node")
        .arg("dashboard.test.mjs")
        .arg(api)
        .arg(screenshot)
        .current_dir(browser_dir())
        .env("VELTRIX_DASHBOARD_TOKEN", TOKEN)
        .env("CHROMIUM", chromium())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = format!(
        "--- node stdout ---\n{}--- node stderr ---\n{}",
        out.join().unwrap(),
        err.join().unwrap()
    );
    match status {
        Some(status) => (status.success(), format!("{text}(exit: {status})")),
        None => (false, format!("{text}(killed after {limit:?})")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_shows_the_live_topology_in_a_real_browser() {
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        let what = missing.join("; ");
        if std::env::var("VELTRIX_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!("the dashboard browser test cannot run: {what} (VELTRIX_REQUIRE_SERVICES=1)");
        }
        // Straight to the stderr handle rather than `eprintln!`, which the test harness
        // captures and hides when the test passes: a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n==================================================================\n\
             SKIPPED: dashboard browser test: {what}\n\
             install: apt-get install -y chromium && npm ci --prefix crates/veltrix/tests/browser\n\
             =================================================================="
        );
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    receiver.set_delay(Duration::from_millis(40));
    let path = config(dir.path(), &TOPOLOGY.replace("{receiver}", &receiver.url));
    // The admin API with a token: the page must ask for it (a real 401, not a mock).
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen("[api]\n", &format!("[api]\ntoken = \"{TOKEN}\"\n"), 1);
    std::fs::write(&path, text).unwrap();
    let engine = Engine::start(&path);

    // Events flow for the whole test: 10 per request, 20 requests a second, 30 % payments.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let poster = {
        let (stop, accepted, url) = (stop.clone(), accepted.clone(), engine.ingest.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let batch: Vec<_> = (0..10)
                    .map(|_| {
                        n += 1;
                        let ty = if n % 10 < 3 {
                            "payment.captured"
                        } else {
                            "order.created"
                        };
                        json!({"specversion": "1.0", "id": format!("d{n}"), "source": "/dashboard-test", "type": ty, "data": {"n": n}})
                    })
                    .collect();
                let (status, _) = post(&url, "application/x-ndjson", ndjson(&batch), &[]).await;
                if status == 202 {
                    accepted.fetch_add(10, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap();
    let screenshot = workspace.join("target/dashboard.png");
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let api = engine.api.clone();
    let shot = screenshot.clone();
    let (passed, output) = tokio::task::spawn_blocking(move || {
        run_browser_test(&api, &shot, Duration::from_secs(180))
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    poster.await.unwrap();
    eprintln!("{output}");
    assert!(passed, "the browser test failed:\n{output}");
    assert!(accepted.load(Ordering::Relaxed) > 0, "events were posted");
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG"),
        "a PNG at {}",
        screenshot.display()
    );
    eprintln!("screenshot: {}", screenshot.display());
    assert!(engine.stop().success());
}
