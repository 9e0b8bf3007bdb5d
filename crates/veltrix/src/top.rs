//! `veltrix top`: a terminal view of a running engine, refreshed from the admin API's
//! `GET /api/v1/stats` (schema: `docs/stats-api.md`).
//!
//! Three parts, so that everything but the terminal itself is testable:
//! - the model: [`Stats`], parsed leniently from the JSON (a missing or `null` field shows `-`);
//! - the view: [`View`] (stats, sort state, connection state) and [`render`], a pure function
//!   of the view and the frame's size (unit-tested with ratatui's `TestBackend`), plus
//!   [`plain`], the `--once` text snapshot built from the same columns;
//! - the loop: a fetcher thread polling the API every interval, the main thread drawing and
//!   reading keys. The terminal is restored on quit, on error and on panic.

use std::cmp::Ordering;
use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::Duration;

use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Cell, Padding, Paragraph, Row, Table};
use serde_json::Value;

use crate::cli::exit;
use crate::dlq::Api;

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

/// One `/api/v1/stats` document, as much of it as `top` shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Stats {
    pub version: String,
    pub uptime_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub cpu_seconds_total: Option<f64>,
    pub bottleneck: Option<Bottleneck>,
    pub queues: Vec<Queue>,
    pub pipelines: Vec<Pipeline>,
    pub sinks: Vec<Sink>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bottleneck {
    /// `pipeline` or `queue`.
    pub kind: String,
    pub name: String,
    /// `busy_ratio` of a pipeline, `fill_ratio` of a queue.
    pub ratio: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Queue {
    pub name: String,
    pub priority: Option<f64>,
    pub depth_events: Option<f64>,
    pub depth_bytes: Option<f64>,
    pub fill_ratio: Option<f64>,
    pub oldest_age_seconds: Option<f64>,
    pub rate_in_per_second: Option<f64>,
}

impl Queue {
    /// The oldest event's age; none when the queue is empty (whatever the engine says).
    fn oldest_age(&self) -> Option<f64> {
        if self.depth_events == Some(0.0) {
            None
        } else {
            self.oldest_age_seconds
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Pipeline {
    pub name: String,
    pub rate_per_second: Option<f64>,
    pub latency_p50_seconds: Option<f64>,
    pub latency_p99_seconds: Option<f64>,
    pub busy_ratio: Option<f64>,
    pub retries_total: Option<f64>,
    pub dlq_depth_events: Option<f64>,
    pub delivered_total: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sink {
    pub name: String,
    pub kind: String,
    pub target: String,
    pub requests_ok_total: Option<f64>,
    pub requests_failed_total: Option<f64>,
    pub request_p99_seconds: Option<f64>,
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v[key].as_f64().filter(|n| n.is_finite())
}

fn list<T>(v: &Value, key: &str, one: impl Fn(&Value) -> T) -> Vec<T> {
    v[key]
        .as_array()
        .map(|items| items.iter().map(one).collect())
        .unwrap_or_default()
}

impl Stats {
    /// Reads a stats document; fails only when it is not a JSON object at all.
    pub(crate) fn from_json(v: &Value) -> Result<Stats, String> {
        if !v.is_object() {
            return Err("the stats answer is not a JSON object".to_owned());
        }
        let bottleneck = v["bottleneck"].as_object().map(|_| {
            let b = &v["bottleneck"];
            Bottleneck {
                kind: text(b, "kind"),
                name: text(b, "name"),
                ratio: num(b, "busy_ratio").or_else(|| num(b, "fill_ratio")),
            }
        });
        Ok(Stats {
            version: text(v, "version"),
            uptime_seconds: num(v, "uptime_seconds"),
            rss_bytes: num(&v["process"], "rss_bytes").map(|n| n as u64),
            cpu_seconds_total: num(&v["process"], "cpu_seconds_total"),
            bottleneck,
            queues: list(v, "queues", |q| Queue {
                name: text(q, "name"),
                priority: num(q, "priority"),
                depth_events: num(q, "depth_events"),
                depth_bytes: num(q, "depth_bytes"),
                fill_ratio: num(q, "fill_ratio"),
                oldest_age_seconds: num(q, "oldest_age_seconds"),
                rate_in_per_second: num(q, "rate_in_per_second"),
            }),
            pipelines: list(v, "pipelines", |p| Pipeline {
                name: text(p, "name"),
                rate_per_second: num(p, "rate_per_second"),
                latency_p50_seconds: num(p, "latency_p50_seconds"),
                latency_p99_seconds: num(p, "latency_p99_seconds"),
                busy_ratio: num(p, "busy_ratio"),
                retries_total: num(p, "retries_total"),
                dlq_depth_events: num(p, "dlq_depth_events"),
                delivered_total: num(p, "delivered_total"),
            }),
            sinks: list(v, "sinks", |s| Sink {
                name: text(s, "name"),
                kind: text(s, "type"),
                target: text(s, "target"),
                requests_ok_total: num(s, "requests_ok_total"),
                requests_failed_total: num(s, "requests_failed_total"),
                request_p99_seconds: num(s, "request_p99_seconds"),
            }),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------

const DASH: &str = "-";

/// `512 B`, `2.3 KiB`, `36.2 MiB`, `1.0 GiB`.
pub(crate) fn fmt_bytes(bytes: Option<f64>) -> String {
    let Some(b) = bytes else {
        return DASH.to_owned();
    };
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024.0 {
        return format!("{b:.0} B");
    }
    let mut value = b / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A latency or an age: `850µs`, `12.3ms`, `4.20s`, `3m05s`, `2h03m`, `3d04h`.
pub(crate) fn fmt_secs(seconds: Option<f64>) -> String {
    let Some(s) = seconds.filter(|s| *s >= 0.0) else {
        return DASH.to_owned();
    };
    if s < 0.001 {
        format!("{:.0}µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1}ms", s * 1e3)
    } else if s < 60.0 {
        format!("{s:.2}s")
    } else {
        let whole = s as u64;
        if whole < 3600 {
            format!("{}m{:02}s", whole / 60, whole % 60)
        } else if whole < 86_400 {
            format!("{}h{:02}m", whole / 3600, whole % 3600 / 60)
        } else {
            format!("{}d{:02}h", whole / 86_400, whole % 86_400 / 3600)
        }
    }
}

/// The engine's uptime: `12s`, `3m05s`, `2h03m`, `3d04h`.
pub(crate) fn fmt_uptime(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) if (0.0..60.0).contains(&s) => format!("{}s", s as u64),
        other => fmt_secs(other),
    }
}

/// Events per second: `0.0`, `95.0`, `12.3k`, `1.5M`.
pub(crate) fn fmt_rate(rate: Option<f64>) -> String {
    match rate {
        None => DASH.to_owned(),
        Some(r) if r < 1e3 => format!("{r:.1}"),
        Some(r) if r < 1e6 => format!("{:.1}k", r / 1e3),
        Some(r) => format!("{:.1}M", r / 1e6),
    }
}

/// A ratio as a percentage: `0.0%`, `12.5%`, `100.0%`.
pub(crate) fn fmt_pct(ratio: Option<f64>) -> String {
    match ratio {
        None => DASH.to_owned(),
        Some(r) => format!("{:.1}%", r * 100.0),
    }
}

/// A count, exact: `0`, `1150`.
pub(crate) fn fmt_count(n: Option<f64>) -> String {
    match n {
        None => DASH.to_owned(),
        Some(n) => format!("{n:.0}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Columns and sorting
// ---------------------------------------------------------------------------------------------

/// What a column sorts by. `Num(None)` (no value) sorts last in either direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Key<'a> {
    Text(&'a str),
    Num(Option<f64>),
}

fn compare(a: Key<'_>, b: Key<'_>, descending: bool) -> Ordering {
    let ordered = |o: Ordering| if descending { o.reverse() } else { o };
    match (a, b) {
        (Key::Text(a), Key::Text(b)) => ordered(a.cmp(b)),
        (Key::Num(Some(a)), Key::Num(Some(b))) => ordered(a.total_cmp(&b)),
        (Key::Num(None), Key::Num(None)) => Ordering::Equal,
        (Key::Num(None), _) => Ordering::Greater,
        (_, Key::Num(None)) => Ordering::Less,
        (Key::Text(_), Key::Num(_)) => Ordering::Less,
        (Key::Num(_), Key::Text(_)) => Ordering::Greater,
    }
}

/// One column of a table: its title, width, natural order, sort key and cell text.
pub(crate) struct Column<T> {
    pub title: &'static str,
    pub width: Width,
    /// Numbers sort biggest first, names A→Z, priorities most urgent first.
    pub descending: bool,
    pub key: for<'a> fn(&'a T) -> Key<'a>,
    pub cell: fn(&T) -> String,
}

/// How wide a column is and how its cells align.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Width {
    /// At least this wide, left-aligned; takes the spare width when no `Rest` column exists.
    Min(u16),
    /// Left-aligned text taking the spare width.
    Rest,
    /// Left-aligned text of this width.
    Text(u16),
    /// A right-aligned number of this width.
    Num(u16),
}

impl<T> Column<T> {
    fn numeric(&self) -> bool {
        matches!(self.width, Width::Num(_))
    }

    fn constraint(&self) -> Constraint {
        match self.width {
            Width::Min(w) => Constraint::Min(w),
            Width::Rest => Constraint::Fill(1),
            Width::Text(w) | Width::Num(w) => Constraint::Length(w),
        }
    }
}

pub(crate) const QUEUE_COLUMNS: [Column<Queue>; 7] = [
    Column {
        title: "QUEUE",
        width: Width::Min(10),
        descending: false,
        key: |q| Key::Text(&q.name),
        cell: |q| q.name.clone(),
    },
    Column {
        title: "PRIO",
        width: Width::Num(5),
        descending: false,
        key: |q| Key::Num(q.priority),
        cell: |q| fmt_count(q.priority),
    },
    Column {
        title: "DEPTH",
        width: Width::Num(9),
        descending: true,
        key: |q| Key::Num(q.depth_events),
        cell: |q| fmt_count(q.depth_events),
    },
    Column {
        title: "BYTES",
        width: Width::Num(10),
        descending: true,
        key: |q| Key::Num(q.depth_bytes),
        cell: |q| fmt_bytes(q.depth_bytes),
    },
    Column {
        title: "FILL",
        width: Width::Num(6),
        descending: true,
        key: |q| Key::Num(q.fill_ratio),
        cell: |q| fmt_pct(q.fill_ratio),
    },
    Column {
        title: "OLDEST",
        width: Width::Num(8),
        descending: true,
        key: |q| Key::Num(q.oldest_age()),
        cell: |q| fmt_secs(q.oldest_age()),
    },
    Column {
        title: "IN/S",
        width: Width::Num(8),
        descending: true,
        key: |q| Key::Num(q.rate_in_per_second),
        cell: |q| fmt_rate(q.rate_in_per_second),
    },
];

pub(crate) const PIPELINE_COLUMNS: [Column<Pipeline>; 8] = [
    Column {
        title: "PIPELINE",
        width: Width::Min(10),
        descending: false,
        key: |p| Key::Text(&p.name),
        cell: |p| p.name.clone(),
    },
    Column {
        title: "RATE/S",
        width: Width::Num(8),
        descending: true,
        key: |p| Key::Num(p.rate_per_second),
        cell: |p| fmt_rate(p.rate_per_second),
    },
    Column {
        title: "P50",
        width: Width::Num(8),
        descending: true,
        key: |p| Key::Num(p.latency_p50_seconds),
        cell: |p| fmt_secs(p.latency_p50_seconds),
    },
    Column {
        title: "P99",
        width: Width::Num(8),
        descending: true,
        key: |p| Key::Num(p.latency_p99_seconds),
        cell: |p| fmt_secs(p.latency_p99_seconds),
    },
    Column {
        title: "BUSY",
        width: Width::Num(6),
        descending: true,
        key: |p| Key::Num(p.busy_ratio),
        cell: |p| fmt_pct(p.busy_ratio),
    },
    Column {
        title: "RETRIES",
        width: Width::Num(8),
        descending: true,
        key: |p| Key::Num(p.retries_total),
        cell: |p| fmt_count(p.retries_total),
    },
    Column {
        title: "DLQ",
        width: Width::Num(6),
        descending: true,
        key: |p| Key::Num(p.dlq_depth_events),
        cell: |p| fmt_count(p.dlq_depth_events),
    },
    Column {
        title: "DELIVERED",
        width: Width::Num(10),
        descending: true,
        key: |p| Key::Num(p.delivered_total),
        cell: |p| fmt_count(p.delivered_total),
    },
];

pub(crate) const SINK_COLUMNS: [Column<Sink>; 6] = [
    Column {
        title: "SINK",
        width: Width::Min(10),
        descending: false,
        key: |s| Key::Text(&s.name),
        cell: |s| s.name.clone(),
    },
    Column {
        title: "TYPE",
        width: Width::Text(9),
        descending: false,
        key: |s| Key::Text(&s.kind),
        cell: |s| s.kind.clone(),
    },
    Column {
        title: "OK",
        width: Width::Num(8),
        descending: true,
        key: |s| Key::Num(s.requests_ok_total),
        cell: |s| fmt_count(s.requests_ok_total),
    },
    Column {
        title: "FAILED",
        width: Width::Num(7),
        descending: true,
        key: |s| Key::Num(s.requests_failed_total),
        cell: |s| fmt_count(s.requests_failed_total),
    },
    Column {
        title: "P99",
        width: Width::Num(8),
        descending: true,
        key: |s| Key::Num(s.request_p99_seconds),
        cell: |s| fmt_secs(s.request_p99_seconds),
    },
    Column {
        title: "TARGET",
        width: Width::Rest,
        descending: false,
        key: |s| Key::Text(&s.target),
        cell: |s| s.target.clone(),
    },
];

/// The sort of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableSort {
    pub column: usize,
    /// Against the column's natural order.
    pub reversed: bool,
}

/// Which table the keys act on, and how each table is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SortState {
    /// 0 queues, 1 pipelines, 2 sinks.
    pub focus: usize,
    pub tables: [TableSort; 3],
}

const TABLE_NAMES: [&str; 3] = ["queues", "pipelines", "sinks"];
const COLUMN_COUNTS: [usize; 3] = [
    QUEUE_COLUMNS.len(),
    PIPELINE_COLUMNS.len(),
    SINK_COLUMNS.len(),
];

impl Default for SortState {
    /// Queues most urgent first (the order pipelines serve them), pipelines busiest first,
    /// sinks by name.
    fn default() -> SortState {
        SortState {
            focus: 0,
            tables: [
                TableSort {
                    column: 1,
                    reversed: false,
                },
                TableSort {
                    column: 1,
                    reversed: false,
                },
                TableSort {
                    column: 0,
                    reversed: false,
                },
            ],
        }
    }
}

/// What a key press asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Quit,
    /// The sort state changed: redraw.
    Redraw,
    Ignore,
}

impl SortState {
    /// `q`/Esc/Ctrl-C quit; Tab/Shift-Tab switch table; ←/→ (or `s`) cycle the sort column
    /// (back to the column's natural order); `r` reverses.
    pub(crate) fn handle_key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::Ignore;
        }
        let table = &mut self.tables[self.focus];
        let columns = COLUMN_COUNTS[self.focus];
        match key.code {
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => Action::Quit,
            KeyCode::Tab => {
                self.focus = (self.focus + 1) % 3;
                Action::Redraw
            }
            KeyCode::BackTab => {
                self.focus = (self.focus + 2) % 3;
                Action::Redraw
            }
            KeyCode::Right | KeyCode::Char('s' | '>' | 'l') => {
                *table = TableSort {
                    column: (table.column + 1) % columns,
                    reversed: false,
                };
                Action::Redraw
            }
            KeyCode::Left | KeyCode::Char('S' | '<' | 'h') => {
                *table = TableSort {
                    column: (table.column + columns - 1) % columns,
                    reversed: false,
                };
                Action::Redraw
            }
            KeyCode::Char('r' | 'R') => {
                table.reversed = !table.reversed;
                Action::Redraw
            }
            _ => Action::Ignore,
        }
    }
}

/// `items` in the table's sort order; ties (and everything equal) by the first column (name).
pub(crate) fn sorted<'a, T>(items: &'a [T], columns: &[Column<T>], sort: TableSort) -> Vec<&'a T> {
    let column = &columns[sort.column.min(columns.len() - 1)];
    let descending = column.descending != sort.reversed;
    let mut out: Vec<&T> = items.iter().collect();
    out.sort_by(|a, b| {
        compare((column.key)(a), (column.key)(b), descending)
            .then_with(|| compare((columns[0].key)(a), (columns[0].key)(b), false))
    });
    out
}

fn arrow<T>(column: &Column<T>, sort: TableSort) -> &'static str {
    // ▼ biggest (or last in A→Z) first.
    if column.descending != sort.reversed {
        "▼"
    } else {
        "▲"
    }
}

// ---------------------------------------------------------------------------------------------
// View
// ---------------------------------------------------------------------------------------------

/// Everything the screen shows.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    /// The admin API's base URL.
    pub api: String,
    pub interval: Duration,
    /// The last stats received (kept while the engine is unreachable).
    pub stats: Option<Stats>,
    /// CPU use over the last interval, from two consecutive samples.
    pub cpu_percent: Option<f64>,
    /// Why the last fetch failed; `None` while the engine answers.
    pub error: Option<String>,
    /// Failed fetches in a row.
    pub failures: u32,
    pub sort: SortState,
}

impl View {
    pub(crate) fn new(api: &str, interval: Duration) -> View {
        View {
            api: api.to_owned(),
            interval,
            ..View::default()
        }
    }

    /// Takes one fetch result.
    pub(crate) fn apply(&mut self, fetched: Result<Stats, String>) {
        match fetched {
            Ok(stats) => {
                self.cpu_percent = match (&self.stats, self.error.is_none()) {
                    (Some(prev), true) => cpu_percent(prev, &stats),
                    _ => None,
                };
                self.stats = Some(stats);
                self.error = None;
                self.failures = 0;
            }
            Err(e) => {
                self.error = Some(e);
                self.failures = self.failures.saturating_add(1);
                self.cpu_percent = None;
            }
        }
    }
}

fn cpu_percent(prev: &Stats, now: &Stats) -> Option<f64> {
    let wall = now.uptime_seconds? - prev.uptime_seconds?;
    let cpu = now.cpu_seconds_total? - prev.cpu_seconds_total?;
    (wall > 0.0 && cpu >= 0.0).then(|| cpu / wall * 100.0)
}

/// The CPU figure of the header: over the last interval, else the average since start.
fn cpu_text(stats: &Stats, recent: Option<f64>) -> String {
    match (recent, stats.cpu_seconds_total, stats.uptime_seconds) {
        (Some(p), _, _) => format!("{p:.1}%"),
        (None, Some(cpu), Some(up)) if up > 0.0 => format!("{:.1}% avg", cpu / up * 100.0),
        _ => DASH.to_owned(),
    }
}

fn bottleneck_text(stats: &Stats) -> String {
    match &stats.bottleneck {
        None => "none (idle)".to_owned(),
        Some(b) => {
            let measure = if b.kind == "queue" { "full" } else { "busy" };
            match b.ratio {
                Some(r) => format!("{} {} ({} {measure})", b.kind, b.name, fmt_pct(Some(r))),
                None => format!("{} {}", b.kind, b.name),
            }
        }
    }
}

/// The header's fields, shared by the screen and `--once`.
fn summary(stats: &Stats, cpu: Option<f64>) -> Vec<(&'static str, String)> {
    vec![
        ("up", fmt_uptime(stats.uptime_seconds)),
        ("RSS", fmt_bytes(stats.rss_bytes.map(|b| b as f64))),
        ("CPU", cpu_text(stats, cpu)),
        ("bottleneck", bottleneck_text(stats)),
    ]
}

fn is_bottleneck(stats: &Stats, kind: &str, name: &str) -> bool {
    stats
        .bottleneck
        .as_ref()
        .is_some_and(|b| b.kind == kind && b.name == name)
}

/// Splits `available` rows between tables that want `wanted` rows each: all they want when it
/// fits; otherwise one row at a time, round-robin, to those still wanting (each gets at least
/// its borders and header first, in order, while rows remain).
pub(crate) fn split_heights(available: u16, wanted: [u16; 3]) -> [u16; 3] {
    if wanted.iter().sum::<u16>() <= available {
        return wanted;
    }
    let mut got = [0u16; 3];
    let mut left = available;
    // Borders + header + one row first.
    for (g, w) in got.iter_mut().zip(wanted) {
        let take = w.min(4).min(left);
        *g = take;
        left -= take;
    }
    while left > 0 {
        let mut gave = false;
        for (g, w) in got.iter_mut().zip(wanted) {
            if left > 0 && *g < w {
                *g += 1;
                left -= 1;
                gave = true;
            }
        }
        if !gave {
            break;
        }
    }
    got
}

/// Draws the whole screen: a pure function of `view` and the frame's size.
pub(crate) fn render(frame: &mut Frame, view: &View) {
    let area = frame.area();
    if area.height < 3 || area.width < 20 {
        frame.render_widget(Paragraph::new("veltrix top: window too small"), area);
        return;
    }
    let header_height = 2u16;
    let footer_height = 1u16;
    let header = Rect {
        height: header_height,
        ..area
    };
    let footer = Rect {
        y: area.bottom() - footer_height,
        height: footer_height,
        ..area
    };
    frame.render_widget(Paragraph::new(header_lines(view)), header);
    frame.render_widget(Paragraph::new(footer_line(view)), footer);

    let Some(stats) = &view.stats else {
        return;
    };
    let available = area.height.saturating_sub(header_height + footer_height);
    let rows = |n: usize| u16::try_from(n).unwrap_or(u16::MAX).saturating_add(3);
    let heights = split_heights(
        available,
        [
            rows(stats.queues.len()),
            rows(stats.pipelines.len()),
            rows(stats.sinks.len()),
        ],
    );
    let mut y = area.y + header_height;
    let mut next = |h: u16| {
        let r = Rect {
            x: area.x,
            y,
            width: area.width,
            height: h,
        };
        y += h;
        r
    };
    let stale = view.error.is_some();
    let (q, p, s) = (next(heights[0]), next(heights[1]), next(heights[2]));
    let queue_style = |x: &Queue| is_bottleneck(stats, "queue", &x.name);
    let pipeline_style = |x: &Pipeline| is_bottleneck(stats, "pipeline", &x.name);
    draw_table(
        frame,
        q,
        &stats.queues,
        &QUEUE_COLUMNS,
        view.sort,
        0,
        stale,
        &queue_style,
    );
    draw_table(
        frame,
        p,
        &stats.pipelines,
        &PIPELINE_COLUMNS,
        view.sort,
        1,
        stale,
        &pipeline_style,
    );
    draw_table(
        frame,
        s,
        &stats.sinks,
        &SINK_COLUMNS,
        view.sort,
        2,
        stale,
        &|_: &Sink| false,
    );
}

fn header_lines(view: &View) -> Vec<Line<'static>> {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let mut first = vec![Span::styled(
        match &view.stats {
            Some(s) if !s.version.is_empty() => format!("veltrix {}", s.version),
            _ => "veltrix".to_owned(),
        },
        bold,
    )];
    if let Some(stats) = &view.stats {
        for (label, value) in summary(stats, view.cpu_percent) {
            first.push(Span::raw(format!("   {label} ")));
            let style = if label == "bottleneck" && stats.bottleneck.is_some() {
                bold.fg(Color::Yellow)
            } else {
                bold
            };
            first.push(Span::styled(value, style));
        }
    }
    let every = fmt_interval(view.interval);
    let second = match (&view.error, &view.stats) {
        (Some(e), _) => Line::from(vec![
            Span::styled(
                "● unreachable",
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!(
                " {}: {e} · retry every {every} · {} failed{}",
                view.api,
                view.failures,
                if view.stats.is_some() {
                    ", last data shown"
                } else {
                    ""
                }
            )),
        ]),
        (None, Some(_)) => Line::from(vec![
            Span::styled("● live", Style::new().fg(Color::Green)),
            Span::raw(format!(" {} · refresh every {every}", view.api)),
        ]),
        (None, None) => Line::from(format!("connecting to {} …", view.api)),
    };
    vec![Line::from(first), second]
}

fn footer_line(view: &View) -> Line<'static> {
    let key = Style::new()
        .fg(Color::Black)
        .bg(Color::Cyan)
        .add_modifier(Modifier::BOLD);
    let mut spans = Vec::new();
    for (k, what) in [
        ("q", "quit"),
        ("Tab", "table"),
        ("←/→", "sort column"),
        ("r", "reverse"),
    ] {
        spans.push(Span::styled(format!(" {k} "), key));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    let focus = view.sort.focus;
    let sort = view.sort.tables[focus];
    let (title, arrow) = match focus {
        0 => {
            let c = &QUEUE_COLUMNS[sort.column];
            (c.title, arrow(c, sort))
        }
        1 => {
            let c = &PIPELINE_COLUMNS[sort.column];
            (c.title, arrow(c, sort))
        }
        _ => {
            let c = &SINK_COLUMNS[sort.column];
            (c.title, arrow(c, sort))
        }
    };
    spans.push(Span::raw(format!(
        "{} by {} {arrow}",
        TABLE_NAMES[focus],
        title.to_lowercase()
    )));
    Line::from(spans)
}

fn fmt_interval(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[allow(clippy::too_many_arguments)] // one call per table; a struct would only rename them
fn draw_table<T>(
    frame: &mut Frame,
    area: Rect,
    items: &[T],
    columns: &[Column<T>],
    sort: SortState,
    index: usize,
    stale: bool,
    highlight: &dyn Fn(&T) -> bool,
) {
    if area.height == 0 {
        return;
    }
    let table_sort = sort.tables[index];
    let focused = sort.focus == index;
    let header = Row::new(columns.iter().enumerate().map(|(i, c)| {
        let title = if i == table_sort.column {
            format!("{}{}", c.title, arrow(c, table_sort))
        } else {
            c.title.to_owned()
        };
        let line = Line::from(title);
        let line = if c.numeric() {
            line.right_aligned()
        } else {
            line
        };
        let style = if i == table_sort.column {
            Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
        } else {
            Style::new().add_modifier(Modifier::BOLD)
        };
        Cell::from(line).style(style)
    }));
    let shown = usize::from(area.height.saturating_sub(3));
    let rows: Vec<Row> = sorted(items, columns, table_sort)
        .into_iter()
        .take(shown)
        .map(|item| {
            let row = Row::new(columns.iter().map(|c| {
                let line = Line::from((c.cell)(item));
                Cell::from(Text::from(if c.numeric() {
                    line.right_aligned()
                } else {
                    line
                }))
            }));
            if highlight(item) {
                row.style(Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD))
            } else {
                row
            }
        })
        .collect();
    let widths: Vec<Constraint> = columns.iter().map(Column::constraint).collect();
    let mut title = format!(" {} ({}) ", TABLE_NAMES[index], items.len());
    if stale {
        title.push_str("(stale) ");
    }
    let border = if focused {
        Style::new().fg(Color::Cyan)
    } else {
        Style::new().fg(Color::DarkGray)
    };
    let mut block = Block::bordered()
        .title(title)
        .border_style(border)
        .padding(Padding::horizontal(1));
    if items.len() > shown {
        block = block.title_bottom(format!(" +{} more ", items.len() - shown));
    }
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .column_spacing(if area.width < 100 { 1 } else { 2 })
            .block(block),
        area,
    );
}

/// The `--once` snapshot: the header, then each table as aligned plain text (every row).
pub(crate) fn plain(view: &View) -> String {
    let mut out = String::new();
    let Some(stats) = &view.stats else {
        return out;
    };
    let mut head = format!("veltrix {}  ({})", stats.version, view.api);
    for (label, value) in summary(stats, view.cpu_percent) {
        head.push_str(&format!("  {label} {value}"));
    }
    out.push_str(&head);
    out.push('\n');
    plain_table(&mut out, &stats.queues, &QUEUE_COLUMNS, view.sort.tables[0]);
    plain_table(
        &mut out,
        &stats.pipelines,
        &PIPELINE_COLUMNS,
        view.sort.tables[1],
    );
    plain_table(&mut out, &stats.sinks, &SINK_COLUMNS, view.sort.tables[2]);
    out
}

fn plain_table<T>(out: &mut String, items: &[T], columns: &[Column<T>], sort: TableSort) {
    let mut grid: Vec<Vec<String>> = vec![columns.iter().map(|c| c.title.to_owned()).collect()];
    grid.extend(
        sorted(items, columns, sort)
            .into_iter()
            .map(|item| columns.iter().map(|c| (c.cell)(item)).collect()),
    );
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            grid.iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    out.push('\n');
    for row in &grid {
        let mut line = String::new();
        for (i, (cell, c)) in row.iter().zip(columns).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i] - cell.chars().count();
            if c.numeric() && i > 0 {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

// ---------------------------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------------------------

/// Why a fetch failed: unreachable (69) or an answer that is not a stats document (1).
enum FetchError {
    Unreachable(String),
    Refused(String),
}

impl FetchError {
    fn message(self) -> String {
        match self {
            FetchError::Unreachable(m) | FetchError::Refused(m) => m,
        }
    }
}

/// The innermost cause of an error ("Connection refused (os error 111)"), which is the
/// informative part of reqwest's "error sending request for url (...)".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

async fn fetch(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
) -> Result<Stats, FetchError> {
    let mut request = client.get(format!("{base}/api/v1/stats"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| FetchError::Unreachable(root_cause(&e)))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| FetchError::Unreachable(root_cause(&e)))?;
    if !status.is_success() {
        let hint = match status.as_u16() {
            401 => " (give the admin token: --token or VELTRIX_API_TOKEN)",
            404 => " (this engine has no /api/v1/stats: upgrade it)",
            _ => "",
        };
        return Err(FetchError::Refused(format!(
            "the admin API answered {status}{hint}"
        )));
    }
    let value: Value = serde_json::from_str(&body)
        .map_err(|e| FetchError::Refused(format!("the stats answer is not JSON: {e}")))?;
    Stats::from_json(&value).map_err(FetchError::Refused)
}

fn client(interval: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(interval.max(Duration::from_secs(2)))
        .build()
        .unwrap_or_default()
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// `veltrix top`: the live view, or with `once` a plain snapshot on stdout.
pub(crate) fn top(api: &Api, interval: Duration, once: bool) -> u8 {
    let interval = interval.max(Duration::from_millis(100));
    if once {
        return snapshot(api, interval);
    }
    if !std::io::stdout().is_terminal() {
        eprintln!(
            "veltrix: `veltrix top` needs a terminal; use `veltrix top --once` for a snapshot"
        );
        return 2;
    }
    match live(api, interval) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("veltrix: terminal error: {e}");
            exit::FAILURE
        }
    }
}

fn snapshot(api: &Api, interval: Duration) -> u8 {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("veltrix: {e}");
            return exit::FAILURE;
        }
    };
    let result = runtime.block_on(fetch(&client(interval), api.base(), api.token()));
    match result {
        Ok(stats) => {
            let mut view = View::new(api.base(), interval);
            view.apply(Ok(stats));
            print!("{}", plain(&view));
            exit::OK
        }
        Err(FetchError::Unreachable(e)) => {
            eprintln!(
                "veltrix: cannot reach the admin API at {}: {e} (is `veltrix run` running? use --api)",
                api.base()
            );
            exit::UNAVAILABLE
        }
        Err(FetchError::Refused(e)) => {
            eprintln!("veltrix: {e}");
            exit::FAILURE
        }
    }
}

/// Restores the terminal when dropped (quit, error); ratatui's own hook covers panics.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn live(api: &Api, interval: Duration) -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel::<Result<Stats, String>>();
    let (base, token) = (api.base().to_owned(), api.token().map(str::to_owned));
    let runtime = runtime()?;
    // The fetcher: one request per interval, forever; it ends when the receiver is gone.
    std::thread::Builder::new()
        .name("top-fetch".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let client = client(interval);
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let result = fetch(&client, &base, token.as_deref())
                        .await
                        .map_err(FetchError::message);
                    if tx.send(result).is_err() {
                        break;
                    }
                }
            });
        })?;

    let mut view = View::new(api.base(), interval);
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    let mut dirty = true;
    loop {
        if dirty {
            terminal.draw(|frame| render(frame, &view))?;
            dirty = false;
        }
        if event::poll(Duration::from_millis(50))? {
            match event::read()? {
                Event::Key(key) => match view.sort.handle_key(key) {
                    Action::Quit => return Ok(()),
                    Action::Redraw => dirty = true,
                    Action::Ignore => {}
                },
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
        while let Ok(result) = rx.try_recv() {
            view.apply(result);
            dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    /// The sample of docs/stats-api.md, with a second queue and pipeline to sort.
    fn sample() -> Value {
        json!({
          "version": "0.1.0",
          "uptime_seconds": 12.5,
          "sample_interval_seconds": 1.0,
          "process": { "rss_bytes": 38000000, "cpu_seconds_total": 1.9, "open_fds": 42 },
          "sources": [{"name": "http", "address": "127.0.0.1:8080", "received_total": 1200,
                       "rejected_total": 3, "rate_per_second": 95.0, "to_queues": ["critical", "default"],
                       "history": { "rate_per_second": [90.0, 95.0] }}],
          "queues": [
            {"name": "default", "priority": 100, "durability": "fsync", "when_full": "backpressure",
             "depth_events": 10, "depth_bytes": 2400, "max_events": 1000000, "max_bytes": 1073741824,
             "fill_ratio": 0.00001, "oldest_age_seconds": 0.012, "appended_total": 1200,
             "dropped_total": 0, "rate_in_per_second": 95.0,
             "history": { "depth_events": [3, 10], "rate_in_per_second": [90.0, 95.0] }},
            {"name": "critical", "priority": 0, "depth_events": 0, "depth_bytes": 0,
             "fill_ratio": 0.0, "oldest_age_seconds": null, "rate_in_per_second": 4.0}
          ],
          "pipelines": [
            {"name": "archive", "from": ["critical", "default"], "sink": "archive_file", "workers": 2,
             "delivered_total": 1150, "filtered_total": 40, "dead_lettered_total": 0, "retries_total": 0,
             "dlq_depth_events": 0, "rate_per_second": 94.0,
             "latency_p50_seconds": 0.0009, "latency_p99_seconds": 0.004, "busy_ratio": 0.12,
             "history": { "rate_per_second": [88.0, 94.0] }},
            {"name": "webhook", "from": ["critical"], "sink": "hook", "workers": 1,
             "delivered_total": 7, "retries_total": 3, "dlq_depth_events": 2, "rate_per_second": 1.5,
             "latency_p50_seconds": null, "latency_p99_seconds": null, "busy_ratio": 0.02}
          ],
          "sinks": [
            {"name": "archive_file", "type": "file", "target": "./veltrix-data/out/archive.ndjson",
             "requests_ok_total": 300, "requests_failed_total": 0, "request_p99_seconds": 0.0003}
          ],
          "bottleneck": { "kind": "pipeline", "name": "archive", "busy_ratio": 0.12 }
        })
    }

    fn stats() -> Stats {
        Stats::from_json(&sample()).unwrap()
    }

    fn view() -> View {
        let mut v = View::new("http://127.0.0.1:8081", Duration::from_secs(1));
        v.apply(Ok(stats()));
        v
    }

    fn screen(view: &View, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| render(f, view)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        buffer
            .content()
            .chunks(usize::from(width))
            .map(|cells| cells.iter().map(|c| c.symbol()).collect::<String>())
            .collect()
    }

    fn line_with<'a>(screen: &'a [String], needle: &str) -> &'a str {
        screen
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{}", screen.join("\n")))
    }

    fn row_of(screen: &[String], needle: &str) -> usize {
        screen
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{}", screen.join("\n")))
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn parses_the_documented_sample_and_tolerates_missing_fields() {
        let s = stats();
        assert_eq!(s.version, "0.1.0");
        assert_eq!(s.rss_bytes, Some(38_000_000));
        assert_eq!(s.queues.len(), 2);
        assert_eq!(s.queues[0].depth_bytes, Some(2400.0));
        assert_eq!(s.queues[1].oldest_age_seconds, None);
        assert_eq!(s.pipelines[0].delivered_total, Some(1150.0));
        assert_eq!(s.pipelines[1].latency_p99_seconds, None);
        assert_eq!(s.sinks[0].kind, "file");
        assert_eq!(
            s.bottleneck,
            Some(Bottleneck {
                kind: "pipeline".into(),
                name: "archive".into(),
                ratio: Some(0.12)
            })
        );
        let empty = Stats::from_json(&json!({"bottleneck": null})).unwrap();
        assert_eq!(empty, Stats::default());
        assert!(Stats::from_json(&json!([1, 2])).is_err());
    }

    #[test]
    fn formats_units() {
        assert_eq!(fmt_bytes(Some(512.0)), "512 B");
        assert_eq!(fmt_bytes(Some(2400.0)), "2.3 KiB");
        assert_eq!(fmt_bytes(Some(38_000_000.0)), "36.2 MiB");
        assert_eq!(fmt_bytes(Some(1_073_741_824.0)), "1.0 GiB");
        assert_eq!(fmt_bytes(None), "-");
        assert_eq!(fmt_secs(Some(0.0009)), "900µs");
        assert_eq!(fmt_secs(Some(0.012)), "12.0ms");
        assert_eq!(fmt_secs(Some(4.2)), "4.20s");
        assert_eq!(fmt_secs(Some(185.0)), "3m05s");
        assert_eq!(fmt_secs(Some(7380.0)), "2h03m");
        assert_eq!(fmt_secs(Some(273_600.0)), "3d04h");
        assert_eq!(fmt_secs(None), "-");
        assert_eq!(fmt_uptime(Some(12.5)), "12s");
        assert_eq!(fmt_uptime(Some(185.0)), "3m05s");
        assert_eq!(fmt_rate(Some(95.0)), "95.0");
        assert_eq!(fmt_rate(Some(12_345.0)), "12.3k");
        assert_eq!(fmt_rate(Some(1_500_000.0)), "1.5M");
        assert_eq!(fmt_pct(Some(0.12)), "12.0%");
        assert_eq!(fmt_pct(Some(0.00001)), "0.0%");
        assert_eq!(fmt_count(Some(1150.0)), "1150");
        assert_eq!(fmt_interval(Duration::from_secs(1)), "1s");
        assert_eq!(fmt_interval(Duration::from_millis(500)), "500ms");
    }

    #[test]
    fn sorts_by_column_with_natural_order_reverse_and_missing_values_last() {
        let s = stats();
        let names = |v: Vec<&Queue>| v.iter().map(|q| q.name.clone()).collect::<Vec<_>>();
        let prio = TableSort {
            column: 1,
            reversed: false,
        };
        assert_eq!(
            names(sorted(&s.queues, &QUEUE_COLUMNS, prio)),
            ["critical", "default"]
        );
        let depth = TableSort {
            column: 2,
            reversed: false,
        };
        assert_eq!(
            names(sorted(&s.queues, &QUEUE_COLUMNS, depth)),
            ["default", "critical"]
        );
        let depth_rev = TableSort {
            column: 2,
            reversed: true,
        };
        assert_eq!(
            names(sorted(&s.queues, &QUEUE_COLUMNS, depth_rev)),
            ["critical", "default"]
        );
        // Oldest age: `critical` has none; it is last both ways.
        for reversed in [false, true] {
            let age = TableSort {
                column: 5,
                reversed,
            };
            assert_eq!(
                names(sorted(&s.queues, &QUEUE_COLUMNS, age)),
                ["default", "critical"]
            );
        }
        // Ties fall back to the name.
        let equal = vec![
            Pipeline {
                name: "b".into(),
                ..Pipeline::default()
            },
            Pipeline {
                name: "a".into(),
                ..Pipeline::default()
            },
        ];
        let by_rate = sorted(
            &equal,
            &PIPELINE_COLUMNS,
            TableSort {
                column: 1,
                reversed: false,
            },
        );
        assert_eq!(by_rate[0].name, "a");
    }

    #[test]
    fn keys_cycle_columns_switch_tables_reverse_and_quit() {
        let mut sort = SortState::default();
        assert_eq!(sort.handle_key(key(KeyCode::Right)), Action::Redraw);
        assert_eq!(sort.tables[0].column, 2);
        assert_eq!(sort.handle_key(key(KeyCode::Char('r'))), Action::Redraw);
        assert!(sort.tables[0].reversed);
        // A new column starts in its natural order again.
        sort.handle_key(key(KeyCode::Char('s')));
        assert_eq!(
            sort.tables[0],
            TableSort {
                column: 3,
                reversed: false
            }
        );
        // Left from the first column wraps to the last.
        for _ in 0..4 {
            sort.handle_key(key(KeyCode::Left));
        }
        assert_eq!(sort.tables[0].column, QUEUE_COLUMNS.len() - 1);
        assert_eq!(sort.handle_key(key(KeyCode::Tab)), Action::Redraw);
        assert_eq!(sort.focus, 1);
        sort.handle_key(key(KeyCode::Right));
        assert_eq!(sort.tables[1].column, 2);
        assert_eq!(sort.tables[0].column, QUEUE_COLUMNS.len() - 1);
        sort.handle_key(key(KeyCode::BackTab));
        sort.handle_key(key(KeyCode::BackTab));
        assert_eq!(sort.focus, 2);
        assert_eq!(sort.handle_key(key(KeyCode::Char('x'))), Action::Ignore);
        assert_eq!(sort.handle_key(key(KeyCode::Char('q'))), Action::Quit);
        assert_eq!(sort.handle_key(key(KeyCode::Esc)), Action::Quit);
        assert_eq!(
            sort.handle_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
    }

    #[test]
    fn renders_header_tables_and_footer() {
        let screen = screen(&view(), 120, 30);
        let text = screen.join("\n");
        let header = &screen[0];
        assert!(header.starts_with("veltrix 0.1.0"), "{text}");
        assert!(header.contains("up 12s"), "{text}");
        assert!(header.contains("RSS 36.2 MiB"), "{text}");
        assert!(header.contains("CPU 15.2% avg"), "{text}");
        assert!(
            header.contains("bottleneck pipeline archive (12.0% busy)"),
            "{text}"
        );
        assert!(screen[1].contains("● live http://127.0.0.1:8081"), "{text}");

        let queue = line_with(&screen, "default ");
        for cell in ["100", "10", "2.3 KiB", "0.0%", "12.0ms", "95.0"] {
            assert!(queue.contains(cell), "{cell} in {queue}");
        }
        let pipeline = line_with(&screen, "archive  ");
        for cell in ["94.0", "900µs", "4.0ms", "12.0%", "1150"] {
            assert!(pipeline.contains(cell), "{cell} in {pipeline}");
        }
        let webhook = line_with(&screen, "webhook");
        assert!(
            webhook.trim_end_matches('│').trim_end().ends_with('7'),
            "{webhook}"
        );
        let sink = line_with(&screen, "archive_file");
        for cell in ["file", "300", "300µs", "./veltrix-data/out/archive.ndjson"] {
            assert!(sink.contains(cell), "{cell} in {sink}");
        }
        // Default order: queues by priority (critical first), pipelines busiest first.
        assert!(row_of(&screen, "critical") < row_of(&screen, "default "));
        assert!(row_of(&screen, "archive  ") < row_of(&screen, "webhook"));
        // Titles: counts, the sorted column marked.
        assert!(line_with(&screen, "queues (2)").contains("─"), "{text}");
        assert!(line_with(&screen, "QUEUE").contains("PRIO▲"), "{text}");
        assert!(line_with(&screen, "PIPELINE").contains("RATE/S▼"), "{text}");
        let footer = screen.last().unwrap();
        for k in [
            "q  quit",
            "Tab  table",
            "sort column",
            "r  reverse",
            "queues by prio ▲",
        ] {
            assert!(footer.contains(k), "{k} in {footer}");
        }
    }

    #[test]
    fn re_sorting_moves_rows_and_marks_the_column() {
        let mut v = view();
        v.sort.handle_key(key(KeyCode::Char('r')));
        let s = screen(&v, 120, 30);
        assert!(row_of(&s, "default ") < row_of(&s, "critical"));
        assert!(line_with(&s, "QUEUE").contains("PRIO▼"));
        v.sort.handle_key(key(KeyCode::Tab));
        v.sort.handle_key(key(KeyCode::Char('r')));
        let s = screen(&v, 120, 30);
        assert!(row_of(&s, "webhook") < row_of(&s, "archive  "));
        assert!(s.last().unwrap().contains("pipelines by rate/s ▲"));
    }

    #[test]
    fn highlights_the_bottleneck_row() {
        let mut terminal = Terminal::new(TestBackend::new(120, 30)).unwrap();
        terminal.draw(|f| render(f, &view())).unwrap();
        let buffer = terminal.backend().buffer();
        let row = |needle: &str| {
            let y = (0..30)
                .find(|&y| {
                    (0..120)
                        .map(|x| buffer[(x, y)].symbol())
                        .collect::<String>()
                        .contains(needle)
                })
                .unwrap();
            buffer[(3, y)].fg
        };
        assert_eq!(row("archive  "), Color::Yellow);
        assert_ne!(row("webhook"), Color::Yellow);
    }

    #[test]
    fn unreachable_keeps_the_last_data_and_says_so() {
        let mut v = View::new("http://127.0.0.1:9", Duration::from_secs(1));
        v.apply(Err("Connection refused (os error 111)".into()));
        let s = screen(&v, 120, 20);
        assert!(
            s[1].contains("● unreachable http://127.0.0.1:9"),
            "{}",
            s[1]
        );
        assert!(s[1].contains("Connection refused"), "{}", s[1]);
        assert!(s[1].contains("retry every 1s · 1 failed"), "{}", s[1]);
        v.apply(Ok(stats()));
        v.apply(Err("timed out".into()));
        v.apply(Err("timed out".into()));
        let s = screen(&v, 120, 20);
        assert!(s[1].contains("2 failed, last data shown"), "{}", s[1]);
        assert!(line_with(&s, "queues (2) (stale)").contains("─"));
        v.apply(Ok(stats()));
        assert!(screen(&v, 120, 20)[1].contains("● live"));
    }

    #[test]
    fn cpu_percent_comes_from_two_samples() {
        let mut v = view();
        let mut later = stats();
        later.uptime_seconds = Some(14.5);
        later.cpu_seconds_total = Some(2.4);
        v.apply(Ok(later));
        assert!((v.cpu_percent.unwrap() - 25.0).abs() < 1e-9);
        assert!(screen(&v, 120, 30)[0].contains("CPU 25.0%   "));
    }

    #[test]
    fn a_small_terminal_shares_rows_and_counts_what_is_hidden() {
        assert_eq!(split_heights(40, [5, 5, 4]), [5, 5, 4]);
        assert_eq!(split_heights(12, [20, 5, 4]), [4, 4, 4]);
        assert_eq!(split_heights(14, [20, 5, 4]), [5, 5, 4]);
        assert_eq!(split_heights(17, [20, 5, 4]), [8, 5, 4]);
        assert_eq!(split_heights(6, [20, 5, 4]), [4, 2, 0]);
        let mut v = view();
        let many: Vec<Queue> = (0..30)
            .map(|i| Queue {
                name: format!("q{i:02}"),
                priority: Some(f64::from(i)),
                ..Queue::default()
            })
            .collect();
        v.stats.as_mut().unwrap().queues = many;
        let s = screen(&v, 80, 24);
        let text = s.join("\n");
        assert!(text.contains("q00"), "{text}");
        assert!(text.contains("more"), "{text}");
        assert!(text.contains("archive"), "{text}");
        assert!(text.contains("archive_file"), "{text}");
        // Tiny windows never panic.
        for (w, h) in [(10, 2), (20, 3), (40, 6), (120, 1)] {
            screen(&v, w, h);
        }
    }

    #[test]
    fn connecting_screen_before_the_first_answer() {
        let v = View::new("http://127.0.0.1:8081", Duration::from_millis(500));
        let s = screen(&v, 80, 10);
        assert!(
            s[1].contains("connecting to http://127.0.0.1:8081"),
            "{}",
            s[1]
        );
    }

    #[test]
    fn once_output_is_plain_aligned_text() {
        let out = plain(&view());
        assert!(out.is_ascii() || out.contains('µ'), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("veltrix 0.1.0  (http://127.0.0.1:8081)  up 12s  RSS 36.2 MiB")
        );
        assert!(
            lines[0].ends_with("bottleneck pipeline archive (12.0% busy)"),
            "{out}"
        );
        let expected = "\
QUEUE     PRIO  DEPTH    BYTES  FILL  OLDEST  IN/S
critical     0      0      0 B  0.0%       -   4.0
default    100     10  2.3 KiB  0.0%  12.0ms  95.0

PIPELINE  RATE/S    P50    P99   BUSY  RETRIES  DLQ  DELIVERED
archive     94.0  900µs  4.0ms  12.0%        0    0       1150
webhook      1.5      -      -   2.0%        3    2          7

SINK          TYPE   OK  FAILED    P99  TARGET
archive_file  file  300       0  300µs  ./veltrix-data/out/archive.ndjson
";
        assert!(out.ends_with(expected), "got:\n{out}");
    }
}
