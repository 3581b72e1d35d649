//! One browser connection's state between the socket and its session:
//! first the HTTP request (answered with a file and closed, or upgraded),
//! then WebSocket frames both ways, keepalive pings, and the close frame
//! that carries the session's goodbye; under all of it, with `--web-tls`,
//! a rustls connection. Used by the session's transport exactly as rustls
//! is: bytes in with `read`, bytes out with `write`, wants derived from
//! state.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::frames::{self, Control, Decoder, Violation};
use super::http::{self, Answer};
use super::WebPolicy;
use crate::protocol::ByeReason;
use crate::session::{Ending, Output, ReadStatus, KEEP_BUFFER_CAPACITY, READ_CHUNK};

/// A socket silent this long gets a ping; silent as long again after it,
/// it is taken for dead. Under the minute after which many proxies and
/// NAT boxes forget an idle connection. (Tests shorten it with the hidden
/// `--web-keepalive`.)
pub const KEEPALIVE: Duration = Duration::from_secs(30);

/// Line bytes framed per write: about one TCP send buffer's worth. The next
/// batch is framed only once this one is wholly in the kernel, so a line
/// counts as sent exactly when its frame is (as TLS records do).
const FRAME_BATCH: usize = 16 * 1024;

/// Most plaintext in one TLS record: what is handed to rustls at a time,
/// so that everything handed over is in the kernel once rustls holds no
/// records (see `transport.rs`, `write_tls`).
const TLS_RECORD: usize = 16 * 1024;

/// What one read from below (the socket, or rustls) gave.
enum Fill {
    /// Bytes were appended to `raw`.
    Data,
    /// Nothing more for now.
    Blocked,
    /// The peer closed (or sent TLS close_notify).
    Eof,
}

/// Where the connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the HTTP request.
    Request,
    /// A WebSocket: frames both ways.
    Open,
    /// The client sent a close frame: nothing more is read.
    PeerClosed,
    /// The request got an HTTP response; it closes once that is written.
    Answered,
}

/// A browser connection's transport state.
#[derive(Debug)]
pub struct WebConn {
    state: State,
    policy: Arc<WebPolicy>,
    /// Bytes read and not yet used: the request until it is answered,
    /// then the start of frames not yet decoded.
    raw: Vec<u8>,
    decoder: Decoder,
    /// Bytes for the socket (the HTTP answer, then frames); `wire[sent..]`
    /// is unsent. Holds whole frames only, so a close frame can always be
    /// appended.
    wire: Vec<u8>,
    sent: usize,
    /// The close frame due once the session's output is out: set when the
    /// session starts closing.
    closing: Option<(u16, &'static str)>,
    /// The close frame is in `wire` (or out): no data frame may follow.
    close_queued: bool,
    /// Anything arrived since the last keepalive check.
    heard: bool,
    /// A ping is out unanswered.
    pinged: bool,
    /// The next keepalive check.
    next_check: Instant,
    /// With `--web-tls`: the TLS connection under everything above.
    tls: Option<rustls::ServerConnection>,
    /// TLS failed (for the log and the counters: not a WebSocket matter).
    tls_failed: bool,
}

impl WebConn {
    /// Whether it came in on the `--web-tls` listener.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A connection accepted at `now`, its request not read yet; inside
    /// TLS if `tls` is given.
    pub fn new(
        policy: Arc<WebPolicy>,
        tls: Option<rustls::ServerConnection>,
        now: Instant,
    ) -> WebConn {
        WebConn {
            state: State::Request,
            next_check: now + policy.keepalive,
            policy,
            raw: Vec::new(),
            decoder: Decoder::default(),
            wire: Vec::new(),
            sent: 0,
            closing: None,
            close_queued: false,
            heard: false,
            pinged: false,
            tls,
            tls_failed: false,
        }
    }

    /// Whether its TLS failed (a bad handshake, garbage on the port).
    pub fn tls_failed(&self) -> bool {
        self.tls_failed
    }

    /// Reads until `WouldBlock`, EOF, or `inbuf` holds `limit` bytes; of
    /// a message over `max_line` (LF included) only enough is kept for the
    /// line framer to refuse it, as over TCP (see `frames.rs`). A frame
    /// against the rules is answered with a close frame (written at once,
    /// best effort) and returned as `InvalidData`.
    pub fn read(
        &mut self,
        socket: &mut (impl Read + Write),
        inbuf: &mut Vec<u8>,
        limit: usize,
        max_line: usize,
    ) -> io::Result<ReadStatus> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.state {
                State::Request => match http::answer(&self.raw, &self.policy) {
                    Answer::Partial => {}
                    Answer::Upgrade { response, used } => {
                        self.wire.extend_from_slice(&response);
                        self.raw.drain(..used);
                        self.state = State::Open;
                        continue;
                    }
                    Answer::Respond(response) => {
                        self.wire.extend_from_slice(&response);
                        self.raw = Vec::new();
                        self.state = State::Answered;
                        return Ok(ReadStatus::Eof);
                    }
                },
                State::Open => {
                    let room = limit.saturating_sub(inbuf.len());
                    match self.decoder.decode(&self.raw, inbuf, room, max_line) {
                        Ok((used, None)) => {
                            self.raw.drain(..used);
                        }
                        Ok((used, Some(control))) => {
                            self.raw.drain(..used);
                            if self.on_control(control) {
                                return Ok(ReadStatus::Eof);
                            }
                            continue;
                        }
                        Err(violation) => return Err(self.refuse(socket, violation)),
                    }
                    if inbuf.len() >= limit {
                        return Ok(ReadStatus::Full);
                    }
                    if self.raw.is_empty() && self.raw.capacity() > KEEP_BUFFER_CAPACITY {
                        self.raw = Vec::new();
                    }
                }
                State::PeerClosed | State::Answered => return Ok(ReadStatus::Eof),
            }
            let cap = match self.state {
                State::Request => http::MAX_REQUEST,
                _ => READ_CHUNK,
            };
            let room = cap.saturating_sub(self.raw.len());
            if room == 0 {
                // Only a frame header cut short could leave no room, and
                // one is 14 bytes at most: the decoder is waiting for room
                // in `inbuf`.
                return Ok(ReadStatus::Full);
            }
            match self.fill(socket, &mut chunk[..room.min(READ_CHUNK)])? {
                Fill::Data => {}
                Fill::Blocked => return Ok(ReadStatus::Drained),
                Fill::Eof => return Ok(ReadStatus::Eof),
            }
        }
    }

    /// Appends what the socket (through TLS, if any) has, at most
    /// `chunk.len()` bytes.
    fn fill(&mut self, socket: &mut (impl Read + Write), chunk: &mut [u8]) -> io::Result<Fill> {
        let Some(tls) = self.tls.as_mut() else {
            loop {
                return match socket.read(chunk) {
                    Ok(0) => Ok(Fill::Eof),
                    Ok(n) => {
                        self.heard = true;
                        self.raw.extend_from_slice(&chunk[..n]);
                        Ok(Fill::Data)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Fill::Blocked),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
            }
        };
        loop {
            // Plaintext rustls already holds first; no more records are
            // read while it holds some, so its buffers stay bounded.
            match tls.reader().read(chunk) {
                Ok(0) => return Ok(Fill::Eof),
                Ok(n) => {
                    self.raw.extend_from_slice(&chunk[..n]);
                    return Ok(Fill::Data);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match tls.read_tls(socket) {
                Ok(0) => return Ok(Fill::Eof),
                Ok(_) => self.heard = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Fill::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = tls.process_new_packets() {
                // Tell the peer why (the alert is queued), then give up.
                let _ = tls.write_tls(socket);
                self.tls_failed = true;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("TLS: {e}"),
                ));
            }
        }
    }

    /// Acts on a control frame; true if the client is closing.
    fn on_control(&mut self, control: Control) -> bool {
        match control {
            Control::Ping(payload) if !self.close_queued => {
                frames::encode_pong(&payload, &mut self.wire);
                false
            }
            Control::Close(_) => {
                self.state = State::PeerClosed;
                true
            }
            _ => false,
        }
    }

    /// Queues the close frame for `violation`, writes what it can now (the
    /// session closes at once), and says what went wrong.
    fn refuse(&mut self, socket: &mut impl Write, violation: Violation) -> io::Error {
        if !self.close_queued {
            frames::encode_close(violation.code(), violation.reason(), &mut self.wire);
            self.close_queued = true;
        }
        let _ = self.flush_wire(socket);
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WebSocket: {}", violation.reason()),
        )
    }

    /// Writes `wire` (through TLS, if any) until all of it is in the
    /// kernel (true) or the socket would block. With TLS, a record's worth
    /// is handed to rustls only once its records before are written, so
    /// "rustls holds no records and `wire` is empty" means in the kernel.
    fn flush_wire(&mut self, socket: &mut impl Write) -> io::Result<bool> {
        loop {
            if let Some(tls) = self.tls.as_mut() {
                while tls.wants_write() {
                    match tls.write_tls(socket) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
            if self.sent == self.wire.len() {
                break;
            }
            let pending = &self.wire[self.sent..];
            match self.tls.as_mut() {
                Some(tls) => {
                    let taken = tls
                        .writer()
                        .write(&pending[..pending.len().min(TLS_RECORD)])?;
                    if taken == 0 {
                        // Mid-handshake rustls takes nothing; a read resumes.
                        return Ok(false);
                    }
                    self.sent += taken;
                }
                None => match socket.write(pending) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => self.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                },
            }
        }
        self.wire.clear();
        self.sent = 0;
        if self.wire.capacity() > KEEP_BUFFER_CAPACITY {
            self.wire = Vec::new();
        }
        Ok(true)
    }

    /// Writes until the session's output is framed and out, or the socket
    /// would block; the close frame follows the last line once the session
    /// is closing.
    pub fn write(&mut self, socket: &mut impl Write, out: &mut Output) -> io::Result<()> {
        loop {
            if !self.flush_wire(socket)? {
                return Ok(());
            }
            match self.state {
                // The greeting waits for the upgrade.
                State::Request => return Ok(()),
                // The protocol's lines are not for an HTTP client.
                State::Answered => {
                    out.advance(out.pending_len());
                    return Ok(());
                }
                State::Open | State::PeerClosed => {}
            }
            // Every frame handed over so far is in the kernel.
            out.reached_kernel();
            if self.close_queued {
                out.advance(out.pending_len());
                return Ok(());
            }
            if out.pending_len() == 0 {
                let Some((code, reason)) = self.closing else {
                    return Ok(());
                };
                frames::encode_close(code, reason, &mut self.wire);
                self.close_queued = true;
                continue;
            }
            let taken = frame_lines(out.pending(), &mut self.wire);
            out.advance(taken);
        }
    }

    /// Whether anything waits to be written: frames, or (once upgraded)
    /// the session's output or its close frame.
    pub fn wants_write(&self, out: &Output) -> bool {
        self.sent < self.wire.len()
            || self.tls.as_ref().is_some_and(|tls| tls.wants_write())
            || match self.state {
                State::Request | State::Answered => false,
                State::Open | State::PeerClosed => {
                    !self.close_queued && (out.pending_len() > 0 || self.closing.is_some())
                }
            }
    }

    /// Ends TLS politely (close_notify), best effort, before the socket closes.
    pub fn close_notify(&mut self, socket: &mut impl Write) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let _ = tls.write_tls(socket);
        }
    }

    /// The session started closing: its goodbye goes as the close frame's
    /// code and reason, after its last line.
    pub fn closing(&mut self, why: Ending) {
        self.closing.get_or_insert(close_for(why));
    }

    /// When the keepalive wants a look, while the socket is open.
    pub fn keepalive_at(&self) -> Option<Instant> {
        (self.state == State::Open).then_some(self.next_check)
    }

    /// At `keepalive_at`: a ping after a silent `KEEPALIVE`, and false (the
    /// peer is gone) after another one without a word or a pong.
    pub fn keepalive(&mut self, now: Instant) -> bool {
        if self.state != State::Open || now < self.next_check {
            return true;
        }
        self.next_check = now + self.policy.keepalive;
        if std::mem::take(&mut self.heard) {
            self.pinged = false;
            return true;
        }
        if self.pinged {
            return false;
        }
        if !self.close_queued {
            frames::encode_ping(b"natter", &mut self.wire);
        }
        self.pinged = true;
        true
    }
}

/// Frames the complete lines at the start of `pending` (up to about
/// `FRAME_BATCH` bytes), one text frame per line without its LF; returns
/// the bytes of `pending` used. Output holds whole lines; a tail without
/// LF (none is ever queued) would go as a frame of its own.
fn frame_lines(pending: &[u8], wire: &mut Vec<u8>) -> usize {
    let mut used = 0;
    while used < pending.len() && used < FRAME_BATCH {
        let rest = &pending[used..];
        let (line, len) = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => (&rest[..end], end + 1),
            None => (rest, rest.len()),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        frames::encode_text(line, wire);
        used += len;
    }
    used
}

/// The close code and reason a session's end is sent with: the reason is
/// the protocol's bye word, so a page can tell its user what happened.
pub fn close_for(why: Ending) -> (u16, &'static str) {
    match why {
        Ending::Quit => (1000, "quit"),
        Ending::PeerClosed => (1000, ""),
        Ending::Bye(reason) => {
            let code = match reason {
                // Going away: the server is restarting.
                ByeReason::Shutdown => 1001,
                // Try again later.
                ByeReason::Busy => 1013,
                ByeReason::Idle | ByeReason::Replaced => 1000,
                // A policy of the server's ended it.
                _ => 1008,
            };
            (code, reason.as_str())
        }
        Ending::Linger | Ending::OverBudget => (1008, "slow"),
        Ending::IoError | Ending::TlsError | Ending::WebSocketError => (1011, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_frames_and_a_batch_stops_near_its_size() {
        let mut wire = Vec::new();
        let used = frame_lines(b"+ pong\n* msg bob hi\r\n", &mut wire);
        assert_eq!(used, 21);
        assert_eq!(wire, b"\x81\x06+ pong\x81\x0c* msg bob hi");
        let long = [
            b"x".repeat(FRAME_BATCH - 2),
            b"\n".to_vec(),
            b"y\n".repeat(10),
        ]
        .concat();
        let mut wire = Vec::new();
        assert_eq!(frame_lines(&long, &mut wire), FRAME_BATCH - 1 + 2);
    }

    #[test]
    fn a_silent_socket_is_pinged_then_given_up() {
        let start = Instant::now();
        let mut conn = WebConn::new(Arc::default(), None, start);
        conn.state = State::Open;
        assert_eq!(conn.keepalive_at(), Some(start + KEEPALIVE));
        assert!(conn.keepalive(start + KEEPALIVE));
        assert_eq!(&conn.wire[..2], b"\x89\x06", "a ping is queued");
        // A pong (or anything) before the next check keeps it alive.
        conn.heard = true;
        assert!(conn.keepalive(start + KEEPALIVE * 2));
        assert!(conn.keepalive(start + KEEPALIVE * 3));
        assert!(!conn.keepalive(start + KEEPALIVE * 4), "two silent periods");
    }

    #[test]
    fn goodbyes_map_to_close_codes_with_the_bye_word() {
        assert_eq!(
            close_for(Ending::Bye(ByeReason::Shutdown)),
            (1001, "shutdown")
        );
        assert_eq!(close_for(Ending::Bye(ByeReason::Busy)), (1013, "busy"));
        assert_eq!(close_for(Ending::Bye(ByeReason::Slow)), (1008, "slow"));
        assert_eq!(
            close_for(Ending::Bye(ByeReason::Replaced)),
            (1000, "replaced")
        );
        assert_eq!(close_for(Ending::Quit), (1000, "quit"));
    }
}
