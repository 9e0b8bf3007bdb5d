//! A pipeline's processor chain, run by each worker on every event of a batch.
//!
//! Events are stored in the queue as compact structured-mode CloudEvent JSON. With no
//! processors the stored bytes are delivered as they are (no decode at all); otherwise the stored
//! JSON is read once straight into a VRL value (`expr::stored_to_value`), run through every filter
//! and remap, validated as a CloudEvent and encoded back.

use veltrix_core::config::ProcessorConfig;
use veltrix_core::event::Event;
use veltrix_core::expr::{self, Runtime};

/// What became of one event.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Appended to the sink batch.
    Emitted,
    /// A filter dropped it (configured: counted, not an error).
    Filtered,
    /// A processor failed on it; the message says which and why.
    Failed(String),
}

/// The compiled processors of one pipeline.
pub(crate) struct Chain {
    processors: Vec<ProcessorConfig>,
}

impl Chain {
    pub(crate) fn new(processors: Vec<ProcessorConfig>) -> Chain {
        Chain { processors }
    }

    /// Runs the chain on one stored event and, unless it is filtered or fails, appends the result
    /// as one NDJSON line to `out`.
    pub(crate) fn apply(&self, stored: &[u8], runtime: &mut Runtime, out: &mut Vec<u8>) -> Outcome {
        if self.processors.is_empty() {
            out.extend_from_slice(stored);
            out.push(b'\n');
            return Outcome::Emitted;
        }
        // Straight from the stored JSON to a VRL value; a record that does not read that way
        // takes the validating path, which names the problem.
        let mut value = match expr::stored_to_value(stored) {
            Some(v) => v,
            None => {
                let event = match Event::from_stored(stored) {
                    Ok(e) => e,
                    Err(e) => return Outcome::Failed(format!("stored event is unreadable: {e}")),
                };
                match expr::event_to_value(&event) {
                    Ok(v) => v,
                    Err(e) => return Outcome::Failed(e.to_string()),
                }
            }
        };
        for (i, p) in self.processors.iter().enumerate() {
            match p {
                ProcessorConfig::Filter(filter) => match filter.run(runtime, &mut value) {
                    Ok(true) => {}
                    Ok(false) => return Outcome::Filtered,
                    Err(e) => return Outcome::Failed(format!("processor {i} (filter): {e}")),
                },
                ProcessorConfig::Remap(remap) => {
                    if let Err(e) = remap.run(runtime, &mut value) {
                        return Outcome::Failed(format!("processor {i} (remap): {e}"));
                    }
                }
            }
        }
        match expr::value_to_event(&value) {
            Ok(event) => {
                event.to_json_bytes(out);
                out.push(b'\n');
                Outcome::Emitted
            }
            Err(e) => Outcome::Failed(format!(
                "the remapped event is no longer a valid CloudEvent: {e}"
            )),
        }
    }
}
