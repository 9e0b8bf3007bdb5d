//! HTTP ingest decoding: `veltrix_core::event::decode_body` over every content type and binary
//! mode. The input reads like an HTTP request without its request line: `name: value` header
//! lines, an empty line, then the body (see `seeds/decode_body/`). Beyond "never panics", every
//! accepted event must survive the stored form the pipeline reads back: `to_json_bytes` →
//! `Event::from_stored` gives the same bytes, `StoredEvent` reads them and writes an untouched
//! event back unchanged, and the borrowing decoder (`decode_body_ref`, what HTTP ingest uses)
//! stores the same bytes as the owning one.
use veltrix_core::event::{Event, decode_body, decode_body_ref};
use veltrix_core::expr::StoredEvent;

/// One input: panics on any violated property.
pub fn check(data: &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    // Header values that are not text never reach the decoder (the engine skips them too).
    let Ok(head) = std::str::from_utf8(head) else {
        return;
    };
    let headers: Vec<(&str, &str)> = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim(), value.trim()))
        .collect();
    let content_type = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map_or("", |(_, value)| *value);
    let Ok(events) = decode_body(content_type, &headers, body) else {
        assert!(
            decode_body_ref(content_type, &headers, body).is_err(),
            "the borrowing decoder accepts what the owning one refuses"
        );
        return;
    };
    let borrowed = decode_body_ref(content_type, &headers, body)
        .expect("the borrowing decoder refuses what the owning one accepts");
    assert_eq!(borrowed.len(), events.len());
    let mut stored = Vec::new();
    let mut again = Vec::new();
    for (event, borrowed) in events.iter().zip(&borrowed) {
        stored.clear();
        event.to_json_bytes(&mut stored);
        let back = Event::from_stored(&stored).unwrap_or_else(|e| {
            panic!("an accepted event's stored form does not read back: {e:?}")
        });
        again.clear();
        back.to_json_bytes(&mut again);
        assert_eq!(stored, again, "the stored form changes on a round trip");
        again.clear();
        borrowed.to_json_bytes(&mut again);
        // Generated ids differ between the two decodes; everything else must not.
        if event.id() == borrowed.id() {
            assert_eq!(stored, again, "the two decoders store different bytes");
        }
        let lazy = StoredEvent::read(&stored)
            .expect("the pipeline cannot read an accepted event's stored form");
        again.clear();
        lazy.to_json_bytes(&mut again)
            .expect("an untouched stored event is valid");
        assert_eq!(
            stored, again,
            "an untouched stored event is not written as stored"
        );
    }
}
