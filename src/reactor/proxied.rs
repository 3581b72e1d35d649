//! Connections on a `--proxy-protocol` listener whose PROXY header has not
//! arrived yet. They are not sessions: who they are (the address admission
//! counts them by) is what the header says, so they wait here, at most
//! `MAX_AWAITING` of them and each until the login timeout, and become a
//! session through the usual admission once it is read. The header is
//! peeked, then exactly its bytes taken, so whatever the client sent after
//! it stays in the socket for the session. Part of the reactor; split out
//! by topic only.

use std::cmp::Reverse;
use std::io::{self, Read};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Token};
use slab::Slab;

use crate::proxy::{self, ProxyHeader};

use super::accept::Start;
use super::{Server, Timer, PROXY_BASE};

/// Connections waiting for their header at once; more are closed at accept
/// (they all come from the proxy, so the per-address limits cannot bound
/// them).
pub(super) const MAX_AWAITING: usize = 1024;

/// One connection waiting for its header.
pub(super) struct Awaiting {
    stream: TcpStream,
    /// The proxy's end.
    peer: SocketAddr,
    start: Start,
    /// Never reused: a timer finds the right connection.
    id: u64,
}

/// The connections waiting for their header.
#[derive(Default)]
pub(super) struct AwaitingHeaders {
    conns: Slab<Awaiting>,
    next_id: u64,
}

impl Server {
    /// A connection accepted on a proxied listener: wait for its header.
    pub(super) fn await_header(&mut self, mut stream: TcpStream, peer: SocketAddr, start: Start) {
        let waiting = &mut self.awaiting;
        if waiting.conns.len() >= MAX_AWAITING {
            self.stats.refused_busy += 1;
            log::warn!("{MAX_AWAITING} connections are waiting for a PROXY header; closing one from {peer}");
            return;
        }
        let entry = waiting.conns.vacant_entry();
        let token = Token(PROXY_BASE + entry.key());
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            log::warn!("cannot register connection from {peer}: {e}");
            return;
        }
        waiting.next_id += 1;
        let id = waiting.next_id;
        let key = entry.key();
        entry.insert(Awaiting {
            stream,
            peer,
            start,
            id,
        });
        let at = self.clock.mono + self.config.login_timeout();
        self.deadlines
            .push(Reverse((at, Timer::ProxyHeader { key, id })));
        // Its header may already be there.
        self.header_ready(key);
    }

    /// A waiting connection is readable: is its header all there?
    pub(super) fn header_ready(&mut self, key: usize) {
        let Some(waiting) = self.awaiting.conns.get_mut(key) else {
            return;
        };
        let mut buf = [0u8; proxy::MAX_HEADER];
        let seen = loop {
            match waiting.stream.peek(&mut buf) {
                Ok(0) => return self.drop_awaiting(key, "closed before its PROXY header"),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.drop_awaiting(key, "failed before its PROXY header"),
            }
        };
        match proxy::parse(&buf[..seen]) {
            ProxyHeader::Incomplete => {}
            ProxyHeader::Invalid(why) => self.drop_awaiting(key, &why),
            ProxyHeader::Complete { client, len } => {
                let Some(mut waiting) = self.awaiting.conns.try_remove(key) else {
                    return;
                };
                let _ = self.poll.registry().deregister(&mut waiting.stream);
                // Take the header and nothing after it: peeked, so it is there.
                let mut header = vec![0u8; len];
                if waiting.stream.read_exact(&mut header).is_err() {
                    log::debug!(
                        "connection from {} failed reading its PROXY header",
                        waiting.peer
                    );
                    return;
                }
                // A LOCAL or UNKNOWN header is the proxy's own connection
                // (a health check): it counts as the proxy's.
                let addr = client.unwrap_or(waiting.peer);
                self.admit(waiting.stream, addr, waiting.start);
            }
        }
    }

    /// Its login timeout passed before its header came.
    pub(super) fn header_timeout(&mut self, key: usize, id: u64) {
        if self.awaiting.conns.get(key).is_some_and(|w| w.id == id) {
            self.drop_awaiting(key, "no PROXY header within the login timeout");
        }
    }

    fn drop_awaiting(&mut self, key: usize, why: &str) {
        if let Some(mut waiting) = self.awaiting.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut waiting.stream);
            log::debug!("connection from {} closed: {why}", waiting.peer);
        }
    }
}
