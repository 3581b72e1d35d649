//! Sessions over natterd's WebSocket listener (`--ws PORT`, natterd's
//! `--web`): the upgrade, one line per text frame each way, and the hand
//! over of a logged-in session to the measured phase's non-blocking
//! `Conn`. Setup is pipelined in batches like `setup.rs`: connect and
//! upgrade all, send every `register`, read every answer, retry `BUSY`,
//! log in those that exist. Frames are parsed and formatted with
//! tungstenite's header codec, as natterd does.

use std::io::{Cursor, ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use natter_client::{parse, Event, ServerLine};
use natter_proto::ErrorCode;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::error::BenchError;
use crate::lines::Conn;
use crate::progress::Progress;

/// Sessions set up at once (see `setup.rs`).
const BATCH: usize = 250;

/// Pause before resending what natterd answered `- BUSY`.
const BUSY_PAUSE: Duration = Duration::from_millis(50);

/// The mask of every frame the bench sends. Masking guards proxies from
/// scripts in browsers; the bench needs no unpredictable one.
const MASK: [u8; 4] = [0x6e, 0x61, 0x74, 0x72];

/// Where the WebSocket is.
#[derive(Clone, Copy)]
pub struct WsTarget<'a> {
    pub host: &'a str,
    pub port: u16,
    pub password: &'a str,
}

/// A logged-in session over a WebSocket, blocking (setup and checks).
pub struct WsSession {
    stream: TcpStream,
    /// Bytes received and not yet taken as frames.
    raw: Vec<u8>,
}

/// Appends a client text frame carrying `line` (without LF).
pub fn push_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        opcode,
        mask: Some(MASK),
        ..FrameHeader::default()
    };
    // Formatting into a Vec only writes.
    let _ = header.format(payload.len() as u64, out);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
}

/// One complete server frame at the start of `raw`: (opcode, payload range,
/// bytes used), or `None` if it has not all arrived.
pub fn server_frame(raw: &[u8]) -> Result<Option<(OpCode, std::ops::Range<usize>)>, BenchError> {
    let mut cursor = Cursor::new(raw);
    let parsed =
        FrameHeader::parse(&mut cursor).map_err(|e| BenchError::new(format!("WebSocket: {e}")))?;
    let Some((_, len)) = parsed.as_ref() else {
        return Ok(None);
    };
    let start = cursor.position() as usize;
    let end = usize::try_from(*len)
        .ok()
        .and_then(|len| start.checked_add(len))
        .ok_or_else(|| BenchError::new("WebSocket: a frame too large"))?;
    if raw.len() < end {
        return Ok(None);
    }
    Ok(parsed.map(|(header, _)| (header.opcode, start..end)))
}

impl WsSession {
    /// Connects and upgrades within what is left before `deadline`.
    fn dial(target: WsTarget, deadline: Instant) -> Result<WsSession, BenchError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BenchError::new(
                "out of time (--max-seconds) while connecting",
            ));
        }
        let addr = (target.host, target.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| BenchError::new(format!("{}: no address", target.host)))?;
        let stream = TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        let mut s = WsSession {
            stream,
            raw: Vec::new(),
        };
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: bmF0dGVyLWJlbmNoLWtleQ==\r\n\r\n",
            target.host, target.port
        );
        s.stream.write_all(request.as_bytes())?;
        Ok(s)
    }

    /// Reads the upgrade's answer (after `dial`; pipelined in a batch).
    fn upgraded(&mut self, deadline: Instant) -> Result<(), BenchError> {
        let end = loop {
            if let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if !self.fill(deadline)? {
                return Err(BenchError::new(
                    "natterd closed the connection during the upgrade",
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
        if !head.starts_with("HTTP/1.1 101 ") {
            let status = head.lines().next().unwrap_or_default();
            return Err(BenchError::new(format!(
                "/ws refused the upgrade: {status} (is --ws natterd's --web port?)"
            )));
        }
        self.raw.drain(..end + 4);
        Ok(())
    }

    /// Reads more bytes; false at EOF.
    fn fill(&mut self, deadline: Instant) -> Result<bool, BenchError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BenchError::new(
                "no reply before the --max-seconds deadline",
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.raw.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(
                BenchError::new("no reply before the --max-seconds deadline"),
            ),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) -> Result<(), BenchError> {
        let mut out = Vec::with_capacity(line.len() + 8);
        push_frame(&mut out, OpCode::Data(Data::Text), line.as_bytes());
        self.stream.write_all(&out)?;
        Ok(())
    }

    /// The next line, or `None` when natterd closed the socket.
    fn line(&mut self, deadline: Instant) -> Result<Option<String>, BenchError> {
        loop {
            if let Some((opcode, payload)) = server_frame(&self.raw)? {
                let text = String::from_utf8_lossy(&self.raw[payload.clone()]).into_owned();
                self.raw.drain(..payload.end);
                match opcode {
                    OpCode::Data(Data::Text) => return Ok(Some(text)),
                    OpCode::Control(Control::Close) => return Ok(None),
                    _ => continue,
                }
            }
            if !self.fill(deadline)? {
                return Ok(None);
            }
        }
    }

    /// Reads to the completion of the oldest command (events skipped; `*
    /// bye` is an error).
    pub fn completion(&mut self, deadline: Instant, what: &str) -> Result<ServerLine, BenchError> {
        loop {
            let Some(line) = self
                .line(deadline)
                .map_err(|e| BenchError::new(format!("{what}: {}", e.0)))?
            else {
                return Err(BenchError::new(format!(
                    "{what}: natterd closed the connection"
                )));
            };
            match parse(&line) {
                ServerLine::Event(Event::Bye { reason }) => {
                    return Err(BenchError::bye(what, &reason))
                }
                done @ (ServerLine::Ok(_) | ServerLine::Err { .. }) => return Ok(done),
                _ => {}
            }
        }
    }

    /// Expects success from the oldest command.
    pub fn expect_ok(&mut self, deadline: Instant, what: &str) -> Result<String, BenchError> {
        match self.completion(deadline, what)? {
            ServerLine::Ok(text) => Ok(text),
            ServerLine::Err { code, text } => Err(BenchError::refused(what, &code, &text)),
            _ => Err(BenchError::new(format!("{what}: unexpected reply"))),
        }
    }

    /// The session for the measured phase, with what was received already.
    pub fn into_conn(self) -> std::io::Result<Conn> {
        Conn::from_websocket(self.stream, self.raw)
    }
}

/// Sends `line(i)` on each session in `pending`, pipelined, and reads the
/// answers; those answered `- BUSY` are sent again after a pause.
fn answers_past_busy(
    sessions: &mut [WsSession],
    mut pending: Vec<usize>,
    deadline: Instant,
    line: impl Fn(usize) -> String,
) -> Result<Vec<(usize, ServerLine)>, BenchError> {
    let mut answers = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        for &i in &pending {
            sessions[i].send(&line(i))?;
        }
        let mut busy = Vec::new();
        for &i in &pending {
            let what = line(i);
            let what = what.split(' ').take(2).collect::<Vec<_>>().join(" ");
            match sessions[i].completion(deadline, &what)? {
                ServerLine::Err { code, .. }
                    if ErrorCode::parse(&code) == Some(ErrorCode::Busy) =>
                {
                    busy.push(i)
                }
                answer => answers.push((i, answer)),
            }
        }
        if !busy.is_empty() {
            if Instant::now() + BUSY_PAUSE > deadline {
                return Err(BenchError::new("the server kept answering BUSY"));
            }
            thread::sleep(BUSY_PAUSE);
        }
        pending = busy;
    }
    Ok(answers)
}

/// Opens one logged-in WebSocket session per name, registering the users
/// that do not exist yet.
pub fn open_sessions(
    target: WsTarget,
    names: &[String],
    deadline: Instant,
    label: &str,
) -> Result<Vec<WsSession>, BenchError> {
    let mut all = Vec::with_capacity(names.len());
    let mut bar = Progress::new(label, names.len() as u64);
    for batch in names.chunks(BATCH) {
        let mut sessions = Vec::with_capacity(batch.len());
        for _ in batch {
            sessions.push(WsSession::dial(target, deadline)?);
        }
        for s in &mut sessions {
            s.upgraded(deadline)?;
        }
        let every = (0..batch.len()).collect();
        let registered = answers_past_busy(&mut sessions, every, deadline, |i| {
            format!("register {} {}", batch[i], target.password)
        })?;
        let mut existing = Vec::new();
        for (i, answer) in registered {
            match answer {
                ServerLine::Ok(_) => {}
                ServerLine::Err { code, .. }
                    if ErrorCode::parse(&code) == Some(ErrorCode::Exists) =>
                {
                    existing.push(i)
                }
                ServerLine::Err { code, text } => {
                    return Err(BenchError::refused(
                        &format!("register {}", batch[i]),
                        &code,
                        &text,
                    ))
                }
                _ => return Err(BenchError::new("register: unexpected reply")),
            }
        }
        let logins = answers_past_busy(&mut sessions, existing, deadline, |i| {
            format!("login {} {}", batch[i], target.password)
        })?;
        for (i, answer) in logins {
            if let ServerLine::Err { code, text } = answer {
                return Err(BenchError::refused(
                    &format!("login {}", batch[i]),
                    &code,
                    &text,
                ));
            }
        }
        all.extend(sessions);
        bar.set(all.len() as u64);
    }
    bar.finish();
    Ok(all)
}
