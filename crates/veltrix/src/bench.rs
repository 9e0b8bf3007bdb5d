//! `veltrix bench`: an open-loop load generator against a running engine, and
//! `veltrix bench discard-server`, the HTTP ceiling it is compared with.
//!
//! Open loop: request `k` of connection `c` is due at `start + (k·connections + c) / req_rate`
//! whatever happened before, and its latency is measured from that due time. When the engine
//! falls behind, a connection's requests are sent late (they queue on the client side) and the
//! lateness shows in the latency: no coordinated omission. `--rate max` is the closed loop
//! instead: each connection sends its next request as soon as the previous one is answered, and
//! latency is measured from the actual send.
//!
//! Bodies are generated before the run (a small pool, leaked as `&'static [u8]` so a request
//! costs no copy), so generation is not measured. End-to-end latency (accepted → delivered)
//! comes from the difference of the engine's `veltrix_e2e_latency_seconds` histograms scraped
//! from `/metrics` before and after the measured window (bucket resolution); engine CPU and RSS
//! from `process` in `/api/v1/stats`, sampled every second.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::cli::exit;

mod conn;

/// Events per second, or closed-loop saturation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Rate {
    Max,
    PerSecond(f64),
}

pub(crate) fn parse_rate(s: &str) -> Result<Rate, String> {
    if s == "max" {
        return Ok(Rate::Max);
    }
    match s.replace('_', "").parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok(Rate::PerSecond(n)),
        _ => Err(format!(
            "`{s}`: give events per second (e.g. 10000) or `max`"
        )),
    }
}

/// `type=weight,…`: the share of each event type.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TypeMix(pub Vec<(String, u32)>);

pub(crate) fn parse_type_mix(s: &str) -> Result<TypeMix, String> {
    let mut mix = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (ty, weight) = part.split_once('=').unwrap_or((part, "1"));
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| format!("`{part}`: the weight must be a whole number"))?;
        if ty.trim().is_empty() {
            return Err(format!("`{part}`: missing the event type"));
        }
        if weight > 0 {
            mix.push((ty.trim().to_owned(), weight));
        }
    }
    if mix.is_empty() {
        return Err("give at least one type with a weight above 0".into());
    }
    Ok(TypeMix(mix))
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub(crate) enum BodyKind {
    /// `application/x-ndjson`: one event per line.
    Ndjson,
    /// `application/cloudevents-batch+json`: a JSON array.
    Batch,
    /// `application/cloudevents+json`: one event per request (--batch is ignored).
    Structured,
}

impl BodyKind {
    fn content_type(self) -> &'static str {
        match self {
            BodyKind::Ndjson => "application/x-ndjson",
            BodyKind::Batch => "application/cloudevents-batch+json",
            BodyKind::Structured => "application/cloudevents+json",
        }
    }
}

pub(crate) struct BenchArgs {
    pub url: String,
    pub api: String,
    pub rate: Rate,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub batch: usize,
    pub kind: BodyKind,
    pub type_mix: TypeMix,
    pub payload_bytes: usize,
    pub token: Option<String>,
    pub json: bool,
    pub spawn: Option<PathBuf>,
}

/// When request `k` of connection `c` is due, after the start, for `req_rate` requests/s spread
/// evenly over `connections`.
pub(crate) fn scheduled_offset(c: usize, k: u64, connections: usize, req_rate: f64) -> Duration {
    let slot = k as f64 * connections as f64 + c as f64;
    Duration::from_secs_f64(slot / req_rate)
}

/// One event of about `payload_bytes` bytes (padded in `data.pad`).
fn event(id: &str, ty: &str, n: u64, payload_bytes: usize) -> String {
    let base = json!({
        "specversion": "1.0", "id": id, "source": "/veltrix/bench", "type": ty,
        "datacontenttype": "application/json",
        "data": { "amount": n % 1000, "qty": 1 + n % 5, "pad": "" },
    })
    .to_string();
    let pad = payload_bytes.saturating_sub(base.len());
    base.replacen(
        "\"pad\":\"\"",
        &format!("\"pad\":\"{}\"", "x".repeat(pad)),
        1,
    )
}

/// `count` distinct bodies of `batch` events each; event types follow the mix's weights in a
/// fixed interleaving.
pub(crate) fn bodies(
    kind: BodyKind,
    batch: usize,
    mix: &[(String, u32)],
    payload_bytes: usize,
    count: usize,
) -> Vec<&'static [u8]> {
    let wheel: Vec<&str> = mix
        .iter()
        .flat_map(|(t, w)| std::iter::repeat_n(t.as_str(), *w as usize))
        .collect();
    let mut n = 0u64;
    (0..count)
        .map(|b| {
            let events: Vec<String> = (0..batch)
                .map(|i| {
                    n += 1;
                    let ty = wheel[n as usize % wheel.len()];
                    event(&format!("bench-{b}-{i}"), ty, n, payload_bytes)
                })
                .collect();
            let text = match kind {
                BodyKind::Ndjson => {
                    let mut s = events.join("\n");
                    s.push('\n');
                    s
                }
                BodyKind::Batch => format!("[{}]", events.join(",")),
                BodyKind::Structured => events.into_iter().next().unwrap_or_default(),
            };
            &*Box::leak(text.into_bytes().into_boxed_slice())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Prometheus histogram differences

/// Cumulative bucket counts by upper bound (`+Inf` included), summed over every label set.
pub(crate) type Buckets = BTreeMap<OrderedF64, f64>;

/// A bucket bound as a map key (`total_cmp` order; `+Inf` last).
#[derive(Clone, Copy, Debug)]
pub(crate) struct OrderedF64(pub f64);
impl PartialEq for OrderedF64 {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for OrderedF64 {}
impl PartialOrd for OrderedF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrderedF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The `{name}_bucket` series of a Prometheus text exposition, summed per `le`.
pub(crate) fn parse_buckets(text: &str, name: &str) -> Buckets {
    let prefix = format!("{name}_bucket{{");
    let mut out = Buckets::new();
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some((labels, value)) = line.rsplit_once('}') else {
            continue;
        };
        let Some(le) = labels
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        let count: f64 = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(OrderedF64(le)).or_default() += count;
    }
    out
}

/// Percentiles of what was observed between two scrapes: `after − before` per bucket.
#[derive(Debug, PartialEq)]
pub(crate) struct BucketPercentiles {
    pub count: u64,
    /// (quantile, upper bound in seconds; infinite past the largest finite bucket).
    pub quantiles: Vec<(f64, f64)>,
    pub max: f64,
}

pub(crate) fn bucket_percentiles(
    before: &Buckets,
    after: &Buckets,
    qs: &[f64],
) -> Option<BucketPercentiles> {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| (le.0, (n - before.get(le).copied().unwrap_or(0.0)).max(0.0)))
        .collect();
    let total = diff.last().map_or(0.0, |d| d.1);
    if total < 1.0 {
        return None;
    }
    let at = |q: f64| {
        let rank = (q * total).ceil().max(1.0);
        diff.iter()
            .find(|(_, cumulative)| *cumulative >= rank)
            .map_or(f64::INFINITY, |d| d.0)
    };
    Some(BucketPercentiles {
        count: total as u64,
        quantiles: qs.iter().map(|&q| (q, at(q))).collect(),
        max: at(1.0),
    })
}

// ---------------------------------------------------------------------------------------------
// The run

const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

#[derive(Default)]
struct Live {
    requests: AtomicU64,
    events: AtomicU64,
    failed: AtomicU64,
}

struct ConnResult {
    histogram: Histogram<u64>,
    accepted_events: u64,
    ok_requests: u64,
    rejected: BTreeMap<String, u64>,
    last_done: Option<Instant>,
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

async fn connection(
    c: usize,
    target: Arc<conn::Target>,
    args: Arc<RunShape>,
    bodies: Arc<Vec<&'static [u8]>>,
    window: Window,
    live: Arc<Live>,
) -> ConnResult {
    let mut result = ConnResult {
        histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
        accepted_events: 0,
        ok_requests: 0,
        rejected: BTreeMap::new(),
        last_done: None,
    };
    let mut conn = conn::Conn::new(target);
    let mut k: u64 = 0;
    loop {
        let due = match args.req_rate {
            Some(rate) => {
                let due = window.start + scheduled_offset(c, k, args.connections, rate);
                if due >= window.end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                due
            }
            None => {
                let now = Instant::now();
                if now >= window.end {
                    break;
                }
                now
            }
        };
        let body = bodies[(k as usize * args.connections + c) % bodies.len()];
        let outcome = conn.post(body).await;
        let done = Instant::now();
        k += 1;
        live.requests.fetch_add(1, Ordering::Relaxed);
        let ok = matches!(&outcome, Ok(s) if s.is_success());
        if ok {
            live.events
                .fetch_add(args.events_per_request as u64, Ordering::Relaxed);
        } else {
            live.failed.fetch_add(1, Ordering::Relaxed);
        }
        if due < window.measure_from {
            continue; // warm-up: sent, not recorded
        }
        result.last_done = Some(done);
        let micros = done.duration_since(due).as_micros().max(1) as u64;
        let _ = result.histogram.record(micros.min(3_600_000_000));
        match outcome {
            Ok(_) if ok => {
                result.ok_requests += 1;
                result.accepted_events += args.events_per_request as u64;
            }
            Ok(status) => {
                *result
                    .rejected
                    .entry(status.as_u16().to_string())
                    .or_default() += 1
            }
            Err(failure) => *result.rejected.entry(failure.key().to_owned()).or_default() += 1,
        }
    }
    result
}

struct RunShape {
    connections: usize,
    events_per_request: usize,
    /// Requests per second in total; `None` = closed loop.
    req_rate: Option<f64>,
}

/// The engine's admin API, when there is one to read.
struct Admin {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Admin {
    async fn get(&self, path: &str) -> Option<String> {
        let mut request = self
            .client
            .get(format!("{}{path}", self.base.trim_end_matches('/')))
            .timeout(Duration::from_secs(2));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    }

    async fn e2e(&self) -> Option<Buckets> {
        let text = self.get("/metrics").await?;
        Some(parse_buckets(&text, "veltrix_e2e_latency_seconds"))
    }

    /// (uptime s, cpu s, rss bytes)
    async fn process(&self) -> Option<(f64, f64, u64)> {
        let doc: Value = serde_json::from_str(&self.get("/api/v1/stats").await?).ok()?;
        Some((
            doc["uptime_seconds"].as_f64()?,
            doc["process"]["cpu_seconds_total"].as_f64()?,
            doc["process"]["rss_bytes"].as_u64()?,
        ))
    }
}

/// A `veltrix run` started by `--spawn`.
struct Spawned {
    child: Child,
    ingest: String,
    admin: String,
}

impl Spawned {
    fn start(config: &Path) -> Result<Spawned, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
        let mut child = Command::new(exe)
            .args(["--log-level", "warn", "run", "-c"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start `veltrix run`: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining so the engine never writes into a closed pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut ingest, mut admin) = (None, None);
        while ingest.is_none() || admin.is_none() {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
                let _ = child.kill();
                let status = child.wait().ok();
                return Err(format!(
                    "`veltrix run -c {}` did not print its addresses (exit: {status:?})",
                    config.display()
                ));
            };
            let url = line.split_whitespace().nth(1).map(str::to_owned);
            let line = line.trim_start();
            if line.starts_with("ingest ") && ingest.is_none() {
                ingest = url;
            } else if line.starts_with("admin ") {
                admin = url;
            }
        }
        Ok(Spawned {
            child,
            ingest: ingest.unwrap_or_default(),
            admin: admin.unwrap_or_default(),
        })
    }

    fn stop(mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn bench(mut args: BenchArgs) -> u8 {
    if args.kind == BodyKind::Structured {
        args.batch = 1;
    }
    if args.connections == 0 || args.batch == 0 || args.duration.is_zero() {
        eprintln!("veltrix bench: --connections, --batch and --duration must be above 0");
        return exit::FAILURE;
    }
    let spawned = match &args.spawn {
        Some(config) => match Spawned::start(config) {
            Ok(s) => {
                args.url = s.ingest.clone();
                args.api = s.admin.clone();
                Some(s)
            }
            Err(e) => {
                eprintln!("veltrix bench: {e}");
                return exit::FAILURE;
            }
        },
        None => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("veltrix bench: {e}");
            return exit::FAILURE;
        }
    };
    let code = runtime.block_on(run(&args));
    drop(runtime);
    if let Some(s) = spawned {
        s.stop();
    }
    code
}

async fn run(args: &BenchArgs) -> u8 {
    let pool = (args.connections * 2).clamp(4, 64);
    let bodies = Arc::new(bodies(
        args.kind,
        args.batch,
        &args.type_mix.0,
        args.payload_bytes,
        pool,
    ));
    let body_bytes = bodies[0].len();
    let client = match reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("veltrix bench: {e}");
            return exit::FAILURE;
        }
    };
    let admin = Arc::new(Admin {
        client: client.clone(),
        base: args.api.clone(),
        token: args.token.clone(),
    });
    let target =
        match conn::Target::parse(&args.url, args.kind.content_type(), args.token.as_deref()) {
            Ok(target) => Arc::new(target),
            Err(e) => {
                eprintln!("veltrix bench: {e}");
                return exit::FAILURE;
            }
        };
    // Fail early, with a clear message, when nothing listens.
    let probe = client.get(&args.url).timeout(Duration::from_secs(5)).send();
    if let Err(e) = probe.await
        && e.is_connect()
    {
        eprintln!(
            "veltrix bench: cannot reach {}: {e} (is an engine running? or use --spawn)",
            args.url
        );
        return exit::UNAVAILABLE;
    }

    let shape = Arc::new(RunShape {
        connections: args.connections,
        events_per_request: args.batch,
        req_rate: match args.rate {
            Rate::Max => None,
            Rate::PerSecond(events) => Some(events / args.batch as f64),
        },
    });
    let start = Instant::now() + Duration::from_millis(50);
    let window = Window {
        start,
        measure_from: start + args.warmup,
        end: start + args.warmup + args.duration,
    };
    let live = Arc::new(Live::default());
    let tasks: Vec<_> = (0..args.connections)
        .map(|c| {
            tokio::spawn(connection(
                c,
                target.clone(),
                shape.clone(),
                bodies.clone(),
                window,
                live.clone(),
            ))
        })
        .collect();

    // Sampler: the e2e histogram at the window's start, engine process stats every second.
    let tty = std::io::stderr().is_terminal();
    let sampler = {
        let live = live.clone();
        let admin = admin.clone();
        async move {
            tokio::time::sleep_until(window.measure_from).await;
            let e2e_before = admin.e2e().await;
            let mut first = admin.process().await;
            let mut last = first;
            let mut rss_max = first.map_or(0, |p| p.2);
            // Peak RSS per minute of the window: flat memory shows as a flat series.
            let mut rss_by_minute: Vec<u64> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut previous = (
                live.requests.load(Ordering::Relaxed),
                live.events.load(Ordering::Relaxed),
            );
            let measure_start = Instant::now();
            loop {
                tick.tick().await;
                if let Some(p) = admin.process().await {
                    first.get_or_insert(p);
                    rss_max = rss_max.max(p.2);
                    last = Some(p);
                    let minute = (measure_start.elapsed().as_secs() / 60) as usize;
                    if rss_by_minute.len() <= minute {
                        rss_by_minute.resize(minute + 1, 0);
                    }
                    rss_by_minute[minute] = rss_by_minute[minute].max(p.2);
                }
                let now = (
                    live.requests.load(Ordering::Relaxed),
                    live.events.load(Ordering::Relaxed),
                );
                if tty {
                    eprint!(
                        "\r\x1b[2K  {:>4.0}s  {:>10} events/s  {:>8} req/s  {} failed  rss {}",
                        measure_start.elapsed().as_secs_f64(),
                        now.1 - previous.1,
                        now.0 - previous.0,
                        live.failed.load(Ordering::Relaxed),
                        last.map_or("?".into(), |p| mib(p.2)),
                    );
                    let _ = std::io::stderr().flush();
                }
                previous = now;
                if Instant::now() >= window.end {
                    break;
                }
            }
            (e2e_before, first, last, rss_max, rss_by_minute)
        }
    };
    let sampler = tokio::spawn(sampler);

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
    let (mut accepted, mut ok_requests) = (0u64, 0u64);
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_done = window.end;
    for task in tasks {
        let Ok(r) = task.await else { continue };
        let _ = histogram.add(&r.histogram);
        accepted += r.accepted_events;
        ok_requests += r.ok_requests;
        for (k, v) in r.rejected {
            *rejected.entry(k).or_default() += v;
        }
        if let Some(t) = r.last_done {
            last_done = last_done.max(t);
        }
    }
    let (e2e_before, first, mut last, mut rss_max, rss_by_minute) =
        sampler.await.unwrap_or((None, None, None, 0, Vec::new()));
    if tty {
        eprint!("\r\x1b[2K");
    }
    // Let in-flight deliveries land, then read the engine once more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e2e_after = admin.e2e().await;
    if let Some(p) = admin.process().await {
        rss_max = rss_max.max(p.2);
        last = Some(p);
    }

    let elapsed = last_done
        .duration_since(window.measure_from)
        .as_secs_f64()
        .max(1e-9);
    let failed_requests: u64 = rejected.values().sum();
    let e2e = match (&e2e_before, &e2e_after) {
        (Some(b), Some(a)) => bucket_percentiles(b, a, &QUANTILES),
        _ => None,
    };
    let cores = match (first, last) {
        (Some(a), Some(b)) if b.0 > a.0 => Some((b.1 - a.1) / (b.0 - a.0)),
        _ => None,
    };
    let us = |v: u64| v as f64 / 1e6;
    let request_latency = json!({
        "p50": us(histogram.value_at_quantile(0.5)),
        "p90": us(histogram.value_at_quantile(0.9)),
        "p99": us(histogram.value_at_quantile(0.99)),
        "p99_9": us(histogram.value_at_quantile(0.999)),
        "max": us(histogram.max()),
        "mean": histogram.mean() / 1e6,
    });
    let fin = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
    let document = json!({
        "url": args.url,
        "content_type": args.kind.content_type(),
        "mode": if args.rate == Rate::Max { "closed-loop" } else { "open-loop" },
        "target_events_per_second": match args.rate { Rate::Max => Value::Null, Rate::PerSecond(r) => json!(r) },
        "connections": args.connections,
        "batch": args.batch,
        "body_bytes": body_bytes,
        "duration_seconds": elapsed,
        "warmup_seconds": args.warmup.as_secs_f64(),
        "events_per_second": accepted as f64 / elapsed,
        "requests_per_second": (ok_requests + failed_requests) as f64 / elapsed,
        "accepted_events": accepted,
        "accepted_requests": ok_requests,
        "rejected_requests": rejected,
        "request_latency_seconds": request_latency,
        "e2e_latency_seconds": e2e.as_ref().map(|e| json!({
            "count": e.count,
            "p50": fin(e.quantiles[0].1),
            "p90": fin(e.quantiles[1].1),
            "p99": fin(e.quantiles[2].1),
            "p99_9": fin(e.quantiles[3].1),
            "max": fin(e.max),
            "resolution": "bucket upper bounds",
        })),
        "engine": {
            "cpu_cores": cores,
            "rss_max_bytes": if rss_max > 0 { json!(rss_max) } else { Value::Null },
            "rss_max_bytes_by_minute": rss_by_minute,
        },
    });
    if args.json {
        println!("{document}");
    } else {
        print!("{}", human(&document));
    }
    if ok_requests == 0 {
        return exit::FAILURE;
    }
    exit::OK
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn ms(v: &Value) -> String {
    match v.as_f64() {
        Some(s) if s < 0.001 => format!("{:.0} µs", s * 1e6),
        Some(s) => format!("{:.2} ms", s * 1e3),
        None => "—".into(),
    }
}

fn human(d: &Value) -> String {
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<22} {v}\n"));
    row(
        "target",
        format!(
            "{} ({}, {} connections, {} events × {} B per request, {})",
            d["url"].as_str().unwrap_or(""),
            d["mode"].as_str().unwrap_or(""),
            d["connections"],
            d["batch"],
            d["body_bytes"].as_u64().unwrap_or(0) / d["batch"].as_u64().unwrap_or(1).max(1),
            d["content_type"].as_str().unwrap_or(""),
        ),
    );
    row(
        "measured",
        format!(
            "{:.1} s (after {} s warm-up)",
            d["duration_seconds"].as_f64().unwrap_or(0.0),
            d["warmup_seconds"]
        ),
    );
    row(
        "rate",
        format!(
            "{:.0} events/s, {:.0} requests/s",
            d["events_per_second"].as_f64().unwrap_or(0.0),
            d["requests_per_second"].as_f64().unwrap_or(0.0)
        ),
    );
    let rejected = d["rejected_requests"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".into());
    row(
        "accepted",
        format!(
            "{} events in {} requests",
            d["accepted_events"], d["accepted_requests"]
        ),
    );
    row("rejected requests", rejected);
    let l = &d["request_latency_seconds"];
    row(
        "request latency",
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            ms(&l["p50"]),
            ms(&l["p90"]),
            ms(&l["p99"]),
            ms(&l["p99_9"]),
            ms(&l["max"])
        ),
    );
    let e = &d["e2e_latency_seconds"];
    row(
        "e2e latency (≤ bucket)",
        if e.is_null() {
            "— (no deliveries seen in /metrics)".into()
        } else {
            format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} events)",
                ms(&e["p50"]),
                ms(&e["p90"]),
                ms(&e["p99"]),
                ms(&e["p99_9"]),
                ms(&e["max"]),
                e["count"]
            )
        },
    );
    let engine = &d["engine"];
    row(
        "engine",
        format!(
            "{} cores, peak RSS {}",
            engine["cpu_cores"]
                .as_f64()
                .map_or("—".into(), |c| format!("{c:.2}")),
            engine["rss_max_bytes"].as_u64().map_or("—".into(), mib),
        ),
    );
    if let Some(minutes) = engine["rss_max_bytes_by_minute"]
        .as_array()
        .filter(|m| m.len() > 1)
    {
        let peaks: Vec<String> = minutes
            .iter()
            .map(|b| mib(b.as_u64().unwrap_or(0)))
            .collect();
        row("peak RSS per minute", peaks.join(", "));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// discard-server

/// A minimal HTTP server that reads every body fully and answers 202 `{"accepted":N}` (N: the
/// body's newline-terminated lines, counted without parsing): the HTTP ceiling.
pub(crate) fn discard_server(address: &str) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("veltrix bench discard-server: {e}");
            return exit::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(address).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("veltrix bench discard-server: cannot listen on {address}: {e}");
                return exit::FAILURE;
            }
        };
        let local = listener
            .local_addr()
            .map_or_else(|_| address.to_owned(), |a| a.to_string());
        println!("http://{local}/v1/events");
        let _ = std::io::stdout().flush();
        let app = axum::Router::new().fallback(discard);
        match axum::serve(listener, app).await {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("veltrix bench discard-server: {e}");
                exit::FAILURE
            }
        }
    })
}

async fn discard(request: axum::extract::Request) -> impl axum::response::IntoResponse {
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let lines = body.iter().filter(|&&b| b == b'\n').count()
        + usize::from(body.last().is_some_and(|&b| b != b'\n'));
    (
        axum::http::StatusCode::ACCEPTED,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        format!("{{\"accepted\":{lines}}}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spreads_requests_evenly_over_connections() {
        // 1,000 requests/s over 4 connections: one request every ms overall, each connection
        // every 4 ms, interleaved.
        let at = |c, k| scheduled_offset(c, k, 4, 1000.0);
        assert_eq!(at(0, 0), Duration::ZERO);
        assert_eq!(at(1, 0), Duration::from_millis(1));
        assert_eq!(at(3, 0), Duration::from_millis(3));
        assert_eq!(at(0, 1), Duration::from_millis(4));
        assert_eq!(at(2, 10), Duration::from_millis(42));
        // Over one second, every connection has its share and the total is the rate.
        let due_in_first_second: usize = (0..4)
            .map(|c| {
                (0..)
                    .take_while(|&k| at(c, k) < Duration::from_secs(1))
                    .count()
            })
            .sum();
        assert_eq!(due_in_first_second, 1000);
        // The schedule does not depend on what happened before (open loop).
        assert_eq!(at(1, 250), Duration::from_millis(1001));
    }

    #[test]
    fn rates_and_mixes_parse() {
        assert_eq!(parse_rate("max"), Ok(Rate::Max));
        assert_eq!(parse_rate("10_000"), Ok(Rate::PerSecond(10_000.0)));
        assert!(parse_rate("0").is_err());
        assert_eq!(
            parse_type_mix("order.created=8, payment.captured=2")
                .unwrap()
                .0,
            vec![("order.created".into(), 8), ("payment.captured".into(), 2)]
        );
        assert_eq!(parse_type_mix("a").unwrap().0, vec![("a".into(), 1)]);
        assert!(parse_type_mix("a=x").is_err());
        assert!(parse_type_mix("a=0").is_err());
    }

    #[test]
    fn bodies_have_the_requested_shape_and_size() {
        let mix = parse_type_mix("order.created=8,payment.captured=2")
            .unwrap()
            .0;
        let b = bodies(BodyKind::Ndjson, 100, &mix, 250, 2);
        let text = std::str::from_utf8(b[0]).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 100);
        let orders = lines.iter().filter(|l| l.contains("order.created")).count();
        assert!((70..=90).contains(&orders), "{orders}");
        for line in &lines {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["specversion"], "1.0");
            assert!((240..=260).contains(&line.len()), "{}", line.len());
        }
        let batch = bodies(BodyKind::Batch, 3, &mix, 100, 1);
        assert_eq!(
            serde_json::from_slice::<Value>(batch[0])
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            3
        );
        let one = bodies(BodyKind::Structured, 1, &mix, 100, 1);
        assert!(serde_json::from_slice::<Value>(one[0]).unwrap().is_object());
    }

    const BEFORE: &str = r#"# TYPE veltrix_e2e_latency_seconds histogram
veltrix_e2e_latency_seconds_bucket{pipeline="a",le="0.001"} 10
veltrix_e2e_latency_seconds_bucket{pipeline="a",le="0.01"} 10
veltrix_e2e_latency_seconds_bucket{pipeline="a",le="+Inf"} 10
veltrix_e2e_latency_seconds_sum{pipeline="a"} 0.005
veltrix_e2e_latency_seconds_count{pipeline="a"} 10
veltrix_other_bucket{le="0.001"} 99
"#;

    const AFTER: &str = r#"veltrix_e2e_latency_seconds_bucket{pipeline="a",le="0.001"} 60
veltrix_e2e_latency_seconds_bucket{pipeline="a",le="0.01"} 105
veltrix_e2e_latency_seconds_bucket{pipeline="a",le="+Inf"} 110
veltrix_e2e_latency_seconds_bucket{pipeline="b",le="0.001"} 40
veltrix_e2e_latency_seconds_bucket{pipeline="b",le="0.01"} 100
veltrix_e2e_latency_seconds_bucket{pipeline="b",le="+Inf"} 100
"#;

    #[test]
    fn percentiles_come_from_the_bucket_difference_summed_over_pipelines() {
        let before = parse_buckets(BEFORE, "veltrix_e2e_latency_seconds");
        assert_eq!(before.len(), 3);
        assert_eq!(before[&OrderedF64(0.001)], 10.0);
        let after = parse_buckets(AFTER, "veltrix_e2e_latency_seconds");
        assert_eq!(after[&OrderedF64(0.001)], 100.0);
        assert_eq!(after[&OrderedF64(f64::INFINITY)], 210.0);
        // Difference: ≤1 ms: 90, ≤10 ms: 195 (cumulative), +Inf: 200.
        let p = bucket_percentiles(&before, &after, &[0.45, 0.5, 0.9, 0.975, 0.99]).unwrap();
        assert_eq!(p.count, 200);
        assert_eq!(
            p.quantiles,
            vec![
                (0.45, 0.001),
                (0.5, 0.01),
                (0.9, 0.01),
                (0.975, 0.01),
                (0.99, f64::INFINITY)
            ]
        );
        assert_eq!(p.max, f64::INFINITY);
        // Nothing observed in between: no percentiles.
        assert_eq!(bucket_percentiles(&after, &after, &[0.5]), None);
        // Everything within the first bucket.
        let only_fast = parse_buckets(
            "veltrix_e2e_latency_seconds_bucket{le=\"0.001\"} 5\nveltrix_e2e_latency_seconds_bucket{le=\"+Inf\"} 5\n",
            "veltrix_e2e_latency_seconds",
        );
        let p = bucket_percentiles(&Buckets::new(), &only_fast, &[0.5, 0.999]).unwrap();
        assert_eq!(p.quantiles, vec![(0.5, 0.001), (0.999, 0.001)]);
        assert_eq!(p.max, 0.001);
    }
}
