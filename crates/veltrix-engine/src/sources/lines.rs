//! Splitting a byte stream into lines with a bound on line length (pure; used by the file and
//! stdin sources).
//!
//! State: the number of the line in progress and whether it is being skipped. The caller feeds
//! bytes that follow what was consumed before; [`Splitter::split`] reports every line ended in
//! them and returns how many bytes it consumed. Bytes it did not consume are a line in progress
//! (at most `line_bytes_max` of them): the caller feeds them again with more bytes after them
//! (the file source re-reads them from the file, stdin keeps them). So the splitter itself holds
//! no bytes, and a caller holding the unconsumed rest holds at most one line.
//!
//! A line longer than `line_bytes_max` is reported once, as [`Line::TooLong`], as soon as it is
//! known to be too long (possibly before its newline arrives); its bytes are consumed and
//! dropped up to and including its newline.

/// One line ended (or found too long) in the fed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// A line within the bound, without its `\n`.
    Kept(&'a [u8]),
    /// A line over the bound: skipped.
    TooLong,
}

/// Where a line is in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct At {
    /// 1-based line number.
    pub(crate) line: u64,
    /// Index in the fed buffer where the line starts (for `TooLong` reported while skipping
    /// starts, where its first bytes were fed).
    pub(crate) start: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Splitter {
    line_bytes_max: usize,
    /// The number of the line in progress (1-based).
    pub(crate) line: u64,
    /// Inside a line found too long: drop bytes until its newline.
    pub(crate) skipping: bool,
}

impl Splitter {
    /// A splitter at the start of a stream.
    pub(crate) fn new(line_bytes_max: usize) -> Splitter {
        Splitter::resume(line_bytes_max, 1, false)
    }

    /// A splitter resuming at line `line` (skipping it when it was found too long).
    pub(crate) fn resume(line_bytes_max: usize, line: u64, skipping: bool) -> Splitter {
        Splitter {
            line_bytes_max: line_bytes_max.max(1),
            line: line.max(1),
            skipping,
        }
    }

    /// Reports the lines ended in `buf` to `out`, in order, until `out` returns `false` (the
    /// caller's batch is full). Returns how many bytes of `buf` are consumed: the reported lines
    /// with their newlines, and the dropped bytes of a line too long.
    pub(crate) fn split(&mut self, buf: &[u8], mut out: impl FnMut(At, Line<'_>) -> bool) -> usize {
        let mut start = 0;
        loop {
            match buf[start..].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let end = start + i;
                    let at = At {
                        line: self.line,
                        start,
                    };
                    let piece = if self.skipping {
                        // Reported when skipping started: this is only its end.
                        self.skipping = false;
                        None
                    } else if end - start > self.line_bytes_max {
                        Some(Line::TooLong)
                    } else {
                        Some(Line::Kept(&buf[start..end]))
                    };
                    self.line += 1;
                    start = end + 1;
                    if let Some(piece) = piece
                        && !out(at, piece)
                    {
                        return start;
                    }
                }
                None => {
                    if self.skipping {
                        return buf.len();
                    }
                    if buf.len() - start > self.line_bytes_max {
                        self.skipping = true;
                        out(
                            At {
                                line: self.line,
                                start,
                            },
                            Line::TooLong,
                        );
                        return buf.len();
                    }
                    return start;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one after the other the way the sources do (unconsumed bytes are fed
    /// again in front of the next chunk); returns what was reported and what is left over.
    fn feed(max: usize, chunks: &[&str]) -> (Vec<(u64, String)>, String, Splitter) {
        let mut s = Splitter::new(max);
        let mut pending = Vec::new();
        let mut seen = Vec::new();
        for chunk in chunks {
            pending.extend_from_slice(chunk.as_bytes());
            let consumed = s.split(&pending, |at, line| {
                seen.push(match line {
                    Line::Kept(l) => (at.line, String::from_utf8(l.to_vec()).unwrap()),
                    Line::TooLong => (at.line, "<too long>".to_owned()),
                });
                true
            });
            pending.drain(..consumed);
        }
        (seen, String::from_utf8(pending).unwrap(), s)
    }

    #[test]
    fn complete_lines_are_reported_and_a_partial_last_line_waits_for_its_newline() {
        let (seen, rest, s) = feed(100, &["a\nbb\nc", "cc", "\n\nd"]);
        assert_eq!(
            seen,
            [
                (1, "a".to_owned()),
                (2, "bb".to_owned()),
                (3, "ccc".to_owned()),
                (4, String::new())
            ]
        );
        assert_eq!(rest, "d");
        assert_eq!((s.line, s.skipping), (5, false));
    }

    #[test]
    fn a_line_at_the_bound_is_kept_and_one_byte_more_is_skipped_and_counted_once() {
        let (seen, rest, _) = feed(3, &["abc\nabcd\nok\n"]);
        assert_eq!(
            seen,
            [
                (1, "abc".to_owned()),
                (2, "<too long>".to_owned()),
                (3, "ok".to_owned())
            ]
        );
        assert_eq!(rest, "");
    }

    #[test]
    fn an_overlong_line_is_dropped_as_it_arrives_without_waiting_for_its_newline() {
        // The caller never holds more than the bound of an overlong line: it is reported as
        // soon as it passes the bound, and its later bytes are consumed as they come.
        let (seen, rest, s) = feed(4, &["ok\n12345", "6789", "0123"]);
        assert_eq!(seen, [(1, "ok".to_owned()), (2, "<too long>".to_owned())]);
        assert_eq!(rest, "");
        assert!(s.skipping);
        let (seen, rest, s) = feed(4, &["ok\n12345", "6789", "01\nnext\nx"]);
        assert_eq!(
            seen,
            [
                (1, "ok".to_owned()),
                (2, "<too long>".to_owned()),
                (3, "next".to_owned())
            ]
        );
        assert_eq!(rest, "x");
        assert!(!s.skipping);
    }

    #[test]
    fn splitting_stops_when_the_batch_is_full_and_resumes_where_it_stopped() {
        let mut s = Splitter::new(100);
        let buf = b"a\nb\nc\n";
        let mut seen = Vec::new();
        let consumed = s.split(buf, |_, line| {
            seen.push(line == Line::Kept(b"a"));
            false
        });
        assert_eq!((consumed, seen), (2, vec![true]));
        let consumed2 = s.split(&buf[consumed..], |at, _| at.line < 3);
        assert_eq!(consumed2, 4, "b, then c which makes the batch full");
        assert_eq!(s.line, 4);
    }

    #[test]
    fn a_resumed_splitter_continues_numbering_and_skipping() {
        let mut s = Splitter::resume(10, 7, true);
        let mut seen = Vec::new();
        let consumed = s.split(b"rest of a long line\nnext\n", |at, line| {
            seen.push((at.line, line == Line::Kept(b"next")));
            true
        });
        assert_eq!(consumed, 25);
        assert_eq!(seen, [(8, true)]);
    }

    #[test]
    fn line_starts_point_into_the_fed_buffer() {
        let mut s = Splitter::new(100);
        let mut starts = Vec::new();
        s.split(b"ab\ncde\nf\n", |at, _| {
            starts.push(at.start);
            true
        });
        assert_eq!(starts, [0, 3, 7]);
    }
}
