//! Record framing: `[crc32c u32][len u32][offset u64][payload; len]`, little-endian.
//!
//! The checksum covers `len ‖ payload ‖ offset` (in that order), so that an appender can checksum
//! its payload before the committer knows which offset the record will get: the committer only
//! folds the 8 offset bytes into the partial checksum ([`seal`]). A frame whose checksum, length
//! bound or offset does not hold is corrupt; a frame cut short by the end of the readable range is
//! incomplete (a torn tail when it sits at the end of a segment).

/// Bytes of framing in front of every payload.
pub const HEADER_BYTES: usize = 16;

/// Appends a frame for `payload` whose offset is not known yet. The checksum slot holds the
/// partial checksum over `len ‖ payload`; [`seal`] completes it.
pub(crate) fn encode_unsealed(out: &mut Vec<u8>, payload: &[u8]) {
    let len =
        u32::try_from(payload.len()).expect("payload length checked against record_bytes_max");
    let len_bytes = len.to_le_bytes();
    let partial = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload);
    out.extend_from_slice(&partial.to_le_bytes());
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(payload);
}

/// Writes `offset` into an unsealed frame at the start of `frame` and completes its checksum.
/// Returns the frame's total length.
pub(crate) fn seal(frame: &mut [u8], offset: u64) -> usize {
    let partial = u32::from_le_bytes(frame[0..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes")) as usize;
    let offset_bytes = offset.to_le_bytes();
    frame[8..16].copy_from_slice(&offset_bytes);
    let crc = crc32c::crc32c_append(partial, &offset_bytes);
    frame[0..4].copy_from_slice(&crc.to_le_bytes());
    HEADER_BYTES + len
}

/// Appends a complete frame (used by tests and tools that know the offset up front).
#[cfg(test)]
pub(crate) fn encode(out: &mut Vec<u8>, offset: u64, payload: &[u8]) {
    let start = out.len();
    encode_unsealed(out, payload);
    seal(&mut out[start..], offset);
}

/// What one position of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// A valid record; `frame_len` bytes long in total.
    Record {
        offset: u64,
        payload: &'a [u8],
        frame_len: usize,
    },
    /// The buffer ends before the frame does: more bytes are needed (or the tail is torn).
    Incomplete { frame_len: Option<usize> },
    /// The bytes here are not a valid frame.
    Corrupt,
}

/// Decodes the frame at the start of `buf`.
pub(crate) fn decode(buf: &[u8], record_bytes_max: u32) -> Decoded<'_> {
    if buf.len() < HEADER_BYTES {
        return Decoded::Incomplete { frame_len: None };
    }
    let stored_crc = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if len > record_bytes_max {
        return Decoded::Corrupt;
    }
    let frame_len = HEADER_BYTES + len as usize;
    if buf.len() < frame_len {
        return Decoded::Incomplete {
            frame_len: Some(frame_len),
        };
    }
    let payload = &buf[HEADER_BYTES..frame_len];
    let crc = crc32c::crc32c_append(
        crc32c::crc32c_append(crc32c::crc32c(&buf[4..8]), payload),
        &buf[8..16],
    );
    if crc != stored_crc {
        return Decoded::Corrupt;
    }
    let offset = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    Decoded::Record {
        offset,
        payload,
        frame_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answers() {
        // RFC 3720 (iSCSI) appendix B.4 test vectors and the classic check value.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c::crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c::crc32c(&ascending), 0x46DD_794E);
    }

    #[test]
    fn frame_round_trips_payload_and_offset() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, b"hello");
        assert_eq!(buf.len(), HEADER_BYTES + 5);
        assert_eq!(
            decode(&buf, 1024),
            Decoded::Record {
                offset: 42,
                payload: b"hello",
                frame_len: HEADER_BYTES + 5
            }
        );
    }

    #[test]
    fn empty_payload_is_a_valid_record() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, b"");
        assert!(matches!(
            decode(&buf, 1024),
            Decoded::Record { offset: 7, .. }
        ));
    }

    #[test]
    fn short_buffer_is_incomplete_not_corrupt() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, b"payload");
        for cut in 0..buf.len() {
            assert!(
                matches!(decode(&buf[..cut], 1024), Decoded::Incomplete { .. }),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut clean = Vec::new();
        encode(&mut clean, 99, b"a CloudEvent would go here");
        for bit in 0..clean.len() * 8 {
            let mut buf = clean.clone();
            buf[bit / 8] ^= 1 << (bit % 8);
            match decode(&buf, 1024) {
                Decoded::Record { .. } => panic!("flip of bit {bit} went undetected"),
                Decoded::Incomplete { .. } | Decoded::Corrupt => {}
            }
        }
    }

    #[test]
    fn length_above_the_record_bound_is_corrupt() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, &[0u8; 100]);
        assert_eq!(decode(&buf, 99), Decoded::Corrupt);
    }

    #[test]
    fn sealing_later_equals_encoding_with_the_offset() {
        let mut a = Vec::new();
        encode_unsealed(&mut a, b"xyz");
        seal(&mut a, 1234);
        let mut b = Vec::new();
        encode(&mut b, 1234, b"xyz");
        assert_eq!(a, b);
    }
}
