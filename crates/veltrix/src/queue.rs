//! `veltrix queue inspect`: what is on disk for each queue — segments, events, every consumer's
//! lag, the oldest event's age and an integrity check.
//!
//! Read-only by design: it goes through [`veltrix_log::inspect_dir`], which only opens files for
//! reading (never `Log::open`, which recovers, truncates and starts a writer), so it is safe on
//! the data dir of a running engine. It then shows a snapshot: cursor positions as last persisted
//! (a running engine persists them every 250 ms), and an in-progress write at the tail shows as a
//! torn tail, which is not counted as damage (`open` would cut it off).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use veltrix_core::config::DEFAULT_DATA_DIR;
use veltrix_core::event::Event;
use veltrix_log::{DamagedRange, DirInfo, LogOptions, OsFs, Record, inspect_dir};

use crate::cli::exit;

/// Arguments of `veltrix queue inspect`.
pub(crate) struct InspectArgs<'a> {
    pub(crate) data_dir: Option<&'a Path>,
    pub(crate) config: Option<&'a Path>,
    pub(crate) queue: Option<&'a str>,
    pub(crate) json: bool,
}

/// 0 when every queue is clean, 1 when a queue is missing, unreadable or damaged, 78 for an
/// invalid config.
pub(crate) fn inspect(args: &InspectArgs<'_>) -> u8 {
    let data_dir = match (args.data_dir, args.config) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(path)) => match crate::load_config(path) {
            Ok(loaded) => loaded.config.data_dir,
            Err(diagnostics) => {
                for d in &diagnostics {
                    eprintln!("{d}");
                }
                eprintln!("veltrix: {} is invalid", path.display());
                return exit::CONFIG;
            }
        },
        (None, None) => PathBuf::from(DEFAULT_DATA_DIR),
    };
    let root = data_dir.join("queues");
    let names = match args.queue {
        Some(name) => vec![name.to_owned()],
        None => match queue_names(&root) {
            Ok(names) => names,
            Err(e) => {
                let error = format!("cannot list queues in {}: {e}", root.display());
                if args.json {
                    print_json(&json!({
                        "data_dir": data_dir.display().to_string(),
                        "queues": [],
                        "error": error,
                    }));
                } else {
                    eprintln!("veltrix: {error}");
                }
                return exit::FAILURE;
            }
        },
    };
    let now = SystemTime::now();
    let queues: Vec<Queue> = names
        .into_iter()
        .map(|name| {
            let dir = root.join(&name);
            let info = if dir.is_dir() {
                read_queue_dir(&dir)
            } else {
                Err(format!(
                    "no queue `{name}`: {} is not a directory",
                    dir.display()
                ))
            };
            let age = info.as_ref().ok().and_then(|i| oldest_event_age(i, now));
            Queue {
                name,
                dir,
                info,
                age,
            }
        })
        .collect();
    if args.json {
        print_json(&json!({
            "data_dir": data_dir.display().to_string(),
            "queues": queues.iter().map(Queue::to_json).collect::<Vec<_>>(),
        }));
    } else if queues.is_empty() {
        println!("no queues in {}", root.display());
    } else {
        for (i, q) in queues.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{}", q.render());
        }
    }
    if queues.iter().all(Queue::is_clean) {
        exit::OK
    } else {
        exit::FAILURE
    }
}

/// The read-only look at one queue directory (also `veltrix validate --check-data`).
pub(crate) fn read_queue_dir(dir: &Path) -> Result<DirInfo, String> {
    inspect_dir(&OsFs, dir, LogOptions::default().record_bytes_max).map_err(|e| e.to_string())
}

/// Queue directories under `root`, by name.
pub(crate) fn queue_names(root: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_type()?.is_dir()
            && let Ok(name) = entry.file_name().into_string()
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("a JSON value serialises")
    );
}

/// How old the oldest retained event is, and how that is known.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Age {
    /// Seconds from the reference time to now (negative when the reference is in the future,
    /// e.g. a producer's clock running ahead).
    seconds: f64,
    source: AgeSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgeSource {
    /// The record's accepted-at prefix: when ingest accepted the event, by the engine's clock.
    AcceptedAt,
    /// The event's own CloudEvents `time` attribute (a record stored without the accepted-at
    /// prefix): when the producer says it happened, by the producer's clock — not when Veltrix
    /// accepted it.
    EventTime,
    /// The oldest segment file's modification time: the file was last written after its first
    /// event arrived, so the event is *at least* this old (a lower bound).
    SegmentMtime,
}

impl AgeSource {
    fn as_str(self) -> &'static str {
        match self {
            AgeSource::AcceptedAt => "accepted_at",
            AgeSource::EventTime => "event_time",
            AgeSource::SegmentMtime => "segment_mtime",
        }
    }
}

/// The age of the oldest retained event, from the oldest readable record (the log itself keeps
/// no timestamps): its accepted-at prefix when it has one; else, for a record stored without
/// the prefix, its CloudEvents `time` attribute; else the oldest segment's mtime (a lower
/// bound). `None` when the queue holds no readable record.
///
/// The one place that knows the stored record's layout for this purpose.
fn oldest_event_age(info: &DirInfo, now: SystemTime) -> Option<Age> {
    let Record { payload, .. } = info.oldest.as_ref()?;
    // A prefixed record is 8 binary bytes and then a JSON object; a record without the prefix is
    // the JSON object alone, whose bytes from 8 on are never a whole JSON object.
    let (accepted_micros, body) = veltrix_engine::record::split(payload);
    if serde_json::from_slice::<Value>(body).is_ok_and(|v| v.is_object())
        && let Some(accepted) =
            SystemTime::UNIX_EPOCH.checked_add(Duration::from_micros(accepted_micros))
    {
        return Some(Age {
            seconds: seconds_between(accepted, now),
            source: AgeSource::AcceptedAt,
        });
    }
    let event_time = Event::from_stored(payload)
        .ok()
        .and_then(|event| event.time().and_then(parse_rfc3339));
    if let Some(time) = event_time {
        return Some(Age {
            seconds: seconds_between(time, now),
            source: AgeSource::EventTime,
        });
    }
    let oldest_segment = info.segments.first()?;
    let modified = std::fs::metadata(&oldest_segment.path)
        .and_then(|m| m.modified())
        .ok()?;
    Some(Age {
        seconds: seconds_between(modified, now),
        source: AgeSource::SegmentMtime,
    })
}

fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let time = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    let since_epoch = Duration::new(
        u64::try_from(time.timestamp()).ok()?,
        time.timestamp_subsec_nanos(),
    );
    SystemTime::UNIX_EPOCH.checked_add(since_epoch)
}

/// `now - then` in seconds, negative when `then` is after `now`.
fn seconds_between(then: SystemTime, now: SystemTime) -> f64 {
    match now.duration_since(then) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// One queue's outcome.
struct Queue {
    name: String,
    dir: PathBuf,
    info: Result<DirInfo, String>,
    age: Option<Age>,
}

impl Queue {
    fn is_clean(&self) -> bool {
        self.info.as_ref().is_ok_and(|i| i.integrity.is_clean())
    }

    fn to_json(&self) -> Value {
        let info = match &self.info {
            Ok(info) => info,
            Err(error) => {
                return json!({
                    "name": self.name,
                    "dir": self.dir.display().to_string(),
                    "clean": false,
                    "error": error,
                });
            }
        };
        let range = |d: &DamagedRange| {
            json!({
                "segment": d.segment,
                "byte_start": d.byte_start,
                "byte_end": d.byte_end,
                "records": d.records,
            })
        };
        json!({
            "name": self.name,
            "dir": self.dir.display().to_string(),
            "clean": self.is_clean(),
            "segments": info.segments.iter().map(|s| json!({
                "base_offset": s.base_offset,
                "bytes": s.bytes,
                "path": s.path.display().to_string(),
            })).collect::<Vec<_>>(),
            "bytes": total_bytes(info),
            "events": {
                "first_offset": info.first_offset,
                "next_offset": info.next_offset,
                "retained": retained(info),
            },
            "cursors": info.cursors.iter().map(|c| json!({
                "name": c.name,
                "committed_offset": c.committed.offset,
                "lag": c.lag_records,
            })).collect::<Vec<_>>(),
            "oldest_event_age": self.age.map(|a| json!({
                "seconds": a.seconds,
                "source": a.source.as_str(),
                "lower_bound": a.source == AgeSource::SegmentMtime,
                "offset": info.oldest.as_ref().map(|r| r.offset),
            })),
            "integrity": {
                "records_ok": info.integrity.records_ok,
                "damaged": info.integrity.damaged.iter().map(range).collect::<Vec<_>>(),
                "ledger_error": info.integrity.ledger_error,
                "torn_tail": info.torn_tail.as_ref().map(range),
            },
        })
    }

    /// The human form: a block per queue with aligned tables for segments and cursors.
    fn render(&self) -> String {
        let mut out = format!("queue {}  ({})\n", self.name, self.dir.display());
        let info = match &self.info {
            Ok(info) => info,
            Err(error) => {
                out.push_str(&format!("  ERROR  {error}\n"));
                return out;
            }
        };
        let line = |out: &mut String, key: &str, value: &str| {
            out.push_str(&format!("  {key:<12} {value}\n"));
        };
        line(
            &mut out,
            "bytes",
            &format!(
                "{} in {} segment(s)",
                human_bytes(total_bytes(info)),
                info.segments.len()
            ),
        );
        line(
            &mut out,
            "events",
            &format!(
                "{} retained (offsets {}..{})",
                retained(info),
                info.first_offset,
                info.next_offset
            ),
        );
        let age = match (self.age, &info.oldest) {
            (Some(age), Some(oldest)) => match age.source {
                AgeSource::AcceptedAt => format!(
                    "{} since it was accepted (offset {})",
                    human_duration(age.seconds.max(0.0)),
                    oldest.offset
                ),
                AgeSource::EventTime if age.seconds < 0.0 => format!(
                    "its `time` is {} in the future (producer clock ahead?; offset {})",
                    human_duration(-age.seconds),
                    oldest.offset
                ),
                AgeSource::EventTime => format!(
                    "{} since its `time` (offset {})",
                    human_duration(age.seconds),
                    oldest.offset
                ),
                AgeSource::SegmentMtime => format!(
                    "at least {} (no timestamp in the record; oldest segment last written then)",
                    human_duration(age.seconds.max(0.0))
                ),
            },
            (None, Some(_)) => {
                "unknown (no timestamp in the record, segment mtime unreadable)".into()
            }
            (_, None) => "-- (no readable events)".into(),
        };
        line(&mut out, "oldest event", &age);

        out.push_str("  segments\n");
        let mut rows = vec![vec![
            "base offset".to_owned(),
            "bytes".to_owned(),
            "path".to_owned(),
        ]];
        for s in &info.segments {
            rows.push(vec![
                s.base_offset.to_string(),
                s.bytes.to_string(),
                s.path.display().to_string(),
            ]);
        }
        table(&mut out, &rows, &[true, true, false]);

        if info.cursors.is_empty() {
            let why = if info.integrity.ledger_error.is_some() {
                "unknown (the cursor ledger is damaged)"
            } else {
                "none persisted"
            };
            line(&mut out, "cursors", why);
        } else {
            out.push_str("  cursors\n");
            let mut rows = vec![vec![
                "cursor".to_owned(),
                "committed".to_owned(),
                "lag (events)".to_owned(),
            ]];
            for c in &info.cursors {
                rows.push(vec![
                    c.name.clone(),
                    c.committed.offset.to_string(),
                    c.lag_records.to_string(),
                ]);
            }
            table(&mut out, &rows, &[false, true, true]);
        }

        let integrity = &info.integrity;
        let verdict = if integrity.is_clean() {
            format!("ok: {} record(s) checked, no damage", integrity.records_ok)
        } else {
            format!(
                "DAMAGED: {} record(s) ok, {} damaged range(s)",
                integrity.records_ok,
                integrity.damaged.len()
            )
        };
        line(&mut out, "integrity", &verdict);
        for d in &integrity.damaged {
            line(
                &mut out,
                "",
                &format!(
                    "damaged: segment {} bytes {}..{} ({} record(s) lost)",
                    d.segment, d.byte_start, d.byte_end, d.records
                ),
            );
        }
        if let Some(e) = &integrity.ledger_error {
            line(
                &mut out,
                "",
                &format!(
                    "cursor ledger unusable: {e} (consumers would restart at the oldest event)"
                ),
            );
        }
        if let Some(t) = &info.torn_tail {
            line(
                &mut out,
                "",
                &format!(
                    "note: torn tail of {} byte(s) at segment {} byte {} (a write in progress or cut short; the next open cuts it off)",
                    t.byte_end - t.byte_start,
                    t.segment,
                    t.byte_start
                ),
            );
        }
        out
    }
}

fn total_bytes(info: &DirInfo) -> u64 {
    info.segments.iter().map(|s| s.bytes).sum()
}

fn retained(info: &DirInfo) -> u64 {
    info.next_offset.saturating_sub(info.first_offset)
}

/// Appends `rows` (the first is the header) as an aligned table indented by four spaces;
/// `right[i]` right-aligns column `i`.
fn table(out: &mut String, rows: &[Vec<String>], right: &[bool]) {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let width = widths[i];
                if right[i] {
                    format!("{cell:>width$}")
                } else if i + 1 == columns {
                    cell.clone()
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        out.push_str("    ");
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {} ({bytes} bytes)", UNITS[unit])
}

fn human_duration(seconds: f64) -> String {
    let s = seconds as u64;
    match s {
        _ if seconds < 1.0 => format!("{:.0}ms", seconds * 1e3),
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_with_offsets_parse_to_the_same_instant() {
        let utc = parse_rfc3339("2024-05-01T10:00:00Z").unwrap();
        let offset = parse_rfc3339("2024-05-01T12:00:00.000+02:00").unwrap();
        assert_eq!(utc, offset);
        assert_eq!(
            utc.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
            Duration::from_secs(1_714_557_600)
        );
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(human_duration(0.25), "250ms");
        assert_eq!(human_duration(12.34), "12.3s");
        assert_eq!(human_duration(125.0), "2m05s");
        assert_eq!(human_duration(7260.0), "2h01m");
        assert_eq!(human_duration(90000.0), "1d01h");
        assert_eq!(human_bytes(100), "100 B");
        assert_eq!(human_bytes(1536), "1.5 KiB (1536 bytes)");
    }

    #[test]
    fn tables_align_columns() {
        let mut out = String::new();
        let rows = vec![
            vec!["name".into(), "lag".into()],
            vec!["archive".into(), "5".into()],
            vec!["a".into(), "12345".into()],
        ];
        table(&mut out, &rows, &[false, true]);
        assert_eq!(
            out,
            "    name       lag\n    archive      5\n    a        12345\n"
        );
    }
}
