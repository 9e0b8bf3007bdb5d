//! An HTTP listener (an http source or the admin API) that hostile or careless clients cannot
//! exhaust: the accept loop, each connection's limits, and reading a request body within limits.
//!
//! Layout: one task per listener runs the accept loop; every accepted connection is served
//! (HTTP/1.1, hyper) in its own task inside a `JoinSet` the loop owns, so aborting the loop's
//! task (the engine does at the shutdown deadline) closes every connection still open.
//!
//! Limits (`ListenerLimits`, per listener):
//! - `connections_max`: the loop takes a permit *before* it accepts, so at most that many
//!   connections are open; further ones wait, connected, in the kernel's accept backlog (tokio's
//!   1024, capped by `net.core.somaxconn`) until a connection closes — they are neither
//!   accepted nor refused. Past the backlog the kernel drops SYNs and clients retry. Gauge
//!   `veltrix_http_connections{listener}`.
//! - `header_timeout`: the request line and headers must arrive within it, counted from when
//!   the connection starts waiting for a request (hyper's header read timeout), or the
//!   connection is closed without an answer. A slowloris client therefore holds a slot for at
//!   most `header_timeout`, and so does an idle keep-alive connection.
//! - `body_timeout`: handlers read bodies with [`read_body`], which gives up (408) when the whole
//!   body has not arrived within it; hyper then closes the connection instead of draining it.
//!   Handlers that never read a body do not keep the connection open for one.
//!
//! Every byte read from clients is counted in `veltrix_http_read_bytes_total{listener}` (what
//! an oversized or abandoned body cost the server). At close the connection lingers: its write
//! side is shut (FIN) and what the client still sends is discarded, for at most
//! [`LINGER_TIME`] and [`LINGER_BYTES_MAX`] (not counted), so an early answer — a 413 before the
//! body was sent — reaches a client still writing instead of being lost to a TCP reset.
//!
//! Shutdown: when `stop` turns true the loop stops accepting and asks every connection to
//! finish (an idle one closes at once, one with a request in flight closes after answering it),
//! then waits for all of them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use veltrix_core::config::ListenerLimits;

/// Serves `router` on `listener` within `limits` until `stop` turns true; `name` labels the
/// metrics (`api`, `sources.NAME`).
pub(crate) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ListenerLimits,
    name: String,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let open = metrics::gauge!("veltrix_http_connections", "listener" => name.clone());
    let read_bytes = metrics::counter!("veltrix_http_read_bytes_total", "listener" => name);
    open.set(0.0);
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let (draining_tx, draining) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let mut stopped = std::pin::pin!(stopped);
    loop {
        // A slot first: beyond the cap, connections wait in the accept backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut stopped => break,
            Some(_) = connections.join_next() => continue,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        open.increment(1.0);
        let open = open.clone();
        let io = TokioIo::new(Counted {
            inner: stream,
            read_bytes: read_bytes.clone(),
            linger: None,
        });
        let connection = http.serve_connection(io, TowerToHyperService::new(router.clone()));
        let mut draining = draining.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = async { let _ = draining.wait_for(|d| *d).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            open.decrement(1.0);
        });
        // Reap finished connections so the set holds only open ones.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = draining_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// After a failed accept: a client that gave up is nothing; anything else (out of file
/// descriptors, say) would fail again at once, so wait a little before the next attempt.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed; retrying in 1s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// At close, how long and how much of what a client still sends is read and discarded
/// ("lingering close"): closing a socket with unread input makes the kernel answer RST, which can
/// destroy the response (a 413 sent before the client finished writing its body) in the client's
/// buffers. Bounded so a hostile client cannot hold the slot with it.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES_MAX: usize = 1 << 20;

/// A client connection that counts the bytes read from it, and lingers at close.
struct Counted {
    inner: TcpStream,
    read_bytes: metrics::Counter,
    /// Set once the write side is shut down: the deadline and the bytes still to discard.
    linger: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.read_bytes.increment(read as u64);
        }
        result
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.linger.is_none() {
            // FIN after everything written: the client sees the whole response, then the end.
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.linger = Some((Box::pin(tokio::time::sleep(LINGER_TIME)), LINGER_BYTES_MAX));
        }
        let (deadline, left) = this.linger.as_mut().expect("set above");
        let mut scratch = [0u8; 8192];
        loop {
            if *left == 0 || deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch[..(*left).min(8192)]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                // End of input, or a client that reset: nothing left to protect.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => *left -= buf.filled().len(),
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Why [`read_body`] gave up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// More than the limit arrived (413); reading stopped there.
    #[error("the body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    /// The whole body did not arrive within the timeout (408).
    #[error("the body did not arrive within {}s", timeout.as_secs_f64())]
    Timeout { timeout: Duration },
    /// The connection failed or the framing was invalid (400).
    #[error("reading the body failed: {0}")]
    Unreadable(String),
}

/// Reads a whole request body of at most `limit` bytes, arriving within `timeout` from now.
pub(crate) async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(BodyError::Timeout { timeout }),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if s.is::<http_body_util::LengthLimitError>() {
                    return Err(BodyError::TooLarge { limit });
                }
                source = s.source();
            }
            Err(BodyError::Unreadable(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: ListenerLimits) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = axum::Router::new().route(
            "/",
            axum::routing::post(|body: Body| async move {
                match read_body(body, 16, Duration::from_millis(300)).await {
                    Ok(bytes) => (axum::http::StatusCode::OK, bytes.to_vec()),
                    Err(BodyError::Timeout { .. }) => {
                        (axum::http::StatusCode::REQUEST_TIMEOUT, Vec::new())
                    }
                    Err(BodyError::TooLarge { .. }) => {
                        (axum::http::StatusCode::PAYLOAD_TOO_LARGE, Vec::new())
                    }
                    Err(BodyError::Unreadable(_)) => {
                        (axum::http::StatusCode::BAD_REQUEST, Vec::new())
                    }
                }
            }),
        );
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(serve(listener, router, limits, "test".into(), stop_rx));
        (address, stop)
    }

    /// Reads until the server closes the connection (or `patience` passes); returns what it
    /// said.
    async fn read_to_close(stream: &mut TcpStream, patience: Duration) -> Option<String> {
        let mut out = Vec::new();
        match tokio::time::timeout(patience, stream.read_to_end(&mut out)).await {
            Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
            Err(_) => None,
        }
    }

    const PATIENCE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_client_still_sending_an_oversized_body_reads_the_early_413() {
        let (address, _stop) = start(ListenerLimits::default()).await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        // Over the 16-byte limit from the first bytes of the body: refused at once.
        stream
            .write_all(
                b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n\
                  0123456789abcdef0123456789abcdef",
            )
            .await
            .unwrap();
        // The answer is there before the body was sent; the client goes on sending it (less
        // than the linger budget), as clients that do not wait for `100 Continue` do. Without
        // the lingering close the server's socket is gone: the kernel answers the first bytes
        // with a reset and the next write fails.
        stream.readable().await.unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            stream
                .write_all(&chunk)
                .await
                .expect("the server still reads");
        }
        let said = read_to_close(&mut stream, PATIENCE)
            .await
            .expect("an answer");
        assert!(said.starts_with("HTTP/1.1 413"), "{said:?}");
    }

    #[tokio::test]
    async fn a_request_head_that_does_not_arrive_in_time_closes_the_connection() {
        let (address, _stop) = start(ListenerLimits {
            header_timeout: Duration::from_millis(200),
            ..ListenerLimits::default()
        })
        .await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let said = read_to_close(&mut stream, PATIENCE).await;
        assert_eq!(said.as_deref(), Some(""), "closed without an answer");
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_gets_408() {
        let (address, _stop) = start(ListenerLimits::default()).await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap();
        let said = read_to_close(&mut stream, PATIENCE).await.expect("closed");
        assert!(said.starts_with("HTTP/1.1 408"), "{said}");
    }

    #[tokio::test]
    async fn the_connection_cap_holds_and_frees_slots_as_connections_close() {
        let (address, stop) = start(ListenerLimits {
            connections_max: 2,
            ..ListenerLimits::default()
        })
        .await;
        let request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok";
        let mut first = TcpStream::connect(address).await.unwrap();
        let mut second = TcpStream::connect(address).await.unwrap();
        for stream in [&mut first, &mut second] {
            stream.write_all(request).await.unwrap();
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).await.unwrap();
            assert_eq!(&head, b"HTTP/1.1 200");
        }
        // The third connects (the backlog) but is not served while both slots are taken.
        let mut third = TcpStream::connect(address).await.unwrap();
        third.write_all(request).await.unwrap();
        let mut head = [0u8; 12];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), third.read_exact(&mut head))
                .await
                .is_err(),
            "served beyond the cap"
        );
        drop(first);
        tokio::time::timeout(PATIENCE, third.read_exact(&mut head))
            .await
            .expect("served once a slot is free")
            .unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        // Shutdown closes the idle keep-alive connections and ends the loop.
        stop.send(true).unwrap();
        assert!(read_to_close(&mut second, PATIENCE).await.is_some());
        assert!(read_to_close(&mut third, PATIENCE).await.is_some());
    }
}
