//! Hot reload, end to end: repeated reloads under steady load lose no acknowledged event, an
//! invalid config changes nothing, removing a queue that holds events needs force, and SIGHUP
//! and `--watch` reload too.

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

mod support;
use support::*;

fn archive(version: u32, workers: u32) -> String {
    format!(
        r#"
[queues.q]
types = ["*"]
[pipelines.p]
from = ["q"]
workers = {workers}
batch_events_max = 25
processors = [{{ type = "remap", source = '.data.version = {version}' }}]
sink = "file"
[sinks.file]
type = "file"
path = "{{dir}}/out/archive.ndjson"
"#
    )
}

async fn reload(api: &str, force: bool) -> (u16, Value) {
    let url = if force {
        format!("{api}/api/v1/reload?force=true")
    } else {
        format!("{api}/api/v1/reload")
    };
    let response = client().post(url).send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap(),
    )
}

async fn pipelines(api: &str) -> Vec<String> {
    let stats = get_json(&format!("{api}/api/v1/stats")).await;
    stats["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn reloading_repeatedly_under_load_delivers_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), &archive(1, 1));
    let engine = Engine::start(&path);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let poster = {
        let (url, acked, stop) = (engine.ingest.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let ids: Vec<String> = (0..20).map(|i| format!("r-{}", n + i)).collect();
                n += 20;
                let events: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"specversion": "1.0", "id": id, "source": "/t", "type": "t"}))
                    .collect();
                let (status, body) = post(&url, "application/x-ndjson", ndjson(&events), &[]).await;
                match status {
                    202 => acked.lock().unwrap().extend(ids),
                    503 => {} // a queue being reopened; not acknowledged, so nothing promised
                    other => panic!("{other}: {body}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    for round in 0..10u32 {
        // Pace the reloads so each one lands while requests are in flight (not a sync point).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let version = 2 + round;
        std::fs::write(
            &path,
            std::fs::read_to_string(&path)
                .unwrap()
                .replace(
                    &format!(".data.version = {}", version - 1),
                    &format!(".data.version = {version}"),
                )
                .replace(
                    &format!("workers = {}", 1 + (round % 2)),
                    &format!("workers = {}", 1 + ((round + 1) % 2)),
                ),
        )
        .unwrap();
        let (status, body) = reload(&engine.api, false).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "applied");
        assert_eq!(
            body["changes"]["pipelines"]["changed"],
            json!(["p"]),
            "{body}"
        );
        assert_eq!(
            body["changes"]["queues"]["unchanged"],
            json!(["q"]),
            "{body}"
        );
        if round == 4 {
            // An invalid config is rejected with its diagnostics; the running one keeps going.
            let good = std::fs::read_to_string(&path).unwrap();
            std::fs::write(
                &path,
                good.replace("[pipelines.p]", "[pipelines.p]\nworkerz = 3"),
            )
            .unwrap();
            let (status, problem) = reload(&engine.api, false).await;
            assert_eq!(status, 422, "{problem}");
            assert!(
                problem["detail"].as_str().unwrap().contains("workerz"),
                "{problem}"
            );
            assert_eq!(pipelines(&engine.api).await, ["p"]);
            std::fs::write(&path, good).unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    poster.await.unwrap();
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200, "posted throughout: {}", acked.len());
    let file = dir.path().join("out/archive.ndjson");
    let want: HashSet<&str> = acked.iter().map(String::as_str).collect();
    let lines = wait_for_sink(&file, |lines| {
        let got: HashSet<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
        want.is_subset(&got)
    });
    let got: HashSet<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
    let missing = want.difference(&got).count();
    assert_eq!(missing, 0, "acknowledged events lost across reloads");
    // An event sent now is processed by the last config applied.
    let probe = json!({"specversion": "1.0", "id": "probe", "source": "/t", "type": "t"});
    let (status, _) = post(
        &engine.ingest,
        "application/x-ndjson",
        ndjson(&[probe]),
        &[],
    )
    .await;
    assert_eq!(status, 202);
    let lines = wait_for_sink(&file, |lines| lines.iter().any(|l| l["id"] == "probe"));
    let probe = lines.iter().find(|l| l["id"] == "probe").unwrap();
    assert_eq!(
        probe["data"]["version"], 11,
        "the last reloaded remap is the one running"
    );
    let api = engine.api.clone();
    assert_eq!(
        metric(
            &api,
            "veltrix_config_reloads_total",
            &["outcome=\"applied\""]
        )
        .await,
        10.0
    );
    assert_eq!(
        metric(
            &api,
            "veltrix_config_reloads_total",
            &["outcome=\"invalid\""]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&api, "veltrix_config_last_reload_success", &[]).await,
        1.0
    );
    println!(
        "reload: 10 reloads + 1 invalid under load, {} acknowledged, 0 lost, {} sink lines",
        acked.len(),
        lines.len()
    );
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_queue_that_holds_events_needs_force_and_keeps_its_files() {
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Fail);
    let dir = tempfile::tempdir().unwrap();
    let with_q = format!(
        r#"
[queues.q]
types = ["stuck.*"]
[queues.rest]
types = ["*"]
[pipelines.p]
from = ["q", "rest"]
retry = {{ attempts_max = 1000, backoff_initial = "20ms", backoff_max = "50ms" }}
sink = "down"
[sinks.down]
type = "http"
url = "{}"
"#,
        receiver.url
    );
    let path = config(dir.path(), &with_q);
    let engine = Engine::start(&path);
    let events: Vec<Value> = (0..5).map(|i| json!({"specversion": "1.0", "id": format!("s-{i}"), "source": "/t", "type": "stuck.thing"})).collect();
    let (status, _) = post(&engine.ingest, "application/x-ndjson", ndjson(&events), &[]).await;
    assert_eq!(status, 202);
    let without_q = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[queues.q]\ntypes = [\"stuck.*\"]\n", "")
        .replace("from = [\"q\", \"rest\"]", "from = [\"rest\"]");
    std::fs::write(&path, without_q).unwrap();
    let (status, problem) = reload(&engine.api, false).await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("`q` still holds"),
        "{problem}"
    );
    let stats = get_json(&format!("{}/api/v1/stats", engine.api)).await;
    assert_eq!(
        stats["queues"].as_array().unwrap().len(),
        2,
        "nothing changed"
    );
    // The CLI's --force goes through.
    let output = Command::new(BIN)
        .args(["reload", "--force", "--api", &engine.api])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("\"removed\""));
    let stats = get_json(&format!("{}/api/v1/stats", engine.api)).await;
    assert_eq!(stats["queues"].as_array().unwrap().len(), 1);
    assert!(
        dir.path().join("data/queues/q").is_dir(),
        "a removed queue's files stay on disk"
    );
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_and_watch_reload_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), &archive(1, 1));
    let engine = Engine::start_watching(&path);
    let api = engine.api.clone();
    // --watch: a new pipeline appears after the file changes.
    let extra = "\n[pipelines.second]\nfrom = [\"q\"]\nsink = \"file\"\n";
    std::fs::write(&path, std::fs::read_to_string(&path).unwrap() + extra).unwrap();
    assert!(
        wait_until(async || pipelines(&api).await.contains(&"second".to_owned())).await,
        "--watch applied the change"
    );
    // SIGHUP: the pipeline goes away again.
    std::fs::write(
        &path,
        std::fs::read_to_string(&path).unwrap().replace(extra, ""),
    )
    .unwrap();
    Command::new("kill")
        .args(["-HUP", &engine.child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        wait_until(async || pipelines(&api).await == ["p"]).await,
        "SIGHUP applied the change"
    );
    assert!(engine.stop().success());
}
