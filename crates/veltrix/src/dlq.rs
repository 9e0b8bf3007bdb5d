//! Admin API clients: `veltrix dlq list|replay|purge PIPELINE` (a running engine's dead-letter
//! queues) and `veltrix reload`.

use std::path::Path;

use serde_json::{Value, json};

use crate::cli::exit;

/// Where the admin API is and how to authenticate.
pub(crate) struct Api {
    base: String,
    token: Option<String>,
}

impl Api {
    /// `--api URL`, else the `[api]` address of `-c FILE`, else the default address. The token
    /// comes from `--token`/`VELTRIX_API_TOKEN`, else from the config.
    pub(crate) fn resolve(
        api: Option<&str>,
        config: Option<&Path>,
        token: Option<String>,
    ) -> Result<Api, u8> {
        let loaded = match config {
            Some(path) => match crate::load_config(path) {
                Ok(loaded) => Some(loaded.config),
                Err(diagnostics) => {
                    for d in &diagnostics {
                        eprintln!("{d}");
                    }
                    return Err(exit::CONFIG);
                }
            },
            None => None,
        };
        let base = match (api, &loaded) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(config)) => format!("http://{}", config.api.address),
            (None, None) => "http://127.0.0.1:8081".to_owned(),
        };
        let token = token.or_else(|| loaded.and_then(|c| c.api.token));
        Ok(Api { base, token })
    }

    /// The admin API's base URL, without a trailing slash (`veltrix top`).
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The bearer token, when one is configured (`veltrix top`).
    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = reqwest::Client::new().request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

/// Sends one admin request and returns the JSON answer, or prints the problem and returns the
/// exit code.
fn call(request: reqwest::RequestBuilder, base: &str) -> Result<Value, u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("veltrix: {e}");
            exit::FAILURE
        })?;
    runtime.block_on(async {
        let response = request.send().await.map_err(|e| {
            eprintln!("veltrix: cannot reach the admin API at {base}: {e} (is `veltrix run` running? use --api)");
            exit::UNAVAILABLE
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(value)
        } else {
            eprintln!("veltrix: the admin API answered {status}");
            eprintln!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
            Err(exit::FAILURE)
        }
    })
}

pub(crate) fn list(api: &Api, pipeline: &str, limit: usize, as_json: bool) -> u8 {
    let request = api.request(
        reqwest::Method::GET,
        &format!("/api/v1/dlq/{pipeline}?limit={limit}"),
    );
    match call(request, &api.base) {
        Ok(value) if as_json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            exit::OK
        }
        Ok(value) => {
            let entries = value["entries"].as_array().cloned().unwrap_or_default();
            println!(
                "{} dead-lettered event(s) in pipeline `{pipeline}`{}",
                entries.len(),
                if entries.len() == limit {
                    " (limit reached; use --limit)"
                } else {
                    ""
                }
            );
            for e in &entries {
                println!(
                    "  {}  type={}  reason={}  attempts={}  last_attempt={}  last_error={}",
                    e["id"].as_str().unwrap_or("?"),
                    e["event"]["type"].as_str().unwrap_or("?"),
                    e["reason"].as_str().unwrap_or("?"),
                    e["attempts"],
                    e["last_attempt_at"].as_str().unwrap_or("?"),
                    e["last_error"].as_str().unwrap_or("")
                );
            }
            exit::OK
        }
        Err(code) => code,
    }
}

/// Replays (or, with `purge`, discards) the entries with `ids`, or all of them.
pub(crate) fn take(api: &Api, pipeline: &str, ids: &[String], all: bool, purge: bool) -> u8 {
    if all != ids.is_empty() {
        eprintln!("veltrix: give either --id ID (one or more) or --all");
        return 2;
    }
    let body = if all {
        json!({"all": true})
    } else {
        json!({"ids": ids})
    };
    let verb = if purge { "purge" } else { "replay" };
    let request = api
        .request(
            reqwest::Method::POST,
            &format!("/api/v1/dlq/{pipeline}/{verb}"),
        )
        .header("content-type", "application/json")
        .body(body.to_string());
    match call(request, &api.base) {
        Ok(value) => {
            if purge {
                println!(
                    "purged {} entr(ies); {} remain",
                    value["purged"], value["remaining"]
                );
            } else {
                println!(
                    "replayed {} event(s) into their queues; {} entr(ies) remain",
                    value["replayed"], value["remaining"]
                );
            }
            exit::OK
        }
        Err(code) => code,
    }
}

/// `veltrix reload`: asks the engine to re-read and apply its config file.
pub(crate) fn reload(api: &Api, force: bool) -> u8 {
    let path = if force {
        "/api/v1/reload?force=true"
    } else {
        "/api/v1/reload"
    };
    match call(api.request(reqwest::Method::POST, path), &api.base) {
        Ok(value) => {
            if value["changed"] == json!(true) {
                println!(
                    "reloaded: {}",
                    serde_json::to_string_pretty(&value["changes"]).unwrap_or_default()
                );
            } else {
                println!("reloaded: no changes");
            }
            exit::OK
        }
        Err(code) => code,
    }
}
