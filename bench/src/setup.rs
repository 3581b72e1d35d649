//! Getting sessions logged in before a measurement starts, and the blocking
//! request/reply helpers the slower scenarios (login, ping) use. Sessions are
//! opened in batches on a few threads, each batch pipelined: connect all,
//! send every `register`, then read every reply, so the server's hashing
//! threads always have work queued. A name that already EXISTS is logged in
//! instead, so repeated runs reuse their users.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use natter_client::{open, parse, Event, LineReader, LineWriter, ServerLine, Stream, TlsConfig};

use natter_proto::ErrorCode;

use crate::error::BenchError;
use crate::progress::{Progress, TICK};

/// Threads opening sessions. Setup waits on the server (hashing, commits),
/// not on the CPU, so a few threads keep it busy without crowding it.
const SETUP_THREADS: usize = 4;

/// Sessions one thread has in flight at once: enough to keep the server's
/// queues full, few enough that a failure is reported promptly.
const BATCH: usize = 250;

/// What a thread returns when it stopped because another one failed.
pub const STOPPED: &str = "stopped because another thread failed";

/// Where and as whom to connect.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// natterd's host.
    pub host: &'a str,
    /// natterd's port.
    pub port: u16,
    /// Every bench user's password.
    pub password: &'a str,
    /// Connect with TLS, trusting what this says (`--tls`).
    pub tls: Option<&'a TlsConfig>,
}

/// A logged-in session: the connection (plaintext or TLS) inside a reader
/// that may hold bytes already received.
pub type Session = LineReader<Stream>;

/// What one read from a session with a read timeout gave.
pub enum Read {
    /// A line.
    Line(String),
    /// natterd closed the connection.
    Closed,
    /// Nothing within the read timeout: look at the clock and try again.
    Quiet,
}

/// Reads one line, telling a timeout apart from an end or an error.
pub fn read_or_quiet(session: &mut Session) -> std::io::Result<Read> {
    match session.read_line() {
        Ok(Some(line)) => Ok(Read::Line(line)),
        Ok(None) => Ok(Read::Closed),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(Read::Quiet)
        }
        Err(e) => Err(e),
    }
}

/// Connects (and with `--tls` runs the handshake) within what is left
/// before `deadline`.
pub fn dial(target: Target, deadline: Instant) -> Result<Session, BenchError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(BenchError::new(
            "out of time (--max-seconds) while connecting",
        ));
    }
    let timeout = left.min(Duration::from_secs(10));
    let stream = open(target.host, target.port, timeout, target.tls)?;
    Ok(LineReader::new(stream))
}

/// Sends one command line.
pub fn send(session: &Session, line: &str) -> Result<(), BenchError> {
    LineWriter::new(session.get_ref()).send(line)?;
    Ok(())
}

/// Reads until the completion (`+` or `-`) of the oldest command, skipping
/// data lines and events other than `* bye`, which ends the session and so
/// is an error. Bounded by `deadline`.
pub fn completion(
    session: &mut Session,
    deadline: Instant,
    what: &str,
) -> Result<ServerLine, BenchError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BenchError::new(format!(
                "{what}: no reply before the --max-seconds deadline (a natterd that \
                 rate limits delays replies rather than refusing: start it with --rate 0)"
            )));
        }
        session.get_ref().tcp().set_read_timeout(Some(left))?;
        let line =
            match read_or_quiet(session).map_err(|e| BenchError::new(format!("{what}: {e}")))? {
                Read::Line(line) => line,
                Read::Closed => {
                    return Err(BenchError::new(format!(
                        "{what}: natterd closed the connection"
                    )))
                }
                Read::Quiet => continue,
            };
        match parse(&line) {
            ServerLine::Event(Event::Bye { reason }) => return Err(BenchError::bye(what, &reason)),
            done @ (ServerLine::Ok(_) | ServerLine::Err { .. }) => return Ok(done),
            _ => {}
        }
    }
}

/// Expects success from the oldest command; `- CODE` becomes an error that
/// names the server flag to change where one would help.
pub fn expect_ok(
    session: &mut Session,
    deadline: Instant,
    what: &str,
) -> Result<String, BenchError> {
    match completion(session, deadline, what)? {
        ServerLine::Ok(text) => Ok(text),
        ServerLine::Err { code, text } => Err(BenchError::refused(what, &code, &text)),
        _ => Err(BenchError::new(format!("{what}: unexpected reply"))),
    }
}

/// Opens one logged-in session per name, in the order given, registering the
/// users that do not exist yet. Shows a progress bar labelled `label` on long
/// setups. Fails as a whole if any session fails.
pub fn open_sessions(
    target: Target,
    names: &[String],
    deadline: Instant,
    label: &str,
) -> Result<Vec<Session>, BenchError> {
    let opened = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    let per_thread = names.len().div_ceil(SETUP_THREADS).max(1);
    thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(per_thread)
            .map(|chunk| {
                let (opened, abort) = (&opened, &abort);
                s.spawn(move || {
                    let mut out = Vec::with_capacity(chunk.len());
                    for batch in chunk.chunks(BATCH) {
                        if abort.load(Ordering::Relaxed) {
                            return Err(BenchError::new(STOPPED));
                        }
                        let r = open_batch(target, batch, deadline);
                        match r {
                            Ok(sessions) => {
                                opened.fetch_add(sessions.len() as u64, Ordering::Relaxed);
                                out.extend(sessions);
                            }
                            Err(e) => {
                                abort.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut bar = Progress::new(label, names.len() as u64);
        while !handles.iter().all(|h| h.is_finished()) {
            thread::sleep(TICK);
            bar.set(opened.load(Ordering::Relaxed));
        }
        bar.finish();
        let mut all = Vec::with_capacity(names.len());
        let mut first_err: Option<BenchError> = None;
        for h in handles {
            match h.join() {
                Ok(Ok(sessions)) => all.extend(sessions),
                Ok(Err(e)) => {
                    // Report the first real cause, not a thread told to stop.
                    let replace = match &first_err {
                        None => true,
                        Some(f) => f.0 == STOPPED && e.0 != STOPPED,
                    };
                    if replace {
                        first_err = Some(e);
                    }
                }
                Err(_) => {
                    first_err.get_or_insert(BenchError::new("a setup thread panicked"));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(all),
        }
    })
}

/// Pause before sending again what the server answered `- BUSY` (its queue
/// for password hashing was full): a few hashes' time.
const BUSY_PAUSE: Duration = Duration::from_millis(50);

/// Sends `line(i)` on each session in `pending`, pipelined, and reads the
/// answers. Those answered `- BUSY` are sent again after [`BUSY_PAUSE`]
/// until the deadline; the other answers are returned, by index.
fn answers_past_busy(
    sessions: &mut [Session],
    mut pending: Vec<usize>,
    deadline: Instant,
    line: impl Fn(usize) -> String,
) -> Result<Vec<(usize, ServerLine)>, BenchError> {
    let mut answers = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        for &i in &pending {
            send(&sessions[i], &line(i))?;
        }
        let mut busy = Vec::new();
        for &i in &pending {
            let what = line(i);
            let what = what.split(' ').take(2).collect::<Vec<_>>().join(" ");
            match completion(&mut sessions[i], deadline, &what)? {
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
                return Err(BenchError::new(
                    "the server kept answering BUSY (its password-hashing queue is full)",
                ));
            }
            thread::sleep(BUSY_PAUSE);
        }
        pending = busy;
    }
    Ok(answers)
}

/// One pipelined batch: connect all, register all, log in those that exist.
fn open_batch(
    target: Target,
    names: &[String],
    deadline: Instant,
) -> Result<Vec<Session>, BenchError> {
    let mut sessions = Vec::with_capacity(names.len());
    for _ in names {
        sessions.push(dial(target, deadline)?);
    }
    let all = (0..names.len()).collect();
    let registered = answers_past_busy(&mut sessions, all, deadline, |i| {
        format!("register {} {}", names[i], target.password)
    })?;
    let mut existing = Vec::new();
    for (i, answer) in registered {
        let what = format!("register {}", names[i]);
        match answer {
            ServerLine::Ok(_) => {}
            ServerLine::Err { code, .. } if ErrorCode::parse(&code) == Some(ErrorCode::Exists) => {
                existing.push(i)
            }
            ServerLine::Err { code, text } => return Err(BenchError::refused(&what, &code, &text)),
            _ => return Err(BenchError::new(format!("{what}: unexpected reply"))),
        }
    }
    let logins = answers_past_busy(&mut sessions, existing, deadline, |i| {
        format!("login {} {}", names[i], target.password)
    })?;
    for (i, answer) in logins {
        let what = format!("login {}", names[i]);
        match answer {
            ServerLine::Ok(_) => {}
            ServerLine::Err { code, text } => return Err(BenchError::refused(&what, &code, &text)),
            _ => return Err(BenchError::new(format!("{what}: unexpected reply"))),
        }
    }
    Ok(sessions)
}
