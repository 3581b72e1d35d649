//! Getting sessions logged in before a measurement starts, and the blocking
//! request/reply helpers the slower scenarios (login, ping) use. Sessions are
//! opened in batches on a few threads, each batch pipelined: connect all,
//! send every `register`, then read every reply, so the server's hashing
//! threads always have work queued. A name that already EXISTS is logged in
//! instead, so repeated runs reuse their users.

use std::collections::HashSet;
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
    completion_with(session, deadline, what, |_| {})
}

/// [`completion`], handing each data line (`= ...`) of the reply to `data`.
fn completion_with(
    session: &mut Session,
    deadline: Instant,
    what: &str,
    mut data: impl FnMut(String),
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
            ServerLine::Data(fields) => data(fields),
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

/// The node (an index into the targets) that the `i`th of a scenario's
/// spread sessions uses: round-robin, so with 2 nodes every other one is on
/// the second.
pub fn home(i: usize, nodes: usize) -> usize {
    i % nodes.max(1)
}

/// `items` dealt out over `nodes` as [`home`] says: part k holds the items
/// whose home is node k, in order.
fn deal<T: Clone>(items: &[T], nodes: usize) -> Vec<Vec<T>> {
    let mut parts = vec![Vec::new(); nodes.max(1)];
    for (i, item) in items.iter().enumerate() {
        parts[home(i, nodes)].push(item.clone());
    }
    parts
}

/// The inverse of [`deal`]: the items back in their first order.
fn gather<T>(parts: Vec<Vec<T>>) -> Vec<T> {
    let total = parts.iter().map(Vec::len).sum();
    let mut parts: Vec<_> = parts.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        for part in &mut parts {
            out.extend(part.next());
        }
    }
    out
}

const NO_NODE: &str = "no node to connect to";

/// The first node: where the sending side of a scenario connects.
pub fn first<'a>(targets: &[Target<'a>]) -> Result<Target<'a>, BenchError> {
    targets
        .first()
        .copied()
        .ok_or_else(|| BenchError::new(NO_NODE))
}

/// [`open_sessions`] with the names spread round-robin over `targets` (see
/// [`home`]); the sessions come back in the order of `names`. With one
/// target it is exactly `open_sessions`.
pub fn open_spread(
    targets: &[Target],
    names: &[String],
    deadline: Instant,
    label: &str,
) -> Result<Vec<Session>, BenchError> {
    match targets {
        [] => Err(BenchError::new(NO_NODE)),
        [target] => open_sessions(*target, names, deadline, label),
        _ => {
            let mut parts = Vec::with_capacity(targets.len());
            for (k, (target, names)) in targets.iter().zip(deal(names, targets.len())).enumerate() {
                let label = format!("{label} (node {})", k + 1);
                parts.push(open_sessions(*target, &names, deadline, &label)?);
            }
            Ok(gather(parts))
        }
    }
}

/// Pause between `whoelse`s while waiting for users on other nodes to be
/// listed.
const LISTED_POLL: Duration = Duration::from_millis(100);

/// Waits until `session`'s node lists every one of `names` in `whoelse`.
/// A user who logs in on one node reaches the others a pub/sub hop later;
/// a measurement started before would count against users the sender's
/// node does not know yet. Bounded by `deadline`.
pub fn wait_until_listed(
    session: &mut Session,
    names: &[String],
    deadline: Instant,
) -> Result<(), BenchError> {
    loop {
        send(session, "whoelse")?;
        let mut online = HashSet::new();
        match completion_with(session, deadline, "whoelse", |name| {
            online.insert(name);
        })? {
            ServerLine::Ok(_) => {}
            ServerLine::Err { code, text } => {
                return Err(BenchError::refused("whoelse", &code, &text))
            }
            _ => return Err(BenchError::new("whoelse: unexpected reply")),
        }
        let missing = names.iter().filter(|n| !online.contains(*n)).count();
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() + LISTED_POLL >= deadline {
            return Err(BenchError::new(format!(
                "{missing} of {} users logged in on the other nodes were still not in the \
                 first node's whoelse at the --max-seconds deadline: are the nodes in one \
                 cluster (the same --cluster Redis and --store)?",
                names.len()
            )));
        }
        thread::sleep(LISTED_POLL);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_go_round_robin_over_the_nodes() {
        assert_eq!(
            (0..5).map(|i| home(i, 2)).collect::<Vec<_>>(),
            [0, 1, 0, 1, 0]
        );
        assert!((0..7).all(|i| home(i, 1) == 0));
        let names: Vec<u32> = (0..7).collect();
        assert_eq!(deal(&names, 3), [vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
        assert_eq!(deal(&names, 1), [&names[..]]);
        // Fewer items than nodes: the last nodes get none.
        assert_eq!(deal(&names[..1], 3), [vec![0], vec![], vec![]]);
        for nodes in 1..5 {
            for n in 0..=names.len() {
                assert_eq!(gather(deal(&names[..n], nodes)), &names[..n], "{nodes} {n}");
            }
        }
    }
}
