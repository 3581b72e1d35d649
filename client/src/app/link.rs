//! Making a connection and logging it in, the first time and again after it
//! drops: the backoff schedule (pure, below) and the dialling itself. A
//! connection that comes back is armed the same way as the first: the login
//! reply waited for with a timeout, then the socket's read timeout set to
//! the keepalive's tick.

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::time::Duration;

use natter_client::{open, LineReader, LineWriter, ServerLine, Stream, TlsConfig};

use super::login::{log_in, Credentials, LoginError};
use super::session::{Keepalive, Wire};

/// How long to try to reach the server before saying it is unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The first wait before reconnecting: long enough not to hammer a server
/// that is restarting, short enough that a blip goes unnoticed.
const FIRST_DELAY: Duration = Duration::from_secs(1);

/// The longest wait between attempts: a server down for an hour is tried
/// once a minute, not once an hour.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// How long to wait before reconnect attempt `attempt` (0 for the first):
/// doubling from [`FIRST_DELAY`] up to [`MAX_DELAY`], then spread by ±25%
/// with `unit` (in 0..1) so that clients dropped together by a restart do
/// not all come back in the same instant.
pub fn backoff(attempt: u32, unit: f64) -> Duration {
    let doubled = FIRST_DELAY.saturating_mul(1u32 << attempt.min(16));
    let base = doubled.min(MAX_DELAY);
    base.mul_f64(0.75 + 0.5 * unit.clamp(0.0, 1.0))
}

/// A fresh random number in 0..1 for the jitter. std's hasher keys are
/// random per `RandomState`, which is all the randomness jitter needs.
pub fn jitter() -> f64 {
    let bits = RandomState::new().hash_one(0u8);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// The wait told to a person, to the nearest second, never 0 for a wait
/// that is still to come: the jitter is noise they need not see.
pub fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().round().max(1.0) as u64
}

/// Where the server is and how to reach it.
pub struct Dialer {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Connect with TLS, trusting what this says.
    pub tls: Option<TlsConfig>,
    /// The keepalive, if any, whose tick becomes the read timeout.
    pub keepalive: Option<Keepalive>,
}

/// A connection, before it is handed to the two threads.
pub struct Connection {
    /// The read half, for the reader thread.
    reader: LineReader<Stream>,
    /// The write half, for [`super::session::Shared`].
    wire: Wire,
    /// Sets the socket's read timeout (it bounds reads through TLS too).
    timeouts: std::net::TcpStream,
}

impl Dialer {
    /// Connects (and, with TLS, verifies the server), without logging in.
    pub fn connect(&self) -> io::Result<Connection> {
        let stream = open(&self.host, self.port, CONNECT_TIMEOUT, self.tls.as_ref())?;
        let timeouts = stream.tcp().try_clone()?;
        let reader = LineReader::new(stream.try_clone()?);
        Ok(Connection {
            reader,
            wire: LineWriter::new(Box::new(stream)),
            timeouts,
        })
    }

    /// Connects and logs in with `creds`; returns the connection, armed for
    /// the keepalive, and the server's welcome line.
    pub fn dial(
        &self,
        creds: &Credentials,
    ) -> Result<(LineReader<Stream>, Wire, ServerLine), LoginError> {
        let mut conn = self.connect().map_err(|e| LoginError {
            message: e.to_string(),
            retry: true,
        })?;
        let welcome = conn.log_in(creds)?;
        conn.arm(self.keepalive).map_err(|e| LoginError {
            message: format!("cannot use the connection: {e}"),
            retry: true,
        })?;
        let (reader, wire) = conn.into_halves();
        Ok((reader, wire, welcome))
    }
}

impl Connection {
    /// Logs in (or registers) on this connection.
    pub fn log_in(&mut self, creds: &Credentials) -> Result<ServerLine, LoginError> {
        let timeouts = &self.timeouts;
        log_in(
            &mut self.reader,
            &mut self.wire,
            |t| timeouts.set_read_timeout(t),
            creds,
        )
    }

    /// The read half and the write half, for the two threads.
    pub fn into_halves(self) -> (LineReader<Stream>, Wire) {
        (self.reader, self.wire)
    }

    /// Sets the read timeout the keepalive needs (none without one).
    pub fn arm(&self, keepalive: Option<Keepalive>) -> io::Result<()> {
        self.timeouts.set_read_timeout(keepalive.map(|k| k.tick()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute() {
        let secs: Vec<u64> = (0..10).map(|n| backoff(n, 0.5).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX, 0.5), MAX_DELAY);
    }

    #[test]
    fn jitter_spreads_by_a_quarter_either_way() {
        assert_eq!(backoff(2, 0.0), Duration::from_secs(3));
        assert_eq!(backoff(2, 1.0), Duration::from_secs(5));
        assert_eq!(backoff(2, 7.0), Duration::from_secs(5));
        for _ in 0..100 {
            let unit = jitter();
            assert!((0.0..1.0).contains(&unit), "{unit}");
        }
        assert_ne!(jitter(), jitter());
    }

    #[test]
    fn waits_are_told_in_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(750)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1490)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(2499)), 2);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }
}
