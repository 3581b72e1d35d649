//! One connection as a state machine with no I/O of its own: every rule of
//! the per-connection pipeline lives here, and the reactor only moves bytes
//! and events between it and the socket.
//!
//! Inputs: bytes from any `io::Read` ([`Session::read_from`]), a line turn
//! ([`Session::process`]), a finished job ([`Session::complete`]), an event
//! for it ([`Session::push_event`]), a timer ([`Session::on_deadline`]), a
//! writable socket ([`Session::write_to`]), shutdown. Outputs: bytes to
//! write, jobs and effects on others (an [`Outbox`]), and what it wants
//! next, derived from its state: [`Session::wants_read`],
//! [`Session::wants_write`], [`Session::deadline`], [`Session::is_finished`],
//! and the one-time [`Session::take_departure`].
//!
//! The rules: replies go out in command order, each command line gets
//! exactly one completion, and events never land inside a reply; a login,
//! register, inbox or history holds later lines until it is answered; at
//! most `MAX_LINES_PER_TURN` lines per loop pass and `MAX_IN_FLIGHT`
//! commands in flight; input is not handled while output is backed up past
//! `--max-outbuf`; over its rate a session's lines wait (never refused) until
//! its bucket refills; login and idle timeouts; closing after a flush or at
//! once.
//!
//! Submodules: `buffers` (output, reply order, rate bucket), `transport`
//! (plain, TLS or WebSocket bytes to and from the socket; the WebSocket
//! side lives in `crate::web`); framing is natter-proto's.
//! This file stays one piece (about 700 lines, a third of them docs)
//! because its rules share one state: splitting it would put the fields
//! that decide "may the next line run" in several places again.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::commands::{
    self, Caller, Chat, Clock, Cont, Effects, Job, SessionRef, Step, WorkResult,
};
use crate::config::Config;
use crate::protocol::{self, ByeReason};

mod buffers;
mod transport;

pub use buffers::{Output, Rate, RateBucket, ReplyOrder, KEEP_BUFFER_CAPACITY, MAX_WRITE_PIECES};
pub use natter_proto::{Frame, LineFramer};
pub use transport::{ReadStatus, Transport, READ_CHUNK};

/// Most commands one session may have waiting on the store or the hasher.
/// Beyond this its input is not parsed (and then not read), so a client that
/// pipelines without limit is slowed by TCP instead of growing our memory.
pub const MAX_IN_FLIGHT: usize = 64;

/// Bytes of direct messages one session may have waiting for the store.
/// Past it its lines wait (and then TCP slows it), so one session's list
/// broadcasts cannot fill the store's queue ahead of everyone else's
/// `send`: a few hundred large list broadcasts' worth, far beyond a person.
pub const STORE_SHARE: usize = 256 * 1024;

/// What all sessions' writes may hold while they wait for the store before
/// those with writes already waiting stop being read (each may still queue
/// one command when it has none waiting, so nobody is shut out).
pub const STORE_TOTAL: usize = 32 * 1024 * 1024;

/// Lines one session may have handled per loop pass. A client pipelining
/// thousands of broadcasts would otherwise hold the loop for the whole burst
/// while everyone else's events wait; the rest of its input is handled on the
/// next pass, after the events that arrived meanwhile.
pub const MAX_LINES_PER_TURN: usize = 64;

/// Deliveries a command's fan-out may queue for the price of one line of
/// the turn. Queuing a line to a recipient costs the loop a few hundred
/// nanoseconds, so a `broadcast` to 1,000 is worth 16 ordinary commands and
/// one to 4,096 or more a whole turn: a turn queues at most ~4,000
/// deliveries past its last command, or one fan-out whole (8,000 take the
/// loop 2-3 ms), and a `ping` from anyone else waits for no more than that,
/// however many broadcasts a sender pipelines. At 256 a turn took two
/// broadcasts to 8,000, and the ping's p99 was 12 ms instead of under 10
/// (docs/PERFORMANCE.md).
pub const DELIVERIES_PER_LINE: usize = 64;

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

/// Shortest event line queued by reference rather than copied. Measured
/// at 1,000 receivers (docs/PERFORMANCE.md, issue 16): a ~100-byte line
/// costs less copied into each recipient's buffer and written as one run
/// than as a queue entry each and a `writev` piece per line (457 against
/// 507 ns of server time per delivery); at ~540 bytes sharing wins (828
/// against 992 ns), at ~2,000 bytes by twice (1.2 against 2.7 µs).
const SHARE_MIN_LINE: usize = 256;

/// How long a closing session may take to drain its output.
pub const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// The limits a session enforces, from the configuration.
#[derive(Debug)]
pub struct Limits {
    /// Longest line once logged in (LF included).
    pub max_line: usize,
    /// Unsent output past which input waits, and event backlog past which
    /// the reader is dropped as slow.
    pub max_outbuf: usize,
    /// A stranger must log in within this.
    pub login_timeout: Duration,
    /// A member silent this long is logged out.
    pub idle_timeout: Duration,
    /// Commands per second (0: unlimited), and at once.
    pub rate: Rate,
    /// Bytes all sessions' writes hold while they wait for the store, kept
    /// current by the reactor: past `STORE_TOTAL`, a session with writes
    /// already waiting is not read until they are done.
    pub store_backlog: AtomicUsize,
}

impl From<&Config> for Limits {
    fn from(c: &Config) -> Self {
        Limits {
            max_line: c.max_line,
            max_outbuf: c.max_outbuf,
            login_timeout: c.login_timeout(),
            idle_timeout: c.idle_timeout(),
            rate: Rate {
                per_sec: c.rate,
                burst: c.burst,
            },
            store_backlog: AtomicUsize::new(0),
        }
    }
}

/// Where the session's input stands. One enum, so that "quit" and "shut
/// down" cannot both hold, and nothing outside sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InputState {
    /// Lines are handled as they arrive.
    Open,
    /// The peer shut its side: finish what it sent, then close.
    PeerClosed,
    /// It said `quit`/`logout`: later lines are ignored, and it closes
    /// once every earlier reply is out.
    Quit,
    /// The server is shutting down: no more lines; `* bye shutdown` once
    /// every earlier reply is out.
    Shutdown,
}

/// How a session is to end, if it is. An enum rather than flags so that
/// "close now" and "close after flush" cannot both be set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseState {
    /// Serving normally.
    Open,
    /// Send what is buffered, then close; no further output is accepted.
    /// Dropped anyway at `until`.
    CloseAfterFlush { until: Instant },
    /// Close at the end of this pass without writing anything more.
    CloseNow,
}

/// Why a session ended, for the log and the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It said `quit`/`logout`.
    Quit,
    /// The peer closed the connection.
    PeerClosed,
    /// A read or write failed.
    IoError,
    /// TLS failed (bad handshake, garbage on the TLS port).
    TlsError,
    /// A browser's frames broke the WebSocket rules, or it stopped
    /// answering pings.
    WebSocketError,
    /// `* bye <reason>` from the server.
    Bye(ByeReason),
    /// Its output did not drain within `CLOSE_LINGER` while closing.
    Linger,
    /// All sessions together held more output than `--max-output-total`,
    /// and it held the most.
    OverBudget,
}

impl Ending {
    /// A short name, for `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Ending::Quit => "quit",
            Ending::PeerClosed => "peer_closed",
            Ending::IoError => "io_error",
            Ending::TlsError => "tls_error",
            Ending::WebSocketError => "websocket_error",
            Ending::Bye(reason) => reason.as_str(),
            Ending::Linger => "linger",
            Ending::OverBudget => "output_budget",
        }
    }

    /// In words, for the log.
    pub fn describe(self) -> String {
        match self {
            Ending::Quit => "quit".into(),
            Ending::PeerClosed => "the client closed the connection".into(),
            Ending::IoError => "read or write failed".into(),
            Ending::TlsError => "TLS failed".into(),
            Ending::WebSocketError => "WebSocket rules broken, or no answer to ping".into(),
            Ending::Bye(reason) => format!("bye {reason}"),
            Ending::Linger => "output not drained in time".into(),
            Ending::OverBudget => "closed to bring all output under --max-output-total".into(),
        }
    }
}

/// Routing for a job's result: the command it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    /// The session that gave the command.
    pub session: SessionRef,
    /// Its place in that session's reply order.
    pub seq: u64,
}

/// What a session produced for the rest of the server while handling input
/// or a completion: jobs to dispatch and effects on other sessions.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Background work; a reply comes back to `ReplyTo` if set.
    pub jobs: Vec<(Job, Option<ReplyTo>)>,
    /// Deliveries, closes, background writes, lock timers.
    pub effects: Effects,
}

/// A job held back by its session until it may start.
#[derive(Debug)]
struct Deferred {
    job: Job,
    reply_to: ReplyTo,
    /// Also wait until the output is down to `PART_LOW_WATER`.
    drained: bool,
}

/// A long reply's next part is read once the unsent output is down to
/// this: the client has taken most of the last part, and a session that
/// never reads holds one part, not the whole reply.
pub const PART_LOW_WATER: usize = 64 * 1024;

/// A reply and the inbox rows in it: (end offset, message id) each.
type ReadyReply = (Vec<u8>, Vec<(usize, i64)>);

/// What a pushed event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Taken,
    /// Queued, but the unread backlog is now past `--max-outbuf`.
    OverLimit,
    /// Not queued: the session is closing.
    Refused,
}

/// One client connection and everything the server keeps about it, except
/// its socket (the reactor's).
#[derive(Debug)]
pub struct Session {
    /// Who it is to the chat logic: its reference (slab slot plus a
    /// never-reused id), its address, and the user once logged in.
    caller: Caller,
    /// Plain TCP, or TLS between the socket and the buffers.
    transport: Transport,
    /// The limits it enforces, shared by every session (a copy each would
    /// cost ten thousand idle sessions over half a megabyte).
    limits: Arc<Limits>,
    /// Bytes read but not yet framed into lines.
    inbuf: Vec<u8>,
    /// Line framing state (its limit grows at login).
    framer: LineFramer,
    /// Bytes waiting to be written.
    output: Output,
    /// Reply ordering for commands waiting on background work; a reply
    /// carries the inbox rows in it (see `Step::Inbox`).
    replies: ReplyOrder<ReadyReply>,
    /// The command whose reply later lines wait for (login, register,
    /// inbox, history): what they mean or cost depends on it.
    waiting_on: Option<NonZeroU64>,
    /// Bytes its commands have waiting for the store (see `STORE_SHARE`);
    /// a `u32`, beside `turn_lines`, as a job's bytes are bounded by the
    /// line limit.
    queued_bytes: u32,
    /// A `history` waiting for this session's earlier commands to be
    /// answered before it is read, or the next part of a long reply
    /// waiting for the client to take most of the last (see `step`).
    /// Boxed: a job is a few hundred bytes that ten thousand idle sessions
    /// would each carry.
    deferred: Option<Box<Deferred>>,
    /// Where its input stands.
    input: InputState,
    /// Whether and how it is closing.
    close: CloseState,
    /// Set when it stops being open, until the reactor takes it.
    departure: Option<Ending>,
    /// Command rate limit.
    bucket: RateBucket,
    /// Over its rate: no line is handled before this.
    rate_wait: Option<Instant>,
    /// The loop pass whose line budget `turn_lines` counts (its low 32
    /// bits: passes four billion apart look alike, which costs at most one
    /// turn's budget).
    turn_pass: u32,
    /// Lines handled in `turn_pass` (at most `MAX_LINES_PER_TURN`; a u32
    /// packs beside the small enums and keeps the session within 512 bytes).
    turn_lines: u32,
    /// When the connection was accepted (login timeout).
    connected_at: Instant,
    /// When the last command arrived (idle timeout).
    last_command: Instant,
}

/// A job's store-queue bytes as a session counts them (saturating: no
/// job comes near 4 GB).
fn bytes_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Session {
    /// A fresh, not yet logged-in session that starts by sending `greeting`.
    pub fn new(
        session: SessionRef,
        ip: IpAddr,
        transport: Transport,
        limits: Arc<Limits>,
        greeting: &[u8],
        now: Instant,
    ) -> Self {
        let mut output = Output::default();
        output.push(greeting);
        Session {
            caller: Caller {
                session,
                ip,
                user: None,
            },
            transport,
            inbuf: Vec::new(),
            framer: LineFramer::new(limits.max_line.min(PRE_LOGIN_MAX_LINE)),
            output,
            replies: ReplyOrder::default(),
            waiting_on: None,
            queued_bytes: 0,
            deferred: None,
            input: InputState::Open,
            close: CloseState::Open,
            departure: None,
            bucket: RateBucket::new(limits.rate, now),
            limits,
            rate_wait: None,
            turn_pass: 0,
            turn_lines: 0,
            connected_at: now,
            last_command: now,
        }
    }

    /// Who it is to the chat logic.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Its never-reused id.
    pub fn id(&self) -> u64 {
        self.caller.session.id
    }

    /// When it was accepted.
    pub fn connected_at(&self) -> Instant {
        self.connected_at
    }

    /// When its last command arrived (or it was accepted).
    pub fn last_command_at(&self) -> Instant {
        self.last_command
    }

    /// Whether it speaks TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.transport, Transport::Tls(_))
    }

    /// How it came in, as `natterctl sessions` shows it.
    pub fn transport_name(&self) -> &'static str {
        match &self.transport {
            Transport::Plain => "plain",
            Transport::Tls(_) => "tls",
            Transport::Web(conn) if conn.is_tls() => "web-tls",
            Transport::Web(_) => "web",
        }
    }

    /// Whether its output holds an allocation with nothing in it: the
    /// reactor calls `release_output` a moment later (see
    /// `Output::release`).
    pub fn output_spent(&self) -> bool {
        self.output.is_spent()
    }

    /// Frees its output's state if nothing is in it.
    pub fn release_output(&mut self) {
        self.output.release();
    }

    /// Heap bytes its input, output and reply queues hold: none once it
    /// is idle with everything written and its output released.
    pub fn buffer_capacity(&self) -> usize {
        self.inbuf.capacity() + self.output.heap_capacity() + self.replies.heap_capacity()
    }

    /// Whether it is serving (not closing).
    pub fn is_open(&self) -> bool {
        self.close == CloseState::Open
    }

    // ----- what it wants -----------------------------------------------

    /// Whether the reactor should read from its socket now: it is serving,
    /// its peer has not closed, and its input buffer has room.
    pub fn wants_read(&self) -> bool {
        self.is_open() && self.input == InputState::Open && self.inbuf.len() < self.inbuf_limit()
    }

    /// Whether output is waiting: in the buffer, or as TLS records or
    /// WebSocket frames.
    pub fn wants_write(&self) -> bool {
        self.transport.wants_write(&self.output)
    }

    /// When `on_deadline` should next be called: when its rate allows its
    /// next line, and the login deadline until it logs in, then the idle
    /// deadline; while closing, the linger limit; over a WebSocket, the
    /// next keepalive check too.
    pub fn deadline(&self) -> Option<Instant> {
        let due = match (self.timeout_at(), self.rate_wait.filter(|_| self.is_open())) {
            (Some(timeout), Some(rate)) => Some(timeout.min(rate)),
            (timeout, rate) => timeout.or(rate),
        };
        match self.transport.keepalive_at().filter(|_| self.is_open()) {
            Some(keepalive) => Some(due.map_or(keepalive, |d| d.min(keepalive))),
            None => due,
        }
    }

    /// When it times out (see `deadline`).
    fn timeout_at(&self) -> Option<Instant> {
        match self.close {
            CloseState::Open if self.caller.user.is_some() => {
                Some(self.last_command + self.limits.idle_timeout)
            }
            CloseState::Open => Some(self.connected_at + self.limits.login_timeout),
            CloseState::CloseAfterFlush { until } => Some(until),
            CloseState::CloseNow => None,
        }
    }

    /// Whether the reactor may remove it: closing now, or closing after a
    /// flush with everything flushed.
    pub fn is_finished(&self) -> bool {
        match self.close {
            CloseState::Open => false,
            CloseState::CloseAfterFlush { .. } => !self.wants_write(),
            CloseState::CloseNow => true,
        }
    }

    /// Whether it was closed politely (its goodbye should reach the peer).
    pub fn closes_gracefully(&self) -> bool {
        matches!(self.close, CloseState::CloseAfterFlush { .. })
    }

    /// Once, after it stops being open: why. The reactor then takes it out
    /// of the chat (it is no longer online) and counts the reason.
    pub fn take_departure(&mut self) -> Option<Ending> {
        self.departure.take()
    }

    /// Bytes read and not yet handled.
    pub fn buffered_input(&self) -> usize {
        self.inbuf.len()
    }

    /// Bytes queued and not yet written, events held behind a reply in
    /// parts included.
    pub fn pending_output(&self) -> usize {
        self.output.pending_len() + self.output.held_len()
    }

    /// Unsent bytes queued after its last reply (see [`Output::event_backlog`]).
    pub fn event_backlog(&self) -> u64 {
        self.output.event_backlog()
    }

    /// Ids of the pushed messages and inbox rows queued that never reached
    /// the kernel: still unread. From here on none of its output counts
    /// as read, so the reactor takes them when the session closes, or is
    /// replaced (its user's messages then go to the new session).
    pub fn take_unsent(&mut self) -> (Vec<i64>, Vec<i64>) {
        let (pushes, mut inbox) = self.output.take_unsent();
        if !self.is_open() {
            // Inbox replies parked behind a reply that never came.
            for (_, rows) in self.replies.take_parked() {
                inbox.extend(rows.iter().map(|(_, id)| *id));
            }
        }
        (pushes, inbox)
    }

    /// The highest (pushed, inbox) message ids whose lines reached the
    /// kernel since the last call, if any did: they now count as read.
    /// Every one of their ids is added to `ids`.
    pub fn take_left(&mut self, ids: &mut Vec<i64>) -> Option<(i64, i64)> {
        self.output.take_left(ids)
    }

    /// How much unprocessed input it may hold: one maximal line plus some
    /// slack, so an overlong line is always detected.
    fn inbuf_limit(&self) -> usize {
        let slack = if self.caller.user.is_some() {
            INBUF_SLACK_LOGGED_IN
        } else {
            INBUF_SLACK_PRE_LOGIN
        };
        self.framer.max_line() + slack
    }

    /// Whether its next line may be handled now.
    fn can_process(&self) -> bool {
        self.is_open()
            && matches!(self.input, InputState::Open | InputState::PeerClosed)
            && self.waiting_on.is_none()
            && self.rate_wait.is_none()
            && self.replies.outstanding() < MAX_IN_FLIGHT
            && self.queued_bytes as usize <= STORE_SHARE
            && (self.queued_bytes == 0
                || self.limits.store_backlog.load(Ordering::Relaxed) <= STORE_TOTAL)
            && self.output.pending_len() <= self.limits.max_outbuf
    }

    /// Whether it has a complete line it may handle now: after its output
    /// drained, say, or a job it waited for came back.
    pub fn has_work(&self) -> bool {
        self.deferred_ready()
            || (self.can_process()
                && (self.inbuf.contains(&b'\n')
                    || (self.input == InputState::PeerClosed && !self.inbuf.is_empty())))
    }

    /// Whether its held-back job may start now: every earlier command is
    /// answered, and for the next part of a reply, the last one has mostly
    /// left.
    fn deferred_ready(&self) -> bool {
        self.is_open()
            && self.deferred.as_ref().is_some_and(|d| {
                self.replies.outstanding() == 1
                    && (!d.drained || self.output.pending_len() <= PART_LOW_WATER)
            })
    }

    /// Starts its held-back job if it may start now.
    fn start_deferred(&mut self, out: &mut Outbox) {
        if self.deferred_ready() {
            if let Some(d) = self.deferred.take() {
                out.jobs.push((d.job, Some(d.reply_to)));
            }
        }
    }

    // ----- bytes in and out ---------------------------------------------

    /// Reads what `socket` has, up to the input limit. An error closes the
    /// session at once (and is returned for the log).
    pub fn read_from(&mut self, socket: &mut (impl Read + Write)) -> io::Result<ReadStatus> {
        let limit = self.inbuf_limit();
        let max_line = self.framer.max_line();
        match self
            .transport
            .read(socket, &mut self.inbuf, limit, max_line)
        {
            Ok(ReadStatus::Eof) => {
                if self.input == InputState::Open {
                    self.input = InputState::PeerClosed;
                }
                Ok(ReadStatus::Eof)
            }
            Ok(status) => Ok(status),
            Err(e) => {
                self.close_now(self.transport.failure(&e));
                Err(e)
            }
        }
    }

    /// Writes what `socket` takes. An error closes the session at once.
    pub fn write_to(&mut self, socket: &mut impl Write) -> io::Result<()> {
        if self.close == CloseState::CloseNow {
            return Ok(());
        }
        let result = self.transport.write(socket, &mut self.output);
        if result.is_err() {
            self.close_now(Ending::IoError);
        }
        result
    }

    /// Best-effort TLS close_notify before the socket is closed.
    pub fn close_transport(&mut self, socket: &mut impl Write) {
        self.transport.close_notify(socket);
    }

    // ----- lines -----------------------------------------------------------

    /// Handles the complete lines it may handle now, at most
    /// `MAX_LINES_PER_TURN` in loop pass `pass`. Returns true if its turn
    /// ran out with lines left: the reactor gives it another next pass.
    pub fn process(&mut self, chat: &mut Chat, now: Clock, pass: u64, out: &mut Outbox) -> bool {
        if self.turn_pass != pass as u32 {
            self.turn_pass = pass as u32;
            self.turn_lines = 0;
        }
        // The next part of a long reply, once the last has mostly left.
        self.start_deferred(out);
        // Taken out so lines can be borrowed from it while `self` changes.
        let inbuf = std::mem::take(&mut self.inbuf);
        let mut consumed = 0;
        let mut turn_over = false;
        while self.can_process() {
            if self.turn_lines as usize >= MAX_LINES_PER_TURN {
                turn_over = consumed < inbuf.len();
                break;
            }
            let rest = &inbuf[consumed..];
            let (used, frame) = self.framer.next_frame(rest);
            self.telnet_replies();
            let (used, line) = match frame {
                Some(Frame::Line(line)) => (used, line),
                // The peer closed after a last line without LF: netcat
                // users forget it; treat it as a line.
                None if used == 0 && self.input == InputState::PeerClosed && !rest.is_empty() => {
                    (rest.len(), self.framer.last_line(rest))
                }
                None if used == 0 => break,
                None => {
                    consumed += used;
                    self.turn_lines += 1;
                    continue;
                }
                Some(Frame::TooLong) => {
                    // Already discarded by the framer, so answered now; its
                    // token is owed, and the next line waits for it.
                    consumed += used;
                    self.bucket.charge(self.limits.rate, 1, now.mono);
                    let max_line = self.framer.max_line();
                    let refused = Err(commands::ParseError::TooLong { max_line });
                    self.handle_parsed(refused, chat, now, out);
                    continue;
                }
            };
            let Some(parsed) = commands::parse_line(&line, self.caller.user.as_deref()).transpose()
            else {
                consumed += used;
                // Blank lines get no reply and take no token, but they cost
                // the loop time: they count against the turn.
                self.turn_lines += 1;
                continue;
            };
            let cost = parsed.as_ref().map_or(1, commands::Command::rate_cost);
            if let Err(ready_at) = self.bucket.take(self.limits.rate, cost, now.mono) {
                // Over its rate: the line stays unread until the bucket
                // has refilled, and TCP slows the sender meanwhile.
                self.rate_wait = Some(ready_at);
                break;
            }
            consumed += used;
            self.handle_parsed(parsed, chat, now, out);
        }
        self.inbuf = inbuf;
        self.consume_input(consumed);
        self.maybe_finish(now.mono);
        turn_over
    }

    /// Sends the telnet answers framing owes the peer (see
    /// `natter_proto::framing`): they are not replies to a command, so they
    /// go out at once, ahead of replies still waiting for their turn.
    fn telnet_replies(&mut self) {
        let replies = self.framer.take_replies();
        if !replies.is_empty() && self.close == CloseState::Open {
            self.output.push_reply(&replies);
        }
    }

    /// One command line (or a refused one), its rate already paid: its
    /// place in the reply order, activity, then the chat's answer.
    fn handle_parsed(
        &mut self,
        parsed: Result<commands::Command, commands::ParseError>,
        chat: &mut Chat,
        now: Clock,
        out: &mut Outbox,
    ) {
        self.turn_lines += 1;
        let seq = self.replies.begin();
        self.last_command = now.mono;
        match parsed {
            Err(e) => self.release(seq, e.reply(), Vec::new()),
            Ok(cmd) => {
                let queued = out.effects.deliveries.len();
                let step = chat.execute(&self.caller, cmd, now, &mut out.effects);
                let fanned_out = out.effects.deliveries.len().saturating_sub(queued);
                let weight = u32::try_from(fanned_out / DELIVERIES_PER_LINE).unwrap_or(u32::MAX);
                self.turn_lines = self.turn_lines.saturating_add(weight);
                self.absorb(&mut out.effects);
                self.step(seq, step, out);
            }
        }
    }

    /// Takes the effects meant for this session itself out of `fx`.
    fn absorb(&mut self, fx: &mut Effects) {
        if let Some(user) = fx.logged_in.take() {
            self.caller.user = Some(user);
            // A member may send longer lines than a stranger.
            self.framer.set_max_line(self.limits.max_line);
        }
        if std::mem::take(&mut fx.quit) && self.input != InputState::Shutdown {
            self.input = InputState::Quit;
        }
    }

    /// Acts on what the chat answered for command `seq`.
    fn step(&mut self, seq: u64, step: Step, out: &mut Outbox) {
        match step {
            Step::Reply(reply) => self.release(seq, reply, Vec::new()),
            Step::Inbox { reply, rows } => self.release(seq, reply, rows),
            Step::More { part, next } => {
                // Only the reply next out is ever sent in parts (a history
                // starts once every earlier command is answered), so the
                // part goes straight to the output; its completion comes
                // through `release` with the last part.
                debug_assert_eq!(self.replies.outstanding(), 1);
                if self.close == CloseState::Open {
                    self.output.push_reply_part(&part);
                }
                self.waiting_on = NonZeroU64::new(seq);
                let reply_to = ReplyTo {
                    session: self.caller.session,
                    seq,
                };
                self.deferred = Some(Box::new(Deferred {
                    job: next,
                    reply_to,
                    drained: true,
                }));
            }
            // Only a job whose caller is gone ends without a word; a command
            // still gets its place in the order released.
            Step::Done => self.release(seq, Vec::new(), Vec::new()),
            Step::Wait(job) => {
                self.queued_bytes = self
                    .queued_bytes
                    .saturating_add(bytes_u32(job.cont.queued_bytes()));
                if job.cont.is_barrier() {
                    self.waiting_on = NonZeroU64::new(seq);
                }
                let reply_to = ReplyTo {
                    session: self.caller.session,
                    seq,
                };
                if job.cont.replies_in_parts() && self.replies.outstanding() > 1 {
                    // History is read on its own connection, which does not
                    // wait for the writes of this session's earlier
                    // commands: it starts once they are answered (and so
                    // its reply is the next out, which its parts rely on).
                    self.deferred = Some(Box::new(Deferred {
                        job,
                        reply_to,
                        drained: false,
                    }));
                } else {
                    out.jobs.push((job, Some(reply_to)));
                }
            }
        }
    }

    /// Gives command `seq` its reply and queues every reply now in order.
    fn release(&mut self, seq: u64, reply: Vec<u8>, rows: Vec<(usize, i64)>) {
        let output = &mut self.output;
        let open = self.close == CloseState::Open;
        self.replies.finish(seq, (reply, rows), |(bytes, rows)| {
            if open && !bytes.is_empty() {
                output.push_reply_rows(&bytes, &rows);
            } else {
                // Never queued: its rows stay unread.
                output.never_sent(&rows);
            }
        });
    }

    /// A job for command `seq` is back. Only called while it is open; the
    /// reactor completes jobs of closing sessions without them.
    pub fn complete(
        &mut self,
        chat: &mut Chat,
        seq: u64,
        cont: Cont,
        result: WorkResult,
        now: Clock,
        out: &mut Outbox,
    ) {
        self.queued_bytes = self
            .queued_bytes
            .saturating_sub(bytes_u32(cont.queued_bytes()));
        let step = chat.complete(Some(&self.caller), cont, result, now, &mut out.effects);
        self.absorb(&mut out.effects);
        if self.waiting_on.map(NonZeroU64::get) == Some(seq) {
            self.waiting_on = None;
        }
        self.step(seq, step, out);
        self.start_deferred(out);
        self.maybe_finish(now.mono);
    }

    /// Removes the first `consumed` bytes of input (all handled lines),
    /// giving the allocation back once the buffer is empty: an idle session
    /// keeps none (issue 16), and the next read allocates what it needs.
    fn consume_input(&mut self, consumed: usize) {
        let consumed = consumed.min(self.inbuf.len());
        self.inbuf.drain(..consumed);
        if self.inbuf.is_empty() {
            self.inbuf = Vec::new();
        }
    }

    /// Closes a session that is done, once every reply it is owed is queued:
    /// after `quit`, at EOF, or during shutdown.
    fn maybe_finish(&mut self, now: Instant) {
        if !self.is_open() || self.replies.outstanding() > 0 {
            return;
        }
        match self.input {
            InputState::Quit => self.close_after_flush(Ending::Quit, now),
            InputState::PeerClosed if self.inbuf.is_empty() => {
                self.close_after_flush(Ending::PeerClosed, now)
            }
            InputState::Shutdown => self.say_bye(ByeReason::Shutdown, now),
            InputState::Open | InputState::PeerClosed => {}
        }
    }

    // ----- events, timers, closing ---------------------------------------

    /// Queues an event line (a stored direct message's id is tracked until
    /// written, so a session dropped before that gives it back).
    pub fn push_event(&mut self, line: &Rc<[u8]>, stored_id: Option<i64>) -> Pushed {
        if !self.is_open() {
            return Pushed::Refused;
        }
        if self.transport.shares_lines() && line.len() >= SHARE_MIN_LINE {
            self.output.push_event_shared(line, stored_id);
        } else {
            self.output.push_event(line, stored_id);
        }
        if self.over_backlog() {
            Pushed::OverLimit
        } else {
            Pushed::Taken
        }
    }

    /// Whether what it has not read of what it did not ask for is past the limit.
    pub fn over_backlog(&self) -> bool {
        self.output.event_backlog() > self.limits.max_outbuf as u64
    }

    /// Drops a reader whose backlog stays past the limit.
    pub fn drop_slow(&mut self) {
        self.close_now(Ending::Bye(ByeReason::Slow));
    }

    /// Drops it to bring all sessions' output back under the total budget.
    pub fn drop_over_budget(&mut self) {
        self.close_now(Ending::OverBudget);
    }

    /// Its deadline came (or an earlier one it had): closes it if it really
    /// is due, by what it is now.
    pub fn on_deadline(&mut self, now: Instant) {
        if self.is_open() && !self.transport.keepalive(now) {
            self.close_now(Ending::WebSocketError);
            return;
        }
        if self.rate_wait.is_some_and(|at| at <= now) {
            self.rate_wait = None;
        }
        if self.timeout_at().is_none_or(|due| due > now) {
            return;
        }
        match self.close {
            CloseState::CloseAfterFlush { .. } => self.close_now(Ending::Linger),
            CloseState::Open if self.caller.user.is_some() => self.say_bye(ByeReason::Idle, now),
            CloseState::Open => self.say_bye(ByeReason::Timeout, now),
            CloseState::CloseNow => {}
        }
    }

    /// The server is shutting down: no more lines; `* bye shutdown` once
    /// every reply it is owed is out.
    pub fn begin_shutdown(&mut self, now: Instant) {
        if self.input != InputState::Quit {
            self.input = InputState::Shutdown;
        }
        self.maybe_finish(now);
    }

    /// Sends `* bye <reason>` and closes once it is written.
    pub fn say_bye(&mut self, reason: ByeReason, now: Instant) {
        if self.is_open() {
            if self.output.in_parts() {
                // A reply going out in parts ends here, with its one
                // completion, so the goodbye does not land inside it.
                self.deferred = None;
                let cut = protocol::err(
                    protocol::ErrorCode::Internal,
                    "reply cut short: the session is closing",
                );
                self.output.push_reply_rows(&cut, &[]);
            }
            self.output.push(&protocol::bye(reason));
        }
        self.close_after_flush(Ending::Bye(reason), now);
    }

    fn close_after_flush(&mut self, why: Ending, now: Instant) {
        if self.is_open() {
            self.transport.closing(why);
            self.close = CloseState::CloseAfterFlush {
                until: now + CLOSE_LINGER,
            };
            self.departure = Some(why);
        }
    }

    /// Closes at the end of the pass, writing nothing more.
    pub fn close_now(&mut self, why: Ending) {
        if self.is_open() {
            self.departure = Some(why);
        }
        self.close = CloseState::CloseNow;
    }
}

#[cfg(test)]
mod tests;
