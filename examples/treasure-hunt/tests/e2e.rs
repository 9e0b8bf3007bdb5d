//! The treasure hunt as a user runs it: the example binary on its own config, players posting
//! over HTTP while the demo generator plays, results read back from the real PostgreSQL
//! (127.0.0.1:5432, or `PG_URL`) through the tables and views of `schema.sql`.

#[path = "../../../crates/veltrix/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::{Engine, dlq, ndjson, post, skip_unless_required, wait_until};

const PROGRAM: &str = env!("CARGO_BIN_EXE_treasure-hunt");
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/veltrix.toml");
const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.sql");

fn pg_url() -> String {
    std::env::var("PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema holding the game's tables (from schema.sql), or `None` (SKIPPED) without
/// PostgreSQL.
async fn database(schema: &str) -> Option<tokio_postgres::Client> {
    let (client, connection) = match tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await
    {
        Ok(c) => c,
        Err(e) => {
            skip_unless_required(&format!("PostgreSQL at {} unreachable: {e}", pg_url()));
            return None;
        }
    };
    tokio::spawn(connection);
    let sql = std::fs::read_to_string(SCHEMA).unwrap();
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; \
             SET search_path TO {schema}; {sql}"
        ))
        .await
        .expect("schema.sql applies");
    Some(client)
}

/// The example's config as shipped, with this test's data dir, ports, schema and a short
/// leaderboard window (a minute is too long to wait for in CI).
fn config(dir: &Path, schema: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(CONFIG)
        .unwrap()
        .replace(
            "${VELTRIX_DATA_DIR:-./veltrix-data/treasure-hunt}",
            &dir.join("data").display().to_string(),
        )
        .replace("${VELTRIX_API_ADDRESS:-127.0.0.1:8081}", "127.0.0.1:0")
        .replace("${VELTRIX_INGEST_ADDRESS:-127.0.0.1:8080}", "127.0.0.1:0")
        .replace("${PG_SCHEMA:-public}", schema)
        .replace("${DEMO_RATE:-5}", "50")
        .replace(r#"window = "1m""#, r#"window = "2s""#);
    assert!(
        text.contains(r#"window = "2s""#),
        "the leaderboard window moved"
    );
    let path = dir.join("veltrix.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn claim(id: &str, player: &str, treasure: &str, hint_free: bool) -> Value {
    json!({"specversion": "1.0", "type": "treasure.claimed", "source": "/app", "id": id,
           "data": {"player": player, "treasure": treasure, "hint_free": hint_free}})
}

async fn rows(db: &tokio_postgres::Client, sql: &str) -> Vec<tokio_postgres::Row> {
    db.query(sql, &[]).await.expect(sql)
}

#[tokio::test]
async fn claims_are_scored_once_and_the_leaderboard_lands_in_postgres() {
    let schema = format!("treasure_hunt_{}", std::process::id());
    let Some(db) = database(&schema).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start_program(PROGRAM, &config(dir.path(), &schema));

    let events = vec![
        claim("c1", "tester-ann", "gold-1", true),
        // The same treasure claimed again by a retrying client, under a new id.
        claim("c1-again", "tester-ann", "gold-1", true),
        claim("c2", "tester-ann", "silver-2", false),
        claim("c3", "tester-bob", "bronze-3", false),
        claim("c4", "tester-bob", "plastic-4", false), // unknown rarity: dead-lettered
        json!({"specversion": "1.0", "type": "player.checkin", "source": "/app", "id": "k1",
               "data": {"player": "tester-ann"}}),
        json!({"specversion": "1.0", "type": "clue.found", "source": "/app", "id": "f1",
               "data": {"player": "tester-bob", "clue": "clue-9"}}),
    ];
    let (status, body) = post(&engine.ingest, "application/x-ndjson", ndjson(&events), &[]).await;
    assert_eq!(status, 202, "{body}");

    let claims_sql = format!(
        "SELECT player, treasure, points FROM {schema}.claims WHERE player LIKE 'tester-%' \
         ORDER BY id"
    );
    assert!(
        wait_until(async || rows(&db, &claims_sql).await.len() >= 3).await,
        "the scored claims reached the claims table"
    );
    let claims: Vec<(String, String, i64)> = rows(&db, &claims_sql)
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        claims,
        [
            ("tester-ann".into(), "gold-1".into(), 120),
            ("tester-ann".into(), "silver-2".into(), 50),
            ("tester-bob".into(), "bronze-3".into(), 10),
        ]
    );

    let totals_sql = format!(
        "SELECT player, points, claims FROM {schema}.leaderboard_totals \
         WHERE player LIKE 'tester-%' ORDER BY player"
    );
    let totals = async || -> Vec<(String, i64, i64)> {
        rows(&db, &totals_sql)
            .await
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    };
    assert!(
        wait_until(async || totals().await.len() == 2).await,
        "the leaderboard windows reached PostgreSQL: {:?}",
        totals().await
    );
    assert_eq!(
        totals().await,
        [("tester-ann".into(), 170, 2), ("tester-bob".into(), 10, 1)]
    );

    let events_sql = format!(
        "SELECT type, player FROM {schema}.game_events WHERE player LIKE 'tester-%' ORDER BY id"
    );
    let game_events: Vec<(String, String)> = rows(&db, &events_sql)
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        game_events,
        [
            ("clue.found".into(), "tester-bob".into()),
            ("player.checkin".into(), "tester-ann".into()),
        ]
    );

    let dead = dlq(&engine.api, "game").await;
    let ids: Vec<&str> = dead.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, ["c4"], "{dead:?}");
    assert!(
        dead[0].to_string().contains("unknown rarity `plastic`"),
        "{dead:?}"
    );

    // The demo players play too: their claims are scored into the same tables.
    let demo_sql =
        format!("SELECT count(*) FROM {schema}.claims WHERE player LIKE 'player-%' AND points > 0");
    assert!(
        wait_until(async || rows(&db, &demo_sql).await[0].get::<_, i64>(0) > 0).await,
        "the generator's claims were scored"
    );
    assert!(engine.stop().success());
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

#[test]
fn the_config_tests_pass_with_the_score_processor() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(PROGRAM)
        .args(["test", CONFIG])
        .env("VELTRIX_DATA_DIR", dir.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("unknown rarity"), "{text}");
}
