//! Connecting to natterd and framing lines over a blocking stream. This module
//! owns the byte level only: it hands out whole lines as strings and writes
//! whole lines, and knows nothing of what the lines mean (see `parse`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::stream::Stream;

/// The longest server line the reader accepts, LF included. natterd refuses
/// command lines over 4096 bytes by default, so its longest reply line is that
/// text plus a time and two names; 1 MiB leaves room for a server run with a
/// much larger `--max-line` while still stopping a broken peer from making the
/// client buffer without end.
pub const MAX_LINE: usize = 1 << 20;

/// Connects to `host:port`, trying each address the name resolves to, each
/// for at most `timeout`. The error names what failed, so a caller can show it
/// to a person as it is.
pub fn connect(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {host}: {e}")))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                // Commands are single short lines typed or piped one at a time;
                // Nagle would only delay them.
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => io::Error::new(e.kind(), format!("cannot connect to {host}:{port}: {e}")),
        None => io::Error::new(
            io::ErrorKind::NotFound,
            format!("cannot connect to {host}:{port}: the name has no address"),
        ),
    })
}

/// Splits a connection (plaintext or TLS) into a reader for one thread and a
/// writer for another: the client reads events while the person types.
pub fn split(stream: Stream) -> io::Result<(LineReader<Stream>, LineWriter<Stream>)> {
    let read_half = stream.try_clone()?;
    Ok((LineReader::new(read_half), LineWriter::new(stream)))
}

/// Reads LF-terminated lines, dropping a CR before the LF, with a bound on
/// line length.
pub struct LineReader<R> {
    /// Buffered so each line costs one syscall or fewer, not one per byte.
    inner: BufReader<R>,
    /// Longest line accepted, LF included.
    max: usize,
    /// The start of a line whose read failed (e.g. a read timeout): kept so
    /// the next call goes on with it instead of losing it.
    partial: Vec<u8>,
}

impl<R: Read> LineReader<R> {
    /// A reader with the default bound, [`MAX_LINE`].
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, MAX_LINE)
    }

    /// A reader that refuses lines longer than `max` bytes, LF included.
    pub fn with_limit(inner: R, max: usize) -> Self {
        LineReader {
            inner: BufReader::new(inner),
            max,
            partial: Vec::new(),
        }
    }

    /// The next line without its LF (or CRLF). `Ok(None)` at end of stream;
    /// a last line without LF is still returned, as natterd does. A line over
    /// the bound is an `InvalidData` error, as nothing sane follows it. Bytes
    /// that are not UTF-8 are replaced, not refused: the server promises UTF-8,
    /// and one bad byte should not end a chat. After a read error such as a
    /// timeout, calling again goes on with the same line.
    pub fn read_line(&mut self) -> io::Result<Option<String>> {
        let mut line = std::mem::take(&mut self.partial);
        loop {
            let available = match self.inner.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.partial = line;
                    return Err(e);
                }
            };
            if available.is_empty() {
                if line.is_empty() {
                    return Ok(None);
                }
                break;
            }
            let (taken, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            if line.len() + taken > self.max {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("server sent a line longer than {} bytes", self.max),
                ));
            }
            line.extend_from_slice(&available[..taken]);
            self.inner.consume(taken);
            if done {
                break;
            }
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        Ok(Some(String::from_utf8_lossy(&line).into_owned()))
    }

    /// The wrapped stream, e.g. to write commands on the same socket.
    pub fn get_ref(&self) -> &R {
        self.inner.get_ref()
    }

    /// The stream back, with the bytes read from it but not yet returned as
    /// lines. A caller that stops using this reader and reads the stream
    /// another way (the load generator hands logged-in sockets to a poller)
    /// must start with these, or it would lose them.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        let mut rest = self.partial;
        rest.extend_from_slice(self.inner.buffer());
        (self.inner.into_inner(), rest)
    }
}

/// Writes one command line at a time.
pub struct LineWriter<W> {
    inner: W,
}

impl<W: Write> LineWriter<W> {
    /// Wraps a writer; nothing is buffered, so each line leaves at once.
    pub fn new(inner: W) -> Self {
        LineWriter { inner }
    }

    /// Sends `line` followed by LF, in one write so a line is never split
    /// across packets by this side. A line holding CR or LF is refused: it
    /// would reach the server as two commands, the second one unseen by the
    /// caller's reply accounting.
    pub fn send(&mut self, line: &str) -> io::Result<()> {
        if line.contains(['\n', '\r']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a command line cannot contain a line break",
            ));
        }
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.inner.write_all(&bytes)?;
        self.inner.flush()
    }

    /// The wrapped writer, e.g. to shut a socket down.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its input a few bytes per read, as a socket may.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn lines(data: &[u8], step: usize) -> Vec<String> {
        let mut r = LineReader::new(Trickle { data, step });
        let mut out = Vec::new();
        while let Some(l) = r.read_line().expect("read") {
            out.push(l);
        }
        out
    }

    #[test]
    fn splits_lines_across_reads_and_drops_crlf() {
        let data = b"+ pong\r\n* hello natter 1\n\n= a\n";
        for step in [1, 2, 3, 64] {
            assert_eq!(lines(data, step), ["+ pong", "* hello natter 1", "", "= a"]);
        }
    }

    #[test]
    fn last_line_without_lf_is_kept() {
        assert_eq!(lines(b"+ bye\n- BADCMD x", 4), ["+ bye", "- BADCMD x"]);
    }

    #[test]
    fn lone_cr_inside_a_line_is_kept() {
        assert_eq!(lines(b"= a\rb\n", 2), ["= a\rb"]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        assert_eq!(lines(b"= \xff\n+ 1\n", 64), ["= \u{fffd}", "+ 1"]);
    }

    #[test]
    fn overlong_line_is_an_error() {
        let mut r = LineReader::with_limit(
            Trickle {
                data: b"123456789\n",
                step: 3,
            },
            8,
        );
        let err = r.read_line().expect_err("should refuse");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn line_exactly_at_the_limit_is_accepted() {
        let mut r = LineReader::with_limit(
            Trickle {
                data: b"1234567\n",
                step: 3,
            },
            8,
        );
        assert_eq!(r.read_line().expect("read").as_deref(), Some("1234567"));
    }

    #[test]
    fn buffered_holds_what_follows_the_returned_line() {
        let mut r = LineReader::new(Trickle {
            data: b"+ ok\n* msg a",
            step: 64,
        });
        assert_eq!(r.read_line().expect("read").as_deref(), Some("+ ok"));
        let (_, rest) = r.into_parts();
        assert_eq!(rest, b"* msg a");
    }

    /// Gives its input in pieces, with a timeout error between each piece.
    struct Stutter(Vec<&'static [u8]>, bool);

    impl Read for Stutter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = !self.1;
            if self.1 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if self.0.is_empty() {
                return Ok(0);
            }
            let piece = self.0.remove(0);
            buf[..piece.len()].copy_from_slice(piece);
            Ok(piece.len())
        }
    }

    #[test]
    fn a_timeout_mid_line_loses_nothing() {
        let mut r = LineReader::new(Stutter(vec![b"+ we", b"lcome al", b"ice\n= x"], false));
        let mut got = Vec::new();
        for _ in 0..20 {
            match r.read_line() {
                Ok(Some(line)) => got.push(line),
                Ok(None) => break,
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        assert_eq!(got, ["+ welcome alice", "= x"]);
        let mut r = LineReader::new(Stutter(vec![b"+ o", b"k\n* ms"], false));
        assert!(r.read_line().is_err());
        assert!(r.read_line().is_err());
        assert_eq!(r.read_line().expect("read").as_deref(), Some("+ ok"));
        assert!(r.read_line().is_err());
        let (_, rest) = r.into_parts();
        assert_eq!(rest, b"* ms");
    }

    #[test]
    fn writer_appends_lf_and_refuses_line_breaks() {
        let mut w = LineWriter::new(Vec::new());
        w.send("send bob hi").expect("send");
        assert!(w.send("a\nb").is_err());
        assert!(w.send("a\rb").is_err());
        assert_eq!(w.get_ref().as_slice(), b"send bob hi\n");
    }
}
