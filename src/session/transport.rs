//! What sits between the socket and a session's line buffers: nothing
//! (plaintext), a rustls connection, or a browser's HTTP request and
//! WebSocket frames (`crate::web`). Each moves bytes between any
//! `io::Read`/`io::Write` (the socket in the server, a scripted stream in
//! tests) and the session's buffers; neither knows what a line means.

use std::io::{self, IoSlice, Read, Write};
use std::time::Instant;

use super::buffers::{Output, MAX_WRITE_PIECES};
use super::Ending;
use crate::web::WebConn;

/// Bytes read from the socket per `read` call. Large enough that a burst of
/// pipelined commands arrives in a few calls, small enough to live on the stack.
pub const READ_CHUNK: usize = 16 * 1024;

/// Most plaintext in one TLS record (RFC 8446 section 5.1): what is handed
/// to rustls at a time (see `write_tls`).
const TLS_RECORD: usize = 16 * 1024;

/// How a read stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// The socket has nothing more for now (`WouldBlock`).
    Drained,
    /// The input buffer is full; the socket may hold more.
    Full,
    /// The peer closed its side (or sent TLS close_notify).
    Eof,
}

/// Plain TCP, or a rustls connection between the socket and the buffers.
pub enum Transport {
    /// Bytes on the wire are the protocol's lines.
    Plain,
    /// TLS: rustls turns records into plaintext and back. Boxed because a
    /// connection is large and most sessions may be plain.
    Tls(Box<rustls::ServerConnection>),
    /// A browser: an HTTP request, then WebSocket frames carrying lines.
    Web(Box<WebConn>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Plain => f.write_str("Plain"),
            Transport::Tls(_) => f.write_str("Tls"),
            Transport::Web(_) => f.write_str("Web"),
        }
    }
}

impl Transport {
    /// Reads until `WouldBlock`, EOF, or `inbuf` holds `limit` bytes.
    /// The socket is also written to: a TLS failure sends its alert, a
    /// WebSocket violation its close frame. `max_line` bounds a WebSocket
    /// message (the line framer bounds the others).
    pub fn read(
        &mut self,
        socket: &mut (impl Read + Write),
        inbuf: &mut Vec<u8>,
        limit: usize,
        max_line: usize,
    ) -> io::Result<ReadStatus> {
        match self {
            Transport::Plain => read_plain(socket, inbuf, limit),
            Transport::Tls(conn) => read_tls(conn, socket, inbuf, limit),
            Transport::Web(conn) => conn.read(socket, inbuf, limit, max_line),
        }
    }

    /// Writes until `out` is empty or the socket would block, draining
    /// exactly what was written. A short write is normal, not an error.
    /// Only the plain path writes shared lines in place; the others put
    /// bytes into records or frames of their own (see `shares_lines`).
    pub fn write(&mut self, socket: &mut impl Write, out: &mut Output) -> io::Result<()> {
        match self {
            Transport::Plain => write_plain(socket, out)?,
            Transport::Tls(conn) => write_tls(conn, socket, out)?,
            Transport::Web(conn) => conn.write(socket, out)?,
        }
        out.compact();
        Ok(())
    }

    /// Whether broadcast lines may be queued by reference: only where the
    /// socket takes them as they are. TLS records and WebSocket frames are
    /// built from a copy anyway, and their paths read `out` one contiguous
    /// piece at a time.
    pub fn shares_lines(&self) -> bool {
        matches!(self, Transport::Plain)
    }

    /// Whether anything waits to be written: `out`, or what the transport
    /// holds itself (TLS records, WebSocket frames).
    pub fn wants_write(&self, out: &Output) -> bool {
        match self {
            Transport::Plain => out.pending_len() > 0,
            Transport::Tls(conn) => out.pending_len() > 0 || conn.wants_write(),
            Transport::Web(conn) => conn.wants_write(out),
        }
    }

    /// Why a failed read ended the session (`InvalidData` errors are the
    /// transport's own: a TLS failure, or frames against the rules).
    pub fn failure(&self, e: &io::Error) -> Ending {
        match (self, e.kind()) {
            (Transport::Tls(_), io::ErrorKind::InvalidData) => Ending::TlsError,
            (Transport::Web(conn), io::ErrorKind::InvalidData) if conn.tls_failed() => {
                Ending::TlsError
            }
            (Transport::Web(_), io::ErrorKind::InvalidData) => Ending::WebSocketError,
            _ => Ending::IoError,
        }
    }

    /// The session started closing for `why` (a WebSocket says so in its
    /// close frame).
    pub fn closing(&mut self, why: Ending) {
        if let Transport::Web(conn) = self {
            conn.closing(why);
        }
    }

    /// When the transport's keepalive next wants a look (WebSocket only).
    pub fn keepalive_at(&self) -> Option<Instant> {
        match self {
            Transport::Web(conn) => conn.keepalive_at(),
            _ => None,
        }
    }

    /// At `keepalive_at`: false if the peer is taken for gone.
    pub fn keepalive(&mut self, now: Instant) -> bool {
        match self {
            Transport::Web(conn) => conn.keepalive(now),
            _ => true,
        }
    }

    /// Ends a TLS session politely (close_notify), best effort.
    pub fn close_notify(&mut self, socket: &mut impl Write) {
        match self {
            Transport::Tls(conn) => {
                conn.send_close_notify();
                let _ = conn.write_tls(socket);
            }
            Transport::Web(conn) => conn.close_notify(socket),
            Transport::Plain => {}
        }
    }
}

fn read_plain(socket: &mut impl Read, inbuf: &mut Vec<u8>, limit: usize) -> io::Result<ReadStatus> {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let room = limit.saturating_sub(inbuf.len());
        if room == 0 {
            return Ok(ReadStatus::Full);
        }
        match socket.read(&mut chunk[..room.min(READ_CHUNK)]) {
            Ok(0) => return Ok(ReadStatus::Eof),
            Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStatus::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Records from the socket go into the rustls connection, plaintext comes
/// out into `inbuf`. Plaintext rustls already holds is taken first, and no
/// more records are read while `inbuf` is full, so rustls's own buffers
/// stay within its limits.
fn read_tls(
    conn: &mut rustls::ServerConnection,
    socket: &mut (impl Read + Write),
    inbuf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<ReadStatus> {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        loop {
            let room = limit.saturating_sub(inbuf.len());
            if room == 0 {
                return Ok(ReadStatus::Full);
            }
            match conn.reader().read(&mut chunk[..room.min(READ_CHUNK)]) {
                // close_notify: the peer ended the session cleanly.
                Ok(0) => return Ok(ReadStatus::Eof),
                Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        match conn.read_tls(socket) {
            Ok(0) => return Ok(ReadStatus::Eof),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStatus::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if let Err(e) = conn.process_new_packets() {
            // Tell the peer why (the alert is queued), then give up on it.
            let _ = conn.write_tls(socket);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TLS: {e}"),
            ));
        }
    }
}

/// One vectored write takes the session's own bytes and the shared lines
/// between them together: a broadcast line is never copied per recipient.
fn write_plain(socket: &mut impl Write, out: &mut Output) -> io::Result<()> {
    while out.pending_len() > 0 {
        let mut pieces = [IoSlice::new(&[]); MAX_WRITE_PIECES];
        let filled = out.pending_pieces(&mut pieces);
        // One piece (no shared line queued, the usual case) goes out with a
        // plain `send`, as before shared lines: the same syscall path.
        let result = match &pieces[..filled] {
            [one] => socket.write(one),
            all => socket.write_vectored(all),
        };
        match result {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                out.advance(n);
                out.reached_kernel();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_tls(
    conn: &mut rustls::ServerConnection,
    socket: &mut impl Write,
    out: &mut Output,
) -> io::Result<()> {
    loop {
        let mut blocked = false;
        let mut wrote_records = false;
        while conn.wants_write() {
            match conn.write_tls(socket) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => wrote_records = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if !conn.wants_write() {
            // rustls holds nothing: every byte it took is in the kernel.
            out.reached_kernel();
        }
        if blocked || out.pending_len() == 0 {
            return Ok(());
        }
        // rustls holds no records now: hand it at most one record's worth
        // of plaintext. So a record is handed over only once the one
        // before it is wholly in the kernel, and a line counts as written
        // exactly when the record carrying it is: the client can read
        // nothing of a record cut off. (Fed while records wait, rustls
        // under a slow reader would never be empty, and nothing it sent
        // would count as written.) The rest waits in `out`, where the
        // --max-outbuf check sees it.
        let pending = out.pending();
        let accepted = conn
            .writer()
            .write(&pending[..pending.len().min(TLS_RECORD)])?;
        out.advance(accepted);
        // Stop when nothing moved at all (mid-handshake rustls holds
        // plaintext until it has keys; the next read resumes). Draining
        // rustls's buffer without blocking is progress: loop, or no edge
        // would ever come for the rest.
        if accepted == 0 && !wrote_records {
            return Ok(());
        }
    }
}
