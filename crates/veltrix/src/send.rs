//! `veltrix send`: posts events to a running engine as one NDJSON request and prints what the
//! engine answered.

use std::io::BufRead;

use serde_json::{Map, Value, json};

use crate::cli::exit;

/// Builds the NDJSON body: each input is a whole CloudEvent, or with `ty` the `data` of a new one.
fn body(inputs: &[String], ty: Option<&str>, source: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for (i, text) in inputs.iter().enumerate() {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("input {i} is not JSON: {e}"))?;
        let event = match ty {
            Some(ty) => json!({
                "specversion": "1.0",
                "id": ulid::Ulid::generate().to_string(),
                "source": source,
                "type": ty,
                "datacontenttype": "application/json",
                "data": value,
            }),
            None => {
                let mut object: Map<String, Value> = match value {
                    Value::Object(o) => o,
                    _ => {
                        return Err(format!(
                            "input {i} is not a JSON object (a CloudEvent); use --type to send it as data"
                        ));
                    }
                };
                object.entry("specversion").or_insert_with(|| json!("1.0"));
                Value::Object(object)
            }
        };
        serde_json::to_writer(&mut out, &event).map_err(|e| e.to_string())?;
        out.push(b'\n');
    }
    Ok(out)
}

pub(crate) fn send(url: &str, ty: Option<&str>, source: &str, args: &[String]) -> u8 {
    let inputs: Vec<String> = if args.is_empty() {
        let mut lines = Vec::new();
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim().is_empty() => {}
                Ok(l) => lines.push(l),
                Err(e) => {
                    eprintln!("veltrix send: reading stdin: {e}");
                    return exit::FAILURE;
                }
            }
        }
        lines
    } else {
        args.to_vec()
    };
    if inputs.is_empty() {
        eprintln!("veltrix send: no events (give JSON arguments or NDJSON on stdin)");
        return exit::FAILURE;
    }
    let body = match body(&inputs, ty, source) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("veltrix send: {e}");
            return exit::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("veltrix send: {e}");
            return exit::FAILURE;
        }
    };
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                eprintln!("veltrix send: cannot reach {url}: {e} (is `veltrix run` running?)");
                return exit::UNAVAILABLE;
            }
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            let accepted = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["accepted"].as_u64())
                .unwrap_or(0);
            println!("accepted {accepted} event(s) ({status})");
            exit::OK
        } else {
            eprintln!("veltrix send: the engine refused the request: {status}");
            match serde_json::from_str::<Value>(&text) {
                Ok(problem) => {
                    eprintln!("{}", serde_json::to_string_pretty(&problem).unwrap_or(text))
                }
                Err(_) => eprintln!("{text}"),
            }
            exit::FAILURE
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_values_are_wrapped_into_events_with_type_source_and_an_id() {
        let out = body(
            &["{\"amount\":3}".to_owned()],
            Some("order.created"),
            "/shop",
        )
        .unwrap();
        let event: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(event["type"], "order.created");
        assert_eq!(event["source"], "/shop");
        assert_eq!(event["data"]["amount"], 3);
        assert_eq!(event["id"].as_str().unwrap().len(), 26, "a ULID");
    }

    #[test]
    fn whole_events_pass_through_with_specversion_filled_in() {
        let out = body(
            &[r#"{"id":"1","source":"/s","type":"t"}"#.to_owned()],
            None,
            "/x",
        )
        .unwrap();
        let event: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["id"], "1");
    }

    #[test]
    fn a_non_object_without_type_is_refused_with_its_index() {
        let err = body(&["{}".to_owned(), "3".to_owned()], None, "/x").unwrap_err();
        assert!(err.contains("input 1"), "{err}");
    }
}
