//! A bounded, byte-level line splitter for serial ports.
//!
//! `tokio_util::codec::LinesCodec::new()` buffers without bound, fails on
//! invalid UTF-8 and then ends the stream. This splitter works on bytes and
//! never fails:
//!
//! - CR, LF and CRLF all end a line. Empty lines are skipped entirely, which is
//!   also why a CRLF split across two chunks (or a CR LF pair in general)
//!   yields no extra empty line.
//! - A line longer than `max_line` bytes is dropped: its bytes are not kept,
//!   and when its terminator arrives it is reported once as
//!   [`Line::TooLong`] with its full length. Then splitting resumes with the
//!   next line. The buffer never holds more than `max_line` bytes.
//! - Bytes are passed through untouched (NUL, invalid UTF-8): the parser
//!   decides what is bad input.
//! - [`LineSplitter::reset`] discards a partial line; call it when the port
//!   is reopened (a board that resets prints half a line).
//!
//! Pure: no I/O. The serial source reads chunks and pushes them here.

/// One event from the splitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A non-empty line of at most `max_line` bytes, without its terminator.
    Complete(&'a [u8]),
    /// A line of `len` bytes (without terminator) was longer than `max_line`
    /// and was dropped.
    TooLong { len: usize },
}

/// Splits a byte stream into lines of bounded length. See the module docs.
#[derive(Debug, Clone)]
pub struct LineSplitter {
    max_line: usize,
    /// The start of the current line while it fits in `max_line`.
    buf: Vec<u8>,
    /// `Some(len)` while dropping a line that outgrew `max_line`: its length so far.
    overlong: Option<usize>,
}

impl LineSplitter {
    /// A splitter for lines of at most `max_line` bytes (terminator excluded).
    /// With `max_line == 0` every non-empty line is [`Line::TooLong`].
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            max_line,
            // Allocated on demand, up to max_line: a large limit costs nothing
            // until long lines arrive.
            buf: Vec::new(),
            overlong: None,
        }
    }

    /// The configured maximum line length.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Feeds `chunk` and calls `on_line` for each line it completes, in order.
    ///
    /// Lines that lie wholly within `chunk` are passed without copying.
    pub fn push(&mut self, chunk: &[u8], mut on_line: impl FnMut(Line<'_>)) {
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.finish_line(&rest[..end], &mut on_line);
            rest = &rest[end + 1..];
        }
        self.extend(rest);
    }

    /// Bytes of the current unfinished line held in memory (at most `max_line`).
    /// Zero while an overlong line is being dropped.
    pub fn pending_len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the current unfinished line is already too long and being dropped.
    pub fn is_dropping(&self) -> bool {
        self.overlong.is_some()
    }

    /// Discards the current partial line (kept or being dropped) and returns
    /// its length so far, for a log line. Call it when the port is reopened.
    pub fn reset(&mut self) -> usize {
        let discarded = self.overlong.take().unwrap_or(self.buf.len());
        self.buf.clear();
        discarded
    }

    /// The terminator of the current line arrived; `tail` is its last bytes.
    fn finish_line(&mut self, tail: &[u8], on_line: &mut impl FnMut(Line<'_>)) {
        if let Some(len) = self.overlong.take() {
            on_line(Line::TooLong {
                len: len.saturating_add(tail.len()),
            });
            return;
        }
        let len = self.buf.len() + tail.len();
        if len > self.max_line {
            on_line(Line::TooLong { len });
        } else if self.buf.is_empty() {
            if !tail.is_empty() {
                on_line(Line::Complete(tail));
            }
        } else {
            self.reserve(len);
            self.buf.extend_from_slice(tail);
            on_line(Line::Complete(&self.buf));
        }
        self.buf.clear();
    }

    /// Keeps `bytes` (no terminator among them) as the start of the current line.
    fn extend(&mut self, bytes: &[u8]) {
        if let Some(len) = &mut self.overlong {
            *len = len.saturating_add(bytes.len());
            return;
        }
        let len = self.buf.len() + bytes.len();
        if len > self.max_line {
            self.overlong = Some(len);
            self.buf.clear();
        } else {
            self.reserve(len);
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Grows the buffer for a line of `len <= max_line` bytes, doubling as a
    /// `Vec` does but never past `max_line`.
    fn reserve(&mut self, len: usize) {
        let cap = self.buf.capacity();
        if len > cap {
            let target = len.max(cap * 2).min(self.max_line);
            self.buf.reserve_exact(target - self.buf.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the splitter yields, owned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Got {
        Line(Vec<u8>),
        TooLong(usize),
    }

    fn collect(splitter: &mut LineSplitter, chunk: &[u8], got: &mut Vec<Got>) {
        splitter.push(chunk, |line| {
            got.push(match line {
                Line::Complete(b) => Got::Line(b.to_vec()),
                Line::TooLong { len } => Got::TooLong(len),
            })
        });
    }

    fn split(max_line: usize, chunks: &[&[u8]]) -> (Vec<Got>, LineSplitter) {
        let mut s = LineSplitter::new(max_line);
        let mut got = Vec::new();
        for c in chunks {
            collect(&mut s, c, &mut got);
        }
        (got, s)
    }

    fn l(s: &str) -> Got {
        Got::Line(s.as_bytes().to_vec())
    }

    /// The one helper: feeding `chunks` with `max_line` yields `expected` and
    /// leaves `pending` bytes buffered.
    fn check(max_line: usize, chunks: &[&[u8]], expected: &[Got], pending: usize) {
        let (got, s) = split(max_line, chunks);
        assert_eq!(got, expected, "chunks {chunks:?}");
        assert_eq!(s.pending_len(), pending, "pending after {chunks:?}");
    }

    /// Obviously-correct model: split the whole input on CR/LF, drop empties.
    fn model(max_line: usize, input: &[u8]) -> (Vec<Got>, usize, bool) {
        let mut parts: Vec<&[u8]> = input.split(|&b| b == b'\n' || b == b'\r').collect();
        let last = parts.pop().unwrap_or_default();
        let lines = parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| {
                if p.len() > max_line {
                    Got::TooLong(p.len())
                } else {
                    Got::Line(p.to_vec())
                }
            })
            .collect();
        let dropping = last.len() > max_line;
        (lines, if dropping { 0 } else { last.len() }, dropping)
    }

    #[test]
    fn lf_cr_and_crlf_all_end_lines() {
        check(
            16,
            &[b"a\nb\rc\r\nd\n"],
            &[l("a"), l("b"), l("c"), l("d")],
            0,
        );
    }

    #[test]
    fn crlf_split_across_chunks_yields_no_empty_line() {
        check(16, &[b"one\r", b"\ntwo\r", b"\n"], &[l("one"), l("two")], 0);
    }

    #[test]
    fn empty_lines_are_skipped() {
        check(16, &[b"\n\r\n\r\ra\n\n\nb\r\n"], &[l("a"), l("b")], 0);
    }

    #[test]
    fn line_split_across_chunks_is_joined() {
        check(
            16,
            &[b"tempe", b"rature=2", b"1.5\r\nhum"],
            &[l("temperature=21.5")],
            3,
        );
    }

    #[test]
    fn line_of_exactly_max_line_bytes_is_complete() {
        check(4, &[b"abcd\n", b"ab", b"cd\n"], &[l("abcd"), l("abcd")], 0);
    }

    #[test]
    fn overlong_line_is_reported_once_with_its_length_and_then_resyncs() {
        check(4, &[b"abcdef\nok\n"], &[Got::TooLong(6), l("ok")], 0);
        check(
            4,
            &[b"abc", b"def", b"ghij", b"k\r\n", b"ok\n"],
            &[Got::TooLong(11), l("ok")],
            0,
        );
    }

    #[test]
    fn overlong_line_without_end_is_not_buffered() {
        let (got, s) = split(4, &[b"abcdefgh", b"ijkl"]);
        assert!(got.is_empty());
        assert_eq!(s.pending_len(), 0);
        assert!(s.is_dropping());
    }

    #[test]
    fn nul_and_invalid_utf8_pass_through_as_bytes() {
        check(
            16,
            &[b"a\0b\xff\xfe\n"],
            &[Got::Line(b"a\0b\xff\xfe".to_vec())],
            0,
        );
    }

    #[test]
    fn reset_discards_a_partial_line_and_reports_its_length() {
        let (mut got, mut s) = split(16, &[b"ok\nhalf a li"]);
        assert_eq!(s.reset(), 9);
        assert_eq!(s.pending_len(), 0);
        collect(&mut s, b"ne\nnew\n", &mut got);
        assert_eq!(got, [l("ok"), l("ne"), l("new")]);
    }

    #[test]
    fn reset_while_dropping_an_overlong_line_forgets_it() {
        let (mut got, mut s) = split(2, &[b"abcdef"]);
        assert_eq!(s.reset(), 6);
        assert!(!s.is_dropping());
        collect(&mut s, b"x\n", &mut got);
        assert_eq!(got, [l("x")]);
    }

    #[test]
    fn zero_max_line_reports_every_line_too_long() {
        check(0, &[b"a\n\nbc\r\n"], &[Got::TooLong(1), Got::TooLong(2)], 0);
    }

    proptest! {
        #[test]
        fn any_chunking_matches_the_whole_input_model(
            input in prop::collection::vec(
                prop_oneof![4 => Just(b'\n'), 4 => Just(b'\r'), 2 => Just(0u8), 10 => b'a'..=b'e', 1 => any::<u8>()],
                0..300,
            ),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            max_line in 0usize..24,
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([input.len()]) {
                chunks.push(&input[from..cut]);
                from = cut;
            }

            let mut s = LineSplitter::new(max_line);
            let mut got = Vec::new();
            for chunk in &chunks {
                collect(&mut s, chunk, &mut got);
                prop_assert!(s.pending_len() <= max_line);
                prop_assert!(s.buf.capacity() <= max_line);
            }
            let (whole, _) = split(max_line, &[&input]);
            let (expected, pending, dropping) = model(max_line, &input);
            prop_assert_eq!(&got, &whole);
            prop_assert_eq!(&got, &expected);
            prop_assert_eq!(s.pending_len(), pending);
            prop_assert_eq!(s.is_dropping(), dropping);
            for g in &got {
                if let Got::Line(b) = g {
                    prop_assert!(!b.is_empty() && b.len() <= max_line);
                    prop_assert!(!b.contains(&b'\n') && !b.contains(&b'\r'));
                }
            }
        }
    }
}
