//! End-to-end: the postgres sink against the real PostgreSQL at 127.0.0.1:5432 (trust auth, user
//! postgres, database test). Each test uses its own table (random suffix) and drops it at the
//! end. Without a server the tests print `SKIPPED:` and pass, unless VELTRIX_REQUIRE_SERVICES=1.

use serde_json::{Value, json};

mod support;
use support::*;

const PG: &str = "127.0.0.1:5432";
const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

async fn pg() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(URL, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// Rows of `table`; 0 while it does not exist yet.
async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    match client
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .await
    {
        Ok(row) => row.get(0),
        Err(_) => 0,
    }
}

async fn drop_table(client: &tokio_postgres::Client, table: &str) {
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .await
        .unwrap();
}

fn game_event(id: &str, player: &str, score: Value) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "/game", "type": "score.recorded",
        "time": "2024-05-01T12:00:00Z", "subject": player,
        "data": {"player": player, "score": score}
    })
}

fn pg_config(table: &str, url: &str, extra_sink: &str, pipeline: &str) -> String {
    format!(
        r#"
[queues.scores]
types = ["*"]
[pipelines.store]
from = ["scores"]
workers = 2
sink = "db"
{pipeline}
[sinks.db]
type = "postgres"
url = "{url}"
table = "{table}"
pool_size = 2
timeout = "5s"
columns = {{ player = '.data.player', score = {{ expr = '.data.score', type = "bigint" }} }}
{extra_sink}
"#
    )
}

async fn post_events(engine: &Engine, events: &[Value]) {
    let (status, body) = post(&engine.ingest, "application/x-ndjson", ndjson(events), &[]).await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_land_once_per_source_and_id_with_mapped_columns_across_redelivery() {
    if !service_available("PostgreSQL", PG) {
        return;
    }
    let client = pg().await;
    let table = unique_name("veltrix_events");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &pg_config(&table, URL, "", ""));
    let engine = Engine::start(&cfg);
    let first: Vec<Value> = (0..300)
        .map(|i| game_event(&format!("s{i:04}"), &format!("p{}", i % 7), json!(i)))
        .collect();
    post_events(&engine, &first).await;
    // The same ids again: at-least-once delivery, one row each.
    post_events(&engine, &first[..100]).await;
    assert!(
        wait_until(async || count(&client, &table).await == 300).await,
        "300 rows, found {}",
        count(&client, &table).await
    );
    // kill -9 right away: the pipeline's cursor may not be persisted yet (every 250 ms), so the
    // restart can deliver batches that are already in the table again.
    engine.kill9();
    let engine = Engine::start(&cfg);
    let more: Vec<Value> = (300..400)
        .map(|i| game_event(&format!("s{i:04}"), "late", json!(i)))
        .collect();
    post_events(&engine, &more).await;
    assert!(
        wait_until(async || count(&client, &table).await == 400).await,
        "400 rows, found {}",
        count(&client, &table).await
    );
    let api = engine.api.clone();
    // A duplicate insert would fail the batch (23505) and dead-letter it: none did.
    assert!(
        dlq(&api, "store").await.is_empty(),
        "redelivery is not an error"
    );
    let duplicates: i64 = client
        .query_one(
            &format!("SELECT count(*) - count(DISTINCT (source, id)) FROM \"{table}\""),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(duplicates, 0);
    let row = client
        .query_one(
            &format!(
                "SELECT id, source, type, time = '2024-05-01T12:00:00Z'::timestamptz, subject, \
                 data->>'player', player, score FROM \"{table}\" WHERE id = 's0010'"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "s0010");
    assert_eq!(row.get::<_, String>(1), "/game");
    assert_eq!(row.get::<_, String>(2), "score.recorded");
    assert!(row.get::<_, bool>(3), "time is a timestamptz");
    assert_eq!(row.get::<_, Option<String>>(4).as_deref(), Some("p3"));
    assert_eq!(row.get::<_, String>(5), "p3", "data is jsonb");
    assert_eq!(row.get::<_, String>(6), "p3");
    assert_eq!(row.get::<_, i64>(7), 10, "score is a bigint");
    let key: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
             AND a.attnum = ANY(i.indkey) WHERE i.indrelid = $1::text::regclass AND i.indisprimary \
             ORDER BY array_position(i.indkey, a.attnum)",
            &[&format!("\"{table}\"")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(key, ["source", "id"], "primary key (source, id)");
    assert!(
        metric(&api, "veltrix_sink_pool_connections", &["sink=\"db\""]).await >= 1.0,
        "pool gauges exported"
    );
    assert!(engine.stop().success());
    drop_table(&client, &table).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_the_column_refuses_dead_letters_its_batch_with_the_sqlstate() {
    if !service_available("PostgreSQL", PG) {
        return;
    }
    let client = pg().await;
    let table = unique_name("veltrix_bad");
    let dir = tempfile::tempdir().unwrap();
    // One event per batch, so only the bad event's batch fails.
    let cfg = config(
        dir.path(),
        &pg_config(&table, URL, "", "batch_events_max = 1"),
    );
    let engine = Engine::start(&cfg);
    let events = vec![
        game_event("ok1", "ann", json!(1)),
        game_event("bad", "bob", json!("not a number")),
        game_event("ok2", "cy", json!(3)),
    ];
    post_events(&engine, &events).await;
    let api = engine.api.clone();
    assert!(wait_until(async || !dlq(&api, "store").await.is_empty()).await);
    let entries = dlq(&api, "store").await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let entry = &entries[0];
    assert_eq!(entry["reason"], "permanent sink error");
    assert_eq!(entry["attempts"], 1, "not retried");
    let last_error = entry["last_error"].as_str().unwrap();
    assert!(last_error.contains("SQLSTATE 22P02"), "{last_error}");
    assert_eq!(entry["event"]["id"], "bad");
    assert!(wait_until(async || count(&client, &table).await == 2).await);
    assert!(engine.stop().success());
    drop_table(&client, &table).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_starts_while_postgres_is_unreachable_and_delivers_once_it_answers() {
    if !service_available("PostgreSQL", PG) {
        return;
    }
    let client = pg().await;
    let table = unique_name("veltrix_late");
    // A port nothing listens on yet; later a proxy to the real server opens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let dir = tempfile::tempdir().unwrap();
    let retry =
        "retry = { attempts_max = 1000, backoff_initial = \"20ms\", backoff_max = \"200ms\" }";
    let cfg = config(dir.path(), &pg_config(&table, &url, "", retry));
    let engine = Engine::start(&cfg);
    let events: Vec<Value> = (0..50)
        .map(|i| game_event(&format!("l{i}"), "ann", json!(i)))
        .collect();
    post_events(&engine, &events).await;
    let api = engine.api.clone();
    assert!(
        wait_until(async || {
            metric(
                &api,
                "veltrix_sink_requests_total",
                &["sink=\"db\"", "outcome=\"retryable\""],
            )
            .await
                >= 3.0
        })
        .await,
        "writes fail as retryable while the server is unreachable"
    );
    assert!(dlq(&api, "store").await.is_empty(), "nothing dead-lettered");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let proxy = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(PG).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    assert!(
        wait_until(async || count(&client, &table).await == 50).await,
        "delivered once the server answers; found {}",
        count(&client, &table).await
    );
    assert!(engine.stop().success(), "no crash, clean stop");
    proxy.abort();
    drop_table(&client, &table).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_create_table_a_missing_table_dead_letters_and_an_existing_row_is_kept() {
    if !service_available("PostgreSQL", PG) {
        return;
    }
    let client = pg().await;
    let table = unique_name("veltrix_own");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &pg_config(&table, URL, "create_table = false", "batch_events_max = 1"),
    );
    let engine = Engine::start(&cfg);
    let api = engine.api.clone();
    // No table, and the sink may not create one: 42P01 is permanent.
    post_events(&engine, &[game_event("early", "ann", json!(1))]).await;
    assert!(wait_until(async || !dlq(&api, "store").await.is_empty()).await);
    let entries = dlq(&api, "store").await;
    assert_eq!(entries[0]["attempts"], 1, "not retried: {entries:#?}");
    let last_error = entries[0]["last_error"].as_str().unwrap();
    assert!(last_error.contains("SQLSTATE 42P01"), "{last_error}");
    assert_eq!(count(&client, &table).await, 0, "the sink created nothing");
    // The operator's own table: an extra column with a default, and a row already there.
    client
        .batch_execute(&format!(
            "CREATE TABLE \"{table}\" (id text NOT NULL, source text NOT NULL, type text NOT NULL, \
             time timestamptz, subject text, data jsonb, player text, score bigint, \
             received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (source, id)); \
             INSERT INTO \"{table}\" (id, source, type) VALUES ('x1', '/game', 'written.first')"
        ))
        .await
        .unwrap();
    let events = [
        game_event("x1", "bob", json!(5)),
        game_event("x2", "cy", json!(6)),
        // The same id from another source is another event.
        json!({"specversion": "1.0", "id": "x1", "source": "/other", "type": "score.recorded"}),
    ];
    post_events(&engine, &events).await;
    let delivered = async || {
        metric(
            &api,
            "veltrix_pipeline_events_total",
            &["pipeline=\"store\"", "outcome=\"delivered\""],
        )
        .await
    };
    assert!(
        wait_until(async || delivered().await >= 3.0).await,
        "{} delivered",
        delivered().await
    );
    let rows: Vec<(String, String, String, Option<String>, bool)> = client
        .query(
            &format!(
                "SELECT source, id, type, player, received_at IS NOT NULL FROM \"{table}\" \
                 ORDER BY source, id"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let row = |source: &str, id: &str, ty: &str, player: Option<&str>| {
        (
            source.to_owned(),
            id.to_owned(),
            ty.to_owned(),
            player.map(str::to_owned),
            true,
        )
    };
    assert_eq!(
        rows,
        [
            row("/game", "x1", "written.first", None),
            row("/game", "x2", "score.recorded", Some("cy")),
            row("/other", "x1", "score.recorded", None),
        ],
        "the existing (source, id) row is kept as it was; the rest inserted"
    );
    assert_eq!(dlq(&api, "store").await.len(), 1, "only the early event");
    assert!(engine.stop().success());
    drop_table(&client, &table).await;
}
