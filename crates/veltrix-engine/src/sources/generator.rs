//! `type = "generator"`: synthetic CloudEvents at a fixed rate, for demos, benchmarks and tests.
//!
//! Schedule: open loop at `rate` events/s, `batch_events` per store, the n-th batch due at
//! `n × batch_events / rate` after the start; a source that falls behind (a full queue pauses
//! it) catches up in whole batches without bursting past one batch per store. Each event:
//! `type` drawn round-robin from the weighted mix (deterministic), `id` `<source name>-<seq>`
//! (stable, so a restart's duplicates are recognisable), `data` = `{"seq", "key", "value",
//! "pad"}` where `key` cycles through `keys` values, `value` is `seq % 100` and `pad` fills
//! `data` to about `payload_bytes`. Events are written as NDJSON and decoded by the same
//! decoder as HTTP ingest, one pass per batch.

use std::time::Duration;

use tokio::time::Instant;
use veltrix_core::config::GeneratorSourceConfig;
use veltrix_core::event::{self, Event};

use super::SourceContext;
use crate::ingest::StoreError;

/// Runs until stopped, or until `count` events are stored.
pub(crate) async fn run(config: GeneratorSourceConfig, mut ctx: SourceContext) {
    let mut generator = Generator::new(&ctx.name, &config);
    let start = Instant::now();
    let per_batch = config.batch_events;
    let mut sent = 0u64;
    let mut batch = Vec::new();
    loop {
        let n = match config.count {
            Some(count) if sent >= count => {
                tracing::info!(source = %ctx.name, events = sent, "generator finished its count");
                return;
            }
            Some(count) => per_batch.min(count - sent),
            None => per_batch,
        };
        let due = start + Duration::from_secs_f64(sent as f64 / config.rate as f64);
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = ctx.stop.changed() => return,
        }
        let events = match generator.batch(n, &mut batch) {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(source = %ctx.name, error = %e, "generator built an invalid event; it stops");
                return;
            }
        };
        match ctx.store(&events).await {
            Ok(_) => sent += n,
            Err(StoreError::Closed) => return,
            Err(e) => {
                tracing::error!(source = %ctx.name, error = %e, "the generator's events were refused; it stops");
                return;
            }
        }
    }
}

/// Builds the events (pure: the same config gives the same events).
pub(crate) struct Generator {
    name: String,
    source: String,
    /// The type sequence of one weight cycle (each type repeated by its weight).
    cycle: Vec<String>,
    keys: u64,
    payload_bytes: usize,
    seq: u64,
}

impl Generator {
    pub(crate) fn new(name: &str, config: &GeneratorSourceConfig) -> Generator {
        let cycle = config
            .types
            .iter()
            .flat_map(|(ty, weight)| std::iter::repeat_n(ty.clone(), *weight as usize))
            .collect();
        Generator {
            name: name.to_owned(),
            source: config.source.clone(),
            cycle,
            keys: config.keys,
            payload_bytes: usize::try_from(config.payload_bytes).unwrap_or(usize::MAX),
            seq: 0,
        }
    }

    /// The next `n` events (`buf` is scratch space for their NDJSON).
    pub(crate) fn batch(&mut self, n: u64, buf: &mut Vec<u8>) -> Result<Vec<Event>, String> {
        use std::io::Write;
        buf.clear();
        for _ in 0..n {
            let seq = self.seq;
            self.seq += 1;
            let ty = &self.cycle[(seq % self.cycle.len() as u64) as usize];
            let key = seq % self.keys;
            let value = seq % 100;
            let head = format!("{{\"seq\":{seq},\"key\":\"k{key}\",\"value\":{value},\"pad\":\"");
            let pad = self.payload_bytes.saturating_sub(head.len() + 2);
            let mut line = serde_json::to_vec(&serde_json::json!({
                "specversion": "1.0",
                "id": format!("{}-{seq}", self.name),
                "source": self.source,
                "type": ty,
                "datacontenttype": "application/json",
            }))
            .map_err(|e| e.to_string())?;
            line.pop(); // the closing brace: `data` goes last
            buf.extend_from_slice(&line);
            write!(buf, ",\"data\":{head}").map_err(|e| e.to_string())?;
            buf.resize(buf.len() + pad, b'x');
            buf.extend_from_slice(b"\"}}\n");
        }
        let no_headers: &[(&str, &str)] = &[];
        event::decode_body("application/x-ndjson", no_headers, buf).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(types: &[(&str, u32)], payload_bytes: u64) -> GeneratorSourceConfig {
        GeneratorSourceConfig {
            rate: 1000,
            count: None,
            types: types.iter().map(|(t, w)| ((*t).to_owned(), *w)).collect(),
            payload_bytes,
            keys: 3,
            source: "/gen".to_owned(),
            batch_events: 10,
        }
    }

    #[test]
    fn the_type_mix_follows_the_weights_and_keys_cycle() {
        let mut g = Generator::new("g", &config(&[("a", 3), ("b", 1)], 50));
        let events = g.batch(8, &mut Vec::new()).unwrap();
        let types: Vec<&str> = events.iter().map(Event::ty).collect();
        assert_eq!(types, ["a", "a", "a", "b", "a", "a", "a", "b"]);
        let keys: Vec<String> = events
            .iter()
            .map(|e| e.data_json().unwrap()["key"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(keys, ["k0", "k1", "k2", "k0", "k1", "k2", "k0", "k1"]);
        assert_eq!(events[5].id(), "g-5");
        assert_eq!(events[0].source(), "/gen");
    }

    #[test]
    fn data_is_padded_to_about_payload_bytes() {
        for size in [0, 64, 250, 4096] {
            let mut g = Generator::new("g", &config(&[("a", 1)], size));
            let event = &g.batch(1, &mut Vec::new()).unwrap()[0];
            let data = serde_json::to_string(&event.data_json().unwrap()).unwrap();
            let floor = usize::try_from(size).unwrap();
            assert!(
                data.len() >= floor && data.len() <= floor.max(48) + 2,
                "{size}: data is {} bytes",
                data.len()
            );
        }
    }
}
