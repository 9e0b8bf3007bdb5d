//! The member index of a stored event: where each top-level member of its compact JSON object
//! is, written by the canonical writer as it writes the object
//! ([`crate::event::EventRef::to_json_indexed`]) and read by the lazy reader
//! ([`crate::expr::StoredEvent::read_indexed`]) instead of scanning the text for them.
//!
//! Layout: one entry per member, in the object's order: the name's length in bytes (one byte)
//! and then the value's length in bytes (LEB128, at most five bytes). The object is compact
//! (`{"name":value,"name":value}`), so the lengths place every name and value: the first name
//! starts at byte 2, a value at its name's end plus 2, and the next name at the value's end
//! plus 2.
//!
//! Limits: names of at most 255 bytes, values of at most `u32::MAX` bytes, and an index of at
//! most [`MAX_BYTES`] (the record prefix has 11 bits for its length); an object beyond them is
//! stored without an index.
//!
//! Trust: an index is only ever written next to the text it describes, in a checksummed log
//! record, so a reader trusts its value extents (checking them would be the scan it saves). It
//! checks everything else it relies on against the text: every name's quotes and colon, that
//! names are plain ASCII and unique, a comma or the closing brace after every value, and that
//! the index ends with the object. An index that fails a check is ignored (the reader scans);
//! none can make the reader panic or read outside the text.

/// The longest index a record can carry.
pub const MAX_BYTES: usize = 2047;

/// Builds an index, member by member. Once a member cannot be described the index is dropped
/// ([`Builder::finish`] returns `None`).
#[derive(Debug)]
pub struct Builder<'a> {
    index: &'a mut Vec<u8>,
    ok: bool,
}

impl<'a> Builder<'a> {
    /// A builder writing into `index` (cleared first).
    pub fn new(index: &'a mut Vec<u8>) -> Builder<'a> {
        index.clear();
        Builder { index, ok: true }
    }

    /// Records the next member: its name's and its value's length in bytes.
    pub fn member(&mut self, name_len: usize, value_len: usize) {
        // Most values are shorter than 128 bytes: one length byte, one push.
        if let (Ok(name_len), Ok(short @ 0..0x80)) =
            (u8::try_from(name_len), u8::try_from(value_len))
        {
            self.index.extend_from_slice(&[name_len, short]);
            return;
        }
        let (Ok(name_len), Ok(mut value_len)) = (u8::try_from(name_len), u32::try_from(value_len))
        else {
            self.ok = false;
            return;
        };
        self.index.push(name_len);
        while value_len >= 0x80 {
            self.index.push((value_len as u8) | 0x80);
            value_len >>= 7;
        }
        self.index.push(value_len as u8);
    }

    /// The index, if every member could be described and it fits a record.
    pub fn finish(self) -> Option<&'a [u8]> {
        (self.ok && self.index.len() <= MAX_BYTES).then_some(&self.index[..])
    }
}

/// An index that does not decode: a truncated or overlong length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// The entries of an index: `(name length, value length)` per member, then one [`Malformed`]
/// and nothing more if the index is malformed.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    index: &'a [u8],
}

impl<'a> Entries<'a> {
    pub fn new(index: &'a [u8]) -> Entries<'a> {
        Entries { index }
    }
}

impl Iterator for Entries<'_> {
    type Item = Result<(usize, usize), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&name_len, mut rest) = self.index.split_first()?;
        let mut value_len = 0u64;
        let mut shift = 0;
        loop {
            let Some((&byte, after)) = rest.split_first() else {
                self.index = &[];
                return Some(Err(Malformed));
            };
            rest = after;
            value_len |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                self.index = &[];
                return Some(Err(Malformed));
            }
        }
        self.index = rest;
        match u32::try_from(value_len) {
            Ok(value_len) => Some(Ok((usize::from(name_len), value_len as usize))),
            Err(_) => {
                self.index = &[];
                Some(Err(Malformed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn an_unrepresentable_member_drops_the_index() {
        let mut buf = Vec::new();
        let mut index = Builder::new(&mut buf);
        index.member(2, 10);
        index.member(256, 1);
        assert_eq!(index.finish(), None);
        let mut index = Builder::new(&mut buf);
        for _ in 0..MAX_BYTES / 2 + 1 {
            index.member(1, 1);
        }
        assert_eq!(index.finish(), None, "longer than a record prefix can say");
    }

    #[test]
    fn truncated_and_overlong_lengths_are_malformed() {
        assert_eq!(Entries::new(&[3]).collect::<Vec<_>>(), [Err(Malformed)]);
        assert_eq!(
            Entries::new(&[3, 0x80]).collect::<Vec<_>>(),
            [Err(Malformed)]
        );
        let overlong = [1, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert_eq!(
            Entries::new(&overlong).collect::<Vec<_>>(),
            [Err(Malformed)]
        );
        let six_bytes = [1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
        assert_eq!(
            Entries::new(&six_bytes).collect::<Vec<_>>(),
            [Err(Malformed)]
        );
    }

    proptest! {
        #[test]
        fn entries_read_back_what_the_builder_wrote(
            members in prop::collection::vec((0usize..=255, 0usize..=u32::MAX as usize), 0..40)
        ) {
            let mut buf = Vec::new();
            let mut index = Builder::new(&mut buf);
            for &(name_len, value_len) in &members {
                index.member(name_len, value_len);
            }
            let index = index.finish().expect("40 members fit");
            let read: Result<Vec<_>, Malformed> = Entries::new(index).collect();
            prop_assert_eq!(read, Ok(members));
        }

        #[test]
        fn any_bytes_decode_to_at_most_one_entry_per_two_bytes_and_end_at_a_malformed_one(
            index in prop::collection::vec(any::<u8>(), 0..64)
        ) {
            let entries: Vec<_> = Entries::new(&index).collect();
            prop_assert!(entries.len() <= index.len().div_ceil(2));
            if let Some(at) = entries.iter().position(Result::is_err) {
                prop_assert_eq!(at, entries.len() - 1, "nothing follows a malformed entry");
            }
        }
    }
}
