//! Non-blocking line I/O for the measured phase: one connection's fixed
//! input buffer and pending output, read until `WouldBlock` as mio's
//! edge-triggered readiness requires; with --tls, through the connection's
//! rustls record layer, kept apart from the socket I/O. Lines are handed out as byte slices of
//! the buffer, so receiving costs no allocation per line; this module knows
//! nothing of what the lines mean.

use std::io::{self, Read, Write};

use natter_client::{LineReader, Stream};
use natter_proto::{split_chat, split_line, split_word, EventKind, Frame, Line, LineFramer};
use rustls::ClientConnection;

use crate::error::BenchError;

/// Input buffer size. Large enough that one read takes many queued lines
/// (fewer syscalls under fan-out), and far above natterd's longest line.
pub const BUF: usize = 64 * 1024;

/// Hands every complete line in `buf` (without LF or CRLF) to `f` and returns
/// how many bytes those lines took; what follows is a partial line.
pub fn each_line(
    buf: &[u8],
    mut f: impl FnMut(&[u8]) -> Result<(), BenchError>,
) -> Result<usize, BenchError> {
    // The input buffer bounds a line (`Conn::make_room`), so the framer's own
    // limit is set out of reach and it never reports TooLong.
    let mut framer = LineFramer::new(usize::MAX);
    let mut pos = 0;
    loop {
        match framer.next_frame(&buf[pos..]) {
            (used, Some(Frame::Line(line))) => {
                f(&line)?;
                pos += used;
            }
            (_, Some(Frame::TooLong)) => {
                return Err(BenchError::new("the server sent an overlong line"))
            }
            (_, None) => return Ok(pos),
        }
    }
}

/// An event line (`* <event> <fields>`) taken apart without allocating:
/// the event, if this version knows its word, and its fields. `None` for
/// replies, data lines, unknown events and lines that are not UTF-8.
pub fn event(line: &[u8]) -> Option<(EventKind, &str)> {
    match split_line(std::str::from_utf8(line).ok()?)? {
        Line::Event { kind, fields } => Some((EventKind::parse(kind)?, fields)),
        _ => None,
    }
}

/// One logged-in connection driven by a poller.
pub struct Conn {
    /// The socket, non-blocking.
    pub stream: mio::net::TcpStream,
    /// With --tls, the connection's record layer: raw bytes from the socket
    /// go in, plaintext lines come out; lines to send go in, records for the
    /// socket come out.
    tls: Option<ClientConnection>,
    /// With --ws, frames received and not yet decoded: each text frame's
    /// payload goes to `inbuf` as a line. `None` over TCP and TLS.
    ws: Option<Vec<u8>>,
    /// Received plaintext; `start..end` is not yet handled (a partial line
    /// after each pump).
    inbuf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Bytes carried over from setup that may hold whole lines.
    unscanned: bool,
    /// Queued output (plaintext); `out_pos..` is unsent (for TLS: not yet
    /// handed to the record layer).
    out: Vec<u8>,
    out_pos: usize,
}

impl Conn {
    /// Takes over a connection that setup logged in, with whatever setup had
    /// received beyond the login reply.
    pub fn from_reader(reader: LineReader<Stream>) -> io::Result<Conn> {
        let (stream, mut rest) = reader.into_parts();
        let (tcp, tls, decrypted) = stream.into_parts()?;
        rest.extend_from_slice(&decrypted);
        tcp.set_nonblocking(true)?;
        let mut inbuf = vec![0u8; BUF.max(rest.len())].into_boxed_slice();
        inbuf[..rest.len()].copy_from_slice(&rest);
        Ok(Conn {
            stream: mio::net::TcpStream::from_std(tcp),
            tls,
            ws: None,
            inbuf,
            start: 0,
            end: rest.len(),
            unscanned: !rest.is_empty(),
            out: Vec::new(),
            out_pos: 0,
        })
    }

    /// Takes over a logged-in WebSocket session (`--ws`), with the bytes
    /// setup received beyond the login reply (frames, maybe a partial one).
    pub fn from_websocket(tcp: std::net::TcpStream, raw: Vec<u8>) -> io::Result<Conn> {
        tcp.set_nonblocking(true)?;
        Ok(Conn {
            stream: mio::net::TcpStream::from_std(tcp),
            tls: None,
            unscanned: !raw.is_empty(),
            ws: Some(raw),
            inbuf: vec![0u8; BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            out: Vec::new(),
            out_pos: 0,
        })
    }

    /// Makes room at the end of the input buffer (`end..`), moving the
    /// partial line to the front.
    fn make_room(&mut self) -> Result<(), BenchError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.inbuf.len() {
            if self.start == 0 {
                return Err(BenchError::new(format!(
                    "the server sent a line longer than {} bytes",
                    self.inbuf.len()
                )));
            }
            self.inbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        Ok(())
    }

    /// Takes `n` new bytes at the end of the buffer into account, handing
    /// every line they complete to `f`.
    fn scan(
        &mut self,
        n: usize,
        f: &mut impl FnMut(&[u8]) -> Result<(), BenchError>,
    ) -> Result<(), BenchError> {
        // Only the new bytes can complete a line, but a line's start may be
        // earlier: scan from the unhandled start.
        self.end += n;
        self.start += each_line(&self.inbuf[self.start..self.end], f)?;
        Ok(())
    }

    /// Reads until the socket has nothing more, handing each complete line to
    /// `f`. `Ok(false)` when the server closed the connection.
    pub fn pump(
        &mut self,
        mut f: impl FnMut(&[u8]) -> Result<(), BenchError>,
    ) -> Result<bool, BenchError> {
        if self.ws.is_some() {
            return self.pump_ws(f);
        }
        if self.unscanned {
            self.unscanned = false;
            self.start += each_line(&self.inbuf[self.start..self.end], &mut f)?;
        }
        if self.tls.is_some() {
            return self.pump_tls(f);
        }
        loop {
            self.make_room()?;
            match self.stream.read(&mut self.inbuf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => self.scan(n, &mut f)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// [`Conn::pump`] through TLS: feeds the record layer from the socket
    /// until `WouldBlock`, draining its plaintext after every feed (it holds
    /// only a bounded amount and refuses more input until drained).
    fn pump_tls(
        &mut self,
        mut f: impl FnMut(&[u8]) -> Result<(), BenchError>,
    ) -> Result<bool, BenchError> {
        loop {
            // Plaintext first: some may be left from setup or the last feed.
            let closed = loop {
                self.make_room()?;
                let Some(tls) = self.tls.as_mut() else {
                    return Ok(true);
                };
                match tls.reader().read(&mut self.inbuf[self.end..]) {
                    Ok(0) => break true,
                    Ok(n) => self.scan(n, &mut f)?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break true,
                    Err(e) => return Err(e.into()),
                }
            };
            let Some(tls) = self.tls.as_mut() else {
                return Ok(true);
            };
            if closed {
                return Ok(false);
            }
            // Answers the record layer owes (rare: a key update); anything
            // the socket does not take now goes with the next flush.
            write_records(tls, &mut self.stream)?;
            match tls.read_tls(&mut self.stream) {
                // The socket ended: what it carried is drained next pass,
                // then the reader reports the end.
                Ok(0) => {}
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            if let Err(e) = tls.process_new_packets() {
                let _ = write_records(tls, &mut self.stream);
                return Err(BenchError::new(format!("TLS: {e}")));
            }
        }
    }

    /// [`Conn::pump`] over a WebSocket: reads frames until `WouldBlock`,
    /// handing each text frame to `f` as a line; pings are answered.
    fn pump_ws(
        &mut self,
        mut f: impl FnMut(&[u8]) -> Result<(), BenchError>,
    ) -> Result<bool, BenchError> {
        let mut chunk = [0u8; BUF];
        loop {
            if !self.decode_frames(&mut f)? {
                return Ok(false);
            }
            let n = match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(raw) = self.ws.as_mut() {
                raw.extend_from_slice(&chunk[..n]);
            }
        }
    }

    /// Decodes the complete frames received; false after a close frame.
    fn decode_frames(
        &mut self,
        f: &mut impl FnMut(&[u8]) -> Result<(), BenchError>,
    ) -> Result<bool, BenchError> {
        use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
        let Some(mut raw) = self.ws.take() else {
            return Ok(true);
        };
        let mut used = 0;
        let mut open = true;
        while let Some((opcode, payload)) = crate::ws::server_frame(&raw[used..])? {
            let (start, end) = (used + payload.start, used + payload.end);
            used = end;
            match opcode {
                OpCode::Data(Data::Text) => {
                    self.make_room()?;
                    let len = end - start;
                    if self.inbuf.len() - self.end < len + 1 {
                        self.ws = Some(raw);
                        return Err(BenchError::new(format!(
                            "the server sent a line longer than {} bytes",
                            self.inbuf.len()
                        )));
                    }
                    self.inbuf[self.end..self.end + len].copy_from_slice(&raw[start..end]);
                    self.inbuf[self.end + len] = b'\n';
                    self.scan(len + 1, f)?;
                }
                OpCode::Control(Control::Ping) => {
                    crate::ws::push_frame(
                        &mut self.out,
                        OpCode::Control(Control::Pong),
                        &raw[start..end],
                    );
                }
                OpCode::Control(Control::Close) => {
                    open = false;
                    break;
                }
                _ => {}
            }
        }
        raw.drain(..used);
        self.ws = Some(raw);
        if self.has_output() {
            self.flush()?;
        }
        Ok(open)
    }

    /// The buffer that [`Conn::flush`] sends; append whole lines to it.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Whether queued output is still unsent.
    pub fn has_output(&self) -> bool {
        self.out_pos < self.out.len() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Writes queued output until it is all sent or the socket is full.
    pub fn flush(&mut self) -> Result<(), BenchError> {
        if let Some(tls) = self.tls.as_mut() {
            // Encrypting never blocks: the record layer takes it all (its
            // buffer limit is off; the window bounds what is queued).
            tls.writer().write_all(&self.out[self.out_pos..])?;
            self.out.clear();
            self.out_pos = 0;
            return write_records(tls, &mut self.stream);
        }
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(BenchError::new("the server stopped taking data")),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(())
    }
}

/// Writes the records the TLS connection has ready until it has none or the
/// socket is full.
fn write_records(
    tls: &mut ClientConnection,
    stream: &mut mio::net::TcpStream,
) -> Result<(), BenchError> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(0) => return Err(BenchError::new("the server stopped taking data")),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// From the fields of a `* msg` or `* broadcast` carrying the bench's own
/// text (`<from> <time> <seq> <nanos> ...`), the sequence number and send
/// time the text carries. `None` for any other text.
pub fn stamp(fields: &str) -> Option<(u64, u64)> {
    let text = split_chat(fields)?.text;
    let (seq, rest) = split_word(text);
    let (nanos, _) = split_word(rest);
    Some((number(seq)?, number(nanos)?))
}

/// A word of decimal digits as a number; someone else's message can start
/// with anything, including a number too large for a u64.
fn number(word: &str) -> Option<u64> {
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    word.parse().ok()
}

/// Appends the bench's message text: the sequence number and the send time
/// (which the receiver subtracts from its own clock), padded with `x` to
/// `payload` bytes. The numbers always fit: arguments keep `payload` above
/// their longest form.
pub fn push_text(out: &mut Vec<u8>, seq: u64, nanos: u64, payload: usize) {
    let start = out.len();
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{seq} {nanos} ");
    let used = out.len() - start;
    out.resize(start + payload.max(used), b'x');
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(buf: &[u8]) -> (Vec<Vec<u8>>, usize) {
        let mut got = Vec::new();
        let used = each_line(buf, |l| {
            got.push(l.to_vec());
            Ok(())
        })
        .expect("no error");
        (got, used)
    }

    #[test]
    fn a_huge_number_is_not_a_number() {
        assert_eq!(
            number("9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(number("18446744073709551616"), None);
        assert_eq!(number("+5"), None);
        assert_eq!(number(""), None);
    }

    #[test]
    fn lines_are_split_and_partial_tail_left() {
        let (got, used) = collect(b"+ a\r\n* b\n\n= par");
        assert_eq!(got, vec![b"+ a".to_vec(), b"* b".to_vec(), b"".to_vec()]);
        assert_eq!(used, 10);
        let (got, used) = collect(b"no newline");
        assert!(got.is_empty());
        assert_eq!(used, 0);
    }

    #[test]
    fn an_error_from_the_handler_stops_the_scan() {
        let r = each_line(b"a\nb\n", |l| {
            if l == b"b" {
                Err(BenchError::new("stop"))
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err(BenchError::new("stop")));
    }

    #[test]
    fn stamps_are_read_from_event_lines() {
        let line = b"* broadcast nbfs 2026-01-01T00:00:00Z 17 123456789 xxxx";
        let (kind, fields) = event(line).expect("an event");
        assert_eq!(kind, EventKind::Broadcast);
        assert_eq!(stamp(fields), Some((17, 123456789)));
        let msg = b"* msg nbds0 2026-01-01T00:00:00Z 0 5";
        assert_eq!(
            event(msg).map(|(k, f)| (k, stamp(f))),
            Some((EventKind::Msg, Some((0, 5))))
        );
        assert_eq!(event(b"* bye slow"), Some((EventKind::Bye, "slow")));
        for not_event in [&b"+ sent to 3"[..], b"* typing x", b"\xff x", b"*bye x"] {
            assert_eq!(event(not_event), None, "{not_event:?}");
        }
        for bad in [
            "a t",
            "a t x 1",
            "a t 1x 2",
            "a t 1",
            "a t 99999999999999999999 1",
        ] {
            assert_eq!(stamp(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn text_is_padded_to_the_payload_and_round_trips() {
        let mut out = b"broadcast ".to_vec();
        push_text(&mut out, 42, 987, 32);
        assert_eq!(out.len(), 10 + 32 + 1);
        assert_eq!(out.last(), Some(&b'\n'));
        let text = &out[10..out.len() - 1];
        let fields = format!("a t {}", String::from_utf8_lossy(text));
        assert_eq!(stamp(&fields), Some((42, 987)));
        let mut short = Vec::new();
        push_text(&mut short, 123456, 7890123, 4);
        assert_eq!(short, b"123456 7890123 \n");
    }
}
