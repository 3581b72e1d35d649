//! Accepting connections: the listeners' readiness, admission (limits per
//! server and per address), the socket options, and the new session. Part
//! of the reactor (it registers sockets); split out by topic only.

use std::cmp::Reverse;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Interest, Token};

use crate::commands::{Effects, SessionRef};
use crate::protocol::{self, ByeReason};
use crate::session::{Session, Transport};
use crate::web::{WebConn, WebPolicy};

use super::{Conn, Server, Timer, ACCEPT_BACKOFF};

/// Which listener a connection came in through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Via {
    Plain,
    Tls,
    Web,
    WebTls,
}

/// What a new connection's transport is made from.
pub(super) enum Start {
    Plain,
    Tls(Arc<rustls::ServerConfig>),
    Web(Arc<WebPolicy>, Option<Arc<rustls::ServerConfig>>),
}

impl Server {
    pub(super) fn accept_ready(&mut self, via: Via) {
        while self.listening {
            if self
                .accept_paused_until
                .is_some_and(|t| t > self.clock.mono)
            {
                return;
            }
            let accepted = match (via, &self.listener, &self.tls_listener, &self.web_listener) {
                (Via::Plain, Some(l), _, _) => l.accept().map(|(s, a)| (s, a, Start::Plain)),
                (Via::Tls, _, Some((l, cfg)), _) => {
                    l.accept().map(|(s, a)| (s, a, Start::Tls(Arc::clone(cfg))))
                }
                (Via::Web, _, _, Some((l, policy))) => l
                    .accept()
                    .map(|(s, a)| (s, a, Start::Web(Arc::clone(policy), None))),
                (Via::WebTls, ..) => match &self.web_tls_listener {
                    Some((l, policy, tls)) => l.accept().map(|(s, a)| {
                        let start = Start::Web(Arc::clone(policy), Some(Arc::clone(tls)));
                        (s, a, start)
                    }),
                    None => return,
                },
                _ => return,
            };
            match accepted {
                // Behind a proxy, who it is comes first (see proxied.rs).
                Ok((stream, addr, start))
                    if self.config.proxy_protocol && matches!(via, Via::Plain | Via::Tls) =>
                {
                    self.await_header(stream, addr, start)
                }
                Ok((stream, addr, start)) => self.admit(stream, addr, start),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_resource_exhaustion(&e) => {
                    // Out of descriptors or memory: the pending connection stays
                    // in the backlog. Keep serving who we have; try again soon.
                    self.stats.accept_errors += 1;
                    log::warn!("accept failed ({e}); pausing accepts for {ACCEPT_BACKOFF:?}");
                    let at = self.clock.mono + ACCEPT_BACKOFF;
                    self.accept_paused_until = Some(at);
                    self.deadlines.push(Reverse((at, Timer::AcceptRetry)));
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

    pub(super) fn admit(&mut self, mut stream: TcpStream, addr: SocketAddr, start: Start) {
        let Ok(admitted) = self.admission.admit(addr, self.clock.mono, &mut self.stats) else {
            refuse(&mut stream, &start);
            return;
        };
        if let Some(oldest) = admitted.displaces {
            // The oldest connection not logged in makes room (see admission.rs).
            let mut fx = Effects::default();
            fx.closes.push((oldest, ByeReason::Busy));
            self.apply_effects(fx);
        }
        // Replies and events are already batched per loop pass; Nagle's
        // algorithm would only hold the tail of a batch for the peer's
        // delayed ACK (measured: 40 ms stalls on pipelined sends).
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("cannot set TCP_NODELAY for {addr}: {e}");
        }
        let (kind, transport) = match start {
            Start::Plain => ("plain", Transport::Plain),
            Start::Tls(cfg) => match rustls::ServerConnection::new(cfg) {
                Ok(conn) => ("tls", Transport::Tls(Box::new(conn))),
                Err(e) => {
                    log::warn!("cannot start TLS for {addr}: {e}");
                    self.admission.left(addr.ip(), None);
                    return;
                }
            },
            Start::Web(policy, None) => (
                "web",
                Transport::Web(Box::new(WebConn::new(policy, None, self.clock.mono))),
            ),
            Start::Web(policy, Some(cfg)) => match rustls::ServerConnection::new(cfg) {
                Ok(tls) => (
                    "web tls",
                    Transport::Web(Box::new(WebConn::new(policy, Some(tls), self.clock.mono))),
                ),
                Err(e) => {
                    log::warn!("cannot start TLS for {addr}: {e}");
                    self.admission.left(addr.ip(), None);
                    return;
                }
            },
        };
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(token), Interest::READABLE)
        {
            log::warn!("cannot register connection from {addr}: {e}");
            self.admission.left(addr.ip(), None);
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let sref = SessionRef { token, id };
        self.admission.joined(sref);
        let session = Session::new(
            sref,
            addr.ip(),
            transport,
            Arc::clone(&self.limits),
            &self.greeting,
            self.clock.mono,
        );
        entry.insert(Conn {
            stream,
            session,
            readable: false,
            write_interest: false,
            timer_at: None,
            in_ready: false,
            in_events: false,
            in_close: false,
            release_due: false,
            counted_output: 0,
        });
        log::info!("session {id}: connection from {addr} ({kind})");
        // The greeting goes out this pass.
        self.mark_ready(token);
    }
}

/// Turns a connection away. Plaintext clients get `* bye busy` (a few
/// bytes always fit a fresh socket's buffer); on the TLS port plaintext would
/// only garble the handshake, so the connection is just closed; a browser
/// gets 503 (its request is not read: a response may come first).
fn refuse(stream: &mut TcpStream, start: &Start) {
    let bye;
    let answer: &[u8] = match start {
        Start::Plain => {
            bye = protocol::bye(ByeReason::Busy);
            &bye
        }
        Start::Tls(_) | Start::Web(_, Some(_)) => return,
        Start::Web(_, None) => crate::web::http::BUSY,
    };
    let _ = stream.write(answer);
}

/// Running out of descriptors or memory: a reason to pause accepting, not
/// to drop the connection waiting in the backlog.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
