//! Line framing: a byte stream in, whole lines (or "too long") out. A pure
//! function of the bytes and one flag, so the server, the property tests and
//! the fuzz targets frame with the same code.

/// What framing found at the front of the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line without its LF (and without the CR before it).
    Line(&'a [u8]),
    /// A line passed the length limit; reply `TOOLONG` once for it.
    TooLong,
}

/// Splits a byte stream into lines, enforcing the line-length limit.
///
/// "Need more bytes" is the normal `None` result, not an error. Once an
/// unterminated line passes the limit the framer reports it once and then
/// swallows bytes up to the next LF, so memory stays bounded by the limit.
#[derive(Debug)]
pub struct LineFramer {
    /// Longest accepted line in bytes, LF included.
    max_line: usize,
    /// True while discarding the rest of an overlong line.
    discarding: bool,
}

impl LineFramer {
    /// A framer enforcing `max_line` (LF included).
    pub fn new(max_line: usize) -> Self {
        LineFramer {
            max_line: max_line.max(1),
            discarding: false,
        }
    }

    /// The line-length limit in force (LF included).
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Changes the limit for lines not yet framed (it grows at login).
    pub fn set_max_line(&mut self, max_line: usize) {
        self.max_line = max_line.max(1);
    }

    /// Looks at the front of `buf` and returns how many bytes it used and
    /// the frame found, if any. Call again with the rest until it returns
    /// `(0, None)`, which means "need more bytes".
    pub fn next_frame<'a>(&mut self, buf: &'a [u8]) -> (usize, Option<Frame<'a>>) {
        let newline = buf.iter().position(|&b| b == b'\n');
        if self.discarding {
            return match newline {
                Some(end) => {
                    self.discarding = false;
                    (end + 1, None)
                }
                None => (buf.len(), None),
            };
        }
        match newline {
            Some(end) if end < self.max_line => {
                let line = &buf[..end];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                (end + 1, Some(Frame::Line(line)))
            }
            Some(end) => (end + 1, Some(Frame::TooLong)),
            None if buf.len() >= self.max_line => {
                self.discarding = true;
                (buf.len(), Some(Frame::TooLong))
            }
            None => (0, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framer: &mut LineFramer, mut buf: &[u8]) -> Vec<Result<Vec<u8>, ()>> {
        let mut out = Vec::new();
        loop {
            let (used, frame) = framer.next_frame(buf);
            match frame {
                Some(Frame::Line(l)) => out.push(Ok(l.to_vec())),
                Some(Frame::TooLong) => out.push(Err(())),
                None if used == 0 => break,
                None => {}
            }
            buf = &buf[used..];
        }
        out
    }

    #[test]
    fn framing_splits_lines_and_drops_cr_before_lf() {
        let mut f = LineFramer::new(100);
        assert_eq!(
            frames(&mut f, b"ping\r\nwhoelse\n\npar"),
            vec![
                Ok(b"ping".to_vec()),
                Ok(b"whoelse".to_vec()),
                Ok(Vec::new())
            ]
        );
    }

    #[test]
    fn framing_waits_for_the_rest_of_a_split_line() {
        let mut f = LineFramer::new(100);
        assert_eq!(f.next_frame(b"pi"), (0, None));
        assert_eq!(f.next_frame(b"ping\r"), (0, None));
        assert_eq!(f.next_frame(b"ping\r\n"), (6, Some(Frame::Line(b"ping"))));
    }

    #[test]
    fn framing_keeps_a_lone_cr_inside_a_line() {
        let mut f = LineFramer::new(100);
        assert_eq!(f.next_frame(b"a\rb\n"), (4, Some(Frame::Line(b"a\rb"))));
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_byte_more_is_too_long() {
        let mut f = LineFramer::new(5);
        assert_eq!(f.next_frame(b"abcd\n"), (5, Some(Frame::Line(b"abcd"))));
        assert_eq!(f.next_frame(b"abcde\n"), (6, Some(Frame::TooLong)));
        assert_eq!(f.next_frame(b"ok\n"), (3, Some(Frame::Line(b"ok"))));
    }

    #[test]
    fn an_overlong_line_split_across_reads_is_reported_once_and_discarded() {
        let mut f = LineFramer::new(4);
        assert_eq!(f.next_frame(b"abcd"), (4, Some(Frame::TooLong)));
        assert_eq!(f.next_frame(b"efgh"), (4, None));
        assert_eq!(f.next_frame(b"ij\nok\n"), (3, None));
        assert_eq!(f.next_frame(b"ok\n"), (3, Some(Frame::Line(b"ok"))));
    }

    #[test]
    fn invalid_utf8_is_framed_as_bytes_for_the_caller_to_refuse() {
        let mut f = LineFramer::new(100);
        assert_eq!(
            f.next_frame(b"\xff\xfe\n"),
            (3, Some(Frame::Line(&b"\xff\xfe"[..])))
        );
    }
}
