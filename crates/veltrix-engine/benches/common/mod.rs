//! Shared fixtures of the engine benches: a ~250-byte CloudEvent, a 1,000-event NDJSON body, and
//! a config with three queues and a pipeline running the filter + remap of `examples/orders.toml`.

use veltrix_core::config::{self, Config};

pub const EVENTS_PER_REQUEST: usize = 1_000;

/// The filter of the benchmarked pipeline.
pub const FILTER: &str = r#".type != "debug.ping""#;
/// The remap of the benchmarked pipeline.
pub const REMAP: &str = ".data.total = (int(.data.amount) ?? 0) * (int(.data.qty) ?? 1)";

/// Event `i` as compact JSON, about 250 bytes; every 20th is a `debug.ping` (filtered out).
/// `amount` and `qty` are numbers, as in `examples/orders.toml` and `veltrix bench`'s events, so
/// the remap computes real totals (a string amount would make `int()` fail on every event).
pub fn event_json(i: usize) -> String {
    let ty = if i % 20 == 19 {
        "debug.ping"
    } else {
        "order.created"
    };
    let mut e = format!(
        r#"{{"specversion":"1.0","id":"{i:012}","source":"/shop/checkout","type":"{ty}","time":"2026-11-23T15:00:00.123456Z","subject":"order-{i}","data":{{"amount":{},"qty":{},"currency":"EUR","customer":"c-{:05}","note":""#,
        100 + i % 900,
        1 + i % 5,
        i % 10_000
    );
    while e.len() < 246 {
        e.push('x');
    }
    e.push_str(r#""}}"#);
    e
}

/// A request body of `n` events, one per line.
pub fn ndjson_body(n: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for i in 0..n {
        body.extend_from_slice(event_json(i).as_bytes());
        body.push(b'\n');
    }
    body
}

/// Three queues (payments, orders, a catch-all) and pipeline `p` with the filter and the remap.
pub fn config() -> Config {
    let src = format!(
        r#"
data_dir = "/unused"

[queues.payments]
types = ["payment.*"]
durability = "memory"

[queues.orders]
types = ["order.*"]
durability = "memory"

[queues.rest]
types = ["*"]
durability = "memory"

[pipelines.p]
from = ["payments", "orders", "rest"]
sink = "nothing"
processors = [
  {{ type = "filter", condition = '{FILTER}' }},
  {{ type = "remap", source = '{REMAP}' }},
]

[sinks.nothing]
type = "blackhole"
"#
    );
    match config::parse_str(&src, "bench.toml", 2) {
        Ok(loaded) => loaded.config,
        Err(diagnostics) => panic!("bench config is invalid: {diagnostics:?}"),
    }
}
