//! The operator's ways in, served by the same loop: the admin socket
//! (`natterctl`'s; a Unix listener in the data directory, mode 0600) and,
//! with `--metrics`, an HTTP listener answering `GET /metrics`. One request
//! per connection, answered at once from the loop's state (see
//! `crate::admin` for the admin protocol, `crate::metrics` for the
//! figures). Part of the reactor; split out by topic only.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Token};
use slab::Slab;

use crate::admin::{self, AdminCommand, Answer};
use crate::commands::{Cont, Effects, Job, Step, Work, WorkResult};
use crate::protocol::{self, ByeReason, ErrorCode};
use crate::store::StoreRequest;

use super::{Server, ADMIN_BASE, ADMIN_LISTENER, METRICS_LISTENER};

/// Admin connections at once; more wait in the listener's backlog.
const MAX_ADMIN_CONNS: usize = 16;

/// The admin socket, the metrics listener, and their connections.
#[derive(Default)]
pub(super) struct AdminSocket {
    unix: Option<(UnixListener, PathBuf)>,
    http: Option<TcpListener>,
    conns: Slab<AdminConn>,
    /// The next connection's id.
    next_id: u64,
}

/// An admin connection, or an HTTP one for `/metrics`.
enum AdminStream {
    Unix(UnixStream),
    Http(TcpStream),
}

impl AdminStream {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            AdminStream::Unix(s) => s,
            AdminStream::Http(s) => s,
        }
    }
}

impl Read for AdminStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            AdminStream::Unix(s) => s.read(buf),
            AdminStream::Http(s) => s.read(buf),
        }
    }
}

impl Write for AdminStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            AdminStream::Unix(s) => s.write(buf),
            AdminStream::Http(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct AdminConn {
    stream: AdminStream,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    /// The request is answered: close once the answer is out.
    answered: bool,
    /// Its request is being carried out off the loop (a backup).
    working: bool,
    /// Never reused: a late answer finds the right connection.
    id: u64,
}

impl AdminSocket {
    /// Binds `path` (replacing a socket left by a server that died: the
    /// data directory's lock says no other natterd is using it) and makes
    /// it readable and writable by natterd's user only.
    pub(super) fn bind(&mut self, path: &Path, poll: &mio::Poll) -> io::Result<()> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_socket() {
                std::fs::remove_file(path)?;
            } else {
                return Err(io::Error::other(format!(
                    "admin socket {}: a file that is not a socket is in the way",
                    path.display()
                )));
            }
        }
        let mut listener = UnixListener::bind(path).map_err(|e| {
            io::Error::other(format!("cannot bind admin socket {}: {e}", path.display()))
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        poll.registry()
            .register(&mut listener, ADMIN_LISTENER, Interest::READABLE)?;
        self.unix = Some((listener, path.to_path_buf()));
        Ok(())
    }

    /// Listens for `GET /metrics` on `addr`.
    pub(super) fn bind_metrics(&mut self, addr: SocketAddr, poll: &mio::Poll) -> io::Result<()> {
        let mut listener = TcpListener::bind(addr)
            .map_err(|e| io::Error::other(format!("cannot listen for /metrics on {addr}: {e}")))?;
        poll.registry()
            .register(&mut listener, METRICS_LISTENER, Interest::READABLE)?;
        self.http = Some(listener);
        Ok(())
    }

    /// Where `/metrics` is served, if it is.
    pub(super) fn metrics_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        if let Some((_, path)) = &self.unix {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What an HTTP request on the metrics listener asks for.
enum HttpRequest {
    /// Not all of its head yet.
    Partial,
    /// `GET /metrics`.
    Metrics,
    /// Anything else.
    Other,
}

fn http_request(bytes: &[u8]) -> HttpRequest {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Partial) => HttpRequest::Partial,
        Ok(httparse::Status::Complete(_))
            if request.method == Some("GET")
                && request
                    .path
                    .is_some_and(|p| p == "/metrics" || p.starts_with("/metrics?")) =>
        {
            HttpRequest::Metrics
        }
        _ => HttpRequest::Other,
    }
}

fn http_response(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

impl Server {
    /// Accepts admin (or, `http`, metrics) connections while there is room.
    pub(super) fn admin_accept(&mut self, http: bool) {
        let admin = &mut self.admin;
        while admin.conns.len() < MAX_ADMIN_CONNS {
            let accepted = match (http, &admin.unix, &admin.http) {
                (false, Some((l, _)), _) => l.accept().map(|(s, _)| AdminStream::Unix(s)),
                (true, _, Some(l)) => l.accept().map(|(s, _)| AdminStream::Http(s)),
                _ => return,
            };
            match accepted {
                Ok(mut stream) => {
                    let entry = admin.conns.vacant_entry();
                    let token = Token(ADMIN_BASE + entry.key());
                    if self
                        .poll
                        .registry()
                        .register(
                            stream.source(),
                            token,
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    admin.next_id += 1;
                    entry.insert(AdminConn {
                        stream,
                        input: Vec::new(),
                        output: Vec::new(),
                        sent: 0,
                        answered: false,
                        working: false,
                        id: admin.next_id,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("admin socket: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// An admin connection is ready: read its request, answer it, write.
    pub(super) fn admin_ready(&mut self, key: usize) {
        let Some(conn) = self.admin.conns.get_mut(key) else {
            return;
        };
        let http = matches!(conn.stream, AdminStream::Http(_));
        let id = conn.id;
        let mut closed = false;
        if !conn.answered && !conn.working {
            let mut chunk = [0u8; 4096];
            loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => conn.input.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
                if conn.input.len() > admin::MAX_REQUEST {
                    break;
                }
            }
            let answer = if http {
                match http_request(&conn.input) {
                    HttpRequest::Partial if conn.input.len() <= admin::MAX_REQUEST => None,
                    HttpRequest::Metrics => Some(self.metrics_response()),
                    HttpRequest::Partial | HttpRequest::Other => Some(http_response(
                        "404 Not Found",
                        "text/plain",
                        b"natterd serves GET /metrics here\n",
                    )),
                }
            } else {
                let request = match conn.input.iter().position(|b| *b == b'\n') {
                    Some(end) => Some(Ok(String::from_utf8_lossy(&conn.input[..end]).into_owned())),
                    None if conn.input.len() > admin::MAX_REQUEST => {
                        Some(Err("request too long".to_string()))
                    }
                    None => None,
                };
                match request.map(|r| r.and_then(|line| admin::parse(&line))) {
                    Some(Ok(AdminCommand::Backup { path })) => {
                        // Taken by the reader thread; answered when done.
                        if let Some(conn) = self.admin.conns.get_mut(key) {
                            conn.working = true;
                        }
                        let job = Job {
                            cont: Cont::Admin { conn: key, id },
                            work: Work::Store(StoreRequest::Backup { path }),
                        };
                        self.dispatch(job, None);
                        return;
                    }
                    Some(Ok(AdminCommand::AddUser { user, password })) => {
                        log::info!("account {user} being made by the operator");
                        let step = self.chat.add_user(user, password);
                        self.operator_step(key, id, step, "account made");
                        return;
                    }
                    Some(Ok(AdminCommand::SetPassword { user, password })) => {
                        log::info!("password of {user} being set by the operator");
                        let step = self.chat.set_password(user, password);
                        self.operator_step(key, id, step, "password set");
                        return;
                    }
                    Some(Ok(command)) => Some(self.admin_answer(command)),
                    Some(Err(e)) => Some(admin::refuse(ErrorCode::BadArg, &e)),
                    None => None,
                }
            };
            if let Some(answer) = answer {
                if let Some(conn) = self.admin.conns.get_mut(key) {
                    conn.output = answer;
                    conn.answered = true;
                }
            } else if closed {
                self.admin_close(key);
                return;
            }
        }
        let Some(conn) = self.admin.conns.get_mut(key) else {
            return;
        };
        while conn.answered && conn.sent < conn.output.len() {
            match conn.stream.write(&conn.output[conn.sent..]) {
                Ok(0) => break,
                Ok(n) => conn.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        if conn.answered {
            self.admin_close(key);
        }
    }

    /// Admin work done off the loop is back: answer its connection, if it
    /// is still there.
    pub(super) fn admin_finish(&mut self, key: usize, id: u64, result: WorkResult) {
        let answer = match result {
            WorkResult::Store(Ok(_)) => Answer::default().ok("backup written"),
            WorkResult::Store(Err(e)) => admin::refuse(ErrorCode::Internal, &e.to_string()),
            _ => admin::refuse(ErrorCode::Internal, "unexpected result"),
        };
        self.admin_reply(key, id, answer);
    }

    /// Carries an operator's request that runs through the chat one step
    /// on: its next job goes off the loop tagged for connection `key`, and
    /// its reply (`done` when the chat has none) answers that connection.
    pub(super) fn operator_step(&mut self, key: usize, id: u64, step: Step, done: &'static str) {
        match step {
            Step::Wait(Job { cont, work }) => {
                if let Some(conn) = self.admin.conns.get_mut(key) {
                    conn.working = true;
                }
                let job = Job {
                    cont: Cont::Operator {
                        conn: key,
                        id,
                        then: Box::new(cont),
                        done,
                    },
                    work,
                };
                self.dispatch(job, None);
            }
            Step::Reply(reply) => self.admin_reply(key, id, reply),
            Step::Done | Step::Inbox { .. } | Step::More { .. } => {
                self.admin_reply(key, id, Answer::default().ok(done))
            }
        }
    }

    /// Answers admin connection `key` with `answer` and closes it once
    /// written, if it is still the one with `id`.
    fn admin_reply(&mut self, key: usize, id: u64, answer: Vec<u8>) {
        let Some(conn) = self.admin.conns.get_mut(key).filter(|c| c.id == id) else {
            return;
        };
        conn.output = answer;
        conn.working = false;
        conn.answered = true;
        self.admin_ready(key);
    }

    fn admin_close(&mut self, key: usize) {
        if let Some(mut conn) = self.admin.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(conn.stream.source());
        }
    }

    /// The `/metrics` answer: every figure as of now.
    fn metrics_response(&mut self) -> Vec<u8> {
        let snapshot = self.metrics_snapshot();
        match crate::metrics::render(&snapshot, &self.timings) {
            Ok(text) => http_response(
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text.as_bytes(),
            ),
            Err(_) => http_response(
                "500 Internal Server Error",
                "text/plain",
                b"encoding failed\n",
            ),
        }
    }

    fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        let logged_in = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.caller().user.is_some())
            .count() as u64;
        let c = &self.chat.counters;
        crate::metrics::Snapshot {
            connections: vec![
                ("logged_in", logged_in),
                ("not_logged_in", self.conns.len() as u64 - logged_in),
            ],
            logins: vec![
                ("ok", c.logins_ok),
                ("failed", c.logins_failed),
                ("locked", c.logins_locked),
                ("busy", c.logins_busy),
                ("banned", c.logins_banned),
            ],
            messages: vec![
                ("delivered", c.delivered),
                ("stored", c.stored),
                ("broadcast", c.broadcast_deliveries),
            ],
            closed: self
                .stats
                .closed_by
                .iter()
                .map(|(reason, n)| (*reason, *n))
                .collect(),
            output_bytes: self.output_total as u64,
            // One walk over the sessions per scrape, not per pass.
            session_buffer_bytes: self
                .conns
                .iter()
                .map(|(_, c)| c.session.buffer_capacity() as u64)
                .sum(),
            store_waiting_bytes: self.background.store_bytes() as u64,
            hash_queue: self.background.hash_queue_len() as u64,
            users: self.chat.user_count() as u64,
            cluster: self.cluster_figures(),
        }
    }

    /// Carries a request out and says how it went.
    fn admin_answer(&mut self, command: AdminCommand) -> Vec<u8> {
        let now = self.clock.mono;
        match command {
            AdminCommand::Users { pattern } => {
                let users = self.chat.users(pattern.as_deref());
                let mut answer = Answer::default();
                for u in &users {
                    let seen = u
                        .last_seen
                        .map_or_else(|| "never".to_string(), protocol::format_time);
                    answer.row(&[
                        ("user", &u.name),
                        ("online", if u.online { "yes" } else { "no" }),
                        ("last_seen", &seen),
                        ("unread", &u.unread.to_string()),
                        ("banned", if u.banned { "yes" } else { "no" }),
                    ]);
                }
                answer.ok(&format!("{} users", users.len()))
            }
            AdminCommand::Sessions => {
                let mut answer = Answer::default();
                for (_, conn) in self.conns.iter() {
                    let s = &conn.session;
                    let user = s.caller().user.as_deref().unwrap_or("-");
                    answer.row(&[
                        ("id", &s.id().to_string()),
                        ("user", user),
                        ("address", &s.caller().ip.to_string()),
                        ("transport", s.transport_name()),
                        (
                            "connected_secs",
                            &now.saturating_duration_since(s.connected_at())
                                .as_secs()
                                .to_string(),
                        ),
                        (
                            "idle_secs",
                            &now.saturating_duration_since(s.last_command_at())
                                .as_secs()
                                .to_string(),
                        ),
                        ("output_bytes", &s.pending_output().to_string()),
                    ]);
                }
                answer.ok(&format!("{} sessions", self.conns.len()))
            }
            AdminCommand::Kick { target, reason } => {
                let by_id = target.parse::<u64>().ok();
                let tokens: Vec<usize> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| {
                        c.session.is_open()
                            && (Some(c.session.id()) == by_id
                                || c.session.caller().user.as_deref() == Some(target.as_str()))
                    })
                    .map(|(token, _)| token)
                    .collect();
                if tokens.is_empty() {
                    return admin::refuse(
                        ErrorCode::NoUser,
                        &format!("no open session of {target}"),
                    );
                }
                for &token in &tokens {
                    if let Some(conn) = self.conns.get_mut(token) {
                        let s = &conn.session;
                        log::info!(
                            "session {} ({} from {}) kicked by the operator{}{}",
                            s.id(),
                            s.caller().user.as_deref().unwrap_or("not logged in"),
                            s.caller().ip,
                            if reason.is_empty() { "" } else { ": " },
                            reason
                        );
                        conn.session.say_bye(ByeReason::Kicked, now);
                    }
                    self.settle(token);
                    self.write_soon(token);
                }
                admin::Answer::default().ok(&format!("kicked {} sessions", tokens.len()))
            }
            AdminCommand::Notice { text } => {
                let line: std::rc::Rc<[u8]> = protocol::event(&format!("notice {text}")).into();
                let mut fx = Effects::default();
                let mut n = 0;
                for (_, conn) in self.conns.iter() {
                    if conn.session.is_open() && conn.session.caller().user.is_some() {
                        fx.deliveries.push(crate::commands::Delivery {
                            to: conn.session.caller().session,
                            line: std::rc::Rc::clone(&line),
                            stored: None,
                        });
                        n += 1;
                    }
                }
                self.apply_effects(fx);
                Answer::default().ok(&format!("sent to {n}"))
            }
            AdminCommand::Registration(registration) => {
                self.chat.set_registration(registration);
                log::info!("registration set to {registration:?} by the operator");
                Answer::default().ok(&format!("registration {registration:?}").to_lowercase())
            }
            AdminCommand::Ban { user, on } => {
                let mut fx = Effects::default();
                let Some(write) = self.chat.set_banned(&user, on, &mut fx) else {
                    return admin::refuse(ErrorCode::NoUser, &format!("no such user {user}"));
                };
                log::info!(
                    "{user} {} by the operator",
                    if on { "banned" } else { "unbanned" }
                );
                self.apply_effects(fx);
                self.background(write);
                Answer::default().ok(&format!(
                    "{} {user}",
                    if on { "banned" } else { "unbanned" }
                ))
            }
            AdminCommand::DeleteUser { user } => {
                let mut fx = Effects::default();
                let Some(write) = self.chat.delete_user(&user, &mut fx) else {
                    return admin::refuse(ErrorCode::NoUser, &format!("no such user {user}"));
                };
                log::info!("{user} deleted by the operator");
                self.apply_effects(fx);
                self.background(write);
                Answer::default().ok(&format!("deleted {user}"))
            }
            // Handled in `admin_ready`: they are answered later.
            AdminCommand::Backup { .. }
            | AdminCommand::AddUser { .. }
            | AdminCommand::SetPassword { .. } => {
                admin::refuse(ErrorCode::Internal, "backup is answered when done")
            }
            AdminCommand::Reload => match self.start_reload() {
                Ok(what) => Answer::default().ok(what),
                Err(e) => admin::refuse(ErrorCode::Internal, &e),
            },
            AdminCommand::Stats => {
                let s = &self.stats;
                let mut answer = Answer::default();
                let figures: [(&str, String); 12] = [
                    ("sessions", self.conns.len().to_string()),
                    ("online_users", self.chat.online_count().to_string()),
                    ("users", self.chat.user_count().to_string()),
                    ("output_bytes", self.output_total.to_string()),
                    (
                        "store_bytes_waiting",
                        self.background.store_bytes().to_string(),
                    ),
                    ("jobs_in_flight", self.background.in_flight().to_string()),
                    ("accepted", s.accepted.to_string()),
                    ("refused_busy", s.refused_busy.to_string()),
                    ("refused_per_ip", s.refused_per_ip.to_string()),
                    ("closed_slow", s.closed_slow.to_string()),
                    ("closed_idle", s.closed_idle.to_string()),
                    ("closed_output_budget", s.closed_budget.to_string()),
                ];
                for (name, value) in &figures {
                    answer.row(&[("name", name), ("value", value)]);
                }
                answer.ok(&format!("{} figures", figures.len()))
            }
        }
    }
}
