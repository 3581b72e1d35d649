//! One connection: its input buffer and line framing, its output buffer, the
//! order its replies must keep, its rate bucket and its activity times.
//!
//! A session never registers itself with the poller and never decides chat
//! semantics: the reactor drives its I/O, `commands` decides what its lines
//! mean. Everything except `read_from`/`write_to` is pure and unit-tested.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::commands::Caller;

/// Bytes read from the socket per `read` call. Large enough that a burst of
/// pipelined commands arrives in a few calls, small enough to live on the stack.
pub const READ_CHUNK: usize = 16 * 1024;

/// Most commands one session may have waiting on the store or the hasher.
/// Beyond this its input is not parsed (and then not read), so a client that
/// pipelines without limit is slowed by TCP instead of growing our memory.
pub const MAX_IN_FLIGHT: usize = 64;

/// Longest line accepted before login, LF included. The longest useful line
/// then is `register` with a 32-character name and a 256-byte password
/// (under 300 bytes); anything more from a stranger is refused early, so an
/// unauthenticated connection cannot make us hold much of its input.
pub const PRE_LOGIN_MAX_LINE: usize = 512;

/// Input a session may hold unprocessed beyond one maximal line: a full read
/// once logged in, much less before.
pub const INBUF_SLACK_LOGGED_IN: usize = READ_CHUNK;
/// See [`INBUF_SLACK_LOGGED_IN`].
pub const INBUF_SLACK_PRE_LOGIN: usize = 1024;

/// Buffer capacity an emptied buffer may keep. Enough for the typical
/// command or event, so a busy session does not reallocate per message, yet
/// small enough that ten thousand idle sessions cost little.
pub const KEEP_BUFFER_CAPACITY: usize = 4096;

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

/// Frames a byte stream that arrives in `chunks` the way a session does:
/// append each read, take every frame, drop what was consumed. `Some(line)`
/// per line, `None` per overlong line. The reference that property tests and
/// fuzzers compare split and whole deliveries with.
pub fn frame_chunks(max_line: usize, chunks: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
    let mut framer = LineFramer::new(max_line);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        let mut consumed = 0;
        loop {
            let (used, frame) = framer.next_frame(&buf[consumed..]);
            consumed += used;
            match frame {
                Some(Frame::Line(line)) => out.push(Some(line.to_vec())),
                Some(Frame::TooLong) => out.push(None),
                None if used == 0 => break,
                None => {}
            }
        }
        buf.drain(..consumed);
    }
    out
}

/// A token bucket: `rate` commands per second, up to `burst` at once.
#[derive(Debug, Clone)]
pub struct RateBucket {
    /// Tokens added per second; 0 means unlimited.
    rate: f64,
    /// Bucket capacity.
    burst: f64,
    /// Tokens available at `updated`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

impl RateBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        RateBucket {
            rate,
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What sits between the socket and the session's buffers.
pub enum Transport {
    /// Bytes on the wire are the protocol's lines.
    Plain,
    /// TLS: rustls turns records into plaintext and back. Boxed because a
    /// connection is large and most sessions may be plain.
    Tls(Box<rustls::ServerConnection>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Plain => f.write_str("Plain"),
            Transport::Tls(_) => f.write_str("Tls"),
        }
    }
}

/// How a session is to end, if it is. An enum rather than flags so that
/// "close now" and "close after flush" cannot both be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseState {
    /// Serving normally.
    Open,
    /// Send what is buffered, then close; no further output is accepted.
    CloseAfterFlush,
    /// Close at the end of this pass without writing anything more.
    CloseNow,
}

/// Replies waiting for an earlier command's reply, so that each session's
/// completions go out in command order even when some wait on the store or
/// the hasher.
#[derive(Debug, Default)]
pub struct ReplyOrder {
    /// Sequence number the next parsed command gets.
    next_seq: u64,
    /// Sequence number of the oldest command whose reply has not been released.
    released_upto: u64,
    /// Replies for `released_upto..next_seq`; `None` while still being worked on.
    parked: VecDeque<Option<Vec<u8>>>,
}

impl ReplyOrder {
    /// Gives the next command its sequence number.
    pub fn begin(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.parked.push_back(None);
        seq
    }

    /// Records command `seq`'s reply and returns every reply that may now be
    /// written, in order.
    pub fn finish(&mut self, seq: u64, reply: Vec<u8>) -> Vec<Vec<u8>> {
        let Some(index) = seq
            .checked_sub(self.released_upto)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return Vec::new();
        };
        if let Some(slot) = self.parked.get_mut(index) {
            *slot = Some(reply);
        }
        let mut ready = Vec::new();
        while let Some(Some(_)) = self.parked.front() {
            if let Some(Some(bytes)) = self.parked.pop_front() {
                ready.push(bytes);
            }
            self.released_upto += 1;
        }
        ready
    }

    /// Commands started whose reply has not been released yet.
    pub fn outstanding(&self) -> usize {
        self.parked.len()
    }
}

/// When a session's timer should fire: a closing session's linger time;
/// else the idle deadline once logged in; else the login deadline.
pub fn session_deadline(
    logged_in: bool,
    connected_at: Instant,
    last_command: Instant,
    linger_until: Option<Instant>,
    login_timeout: Duration,
    idle_timeout: Duration,
) -> Instant {
    match linger_until {
        Some(linger) => linger,
        None if logged_in => last_command + idle_timeout,
        None => connected_at + login_timeout,
    }
}

/// One client connection and everything the server keeps about it.
#[derive(Debug)]
pub struct Session {
    /// Never reused, unlike the slab slot: replies from the store or hasher
    /// carry it so a late reply never reaches a newer session in the same slot.
    pub id: u64,
    /// The socket.
    pub stream: TcpStream,
    /// Plain TCP, or a rustls connection between the socket and the buffers.
    pub transport: Transport,
    /// Peer address, for lockouts and logs.
    pub ip: IpAddr,
    /// Who this session is to the chat logic (login state included).
    pub caller: Caller,
    /// Bytes read but not yet framed into lines.
    pub inbuf: Vec<u8>,
    /// Line framing state.
    pub framer: LineFramer,
    /// Bytes waiting to be written; `outbuf[sent..]` is still unsent.
    pub outbuf: Vec<u8>,
    /// How much of `outbuf` the socket has taken.
    pub sent: usize,
    /// Bytes ever queued for output.
    pub pushed_total: u64,
    /// Bytes ever taken by the socket (or by rustls).
    pub written_total: u64,
    /// `pushed_total` right after the latest reply was queued.
    pub replies_end: u64,
    /// Stored direct messages queued as events but not yet written, as
    /// (`pushed_total` at the end of the line, message id). If the session
    /// dies with some unwritten, they go back to the inbox.
    pub unsent_direct: VecDeque<(u64, i64)>,
    /// Reply ordering for commands waiting on background work.
    pub replies: ReplyOrder,
    /// A login or register is in progress: later lines wait, because what
    /// they mean depends on its outcome.
    pub barrier: bool,
    /// The peer shut its side: finish what was asked, then close.
    pub read_closed: bool,
    /// The client said `quit`/`logout`: later lines are ignored, and the
    /// session closes once every earlier reply is out.
    pub quit: bool,
    /// Reading stopped because `inbuf` is full of unprocessed lines.
    pub read_paused: bool,
    /// Whether the poller currently watches for WRITABLE.
    pub wants_write: bool,
    /// Whether the session is on the reactor's event-flush queue.
    pub flush_queued: bool,
    /// Whether the session is on the reactor's reply-flush list.
    pub flush_now_queued: bool,
    /// Lines handled in its current turn (see `turn_over`).
    pub turn_lines: usize,
    /// Its turn ended with input left; it is on the reactor's resume list.
    pub turn_over: bool,
    /// Whether the session is on the reactor's close list.
    pub close_queued: bool,
    /// Closing state.
    pub close: CloseState,
    /// When the connection was accepted (login timeout).
    pub connected_at: Instant,
    /// When the last command arrived (idle timeout).
    pub last_command: Instant,
    /// When this session's live entry in the deadline set fires. Entries
    /// with another time are stale and ignored when they fire.
    pub timer_at: Option<Instant>,
    /// A closing session that has not drained its output by then is dropped.
    pub linger_until: Option<Instant>,
    /// Command rate limit.
    pub bucket: RateBucket,
    /// Consecutive commands refused with `RATE`; too many means `flood`.
    pub rate_strikes: u32,
}

impl Session {
    /// A fresh, not yet logged-in session.
    pub fn new(
        id: u64,
        stream: TcpStream,
        transport: Transport,
        caller: Caller,
        max_line: usize,
        bucket: RateBucket,
        now: Instant,
    ) -> Self {
        Session {
            id,
            stream,
            transport,
            ip: caller.ip,
            caller,
            inbuf: Vec::new(),
            framer: LineFramer::new(max_line.min(PRE_LOGIN_MAX_LINE)),
            outbuf: Vec::new(),
            sent: 0,
            pushed_total: 0,
            written_total: 0,
            replies_end: 0,
            unsent_direct: VecDeque::new(),
            replies: ReplyOrder::default(),
            barrier: false,
            read_closed: false,
            quit: false,
            read_paused: false,
            wants_write: false,
            flush_queued: false,
            flush_now_queued: false,
            turn_lines: 0,
            close_queued: false,
            turn_over: false,
            close: CloseState::Open,
            connected_at: now,
            last_command: now,
            timer_at: None,
            linger_until: None,
            bucket,
            rate_strikes: 0,
        }
    }

    /// The one door for output: appends bytes unless the session is
    /// closing. Returns whether the bytes were taken; the caller queues a flush.
    pub fn push_output(&mut self, bytes: &[u8]) -> bool {
        if self.close != CloseState::Open {
            return false;
        }
        if self.sent == self.outbuf.len() {
            self.outbuf.clear();
            self.sent = 0;
        }
        self.outbuf.extend_from_slice(bytes);
        self.pushed_total += bytes.len() as u64;
        true
    }

    /// Queues the event line of a stored direct message, remembering its id
    /// until the line is written.
    pub fn push_direct(&mut self, bytes: &[u8], id: i64) -> bool {
        let taken = self.push_output(bytes);
        if taken {
            self.unsent_direct.push_back((self.pushed_total, id));
        }
        taken
    }

    /// Ids of direct messages queued but never written (for a closing session).
    pub fn take_unsent_direct(&mut self) -> Vec<i64> {
        let written = self.written_total;
        self.unsent_direct
            .drain(..)
            .filter(|(end, _)| *end > written)
            .map(|(_, id)| id)
            .collect()
    }

    /// Like `push_output`, for a reply to the session's own command: the
    /// client asked for these bytes, so they never count as a backlog of
    /// events (see `event_backlog`).
    pub fn push_reply(&mut self, bytes: &[u8]) -> bool {
        let taken = self.push_output(bytes);
        if taken {
            self.replies_end = self.pushed_total;
        }
        taken
    }

    /// Unsent bytes queued after the last reply: what the client has not
    /// read of what it did not ask for. A client reading a 4 MB `history`
    /// reply is not slow; one that leaves a megabyte of messages unread is.
    pub fn event_backlog(&self) -> u64 {
        self.pushed_total - self.written_total.max(self.replies_end)
    }

    /// Removes the first `consumed` bytes of input (all handled lines),
    /// giving back a large allocation once the buffer is empty.
    pub fn consume_input(&mut self, consumed: usize) {
        let consumed = consumed.min(self.inbuf.len());
        self.inbuf.drain(..consumed);
        if self.inbuf.is_empty() && self.inbuf.capacity() > KEEP_BUFFER_CAPACITY {
            self.inbuf = Vec::new();
        }
    }

    /// How much unprocessed input this session may hold: one maximal line
    /// plus some slack, so an overlong line is always detected.
    pub fn inbuf_limit(&self) -> usize {
        let slack = if self.caller.user.is_some() {
            INBUF_SLACK_LOGGED_IN
        } else {
            INBUF_SLACK_PRE_LOGIN
        };
        self.framer.max_line() + slack
    }

    /// Bytes buffered and not yet written.
    pub fn pending_output(&self) -> usize {
        self.outbuf.len() - self.sent
    }

    /// Reads until `WouldBlock`, EOF, or the input buffer is full. Returns
    /// whether the buffer filled up before the socket was drained.
    pub fn read_from_socket(&mut self) -> io::Result<bool> {
        match &mut self.transport {
            Transport::Plain => self.read_plain(),
            Transport::Tls(_) => self.read_tls(),
        }
    }

    fn read_plain(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let room = self.inbuf_limit().saturating_sub(self.inbuf.len());
            if room == 0 {
                return Ok(true);
            }
            let want = room.min(READ_CHUNK);
            match self.stream.read(&mut chunk[..want]) {
                Ok(0) => {
                    self.read_closed = true;
                    return Ok(false);
                }
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// TLS: records from the socket go into the rustls connection, plaintext
    /// comes out into `inbuf`. Plaintext rustls already holds is taken first,
    /// and no more records are read while `inbuf` is full, so rustls's own
    /// buffers stay within its limits.
    fn read_tls(&mut self) -> io::Result<bool> {
        let limit = self.inbuf_limit();
        let Transport::Tls(conn) = &mut self.transport else {
            return Ok(false);
        };
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            loop {
                let room = limit.saturating_sub(self.inbuf.len());
                if room == 0 {
                    return Ok(true);
                }
                match conn.reader().read(&mut chunk[..room.min(READ_CHUNK)]) {
                    // close_notify: the peer ended the session cleanly.
                    Ok(0) => {
                        self.read_closed = true;
                        return Ok(false);
                    }
                    Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            match conn.read_tls(&mut self.stream) {
                Ok(0) => {
                    self.read_closed = true;
                    return Ok(false);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = conn.process_new_packets() {
                // Tell the peer why (the alert is queued), then give up on it.
                let _ = conn.write_tls(&mut self.stream);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("TLS: {e}"),
                ));
            }
        }
    }

    /// Reads and throws away up to `max` bytes of pending input. Closing a
    /// socket with unread input makes the kernel send a reset, which can
    /// destroy the goodbye still in flight to the peer.
    pub fn discard_input(&mut self, max: usize) {
        let mut chunk = [0u8; READ_CHUNK];
        let mut total = 0;
        while total < max {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Writes until the buffer is empty or the socket would block, draining
    /// exactly what was written. A short write is normal, not an error.
    pub fn write_to_socket(&mut self) -> io::Result<()> {
        match &mut self.transport {
            Transport::Plain => {
                while self.sent < self.outbuf.len() {
                    match self.stream.write(&self.outbuf[self.sent..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            self.sent += n;
                            self.written_total += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
            Transport::Tls(conn) => loop {
                // Plaintext moves into rustls only as far as its buffer
                // limit allows; the rest waits in `outbuf`, where the
                // --max-outbuf check sees it.
                let accepted = if self.sent < self.outbuf.len() {
                    conn.writer().write(&self.outbuf[self.sent..])?
                } else {
                    0
                };
                self.sent += accepted;
                self.written_total += accepted as u64;
                let mut blocked = false;
                let mut wrote_records = false;
                while conn.wants_write() {
                    match conn.write_tls(&mut self.stream) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(_) => wrote_records = true,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            blocked = true;
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
                // Stop at WouldBlock (a WRITABLE edge will come), when all is
                // written, or when nothing moved at all (mid-handshake rustls
                // holds plaintext until it has keys; the next read resumes).
                // Draining rustls's buffer without blocking is progress: loop,
                // or no edge would ever come for the rest.
                let stuck = accepted == 0 && !wrote_records;
                if blocked || self.sent == self.outbuf.len() || stuck {
                    break;
                }
            },
        }
        while self
            .unsent_direct
            .front()
            .is_some_and(|(end, _)| *end <= self.written_total)
        {
            self.unsent_direct.pop_front();
        }
        if self.sent == self.outbuf.len() {
            self.outbuf.clear();
            self.sent = 0;
            // A burst can leave a large allocation behind; idle sessions
            // should cost little, so give it back.
            if self.outbuf.capacity() > KEEP_BUFFER_CAPACITY {
                self.outbuf = Vec::new();
            }
        } else if self.sent > self.outbuf.len() / 2 {
            self.outbuf.drain(..self.sent);
            self.sent = 0;
        }
        Ok(())
    }

    /// Whether the socket should be watched for WRITABLE: output is waiting,
    /// in our buffer or as TLS records rustls has not written yet.
    pub fn wants_writable(&self) -> bool {
        self.pending_output() > 0
            || matches!(&self.transport, Transport::Tls(conn) if conn.wants_write())
    }

    /// Ends a TLS session politely (close_notify), best effort.
    pub fn close_transport(&mut self) {
        if let Transport::Tls(conn) = &mut self.transport {
            conn.send_close_notify();
            let _ = conn.write_tls(&mut self.stream);
        }
    }

    /// When this session's next timer should fire: the login deadline until
    /// it logs in, then the idle deadline.
    pub fn deadline(&self, login_timeout: Duration, idle_timeout: Duration) -> Instant {
        session_deadline(
            self.caller.user.is_some(),
            self.connected_at,
            self.last_command,
            self.linger_until,
            login_timeout,
            idle_timeout,
        )
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

    #[test]
    fn rate_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = RateBucket::new(2.0, 3, t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + Duration::from_millis(500)));
        assert!(!b.try_take(t0 + Duration::from_millis(600)));
        // Refill is capped at the burst.
        let later = t0 + Duration::from_secs(100);
        assert!((0..3).all(|_| b.try_take(later)));
        assert!(!b.try_take(later));
    }

    #[test]
    fn rate_zero_means_unlimited() {
        let t0 = Instant::now();
        let mut b = RateBucket::new(0.0, 1, t0);
        assert!((0..10_000).all(|_| b.try_take(t0)));
    }

    #[test]
    fn deadlines_follow_the_session_state() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let later = t0 + secs(100);
        // Before login the login timeout counts from connecting, whatever is typed.
        assert_eq!(
            session_deadline(false, t0, later, None, secs(60), secs(1800)),
            t0 + secs(60)
        );
        // After login the idle timeout counts from the last command, even if shorter.
        assert_eq!(
            session_deadline(true, t0, later, None, secs(60), secs(1)),
            later + secs(1)
        );
        // A closing session only waits for its output to drain.
        let linger = t0 + secs(5);
        assert_eq!(
            session_deadline(true, t0, later, Some(linger), secs(60), secs(1800)),
            linger
        );
    }

    #[test]
    fn replies_are_released_in_command_order() {
        let mut order = ReplyOrder::default();
        let a = order.begin();
        let b = order.begin();
        let c = order.begin();
        assert!(order.finish(b, b"B".to_vec()).is_empty());
        assert!(order.finish(c, b"C".to_vec()).is_empty());
        assert_eq!(order.outstanding(), 3);
        assert_eq!(
            order.finish(a, b"A".to_vec()),
            vec![b"A".to_vec(), b"B".to_vec(), b"C".to_vec()]
        );
        assert_eq!(order.outstanding(), 0);
        let d = order.begin();
        assert_eq!(order.finish(d, b"D".to_vec()), vec![b"D".to_vec()]);
        // A stale or duplicate completion is ignored.
        assert!(order.finish(a, b"again".to_vec()).is_empty());
    }
}
