//! Bearer tokens, compared in constant time.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;

/// `401` with `WWW-Authenticate: Bearer` and a problem body.
pub(crate) fn unauthorized(detail: &str) -> Response {
    let mut response = Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        detail,
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Constant-time equality: the time taken does not depend on where the strings differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff));
    }
    diff == 0
}

/// Whether the request's `Authorization: Bearer …` matches one of `tokens` (each compared in
/// constant time, all of them always).
pub(crate) fn bearer_matches(headers: &HeaderMap, tokens: &[String]) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    tokens.iter().fold(false, |ok, token| {
        ok | same(given.as_bytes(), token.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_is_exact() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
        assert!(same(b"", b""));
    }

    #[test]
    fn any_configured_token_opens() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer two".parse().unwrap());
        assert!(bearer_matches(&headers, &["one".into(), "two".into()]));
        assert!(!bearer_matches(&headers, &["one".into()]));
        assert!(!bearer_matches(&HeaderMap::new(), &["one".into()]));
    }
}
