//! One connection to natterd, plaintext or TLS, usable from two threads at
//! once: one blocked reading while the other writes. A TCP socket splits
//! into two handles for that; a rustls connection does not, so for TLS both
//! handles share it behind a lock that is never held while blocked on a
//! read. The reading handle reads raw bytes from its own socket handle with
//! no lock held, then locks the connection just long enough to feed them in,
//! take the plaintext out and queue any records it must answer with; the
//! writing handle locks it to encrypt a line. This module knows nothing of
//! lines or of what they mean.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::ClientConnection;

use crate::tls::TlsConfig;

/// Raw bytes taken from the socket per read: one full TLS record (16 KiB of
/// plaintext plus its overhead), so a record seldom needs two reads.
const RAW_READ: usize = 16 * 1024 + 512;

/// A connection to natterd. Clone it with [`Stream::try_clone`] to read on one
/// thread and write on another; only one handle may read.
pub struct Stream {
    /// This handle's own descriptor for the socket: reads, timeouts, the
    /// handover to a poller.
    tcp: TcpStream,
    /// The TLS state, shared by every handle of a TLS connection.
    tls: Option<Arc<Shared>>,
    /// Plaintext already decrypted and not yet returned; `pos..` is unread.
    plain: Vec<u8>,
    pos: usize,
    /// The server ended the TLS stream (close_notify or TCP end): once
    /// `plain` is returned, reads give end of stream.
    closed: bool,
}

/// What the handles of one TLS connection share. Lock order: `conn`, then
/// `out`; nothing takes `conn` while holding `out`.
struct Shared {
    /// The rustls connection: record layer and keys.
    conn: Mutex<ClientConnection>,
    /// The socket handle records are written through. Taken (while `conn` is
    /// still held) by whoever encrypted records, so records reach the socket
    /// in the order they were made, and released only after they are
    /// written; `conn` is released first so the reader is not held up by a
    /// slow write.
    out: Mutex<TcpStream>,
}

/// Locks a mutex, ignoring poisoning: a panicking thread leaves the TLS
/// state no worse than an I/O error would, and the next use reports that.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Writes every record the connection has queued, holding `out` from
    /// before `conn` is released until the records are on the socket.
    fn flush_records(&self, mut conn: MutexGuard<'_, ClientConnection>) -> io::Result<()> {
        if !conn.wants_write() {
            return Ok(());
        }
        let mut records = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut records)?;
        }
        let mut out = lock(&self.out);
        drop(conn);
        out.write_all(&records)
    }

    /// Feeds raw bytes from the socket (empty: the socket reached its end)
    /// into the connection and appends the plaintext they carried to
    /// `plain`. Returns whether the server has ended the TLS stream.
    fn feed(&self, mut raw: &[u8], plain: &mut Vec<u8>) -> io::Result<bool> {
        let mut conn = lock(&self.conn);
        let tcp_end = raw.is_empty();
        let mut closed = tcp_end;
        loop {
            // An empty slice tells rustls the socket ended.
            let n = conn.read_tls(&mut raw)?;
            if n == 0 && !tcp_end {
                return Err(io::Error::other("TLS: the connection took no input"));
            }
            let state = match conn.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // Let the server see the alert explaining why.
                    let _ = self.flush_records(conn);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("TLS: {e}"),
                    ));
                }
            };
            take_plaintext(&mut conn, state.plaintext_bytes_to_read(), plain)?;
            closed |= state.peer_has_closed();
            if raw.is_empty() {
                break;
            }
        }
        self.flush_records(conn)?;
        Ok(closed)
    }
}

/// Moves `n` decrypted bytes from the connection to the end of `plain`.
fn take_plaintext(conn: &mut ClientConnection, n: usize, plain: &mut Vec<u8>) -> io::Result<()> {
    let old = plain.len();
    plain.resize(old + n, 0);
    conn.reader().read_exact(&mut plain[old..])
}

impl Stream {
    /// A plaintext connection.
    pub fn plain(tcp: TcpStream) -> Stream {
        Stream {
            tcp,
            tls: None,
            plain: Vec::new(),
            pos: 0,
            closed: false,
        }
    }

    /// Runs the TLS handshake on a connected socket, within `timeout`, and
    /// returns the encrypted connection. `host` is the name the certificate
    /// must be valid for. A refused certificate or a server that does not
    /// speak TLS is an error whose text is a one-line account for a person,
    /// starting `TLS:`.
    pub fn tls(
        tcp: TcpStream,
        tls: &TlsConfig,
        host: &str,
        timeout: Duration,
    ) -> io::Result<Stream> {
        let name = TlsConfig::server_name(host)?;
        let mut conn = ClientConnection::new(Arc::clone(&tls.config), name)
            .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
        // Writers hand over whole lines and wait for them to be written, so
        // the connection never holds more than one line's records.
        conn.set_buffer_limit(None);
        let deadline = Instant::now() + timeout;
        let timed_out = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "TLS: no handshake from the server within {}s (is this its TLS port?)",
                    timeout.as_secs()
                ),
            )
        };
        while conn.is_handshaking() {
            // The deadline is applied to every read and write, not once per
            // complete_io: a server dribbling a byte at a time must not
            // stretch the handshake past it.
            let mut io = DeadlineIo {
                tcp: &tcp,
                deadline,
            };
            if let Err(e) = conn.complete_io(&mut io) {
                let tls_error = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                return Err(match (tls_error, e.kind()) {
                    (Some(te), _) => io::Error::new(e.kind(), tls.explain(te, host)),
                    (None, io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => timed_out(),
                    (None, io::ErrorKind::UnexpectedEof) => io::Error::new(
                        e.kind(),
                        "TLS: the server closed the connection during the handshake",
                    ),
                    (None, _) => io::Error::new(e.kind(), format!("TLS: handshake failed: {e}")),
                });
            }
        }
        tcp.set_read_timeout(None)?;
        tcp.set_write_timeout(None)?;
        let out = tcp.try_clone()?;
        Ok(Stream {
            tcp,
            tls: Some(Arc::new(Shared {
                conn: Mutex::new(conn),
                out: Mutex::new(out),
            })),
            plain: Vec::new(),
            pos: 0,
            closed: false,
        })
    }

    /// Another handle on the same connection, for a second thread. Only one
    /// handle may read: each keeps its own decrypted bytes.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(Stream {
            tcp: self.tcp.try_clone()?,
            tls: self.tls.clone(),
            plain: Vec::new(),
            pos: 0,
            closed: false,
        })
    }

    /// The socket, e.g. to set timeouts (they apply to every handle) or shut
    /// it down. Reading or writing it directly would bypass TLS.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether this is a TLS connection.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Takes the connection apart, for a caller that drives the socket
    /// itself (the load generator's pollers): the socket, the TLS connection
    /// (when there is one), and the plaintext already decrypted but not yet
    /// returned. Fails if another handle of a TLS connection still exists.
    pub fn into_parts(self) -> io::Result<(TcpStream, Option<ClientConnection>, Vec<u8>)> {
        let rest = self.plain[self.pos..].to_vec();
        let conn = match self.tls {
            None => None,
            Some(shared) => match Arc::try_unwrap(shared) {
                Ok(shared) => Some(shared.conn.into_inner().unwrap_or_else(|e| e.into_inner())),
                Err(_) => {
                    return Err(io::Error::other(
                        "the TLS connection is still shared with another handle",
                    ))
                }
            },
        };
        Ok((self.tcp, conn, rest))
    }

    fn write_line(&self, buf: &[u8]) -> io::Result<usize> {
        match &self.tls {
            None => (&self.tcp).write(buf),
            Some(shared) => {
                let mut conn = lock(&shared.conn);
                conn.writer().write_all(buf)?;
                shared.flush_records(conn)?;
                Ok(buf.len())
            }
        }
    }
}

impl Read for Stream {
    /// Plaintext: reads the socket. TLS: returns decrypted bytes, blocking on
    /// the socket (with its read timeout) and holding no lock while it does.
    /// A timeout loses nothing: the next call picks up where this one was.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(shared) = self.tls.clone() else {
            return self.tcp.read(buf);
        };
        loop {
            if self.pos < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.pos);
                buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.closed || buf.is_empty() {
                return Ok(0);
            }
            self.plain.clear();
            self.pos = 0;
            {
                // Plaintext decrypted during the handshake, before any read.
                let mut conn = lock(&shared.conn);
                let state = conn
                    .process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")))?;
                take_plaintext(&mut conn, state.plaintext_bytes_to_read(), &mut self.plain)?;
                self.closed |= state.peer_has_closed();
            }
            if !self.plain.is_empty() || self.closed {
                continue;
            }
            let mut raw = [0u8; RAW_READ];
            let n = loop {
                match self.tcp.read(&mut raw) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            self.closed |= shared.feed(&raw[..n], &mut self.plain)?;
        }
    }
}

impl Write for &Stream {
    /// Sends all of `buf` (for TLS, encrypted) before returning.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_line(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_line(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Connects to `host:port` (see [`crate::connect`]) and, with `tls`, runs the
/// handshake, all within `timeout` each.
pub fn open(
    host: &str,
    port: u16,
    timeout: Duration,
    tls: Option<&TlsConfig>,
) -> io::Result<Stream> {
    let tcp = crate::connect(host, port, timeout)?;
    match tls {
        None => Ok(Stream::plain(tcp)),
        Some(tls) => Stream::tls(tcp, tls, host, timeout),
    }
}

/// A socket whose every read and write must finish by `deadline` (the
/// handshake's time limit).
struct DeadlineIo<'a> {
    tcp: &'a TcpStream,
    deadline: Instant,
}

impl DeadlineIo<'_> {
    /// Sets the socket's timeouts to what is left, or fails once none is.
    fn arm(&self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.set_write_timeout(Some(left))
    }
}

impl Read for DeadlineIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        (&*self.tcp).read(buf)
    }
}

impl Write for DeadlineIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        (&*self.tcp).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.tcp).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Trust;

    #[test]
    fn a_server_dribbling_bytes_cannot_stretch_the_handshake() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // A "server" that sends a plausible record header one byte at a time,
        // each well within the timeout, for far longer than the timeout.
        let dribbler = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            for b in [0x16u8, 0x03, 0x03, 0x40, 0x00].iter().cycle().take(40) {
                if peer.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let tls = TlsConfig::new(Trust::WebRoots).unwrap();
        let started = Instant::now();
        let result = open("127.0.0.1", port, Duration::from_millis(500), Some(&tls));
        let took = started.elapsed();
        assert!(result.is_err(), "a dribbling server completed a handshake?");
        assert!(
            took < Duration::from_secs(2),
            "handshake took {took:?} despite a 500 ms limit"
        );
        let _ = dribbler.join();
    }
}
