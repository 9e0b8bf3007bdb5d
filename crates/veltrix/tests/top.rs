//! End-to-end: `veltrix top` against the real engine — `--once` read directly, the live view
//! driven inside tmux (typed keys, screen read back with `capture-pane`).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;
use support::*;

const TOPOLOGY: &str = r#"
[queues.critical]
types = ["payment.*"]
priority = 0
[queues.bulk]
types = ["*"]
[pipelines.shipper]
from = ["critical", "bulk"]
sink = "outfile"
[sinks.outfile]
type = "file"
path = "{dir}/out/shipped.ndjson"
"#;

/// Starts the engine, posts 40 events (half to each queue) and waits until all are in the sink.
async fn engine_with_traffic(dir: &Path) -> Engine {
    let engine = Engine::start(&config(dir, TOPOLOGY));
    let events: Vec<Value> = (0..40)
        .map(|i| {
            let ty = if i % 2 == 0 {
                "payment.captured"
            } else {
                "order.created"
            };
            json!({"specversion": "1.0", "id": format!("t{i}"), "source": "/top", "type": ty, "data": {"n": i}})
        })
        .collect();
    let (status, body) = post(&engine.ingest, "application/x-ndjson", ndjson(&events), &[]).await;
    assert_eq!(status, 202, "{body}");
    let lines = wait_for_sink(&dir.join("out/shipped.ndjson"), |l| l.len() >= 40);
    assert_eq!(lines.len(), 40);
    engine
}

fn top_once(api: &str) -> Output {
    Command::new(BIN)
        .args(["top", "--once", "--api", api])
        .env("VELTRIX_LOG", "warn")
        .output()
        .expect("run veltrix top --once")
}

/// The last number on the table row that starts with `name` (the DELIVERED column of a
/// pipeline row), on a screen or in `--once` output.
fn last_number_of_row(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .map(|l| l.trim_matches(|c: char| c == '│' || c.is_whitespace()))
        .find(|l| l.split_whitespace().next() == Some(name))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn once_prints_a_plain_snapshot_of_queues_pipelines_and_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_traffic(dir.path()).await;

    // The engine samples once a second: wait for a snapshot that counts the deliveries.
    let deadline = Instant::now() + PATIENCE;
    let stdout = loop {
        let out = top_once(&engine.api);
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        if last_number_of_row(&stdout, "shipper") == Some(40) || Instant::now() > deadline {
            break stdout;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        stdout.starts_with(&format!("veltrix {}", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    for needle in [
        "QUEUE",
        "PIPELINE",
        "SINK",
        "DELIVERED",
        "critical",
        "bulk",
        "outfile",
        "bottleneck",
    ] {
        assert!(stdout.contains(needle), "{needle} in\n{stdout}");
    }
    assert_eq!(
        last_number_of_row(&stdout, "shipper"),
        Some(40),
        "delivered count in\n{stdout}"
    );
    // Queues most urgent first: critical (priority 0) before bulk (100).
    assert!(stdout.find("\ncritical").unwrap() < stdout.find("\nbulk").unwrap());
    assert!(
        !stdout.contains('\u{1b}'),
        "no terminal escapes in --once output"
    );
    drop(engine);
}

#[test]
fn once_against_no_engine_exits_69_and_says_so() {
    // A port nobody listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = top_once(&format!("http://127.0.0.1:{port}"));
    assert_eq!(out.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the admin API"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// A tmux server of our own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    /// Polls the screen until `done` holds; panics with the screen after PATIENCE.
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn tmux_present() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn live_view_in_tmux_shows_the_topology_sorts_and_quits_on_q() {
    if !tmux_present() {
        if std::env::var("VELTRIX_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!("tmux is required (VELTRIX_REQUIRE_SERVICES=1): apt-get install -y tmux");
        }
        eprintln!(
            "\n*** SKIPPED live_view_in_tmux_shows_the_topology_sorts_and_quits_on_q: tmux not found (apt-get install -y tmux) ***\n"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_traffic(dir.path()).await;

    let tmux = Tmux {
        socket: format!("veltrix-top-test-{}", std::process::id()),
    };
    let exit_file = dir.path().join("top.exit");
    // The pane runs top, then records its exit code; `sleep` keeps the pane readable after.
    let script = format!(
        "'{bin}' top --api '{api}' --interval 500ms; echo $? > '{exit}'; sleep 60",
        bin = BIN,
        api = engine.api,
        exit = exit_file.display(),
    );
    let started = tmux.cmd(&[
        "-f",
        "/dev/null",
        "-u",
        "new-session",
        "-d",
        "-x",
        "120",
        "-y",
        "40",
        "-s",
        "top",
        &script,
    ]);
    assert!(
        started.status.success(),
        "tmux new-session: {}",
        String::from_utf8_lossy(&started.stderr)
    );

    let screen = tmux.wait_for("queues, pipeline and a delivered count", |s| {
        s.contains("critical")
            && s.contains("bulk")
            && s.contains("outfile")
            && last_number_of_row(s, "shipper").is_some_and(|n| n > 0)
    });
    assert!(screen.contains("● live"), "{screen}");
    assert!(
        screen.contains("q  quit"),
        "footer with the keys:\n{screen}"
    );
    assert_eq!(last_number_of_row(&screen, "shipper"), Some(40), "{screen}");

    // Keys: Tab focuses the pipelines table, → sorts it by the next column, r reverses.
    tmux.cmd(&["send-keys", "-t", "top", "Tab", "Right", "r"]);
    tmux.wait_for("the pipelines sorted by p50, reversed", |s| {
        s.contains("pipelines by p50 ▲")
    });

    tmux.cmd(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + PATIENCE;
    let code = loop {
        if let Ok(code) = std::fs::read_to_string(&exit_file)
            && !code.trim().is_empty()
        {
            break code.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "top did not exit on q; the screen:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, "0", "exit code of `veltrix top` after q");
    drop(engine);
}
