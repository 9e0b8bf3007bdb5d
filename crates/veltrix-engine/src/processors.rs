//! A pipeline's processor chain, run by each worker on every event of a batch.
//!
//! Events are stored in the queue as compact structured-mode CloudEvent JSON. With no
//! processors the stored bytes are delivered as they are (no decode at all); otherwise the stored
//! JSON is read once straight into a VRL value (`expr::stored_to_value`), run through every filter
//! and remap, validated as a CloudEvent and encoded back.

use std::sync::Arc;

use veltrix_core::config::ProcessorConfig;
use veltrix_core::event::Event;
use veltrix_core::expr::{self, Filter, Remap, Runtime, Value};

use crate::handler::{Plugins, Processor};

/// What became of one event.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Appended to the sink batch as this many lines (more than one when a processor split it).
    Emitted(usize),
    /// Dropped by a processor (configured: counted, not an error).
    Filtered,
    /// A processor failed on it; the message says which and why. Nothing was appended.
    Failed(String),
}

/// One compiled step.
enum Step {
    Filter(Filter),
    Remap(Remap),
    /// A registered custom processor, and its type name for messages.
    Custom(String, Arc<dyn Processor>),
}

/// The compiled processors of one pipeline.
pub(crate) struct Chain {
    steps: Vec<Step>,
}

impl Chain {
    /// Builds the steps; custom types come from `plugins` (`Err` names the failing type).
    pub(crate) fn new(processors: &[ProcessorConfig], plugins: &Plugins) -> Result<Chain, String> {
        let steps = processors
            .iter()
            .map(|p| {
                Ok(match p {
                    ProcessorConfig::Filter(f) => Step::Filter(f.clone()),
                    ProcessorConfig::Remap(r) => Step::Remap(r.clone()),
                    ProcessorConfig::Custom(c) => Step::Custom(
                        c.type_name.clone(),
                        plugins
                            .build_processor(&c.type_name, &c.options)
                            .map_err(|e| format!("processor `{}`: {e}", c.type_name))?,
                    ),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Chain { steps })
    }

    /// Runs the chain on one stored event and appends what comes out, one NDJSON line per event,
    /// to `out` (nothing when it is filtered or fails).
    pub(crate) fn apply(&self, stored: &[u8], runtime: &mut Runtime, out: &mut Vec<u8>) -> Outcome {
        if self.steps.is_empty() {
            out.extend_from_slice(stored);
            out.push(b'\n');
            return Outcome::Emitted(1);
        }
        // Straight from the stored JSON to a VRL value; a record that does not read that way
        // takes the validating path, which names the problem.
        let value = match expr::stored_to_value(stored) {
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
        let before = out.len();
        let mut emitted = 0;
        match self.run_from(0, value, runtime, out, &mut emitted) {
            Ok(()) if emitted == 0 => Outcome::Filtered,
            Ok(()) => Outcome::Emitted(emitted),
            Err(why) => {
                // A split event whose later part failed is dead-lettered whole.
                out.truncate(before);
                Outcome::Failed(why)
            }
        }
    }

    /// Runs steps `first..` on `value` and appends every resulting event.
    fn run_from(
        &self,
        first: usize,
        mut value: Value,
        runtime: &mut Runtime,
        out: &mut Vec<u8>,
        emitted: &mut usize,
    ) -> Result<(), String> {
        for (i, step) in self.steps.iter().enumerate().skip(first) {
            match step {
                Step::Filter(filter) => match filter.run(runtime, &mut value) {
                    Ok(true) => {}
                    Ok(false) => return Ok(()),
                    Err(e) => return Err(format!("processor {i} (filter): {e}")),
                },
                Step::Remap(remap) => {
                    remap
                        .run(runtime, &mut value)
                        .map_err(|e| format!("processor {i} (remap): {e}"))?;
                }
                Step::Custom(name, processor) => {
                    let event = expr::value_to_event(&value).map_err(|e| {
                        format!("processor {i} ({name}): the event is not a valid CloudEvent: {e}")
                    })?;
                    let mut next = Vec::with_capacity(1);
                    processor
                        .process(event, &mut next)
                        .map_err(|e| format!("processor {i} ({name}): {e}"))?;
                    for event in next {
                        let value = expr::event_to_value(&event)
                            .map_err(|e| format!("processor {i} ({name}): {e}"))?;
                        self.run_from(i + 1, value, runtime, out, emitted)?;
                    }
                    return Ok(());
                }
            }
        }
        let event = expr::value_to_event(&value)
            .map_err(|e| format!("the remapped event is no longer a valid CloudEvent: {e}"))?;
        event.to_json_bytes(out);
        out.push(b'\n');
        *emitted += 1;
        Ok(())
    }
}
