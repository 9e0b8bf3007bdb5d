//! RFC 9457 problem details: every error answer of the HTTP edge is
//! `application/problem+json` with a `type`, `title`, `status` and `detail`, plus `errors` (one
//! entry per bad event, by index) where the request carried events.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// One problem of one event of a request.
#[derive(Debug, Clone)]
pub(crate) struct EventProblem {
    pub(crate) index: usize,
    pub(crate) message: String,
}

/// A problem-details answer.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    errors: Vec<EventProblem>,
    retry_after_s: Option<u32>,
}

impl Problem {
    pub(crate) fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            status,
            slug,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after_s: None,
        }
    }

    pub(crate) fn with_errors(mut self, errors: Vec<EventProblem>) -> Self {
        self.errors = errors;
        self
    }

    /// The problem's short name (metrics label).
    pub(crate) fn slug(&self) -> &'static str {
        self.slug
    }

    pub(crate) fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("https://veltrix.dev/problems/{}", self.slug),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if !self.errors.is_empty() {
            body["errors"] = self
                .errors
                .iter()
                .map(|e| json!({"index": e.index, "message": e.message}))
                .collect();
        }
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
