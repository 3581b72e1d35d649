//! The admin socket (`natterctl`'s way in), served by the same loop: a Unix
//! listener in the data directory (mode 0600), one request per connection,
//! answered at once from the loop's state (see `crate::admin` for the
//! protocol). Part of the reactor; split out by topic only.

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Token};
use slab::Slab;

use crate::admin::{self, AdminCommand, Answer};
use crate::commands::Effects;
use crate::protocol::{self, ByeReason, ErrorCode};

use super::{Server, ADMIN_BASE, ADMIN_LISTENER};

/// Admin connections at once; more wait in the listener's backlog.
const MAX_ADMIN_CONNS: usize = 16;

/// The admin listener and its connections.
pub(super) struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
    conns: Slab<AdminConn>,
}

struct AdminConn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    /// The request is answered: close once the answer is out.
    answered: bool,
}

impl AdminSocket {
    /// Binds `path` (replacing a socket left by a server that died: the
    /// data directory's lock says no other natterd is using it) and makes
    /// it readable and writable by natterd's user only.
    pub(super) fn bind(path: &Path, poll: &mio::Poll) -> io::Result<AdminSocket> {
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
        Ok(AdminSocket {
            listener,
            path: path.to_path_buf(),
            conns: Slab::new(),
        })
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Server {
    /// Accepts admin connections while there is room.
    pub(super) fn admin_accept(&mut self) {
        let Some(admin) = self.admin.as_mut() else {
            return;
        };
        while admin.conns.len() < MAX_ADMIN_CONNS {
            match admin.listener.accept() {
                Ok((mut stream, _)) => {
                    let entry = admin.conns.vacant_entry();
                    let token = Token(ADMIN_BASE + entry.key());
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        continue;
                    }
                    entry.insert(AdminConn {
                        stream,
                        input: Vec::new(),
                        output: Vec::new(),
                        sent: 0,
                        answered: false,
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
        let Some(conn) = self.admin.as_mut().and_then(|a| a.conns.get_mut(key)) else {
            return;
        };
        let mut closed = false;
        if !conn.answered {
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
            let request = match conn.input.iter().position(|b| *b == b'\n') {
                Some(end) => Some(Ok(String::from_utf8_lossy(&conn.input[..end]).into_owned())),
                None if conn.input.len() > admin::MAX_REQUEST => {
                    Some(Err("request too long".to_string()))
                }
                None => None,
            };
            if let Some(request) = request {
                let answer = match request.and_then(|line| admin::parse(&line)) {
                    Ok(command) => self.admin_answer(command),
                    Err(e) => admin::refuse(ErrorCode::BadArg, &e),
                };
                if let Some(conn) = self.admin.as_mut().and_then(|a| a.conns.get_mut(key)) {
                    conn.output = answer;
                    conn.answered = true;
                }
            } else if closed {
                self.admin_close(key);
                return;
            }
        }
        let Some(conn) = self.admin.as_mut().and_then(|a| a.conns.get_mut(key)) else {
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

    fn admin_close(&mut self, key: usize) {
        if let Some(admin) = self.admin.as_mut() {
            if let Some(mut conn) = admin.conns.try_remove(key) {
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
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
                        ("transport", if s.is_tls() { "tls" } else { "plain" }),
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
