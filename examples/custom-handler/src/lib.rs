//! Two custom handlers, registered under a `type` name so a config can use them like built-ins:
//!
//! - `redact` (a [`Processor`]): removes the listed keys from every event's `data`;
//! - `spool` (a [`Sink`]): writes each event to its own file, `<dir>/<id>.json`, durably (temp
//!   file, fsync, rename, fsync of the directory) before confirming. Redelivery rewrites the same
//!   file, so at-least-once delivery gives exactly one file per event.
//!
//! Options arrive as JSON (the table's keys but `type`); a factory that returns `Err` makes the
//! config invalid, reported by `validate` at the table with `file:line:col`.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use veltrix_engine::handler::{
    Batch, BoxFuture, Event, Plugins, ProcessError, Processor, Sink, SinkError,
};

/// The handler types this program adds.
pub fn plugins() -> Plugins {
    Plugins::new()
        .processor("redact", |options| {
            Ok(Arc::new(Redact::from_options(options)?))
        })
        .sink("spool", |options| {
            Ok(Arc::new(Spool::from_options(options)?))
        })
}

/// `{ type = "redact", fields = ["email", "card"] }`.
pub struct Redact {
    fields: Vec<String>,
}

impl Redact {
    pub fn from_options(options: &Value) -> Result<Redact, String> {
        let unknown: Vec<&String> = options
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .filter(|k| *k != "fields")
            .collect();
        if let Some(key) = unknown.first() {
            return Err(format!("unknown option `{key}` (redact takes `fields`)"));
        }
        let fields = options
            .get("fields")
            .and_then(Value::as_array)
            .ok_or("`fields` is required: the data keys to remove, e.g. fields = [\"email\"]")?;
        let fields = fields
            .iter()
            .map(|f| f.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .filter(|f| !f.is_empty())
            .ok_or("`fields` must be a non-empty array of strings")?;
        Ok(Redact { fields })
    }
}

impl Processor for Redact {
    fn process(&self, event: Event, out: &mut Vec<Event>) -> Result<(), ProcessError> {
        let Some(Value::Object(mut data)) = event.data_json() else {
            out.push(event); // nothing to redact in non-object data
            return Ok(());
        };
        let before = data.len();
        for field in &self.fields {
            data.remove(field);
        }
        if data.len() == before {
            out.push(event);
            return Ok(());
        }
        let mut json = event.to_json();
        json["data"] = Value::Object(data);
        out.push(Event::from_json(&json).map_err(|e| ProcessError::new(e.to_string()))?);
        Ok(())
    }
}

/// `{ type = "spool", dir = "./spool" }`.
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub fn from_options(options: &Value) -> Result<Spool, String> {
        let dir = options
            .get("dir")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .ok_or("`dir` is required: the directory that receives one file per event")?;
        Ok(Spool { dir: dir.into() })
    }

    async fn write_batch(&self, batch: &Batch) -> Result<(), SinkError> {
        let io = |what: &str, e: std::io::Error| {
            SinkError::retryable(format!("{what} in {}: {e}", self.dir.display()))
        };
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| io("creating the directory", e))?;
        for event in batch.events() {
            let event = event.map_err(|e| SinkError::permanent(e.to_string()))?;
            // Ids are free text: keep file names safe and unique per id.
            let name: String = event
                .id()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let path = self.dir.join(format!("{name}.json"));
            let temp = self.dir.join(format!(".{name}.json.tmp"));
            let mut bytes = Vec::new();
            event.to_json_bytes(&mut bytes);
            let file = tokio::fs::File::create(&temp)
                .await
                .map_err(|e| io("creating a file", e))?;
            use tokio::io::AsyncWriteExt;
            let mut file = file;
            file.write_all(&bytes).await.map_err(|e| io("writing", e))?;
            file.sync_data().await.map_err(|e| io("syncing", e))?;
            tokio::fs::rename(&temp, &path)
                .await
                .map_err(|e| io("renaming", e))?;
        }
        // The renames are durable once the directory is synced.
        let dir = tokio::fs::File::open(&self.dir)
            .await
            .map_err(|e| io("opening the directory", e))?;
        dir.sync_all()
            .await
            .map_err(|e| io("syncing the directory", e))
    }
}

impl Sink for Spool {
    fn write<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.write_batch(batch))
    }

    fn describe(&self) -> String {
        format!("spool {}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(data: Value) -> Event {
        Event::new("/test", "user.created", data).unwrap()
    }

    #[test]
    fn redact_removes_the_listed_fields_and_keeps_the_rest() {
        let redact = Redact::from_options(&json!({"fields": ["email", "card"]})).unwrap();
        let mut out = Vec::new();
        let input = event(json!({"name": "ann", "email": "a@x", "card": "4111"}));
        let id = input.id().to_owned();
        redact.process(input, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data_json().unwrap(), json!({"name": "ann"}));
        assert_eq!(out[0].id(), id, "the event keeps its identity");
    }

    #[test]
    fn redact_refuses_bad_options_with_the_reason() {
        for (options, needle) in [
            (json!({}), "`fields` is required"),
            (json!({"fields": []}), "non-empty array"),
            (json!({"fields": [1]}), "non-empty array of strings"),
            (
                json!({"fields": ["a"], "feilds": 1}),
                "unknown option `feilds`",
            ),
        ] {
            let error = Redact::from_options(&options).err().unwrap();
            assert!(error.contains(needle), "{options}: {error}");
        }
    }

    #[tokio::test]
    async fn spool_writes_one_file_per_event_and_redelivery_rewrites_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::from_options(&json!({"dir": dir.path()})).unwrap();
        let mut ndjson = Vec::new();
        for e in [event(json!({"n": 1})), event(json!({"n": 2}))] {
            e.to_json_bytes(&mut ndjson);
            ndjson.push(b'\n');
        }
        let batch = Batch::new(ndjson.into(), 2);
        spool.write(&batch).await.unwrap();
        spool.write(&batch).await.unwrap(); // a redelivery
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 2);
    }
}
