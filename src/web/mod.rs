//! The browser's way in (`--web ADDR:PORT`): one HTTP request per
//! connection, answered with a static file of the chat page, `/healthz`,
//! or an upgrade of `/ws` to a WebSocket that carries the line protocol,
//! one line per text frame. Owns the request → answer decision
//! ([`http`]), the frame codec ([`frames`]) and the connection state a
//! session's transport keeps for it ([`conn`]); the page's files are
//! compiled in ([`assets`]).
//!
//! Nothing here touches a socket of its own or the clock: `conn` moves
//! bytes between any `io::Read`/`io::Write` and the session's buffers, the
//! way the TLS transport does, so the session state machine, its limits and
//! its timers are the same as over TCP.

pub mod assets;
pub mod conn;
pub mod frames;
pub mod http;

pub use conn::WebConn;

use std::time::Duration;

/// What the web listener allows, shared by its connections.
#[derive(Clone, Debug)]
pub struct WebPolicy {
    /// Origins (`scheme://host[:port]`) allowed to open `/ws`, from
    /// `--web-origin`. Empty: only the page's own (the request's `Host`).
    pub origins: Vec<String>,
    /// Silence before a ping, and again before the socket is given up.
    pub keepalive: Duration,
}

impl Default for WebPolicy {
    fn default() -> Self {
        WebPolicy {
            origins: Vec::new(),
            keepalive: conn::KEEPALIVE,
        }
    }
}
