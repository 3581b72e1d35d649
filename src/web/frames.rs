//! WebSocket frames (RFC 6455 section 5) as a pure function over bytes:
//! a [`Decoder`] turns a client's masked frames into protocol lines (one
//! text message = one line) and control frames, streaming each payload
//! straight into the session's input buffer; the `encode_*` functions
//! write server frames. Headers are parsed and formatted by tungstenite's
//! frame codec; what a frame may be (masked, text only, one line, no
//! longer than the session's line limit) is decided here.

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{Control as Op, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Longest control frame payload (RFC 6455 section 5.5).
const MAX_CONTROL: u64 = 125;

/// Longest message read at all (or `--max-line`, if that is longer). A
/// message over the line limit is answered as an overlong TCP line is
/// (`- TOOLONG`, its bytes past the limit read and dropped); one this long
/// is no person's typing, and reading it only to drop it is work for
/// nothing: it closes the connection (1009).
pub const MAX_MESSAGE: u64 = 1 << 20;

/// A control frame from the client, complete.
#[derive(Debug, PartialEq, Eq)]
pub enum Control {
    /// Answer with a pong carrying this payload.
    Ping(Vec<u8>),
    /// An answer to our ping (or an unasked one: also a sign of life).
    Pong,
    /// The client is closing; its close code, if it gave one.
    Close(Option<u16>),
}

/// Why a client's frames end its connection, with the close code it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Against RFC 6455 itself (1002).
    Protocol(&'static str),
    /// A binary message: natter speaks text lines (1003).
    Binary,
    /// Text that is not one line of the protocol (1007).
    NotALine(&'static str),
    /// A message over `MAX_MESSAGE` (1009).
    TooLong,
}

impl Violation {
    /// The close code it is answered with.
    pub fn code(self) -> u16 {
        match self {
            Violation::Protocol(_) => 1002,
            Violation::Binary => 1003,
            Violation::NotALine(_) => 1007,
            Violation::TooLong => 1009,
        }
    }

    /// The close frame's reason (and the log's).
    pub fn reason(self) -> &'static str {
        match self {
            Violation::Protocol(why) | Violation::NotALine(why) => why,
            Violation::Binary => "binary messages are not accepted: send text lines",
            Violation::TooLong => "message too long",
        }
    }
}

/// The frame being read.
#[derive(Debug)]
struct Frame {
    /// Text or continuation (payload goes to the line), or a control frame.
    control: Option<Op>,
    /// Last frame of its message.
    fin: bool,
    /// Payload bytes still to come.
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes unmasked so far (the mask's phase).
    done: usize,
}

/// Where a client's frame stream stands between reads.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The frame whose payload is being read; `None` between frames.
    frame: Option<Frame>,
    /// Inside a fragmented text message.
    in_message: bool,
    /// Payload bytes of the current message so far.
    message_len: u64,
    /// How many of them went into the line: at most `max_line`, enough
    /// for the line framer to see an overlong line; the rest are dropped.
    kept: u64,
    /// The control frame's payload so far (at most 125 bytes).
    control: Vec<u8>,
}

impl Decoder {
    /// Decodes what `raw` holds: message payloads are appended to `line`
    /// while it takes at most `room` more bytes, each message ending with
    /// LF; of a message over `max_line` (LF included) only the first
    /// `max_line` bytes are kept, so the line framer refuses it as it
    /// refuses an overlong TCP line. Returns
    /// the bytes of `raw` used, and stops after a complete control frame
    /// (returned for the caller to act on) or when it needs more bytes or
    /// room.
    pub fn decode(
        &mut self,
        raw: &[u8],
        line: &mut Vec<u8>,
        room: usize,
        max_line: usize,
    ) -> Result<(usize, Option<Control>), Violation> {
        let start_len = line.len();
        let mut used = 0;
        loop {
            let Some(frame) = self.frame.as_mut() else {
                let mut cursor = Cursor::new(&raw[used..]);
                let header = FrameHeader::parse(&mut cursor)
                    .map_err(|_| Violation::Protocol("reserved opcode"))?;
                let Some((header, len)) = header else {
                    return Ok((used, None));
                };
                used += cursor.position() as usize;
                self.frame = Some(self.start(&header, len, max_line)?);
                continue;
            };
            let available = (raw.len() - used) as u64;
            let mut n = frame.remaining.min(available) as usize;
            // Bytes of this message still to keep: they need room in the
            // line; bytes past them are dropped and need none.
            let keep_up_to = (max_line as u64).saturating_sub(self.kept) as usize;
            if frame.control.is_none() && keep_up_to > 0 {
                let taken = line.len() - start_len;
                n = n.min(room.saturating_sub(taken));
            }
            if n == 0 && frame.remaining > 0 {
                return Ok((used, None));
            }
            let payload = &raw[used..used + n];
            let unmasked = payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ frame.mask[(frame.done + i) % 4]);
            match frame.control {
                None => {
                    let from = line.len();
                    let keep = n.min(keep_up_to);
                    line.extend(unmasked.take(keep));
                    self.kept += keep as u64;
                    // A line break would smuggle a second command into one
                    // message; 0xFF (never in UTF-8) would reach the line
                    // framer as a telnet command.
                    if line[from..].iter().any(|&b| b == b'\n' || b == 0xFF) {
                        // Nothing of it is left for the line framer.
                        line.truncate(from);
                        return Err(Violation::NotALine(
                            "a message is one line: no line breaks inside",
                        ));
                    }
                }
                Some(_) => self.control.extend(unmasked),
            }
            used += n;
            frame.done += n;
            frame.remaining -= n as u64;
            if frame.remaining > 0 {
                continue;
            }
            let Some(frame) = self.frame.take() else {
                continue;
            };
            match frame.control {
                None if frame.fin => {
                    line.push(b'\n');
                    self.in_message = false;
                    self.message_len = 0;
                    self.kept = 0;
                }
                None => {}
                Some(op) => {
                    let payload = std::mem::take(&mut self.control);
                    let control = match op {
                        Op::Ping => Control::Ping(payload),
                        Op::Pong => Control::Pong,
                        _ => Control::Close(
                            (payload.len() >= 2)
                                .then(|| u16::from_be_bytes([payload[0], payload[1]])),
                        ),
                    };
                    return Ok((used, Some(control)));
                }
            }
        }
    }

    /// Checks a new frame's header against what may come now.
    fn start(
        &mut self,
        header: &FrameHeader,
        len: u64,
        max_line: usize,
    ) -> Result<Frame, Violation> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(Violation::Protocol(
                "reserved bits set (no extension was agreed)",
            ));
        }
        let Some(mask) = header.mask else {
            return Err(Violation::Protocol("client frames must be masked"));
        };
        let control = match header.opcode {
            OpCode::Data(Data::Text) if self.in_message => {
                return Err(Violation::Protocol("a new message inside a fragmented one"));
            }
            OpCode::Data(Data::Text) => {
                self.in_message = true;
                self.message_len = 0;
                self.kept = 0;
                None
            }
            OpCode::Data(Data::Continue) if !self.in_message => {
                return Err(Violation::Protocol("a continuation frame with no message"));
            }
            OpCode::Data(Data::Continue) => None,
            OpCode::Data(Data::Binary) => return Err(Violation::Binary),
            OpCode::Control(op @ (Op::Ping | Op::Pong | Op::Close)) => {
                if !header.is_final || len > MAX_CONTROL {
                    return Err(Violation::Protocol(
                        "control frames are single frames of at most 125 bytes",
                    ));
                }
                Some(op)
            }
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Op::Reserved(_)) => {
                return Err(Violation::Protocol("reserved opcode"));
            }
        };
        if control.is_none() {
            self.message_len = self.message_len.saturating_add(len);
            if self.message_len > MAX_MESSAGE.max(max_line as u64) {
                return Err(Violation::TooLong);
            }
        }
        Ok(Frame {
            control,
            fin: header.is_final,
            remaining: len,
            mask,
            done: 0,
        })
    }
}

/// Appends a server frame (unmasked, final) with `payload`.
fn encode(opcode: OpCode, payload: &[u8], wire: &mut Vec<u8>) {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    // Formatting into a Vec cannot fail: it only writes.
    if header.format(payload.len() as u64, wire).is_ok() {
        wire.extend_from_slice(payload);
    }
}

/// Appends one protocol line (its LF left out) as a text frame.
pub fn encode_text(line: &[u8], wire: &mut Vec<u8>) {
    encode(OpCode::Data(Data::Text), line, wire);
}

/// Appends a ping.
pub fn encode_ping(payload: &[u8], wire: &mut Vec<u8>) {
    encode(OpCode::Control(Op::Ping), payload, wire);
}

/// Appends a pong answering a ping's `payload`.
pub fn encode_pong(payload: &[u8], wire: &mut Vec<u8>) {
    encode(OpCode::Control(Op::Pong), payload, wire);
}

/// Appends a close frame; `reason` is cut to what fits in 125 bytes.
pub fn encode_close(code: u16, reason: &str, wire: &mut Vec<u8>) {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(MAX_CONTROL as usize - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Control(Op::Close), &payload, wire);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: opcode, FIN, masked payload.
    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            is_final: fin,
            opcode: OpCode::from(opcode),
            mask: Some(MASK),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    /// A client frame's header alone, announcing `len` payload bytes.
    fn frame_header(opcode: u8, fin: bool, len: u64) -> Vec<u8> {
        let header = FrameHeader {
            is_final: fin,
            opcode: OpCode::from(opcode),
            mask: Some(MASK),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        header.format(len, &mut out).unwrap();
        out
    }

    fn decode_all(raw: &[u8], max_line: usize) -> (Vec<u8>, Vec<Control>, Result<(), Violation>) {
        let mut decoder = Decoder::default();
        let mut line = Vec::new();
        let mut controls = Vec::new();
        let mut at = 0;
        loop {
            match decoder.decode(&raw[at..], &mut line, usize::MAX, max_line) {
                Ok((used, control)) => {
                    at += used;
                    match control {
                        Some(c) => controls.push(c),
                        None => return (line, controls, Ok(())),
                    }
                }
                Err(v) => return (line, controls, Err(v)),
            }
        }
    }

    #[test]
    fn a_text_frame_is_one_line_whichever_way_its_bytes_arrive() {
        let mut raw = frame(1, true, b"send bob hello");
        raw.extend(frame(1, true, b"ping"));
        for split in 0..raw.len() {
            let mut decoder = Decoder::default();
            let mut line = Vec::new();
            let (used, _) = decoder
                .decode(&raw[..split], &mut line, usize::MAX, 4096)
                .unwrap();
            let mut rest = raw[used..].to_vec();
            loop {
                let (used, control) = decoder.decode(&rest, &mut line, usize::MAX, 4096).unwrap();
                assert!(control.is_none());
                if used == 0 {
                    break;
                }
                rest.drain(..used);
            }
            assert_eq!(line, b"send bob hello\nping\n", "split at {split}");
        }
    }

    #[test]
    fn fragments_make_one_line_and_controls_may_come_between() {
        let mut raw = frame(1, false, b"send bob ");
        raw.extend(frame(9, true, b"hi?"));
        raw.extend(frame(0, false, b"hel"));
        raw.extend(frame(0, true, b"lo"));
        let (line, controls, end) = decode_all(&raw, 4096);
        assert_eq!(end, Ok(()));
        assert_eq!(line, b"send bob hello\n");
        assert_eq!(controls, vec![Control::Ping(b"hi?".to_vec())]);
    }

    #[test]
    fn frames_against_the_rules_are_violations() {
        let cases: Vec<(Vec<u8>, Violation)> = vec![
            (frame(2, true, b"\x00\x01"), Violation::Binary),
            (
                frame(0, true, b"x"),
                Violation::Protocol("a continuation frame with no message"),
            ),
            (
                [frame(1, false, b"a"), frame(1, true, b"b")].concat(),
                Violation::Protocol("a new message inside a fragmented one"),
            ),
            (
                frame(9, false, b""),
                Violation::Protocol("control frames are single frames of at most 125 bytes"),
            ),
            (
                frame(9, true, &[b'p'; 126]),
                Violation::Protocol("control frames are single frames of at most 125 bytes"),
            ),
            (frame(3, true, b""), Violation::Protocol("reserved opcode")),
            (
                frame(1, true, b"two\nlines"),
                Violation::NotALine("a message is one line: no line breaks inside"),
            ),
            // Announced in the header: nothing of it needs to arrive.
            (frame_header(1, true, MAX_MESSAGE + 1), Violation::TooLong),
            (
                [
                    frame(1, false, &[b'a'; 8]),
                    frame_header(0, true, MAX_MESSAGE),
                ]
                .concat(),
                Violation::TooLong,
            ),
        ];
        for (raw, want) in cases {
            let (_, _, end) = decode_all(&raw, 16);
            assert_eq!(end, Err(want), "{raw:?}");
        }
        let mut unmasked = frame(1, true, b"hi");
        unmasked[1] &= 0x7f;
        unmasked.drain(2..6);
        let (_, _, end) = decode_all(&unmasked, 16);
        assert_eq!(
            end,
            Err(Violation::Protocol("client frames must be masked"))
        );
        // Fifteen bytes and the LF fit a limit of 16.
        let (line, _, end) = decode_all(&frame(1, true, &[b'a'; 15]), 16);
        assert_eq!((line.len(), end), (16, Ok(())));
    }

    #[test]
    fn of_an_overlong_message_only_enough_for_the_framer_to_refuse_is_kept() {
        let mut raw = frame(1, false, &[b'a'; 10]);
        raw.extend(frame(9, true, b"p"));
        raw.extend(frame(0, true, &[b'b'; 30]));
        raw.extend(frame(1, true, b"ping"));
        let (line, controls, end) = decode_all(&raw, 16);
        assert_eq!(end, Ok(()));
        assert_eq!(controls, vec![Control::Ping(b"p".to_vec())]);
        let mut want = [b"a".repeat(10), b"b".repeat(6)].concat();
        want.extend_from_slice(b"\nping\n");
        assert_eq!(line, want);
        // The line framer, with the same limit, refuses it as too long.
        let mut framer = natter_proto::LineFramer::new(16);
        let (used, first) = framer.next_frame(&line);
        assert!(
            matches!(first, Some(natter_proto::Frame::TooLong)),
            "{first:?}"
        );
        let (_, second) = framer.next_frame(&line[used..]);
        assert!(
            matches!(second, Some(natter_proto::Frame::Line(ref l)) if &l[..] == b"ping"),
            "{second:?}"
        );
    }

    #[test]
    fn a_full_line_buffer_stops_the_payload_until_there_is_room() {
        let raw = frame(1, true, b"abcdef");
        let mut decoder = Decoder::default();
        let mut line = Vec::new();
        let (used, _) = decoder.decode(&raw, &mut line, 4, 4096).unwrap();
        assert_eq!(line, b"abcd");
        let (more, _) = decoder.decode(&raw[used..], &mut line, 4, 4096).unwrap();
        assert_eq!(used + more, raw.len());
        assert_eq!(line, b"abcdef\n");
    }

    #[test]
    fn close_carries_its_code_and_reason_is_cut_to_fit() {
        let (_, controls, _) = decode_all(&frame(8, true, &[0x03, 0xe8, b'b', b'y']), 4096);
        assert_eq!(controls, vec![Control::Close(Some(1000))]);
        let mut wire = Vec::new();
        encode_close(1008, &"é".repeat(100), &mut wire);
        assert_eq!(wire[1] as usize, wire.len() - 2);
        assert!(wire.len() - 2 <= 125);
        assert!(std::str::from_utf8(&wire[4..]).is_ok());
    }
}
