//! The live dashboard: `GET /` on the admin address serves one self-contained page (inline CSS
//! and JavaScript, embedded in the binary, nothing fetched from elsewhere) that polls
//! `GET /api/v1/stats` once a second and draws the topology with live rates, queue depths,
//! latencies and the bottleneck. The page source is `dashboard/index.html`.
//!
//! The page holds no data itself, so it is served without the admin token; the stats it polls
//! are guarded like every `/api/*` route, and the page asks for the token on a `401`.
//!
//! Security: a strict Content-Security-Policy. Nothing loads from another origin, the page may
//! only talk to its own origin, and only the page's own `<script>` and `<style>` run: each
//! response carries a fresh random nonce, written into those two tags and named in the policy
//! (no `'unsafe-inline'`, so an injected script or inline handler would not run).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("dashboard/index.html");

/// Where the page wants the per-response nonce.
const NONCE_SLOT: &str = "{{nonce}}";

/// `GET /`: the dashboard page.
pub(crate) async fn index() -> Response {
    let nonce = format!("{:032x}", rand::random::<u128>());
    let csp = policy(&nonce);
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_str(&csp).expect("the policy is ASCII"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    (headers, PAGE.replace(NONCE_SLOT, &nonce)).into_response()
}

/// The Content-Security-Policy for one response: same-origin requests only, inline code only
/// with this response's nonce.
fn policy(nonce: &str) -> String {
    format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    async fn fetch() -> (StatusCode, axum::http::HeaderMap, String) {
        let response = index().await;
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn serves_the_page_as_html_with_a_strict_policy_and_matching_nonces() {
        let (status, headers, body) = fetch().await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        let nonce = csp
            .split("'nonce-")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap();
        assert_eq!(nonce.len(), 32);
        // Both inline blocks carry this response's nonce; no slot is left unfilled.
        assert!(body.contains(&format!("<script nonce=\"{nonce}\">")));
        assert!(body.contains(&format!("<style nonce=\"{nonce}\">")));
        assert!(!body.contains(NONCE_SLOT));
        assert_eq!(body.matches("<script").count(), 1);
        assert_eq!(body.matches("<style").count(), 1);
        assert!(body.contains("/api/v1/stats"));
    }

    #[tokio::test]
    async fn every_response_gets_a_new_nonce() {
        let (_, a, _) = fetch().await;
        let (_, b, _) = fetch().await;
        assert_ne!(
            a[header::CONTENT_SECURITY_POLICY],
            b[header::CONTENT_SECURITY_POLICY]
        );
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // No external scripts, styles, fonts or images: everything is inline (or a data: URI).
        for needle in [
            "src=\"http",
            "href=\"http",
            "src=\"//",
            "href=\"//",
            "@import",
            "url(",
        ] {
            assert!(!PAGE.contains(needle), "the page references {needle}");
        }
        // No inline event handler attributes: the policy would block them.
        for handler in [" onclick=", " onload=", " onsubmit=", " onerror="] {
            assert!(!PAGE.contains(handler), "inline handler {handler}");
        }
    }
}
