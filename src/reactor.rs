//! The readiness loop and its syscalls. It owns the `mio::Poll`, the
//! listeners, the `Slab` of connections (a socket and its [`Session`]), the
//! deadline set, the one `Waker` through which the store and hashing threads
//! report back, and the signal source. It is the only place that registers,
//! reregisters or deregisters sockets, and it decides no per-connection rule:
//! those are the session's (`session.rs`); the reactor moves bytes and
//! events between sessions and sockets and reconciles each socket with what
//! its session wants ([`Server::settle`]).
//!
//! One pass: poll (timeout = earliest deadline, or zero while work is left
//! over), note readiness, apply finished jobs, fire due timers, serve every
//! ready connection (read, handle lines, write replies), write event output
//! for a slice of connections, reap the closed. Nothing here blocks: disk
//! and hashing go to their threads, and their results come back through the
//! completion channel.
//!
//! By topic: `reactor/accept.rs` (listeners, admission, new sessions) and
//! `reactor/route.rs` (jobs, completions, deliveries to other sessions);
//! this file keeps the loop itself, serving, `settle`, the output budget,
//! timers and closing (about 730 lines, a third of them docs: these share
//! the `Conn` bookkeeping and split no further without spreading it).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::admission::Admission;
use crate::background::Background;
use crate::commands::{Chat, Clock, Effects, LockKey, SessionRef};
use crate::config::Config;
use crate::session::{
    Ending, Limits, Outbox, ReadStatus, Session, DELIVERIES_PER_LINE, MAX_LINES_PER_TURN,
};
use crate::startup;
use crate::stats::{Departing, LogThrottle, Stats};
use crate::store::{Marks, ReadMarks};
use crate::web::WebPolicy;

mod accept;
mod admin;
mod proxied;
mod reload;
mod route;

const LISTENER: Token = Token(usize::MAX - 1);
const TLS_LISTENER: Token = Token(usize::MAX - 4);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
const ADMIN_LISTENER: Token = Token(usize::MAX - 5);
const METRICS_LISTENER: Token = Token(usize::MAX - 6);
const WEB_LISTENER: Token = Token(usize::MAX - 7);
const WEB_TLS_LISTENER: Token = Token(usize::MAX - 8);
/// Tokens of connections waiting for their PROXY header start here: far
/// above any session's slab index.
const PROXY_BASE: usize = usize::MAX / 4;
/// Admin connections' tokens start here: far above any session's slab
/// index, far below the listeners'.
const ADMIN_BASE: usize = usize::MAX / 2;
/// The listeners', waker's and signals' tokens are above this.
const LISTENER_TOKENS: usize = usize::MAX - 16;

/// Readiness events taken per poll. More only means fewer polls under load.
const EVENTS_CAPACITY: usize = 1024;
/// How long a shutdown waits for replies to be flushed before giving up;
/// under the 5 seconds the contract promises, with room for the final commit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);
/// After the grace: writes not yet started are refused; this long at most
/// for the batch being committed (and any other job out) to come back, so
/// that every committed command is answered before the sockets close.
/// Grace plus drain stay under the 5 seconds the docs promise.
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(900);
/// Pause before accepting again after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Most unread input thrown away when closing politely; beyond that a peer
/// still sending gets a reset. Closing a socket with unread input makes the
/// kernel send a reset, which can destroy the goodbye still in flight.
const DISCARD_ON_CLOSE: usize = 1 << 20;
/// Connections whose event output is written per pass. Each write to a
/// local peer costs microseconds (the kernel delivers it in our time), so a
/// fan-out to 1000 in one go would hold the loop for milliseconds; in slices
/// of this size, input (a ping) waits at most one slice. Small slices also
/// let a busy receiver's lines pile up between its writes, and a write's
/// cost is mostly per call: at 1,000 receivers, 128 a pass took 62 writes
/// per 1,000 deliveries and 16 take 42 (the bare relay 34), for a quarter
/// less CPU per delivery (docs/PERFORMANCE.md, issue 16).
const MAX_EVENT_FLUSHES_PER_PASS: usize = 16;

/// Messages from other nodes applied per pass, at most (and no more
/// deliveries than one session's turn may queue). A broadcast from another
/// node queues a line to every local session, as a local one does; taking
/// a burst of them whole would hold the loop for as many fan-outs, so the
/// rest wait for the next pass, with input and timers served in between.
const CLUSTER_MESSAGES_PER_PASS: usize = 64;
/// What a deadline is for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Login timeout, idle timeout or close linger of a session.
    Session(SessionRef),
    /// A lockout record may be forgotten. Boxed: every idle session has a
    /// timer, and each entry is as large as the largest kind.
    Lock(Box<LockKey>),
    /// Accepting was paused for lack of file descriptors.
    AcceptRetry,
    /// A connection on a `--proxy-protocol` listener whose header is late.
    ProxyHeader { key: usize, id: u64 },
    /// A session's emptied output may be freed (see `OUTPUT_RELEASE_DELAY`).
    Release(SessionRef),
}

/// How long an emptied output keeps its allocation. Idle sessions keep no
/// output (issue 16), but a receiver of a busy fan-out empties its output
/// on every pass, and allocating and growing it again each time cost more
/// than copying the lines: a quarter second after emptying, a session is
/// usually busy again or really idle.
const OUTPUT_RELEASE_DELAY: Duration = Duration::from_millis(250);

/// Every timer of the loop, earliest first (stale entries are skipped when
/// they fire).
type Deadlines = BinaryHeap<Reverse<(Instant, Timer)>>;

/// Frees the connection's output a moment from `now` if it is empty then
/// (see `OUTPUT_RELEASE_DELAY`).
fn release_later(conn: &mut Conn, deadlines: &mut Deadlines, now: Instant) {
    if !conn.release_due && conn.session.output_spent() {
        conn.release_due = true;
        let sref = conn.session.caller().session;
        deadlines.push(Reverse((now + OUTPUT_RELEASE_DELAY, Timer::Release(sref))));
    }
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

/// One connection: the socket, what the poller knows of it, and its session.
struct Conn {
    stream: TcpStream,
    session: Session,
    /// The socket may hold input not yet read. Readiness is edge-triggered:
    /// set by a readable event, cleared only by `WouldBlock` or EOF.
    readable: bool,
    /// Whether WRITABLE is registered.
    write_interest: bool,
    /// When this connection's live entry in the deadline set fires. Entries
    /// with another time are stale and ignored when they fire.
    timer_at: Option<Instant>,
    /// On the ready list.
    in_ready: bool,
    /// On the event-output queue.
    in_events: bool,
    /// On the close list.
    in_close: bool,
    /// A `Timer::Release` is queued for its output.
    release_due: bool,
    /// Its unsent output as last counted into `Server::output_total`.
    counted_output: usize,
}

/// The server: everything the loop owns.
pub struct Server {
    poll: Poll,
    /// The plaintext listener, if any.
    listener: Option<TcpListener>,
    /// The TLS listener and its configuration, if any.
    tls_listener: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    /// The web listener (`--web`), if any, and what its connections allow.
    web_listener: Option<(TcpListener, Arc<WebPolicy>)>,
    /// The same inside TLS (`--web-tls`), with the TLS listener's
    /// configuration (kept in step with it on reload).
    web_tls_listener: Option<(TcpListener, Arc<WebPolicy>, Arc<rustls::ServerConfig>)>,
    /// Whether the listeners are registered (they are not during shutdown).
    listening: bool,
    /// No accepting before this (file descriptors ran out).
    accept_paused_until: Option<Instant>,
    /// Connections on a `--proxy-protocol` listener, before their header.
    awaiting: proxied::AwaitingHeaders,
    conns: Slab<Conn>,
    /// The connection limits and what counts against them.
    admission: Admission,
    /// Next session id; ids are never reused.
    next_id: u64,
    chat: Chat,
    config: Config,
    /// Unsent output of all sessions together (see `count_output`).
    output_total: usize,
    /// `--max-output-total`, resolved.
    output_budget: usize,
    /// What every session enforces, from `config`.
    limits: Arc<Limits>,
    /// The first lines of every connection, formatted once.
    greeting: Vec<u8>,
    /// Every timer, earliest on top. Entries are never removed early; a
    /// firing entry is checked against the current state (lazy deletion),
    /// so one that is there twice fires harmlessly twice. A heap rather
    /// than a B-tree: every idle session has an entry, 40 bytes in one
    /// array instead of a B-tree entry in half-full nodes (issue 16).
    deadlines: Deadlines,
    /// The store thread and the hashing pool.
    background: Background,
    /// Which messages have left natterd, recorded right after each write
    /// (see `store::marks`).
    marks: Option<ReadMarks>,
    /// natterctl's socket and the `/metrics` listener, each if on.
    admin: admin::AdminSocket,
    /// Histograms for `/metrics`, shared with the store thread.
    timings: crate::metrics::Timings,
    /// SIGHUP and `natterctl reload`.
    reloader: reload::Reloader,
    waker: Arc<Waker>,
    shutdown_flag: Arc<AtomicBool>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// Connections to serve this pass: input to read or handle, a reply or
    /// a handshake to write.
    ready: Vec<usize>,
    /// Connections with event output, written first come first served, at
    /// most `MAX_EVENT_FLUSHES_PER_PASS` a pass.
    events: VecDeque<usize>,
    /// Sessions whose line turn ran out with input left; served next pass.
    resume: Vec<SessionRef>,
    /// Connections whose session may be finished, reaped at the end of the pass.
    to_close: Vec<usize>,
    /// Set once shutdown starts: the end of its grace.
    shutting_down: Option<Instant>,
    /// Set when the grace is over: writes are refused from then on, and
    /// the loop exits once every job is back, or at this time regardless.
    draining_until: Option<Instant>,
    /// Time as of the current pass.
    clock: Clock,
    /// Loop passes so far: a session's line budget is per pass.
    pass: u64,
    /// Failed TLS handshakes are logged at most once a second.
    tls_error_log: LogThrottle,
    stats: Stats,
    /// Ids of stored messages one write took; kept to be reused.
    written_ids: Vec<i64>,
    /// The other nodes, in cluster mode.
    cluster: Option<crate::cluster::ClusterLink>,
}

fn other_error(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

fn register_listener(poll: &Poll, listener: StdListener, token: Token) -> io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    poll.registry()
        .register(&mut listener, token, Interest::READABLE)?;
    Ok(listener)
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
        let (mut store, mut chat) = startup::open(&config)?;
        let marks = store.take_marks();

        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let cluster = match &config.cluster {
            Some(url) => {
                // By default named after the port actually bound (port 0
                // in tests picks one).
                let port = listeners
                    .plain
                    .as_ref()
                    .or(listeners.tls.as_ref().map(|(l, _)| l))
                    .and_then(|l| l.local_addr().ok())
                    .map_or(config.port, |a| a.port());
                let node = match &config.node_id {
                    Some(id) => id.clone(),
                    None => {
                        let mut named = config.clone();
                        named.port = port;
                        named.node_name()
                    }
                };
                let link =
                    crate::cluster::ClusterLink::start(url, node.clone(), Arc::clone(&waker))
                        .map_err(other_error)?;
                log::info!(
                    "cluster: this is node {node}, on {}",
                    crate::config::redacted(url)
                );
                chat.join_cluster(node);
                Some(link)
            }
            None => None,
        };
        let mut admin = admin::AdminSocket::default();
        match config.admin_socket_path() {
            // Asked for by name: failing to serve it fails the start.
            Some(path) if config.admin_socket.is_some() => admin.bind(&path, &poll)?,
            // The default: natterd runs without it rather than not at all.
            Some(path) => {
                if let Err(e) = admin.bind(&path, &poll) {
                    log::error!("{e}; natterctl cannot reach this server");
                }
            }
            None => {}
        }
        if let Some(addr) = config.metrics {
            admin.bind_metrics(addr, &poll)?;
        }
        let timings = crate::metrics::Timings::default();
        store.set_timings(timings.clone());
        let background = Background::spawn(store, &waker)?;

        let listener = match listeners.plain {
            Some(l) => Some(register_listener(&poll, l, LISTENER)?),
            None => None,
        };
        let tls_listener = match listeners.tls {
            Some((l, tls)) => Some((register_listener(&poll, l, TLS_LISTENER)?, tls)),
            None => None,
        };
        let policy = Arc::new(WebPolicy {
            origins: config.web_origin.clone(),
            keepalive: Duration::from_secs(config.web_keepalive.max(1)),
        });
        let bind_web = |addr: SocketAddr, flag: &str, token: Token| {
            let listener = startup::listen(addr)
                .map_err(|e| other_error(format!("cannot listen on {addr} ({flag}): {e}")))?;
            register_listener(&poll, listener, token)
        };
        let web_listener = match config.web {
            Some(addr) => Some((bind_web(addr, "--web", WEB_LISTENER)?, Arc::clone(&policy))),
            None => None,
        };
        let web_tls_listener = match (config.web_tls, &tls_listener) {
            (Some(addr), Some((_, tls))) => Some((
                bind_web(addr, "--web-tls", WEB_TLS_LISTENER)?,
                policy,
                Arc::clone(tls),
            )),
            (Some(_), None) => {
                return Err(other_error(
                    "--web-tls serves the TLS listener's certificate: it needs TLS \
                     (--tls-cert/--tls-key or --tls-self-signed)",
                ))
            }
            (None, _) => None,
        };

        Ok(Server {
            poll,
            listener,
            tls_listener,
            web_listener,
            web_tls_listener,
            listening: true,
            accept_paused_until: None,
            awaiting: proxied::AwaitingHeaders::default(),
            conns: Slab::new(),
            admission: Admission::new(&config),
            next_id: 1,
            chat,
            limits: Arc::new(Limits::from(&config)),
            output_total: 0,
            output_budget: config.output_budget(),
            greeting: startup::greeting(&config),
            config,
            deadlines: BinaryHeap::new(),
            background,
            marks,
            admin,
            timings,
            reloader: reload::Reloader::default(),
            waker,
            shutdown_flag: Arc::new(AtomicBool::new(false)),
            signals: None,
            ready: Vec::new(),
            events: VecDeque::new(),
            resume: Vec::new(),
            to_close: Vec::new(),
            shutting_down: None,
            draining_until: None,
            written_ids: Vec::new(),
            cluster,
            clock: Clock::now(),
            pass: 0,
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

    /// Where `/metrics` is served, if it is (`--metrics`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.admin.metrics_addr()
    }

    /// Where the chat page is served, if it is (`--web`).
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_listener
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
    }

    /// Where the chat page is served over TLS, if it is (`--web-tls`).
    pub fn web_tls_addr(&self) -> Option<SocketAddr> {
        self.web_tls_listener
            .as_ref()
            .and_then(|(l, ..)| l.local_addr().ok())
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

    /// Makes SIGINT and SIGTERM start a graceful shutdown, and SIGHUP
    /// reload the settings.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
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
            // poll can return late; every decision of this pass uses this time.
            self.clock = Clock::now();
            self.pass += 1;
            // Turns that ran out last pass go after this pass's events.
            let resumes = std::mem::take(&mut self.resume);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_ready(accept::Via::Plain),
                    TLS_LISTENER => self.accept_ready(accept::Via::Tls),
                    WEB_LISTENER => self.accept_ready(accept::Via::Web),
                    WEB_TLS_LISTENER => self.accept_ready(accept::Via::WebTls),
                    WAKER => {
                        self.drain_completions();
                        self.finish_reload();
                    }
                    SIGNALS => self.on_signals(),
                    ADMIN_LISTENER => self.admin_accept(false),
                    METRICS_LISTENER => self.admin_accept(true),
                    Token(token) if (ADMIN_BASE..LISTENER_TOKENS).contains(&token) => {
                        self.admin_ready(token - ADMIN_BASE)
                    }
                    Token(token) if (PROXY_BASE..ADMIN_BASE).contains(&token) => {
                        self.header_ready(token - PROXY_BASE)
                    }
                    Token(token) => {
                        let input =
                            event.is_readable() || event.is_read_closed() || event.is_error();
                        if let Some(conn) = self.conns.get_mut(token) {
                            conn.readable |= input;
                        }
                        self.mark_ready(token);
                    }
                }
            }
            self.drain_completions();
            self.drain_cluster();
            for sref in resumes {
                if self.is_live(sref) {
                    self.mark_ready(sref.token);
                }
            }
            self.fire_timers();
            if self.shutting_down.is_none() && self.shutdown_flag.load(Ordering::SeqCst) {
                self.begin_shutdown();
            }
            self.serve_ready();
            self.write_events();
            // Writing events can let a session's waiting lines run, whose
            // replies must not wait for the next pass.
            self.serve_ready();
            self.enforce_output_budget();
            self.reap();
            // The database's copy of the read marks, one write at a time.
            if let Some(job) = self.chat.take_advance() {
                self.dispatch(job, None);
            }
            self.flush_cluster();
            self.timings
                .loop_pass
                .observe(self.clock.mono.elapsed().as_secs_f64());
            if let Some(deadline) = self.shutting_down {
                let now = self.clock.mono;
                let idle = self.conns.is_empty() && self.background.in_flight() == 0;
                if idle {
                    break;
                }
                if now >= deadline {
                    let until = match self.draining_until {
                        Some(until) => until,
                        None => {
                            log::info!(
                                "shutdown grace over: {} jobs out; refusing writes not yet started",
                                self.background.in_flight()
                            );
                            self.background.stop_writes();
                            *self.draining_until.insert(now + SHUTDOWN_DRAIN)
                        }
                    };
                    if self.background.in_flight() == 0 || now >= until {
                        break;
                    }
                }
            }
        }
        self.flush_all();
        self.return_unsent_direct();
        self.finish();
        Ok(())
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if self.background.has_ready()
            || self.cluster.as_ref().is_some_and(|c| c.has_pending())
            || !self.resume.is_empty()
            || !self.events.is_empty()
            || !self.ready.is_empty()
        {
            return Some(Duration::ZERO);
        }
        let mut next = self.next_deadline();
        // Once draining, only its end (or a completion's wake) matters.
        if let Some(deadline) = self.draining_until.or(self.shutting_down) {
            next = Some(next.map_or(deadline, |n| n.min(deadline)));
        }
        next.map(|at| at.saturating_duration_since(Instant::now()))
    }

    // ----- serving connections ---------------------------------------------

    fn mark_ready(&mut self, token: usize) {
        if let Some(conn) = self.conns.get_mut(token) {
            if !conn.in_ready {
                conn.in_ready = true;
                self.ready.push(token);
            }
        }
    }

    fn serve_ready(&mut self) {
        while let Some(token) = self.ready.pop() {
            self.serve(token);
        }
    }

    /// Reads what the session may take, lets it handle its lines, writes
    /// what it has to say, and reconciles the socket with the session.
    fn serve(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        conn.in_ready = false;
        loop {
            let Some(conn) = self.conns.get_mut(token) else {
                return;
            };
            // Writing first frees room that decides whether input is handled.
            if conn.session.wants_write() {
                let _ = conn.session.write_to(&mut conn.stream);
            }
            if conn.readable && conn.session.wants_read() {
                match conn.session.read_from(&mut conn.stream) {
                    Ok(ReadStatus::Full) => {}
                    Ok(ReadStatus::Drained | ReadStatus::Eof) => conn.readable = false,
                    Err(e) => {
                        conn.readable = false;
                        let id = conn.session.id();
                        let ip = conn.session.caller().ip;
                        if e.kind() == io::ErrorKind::InvalidData {
                            // A failed handshake or garbage on the TLS port:
                            // worth an operator's eye, not a warning.
                            if let Some(note) = self.tls_error_log.allow(self.clock.mono) {
                                log::info!("session {id} from {ip}: {e}; closing{note}");
                            }
                        } else {
                            log::debug!("session {id}: read error: {e}");
                        }
                        break;
                    }
                }
            }
            let mut outbox = Outbox::default();
            let turn_over =
                conn.session
                    .process(&mut self.chat, self.clock, self.pass, &mut outbox);
            if conn.session.wants_write() {
                let _ = conn.session.write_to(&mut conn.stream);
            }
            // Handling lines made room for what the socket still holds, or
            // writing made room for lines that waited on output.
            let room = conn.readable && conn.session.wants_read();
            let again = !turn_over && (room || conn.session.has_work());
            let sref = conn.session.caller().session;
            self.apply(outbox);
            if turn_over {
                self.resume.push(sref);
            }
            if !again {
                break;
            }
        }
        self.settle(token);
    }

    /// Makes the socket and the timers match what the session now wants:
    /// takes a departing session out of the chat, moves its timer earlier if
    /// its deadline came closer, asks for WRITABLE only while output waits,
    /// and queues a finished session for reaping.
    fn settle(&mut self, token: usize) {
        self.count_output(token);
        self.record_left(token);
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        let sref = conn.session.caller().session;
        if let Some(ending) = conn.session.take_departure() {
            let leftovers = Leftovers::take(&mut conn.session, ending, self.clock.mono);
            self.departed(leftovers);
        }
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        if let Some(due) = conn.session.deadline() {
            if conn.timer_at.is_none_or(|at| due < at) {
                conn.timer_at = Some(due);
                self.deadlines.push(Reverse((due, Timer::Session(sref))));
            }
        }
        release_later(conn, &mut self.deadlines, self.clock.mono);
        if conn.session.is_finished() {
            if !conn.in_close {
                conn.in_close = true;
                self.to_close.push(token);
            }
            return;
        }
        let want_write = conn.session.wants_write();
        if want_write != conn.write_interest {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            match self
                .poll
                .registry()
                .reregister(&mut conn.stream, Token(token), interest)
            {
                Ok(()) => conn.write_interest = want_write,
                Err(e) => {
                    log::warn!("session {}: reregister failed: {e}", sref.id);
                    conn.session.close_now(Ending::IoError);
                    self.settle(token);
                }
            }
        }
    }

    /// Queues a connection's event output (written first come, first served).
    fn write_soon(&mut self, token: usize) {
        if let Some(conn) = self.conns.get_mut(token) {
            if !conn.in_events {
                conn.in_events = true;
                self.events.push_back(token);
            }
        }
    }

    /// Writes event output for at most `MAX_EVENT_FLUSHES_PER_PASS`
    /// connections: a fan-out to thousands is spread over several passes,
    /// with a poll for new input between them.
    fn write_events(&mut self) {
        for _ in 0..MAX_EVENT_FLUSHES_PER_PASS {
            let Some(token) = self.events.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(token) else {
                continue;
            };
            conn.in_events = false;
            let _ = conn.session.write_to(&mut conn.stream);
            self.record_left(token);
            let Some(conn) = self.conns.get_mut(token) else {
                continue;
            };
            let open = conn.session.is_open();
            // Output that had held its input back has drained: serve it.
            // (or the next part of a long reply may now be read).
            let held_input = open
                && (conn.readable || conn.session.buffered_input() > 0 || conn.session.has_work());
            // A write changes no deadline; settle only what it can change
            // (this runs once per recipient of every fan-out).
            let changed = !open || conn.session.wants_write() != conn.write_interest;
            self.count_output(token);
            if let Some(conn) = self.conns.get_mut(token) {
                release_later(conn, &mut self.deadlines, self.clock.mono);
            }
            if held_input {
                self.mark_ready(token);
            }
            if changed {
                self.settle(token);
            }
        }
    }

    // ----- timers ----------------------------------------------------------

    /// When the earliest timer is due.
    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    fn fire_timers(&mut self) {
        let now = self.clock.mono;
        while self.next_deadline().is_some_and(|at| at <= now) {
            let Some(Reverse((at, timer))) = self.deadlines.pop() else {
                break;
            };
            match timer {
                Timer::Session(sref) => self.session_timer(sref, at),
                Timer::Lock(key) => self.chat.expire_lock(&key, now),
                Timer::AcceptRetry => {
                    self.accept_paused_until = None;
                    self.accept_ready(accept::Via::Plain);
                    self.accept_ready(accept::Via::Tls);
                    self.accept_ready(accept::Via::Web);
                    self.accept_ready(accept::Via::WebTls);
                }
                Timer::ProxyHeader { key, id } => self.header_timeout(key, id),
                Timer::Release(sref) => {
                    // Busy again meanwhile: its next emptying queues
                    // another.
                    if let Some(conn) = self.live_conn(sref) {
                        conn.release_due = false;
                        conn.session.release_output();
                    }
                }
            }
        }
        // After a crowd left, its stale entries are gone: give the room back.
        let heap = &mut self.deadlines;
        if heap.capacity() > 1024 && heap.len() < heap.capacity() / 4 {
            heap.shrink_to(heap.len() * 2);
        }
    }

    fn session_timer(&mut self, sref: SessionRef, at: Instant) {
        let now = self.clock.mono;
        let Some(conn) = self.live_conn(sref) else {
            return;
        };
        if conn.timer_at != Some(at) {
            return;
        }
        conn.timer_at = None;
        conn.session.on_deadline(now);
        self.settle(sref.token);
        // Its goodbye to write, or lines its rate now lets through.
        self.mark_ready(sref.token);
    }

    // ----- closing and shutdown --------------------------------------------

    /// Brings `output_total` up to date with one connection's output.
    /// Called wherever output may have changed (settle covers most; the
    /// per-recipient paths of a fan-out call it directly), so the total
    /// costs no scan.
    fn count_output(&mut self, token: usize) {
        if let Some(conn) = self.conns.get_mut(token) {
            // A session dropped at once will never write what it holds, and
            // its memory goes at the end of this pass.
            let now = match conn.session.is_finished() {
                true => 0,
                false => conn.session.pending_output(),
            };
            self.output_total = self.output_total - conn.counted_output + now;
            conn.counted_output = now;
        }
    }

    /// Past the total budget, drops the sessions holding the most unsent
    /// output until the rest fits. Rare, so a scan is fine here.
    fn enforce_output_budget(&mut self) {
        while self.output_total > self.output_budget {
            let largest = self
                .conns
                .iter()
                .filter(|(_, c)| c.session.is_open())
                .max_by_key(|(_, c)| c.counted_output)
                .map(|(token, c)| (token, c.counted_output));
            let Some((token, held)) = largest.filter(|(_, held)| *held > 0) else {
                return;
            };
            log::warn!(
                "session {}: closing, holding {held} unsent bytes while all sessions hold {} \
                 (--max-output-total {})",
                self.conns[token].session.id(),
                self.output_total,
                self.output_budget
            );
            self.stats.closed_budget += 1;
            self.conns[token].session.drop_over_budget();
            self.settle(token);
        }
    }

    fn reap(&mut self) {
        for token in std::mem::take(&mut self.to_close) {
            let Some(conn) = self.conns.get_mut(token) else {
                continue;
            };
            conn.in_close = false;
            if !conn.session.is_finished() {
                continue;
            }
            let mut conn = self.conns.remove(token);
            self.output_total -= conn.counted_output;
            // Its departure was settled when it stopped being open.
            if let Some(ending) = conn.session.take_departure() {
                let leftovers = Leftovers::take(&mut conn.session, ending, self.clock.mono);
                self.departed(leftovers);
            }
            let caller = conn.session.caller();
            self.admission.left(caller.ip, Some(caller.session));
            if conn.session.closes_gracefully() {
                conn.session.close_transport(&mut conn.stream);
                discard_input(&mut conn.stream, DISCARD_ON_CLOSE);
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            }
            if let Err(e) = self.poll.registry().deregister(&mut conn.stream) {
                log::debug!("session {}: deregister failed: {e}", conn.session.id());
            }
            log::debug!("session {} closed", conn.session.id());
        }
    }

    /// A session stopped being open: from here on it is not online, and
    /// what it had not yet written out of its user's messages is unread
    /// again at once, not when its socket finally closes. A newer session
    /// of the same user may be reading its inbox meanwhile; messages
    /// handed back late would land below what that one has read, where no
    /// `inbox` looks. (If the old session still writes some of them while
    /// it drains, they are shown twice: never lost.)
    fn departed(&mut self, gone: Leftovers) {
        let Leftovers {
            ending,
            caller,
            lasted,
            left,
            pushes,
            inbox,
        } = gone;
        let who = Departing {
            id: caller.session.id,
            ip: caller.ip,
            user: caller.user.as_deref(),
            lasted,
        };
        self.stats.departure(&who, ending, self.config.max_outbuf);
        if let Some(request) = self.chat.disconnect(&caller, self.clock) {
            self.background(request);
        }
        let Some(user) = caller.user else {
            return;
        };
        if let Some((pushed, inboxed, ids)) = left {
            let update = self.chat.written(&user, pushed, inboxed, &ids);
            self.record_marks(update);
        }
        if !pushes.is_empty() || !inbox.is_empty() {
            log::debug!(
                "session {}: {} messages and {} inbox rows never written; unread again",
                caller.session.id,
                pushes.len(),
                inbox.len()
            );
        }
        let mut fx = Effects::default();
        if let Some(job) = self.chat.left_over(&user, &pushes, &inbox, &mut fx) {
            self.dispatch(job, None);
        }
        self.apply_effects(fx);
    }

    /// Applies what the other nodes said (see `commands/cluster.rs`).
    fn drain_cluster(&mut self) {
        let Some(link) = self.cluster.as_ref() else {
            return;
        };
        link.begin_drain();
        let (mut messages, mut deliveries) = (0, 0);
        loop {
            // A fan-out from another node costs what a local one does: the
            // same budget as one session's turn (see DELIVERIES_PER_LINE).
            if messages == CLUSTER_MESSAGES_PER_PASS
                || deliveries >= MAX_LINES_PER_TURN * DELIVERIES_PER_LINE
            {
                if let Some(link) = self.cluster.as_ref() {
                    link.more_later();
                }
                break;
            }
            let Some(item) = self.cluster.as_ref().and_then(|l| l.next()) else {
                break;
            };
            messages += 1;
            let mut fx = Effects::default();
            let job = self.chat.on_cluster(item, self.clock, &mut fx);
            deliveries += fx.deliveries.len();
            self.apply_effects(fx);
            if let Some(job) = job {
                self.dispatch(job, None);
            }
        }
    }

    /// The cluster's figures for `/metrics`, in a cluster.
    pub(super) fn cluster_figures(&self) -> Option<crate::metrics::ClusterFigures> {
        let link = self.cluster.as_ref()?;
        Some(crate::metrics::ClusterFigures {
            connected: self.chat.cluster_connected(),
            remote_sessions: self.chat.remote_count() as u64,
            dropped: link.dropped.load(Ordering::Relaxed),
        })
    }

    /// Sends the other nodes what this pass has for them.
    fn flush_cluster(&mut self) {
        let Some(link) = self.cluster.as_ref() else {
            return;
        };
        for (to, msg) in self.chat.take_outgoing() {
            link.publish(to, msg);
        }
    }

    /// Records what a connection's last writes took of its user's messages.
    fn record_left(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        let mut ids = std::mem::take(&mut self.written_ids);
        ids.clear();
        let mut update = None;
        if let (Some((pushed, inboxed)), Some(user)) = (
            conn.session.take_left(&mut ids),
            conn.session.caller().user.as_deref(),
        ) {
            update = self.chat.written(user, pushed, inboxed, &ids);
        }
        self.written_ids = ids;
        self.record_marks(update);
    }

    /// Writes read marks into the marks file.
    pub(super) fn record_marks(&mut self, updates: impl IntoIterator<Item = (u64, Marks)>) {
        let Some(file) = self.marks.as_mut() else {
            return;
        };
        for (slot, marks) in updates {
            if let Err(e) = file.set(slot, marks) {
                // Only costs repeats: after a crash these show as unread again.
                log::error!("marks: cannot record slot {slot}: {e}");
            }
        }
    }

    fn on_signals(&mut self) {
        let pending: Vec<i32> = match self.signals.as_mut() {
            Some(signals) => signals.pending().collect(),
            None => return,
        };
        {
            for signal in pending {
                if signal == signal_hook::consts::SIGHUP {
                    log::info!("SIGHUP received");
                    if let Err(e) = self.start_reload() {
                        log::warn!("reload: {e}");
                    }
                    continue;
                }
                log::info!("signal {signal} received; shutting down");
                self.shutdown_flag.store(true, Ordering::SeqCst);
            }
        }
    }

    fn begin_shutdown(&mut self) {
        log::info!("shutting down: {} sessions", self.conns.len());
        self.shutting_down = Some(self.clock.mono + SHUTDOWN_GRACE);
        if self.listening {
            if let Some(l) = self.listener.as_mut() {
                let _ = self.poll.registry().deregister(l);
            }
            if let Some((l, _)) = self.tls_listener.as_mut() {
                let _ = self.poll.registry().deregister(l);
            }
            if let Some((l, _)) = self.web_listener.as_mut() {
                let _ = self.poll.registry().deregister(l);
            }
            if let Some((l, ..)) = self.web_tls_listener.as_mut() {
                let _ = self.poll.registry().deregister(l);
            }
            self.listening = false;
        }
        let now = self.clock.mono;
        let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
        for token in tokens {
            if let Some(conn) = self.conns.get_mut(token) {
                conn.session.begin_shutdown(now);
            }
            self.settle(token);
            self.mark_ready(token);
        }
    }

    /// Last writes before exit: replies that came back while draining.
    fn flush_all(&mut self) {
        for (_, conn) in self.conns.iter_mut() {
            let _ = conn.session.write_to(&mut conn.stream);
        }
    }

    /// Sessions still there when the shutdown deadline passed leave now:
    /// what they never wrote out of their users' messages stays unread.
    fn return_unsent_direct(&mut self) {
        let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
        for token in tokens {
            if let Some(mut conn) = self.conns.try_remove(token) {
                conn.session
                    .close_now(Ending::Bye(crate::protocol::ByeReason::Shutdown));
                if let Some(ending) = conn.session.take_departure() {
                    let leftovers = Leftovers::take(&mut conn.session, ending, self.clock.mono);
                    self.departed(leftovers);
                }
            }
        }
    }

    fn finish(mut self) {
        // What left in the last writes is read (cluster mode), and the
        // other nodes hear that this node's users are gone now rather than
        // when its heartbeat goes silent.
        if let Some(request) = self.chat.take_read() {
            self.background(request);
        }
        self.flush_cluster();
        if let Some(link) = self.cluster.take() {
            link.shutdown();
        }
        // Commits whatever is still queued (last-seen times, messages back
        // to the inbox) before exiting.
        self.background.close();
        if let Some(marks) = &self.marks {
            if let Err(e) = marks.sync() {
                log::error!("marks: cannot write them to disk: {e}");
            }
        }
        log::info!("stopped; {}", self.stats.summary());
    }
}

/// What a session that stopped being open leaves behind.
struct Leftovers {
    ending: Ending,
    caller: crate::commands::Caller,
    lasted: Duration,
    /// Its last writes' marks.
    left: Option<(i64, i64, Vec<i64>)>,
    /// Pushed messages and inbox rows it never wrote out.
    pushes: Vec<i64>,
    inbox: Vec<i64>,
}

impl Leftovers {
    fn take(session: &mut Session, ending: Ending, now: Instant) -> Leftovers {
        let mut ids = Vec::new();
        let left = session
            .take_left(&mut ids)
            .map(|(pushed, inboxed)| (pushed, inboxed, ids));
        let (pushes, inbox) = session.take_unsent();
        Leftovers {
            ending,
            caller: session.caller().clone(),
            lasted: now.saturating_duration_since(session.connected_at()),
            left,
            pushes,
            inbox,
        }
    }
}

/// Reads and throws away up to `max` bytes of pending input (see
/// `DISCARD_ON_CLOSE`).
fn discard_input(stream: &mut TcpStream, max: usize) {
    let mut chunk = [0u8; crate::session::READ_CHUNK];
    let mut total = 0;
    while total < max {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}
