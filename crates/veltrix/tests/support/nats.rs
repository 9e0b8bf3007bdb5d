//! A private `nats-server -js` per test (its own free port and store directory, so tests run in
//! parallel and leave nothing behind), and helpers to publish to and inspect its streams.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use async_nats::jetstream;
use serde_json::Value;

use super::{PATIENCE, skip_unless_required};

/// A running `nats-server` with JetStream; killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    store: tempfile::TempDir,
}

/// The `nats-server` binary: `$NATS_SERVER`, else the first on `PATH`, `/usr/sbin` or
/// `/usr/local/bin`.
fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/bin".into()])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A name no other test uses: uppercase letters and digits (valid in stream names and subjects).
pub fn unique() -> String {
    ulid::Ulid::generate().to_string()
}

impl NatsServer {
    /// Starts a server on a free port. `None` (after printing `SKIPPED`, or failing under
    /// `VELTRIX_REQUIRE_SERVICES=1`) when `nats-server` is not installed.
    pub async fn start() -> Option<NatsServer> {
        NatsServer::start_on(free_port()).await
    }

    /// Starts a server on `port`.
    pub async fn start_on(port: u16) -> Option<NatsServer> {
        let Some(binary) = binary() else {
            skip_unless_required(
                "nats-server is not installed (apt-get install nats-server, or set NATS_SERVER)",
            );
            return None;
        };
        let mut server = NatsServer {
            child: None,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            store: tempfile::tempdir().expect("a store directory"),
        };
        server.spawn(&binary).await;
        Some(server)
    }

    async fn spawn(&mut self, binary: &PathBuf) {
        let child = Command::new(binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        // Ready once JetStream answers (a raw request: the client's account type does not
        // parse the answers of every server version).
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(client) = async_nats::connect(&self.url).await
                && let Ok(answer) = client.request("$JS.API.INFO", "".into()).await
                && !String::from_utf8_lossy(&answer.payload).contains("\"error\"")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on {}",
                self.url
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the server (its store survives for [`NatsServer::restart`]).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        let binary = binary().expect("nats-server was there a moment ago");
        self.spawn(&binary).await;
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url)
            .await
            .expect("connect to the test's nats-server")
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client().await)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Publishes each event as structured-mode JSON to `subject` and waits for every PubAck.
pub async fn publish_events(js: &jetstream::Context, subject: &str, events: &[Value]) {
    let mut acks = Vec::with_capacity(events.len());
    for event in events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("content-type", "application/cloudevents+json");
        acks.push(
            js.publish_with_headers(
                subject.to_owned(),
                headers,
                serde_json::to_vec(event).unwrap().into(),
            )
            .await
            .expect("publish"),
        );
    }
    for ack in acks {
        ack.await.expect("PubAck");
    }
}

/// `(num_pending, num_ack_pending)` of a consumer: messages not yet delivered, and delivered but
/// not acknowledged.
pub async fn consumer_pending(js: &jetstream::Context, stream: &str, consumer: &str) -> (u64, u64) {
    let info = js
        .get_stream(stream)
        .await
        .expect("stream")
        .consumer_info(consumer)
        .await
        .expect("consumer info");
    (info.num_pending, info.num_ack_pending as u64)
}

/// How many messages a stream holds.
pub async fn stream_messages(js: &jetstream::Context, stream: &str) -> u64 {
    let mut stream = js.get_stream(stream).await.expect("stream");
    stream.info().await.expect("stream info").state.messages
}
