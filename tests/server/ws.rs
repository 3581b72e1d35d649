//! A WebSocket client for the tests, written for them: it frames by hand
//! (with tungstenite's header codec) so that tests can send what a browser
//! never would, and every wait has the util module's timeout.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{Cursor, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

use tungstenite::protocol::frame::coding::OpCode;
use tungstenite::protocol::frame::FrameHeader;

use crate::util::TIMEOUT;

pub const TEXT: u8 = 1;
pub const BINARY: u8 = 2;
pub const CONTINUATION: u8 = 0;
pub const CLOSE: u8 = 8;
pub const PING: u8 = 9;
pub const PONG: u8 = 10;

/// A valid `Sec-WebSocket-Key` (RFC 6455's sample).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Sends one HTTP request and reads the response to EOF: (head, body).
pub fn http(addr: SocketAddr, request: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut all = Vec::new();
    match stream.read_to_end(&mut all) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("no whole response within {TIMEOUT:?}: {e}; got {all:?}"),
    }
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&all)));
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    (head, all[end + 4..].to_vec())
}

/// `GET path` with the headers of a WebSocket upgrade, and `extra`.
pub fn upgrade_request(addr: SocketAddr, extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
}

/// One WebSocket connection, plain or inside TLS (the natter client's
/// stream, with its certificate pinning).
pub struct Ws {
    pub stream: natter_client::Stream,
    /// Bytes read and not yet taken as frames.
    buf: Vec<u8>,
    /// Events that arrived while a reply was awaited.
    pub events: VecDeque<String>,
}

impl Ws {
    /// Opens `/ws` on `stream` with `request`: the 101 response head, or
    /// the refusal's head as the error.
    pub fn upgrade_on(stream: TcpStream, request: &str) -> Result<Ws, String> {
        Ws::upgrade_over(natter_client::Stream::plain(stream), request)
    }

    /// [`Ws::upgrade_on`] over any stream (TLS, say).
    pub fn upgrade_over(mut stream: natter_client::Stream, request: &str) -> Result<Ws, String> {
        stream
            .tcp()
            .set_read_timeout(Some(TIMEOUT))
            .expect("timeout");
        stream.tcp().set_nodelay(true).expect("nodelay");
        stream.write_all(request.as_bytes()).expect("write");
        let mut ws = Ws {
            stream,
            buf: Vec::new(),
            events: VecDeque::new(),
        };
        let end = loop {
            if let Some(end) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if !ws.fill() {
                return Err(String::from_utf8_lossy(&ws.buf).into_owned());
            }
        };
        let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
        ws.buf.drain(..end + 4);
        if !head.starts_with("HTTP/1.1 101 ") {
            return Err(head);
        }
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        Ok(ws)
    }

    /// Opens `/ws` with `extra` headers.
    pub fn try_open(addr: SocketAddr, extra: &str) -> Result<Ws, String> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        Ws::upgrade_on(stream, &upgrade_request(addr, extra))
    }

    /// Opens `/ws` inside TLS, pinned to the certificate's `fingerprint`.
    pub fn open_tls(addr: SocketAddr, fingerprint: &str) -> Ws {
        let pin = natter_client::tls::parse_fingerprint(fingerprint).expect("fingerprint");
        let config =
            natter_client::TlsConfig::new(natter_client::Trust::Pinned(pin)).expect("TLS config");
        let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        let stream =
            natter_client::Stream::tls(tcp, &config, "localhost", TIMEOUT).expect("TLS handshake");
        let origin = format!("Origin: https://{addr}\r\n");
        let mut ws = Ws::upgrade_over(stream, &upgrade_request(addr, &origin))
            .unwrap_or_else(|head| panic!("refused: {head}"));
        ws.skip_greeting();
        ws
    }

    /// A WebSocket with the greeting read.
    pub fn open(addr: SocketAddr) -> Ws {
        let mut ws = Ws::try_open(addr, "").unwrap_or_else(|head| panic!("refused: {head}"));
        ws.skip_greeting();
        ws
    }

    fn skip_greeting(&mut self) {
        let ws = self;
        assert_eq!(ws.line(), "* hello natter 1");
        loop {
            let line = ws.line();
            assert!(line.starts_with("* notice "), "greeting line {line:?}");
            if line.contains("help") {
                return;
            }
        }
    }

    /// A WebSocket logged in as a newly registered user.
    pub fn user(addr: SocketAddr, name: &str) -> Ws {
        let mut ws = Ws::open(addr);
        let reply = ws.cmd1(&format!("register {name} password-{name}"));
        assert_eq!(reply, format!("+ registered {name}"));
        ws
    }

    /// Reads more bytes; false at EOF.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("nothing from the server within {TIMEOUT:?}")
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Sends a masked frame, as a client must.
    pub fn send_frame(&mut self, opcode: u8, fin: bool, payload: &[u8]) {
        self.stream
            .write_all(&client_frame(opcode, fin, payload))
            .expect("write");
    }

    /// Sends one line as a text frame.
    pub fn send(&mut self, line: &str) {
        self.send_frame(TEXT, true, line.as_bytes());
    }

    /// The next frame: (opcode, payload), or `None` at EOF.
    pub fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            let mut cursor = Cursor::new(&self.buf[..]);
            if let Some((header, len)) = FrameHeader::parse(&mut cursor).expect("frame header") {
                assert!(header.mask.is_none(), "server frames are not masked");
                let start = cursor.position() as usize;
                let end = start + len as usize;
                if self.buf.len() >= end {
                    let payload = self.buf[start..end].to_vec();
                    self.buf.drain(..end);
                    return Some((u8::from(header.opcode), payload));
                }
            }
            if !self.fill() {
                assert!(self.buf.is_empty(), "EOF inside a frame: {:?}", self.buf);
                return None;
            }
        }
    }

    /// The next text frame, as a line. Fails on anything else.
    pub fn line(&mut self) -> String {
        match self.frame() {
            Some((TEXT, payload)) => String::from_utf8(payload).expect("UTF-8 text frame"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Reads one reply: data lines and the completion. Events are set aside.
    pub fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            if line.starts_with("* ") {
                self.events.push_back(line);
                continue;
            }
            let done = line.starts_with("+ ") || line.starts_with("- ");
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Sends a command; the completion line of its reply.
    pub fn cmd1(&mut self, line: &str) -> String {
        self.send(line);
        self.reply().pop().expect("completion")
    }

    /// The next event (set-aside ones first).
    pub fn event(&mut self) -> String {
        if let Some(e) = self.events.pop_front() {
            return e;
        }
        let line = self.line();
        assert!(line.starts_with("* "), "expected an event, got {line:?}");
        line
    }

    /// Reads to the close frame: the text lines before it, and its code and
    /// reason. Fails if the connection ends without one.
    pub fn until_close(&mut self) -> (Vec<String>, u16, String) {
        let mut lines = Vec::new();
        loop {
            match self.frame() {
                Some((TEXT, payload)) => lines.push(String::from_utf8_lossy(&payload).into()),
                Some((CLOSE, payload)) => {
                    assert!(payload.len() >= 2, "close frame without a code");
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    let reason = String::from_utf8_lossy(&payload[2..]).into_owned();
                    return (lines, code, reason);
                }
                Some(other) => panic!("unexpected frame {other:?}"),
                None => panic!("closed without a close frame; lines {lines:?}"),
            }
        }
    }

    /// Whether the connection ends (EOF or reset) after the close frame.
    pub fn ends(&mut self) -> bool {
        self.frame().is_none()
    }
}

/// A client frame (masked).
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x13, 0xc7, 0x08];
    let header = FrameHeader {
        is_final: fin,
        opcode: OpCode::from(opcode),
        mask: Some(mask),
        ..FrameHeader::default()
    };
    let mut out = Vec::new();
    header
        .format(payload.len() as u64, &mut out)
        .expect("format into a Vec");
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}
