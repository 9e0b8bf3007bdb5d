//! Hostile clients against the real binary: a slowloris trickling its request head is cut off,
//! a body trickling in gets 408, the per-listener connection cap holds (and frees up), a
//! 100 MiB body against a 10 MiB limit gets 413 having read about the limit (declared length and
//! chunked), with memory bounded throughout, and every guarded admin route answers 401 without
//! the token — before reading a body. Times printed here are figures for
//! GUARANTEES.md (section 9), not assertions: the only deadlines are failure guards.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;
use support::*;

const MIB: usize = 1024 * 1024;

/// A blackhole topology whose http source has `limits` (TOML lines).
fn engine_with(dir: &std::path::Path, limits: &str) -> Engine {
    let path = config(
        dir,
        "[queues.q]\ntypes = [\"*\"]\n[pipelines.p]\nfrom = [\"q\"]\nsink = \"s\"\n[sinks.s]\ntype = \"blackhole\"\n",
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("body_bytes_max = \"1MiB\"\n", limits);
    std::fs::write(&path, text).unwrap();
    Engine::start(&path)
}

/// `host:port` of an `http://host:port/...` URL.
fn authority(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("an http URL");
    rest.split('/').next().unwrap().to_owned()
}

/// Reads until the server closes the connection; `None` if it is still open after `patience`.
async fn read_until_closed(
    reader: &mut (impl AsyncReadExt + Unpin),
    patience: Duration,
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + patience;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, reader.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn read_bytes_total(engine: &Engine) -> f64 {
    metric(
        &engine.api,
        "veltrix_http_read_bytes_total",
        &["listener=\"sources.http\""],
    )
    .await
}

async fn connections(engine: &Engine) -> f64 {
    metric(
        &engine.api,
        "veltrix_http_connections",
        &["listener=\"sources.http\""],
    )
    .await
}

fn one_event() -> Vec<u8> {
    ndjson(&[serde_json::json!({"specversion": "1.0", "id": "1", "source": "/t", "type": "t"})])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_trickling_its_headers_is_cut_off_at_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(dir.path(), "header_timeout = \"2s\"\n");
    // Before connecting: the server's clock starts at accept or later, so ours runs longer.
    let started = Instant::now();
    let stream = TcpStream::connect(authority(&engine.ingest)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One byte of header every 100 ms, for as long as the server lets it (never a whole head).
    let trickle = tokio::spawn(async move {
        writer
            .write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
            .await?;
        for byte in b"X-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
            writer.write_all(&[*byte]).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<(), std::io::Error>(())
    });
    // A generous failure guard, yet far below hyper's built-in 30 s: the setting is what acts.
    let said = read_until_closed(&mut reader, Duration::from_secs(20))
        .await
        .expect("the server closed the trickling connection within 10× header_timeout");
    let cut_after = started.elapsed();
    trickle.abort();
    assert!(
        said.is_empty(),
        "closed without an answer, got {:?}",
        String::from_utf8_lossy(&said)
    );
    assert!(
        cut_after >= Duration::from_secs(2),
        "cut before header_timeout: {cut_after:?}"
    );
    eprintln!("FIGURE slowloris: header_timeout 2s, connection closed after {cut_after:.2?}");
    // The listener still serves.
    let (status, _) = post(&engine.ingest, "application/x-ndjson", one_event(), &[]).await;
    assert_eq!(status, 202);
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_trickling_in_gets_408_at_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(dir.path(), "body_timeout = \"2s\"\n");
    let stream = TcpStream::connect(authority(&engine.ingest)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let body = one_event();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        // Never the last byte: the body cannot complete however long the server waits.
        for byte in &body[..body.len() - 1] {
            writer.write_all(&[*byte]).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await;
        Ok::<(), std::io::Error>(())
    });
    // As for the head: a failure guard well below the 30 s default, so the setting is what acts.
    let said = read_until_closed(&mut reader, Duration::from_secs(20))
        .await
        .expect("the server answered and closed within 10× body_timeout");
    let answered_after = started.elapsed();
    trickle.abort();
    let said = String::from_utf8_lossy(&said);
    assert!(said.starts_with("HTTP/1.1 408"), "{said}");
    assert!(
        said.contains("\"status\":408"),
        "a problem document: {said}"
    );
    assert!(said.contains("body_timeout"), "says which setting: {said}");
    assert!(
        answered_after >= Duration::from_secs(2),
        "408 before body_timeout: {answered_after:?}"
    );
    eprintln!("FIGURE body trickle: body_timeout 2s, 408 after {answered_after:.2?}");
    let (status, _) = post(&engine.ingest, "application/x-ndjson", one_event(), &[]).await;
    assert_eq!(status, 202);
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connection_cap_holds_and_a_new_request_succeeds_once_others_close() {
    const CAP: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    // A long header timeout: here the cap alone must hold the idle connections back.
    let engine = engine_with(
        dir.path(),
        &format!("connections_max = {CAP}\nheader_timeout = \"5m\"\n"),
    );
    let address = authority(&engine.ingest);
    let mut idle = Vec::new();
    for _ in 0..CAP + 10 {
        // Beyond the cap the kernel completes the handshake (the accept backlog): connect works.
        idle.push(TcpStream::connect(&address).await.unwrap());
    }
    let mut seen = Vec::new();
    let full = wait_until(async || {
        let open = connections(&engine).await;
        seen.push(open);
        open >= CAP as f64
    })
    .await;
    assert!(full, "the listener took {CAP} connections: {seen:?}");
    // Keep watching a while: the ten waiting in the backlog must not get in.
    for _ in 0..20 {
        seen.push(connections(&engine).await);
    }
    assert!(
        seen.iter().all(|&open| open <= CAP as f64),
        "the gauge went past the cap: {seen:?}"
    );
    // A request beyond the cap waits in the backlog instead of being served.
    let waiting = tokio::spawn({
        let url = engine.ingest.clone();
        async move { post(&url, "application/x-ndjson", one_event(), &[]).await.0 }
    });
    let mut waiting = waiting;
    // A window in which nothing may happen (an absence cannot be awaited): not served in it.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "served past the cap"
    );
    assert_eq!(connections(&engine).await, CAP as f64, "still at the cap");
    drop(idle);
    let status = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("served once the others closed")
        .unwrap();
    assert_eq!(status, 202);
    let (status, _) = post(&engine.ingest, "application/x-ndjson", one_event(), &[]).await;
    assert_eq!(status, 202);
    assert!(
        wait_until(async || connections(&engine).await == 0.0).await,
        "every closed connection left the gauge"
    );
    assert!(engine.stop().success());
}

/// Sends a 100 MiB body (declared or chunked) until the server answers; returns the answer,
/// the bytes the server read meanwhile and how long the answer took.
async fn send_huge(engine: &Engine, chunked: bool) -> (String, f64, Duration) {
    const BODY: usize = 100 * MIB;
    const CHUNK: usize = 64 * 1024;
    let before = read_bytes_total(engine).await;
    let stream = TcpStream::connect(authority(&engine.ingest)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {BODY}")
    };
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n{framing}\r\n\r\n"
    );
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; CHUNK];
        let chunk_head = format!("{CHUNK:x}\r\n");
        for _ in 0..BODY / CHUNK {
            if chunked {
                writer.write_all(chunk_head.as_bytes()).await?;
            }
            writer.write_all(&chunk).await?;
            if chunked {
                writer.write_all(b"\r\n").await?;
            }
        }
        if chunked {
            writer.write_all(b"0\r\n\r\n").await?;
        }
        Ok::<(), std::io::Error>(())
    });
    let said = read_until_closed(&mut reader, PATIENCE)
        .await
        .expect("the server answered and closed");
    let took = started.elapsed();
    sender.abort();
    let read = read_bytes_total(engine).await - before;
    (String::from_utf8_lossy(&said).into_owned(), read, took)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mib_body_against_a_10_mib_limit_gets_413_having_read_about_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(dir.path(), "body_bytes_max = \"10MiB\"\n");
    for chunked in [false, true] {
        let (said, read, took) = send_huge(&engine, chunked).await;
        let how = if chunked { "chunked" } else { "Content-Length" };
        assert!(said.starts_with("HTTP/1.1 413"), "{how}: {said}");
        assert!(said.contains("body_bytes_max"), "{how}: {said}");
        // The counter counts: a declared length is refused on the head alone, a chunked body
        // only once the limit is passed, so the server must have read the whole limit.
        let floor = if chunked { (10 * MIB) as f64 } else { 1.0 };
        assert!(read >= floor, "{how}: only {read} bytes counted");
        // About the limit: at most the limit and a few read buffers, far from the 100 MiB sent.
        assert!(
            read <= (11 * MIB) as f64,
            "{how}: the server read {read} bytes of a body over the 10 MiB limit"
        );
        eprintln!(
            "FIGURE oversized body ({how}): 413 after {took:.2?}, {:.2} MiB read server-side",
            read / MIB as f64
        );
    }
    let peak = proc_memory_bytes(engine.child.id(), "VmHWM");
    eprintln!(
        "FIGURE oversized body: engine peak RSS {} MiB",
        peak / MIB as u64
    );
    assert!(
        peak < 96 * MIB as u64,
        "memory must stay bounded: peak RSS {peak} bytes"
    );
    // The listener still serves.
    let (status, _) = post(&engine.ingest, "application/x-ndjson", one_event(), &[]).await;
    assert_eq!(status, 202);
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_guarded_admin_route_answers_401_without_the_token_before_reading_a_body() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        "[queues.q]\ntypes = [\"*\"]\n[pipelines.p]\nfrom = [\"q\"]\nsink = \"s\"\n[sinks.s]\ntype = \"blackhole\"\n",
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[api]\n", "[api]\ntoken = \"admin-secret\"\n");
    std::fs::write(&path, text).unwrap();
    let engine = Engine::start(&path);
    let routes = veltrix_engine::ADMIN_GUARDED_ROUTES;
    assert!(routes.contains(&("POST", "/api/v1/reload")), "{routes:?}");
    let address = authority(&engine.api);
    for &(method, route) in routes {
        let route = route.replace("{pipeline}", "p");
        // Raw requests: no token, a wrong one, a longer one that starts with the right one.
        for authorization in [
            "",
            "Authorization: Bearer wrong\r\n",
            "Authorization: Bearer admin-secret-\r\n",
        ] {
            // A POST declares a 100 MiB body and sends none of it: the answer must come anyway,
            // so the token is checked before any body is read.
            let body = if method == "POST" {
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    100 * MIB
                )
            } else {
                String::new()
            };
            let mut stream = TcpStream::connect(&address).await.unwrap();
            stream
                .write_all(
                    format!("{method} {route} HTTP/1.1\r\nHost: x\r\n{authorization}{body}\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let answered = tokio::time::timeout(PATIENCE, async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.unwrap();
                    assert!(n > 0, "{method} {route}: closed without an answer");
                    head.extend_from_slice(&buf[..n]);
                }
            })
            .await;
            assert!(
                answered.is_ok(),
                "{method} {route}: no answer without the body"
            );
            let head = String::from_utf8_lossy(&head).to_lowercase();
            assert!(
                head.starts_with("http/1.1 401"),
                "{method} {route} with {authorization:?}: {head}"
            );
            assert!(head.contains("www-authenticate: bearer"), "{head}");
        }
        // With the token the route exists (so the 401s above are the guard, not a 404).
        let url = format!("{}{route}", engine.api);
        let status = client()
            .request(method.parse().unwrap(), &url)
            .bearer_auth("admin-secret")
            .header("content-type", "application/json")
            .body("{\"all\": true}")
            .send()
            .await
            .unwrap()
            .status();
        assert!(
            status.is_success(),
            "{method} {route} with the token: {status}"
        );
    }
    assert!(engine.stop().success());
}
