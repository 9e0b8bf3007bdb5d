//! Shared by the end-to-end test files: the real binary as a child process, configs in temp
//! dirs, HTTP helpers, and a programmable HTTP receiver standing in for a downstream service.
#![allow(dead_code)] // each test file uses a different part

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `veltrix` binary under test (examples that embed Veltrix include this module and start
/// their own binary with [`Engine::start_program`]).
pub const BIN: &str = match option_env!("CARGO_BIN_EXE_veltrix") {
    Some(path) => path,
    None => "veltrix",
};
/// Longest we wait for the engine to come up or for events to arrive before failing the test
/// (a failure guard, not a timing assertion).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A service a test needs (NATS, PostgreSQL, ...) is not available: prints a loud
/// `SKIPPED: why` so the caller can return; with `VELTRIX_REQUIRE_SERVICES=1` (CI) the test fails
/// instead, so a missing service cannot pass silently.
pub fn skip_unless_required(why: &str) {
    if std::env::var("VELTRIX_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{why} (VELTRIX_REQUIRE_SERVICES=1: the service is required)");
    }
    eprintln!("SKIPPED: {why}");
}

/// A running `veltrix run` process.
pub struct Engine {
    pub child: Child,
    pub ingest: String,
    pub api: String,
}

impl Engine {
    pub fn start(config: &Path) -> Engine {
        Self::start_with(config, &[], None)
    }

    /// Starts with extra command-line arguments (before `run`) and, when `log` is given, the
    /// engine's stderr (its log) written to that file at `info` level.
    pub fn start_with(config: &Path, args: &[&str], log: Option<&Path>) -> Engine {
        Self::start_full(config, args, &[], log)
    }

    /// Starts with `run --watch` (reload on file changes).
    pub fn start_watching(config: &Path) -> Engine {
        Self::start_full(config, &[], &["--watch"], None)
    }

    /// Starts `program run -c config`: a program built on the `veltrix` library (custom
    /// handlers) that has the whole command line.
    pub fn start_program(program: &str, config: &Path) -> Engine {
        Self::start_bin(program, config, &[], &[], None, &[])
    }

    /// Starts with extra environment variables (e.g. `FAILPOINTS`), logging errors only.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Engine {
        Self::start_bin(BIN, config, &[], &[], None, env)
    }

    fn start_full(config: &Path, args: &[&str], run_args: &[&str], log: Option<&Path>) -> Engine {
        Self::start_bin(BIN, config, args, run_args, log, &[])
    }

    fn start_bin(
        program: &str,
        config: &Path,
        args: &[&str],
        run_args: &[&str],
        log: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Engine {
        let mut command = Command::new(program);
        command
            .args(args)
            .args(["run", "-c"])
            .arg(config)
            .args(run_args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped());
        match log {
            Some(path) => {
                command
                    .env("VELTRIX_LOG", "info")
                    .stderr(std::fs::File::create(path).expect("log file"));
            }
            None if env.is_empty() => {
                command.env("VELTRIX_LOG", "warn").stderr(Stdio::inherit());
            }
            None => {
                command.env("VELTRIX_LOG", "error").stderr(Stdio::inherit());
            }
        }
        let mut child = command.spawn().expect("spawn veltrix");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after start-up so the engine never writes into a closed pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut ingest, mut api) = (None, None);
        while ingest.is_none() || api.is_none() {
            let line = rx
                .recv_timeout(PATIENCE)
                .expect("the engine printed its addresses");
            let url = line.split_whitespace().nth(1).map(str::to_owned);
            if line.trim_start().starts_with("ingest") {
                ingest = url;
            } else if line.trim_start().starts_with("admin") {
                api = url;
            }
        }
        Engine {
            child,
            ingest: ingest.unwrap(),
            api: api.unwrap(),
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a config into `dir` whose data and sink live in `dir`; `extra` is appended verbatim.
pub fn config(dir: &Path, queues_pipelines_sinks: &str) -> PathBuf {
    let text = format!(
        "data_dir = \"{data}\"\n[api]\naddress = \"127.0.0.1:0\"\n[sources.http]\ntype = \"http\"\naddress = \"127.0.0.1:0\"\nbody_bytes_max = \"1MiB\"\n{rest}",
        data = dir.join("data").display(),
        rest = queues_pipelines_sinks.replace("{dir}", &dir.display().to_string()),
    );
    let path = dir.join("veltrix.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn sink_lines(path: &Path) -> Vec<Value> {
    match std::fs::read_to_string(path) {
        // Only newline-terminated lines are written (confirmed); a last fragment without its
        // newline is a write in progress, or torn by a kill -9 (cut off at the next start).
        Ok(text) => text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| serde_json::from_str(l).expect("every complete line is a JSON event"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Polls the sink file until `done` holds for its lines (or PATIENCE runs out).
pub fn wait_for_sink(path: &Path, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lines = sink_lines(path);
        if done(&lines) || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub async fn post(
    url: &str,
    content_type: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = client()
        .post(url)
        .header("content-type", content_type)
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub fn ndjson(events: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        serde_json::to_writer(&mut out, e).unwrap();
        out.push(b'\n');
    }
    out
}

/// Polls `done` until it holds or PATIENCE runs out; returns whether it held.
pub async fn wait_until(mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if done().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs a JSON document from the engine's admin API.
pub async fn get_json(url: &str) -> Value {
    let text = client()
        .get(url)
        .send()
        .await
        .expect("admin API")
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON from {url}: {text}"))
}

/// The dead-letter entries of `pipeline`.
pub async fn dlq(api: &str, pipeline: &str) -> Vec<Value> {
    let doc = get_json(&format!("{api}/api/v1/dlq/{pipeline}?limit=10000")).await;
    doc["entries"].as_array().cloned().unwrap_or_default()
}

/// The value of one sample in the engine's /metrics, e.g.
/// `metric(api, "veltrix_events_dropped_total", &["queue=\"q\"", "reason=\"queue_full\""])`.
pub async fn metric(api: &str, name: &str, labels: &[&str]) -> f64 {
    let text = client()
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether the external service `what` accepts TCP connections at `address` (like
/// "127.0.0.1:5432"). When it does not, prints a loud `SKIPPED:` line and returns `false` so the
/// test can return — unless `VELTRIX_REQUIRE_SERVICES=1`, which makes a missing service fail
/// the test instead. Every test that needs a real service (PostgreSQL, NATS) goes through here.
pub fn service_available(what: &str, address: &str) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let reachable = address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if reachable {
        return true;
    }
    if std::env::var("VELTRIX_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{what} is not reachable at {address}, and VELTRIX_REQUIRE_SERVICES=1");
    }
    eprintln!(
        "\n========================================================================\n\
         SKIPPED: {what} is not reachable at {address}; this test did not run.\n\
         Start it, or set VELTRIX_REQUIRE_SERVICES=1 to make this a failure.\n\
         ========================================================================\n"
    );
    false
}

/// A name no other test run uses: `prefix` + a random suffix (tables, streams, subjects).
pub fn unique_name(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{prefix}_{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// What the receiver does with a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Mode {
    Accept = 0,
    /// 500 on every request.
    Fail = 1,
    /// 503 on a random 30 % of requests.
    Flaky = 2,
    /// 400: the batch is refused for good.
    Refuse = 3,
    /// 503 for any batch holding an event whose id starts with `poison`.
    FailPoison = 4,
    /// 422 (refused for good) for any batch holding an event whose id starts with `poison`.
    RefusePoison = 5,
    /// 500 (the receiver fails on it, retryable) for any batch holding an event whose id
    /// starts with `poison`.
    CrashOnPoison = 6,
}

#[derive(Default)]
struct ReceiverState {
    mode: AtomicU8,
    delay_ms: AtomicU64,
    /// When non-zero: requests beyond this many in flight are answered 429.
    concurrent_max: AtomicU64,
    in_flight: AtomicU64,
    /// 429s answered because of `concurrent_max`.
    too_many: AtomicU64,
    /// Requests seen per event id.
    attempts: Mutex<HashMap<String, u32>>,
    /// Accepted event ids with their arrival time, in arrival order.
    delivered: Mutex<Vec<(String, Instant)>>,
    /// Events per request, in arrival order (every request, whatever it was answered).
    batches: Mutex<Vec<usize>>,
    /// Every accepted event, in arrival order.
    events: Mutex<Vec<Value>>,
    seed: AtomicU64,
}

/// A downstream HTTP service for the http sink: records what it is sent and fails on command.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(ReceiverState {
            seed: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
            ..ReceiverState::default()
        });
        let app = axum::Router::new()
            .route("/events", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, state }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Each request takes this long before it is answered.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests beyond `n` in flight at once are answered 429 (0: no limit).
    pub fn set_concurrent_max(&self, n: u64) {
        self.state.concurrent_max.store(n, Ordering::SeqCst);
    }

    /// How many requests were refused with 429 for exceeding `concurrent_max`.
    pub fn too_many(&self) -> u64 {
        self.state.too_many.load(Ordering::SeqCst)
    }

    pub fn attempts(&self) -> HashMap<String, u32> {
        self.state.attempts.lock().unwrap().clone()
    }

    pub fn delivered(&self) -> Vec<(String, Instant)> {
        self.state.delivered.lock().unwrap().clone()
    }

    pub fn delivered_ids(&self) -> std::collections::HashSet<String> {
        self.delivered().into_iter().map(|(id, _)| id).collect()
    }

    /// How many events each request carried, in arrival order.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.state.batches.lock().unwrap().clone()
    }

    /// Every accepted event, whole, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.state.events.lock().unwrap().clone()
    }
}

async fn receive(
    axum::extract::State(state): axum::extract::State<Arc<ReceiverState>>,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    let events: Vec<Value> = serde_json::from_slice(&body).expect("a JSON array of CloudEvents");
    let ids: Vec<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    {
        let mut attempts = state.attempts.lock().unwrap();
        for id in &ids {
            *attempts.entry(id.clone()).or_default() += 1;
        }
    }
    struct InFlight<'a>(&'a AtomicU64);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let now_in_flight = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _in_flight = InFlight(&state.in_flight);
    // An overloaded service refuses at once.
    let concurrent_max = state.concurrent_max.load(Ordering::SeqCst);
    if concurrent_max > 0 && now_in_flight > concurrent_max {
        state.too_many.fetch_add(1, Ordering::SeqCst);
        return StatusCode::TOO_MANY_REQUESTS;
    }
    state.batches.lock().unwrap().push(ids.len());
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = match state.mode.load(Ordering::SeqCst) {
        1 => StatusCode::INTERNAL_SERVER_ERROR,
        2 => {
            // xorshift: deterministic per run, independent of the scheduler.
            let mut x = state.seed.load(Ordering::SeqCst);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            state.seed.store(x, Ordering::SeqCst);
            if x % 10 < 3 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        }
        3 => StatusCode::BAD_REQUEST,
        4 if ids.iter().any(|id| id.starts_with("poison")) => StatusCode::SERVICE_UNAVAILABLE,
        5 if ids.iter().any(|id| id.starts_with("poison")) => StatusCode::UNPROCESSABLE_ENTITY,
        6 if ids.iter().any(|id| id.starts_with("poison")) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    };
    if status == StatusCode::OK {
        state.events.lock().unwrap().extend(events);
        let now = Instant::now();
        state
            .delivered
            .lock()
            .unwrap()
            .extend(ids.into_iter().map(|id| (id, now)));
    }
    status
}

/// A memory field of `/proc/PID/status` in bytes: `VmRSS` (resident now) or `VmHWM` (peak).
pub fn proc_memory_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kib * 1024
}
