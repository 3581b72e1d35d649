//! Accepting connections: the listeners' readiness, admission (limits per
//! server and per address), the socket options, and the new session. Part
//! of the reactor (it registers sockets); split out by topic only.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Interest, Token};

use crate::commands::{Effects, SessionRef};
use crate::protocol::{self, ByeReason};
use crate::session::{Session, Transport};

use super::{Conn, Server, Timer, ACCEPT_BACKOFF};

impl Server {
    pub(super) fn accept_ready(&mut self, tls: bool) {
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

    pub(super) fn admit(
        &mut self,
        mut stream: TcpStream,
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) {
        let Ok(admitted) = self.admission.admit(addr, self.clock.mono, &mut self.stats) else {
            refuse(&mut stream, tls.is_some());
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
        let kind = if tls.is_some() { "tls" } else { "plain" };
        let transport = match tls {
            None => Transport::Plain,
            Some(cfg) => match rustls::ServerConnection::new(cfg) {
                Ok(conn) => Transport::Tls(Box::new(conn)),
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
            counted_output: 0,
        });
        log::info!("session {id}: connection from {addr} ({kind})");
        // The greeting goes out this pass.
        self.mark_ready(token);
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

/// Running out of descriptors or memory: a reason to pause accepting, not
/// to drop the connection waiting in the backlog.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
