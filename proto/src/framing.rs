//! Line framing: a byte stream in, whole lines (or "too long") out, with
//! telnet's commands (RFC 854) taken out. A pure function of the bytes and a
//! little state, so the server, the property tests and the fuzz targets
//! frame with the same code.
//!
//! Telnet: a byte 255 (IAC) starts a command. The protocol's text is UTF-8,
//! where 255 never occurs, so every IAC is telnet's and none of it reaches a
//! line: option negotiation (`IAC WILL|WONT|DO|DONT <option>`) and
//! subnegotiation (`IAC SB ... IAC SE`) are removed; `IAC IP` (interrupt,
//! what telnet sends for Ctrl-C) and `IAC EL` (erase line) discard the line
//! typed so far; every other two-byte command, and `IAC IAC` (an escaped
//! byte 255, which UTF-8 text cannot hold), is dropped, and so is an IAC
//! before a byte that is no command (below 240). Options are refused
//! (`DO x` gets `WONT x`, `WILL x` gets `DONT x`, once each); `DO
//! TIMING-MARK` gets `WILL TIMING-MARK` every time, because telnet hides all
//! output after a Ctrl-C until that answer comes. The answers are collected
//! for the caller to send ([`LineFramer::take_replies`]). Nothing the server
//! sends can be taken for IAC: it only sends UTF-8.

use std::borrow::Cow;

/// Telnet's "interpret as command" byte.
const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
/// Subnegotiation begins.
const SB: u8 = 250;
/// Erase line.
const EL: u8 = 248;
/// Interrupt process (Ctrl-C).
const IP: u8 = 244;
/// Subnegotiation ends.
const SE: u8 = 240;
/// The TIMING-MARK option (RFC 860).
const TIMING_MARK: u8 = 6;

/// What framing found at the front of the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line without its LF (and without the CR before it), telnet
    /// commands removed. Borrowed from the input unless it held any.
    Line(Cow<'a, [u8]>),
    /// A line passed the length limit; reply `TOOLONG` once for it.
    TooLong,
}

/// Where a telnet command stands in the bytes scanned so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Telnet {
    /// Plain data.
    Data,
    /// After IAC.
    Iac,
    /// After `IAC WILL|WONT|DO|DONT`: the option byte comes next.
    Option(u8),
    /// Inside `IAC SB ...`.
    Sub,
    /// After an IAC inside a subnegotiation.
    SubIac,
}

/// One bit per (DO or WILL, option).
type Refused = [u64; 8];

/// Splits a byte stream into lines, enforcing the line-length limit.
///
/// "Need more bytes" is the normal `None` result, not an error. Once an
/// unterminated line passes the limit the framer reports it once and then
/// swallows bytes up to the next LF, so memory stays bounded by the limit.
/// The limit counts the bytes received, telnet commands included.
#[derive(Debug)]
pub struct LineFramer {
    /// Longest accepted line in bytes, LF included (a `u32`: every
    /// session has a framer, and no line limit comes near 4 GB).
    max_line: u32,
    /// True while discarding the rest of an overlong line.
    discarding: bool,
    /// Telnet state at the front of the bytes not yet used.
    telnet: Telnet,
    /// What a telnet peer has been answered. Boxed, and only once a telnet
    /// client shows up: ten thousand netcat sessions should not carry 90
    /// bytes each for it.
    negotiated: Option<Box<Negotiated>>,
}

/// The telnet options a peer asked for, and the answers it is owed.
#[derive(Debug, Default)]
struct Negotiated {
    /// Options already refused, one bit per (DO or WILL, option): each is
    /// refused once, so a peer repeating a request gets no more bytes back.
    refused: Refused,
    /// Telnet answers not yet taken by the caller.
    replies: Vec<u8>,
}

/// A line limit as kept: anything past `u32::MAX` is as good as no limit.
fn limit(max_line: usize) -> u32 {
    u32::try_from(max_line.max(1)).unwrap_or(u32::MAX)
}

impl LineFramer {
    /// A framer enforcing `max_line` (LF included).
    pub fn new(max_line: usize) -> Self {
        LineFramer {
            max_line: limit(max_line),
            discarding: false,
            telnet: Telnet::Data,
            negotiated: None,
        }
    }

    /// The line-length limit in force (LF included).
    pub fn max_line(&self) -> usize {
        self.max_line as usize
    }

    /// Changes the limit for lines not yet framed (it grows at login).
    pub fn set_max_line(&mut self, max_line: usize) {
        self.max_line = limit(max_line);
    }

    /// Telnet answers owed to the peer (empty for a client that is not
    /// telnet). Produced only for bytes the framer reported as used.
    pub fn take_replies(&mut self) -> Vec<u8> {
        self.negotiated
            .as_deref_mut()
            .map(|n| std::mem::take(&mut n.replies))
            .unwrap_or_default()
    }

    /// Looks at the front of `buf` and returns how many bytes it used and
    /// the frame found, if any. Call again with the rest until it returns
    /// `(0, None)`, which means "need more bytes".
    pub fn next_frame<'a>(&mut self, buf: &'a [u8]) -> (usize, Option<Frame<'a>>) {
        if self.discarding {
            return self.discard(buf);
        }
        // The usual case: no telnet command before the LF, so the line is
        // borrowed as it stands.
        let stop = buf.iter().position(|&b| b == b'\n' || b == IAC);
        match stop {
            Some(end) if self.telnet == Telnet::Data && buf[end] == b'\n' => {
                if end < self.max_line() {
                    let line = &buf[..end];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    (end + 1, Some(Frame::Line(Cow::Borrowed(line))))
                } else {
                    (end + 1, Some(Frame::TooLong))
                }
            }
            None if self.telnet == Telnet::Data => self.unterminated(buf),
            _ => self.with_telnet(buf),
        }
    }

    /// Skips the rest of an overlong line: up to the first LF outside a
    /// telnet command, as `with_telnet` would have ended the line (an LF
    /// inside a subnegotiation is data there too). Otherwise how the bytes
    /// were split into reads would decide where the next line starts.
    fn discard<'a>(&mut self, buf: &'a [u8]) -> (usize, Option<Frame<'a>>) {
        let mut state = self.telnet;
        for (i, &b) in buf.iter().enumerate() {
            if state == Telnet::Iac && b < SE {
                state = Telnet::Data;
            }
            state = match state {
                Telnet::Data if b == b'\n' => {
                    self.discarding = false;
                    self.telnet = Telnet::Data;
                    return (i + 1, None);
                }
                Telnet::Data if b == IAC => Telnet::Iac,
                Telnet::Data | Telnet::Option(_) => Telnet::Data,
                Telnet::Iac => match b {
                    WILL..=DONT => Telnet::Option(b),
                    SB => Telnet::Sub,
                    _ => Telnet::Data,
                },
                Telnet::Sub if b == IAC => Telnet::SubIac,
                Telnet::Sub => Telnet::Sub,
                Telnet::SubIac if b == SE => Telnet::Data,
                Telnet::SubIac => Telnet::Sub,
            };
        }
        self.telnet = state;
        (buf.len(), None)
    }

    /// `buf` holds no LF (outside telnet commands): wait, or report it too
    /// long and discard from here on.
    fn unterminated<'a>(&mut self, buf: &'a [u8]) -> (usize, Option<Frame<'a>>) {
        if buf.len() >= self.max_line() {
            self.discarding = true;
            (buf.len(), Some(Frame::TooLong))
        } else {
            (0, None)
        }
    }

    /// Records what a telnet exchange refused and owes the peer.
    fn negotiated(&mut self, refused: Refused, replies: &[u8]) {
        if refused == Refused::default() && replies.is_empty() {
            return;
        }
        let negotiated = self.negotiated.get_or_insert_default();
        negotiated.refused = refused;
        negotiated.replies.extend_from_slice(replies);
    }

    /// The slow path: a line with telnet commands in it, copied without them.
    fn with_telnet<'a>(&mut self, buf: &'a [u8]) -> (usize, Option<Frame<'a>>) {
        let mut state = self.telnet;
        let mut line = Vec::new();
        let mut replies = Vec::new();
        let mut refused: Refused = self
            .negotiated
            .as_deref()
            .map(|n| n.refused)
            .unwrap_or_default();
        // The end of the last command after which no data is held (an IP,
        // or commands before any data): up to there the bytes can be used
        // even without an LF, and their answers sent now.
        let mut cut = None;
        for (i, &b) in buf.iter().enumerate() {
            if state == Telnet::Iac && b < SE {
                // Not a command: a stray IAC, dropped; the byte is data.
                state = Telnet::Data;
            }
            state = match state {
                Telnet::Data if b == b'\n' => {
                    self.telnet = Telnet::Data;
                    self.negotiated(refused, &replies);
                    if i >= self.max_line() {
                        return (i + 1, Some(Frame::TooLong));
                    }
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    return (i + 1, Some(Frame::Line(Cow::Owned(line))));
                }
                Telnet::Data if b == IAC => Telnet::Iac,
                Telnet::Data => {
                    line.push(b);
                    Telnet::Data
                }
                Telnet::Iac => match b {
                    WILL..=DONT => Telnet::Option(b),
                    SB => Telnet::Sub,
                    IP | EL => {
                        line.clear();
                        Telnet::Data
                    }
                    _ => Telnet::Data,
                },
                Telnet::Option(command) => {
                    answer(command, b, &mut refused, &mut replies);
                    Telnet::Data
                }
                Telnet::Sub if b == IAC => Telnet::SubIac,
                Telnet::Sub => Telnet::Sub,
                Telnet::SubIac if b == SE => Telnet::Data,
                Telnet::SubIac => Telnet::Sub,
            };
            if state == Telnet::Data && line.is_empty() && b != b'\r' {
                cut = Some((i + 1, replies.len(), refused));
            }
        }
        if buf.len() >= self.max_line() {
            self.discarding = true;
            self.telnet = state;
            self.negotiated(refused, &replies);
            return (buf.len(), Some(Frame::TooLong));
        }
        match cut {
            Some((used, answered, refused)) => {
                self.telnet = Telnet::Data;
                self.negotiated(refused, &replies[..answered]);
                (used, None)
            }
            None => (0, None),
        }
    }

    /// The last line of a stream that ended without an LF: `buf` as a line,
    /// telnet commands removed (no answers: the peer has stopped sending).
    pub fn last_line<'a>(&mut self, buf: &'a [u8]) -> Cow<'a, [u8]> {
        if self.telnet == Telnet::Data && !buf.contains(&IAC) {
            return Cow::Borrowed(buf);
        }
        let mut with_lf = buf.to_vec();
        with_lf.push(b'\n');
        let owned = match self.with_telnet(&with_lf) {
            (_, Some(Frame::Line(line))) => line.into_owned(),
            _ => Vec::new(),
        };
        if let Some(negotiated) = self.negotiated.as_deref_mut() {
            negotiated.replies.clear();
        }
        Cow::Owned(owned)
    }
}

/// Answers `IAC <command> <option>`: we take up no option, so a request to
/// enable one is refused once; and a timing mark is acknowledged each time.
fn answer(command: u8, option: u8, refused: &mut Refused, replies: &mut Vec<u8>) {
    let reply = match command {
        DO if option == TIMING_MARK => {
            replies.extend_from_slice(&[IAC, WILL, TIMING_MARK]);
            return;
        }
        DO => WONT,
        WILL => DONT,
        // WONT and DONT ask for the state we are in: no answer (RFC 854).
        _ => return,
    };
    let bit = usize::from(option) + if command == DO { 0 } else { 256 };
    let (word, mask) = (bit / 64, 1u64 << (bit % 64));
    if refused[word] & mask == 0 {
        refused[word] |= mask;
        replies.extend_from_slice(&[IAC, reply, option]);
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
        assert_eq!(
            f.next_frame(b"ping\r\n"),
            (6, Some(Frame::Line(b"ping"[..].into())))
        );
    }

    #[test]
    fn framing_keeps_a_lone_cr_inside_a_line() {
        let mut f = LineFramer::new(100);
        assert_eq!(
            f.next_frame(b"a\rb\n"),
            (4, Some(Frame::Line(b"a\rb"[..].into())))
        );
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_byte_more_is_too_long() {
        let mut f = LineFramer::new(5);
        assert_eq!(
            f.next_frame(b"abcd\n"),
            (5, Some(Frame::Line(b"abcd"[..].into())))
        );
        assert_eq!(f.next_frame(b"abcde\n"), (6, Some(Frame::TooLong)));
        assert_eq!(
            f.next_frame(b"ok\n"),
            (3, Some(Frame::Line(b"ok"[..].into())))
        );
    }

    #[test]
    fn an_overlong_line_split_across_reads_is_reported_once_and_discarded() {
        let mut f = LineFramer::new(4);
        assert_eq!(f.next_frame(b"abcd"), (4, Some(Frame::TooLong)));
        assert_eq!(f.next_frame(b"efgh"), (4, None));
        assert_eq!(f.next_frame(b"ij\nok\n"), (3, None));
        assert_eq!(
            f.next_frame(b"ok\n"),
            (3, Some(Frame::Line(b"ok"[..].into())))
        );
    }

    #[test]
    fn invalid_utf8_is_framed_as_bytes_for_the_caller_to_refuse() {
        let mut f = LineFramer::new(100);
        assert_eq!(
            f.next_frame(b"\xc3\x28\xfe\n"),
            (4, Some(Frame::Line(b"\xc3\x28\xfe"[..].into())))
        );
    }

    /// Frames `input` fed in one piece, with the telnet answers owed.
    fn telnet(input: &[u8]) -> (Vec<Result<Vec<u8>, ()>>, Vec<u8>) {
        let mut f = LineFramer::new(100);
        let lines = frames(&mut f, input);
        (lines, f.take_replies())
    }

    #[test]
    fn telnet_negotiation_is_removed_and_refused_once() {
        let (lines, replies) =
            telnet(b"\xff\xfb\x18pi\xff\xfd\x01ng\r\n\xff\xfb\x18\xff\xfc\x18who\n");
        assert_eq!(lines, vec![Ok(b"ping".to_vec()), Ok(b"who".to_vec())]);
        // WILL TERMINAL-TYPE gets DONT (once), DO ECHO gets WONT; WONT gets nothing.
        assert_eq!(replies, b"\xff\xfe\x18\xff\xfc\x01".to_vec());
    }

    #[test]
    fn telnet_interrupt_discards_the_line_typed_so_far() {
        // What telnet sends for Ctrl-C: IAC IP, then IAC DO TIMING-MARK.
        let (lines, replies) = telnet(b"send bob oops\xff\xf4\xff\xfd\x06ping\r\n");
        assert_eq!(lines, vec![Ok(b"ping".to_vec())]);
        assert_eq!(replies, b"\xff\xfb\x06".to_vec(), "WILL TIMING-MARK");
        // Erase line does the same.
        let (lines, _) = telnet(b"oops\xff\xf8ping\n");
        assert_eq!(lines, vec![Ok(b"ping".to_vec())]);
    }

    #[test]
    fn a_ctrl_c_without_a_line_after_it_is_used_and_answered_at_once() {
        let mut f = LineFramer::new(100);
        // Typed, then Ctrl-C, with no LF: the bytes are used and the timing
        // mark answered now (telnet shows nothing until it is).
        let input = b"half a li\xff\xf4\xff\xfd\x06";
        assert_eq!(f.next_frame(input), (input.len(), None));
        assert_eq!(f.take_replies(), b"\xff\xfb\x06".to_vec());
        assert_eq!(
            f.next_frame(b"ping\n"),
            (5, Some(Frame::Line(b"ping"[..].into())))
        );
        // A command cut off between reads waits for its end.
        assert_eq!(f.next_frame(b"\xff\xfd"), (0, None));
        assert_eq!(f.next_frame(b"\xff\xfd\x06"), (3, None));
        assert_eq!(f.take_replies(), b"\xff\xfb\x06".to_vec());
    }

    #[test]
    fn subnegotiation_and_escaped_iac_never_reach_a_line() {
        // NAWS 80x10: its data holds a 10, which is not an LF there.
        let (lines, replies) =
            telnet(b"\xff\xfa\x1f\x00\x50\x00\x0a\xff\xf0pi\xff\xffng\xff\xf1\n");
        assert_eq!(lines, vec![Ok(b"ping".to_vec())]);
        assert!(replies.is_empty());
    }

    /// Found by the property test: an overlong line inside an unclosed
    /// subnegotiation framed differently whole and split.
    #[test]
    fn how_reads_split_an_overlong_subnegotiation_changes_nothing() {
        let mut bytes = vec![0xff, 0xfa];
        bytes.extend([b' '; 38]);
        bytes.push(b'\n');
        bytes.extend([b' '; 13]);
        bytes.extend(b"!\n");
        let frames = |pieces: &[&[u8]]| {
            let mut f = LineFramer::new(16);
            let mut out = Vec::new();
            let mut pending = Vec::new();
            for piece in pieces {
                pending.extend_from_slice(piece);
                loop {
                    let (used, frame) = f.next_frame(&pending);
                    if let Some(frame) = frame {
                        out.push(format!("{frame:?}"));
                    }
                    pending.drain(..used);
                    if used == 0 {
                        break;
                    }
                }
            }
            out
        };
        let whole = frames(&[&bytes]);
        let split: Vec<&[u8]> = bytes.chunks(5).collect();
        assert_eq!(frames(&split), whole);
    }

    #[test]
    fn a_stray_iac_is_dropped_and_what_follows_is_data() {
        let (lines, replies) = telnet(b"\xffping\n\xff\n");
        assert_eq!(lines, vec![Ok(b"ping".to_vec()), Ok(Vec::new())]);
        assert!(replies.is_empty());
    }

    #[test]
    fn telnet_bytes_count_against_the_line_limit() {
        let mut f = LineFramer::new(8);
        let input = b"\xff\xfa\x1f\x00\x50\x00\x18\x00\x00";
        assert_eq!(f.next_frame(input), (input.len(), Some(Frame::TooLong)));
        // Still inside the subnegotiation: its LF is data, as it would be
        // had it all come in one read; the line ends at the LF after SE.
        assert_eq!(f.next_frame(b"rest\n"), (5, None));
        assert_eq!(f.next_frame(b"\xff\xf0 more\nok\n"), (8, None));
        assert_eq!(
            f.next_frame(b"ok\n"),
            (3, Some(Frame::Line(b"ok"[..].into())))
        );
    }

    #[test]
    fn a_last_line_without_lf_loses_its_telnet_commands() {
        let mut f = LineFramer::new(100);
        assert_eq!(&f.last_line(b"pi\xff\xfd\x01ng")[..], b"ping");
        assert_eq!(&f.last_line(b"ping")[..], b"ping");
        assert!(f.take_replies().is_empty());
    }
}
