//! The lazy reader's member index (`veltrix_core::member_index`) over arbitrary bytes: the
//! input's first byte is the index's length `k`, the next `k` bytes the index, the rest the
//! record's JSON (see `seeds/member_index/`). Beyond "never panics" (reading with an index that
//! may not fit the text, then every attribute, the whole value and the written event): a record
//! that reads as an event, stored in canonical form with the index the canonical writer makes,
//! reads with that index exactly as it reads by scanning: the same value, the same bytes written
//! back; and only an event the index cannot describe (a name over 255 bytes) is stored without
//! one.
use veltrix_core::event::{Event, EventRef};
use veltrix_core::expr::{EventTarget, StoredEvent};
use veltrix_core::member_index;

const ATTRIBUTES: [&str; 7] = ["specversion", "id", "source", "type", "time", "data", "ext"];

/// One input: panics on any violated property.
pub fn check(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let (index, text) = rest.split_at(usize::from(k).min(rest.len()));
    if let Some(event) = StoredEvent::read_indexed(text, index) {
        exercise(&event);
    }
    let Ok(event) = Event::from_stored(text) else {
        return;
    };
    let (mut canonical, mut true_index) = (Vec::new(), Vec::new());
    let Some(true_index) = EventRef::from(&event).to_json_indexed(&mut canonical, &mut true_index)
    else {
        // Only what the index cannot describe leaves it out: a name longer than 255 bytes, or
        // so many members that their entries (at most six bytes each) might not fit.
        let extensions = event.extensions();
        assert!(
            extensions.iter().any(|(name, _)| name.len() > 255)
                || 6 * (extensions.len() + 9) > member_index::MAX_BYTES,
            "an event the index can describe was stored without one"
        );
        return;
    };
    // The input's index against the canonical text: another chance at one that does not fit.
    if let Some(event) = StoredEvent::read_indexed(&canonical, index) {
        exercise(&event);
    }
    let scanned = StoredEvent::read(&canonical);
    let placed = StoredEvent::read_indexed(&canonical, true_index);
    match (scanned, placed) {
        (None, None) => {}
        (Some(scanned), Some(placed)) => {
            assert_eq!(
                placed.to_value(),
                scanned.to_value(),
                "the index reads another value"
            );
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let written = (placed.to_json_bytes(&mut a), scanned.to_json_bytes(&mut b));
            assert_eq!(written.0.is_ok(), written.1.is_ok());
            assert_eq!(a, b, "the index writes other bytes");
        }
        (scanned, placed) => panic!(
            "the canonical record reads {} by scanning but {} with its index",
            if scanned.is_some() {
                "lazily"
            } else {
                "not lazily"
            },
            if placed.is_some() {
                "lazily"
            } else {
                "not lazily"
            },
        ),
    }
}

/// Every read a program could make of the top level, and the event written out.
fn exercise(event: &StoredEvent<'_>) {
    for name in ATTRIBUTES {
        let _ = event.attribute(name);
    }
    let _ = event.to_value();
    let _ = event.to_json_bytes(&mut Vec::new());
}
