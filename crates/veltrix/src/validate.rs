//! `veltrix validate FILE…`: everything `config::load` finds (schema, references, topology lints),
//! then what only the machine can tell: the free disk of `data_dir` (always), whether http and
//! nats sinks and nats sources accept a TCP connection (`--check-connections`) and the integrity of the queues' logs already
//! in `data_dir` (`--check-data`, read-only, through the same reader as `veltrix queue inspect`).
//!
//! Every finding carries a stable code (`veltrix_core::config::lints::codes`, documented in
//! `docs/config-lints.md`). Output is human (`FILE:LINE:COL: error[V012]: …` on stderr, one
//! summary line per file) or one JSON document on stdout (`--format json`). A file with an error
//! makes the exit code 78; warnings never do.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use veltrix_core::config::lints::{self, FreeDisk, Locations, codes};
use veltrix_core::config::{
    Config, Diagnostic, Durability, Loaded, Severity, SinkConfig, SourceConfig,
};

use crate::cli::exit;
use crate::queue::{queue_names, read_queue_dir};

/// How `validate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Diagnostics with snippets on stderr, a summary line per file.
    Text,
    /// One JSON document on stdout: `{"files": [{"file", "valid", "diagnostics": [...]}]}`.
    Json,
}

/// Arguments of `veltrix validate`.
pub(crate) struct ValidateArgs<'a> {
    pub(crate) files: &'a [PathBuf],
    pub(crate) format: Format,
    /// Try a TCP connection to every http and nats sink and every nats source.
    pub(crate) check_connections: bool,
    /// Check the integrity of every queue directory in `data_dir`.
    pub(crate) check_data: bool,
}

/// Longest wait for one TCP connection of `--check-connections`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What was found in one file.
struct Report {
    file: String,
    /// Sorted by position.
    diagnostics: Vec<Diagnostic>,
    /// Queues, pipelines and sinks, when the config loaded.
    counts: Option<(usize, usize, usize)>,
}

impl Report {
    fn valid(&self) -> bool {
        self.counts.is_some() && !self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Checks every file; 0 when all are valid (warnings allowed), 78 when any is not.
pub(crate) fn validate(args: &ValidateArgs<'_>) -> u8 {
    let reports: Vec<Report> = args.files.iter().map(|f| check_file(f, args)).collect();
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&reports)).expect("JSON serialises")
        ),
        Format::Text => reports.iter().for_each(print_text),
    }
    if reports.iter().all(Report::valid) {
        exit::OK
    } else {
        exit::CONFIG
    }
}

fn check_file(path: &Path, args: &ValidateArgs<'_>) -> Report {
    let file = path.display().to_string();
    let loaded = match crate::load_config(path) {
        Ok(loaded) => loaded,
        Err(diagnostics) => {
            return Report {
                file,
                diagnostics,
                counts: None,
            };
        }
    };
    let Loaded {
        config,
        mut warnings,
        locations,
    } = loaded;
    let mut diagnostics = std::mem::take(&mut warnings);
    diagnostics.extend(disk_space(&config, &locations));
    if args.check_connections {
        diagnostics.extend(check_connections(&config, &locations));
    }
    if args.check_data {
        diagnostics.extend(check_data(&config, &locations));
    }
    diagnostics.sort_by_key(|d| (d.line, d.col, d.severity));
    Report {
        file,
        diagnostics,
        counts: Some((
            config.queues.len(),
            config.pipelines.len(),
            config.sinks.len(),
        )),
    }
}

fn print_text(report: &Report) {
    for d in &report.diagnostics {
        eprintln!("{d}");
    }
    let count = |severity| {
        report
            .diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count()
    };
    match report.counts {
        Some((queues, pipelines, sinks)) if report.valid() => println!(
            "{}: valid ({queues} queue(s), {pipelines} pipeline(s), {sinks} sink(s), {} \
             warning(s))",
            report.file,
            count(Severity::Warning)
        ),
        _ => eprintln!(
            "{}: invalid ({} error(s))",
            report.file,
            count(Severity::Error)
        ),
    }
}

fn to_json(reports: &[Report]) -> Value {
    let files: Vec<Value> = reports
        .iter()
        .map(|r| {
            json!({
                "file": r.file,
                "valid": r.valid(),
                "diagnostics": r.diagnostics.iter().map(|d| json!({
                    "code": d.code,
                    "severity": d.severity.as_str(),
                    "file": d.file,
                    "line": d.line,
                    "col": d.col,
                    "message": d.message,
                    "hint": d.hint,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "files": files })
}

/// V040/V041: `max_bytes` against the free disk of `data_dir` (or of its nearest existing
/// ancestor when it does not exist yet). Says nothing when the disk cannot be measured.
fn disk_space(config: &Config, at: &Locations) -> Vec<Diagnostic> {
    let Some(measured) = nearest_existing(&config.data_dir) else {
        return Vec::new();
    };
    let Ok(stat) = rustix::fs::statvfs(&measured) else {
        return Vec::new();
    };
    let available_bytes = stat.f_bavail.saturating_mul(stat.f_frsize);
    lints::disk_space(
        config,
        at,
        FreeDisk {
            measured: &measured,
            available_bytes,
        },
    )
}

/// `path` if it exists, else its nearest existing ancestor (`.` for a relative path).
fn nearest_existing(path: &Path) -> Option<PathBuf> {
    let mut candidate = path;
    loop {
        if candidate.as_os_str().is_empty() {
            return Some(PathBuf::from("."));
        }
        if candidate.exists() {
            return Some(candidate.to_path_buf());
        }
        candidate = candidate.parent()?;
    }
}

/// What `--check-connections` tries to reach.
struct Target<'a> {
    /// `sinks` or `sources`.
    section: &'static str,
    name: &'a str,
    /// `http sink`, `postgres sink`, `nats sink`, `nats source`.
    kind: &'static str,
    url: &'a str,
    timeout: Duration,
}

/// V042 / V047: every http, postgres or nats sink, and every nats source, must accept a TCP
/// connection at its `url` (for NATS, at one of its servers at least), tried in parallel, each within
/// [`CONNECT_TIMEOUT`].
fn check_connections(config: &Config, at: &Locations) -> Vec<Diagnostic> {
    let mut targets: Vec<Target<'_>> = config
        .sinks
        .iter()
        .filter_map(|(name, sink)| match sink {
            SinkConfig::Http { url, timeout, .. } => Some(Target {
                section: "sinks",
                name,
                kind: "http sink",
                url,
                timeout: *timeout,
            }),
            SinkConfig::Nats(nats) => Some(Target {
                section: "sinks",
                name,
                kind: "nats sink",
                url: &nats.url,
                timeout: nats.timeout,
            }),
            SinkConfig::Postgres(pg) => Some(Target {
                section: "sinks",
                name,
                kind: "postgres sink",
                url: &pg.url,
                timeout: pg.timeout,
            }),
            _ => None,
        })
        .collect();
    targets.extend(
        config
            .sources
            .iter()
            .filter_map(|(name, source)| match source {
                SourceConfig::Nats(nats) => Some(Target {
                    section: "sources",
                    name,
                    kind: "nats source",
                    url: &nats.url,
                    timeout: CONNECT_TIMEOUT,
                }),
                _ => None,
            }),
    );
    let outcomes: Vec<Option<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                let (url, timeout) = (t.url, t.timeout.min(CONNECT_TIMEOUT));
                let nats = t.kind.starts_with("nats");
                scope.spawn(move || {
                    if nats {
                        connect_nats(url, timeout).err()
                    } else {
                        connect(url, timeout).err()
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("connect thread"))
            .collect()
    });
    targets
        .iter()
        .zip(outcomes)
        .filter_map(|(t, failure)| {
            let why = failure?;
            let (code, consequence) = if t.section == "sinks" {
                (
                    codes::SINK_UNREACHABLE,
                    "until then the pipeline retries and dead-letters its batches",
                )
            } else {
                (
                    codes::SOURCE_UNREACHABLE,
                    "the engine starts anyway and keeps retrying; nothing is consumed until it connects",
                )
            };
            let singular = &t.section[..t.section.len() - 1];
            Some(at.diagnostic(
                at.value(&[t.section, t.name, "url"]),
                Severity::Warning,
                code,
                format!("{singular} `{}` cannot be reached at {}: {why}", t.name, t.url),
                Some(format!(
                    "start the {} service or fix `url`; {consequence}",
                    if t.kind.starts_with("nats") { "NATS" } else { "downstream" }
                )),
            ))
        })
        .collect()
}

/// Connects to one of the servers of a NATS `url`; the error says why none.
fn connect_nats(url: &str, timeout: Duration) -> Result<(), String> {
    let servers = veltrix_core::config::nats_servers(url)?;
    let mut last = "no server".to_owned();
    for (host, port) in servers {
        match connect_host(&host, port, timeout) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects to the host and port of an `http://` URL; the error says why not.
fn connect(url: &str, timeout: Duration) -> Result<(), String> {
    let (host, port) = host_port(url).ok_or_else(|| "no host in the URL".to_owned())?;
    connect_host(&host, port, timeout)
}

/// Connects to `host:port` (every address it resolves to, in turn).
fn connect_host(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    let addresses: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .collect();
    let mut last = format!("`{host}` resolves to no address");
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                last = format!("no answer from {address} within {timeout:?}");
            }
            Err(e) => last = format!("{address}: {e}"),
        }
    }
    Err(last)
}

/// `("example.com", 8080)` from `http://user@example.com:8080/path`; port 80 by default (5432
/// for `postgres://` and `postgresql://`).
fn host_port(url: &str) -> Option<(String, u16)> {
    let (rest, default_port) = match url.strip_prefix("http://") {
        Some(rest) => (rest, 80),
        None => (
            url.strip_prefix("postgres://")
                .or_else(|| url.strip_prefix("postgresql://"))?,
            5432,
        ),
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// V043–V046: the queues' logs already in `<data_dir>/queues/`, read-only. A queue whose
/// directory does not exist yet has nothing to check.
fn check_data(config: &Config, at: &Locations) -> Vec<Diagnostic> {
    let root = config.data_dir.join("queues");
    let Ok(on_disk) = queue_names(&root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut known = HashSet::new();
    for (name, queue) in &config.queues {
        known.insert(name.as_str());
        if queue.durability != Durability::Memory && on_disk.contains(name) {
            let span = at.key(&["queues", name]);
            check_log(
                &root.join(name),
                &format!("queue `{name}`"),
                span,
                at,
                &mut out,
            );
        }
    }
    for (pipeline, p) in &config.pipelines {
        known.insert(p.dead_letter.as_str());
        if !on_disk.contains(&p.dead_letter) {
            continue;
        }
        let span = at
            .value(&["pipelines", pipeline, "dead_letter"])
            .or_else(|| at.key(&["pipelines", pipeline]));
        let what = format!(
            "dead-letter queue `{}` of pipeline `{pipeline}`",
            p.dead_letter
        );
        let Some(waiting) = check_log(
            &root.join(&p.dead_letter),
            &what,
            span.clone(),
            at,
            &mut out,
        ) else {
            continue;
        };
        if waiting > 0 {
            out.push(at.diagnostic(
                span,
                Severity::Warning,
                codes::DEAD_LETTERS_WAITING,
                format!(
                    "{what} holds {waiting} event(s) that failed for good: nothing drains it but \
                     an operator, and a full one holds the pipeline"
                ),
                Some(format!(
                    "look with `veltrix dlq list {pipeline}`, then `veltrix dlq replay` or \
                     `veltrix dlq purge`"
                )),
            ));
        }
    }
    for name in on_disk.iter().filter(|n| !known.contains(n.as_str())) {
        let dir = root.join(name);
        let events = read_queue_dir(&dir)
            .map(|info| info.next_offset.saturating_sub(info.first_offset))
            .unwrap_or(0);
        out.push(at.diagnostic(
            at.value(&["data_dir"]),
            Severity::Warning,
            codes::DATA_ORPHANED,
            format!(
                "{} holds a queue `{name}` ({events} event(s)) that this config does not \
                 define: nothing will ever read it",
                dir.display()
            ),
            Some(format!(
                "define queue `{name}` again to deliver its events, or remove {} once they are \
                 not needed",
                dir.display()
            )),
        ));
    }
    out
}

/// Reports damage (V043) or an unreadable directory (V044) of the log in `dir`; the events
/// waiting for the slowest cursor otherwise.
fn check_log(
    dir: &Path,
    what: &str,
    span: Option<std::ops::Range<usize>>,
    at: &Locations,
    out: &mut Vec<Diagnostic>,
) -> Option<u64> {
    // `dir` is `<data_dir>/queues/<name>`.
    let data_dir = dir.parent().and_then(Path::parent).unwrap_or(dir);
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let inspect_hint = format!(
        "see `veltrix queue inspect --data-dir {} {name}`",
        data_dir.display()
    );
    let info = match read_queue_dir(dir) {
        Ok(info) => info,
        Err(e) => {
            out.push(at.diagnostic(
                span,
                Severity::Error,
                codes::DATA_UNREADABLE,
                format!("{what}: {} cannot be read as a log: {e}", dir.display()),
                Some(inspect_hint),
            ));
            return None;
        }
    };
    let integrity = &info.integrity;
    if !integrity.is_clean() {
        let lost: u64 = integrity.damaged.iter().map(|d| d.records).sum();
        let mut problems = Vec::new();
        if !integrity.damaged.is_empty() {
            problems.push(format!(
                "{} damaged range(s), {lost} record(s) lost",
                integrity.damaged.len()
            ));
        }
        if let Some(e) = &integrity.ledger_error {
            problems.push(format!(
                "the cursor ledger is unusable ({e}): consumers restart at the oldest event"
            ));
        }
        out.push(at.diagnostic(
            span,
            Severity::Error,
            codes::DATA_DAMAGED,
            format!(
                "{what}: the log in {} is damaged: {}",
                dir.display(),
                problems.join("; ")
            ),
            Some(format!(
                "{inspect_hint}; the engine skips and counts damaged records (never delivers \
                 them): restore them from a backup if they matter"
            )),
        ));
    }
    let retained = info.next_offset.saturating_sub(info.first_offset);
    Some(
        info.cursors
            .iter()
            .map(|c| c.lag_records)
            .max()
            .unwrap_or(retained),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_come_from_the_url() {
        let hp = |u: &str| host_port(u);
        assert_eq!(
            hp("http://127.0.0.1:9000/events"),
            Some(("127.0.0.1".into(), 9000))
        );
        assert_eq!(
            hp("http://example.com/x?y"),
            Some(("example.com".into(), 80))
        );
        assert_eq!(hp("http://u:p@h:81"), Some(("h".into(), 81)));
        assert_eq!(hp("http://[::1]:8080/"), Some(("::1".into(), 8080)));
        assert_eq!(hp("http://[::1]/"), Some(("::1".into(), 80)));
        assert_eq!(hp("http://:80/"), None);
        assert_eq!(hp("postgres://u:p@db:5433/x"), Some(("db".into(), 5433)));
        assert_eq!(
            hp("postgresql://db/x?sslmode=disable"),
            Some(("db".into(), 5432))
        );
        assert_eq!(hp("http://h:port/"), None);
    }

    #[test]
    fn a_missing_data_dir_is_measured_at_its_nearest_existing_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        assert_eq!(nearest_existing(&deep).unwrap(), dir.path());
        assert_eq!(
            nearest_existing(Path::new("no-such-dir/x")).unwrap(),
            Path::new(".")
        );
    }
}
