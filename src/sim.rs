//! A socket-free stand-in for the reactor, for property tests and fuzzers:
//! real [`Session`]s and a real [`Chat`], with scripted sockets, a clock
//! that moves only when told, and background jobs that finish only when
//! told, in any order. It routes what sessions produce the way the reactor
//! does, and records everything each session wrote, so tests can check the
//! per-connection rules against what a client would see.
//!
//! Never used by the server itself.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{HashOutcome, HashWork};
use crate::commands::{self, Account, Chat, ChatSettings, Clock, Effects, Job, SessionRef, Step};
use crate::commands::{Work, WorkResult};
use crate::config::Config;
use crate::session::{Limits, Outbox, Pushed, Rate, ReadStatus, ReplyTo, Session, Transport};
use crate::store::{Marks, MessageRow, StoreOutput, StoreRequest};

/// The password every simulated account has.
pub const PASSWORD: &str = "password1";

/// A socket that hands out queued bytes, then `WouldBlock`; and takes at
/// most `accept` bytes before it too would block.
#[derive(Debug, Default)]
pub struct ScriptedSocket {
    /// Bytes the peer has sent and the session has not read.
    pub incoming: VecDeque<u8>,
    /// Whether the peer has closed its side (EOF once `incoming` is empty).
    pub peer_closed: bool,
    /// Everything the session wrote.
    pub written: Vec<u8>,
    /// How many more bytes a write may take now.
    pub accept: usize,
}

impl Read for ScriptedSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.incoming.is_empty() {
            return if self.peer_closed {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.incoming.len());
        for (slot, byte) in buf.iter_mut().zip(self.incoming.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }
}

impl Write for ScriptedSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.accept == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.accept);
        self.accept -= n;
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    /// Takes across pieces up to `accept`, as `writev` does, so the
    /// sessions' vectored writes are exercised whole and cut short.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if self.accept == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut total = 0;
        for buf in bufs {
            let n = buf.len().min(self.accept);
            self.accept -= n;
            self.written.extend_from_slice(&buf[..n]);
            total += n;
            if self.accept == 0 {
                break;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One simulated connection.
#[derive(Debug)]
pub struct SimConn {
    /// The machine under test.
    pub session: Session,
    /// Its socket.
    pub socket: ScriptedSocket,
    /// Set when the session was removed (what the reactor reaps).
    pub reaped: bool,
    /// Edge-triggered readiness as the reactor keeps it: set when bytes
    /// (or EOF) arrive, cleared only when a read finds nothing more.
    pub readable: bool,
}

/// A job in flight, as the reactor would hold it.
#[derive(Debug)]
pub struct PendingJob {
    /// The work and its continuation.
    pub job: Job,
    /// The command it answers.
    pub reply_to: Option<ReplyTo>,
}

/// A breach of a rule the reactor relies on, seen while routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breach(pub String);

/// The simulated server.
#[derive(Debug)]
pub struct Sim {
    /// The chat state.
    pub chat: Chat,
    /// Every connection ever opened; the index is the slab token.
    pub conns: Vec<SimConn>,
    /// Jobs not yet finished.
    pub jobs: Vec<PendingJob>,
    /// Time now.
    pub now: Clock,
    /// Loop passes so far.
    pub pass: u64,
    /// The limits sessions get.
    pub limits: Arc<Limits>,
    /// Sessions whose line turn ran out, served again next pass.
    resume: Vec<usize>,
    /// Rules found broken while routing (e.g. a job started behind a barrier).
    pub breaches: Vec<Breach>,
    /// Next message id the fake store hands out.
    next_message_id: i64,
    /// History rows the fake store returns per `history` request.
    pub history_rows: usize,
    /// Extra bytes of text in each history row.
    pub history_padding: usize,
    /// Read marks recorded, by slot, as the marks file would hold them.
    pub marks: HashMap<u64, Marks>,
}

impl Sim {
    /// A server whose accounts are `users`, all with [`PASSWORD`]
    /// (verification is faked: see [`Sim::finish_job`]).
    pub fn new(users: &[&str], limits: Limits) -> Sim {
        let accounts: HashMap<String, Account> = users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let mut account = Account::new("h".into(), i as u64 + 1);
                account.last_seen = Some(0);
                (u.to_string(), account)
            })
            .collect();
        let chat = Chat::new(
            ChatSettings::from(&Config::default()),
            accounts,
            "dummy".into(),
        );
        Sim {
            chat,
            conns: Vec::new(),
            jobs: Vec::new(),
            now: Clock {
                mono: Instant::now(),
                wall: 1_800_000_000,
                wall_ms: 1_800_000_000_000,
            },
            pass: 1,
            limits: Arc::new(limits),
            resume: Vec::new(),
            breaches: Vec::new(),
            next_message_id: 1,
            history_rows: 3,
            history_padding: 0,
            marks: HashMap::new(),
        }
    }

    /// Limits for simulation: no rate limit, the default timeouts, and the
    /// given line and output limits.
    pub fn limits(max_line: usize, max_outbuf: usize) -> Limits {
        Limits {
            max_line,
            max_outbuf,
            login_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(1800),
            rate: Rate {
                per_sec: 0.0,
                burst: 20,
            },
            store_backlog: Default::default(),
        }
    }

    /// Opens a plaintext connection; returns its token.
    pub fn connect(&mut self) -> usize {
        self.connect_with(Transport::Plain)
    }

    /// Opens a connection over `transport`; returns its token.
    pub fn connect_with(&mut self, transport: Transport) -> usize {
        let token = self.conns.len();
        let sref = SessionRef {
            token,
            id: token as u64 + 1,
        };
        let ip: IpAddr = [127, 0, 0, 1].into();
        let session = Session::new(
            sref,
            ip,
            transport,
            Arc::clone(&self.limits),
            b"",
            self.now.mono,
        );
        self.conns.push(SimConn {
            session,
            socket: ScriptedSocket::default(),
            reaped: false,
            readable: false,
        });
        token
    }

    /// The peer sends `bytes`; the connection is then served.
    pub fn send(&mut self, token: usize, bytes: &[u8]) {
        if let Some(conn) = self.conns.get_mut(token) {
            conn.socket.incoming.extend(bytes);
            conn.readable |= !bytes.is_empty();
        }
        self.serve(token);
    }

    /// The peer closes its side.
    pub fn hang_up(&mut self, token: usize) {
        if let Some(conn) = self.conns.get_mut(token) {
            conn.socket.peer_closed = true;
            conn.readable = true;
        }
        self.serve(token);
    }

    /// The socket takes up to `n` more bytes; the connection is then served.
    pub fn drain(&mut self, token: usize, n: usize) {
        if let Some(conn) = self.conns.get_mut(token) {
            conn.socket.accept = conn.socket.accept.saturating_add(n);
        }
        self.serve(token);
    }

    /// A new loop pass: every live connection is served again.
    /// As in the reactor, only sessions whose line turn ran out are served
    /// again without an event of their own.
    pub fn next_pass(&mut self) {
        self.pass += 1;
        for token in std::mem::take(&mut self.resume) {
            self.serve(token);
        }
    }

    /// Time moves on; timers that are due fire.
    pub fn advance(&mut self, by: Duration) {
        self.now.mono += by;
        self.now.wall += by.as_secs() as i64;
        self.now.wall_ms += by.as_millis() as i64;
        let now = self.now.mono;
        for token in 0..self.conns.len() {
            if let Some(conn) = self.live(token) {
                conn.session.on_deadline(now);
                self.serve(token);
            }
        }
        // As the reactor does a moment after an output empties.
        for conn in self.conns.iter_mut().filter(|c| !c.reaped) {
            conn.session.release_output();
        }
    }

    /// Starts shutting down every connection.
    pub fn shutdown(&mut self) {
        let now = self.now.mono;
        for token in 0..self.conns.len() {
            if let Some(conn) = self.live(token) {
                conn.session.begin_shutdown(now);
                self.serve(token);
            }
        }
    }

    fn live(&mut self, token: usize) -> Option<&mut SimConn> {
        self.conns.get_mut(token).filter(|c| !c.reaped)
    }

    /// What the reactor's `serve` does: write, read and handle lines while
    /// there is room, write again, settle.
    pub fn serve(&mut self, token: usize) {
        for _ in 0..1000 {
            let Some(conn) = self.conns.get_mut(token).filter(|c| !c.reaped) else {
                return;
            };
            if conn.session.wants_write() {
                let _ = conn.session.write_to(&mut conn.socket);
            }
            if conn.readable && conn.session.wants_read() {
                match conn.session.read_from(&mut conn.socket) {
                    Ok(ReadStatus::Full) => {}
                    _ => conn.readable = false,
                }
            }
            let mut outbox = Outbox::default();
            let turn_over = conn
                .session
                .process(&mut self.chat, self.now, self.pass, &mut outbox);
            if conn.session.wants_write() {
                let _ = conn.session.write_to(&mut conn.socket);
            }
            let room = conn.readable && conn.session.wants_read();
            let again = !turn_over && (room || conn.session.has_work());
            self.apply(outbox);
            if turn_over && !self.resume.contains(&token) {
                self.resume.push(token);
            }
            if !again {
                break;
            }
        }
        self.settle(token);
    }

    fn settle(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(token).filter(|c| !c.reaped) else {
            return;
        };
        let mut ids = Vec::new();
        if let (Some((pushed, inboxed)), Some(user)) = (
            conn.session.take_left(&mut ids),
            conn.session.caller().user.as_deref(),
        ) {
            let update = self.chat.written(user, pushed, inboxed, &ids);
            self.marks.extend(update);
        }
        // As in the reactor: once it stops being open, it is not online and
        // what it never wrote out is unread again at once.
        if conn.session.take_departure().is_some() {
            let (pushes, inbox) = conn.session.take_unsent();
            let caller = conn.session.caller().clone();
            if let Some(request) = self.chat.disconnect(&caller, self.now) {
                self.background(request);
            }
            if let Some(user) = caller.user {
                let mut fx = Effects::default();
                if let Some(job) = self.chat.left_over(&user, &pushes, &inbox, &mut fx) {
                    self.dispatch(job, None);
                }
                self.apply_effects(fx);
            }
        }
        if let Some(conn) = self.conns.get_mut(token) {
            if conn.session.is_finished() {
                conn.reaped = true;
            }
        }
    }

    fn background(&mut self, request: StoreRequest) {
        self.jobs.push(PendingJob {
            job: Job {
                cont: commands::Cont::Background,
                work: Work::Store(request),
            },
            reply_to: None,
        });
    }

    /// What the reactor does with what another node of a cluster said
    /// (the chat must have joined one: `sim.chat.join_cluster(..)`).
    pub fn from_cluster(&mut self, inbound: crate::cluster::Inbound) {
        let mut fx = Effects::default();
        let job = self.chat.on_cluster(inbound, self.now, &mut fx);
        self.apply_effects(fx);
        if let Some(job) = job {
            self.dispatch(job, None);
        }
    }

    fn apply(&mut self, outbox: Outbox) {
        for (job, reply_to) in outbox.jobs {
            self.dispatch(job, reply_to);
        }
        self.apply_effects(outbox.effects);
    }

    fn dispatch(&mut self, job: Job, reply_to: Option<ReplyTo>) {
        if let Some(r) = reply_to {
            // Behind a barrier nothing new may start, only the barrier's own
            // next step.
            let blocked = self.jobs.iter().any(|p| {
                p.job.cont.is_barrier()
                    && p.reply_to
                        .is_some_and(|b| b.session == r.session && b.seq != r.seq)
            });
            if blocked {
                self.breaches.push(Breach(format!(
                    "session {} started command {} while a barrier waited",
                    r.session.id, r.seq
                )));
            }
        }
        self.jobs.push(PendingJob { job, reply_to });
    }

    fn apply_effects(&mut self, fx: Effects) {
        for d in fx.deliveries {
            let stored_id = d.stored.as_ref().map(|s| s.id);
            let pushed = match self.live(d.to.token).filter(|c| c.session.id() == d.to.id) {
                Some(conn) => {
                    let pushed = conn.session.push_event(&d.line, stored_id);
                    if pushed == Pushed::OverLimit {
                        conn.session.drop_slow();
                    }
                    pushed
                }
                None => Pushed::Refused,
            };
            self.settle(d.to.token);
            if let (Pushed::Refused, Some(stored)) = (pushed, d.stored) {
                if let Some(job) = self.chat.undelivered(&stored.recipient, &[stored.id], &[]) {
                    self.dispatch(job, None);
                }
            }
        }
        let now = self.now.mono;
        for (sref, reason) in fx.closes {
            if let Some(conn) = self.live(sref.token).filter(|c| c.session.id() == sref.id) {
                conn.session.say_bye(reason, now);
                self.settle(sref.token);
            }
        }
        for request in fx.background {
            self.background(request);
        }
        self.marks.extend(fx.marks);
    }

    /// Finishes job `index` (modulo the number pending) the way the store
    /// or hasher would have, successfully. Returns false if none is pending.
    pub fn finish_job(&mut self, index: usize) -> bool {
        if self.jobs.is_empty() {
            return false;
        }
        let PendingJob { job, reply_to } = self.jobs.remove(index % self.jobs.len());
        let result = self.fake_result(&job.work);
        let live = reply_to.filter(|r| {
            self.conns
                .get(r.session.token)
                .is_some_and(|c| !c.reaped && c.session.id() == r.session.id && c.session.is_open())
        });
        match live {
            Some(r) => {
                let mut outbox = Outbox::default();
                if let Some(conn) = self.conns.get_mut(r.session.token) {
                    conn.session.complete(
                        &mut self.chat,
                        r.seq,
                        job.cont,
                        result,
                        self.now,
                        &mut outbox,
                    );
                }
                self.apply(outbox);
                self.serve(r.session.token);
            }
            None => {
                let mut fx = Effects::default();
                if let Step::Wait(job) = self
                    .chat
                    .complete(None, job.cont, result, self.now, &mut fx)
                {
                    self.dispatch(job, None);
                }
                self.apply_effects(fx);
            }
        }
        true
    }

    fn fake_result(&mut self, work: &Work) -> WorkResult {
        match work {
            Work::Local => WorkResult::Local,
            Work::Hash(HashWork::Verify { password, .. }) => {
                WorkResult::Hash(HashOutcome::Verified(password == PASSWORD))
            }
            Work::Hash(HashWork::Hash { .. }) => {
                WorkResult::Hash(HashOutcome::Hashed(Ok("h".into())))
            }
            Work::Store(StoreRequest::InsertMessages(messages)) => {
                let ids = messages
                    .iter()
                    .map(|_| {
                        self.next_message_id += 1;
                        self.next_message_id
                    })
                    .collect();
                WorkResult::Store(Ok(StoreOutput::Ids(ids)))
            }
            Work::Store(StoreRequest::History {
                user,
                limit,
                after,
                upto,
                page,
                ..
            }) => {
                // Messages 1..=history_rows; the span is the last `limit`.
                let newest = self.history_rows as i64;
                let (after, upto, total) = match upto {
                    Some(upto) => (*after, *upto, 0),
                    None => {
                        let total = newest.min(i64::from(*limit));
                        (newest - total, newest, total as u32)
                    }
                };
                let rows = (after + 1..=upto)
                    .take(*page as usize)
                    .map(|id| MessageRow {
                        id,
                        ts: self.now.wall,
                        sender: user.clone(),
                        recipient: "someone".into(),
                        body: format!("history line {id}{}", "x".repeat(self.history_padding)),
                    })
                    .collect();
                WorkResult::Store(Ok(StoreOutput::History { rows, upto, total }))
            }
            Work::Store(StoreRequest::TakeInbox { .. }) => {
                WorkResult::Store(Ok(StoreOutput::Rows(Vec::new())))
            }
            Work::Store(StoreRequest::CreateUser { .. }) => {
                self.next_message_id += 1;
                WorkResult::Store(Ok(StoreOutput::Ids(vec![self.next_message_id])))
            }
            Work::Store(_) => WorkResult::Store(Ok(StoreOutput::Done)),
        }
    }

    /// Runs until nothing is left to do: every job finished (oldest first),
    /// every socket drained, every turn taken. Bounded, for fuzzers.
    pub fn settle_all(&mut self) {
        for token in 0..self.conns.len() {
            if let Some(conn) = self.conns.get_mut(token) {
                conn.socket.accept = usize::MAX;
            }
        }
        let mut last = None;
        for _ in 0..100_000 {
            self.next_pass();
            // Every socket takes everything now: the reactor would get a
            // WRITABLE event for each that has output waiting.
            for token in 0..self.conns.len() {
                if self.conns[token].session.wants_write() && !self.conns[token].reaped {
                    self.serve(token);
                }
            }
            if self.finish_job(0) {
                continue;
            }
            let progress: (usize, usize, usize) = self
                .conns
                .iter()
                .filter(|c| !c.reaped)
                .map(|c| {
                    let unread = c.socket.incoming.len();
                    (c.socket.written.len(), c.session.buffered_input(), unread)
                })
                .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
            if last == Some(progress) {
                return;
            }
            last = Some(progress);
        }
    }

    /// Everything connection `token` has written so far, as text.
    /// Everything written to `token` so far, without telnet answers (see
    /// [`Sim::raw_output`]).
    pub fn output(&self, token: usize) -> String {
        let raw = self.raw_output(token);
        let mut text = Vec::with_capacity(raw.len());
        let mut bytes = raw.iter();
        while let Some(&b) = bytes.next() {
            // The server sends 255 only as the first byte of a 3-byte
            // telnet answer: UTF-8 text never holds it.
            if b == 255 {
                bytes.nth(1);
            } else {
                text.push(b);
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Every byte written to `token` so far.
    pub fn raw_output(&self, token: usize) -> Vec<u8> {
        self.conns
            .get(token)
            .map(|c| c.socket.written.clone())
            .unwrap_or_default()
    }
}
