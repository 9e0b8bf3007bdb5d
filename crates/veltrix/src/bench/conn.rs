//! One keep-alive HTTP/1.1 connection of the load generator, driven through hyper's client
//! connection API.
//!
//! Why not `reqwest::Client` (which `veltrix bench` used before): per request it parses the URL
//! (with IDNA processing of the host), checks a connection out of a shared pool and wraps the
//! exchange in several futures. On the single-event row that was about half of the generator's
//! CPU (`perf record -a` during `veltrix bench --connections 64 --content-type structured`), and
//! the generator shares the machine's two cores with the engine it measures. Here the target is
//! parsed once, each generator task owns its connection, and a request is one `send_request`.
//!
//! Limits: a request (send and the whole answer) times out after [`REQUEST_TIMEOUT`]; a connection
//! that failed is dropped and the next request opens a new one (after at most
//! [`CONNECT_TIMEOUT`]). Only `http://` URLs (the generator has no TLS, as before).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The longest a request may take, sending to the end of the answer.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest opening a connection may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and what every request goes to, parsed once.
#[derive(Debug)]
pub(super) struct Target {
    /// `host:port` to connect to.
    address: String,
    /// The request target in origin form (`/path?query`), as a client sends it to an origin
    /// server; the host goes in `Host`.
    uri: Uri,
    host: HeaderValue,
    content_type: HeaderValue,
    authorization: Option<HeaderValue>,
}

impl Target {
    /// `url` must be `http://host[:port]/path`; the error says what is wrong with it.
    pub(super) fn parse(
        url: &str,
        content_type: &'static str,
        token: Option<&str>,
    ) -> Result<Target, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("`{url}`: only http:// URLs can be benchmarked"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{url}` has no host"))?;
        let address = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let origin = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| format!("`{url}`: its path is not a request target: {e}"))?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("`{url}`: its host is not a header value: {e}"))?;
        let authorization = token
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()
            .map_err(|_| "the token cannot be sent in a header (it has control characters)")?;
        Ok(Target {
            address,
            uri: origin,
            host,
            content_type: HeaderValue::from_static(content_type),
            authorization,
        })
    }
}

/// Why a request got no status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    Connect,
    Timeout,
    Transport,
}

impl Failure {
    /// The key it is counted under in the report's `rejected` map.
    pub(super) fn key(self) -> &'static str {
        match self {
            Failure::Connect => "connect error",
            Failure::Timeout => "timeout",
            Failure::Transport => "transport error",
        }
    }
}

/// A generator task's connection: opened on first use, reopened after a failure.
pub(super) struct Conn {
    target: Arc<Target>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub(super) fn new(target: Arc<Target>) -> Conn {
        Conn {
            target,
            sender: None,
        }
    }

    /// POSTs `body` and reads the whole answer (so the connection can carry the next request).
    pub(super) async fn post(&mut self, body: &'static [u8]) -> Result<StatusCode, Failure> {
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(body)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout),
        };
        if result.is_err() {
            // Whatever state it is in (half-sent, half-read), it cannot carry another request.
            self.sender = None;
        }
        result
    }

    async fn exchange(&mut self, body: &'static [u8]) -> Result<StatusCode, Failure> {
        let sender = match &mut self.sender {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.sender.insert(connect(&self.target.address).await?),
        };
        sender.ready().await.map_err(|_| Failure::Transport)?;
        let target = &self.target;
        let mut request = Request::post(target.uri.clone())
            .header(HOST, target.host.clone())
            .header(CONTENT_TYPE, target.content_type.clone())
            .body(Full::new(Bytes::from_static(body)))
            .expect("a request of parsed parts is valid");
        if let Some(authorization) = &target.authorization {
            request
                .headers_mut()
                .insert(AUTHORIZATION, authorization.clone());
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| Failure::Transport)?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .map_err(|_| Failure::Transport)?;
        Ok(status)
    }
}

async fn connect(address: &str) -> Result<SendRequest<Full<Bytes>>, Failure> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(_)) => return Err(Failure::Connect),
        Err(_) => return Err(Failure::Timeout),
    };
    // Small requests go out at once (the engine answers each before the next is sent).
    stream.set_nodelay(true).map_err(|_| Failure::Connect)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Failure::Connect)?;
    // Drives the connection until the sender is dropped or the peer closes it.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_parsed_once_with_its_host_and_port() {
        let t = Target::parse(
            "http://127.0.0.1:8080/v1/events",
            "application/x-ndjson",
            None,
        )
        .unwrap();
        assert_eq!(t.address, "127.0.0.1:8080");
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.uri.path(), "/v1/events");
        assert_eq!(
            t.uri, "/v1/events",
            "origin form: no scheme or host in the request line"
        );
        assert!(t.authorization.is_none());
        let t = Target::parse("http://127.0.0.1:8080/in?x=1", "text/plain", None).unwrap();
        assert_eq!(t.uri, "/in?x=1");
        let t = Target::parse("http://127.0.0.1:8080", "text/plain", None).unwrap();
        assert_eq!(t.uri, "/");
        let t = Target::parse("http://localhost/v1/events", "text/plain", Some("s3cret")).unwrap();
        assert_eq!(t.address, "localhost:80");
        assert_eq!(t.authorization.unwrap(), "Bearer s3cret");
    }

    #[test]
    fn a_target_that_is_not_plain_http_is_refused_with_why() {
        let e = Target::parse("https://127.0.0.1/v1/events", "text/plain", None).unwrap_err();
        assert!(e.contains("only http://"), "{e}");
        let e = Target::parse("not a url", "text/plain", None).unwrap_err();
        assert!(e.contains("is not a URL"), "{e}");
    }
}
