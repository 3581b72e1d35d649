//! The readiness loop. It owns the `mio::Poll`, the listener, every session
//! (a `Slab` indexed by token), the deadline set, the one `Waker` through
//! which the store and hashing threads report back, and the signal source.
//! It is the only place that registers, reregisters or deregisters sockets.
//!
//! One pass: poll (timeout = earliest deadline, or zero while work is left
//! over), handle every event, give resumed sessions their turn, fire due
//! timers, write every pending reply and a slice of event output, reap
//! closed sessions.
//! Nothing here blocks: disk and hashing go to their threads, and their
//! results come back through the completion channel.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::auth::{self, HashOutcome, HashWork, HasherPool};
use crate::commands::{
    self, Account, Caller, Chat, ChatSettings, Clock, Cont, Effects, Job, LockKey, SessionRef,
    Step, Work, WorkResult,
};
use crate::config::{Config, Registration};
use crate::protocol::{self, ByeReason, ErrorCode};
use crate::session::{CloseState, Frame, RateBucket, Session, Transport, MAX_IN_FLIGHT};
use crate::store::{Store, StoreHandle, StoreRequest};

const LISTENER: Token = Token(usize::MAX - 1);
const TLS_LISTENER: Token = Token(usize::MAX - 4);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

/// Readiness events taken per poll. More only means fewer polls under load.
const EVENTS_CAPACITY: usize = 1024;
/// How long a shutdown waits for replies to be flushed before giving up;
/// under the 5 seconds the contract promises, with room for the final commit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);
/// How long a closing session may take to drain its output.
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// Pause before accepting again after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Most unread input thrown away when closing politely (see
/// `Session::discard_input`); beyond that a peer still sending gets a reset.
const DISCARD_ON_CLOSE: usize = 1 << 20;
/// Lines one session may have handled per loop pass. A client pipelining
/// thousands of broadcasts would otherwise hold the loop for the whole burst
/// while everyone else's events wait; the rest of its input is handled on the
/// next pass, after the events that arrived meanwhile.
const MAX_LINES_PER_TURN: usize = 64;
/// Sessions whose event output is written per pass. Each write to a local
/// peer costs microseconds (the kernel delivers it in our time), so a
/// fan-out to 1000 in one go would hold the loop for milliseconds; in slices
/// of this size, input (a ping) waits at most one slice.
const MAX_EVENT_FLUSHES_PER_PASS: usize = 128;
/// Hashing threads. Argon2 at normal cost takes tens of milliseconds and
/// 19 MiB; two workers keep logins flowing without starving the loop's core.
const HASH_THREADS: usize = 2;

/// Routing for a background job's result: which session and command it
/// answers (none for background writes) and what to do with it.
#[derive(Debug)]
pub struct Tag {
    target: Option<(SessionRef, u64)>,
    cont: Cont,
}

/// A finished background job on its way back to the loop.
#[derive(Debug)]
pub struct Completion {
    tag: Tag,
    result: WorkResult,
}

/// What a deadline is for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Login timeout, idle timeout or close linger of a session.
    Session(SessionRef),
    /// A lockout record may be forgotten.
    Lock(LockKey),
    /// Accepting was paused for lack of file descriptors.
    AcceptRetry,
}

/// Counters for the log at shutdown (and for operators reading it).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: u64,
    /// Refused at --max-clients.
    pub refused_busy: u64,
    /// Refused at --max-per-ip.
    pub refused_per_ip: u64,
    /// Dropped for not reading their output.
    pub closed_slow: u64,
    /// Dropped for flooding past the rate limit.
    pub closed_flood: u64,
    /// Closed by the idle timeout.
    pub closed_idle: u64,
    /// Closed by the login timeout.
    pub closed_login_timeout: u64,
    /// Failed accept calls.
    pub accept_errors: u64,
}

/// Asks a running server to shut down as on SIGTERM (for in-process use).
#[derive(Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    /// Starts the graceful shutdown.
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake the loop for shutdown: {e}");
        }
    }
}

/// The sockets a server accepts on: plaintext, TLS, or both.
pub struct Listeners {
    /// Plaintext line protocol.
    pub plain: Option<StdListener>,
    /// The same protocol inside TLS, with the configuration for its sessions.
    pub tls: Option<(StdListener, Arc<rustls::ServerConfig>)>,
}

/// The server: everything the loop owns.
pub struct Server {
    poll: Poll,
    /// The plaintext listener, if any.
    listener: Option<TcpListener>,
    /// The TLS listener and its configuration, if any.
    tls_listener: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    /// Whether the listeners are registered (they are not during shutdown).
    listening: bool,
    /// No accepting before this (file descriptors ran out).
    accept_paused_until: Option<Instant>,
    sessions: Slab<Session>,
    /// Open sessions per peer address, for --max-per-ip.
    per_ip: HashMap<IpAddr, usize>,
    /// Next session id; ids are never reused.
    next_id: u64,
    chat: Chat,
    config: Config,
    /// Every timer, earliest first. Entries are never removed early; a
    /// firing entry is checked against the current state (lazy deletion).
    deadlines: BTreeSet<(Instant, Timer)>,
    store: StoreHandle<Tag>,
    hasher: HasherPool<Tag>,
    completions: Receiver<Completion>,
    /// Jobs that could not be handed to their thread; answered on the next pass.
    failed_jobs: Vec<Completion>,
    waker: Arc<Waker>,
    shutdown_flag: Arc<AtomicBool>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// Sessions with output to write at the end of the pass.
    to_flush: VecDeque<usize>,
    /// Sessions with a reply to write: written every pass, before events,
    /// so a ping's answer never waits behind a fan-out.
    to_flush_now: Vec<usize>,
    /// Sessions marked for closing, reaped at the end of the pass.
    to_close: Vec<usize>,
    /// Sessions with input left over after their turn, resumed next pass.
    to_resume: Vec<SessionRef>,
    /// Background jobs not yet answered.
    jobs_in_flight: usize,
    /// Set once shutdown starts: the time by which the loop exits regardless.
    shutting_down: Option<Instant>,
    /// Time as of the current pass.
    clock: Clock,
    /// Refused connections (busy, per address) are logged at most once a second.
    refusal_log: LogThrottle,
    /// Failed TLS handshakes likewise.
    tls_error_log: LogThrottle,
    stats: Stats,
}

fn now_clock() -> Clock {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Clock {
        mono: Instant::now(),
        wall,
    }
}

fn other_error(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

impl Server {
    /// Opens the store, loads the chat state, imports `--users`, starts the
    /// store and hashing threads and takes over `listener`. Blocking work is
    /// fine here: the loop has not started.
    pub fn new(listener: StdListener, config: Config) -> io::Result<Server> {
        let listeners = Listeners {
            plain: Some(listener),
            tls: None,
        };
        Server::with_listeners(listeners, config)
    }

    /// Like [`Server::new`], with any combination of plaintext and TLS listeners.
    pub fn with_listeners(listeners: Listeners, config: Config) -> io::Result<Server> {
        config.validate().map_err(other_error)?;
        let mut store = Store::open(&config.data).map_err(|e| other_error(e.to_string()))?;
        store.set_fault_file(config.store_fault_file.clone());
        if let Some(path) = &config.users {
            import_users(&mut store, path, &config)?;
        }
        let snapshot = store
            .load()
            .map_err(|e| other_error(format!("cannot load {}: {e}", store.path().display())))?;
        let mut accounts: HashMap<String, Account> = snapshot
            .users
            .into_iter()
            .map(|(name, (hash, last_seen))| {
                let unread = snapshot.unread.get(&name).copied().unwrap_or(0);
                let account = Account {
                    hash,
                    unread,
                    last_seen,
                    blocks: Default::default(),
                };
                (name, account)
            })
            .collect();
        for (blocker, blocked) in snapshot.blocks {
            if let Some(a) = accounts.get_mut(&blocker) {
                a.blocks.insert(blocked);
            }
        }
        let dummy_hash =
            auth::hash_password("natter-dummy-password", config.hash_cost).map_err(other_error)?;
        let chat = Chat::new(ChatSettings::from(&config), accounts, dummy_hash);
        log::info!(
            "{} users loaded from {}",
            chat.user_count(),
            store.path().display()
        );

        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (done_tx, completions) = mpsc::channel::<Completion>();

        let store_tx = done_tx.clone();
        let store_waker = Arc::clone(&waker);
        let store = store.spawn(move |batch| {
            for (tag, result) in batch {
                let _ = store_tx.send(Completion {
                    tag,
                    result: WorkResult::Store(result),
                });
            }
            // One wake per batch: the loop drains the channel until empty.
            let _ = store_waker.wake();
        })?;
        let hash_waker = Arc::clone(&waker);
        let hasher = HasherPool::spawn(HASH_THREADS, move |tag, outcome| {
            let _ = done_tx.send(Completion {
                tag,
                result: WorkResult::Hash(outcome),
            });
            let _ = hash_waker.wake();
        })?;

        let listener = match listeners.plain {
            Some(l) => {
                l.set_nonblocking(true)?;
                let mut l = TcpListener::from_std(l);
                poll.registry()
                    .register(&mut l, LISTENER, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        let tls_listener = match listeners.tls {
            Some((l, tls)) => {
                l.set_nonblocking(true)?;
                let mut l = TcpListener::from_std(l);
                poll.registry()
                    .register(&mut l, TLS_LISTENER, Interest::READABLE)?;
                Some((l, tls))
            }
            None => None,
        };

        Ok(Server {
            poll,
            listener,
            tls_listener,
            listening: true,
            accept_paused_until: None,
            sessions: Slab::new(),
            per_ip: HashMap::new(),
            next_id: 1,
            chat,
            config,
            deadlines: BTreeSet::new(),
            store,
            hasher,
            completions,
            failed_jobs: Vec::new(),
            waker,
            shutdown_flag: Arc::new(AtomicBool::new(false)),
            signals: None,
            to_flush: VecDeque::new(),
            to_flush_now: Vec::new(),
            to_close: Vec::new(),
            to_resume: Vec::new(),
            jobs_in_flight: 0,
            shutting_down: None,
            clock: now_clock(),
            refusal_log: LogThrottle::default(),
            tls_error_log: LogThrottle::default(),
            stats: Stats::default(),
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Some(l) => l.local_addr(),
            None => Err(other_error("no plaintext listener")),
        }
    }

    /// The address the TLS listener is bound to.
    pub fn tls_addr(&self) -> io::Result<SocketAddr> {
        match &self.tls_listener {
            Some((l, _)) => l.local_addr(),
            None => Err(other_error("no TLS listener")),
        }
    }

    /// A handle that shuts the server down gracefully from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            flag: Arc::clone(&self.shutdown_flag),
            waker: Arc::clone(&self.waker),
        }
    }

    /// Makes SIGINT and SIGTERM start a graceful shutdown.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Runs the loop until shutdown. Only a failing `poll` ends it early.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // Turns that ended last pass resume after this pass's events.
            let resumes = std::mem::take(&mut self.to_resume);
            // poll can return late; every decision of this pass uses this time.
            self.clock = now_clock();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_ready(false),
                    TLS_LISTENER => self.accept_ready(true),
                    WAKER => self.drain_completions(),
                    SIGNALS => self.on_signals(),
                    Token(token) => {
                        if event.is_writable() {
                            self.flush_one(token);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read_ready(token);
                        }
                    }
                }
            }
            self.drain_completions();
            self.resume_turns(resumes);
            self.fire_timers();
            if self.shutting_down.is_none() && self.shutdown_flag.load(Ordering::SeqCst) {
                self.begin_shutdown();
            }
            self.flush_all();
            self.reap();
            if let Some(deadline) = self.shutting_down {
                let idle = self.sessions.is_empty() && self.jobs_in_flight == 0;
                if idle || self.clock.mono >= deadline {
                    break;
                }
            }
        }
        self.return_unsent_direct();
        self.finish();
        Ok(())
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let mut next = self.deadlines.first().map(|(at, _)| *at);
        if let Some(deadline) = self.shutting_down {
            next = Some(next.map_or(deadline, |n| n.min(deadline)));
        }
        if !self.failed_jobs.is_empty()
            || !self.to_resume.is_empty()
            || !self.to_flush.is_empty()
            || !self.to_flush_now.is_empty()
        {
            return Some(Duration::ZERO);
        }
        next.map(|at| at.saturating_duration_since(Instant::now()))
    }

    // ----- accepting -------------------------------------------------------

    fn accept_ready(&mut self, tls: bool) {
        while self.listening {
            if self
                .accept_paused_until
                .is_some_and(|t| t > self.clock.mono)
            {
                return;
            }
            let accepted = match (tls, &self.listener, &self.tls_listener) {
                (false, Some(l), _) => l.accept().map(|(s, a)| (s, a, None)),
                (true, _, Some((l, cfg))) => l.accept().map(|(s, a)| (s, a, Some(Arc::clone(cfg)))),
                _ => return,
            };
            match accepted {
                Ok((stream, addr, tls)) => self.admit(stream, addr, tls),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_resource_exhaustion(&e) => {
                    // Out of descriptors or memory: the pending connection stays
                    // in the backlog. Keep serving who we have; try again soon.
                    self.stats.accept_errors += 1;
                    log::warn!("accept failed ({e}); pausing accepts for {ACCEPT_BACKOFF:?}");
                    let at = self.clock.mono + ACCEPT_BACKOFF;
                    self.accept_paused_until = Some(at);
                    self.deadlines.insert((at, Timer::AcceptRetry));
                    return;
                }
                Err(e) => {
                    // A connection that died in the backlog and the like.
                    self.stats.accept_errors += 1;
                    log::debug!("accept failed: {e}");
                }
            }
        }
    }

    fn admit(
        &mut self,
        mut stream: TcpStream,
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) {
        if self.sessions.len() >= self.config.max_clients {
            self.stats.refused_busy += 1;
            if let Some(skipped) = self.refusal_log.allow(self.clock.mono) {
                log::warn!(
                    "refusing {addr}: {} clients connected{}",
                    self.sessions.len(),
                    skipped_note(skipped)
                );
            }
            refuse(&mut stream, tls.is_some());
            return;
        }
        let per_ip = self.per_ip.get(&addr.ip()).copied().unwrap_or(0);
        if self.config.max_per_ip > 0 && per_ip >= self.config.max_per_ip {
            self.stats.refused_per_ip += 1;
            if let Some(skipped) = self.refusal_log.allow(self.clock.mono) {
                log::warn!(
                    "refusing {addr}: {per_ip} connections from that address{}",
                    skipped_note(skipped)
                );
            }
            refuse(&mut stream, tls.is_some());
            return;
        }
        // Replies and events are already batched per loop pass; Nagle's
        // algorithm would only hold the tail of a batch for the peer's
        // delayed ACK (measured: 40 ms stalls on pipelined sends).
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("cannot set TCP_NODELAY for {addr}: {e}");
        }
        let transport = match tls {
            None => Transport::Plain,
            Some(cfg) => match rustls::ServerConnection::new(cfg) {
                Ok(conn) => Transport::Tls(Box::new(conn)),
                Err(e) => {
                    log::warn!("cannot start TLS for {addr}: {e}");
                    return;
                }
            },
        };
        let entry = self.sessions.vacant_entry();
        let token = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(token), Interest::READABLE)
        {
            log::warn!("cannot register connection from {addr}: {e}");
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let now = self.clock.mono;
        let caller = Caller {
            session: SessionRef { token, id },
            ip: addr.ip(),
            user: None,
        };
        let bucket = RateBucket::new(self.config.rate, self.config.burst, now);
        let mut session = Session::new(
            id,
            stream,
            transport,
            caller,
            self.config.max_line,
            bucket,
            now,
        );
        session.push_output(&greeting(&self.config));
        let deadline = session.deadline(self.config.login_timeout(), self.config.idle_timeout());
        session.timer_at = Some(deadline);
        entry.insert(session);
        *self.per_ip.entry(addr.ip()).or_default() += 1;
        self.deadlines
            .insert((deadline, Timer::Session(SessionRef { token, id })));
        self.stats.accepted += 1;
        log::debug!("session {id} connected from {addr}");
        self.queue_flush_now(token);
    }

    // ----- reading and commands --------------------------------------------

    fn read_ready(&mut self, token: usize) {
        let Some(s) = self.sessions.get_mut(token) else {
            return;
        };
        if s.close != CloseState::Open || s.read_closed {
            return;
        }
        let tls = matches!(s.transport, Transport::Tls(_));
        if !s.turn_over {
            s.turn_lines = 0;
        }
        match s.read_from_socket() {
            Ok(full) => s.read_paused = full,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // A failed handshake or garbage on the TLS port: worth an
                // operator's eye, not a warning.
                if let Some(skipped) = self.tls_error_log.allow(self.clock.mono) {
                    log::info!(
                        "session {} from {}: {e}; closing{}",
                        s.id,
                        s.ip,
                        skipped_note(skipped)
                    );
                }
                self.mark_close(token, CloseState::CloseNow);
                return;
            }
            Err(e) => {
                log::debug!("session {}: read error: {e}", s.id);
                self.mark_close(token, CloseState::CloseNow);
                return;
            }
        }
        if tls {
            // Reading may have produced handshake messages or alerts to send.
            self.queue_flush_now(token);
        }
        self.drive(token);
    }

    /// Whether the session's next line may be handled now.
    fn can_process(&self, s: &Session) -> bool {
        s.close == CloseState::Open
            && !s.barrier
            && !s.quit
            && s.replies.outstanding() < MAX_IN_FLIGHT
            && s.pending_output() <= self.config.max_outbuf
            && !s.turn_over
            && self.shutting_down.is_none()
    }

    /// Handles whatever input the session may handle now, reading more while
    /// reading had been paused for room, then closes it if it is done.
    fn drive(&mut self, token: usize) {
        loop {
            self.process_lines(token);
            let Some(s) = self.sessions.get(token) else {
                return;
            };
            let resume_read = s.read_paused
                && !s.read_closed
                && s.inbuf.len() < s.inbuf_limit()
                && self.can_process(s);
            if !resume_read {
                break;
            }
            let Some(s) = self.sessions.get_mut(token) else {
                return;
            };
            let before = s.inbuf.len();
            match s.read_from_socket() {
                Ok(full) => s.read_paused = full,
                Err(e) => {
                    log::debug!("session {}: read error: {e}", s.id);
                    self.mark_close(token, CloseState::CloseNow);
                    return;
                }
            }
            if s.inbuf.len() == before && !s.read_closed {
                break;
            }
        }
        self.maybe_finish(token);
    }

    /// Frames and handles complete lines, then compacts the buffer once.
    fn process_lines(&mut self, token: usize) {
        let mut consumed = 0;
        loop {
            let Some(s) = self.sessions.get(token) else {
                return;
            };
            if !self.can_process(s) {
                break;
            }
            let Some(s) = self.sessions.get_mut(token) else {
                return;
            };
            if s.turn_lines >= MAX_LINES_PER_TURN {
                s.turn_over = true;
                self.to_resume.push(s.caller.session);
                break;
            }
            s.turn_lines += 1;
            let (used, frame) = s.framer.next_frame(&s.inbuf[consumed..]);
            match frame {
                None if used == 0 => {
                    if s.read_closed && consumed < s.inbuf.len() {
                        // The peer closed after a last line without LF: netcat
                        // users forget it; treat it as a line.
                        let line = s.inbuf[consumed..].to_vec();
                        consumed = s.inbuf.len();
                        self.handle_line(token, line);
                        continue;
                    }
                    break;
                }
                None => consumed += used,
                Some(Frame::TooLong) => {
                    consumed += used;
                    self.reply_too_long(token);
                }
                Some(Frame::Line(line)) => {
                    let line = line.to_vec();
                    consumed += used;
                    self.handle_line(token, line);
                }
            }
        }
        if let Some(s) = self.sessions.get_mut(token) {
            s.consume_input(consumed);
        }
    }

    /// Gives sessions whose turn ended with input left their next turn.
    fn resume_turns(&mut self, resumes: Vec<SessionRef>) {
        for sref in resumes {
            if let Some(s) = self
                .sessions
                .get_mut(sref.token)
                .filter(|s| s.id == sref.id)
            {
                s.turn_over = false;
                s.turn_lines = 0;
                self.drive(sref.token);
            }
        }
    }

    /// Answers an overlong line: a command line like any other for rate
    /// limiting, refused with `TOOLONG`.
    fn reply_too_long(&mut self, token: usize) {
        let Some(seq) = self.begin_command(token) else {
            return;
        };
        if let Some(s) = self.sessions.get(token) {
            let text = format!("line longer than {} bytes discarded", s.framer.max_line());
            self.release(token, seq, protocol::err(ErrorCode::TooLong, &text));
        }
    }

    /// Starts a command line: gives it its place in the reply order, counts
    /// it as activity, and takes a rate token. Returns its sequence number,
    /// or `None` if it was refused (`RATE`, perhaps `* bye flood`).
    fn begin_command(&mut self, token: usize) -> Option<u64> {
        let now = self.clock;
        let flood_limit = self.flood_limit();
        let s = self.sessions.get_mut(token)?;
        let seq = s.replies.begin();
        s.last_command = now.mono;
        if s.bucket.try_take(now.mono) {
            s.rate_strikes = 0;
            return Some(seq);
        }
        s.rate_strikes += 1;
        let flooding = s.rate_strikes >= flood_limit;
        let id = s.id;
        let refusal = protocol::err(ErrorCode::Rate, "too many commands; slow down");
        self.release(token, seq, refusal);
        if flooding {
            self.stats.closed_flood += 1;
            log::warn!(
                "session {id}: closing, still flooding after {flood_limit} refused commands"
            );
            self.say_bye(token, ByeReason::Flood);
        }
        None
    }

    fn handle_line(&mut self, token: usize, line: Vec<u8>) {
        if line.iter().all(|b| *b == b' ' || *b == b'\t') {
            return;
        }
        let now = self.clock;
        let Some(seq) = self.begin_command(token) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(token) else {
            return;
        };
        let Ok(text) = std::str::from_utf8(&line) else {
            self.release(
                token,
                seq,
                protocol::err(ErrorCode::BadUtf8, "line is not valid UTF-8"),
            );
            return;
        };
        if protocol::has_forbidden_control(text) {
            self.release(
                token,
                seq,
                protocol::err(ErrorCode::BadText, "control characters are not allowed"),
            );
            return;
        }
        let cmd = match commands::parse(text, s.caller.user.is_some()) {
            Ok(cmd) => cmd,
            Err(reply) => {
                self.release(token, seq, reply);
                return;
            }
        };
        let mut fx = Effects::default();
        let step = self.chat.execute(&mut s.caller, cmd, now, &mut fx);
        if fx.close_caller {
            s.quit = true;
        }
        let session = s.caller.session;
        match step {
            Step::Reply(reply) => self.release(token, seq, reply),
            Step::Wait(job) => {
                s.barrier = job.cont.is_barrier();
                self.dispatch(job, Some((session, seq)));
            }
        }
        self.apply(fx);
    }

    /// Consecutive `RATE` refusals after which a client is dropped for flooding.
    fn flood_limit(&self) -> u32 {
        self.config.burst.max(10).saturating_mul(2)
    }

    /// Gives a command its reply and writes every reply now in order.
    fn release(&mut self, token: usize, seq: u64, reply: Vec<u8>) {
        let Some(s) = self.sessions.get_mut(token) else {
            return;
        };
        for bytes in s.replies.finish(seq, reply) {
            s.push_reply(&bytes);
        }
        self.queue_flush_now(token);
    }

    /// Closes a finished session: after `quit`, at EOF, or during shutdown,
    /// once every reply it is owed has been written to its buffer.
    fn maybe_finish(&mut self, token: usize) {
        let shutting_down = self.shutting_down.is_some();
        let Some(s) = self.sessions.get(token) else {
            return;
        };
        if s.close != CloseState::Open || s.replies.outstanding() > 0 {
            return;
        }
        if s.quit || (s.read_closed && s.inbuf.is_empty()) {
            self.mark_close(token, CloseState::CloseAfterFlush);
        } else if shutting_down {
            self.say_bye(token, ByeReason::Shutdown);
        }
    }

    // ----- background work -------------------------------------------------

    fn dispatch(&mut self, job: Job, target: Option<(SessionRef, u64)>) {
        self.jobs_in_flight += 1;
        let tag = Tag {
            target,
            cont: job.cont,
        };
        let failed = match job.work {
            Work::Store(request) => self.store.submit(request, tag).err().map(|(_, tag)| {
                (
                    tag,
                    WorkResult::Store(Err("the store thread has stopped".into())),
                )
            }),
            Work::Hash(work) => self.hasher.submit(work, tag).err().map(|(work, tag)| {
                let outcome = match work {
                    HashWork::Verify { .. } => HashOutcome::Verified(false),
                    HashWork::Hash { .. } => {
                        HashOutcome::Hashed(Err("the hashing threads have stopped".into()))
                    }
                };
                (tag, WorkResult::Hash(outcome))
            }),
        };
        if let Some((tag, result)) = failed {
            log::error!("background job could not be queued");
            // Answered on the next pass, never from inside the caller's own
            // line handling, which would reorder its input.
            self.failed_jobs.push(Completion { tag, result });
        }
    }

    fn drain_completions(&mut self) {
        for c in std::mem::take(&mut self.failed_jobs) {
            self.on_completion(c);
        }
        // Several wakes can arrive as one event: take everything there is.
        while let Ok(c) = self.completions.try_recv() {
            self.on_completion(c);
        }
    }

    fn on_completion(&mut self, c: Completion) {
        self.jobs_in_flight = self.jobs_in_flight.saturating_sub(1);
        let Tag { target, cont } = c.tag;
        let barrier = cont.is_barrier();
        let now = self.clock;
        // A reply for a session that has gone, or whose slot now holds a
        // newer session, must not reach it; the state change still happens.
        let live = target.filter(|(sref, _)| {
            self.sessions
                .get(sref.token)
                .is_some_and(|s| s.id == sref.id && s.close == CloseState::Open)
        });
        let caller = live
            .and_then(|(sref, _)| self.sessions.get_mut(sref.token))
            .map(|s| &mut s.caller);
        let mut fx = Effects::default();
        let step = self.chat.complete(caller, cont, c.result, now, &mut fx);
        match step {
            Step::Wait(job) => self.dispatch(job, live),
            Step::Reply(reply) => {
                if let Some((sref, seq)) = live {
                    if barrier {
                        if let Some(s) = self.sessions.get_mut(sref.token) {
                            s.barrier = false;
                        }
                        // A login swaps the login deadline for the idle one,
                        // which may come sooner, and lifts the stranger's line limit.
                        self.refresh_timer(sref.token);
                        let max_line = self.config.max_line;
                        if let Some(s) = self
                            .sessions
                            .get_mut(sref.token)
                            .filter(|s| s.caller.user.is_some())
                        {
                            s.framer.set_max_line(max_line);
                        }
                    }
                    self.release(sref.token, seq, reply);
                }
            }
        }
        self.apply(fx);
        if let Some((sref, _)) = live {
            self.drive(sref.token);
        }
    }

    fn apply(&mut self, fx: Effects) {
        for push in fx.pushes {
            for (i, sref) in push.to.into_iter().enumerate() {
                let stored = push.stored.as_ref().and_then(|s| s.get(i));
                if self.push_event(sref, &push.line, stored.map(|(_, id)| *id)) {
                    continue;
                }
                if let Some((user, id)) = stored {
                    let request = self.chat.undelivered(user, &[*id]);
                    self.background(request);
                }
            }
        }
        for (sref, reason) in fx.closes {
            if self.is_live(sref) {
                self.say_bye(sref.token, reason);
            }
        }
        for request in fx.background {
            self.background(request);
        }
        for (at, key) in fx.lock_timers {
            self.deadlines.insert((at, Timer::Lock(key)));
        }
    }

    fn background(&mut self, request: StoreRequest) {
        self.dispatch(
            Job {
                cont: Cont::Background,
                work: Work::Store(request),
            },
            None,
        );
    }

    fn is_live(&self, sref: SessionRef) -> bool {
        self.sessions
            .get(sref.token)
            .is_some_and(|s| s.id == sref.id)
    }

    /// Delivers an event line; a session whose backlog passes the limit is
    /// dropped rather than allowed to grow without bound.
    /// Returns whether the session took the line (false: it is gone or
    /// closing). A stored direct message's id is tracked until written, so
    /// a session dropped before that gives it back to the inbox on reaping.
    fn push_event(&mut self, sref: SessionRef, line: &[u8], stored_id: Option<i64>) -> bool {
        let max = self.config.max_outbuf as u64;
        let Some(s) = self
            .sessions
            .get_mut(sref.token)
            .filter(|s| s.id == sref.id)
        else {
            return false;
        };
        let taken = match stored_id {
            Some(id) => s.push_direct(line, id),
            None => s.push_output(line),
        };
        if !taken {
            return false;
        }
        if s.event_backlog() > max && !s.wants_write {
            // Its backlog may only be waiting for its turn to be written:
            // see what the socket takes before calling the reader slow.
            if s.write_to_socket().is_err() {
                self.mark_close(sref.token, CloseState::CloseNow);
                return true;
            }
        }
        if s.event_backlog() > max {
            self.stats.closed_slow += 1;
            log::warn!(
                "session {}: closing, output backlog passed {max} bytes",
                s.id
            );
            self.mark_close(sref.token, CloseState::CloseNow);
            return true;
        }
        self.queue_flush(sref.token);
        true
    }

    // ----- output and closing ----------------------------------------------

    /// Queues a session whose new output is events (first come, first
    /// written; at most `MAX_EVENT_FLUSHES_PER_PASS` per pass).
    fn queue_flush(&mut self, token: usize) {
        if let Some(s) = self.sessions.get_mut(token) {
            if !s.flush_queued {
                s.flush_queued = true;
                self.to_flush.push_back(token);
            }
        }
    }

    /// Queues a session whose new output answers it (written this pass).
    fn queue_flush_now(&mut self, token: usize) {
        if let Some(s) = self.sessions.get_mut(token) {
            if !s.flush_now_queued {
                s.flush_now_queued = true;
                self.to_flush_now.push(token);
            }
        }
    }

    /// Writes every session with a reply waiting, then event output for at
    /// most `MAX_EVENT_FLUSHES_PER_PASS` sessions: a fan-out to thousands is
    /// spread over several passes, with a poll for new input between them.
    fn flush_all(&mut self) {
        self.flush_replies();
        for _ in 0..MAX_EVENT_FLUSHES_PER_PASS {
            let Some(token) = self.to_flush.pop_front() else {
                break;
            };
            if let Some(s) = self.sessions.get_mut(token) {
                s.flush_queued = false;
            }
            self.flush_one(token);
        }
        // Writing events can let a session's waiting commands run, whose
        // replies must not wait for the next pass.
        self.flush_replies();
    }

    fn flush_replies(&mut self) {
        while let Some(token) = self.to_flush_now.pop() {
            if let Some(s) = self.sessions.get_mut(token) {
                s.flush_now_queued = false;
            }
            self.flush_one(token);
        }
    }

    /// Writes what the socket takes, asks for WRITABLE only while bytes
    /// remain, and resumes input that waited for the backlog to shrink.
    fn flush_one(&mut self, token: usize) {
        let Some(s) = self.sessions.get_mut(token) else {
            return;
        };
        if s.close == CloseState::CloseNow {
            return;
        }
        if let Err(e) = s.write_to_socket() {
            log::debug!("session {}: write error: {e}", s.id);
            self.mark_close(token, CloseState::CloseNow);
            return;
        }
        let want_write = s.wants_writable();
        if want_write != s.wants_write {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self
                .poll
                .registry()
                .reregister(&mut s.stream, Token(token), interest)
            {
                log::warn!("session {}: reregister failed: {e}", s.id);
                self.mark_close(token, CloseState::CloseNow);
                return;
            }
            s.wants_write = want_write;
        }
        match s.close {
            CloseState::CloseAfterFlush if !want_write => self.queue_close(token),
            CloseState::Open if !s.inbuf.is_empty() || s.read_paused => self.drive(token),
            _ => {}
        }
    }

    /// Sends `* bye <reason>` and closes once it is written.
    fn say_bye(&mut self, token: usize, reason: ByeReason) {
        if let Some(s) = self.sessions.get_mut(token) {
            s.push_output(&protocol::bye(reason));
        }
        self.mark_close(token, CloseState::CloseAfterFlush);
    }

    /// Marks a session for closing. From here on it is no longer online, so
    /// nothing more is delivered to it; the reactor reaps it at the end of
    /// the pass (or once its output has drained).
    fn mark_close(&mut self, token: usize, state: CloseState) {
        let now = self.clock;
        let Some(s) = self.sessions.get_mut(token) else {
            return;
        };
        if s.close == CloseState::CloseNow || s.close == state {
            return;
        }
        let was_open = s.close == CloseState::Open;
        s.close = state;
        let leaving = if was_open {
            self.chat.disconnect(&s.caller, now)
        } else {
            None
        };
        if state == CloseState::CloseAfterFlush {
            let linger = now.mono + CLOSE_LINGER;
            s.linger_until = Some(linger);
            s.timer_at = Some(linger);
            self.deadlines
                .insert((linger, Timer::Session(s.caller.session)));
            self.queue_flush(token);
        } else {
            self.queue_close(token);
        }
        if let Some(request) = leaving {
            self.background(request);
        }
    }

    fn queue_close(&mut self, token: usize) {
        if let Some(s) = self.sessions.get_mut(token) {
            if !s.close_queued {
                s.close_queued = true;
                self.to_close.push(token);
            }
        }
    }

    fn reap(&mut self) {
        for token in std::mem::take(&mut self.to_close) {
            let Some(s) = self.sessions.get_mut(token) else {
                continue;
            };
            s.close_queued = false;
            let done = match s.close {
                CloseState::CloseNow => true,
                CloseState::CloseAfterFlush => s.pending_output() == 0,
                CloseState::Open => false,
            };
            if !done {
                continue;
            }
            let mut s = self.sessions.remove(token);
            self.give_back_unsent(&mut s);
            if let Some(n) = self.per_ip.get_mut(&s.ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&s.ip);
                }
            }
            if s.close == CloseState::CloseAfterFlush {
                s.close_transport();
                s.discard_input(DISCARD_ON_CLOSE);
                let _ = s.stream.shutdown(std::net::Shutdown::Write);
            }
            if let Err(e) = self.poll.registry().deregister(&mut s.stream) {
                log::debug!("session {}: deregister failed: {e}", s.id);
            }
            log::debug!("session {} closed", s.id);
        }
    }

    // ----- timers ----------------------------------------------------------

    fn fire_timers(&mut self) {
        let now = self.clock.mono;
        while let Some((at, _)) = self.deadlines.first() {
            if *at > now {
                break;
            }
            let Some((at, timer)) = self.deadlines.pop_first() else {
                break;
            };
            match timer {
                Timer::Session(sref) => self.session_timer(sref, at),
                Timer::Lock(key) => self.chat.expire_lock(&key, now),
                Timer::AcceptRetry => {
                    self.accept_paused_until = None;
                    self.accept_ready(false);
                    self.accept_ready(true);
                }
            }
        }
    }

    /// Moves a session's timer earlier if its deadline now comes sooner than
    /// the entry it has (later deadlines are found when the entry fires).
    fn refresh_timer(&mut self, token: usize) {
        let (login, idle) = (self.config.login_timeout(), self.config.idle_timeout());
        let Some(s) = self.sessions.get_mut(token) else {
            return;
        };
        let due = s.deadline(login, idle);
        if s.timer_at.is_none_or(|at| due < at) {
            s.timer_at = Some(due);
            self.deadlines
                .insert((due, Timer::Session(s.caller.session)));
        }
    }

    fn session_timer(&mut self, sref: SessionRef, at: Instant) {
        let now = self.clock.mono;
        let (login, idle) = (self.config.login_timeout(), self.config.idle_timeout());
        let Some(s) = self
            .sessions
            .get_mut(sref.token)
            .filter(|s| s.id == sref.id)
        else {
            return;
        };
        if s.timer_at != Some(at) {
            return;
        }
        let due = s.deadline(login, idle);
        if due > now {
            s.timer_at = Some(due);
            self.deadlines.insert((due, Timer::Session(sref)));
            return;
        }
        s.timer_at = None;
        if s.close != CloseState::Open {
            log::debug!("session {}: output not drained in time; dropping", s.id);
            self.mark_close(sref.token, CloseState::CloseNow);
        } else if s.caller.user.is_some() {
            self.stats.closed_idle += 1;
            log::debug!("session {}: idle timeout", s.id);
            self.say_bye(sref.token, ByeReason::Idle);
        } else {
            self.stats.closed_login_timeout += 1;
            log::debug!("session {}: login timeout", s.id);
            self.say_bye(sref.token, ByeReason::Timeout);
        }
    }

    // ----- shutdown --------------------------------------------------------

    fn on_signals(&mut self) {
        if let Some(signals) = self.signals.as_mut() {
            for signal in signals.pending() {
                log::info!("signal {signal} received; shutting down");
                self.shutdown_flag.store(true, Ordering::SeqCst);
            }
        }
    }

    fn begin_shutdown(&mut self) {
        log::info!("shutting down: {} sessions", self.sessions.len());
        self.shutting_down = Some(self.clock.mono + SHUTDOWN_GRACE);
        if self.listening {
            if let Some(l) = self.listener.as_mut() {
                let _ = self.poll.registry().deregister(l);
            }
            if let Some((l, _)) = self.tls_listener.as_mut() {
                let _ = self.poll.registry().deregister(l);
            }
            self.listening = false;
        }
        let tokens: Vec<usize> = self.sessions.iter().map(|(t, _)| t).collect();
        for token in tokens {
            self.maybe_finish(token);
        }
    }

    /// Sessions still open when the shutdown deadline passed: direct
    /// messages queued for them but never written go back to the inbox.
    fn return_unsent_direct(&mut self) {
        let tokens: Vec<usize> = self.sessions.iter().map(|(t, _)| t).collect();
        for token in tokens {
            if let Some(mut s) = self.sessions.try_remove(token) {
                self.give_back_unsent(&mut s);
            }
        }
    }

    /// A session is going away: the direct messages queued for it but not
    /// written go back to its user's inbox.
    fn give_back_unsent(&mut self, s: &mut Session) {
        let unsent = s.take_unsent_direct();
        let Some(user) = s.caller.user.as_deref().filter(|_| !unsent.is_empty()) else {
            return;
        };
        log::debug!(
            "session {}: {} direct messages back to the inbox",
            s.id,
            unsent.len()
        );
        let request = self.chat.undelivered(user, &unsent);
        self.background(request);
    }

    fn finish(mut self) {
        self.hasher.close();
        // Commits whatever is still queued (last-seen times) before exiting.
        self.store.close();
        log::info!("stopped; {:?}", self.stats);
    }
}

/// Keeps a flood of one kind of event from becoming a flood of log lines
/// written synchronously from the loop: at most one line a second, which
/// says how many were skipped. The stats counters still count every one.
#[derive(Debug, Default)]
struct LogThrottle {
    /// No line before this.
    quiet_until: Option<Instant>,
    /// Lines skipped since the last one written.
    skipped: u64,
}

impl LogThrottle {
    /// Whether to log now; if so, how many were skipped before.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.quiet_until.is_some_and(|t| now < t) {
            self.skipped += 1;
            return None;
        }
        self.quiet_until = Some(now + Duration::from_secs(1));
        Some(std::mem::take(&mut self.skipped))
    }
}

fn skipped_note(skipped: u64) -> String {
    if skipped == 0 {
        String::new()
    } else {
        format!(" ({skipped} more like it not logged)")
    }
}

/// Turns a connection away. Plaintext clients get `* bye busy` (a few
/// bytes always fit a fresh socket's buffer); on the TLS port plaintext would
/// only garble the handshake, so the connection is just closed.
fn refuse(stream: &mut TcpStream, tls: bool) {
    if !tls {
        let _ = stream.write(&protocol::bye(ByeReason::Busy));
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == libc_codes::EMFILE
            || code == libc_codes::ENFILE
            || code == libc_codes::ENOBUFS
            || code == libc_codes::ENOMEM
    )
}

/// errno values (Linux) for running out of descriptors or memory.
mod libc_codes {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

/// The lines every connection starts with.
fn greeting(config: &Config) -> Vec<u8> {
    let mut out = protocol::event(&format!("hello natter {}", protocol::PROTOCOL_VERSION));
    out.extend(protocol::event(
        "notice welcome to natter; log in with: login <user> <password>",
    ));
    let register = match config.registration {
        Registration::Open => "notice new here? create an account with: register <user> <password>",
        Registration::Closed => {
            "notice registration is closed on this server; ask its operator for an account"
        }
    };
    out.extend(protocol::event(register));
    out.extend(protocol::event("notice type help for every command"));
    out
}

/// Imports `<user> <password>` lines, adding only users that do not exist.
fn import_users(store: &mut Store, path: &std::path::Path, config: &Config) -> io::Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| other_error(format!("cannot read users file {}: {e}", path.display())))?;
    let now = now_clock().wall;
    let mut requests = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (user, password) = match line.trim_start().split_once([' ', '\t']) {
            Some((u, p)) => (u, p.trim_start_matches([' ', '\t'])),
            None => (line.trim(), ""),
        };
        let Some(name) = protocol::canonical_username(user).filter(|_| !password.is_empty()) else {
            log::warn!(
                "{}:{}: skipped: not `<user> <password>`",
                path.display(),
                n + 1
            );
            continue;
        };
        let exists = store
            .user_exists(&name)
            .map_err(|e| other_error(format!("cannot read database: {e}")))?;
        if exists || !seen.insert(name.clone()) {
            continue;
        }
        let hash = auth::hash_password(password, config.hash_cost).map_err(other_error)?;
        requests.push(StoreRequest::CreateUser {
            name,
            hash,
            created: now,
        });
    }
    let imported = requests.len();
    for result in store.run_batch(&requests) {
        result.map_err(|e| other_error(format!("cannot import users: {e}")))?;
    }
    log::info!("imported {imported} users from {}", path.display());
    Ok(())
}
