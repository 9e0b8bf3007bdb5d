//! The `postgres` sink: each batch becomes one `INSERT … SELECT … FROM unnest(…) ON CONFLICT
//! (source, id) DO NOTHING` in its own transaction, confirmed after `COMMIT`.
//!
//! Table (created if missing unless `create_table = false`): `id text, source text, type text,
//! time timestamptz, subject text, data jsonb`, then the mapped `columns`, primary key
//! (`source`, `id`). `data` holds the event's JSON data (a binary event's base64 text as a JSON
//! string; NULL without data). Mapped columns are read-only VRL expressions; a text column takes
//! strings as they are and other values as JSON text, a jsonb column the value as JSON, the other
//! types the value's text for PostgreSQL to cast.
//!
//! Guarantees: a redelivered batch (a crash before the pipeline acknowledged it, a retry after a
//! timeout that had in fact committed) inserts nothing twice: one row per (`source`, `id`), the
//! first one written. A batch commits or fails whole.
//!
//! Why `unnest`: one statement per batch whatever its size, with one array parameter per column
//! (so PostgreSQL's 65,535 bind-parameter limit never applies and nothing is chunked), and the
//! same SQL text for every batch (prepared once per connection); `COPY` would need a staging
//! table to get `ON CONFLICT`.
//!
//! Connections: a pool of at most `pool_size`, opened lazily on first use — the engine starts
//! while PostgreSQL is down, and batches fail as retryable until it is up. `timeout` bounds a
//! whole batch (waiting for a connection included) and is also set as the session's
//! `statement_timeout`, so a statement stuck server-side is cancelled there too.
//!
//! Errors: no SQLSTATE (I/O, connection refused or lost), or SQLSTATE class 08 (connection), 40
//! (serialization failure, deadlock), 53 (insufficient resources), 57 (operator intervention:
//! admin shutdown, statement timeout), 58 and XX (system), 55P03 (lock not available) are
//! retryable; everything else (22 data exceptions, 23 integrity violations, 42 undefined table
//! or column, …) is permanent, with the SQLSTATE in the message the dead-letter entry keeps. An
//! undefined table (42P01) while `create_table = true` means it was dropped under us: it is
//! created again and the batch retried.

use std::fmt::Write as _;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;
use veltrix_core::config::{ColumnType, PostgresSinkConfig};
use veltrix_core::event::{Data, Event};
use veltrix_core::expr::{self, Value};

use crate::handler::{Batch, Sink, SinkError};

pub(crate) struct PostgresSink {
    config: PostgresSinkConfig,
    /// `postgres schema.table@host:port/db` (no credentials).
    description: String,
    pool: Pool,
    insert_sql: String,
    create_sql: String,
    /// Whether this sink created (or found) the table since it last saw it missing.
    table_ready: AtomicBool,
    /// One CREATE at a time from this process (concurrent ones would race on the catalog).
    creating: tokio::sync::Mutex<()>,
    in_use: metrics::Gauge,
    idle: metrics::Gauge,
}

/// Double-quotes an SQL identifier.
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

impl PostgresSink {
    /// Builds the sink and its pool without connecting.
    pub(crate) fn new(name: &str, config: &PostgresSinkConfig) -> io::Result<PostgresSink> {
        let mut pg = tokio_postgres::Config::from_str(&config.url)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("`url`: {e}")))?;
        pg.connect_timeout(config.timeout);
        let statement_timeout = format!("-c statement_timeout={}", config.timeout.as_millis());
        let options = match pg.get_options() {
            Some(existing) if !existing.is_empty() => format!("{existing} {statement_timeout}"),
            _ => statement_timeout,
        };
        pg.options(&options);
        let description = {
            let hosts: Vec<String> = pg
                .get_hosts()
                .iter()
                .zip(pg.get_ports().iter().chain(std::iter::repeat(&5432)))
                .map(|(host, port)| match host {
                    tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect();
            format!(
                "postgres {}.{}@{}/{}",
                config.schema,
                config.table,
                hosts.join(","),
                pg.get_dbname().unwrap_or("")
            )
        };
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .build()
            .map_err(io::Error::other)?;
        let gauge = |state: &'static str| metrics::gauge!("veltrix_sink_pool_connections", "sink" => name.to_owned(), "state" => state);
        Ok(PostgresSink {
            insert_sql: insert_sql(config),
            create_sql: create_sql(config),
            description,
            pool,
            table_ready: AtomicBool::new(!config.create_table),
            creating: tokio::sync::Mutex::new(()),
            in_use: gauge("in_use"),
            idle: gauge("idle"),
            config: config.clone(),
        })
    }

    fn update_pool_gauges(&self) {
        let status = self.pool.status();
        self.in_use
            .set(status.size.saturating_sub(status.available) as f64);
        self.idle.set(status.available as f64);
    }

    async fn write_batch(&self, batch: &Batch) -> Result<(), SinkError> {
        let columns = columns(&self.config, batch)?;
        let result = tokio::time::timeout(self.config.timeout, self.insert(&columns)).await;
        self.update_pool_gauges();
        match result {
            Ok(result) => result,
            Err(_) => Err(SinkError::retryable(format!(
                "{}: the batch took longer than timeout ({} ms); rolled back",
                self.description,
                self.config.timeout.as_millis()
            ))),
        }
    }

    async fn insert(&self, columns: &[Vec<Option<String>>]) -> Result<(), SinkError> {
        let mut client = self.pool.get().await.map_err(|e| self.pool_error(e))?;
        self.update_pool_gauges();
        if !self.table_ready.load(Ordering::Acquire) {
            let _one_at_a_time = self.creating.lock().await;
            if !self.table_ready.load(Ordering::Acquire) {
                match client.batch_execute(&self.create_sql).await {
                    Ok(()) => {}
                    // A concurrent CREATE (another process) won the race: the table is there.
                    Err(e) if matches!(sqlstate(&e), Some("42P07" | "23505")) => {}
                    Err(e) => return Err(self.error("creating the table", &e)),
                }
                self.table_ready.store(true, Ordering::Release);
            }
        }
        let params: Vec<&(dyn ToSql + Sync)> =
            columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.error("BEGIN", &e))?;
        let statement = tx
            .prepare_cached(&self.insert_sql)
            .await
            .map_err(|e| self.error("preparing the insert", &e))?;
        tx.execute(&statement, &params)
            .await
            .map_err(|e| self.error("INSERT", &e))?;
        tx.commit().await.map_err(|e| self.error("COMMIT", &e))
    }

    fn pool_error(&self, e: PoolError) -> SinkError {
        match e {
            PoolError::Backend(e) => self.error("connecting", &e),
            other => SinkError::retryable(format!("{}: {other}", self.description)),
        }
    }

    /// Classifies a PostgreSQL error (see the module comment).
    fn error(&self, doing: &str, e: &tokio_postgres::Error) -> SinkError {
        let Some(code) = sqlstate(e) else {
            return SinkError::retryable(format!("{} {doing}: {e}", self.description));
        };
        let detail = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |db| db.message().to_owned());
        let message = format!("{} {doing}: SQLSTATE {code}: {detail}", self.description);
        if code == "42P01" && self.config.create_table {
            self.table_ready.store(false, Ordering::Release);
            return SinkError::retryable(message);
        }
        if retryable_sqlstate(code) {
            SinkError::retryable(message)
        } else {
            SinkError::permanent(message)
        }
    }
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// Whether an error with this SQLSTATE may go away by itself.
pub(crate) fn retryable_sqlstate(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "40" | "53" | "57" | "58" | "XX")) || code == "55P03"
}

fn create_sql(config: &PostgresSinkConfig) -> String {
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {}.{} (id text NOT NULL, source text NOT NULL, type text \
         NOT NULL, time timestamptz, subject text, data jsonb",
        quote(&config.schema),
        quote(&config.table)
    );
    for c in &config.columns {
        let _ = write!(sql, ", {} {}", quote(&c.name), c.sql_type.sql());
    }
    sql.push_str(", PRIMARY KEY (source, id))");
    sql
}

/// One `text[]` parameter per column; each converted by a cast to its column's type.
fn insert_sql(config: &PostgresSinkConfig) -> String {
    let fixed = [
        ("id", None),
        ("source", None),
        ("type", None),
        ("time", Some("timestamptz")),
        ("subject", None),
        ("data", Some("jsonb")),
    ];
    let all: Vec<(String, Option<&str>)> = fixed
        .iter()
        .map(|(n, cast)| ((*n).to_owned(), *cast))
        .chain(config.columns.iter().map(|c| {
            let cast = (c.sql_type != ColumnType::Text).then(|| c.sql_type.sql());
            (quote(&c.name), cast)
        }))
        .collect();
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    let selects: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(i, (_, cast))| match cast {
            Some(t) => format!("c{i}::{t}"),
            None => format!("c{i}"),
        })
        .collect();
    let arrays: Vec<String> = (1..=all.len()).map(|i| format!("${i}::text[]")).collect();
    let aliases: Vec<String> = (0..all.len()).map(|i| format!("c{i}")).collect();
    format!(
        "INSERT INTO {}.{} ({}) SELECT {} FROM unnest({}) AS u({}) ON CONFLICT (source, id) DO \
         NOTHING",
        quote(&config.schema),
        quote(&config.table),
        names.join(", "),
        selects.join(", "),
        arrays.join(", "),
        aliases.join(", ")
    )
}

/// The batch as columns of text (NULL as `None`), in the order of [`insert_sql`]. A mapped
/// column whose expression fails on an event fails the batch for good.
fn columns(
    config: &PostgresSinkConfig,
    batch: &Batch,
) -> Result<Vec<Vec<Option<String>>>, SinkError> {
    let n = batch.len();
    let mut out: Vec<Vec<Option<String>>> = (0..6 + config.columns.len())
        .map(|_| Vec::with_capacity(n))
        .collect();
    let mut runtime = expr::Runtime::new();
    for line in batch.lines() {
        let event = Event::from_stored(line)
            .map_err(|e| SinkError::permanent(format!("not a CloudEvent: {e}")))?;
        out[0].push(Some(event.id().to_owned()));
        out[1].push(Some(event.source().to_owned()));
        out[2].push(Some(event.ty().to_owned()));
        out[3].push(event.time().map(str::to_owned));
        out[4].push(event.subject().map(str::to_owned));
        out[5].push(match event.data() {
            Some(Data::Json(raw)) => Some(raw.get().to_owned()),
            Some(Data::Base64(b64)) => Some(serde_json::Value::from(b64.as_str()).to_string()),
            None => None,
        });
        if config.columns.is_empty() {
            continue;
        }
        let mut canonical = Vec::new();
        let mut stored = expr::StoredEvent::read(line)
            .unwrap_or_else(|| expr::StoredEvent::from_event(&event, &mut canonical));
        for (i, column) in config.columns.iter().enumerate() {
            let result = column.expr.run(&mut runtime, &mut stored).map_err(|e| {
                SinkError::permanent(format!(
                    "column `{}` of event `{}`: {e}",
                    column.name,
                    event.id()
                ))
            })?;
            out[6 + i].push(column_text(column.sql_type, &result));
        }
    }
    Ok(out)
}

/// A column value's text: JSON for `jsonb`; otherwise strings as they are, timestamps in
/// RFC 3339 and everything else as JSON text (PostgreSQL casts it, or refuses with a 22xxx).
fn column_text(sql_type: ColumnType, value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::Bytes(_) | Value::String(_) if sql_type != ColumnType::Jsonb => {
            value.to_str_lossy().map(|s| s.into_owned())
        }
        Value::Timestamp(ts) if sql_type != ColumnType::Jsonb => Some(ts.to_rfc3339()),
        other => Some(serde_json::to_string(other).unwrap_or_default()),
    }
}

impl Sink for PostgresSink {
    fn write<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.write_batch(batch))
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use veltrix_core::config::{PostgresColumn, SinkConfig};
    use veltrix_core::expr::ValueExpr;

    fn config(columns: Vec<PostgresColumn>) -> PostgresSinkConfig {
        PostgresSinkConfig {
            url: "postgres://postgres@127.0.0.1:1/test".into(),
            schema: "public".into(),
            table: "ev\"ents".into(),
            create_table: true,
            pool_size: 2,
            timeout: Duration::from_secs(1),
            columns,
        }
    }

    fn column(name: &str, sql_type: ColumnType, source: &str) -> PostgresColumn {
        PostgresColumn {
            name: name.into(),
            sql_type,
            expr: ValueExpr::compile(source).unwrap(),
        }
    }

    #[test]
    fn the_sql_quotes_names_and_casts_each_array() {
        let c = config(vec![column("score", ColumnType::Bigint, ".data.n")]);
        assert_eq!(
            insert_sql(&c),
            "INSERT INTO \"public\".\"ev\"\"ents\" (id, source, type, time, subject, data, \
             \"score\") SELECT c0, c1, c2, c3::timestamptz, c4, c5::jsonb, c6::bigint FROM \
             unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::text[]) AS u(c0, c1, c2, c3, c4, c5, c6) ON CONFLICT (source, id) DO NOTHING"
        );
        assert_eq!(
            create_sql(&c),
            "CREATE TABLE IF NOT EXISTS \"public\".\"ev\"\"ents\" (id text NOT NULL, source text \
             NOT NULL, type text NOT NULL, time timestamptz, subject text, data jsonb, \
             \"score\" bigint, PRIMARY KEY (source, id))"
        );
    }

    #[test]
    fn a_batch_becomes_text_columns_with_mapped_values() {
        let c = config(vec![
            column("player", ColumnType::Text, ".data.player"),
            column("tags", ColumnType::Jsonb, ".data.tags"),
            column("score", ColumnType::Bigint, "int!(.data.n) * 2"),
        ]);
        let batch = Batch::new(
            bytes::Bytes::from_static(
                b"{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\",\"time\":\"2024-01-01T00:00:00Z\",\"data\":{\"player\":\"ann\",\"tags\":[\"a\"],\"n\":\"21\"}}\n\
                  {\"specversion\":\"1.0\",\"id\":\"2\",\"source\":\"/s\",\"type\":\"t\",\"data_base64\":\"AA==\"}\n",
            ),
            2,
        );
        let err = columns(&c, &batch).unwrap_err();
        assert_eq!(err.retry, crate::handler::Retry::Permanent);
        assert!(
            err.message
                .starts_with("column `score` of event `1`: VRL runtime error"),
            "{}",
            err.message
        );
        let c = config(vec![
            column("player", ColumnType::Text, ".data.player"),
            column("tags", ColumnType::Jsonb, ".data.tags"),
            column("score", ColumnType::Bigint, "to_int(.data.n) ?? null"),
            column("nothing", ColumnType::Text, ".data.missing"),
        ]);
        let cols = columns(&c, &batch).unwrap();
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(cols[0], [s("1"), s("2")]);
        assert_eq!(cols[3], [s("2024-01-01T00:00:00Z"), None]);
        assert_eq!(
            cols[5],
            [
                s("{\"player\":\"ann\",\"tags\":[\"a\"],\"n\":\"21\"}"),
                s("\"AA==\"")
            ]
        );
        assert_eq!(cols[6], [s("ann"), None]);
        assert_eq!(cols[7], [s("[\"a\"]"), None]);
        assert_eq!(cols[8], [s("21"), s("0")], "to_int(null) is 0 in VRL");
        assert_eq!(cols[9], [None, None]);
    }

    #[test]
    fn sqlstates_split_into_retryable_and_permanent() {
        for code in [
            "08006", "40001", "40P01", "53300", "57P01", "57014", "55P03", "XX000",
        ] {
            assert!(retryable_sqlstate(code), "{code}");
        }
        for code in [
            "22P02", "22003", "23502", "23514", "42P01", "42703", "3F000",
        ] {
            assert!(!retryable_sqlstate(code), "{code}");
        }
    }

    #[tokio::test]
    async fn building_the_sink_does_not_connect_and_a_dead_server_is_retryable() {
        // Port 1: nothing listens; the sink is built anyway, and a write fails retryable.
        let sink = PostgresSink::new("t", &config(Vec::new())).unwrap();
        assert_eq!(sink.describe(), "postgres public.ev\"ents@127.0.0.1:1/test");
        let batch = Batch::new(
            bytes::Bytes::from_static(
                b"{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\"}\n",
            ),
            1,
        );
        let err = sink.write(&batch).await.unwrap_err();
        assert!(
            matches!(err.retry, crate::handler::Retry::Retryable { .. }),
            "{err}"
        );
        let bad = config(Vec::new());
        let bad = PostgresSinkConfig {
            url: "postgres://h:notaport/db".into(),
            ..bad
        };
        assert!(PostgresSink::new("t", &bad).is_err());
        let _ = SinkConfig::Postgres(bad);
    }
}
