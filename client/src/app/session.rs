//! The state the two threads share, and the socket-reading thread's loop.
//!
//! The input thread records each command before it sends it; the reader pops
//! one record per completion (`+` or `-`), since the server answers commands
//! in order with exactly one completion each. That count is how piped mode
//! knows when every reply is in, and the record says which command a data line
//! belongs to, which is how usernames are learnt and replies are laid out.
//! The reader never touches the terminal itself: it hands each line, with the
//! command it answers, to a sink the mode provides.
//!
//! The write half of the connection lives here too, behind its own lock, so
//! that the reader thread can send keepalives and put a new connection in
//! place after a reconnect while the input thread goes on sending.

use std::collections::{BTreeSet, VecDeque};
use std::io::{self, Read, Write};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use natter_client::display::explain_bye;
use natter_client::{Event, LineReader, LineWriter, ServerLine};
use natter_proto::{command, split_word, ByeReason};

use super::complete::learn_names;

/// The write half of a connection, whatever it runs over.
pub type Wire = LineWriter<Box<dyn Write + Send>>;

/// The command a keepalive sends: answered `+ pong`, before login or after.
const KEEPALIVE_LINE: &str = "ping";

/// Commands whose line holds a password after the username (or, for
/// `passwd`, as its first argument): never shown back in full.
const SECRET_WORDS: &[&str] = &["login", "register", "passwd"];

/// A command sent and not yet completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The command word, lowercased (the server's command words are
    /// case-insensitive).
    pub word: String,
    /// The first argument, kept for learning usernames. For `passwd` that is
    /// the old password, so it is not kept.
    pub arg: Option<String>,
    /// The line as it may be shown back (`--json`, the list of unanswered
    /// commands): the whole line, except that a password is masked.
    pub shown: String,
    /// Sent by the client to keep the session alive; its reply is not shown.
    pub keepalive: bool,
}

impl Sent {
    /// The record for a command line, or `None` for a blank line, which the
    /// server does not answer.
    pub fn of(line: &str) -> Option<Sent> {
        let (word, rest) = split_word(line);
        if word.is_empty() {
            return None;
        }
        let word = word.to_ascii_lowercase();
        let (arg, _) = split_word(rest);
        let secret = SECRET_WORDS.contains(&word.as_str());
        let shown = match word.as_str() {
            "passwd" => format!("{word} ***"),
            _ if secret && !arg.is_empty() => format!("{word} {arg} ***"),
            _ => line.trim().to_string(),
        };
        Some(Sent {
            arg: (!arg.is_empty() && word != "passwd").then(|| arg.to_string()),
            word,
            shown,
            keepalive: false,
        })
    }

    /// The record of a keepalive.
    fn keepalive() -> Sent {
        Sent {
            word: KEEPALIVE_LINE.to_string(),
            arg: None,
            shown: KEEPALIVE_LINE.to_string(),
            keepalive: true,
        }
    }

    /// Whether the server closes the connection after answering this.
    pub fn ends_session(&self) -> bool {
        command(&self.word).is_some_and(|c| c.ends_session)
    }

    /// Whether the line held a password (`shown` masks it).
    pub fn holds_password(&self) -> bool {
        SECRET_WORDS.contains(&self.word.as_str())
    }

    /// Whether this is a `login` or `register`: its failure is a login error.
    pub fn logs_in(&self) -> bool {
        matches!(self.word.as_str(), "login" | "register")
    }

    /// For a `send`: the recipient and the text, as sent.
    pub fn message(&self) -> Option<(&str, &str)> {
        if self.word != "send" {
            return None;
        }
        let (_, rest) = split_word(&self.shown);
        let (to, text) = split_word(rest);
        (!to.is_empty() && !text.is_empty()).then_some((to, text))
    }
}

/// How the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The person's `quit` or `logout` was answered: a clean exit.
    LoggedOut,
    /// The server said `* bye <reason>` and closed.
    Bye(String),
    /// The connection closed or failed without a `* bye`.
    Dropped(String),
    /// Logging in again after a reconnect was refused (the explanation).
    Refused(String),
}

impl End {
    /// The process exit status for this ending: only a logout is success.
    pub fn exit_code(&self) -> i32 {
        match self {
            End::LoggedOut => 0,
            End::Bye(_) | End::Dropped(_) | End::Refused(_) => 1,
        }
    }

    /// A one-line account for a person, or `None` when nothing went wrong.
    pub fn message(&self) -> Option<String> {
        match self {
            End::LoggedOut => None,
            End::Bye(reason) => Some(format!(
                "the server closed the connection: {}",
                explain_bye(reason)
            )),
            End::Dropped(why) => Some(format!("lost the connection to the server: {why}")),
            End::Refused(why) => Some(why.clone()),
        }
    }

    /// Whether an interactive client should connect again after this. A drop
    /// or a server going away is worth retrying; being replaced by another
    /// login, banned or kicked by the operator is someone's decision, and
    /// retrying would undo it (or fight the other login for ever).
    pub fn reconnects(&self) -> bool {
        match self {
            End::Dropped(_) => true,
            End::Bye(reason) => matches!(
                ByeReason::parse(reason),
                Some(
                    ByeReason::Idle
                        | ByeReason::Timeout
                        | ByeReason::Shutdown
                        | ByeReason::Slow
                        | ByeReason::Busy
                )
            ),
            End::LoggedOut | End::Refused(_) => false,
        }
    }
}

/// Everything both threads look at, behind one lock.
#[derive(Debug)]
struct State {
    /// Commands sent and not yet completed, oldest first.
    pending: VecDeque<Sent>,
    /// Usernames seen in events and replies, for Tab completion.
    names: BTreeSet<String>,
    /// Set once by the reader when the connection is over for good.
    end: Option<End>,
    /// Set by the input thread when the person asked to leave; from then on
    /// the end of the connection is expected, and the input thread, not the
    /// reader, finishes the process.
    quitting: bool,
    /// A `quit`/`logout` got its `+`.
    quit_accepted: bool,
    /// When the last line of any kind was sent: a keepalive is only due
    /// after a quiet spell.
    last_sent: Instant,
    /// When the last line arrived from the server.
    last_received: Instant,
    /// Commands (not keepalives) answered with `-`.
    failed: usize,
    /// A `login` or `register` line was refused.
    login_failed: bool,
    /// The session is logged in: keepalives are only sent then (before
    /// login the server refuses `ping`, and its login timeout applies).
    logged_in: bool,
}

impl Default for State {
    fn default() -> Self {
        let now = Instant::now();
        State {
            pending: VecDeque::new(),
            names: BTreeSet::new(),
            end: None,
            quitting: false,
            quit_accepted: false,
            last_sent: now,
            last_received: now,
            failed: 0,
            login_failed: false,
            logged_in: false,
        }
    }
}

/// The shared state, with a condition variable the reader signals whenever a
/// command completes or the connection ends, and the connection's write half.
#[derive(Default)]
pub struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// `None` while disconnected. Locked before `state` whenever both are.
    wire: Mutex<Option<Wire>>,
}

impl Shared {
    /// Shared state for a connection whose write half is `wire`.
    pub fn new(wire: Wire) -> Shared {
        let shared = Shared::default();
        shared.connect(wire);
        shared
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in the other thread must not turn into a second panic here:
        // the data is a queue and a set, still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_wire(&self) -> MutexGuard<'_, Option<Wire>> {
        self.wire.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a (new) connection's write half in place.
    pub fn connect(&self, wire: Wire) {
        let mut slot = self.lock_wire();
        *slot = Some(wire);
        let mut state = self.lock();
        state.last_sent = Instant::now();
        state.last_received = Instant::now();
    }

    /// Drops the write half after the connection was lost, and returns the
    /// commands that will now never be answered (keepalives left out).
    pub fn disconnect(&self) -> Vec<Sent> {
        let mut slot = self.lock_wire();
        *slot = None;
        let mut state = self.lock();
        let lost = state.pending.drain(..).filter(|s| !s.keepalive).collect();
        self.changed.notify_all();
        lost
    }

    /// Records and sends one command line; blank lines are neither sent nor
    /// recorded. Recording comes first so the reply can never arrive before
    /// the reader knows to expect it, and both happen under the write lock so
    /// the records stay in the order the lines left in. `NotConnected` while
    /// a reconnect is under way.
    pub fn send(&self, line: &str) -> io::Result<()> {
        match Sent::of(line) {
            Some(sent) => self.send_as(line, sent),
            None => Ok(()),
        }
    }

    fn send_as(&self, line: &str, sent: Sent) -> io::Result<()> {
        let mut slot = self.lock_wire();
        let Some(wire) = slot.as_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "not connected to the server",
            ));
        };
        {
            let mut state = self.lock();
            state.pending.push_back(sent);
            state.last_sent = Instant::now();
        }
        let result = wire.send(line);
        if result.is_err() {
            // Refused before anything was written (a CR or LF inside the
            // line), or the socket failed under it: no reply will come, so
            // it must not be awaited, nor listed later as unanswered (the
            // caller still holds the line and says it was not sent).
            self.lock().pending.pop_back();
        }
        result
    }

    /// Notes that the client logged the session in itself.
    pub fn set_logged_in(&self) {
        self.lock().logged_in = true;
    }

    /// Sends a keepalive if the session is logged in, nothing was sent for
    /// `interval` and none is awaiting its reply; returns whether one was
    /// sent.
    pub fn keepalive_if_due(&self, interval: Duration) -> io::Result<bool> {
        {
            let state = self.lock();
            if !state.logged_in
                || state.last_sent.elapsed() < interval
                || state.pending.iter().any(|s| s.keepalive)
            {
                return Ok(false);
            }
        }
        self.send_as(KEEPALIVE_LINE, Sent::keepalive())?;
        Ok(true)
    }

    /// Whether a keepalive has waited longer than `limit` for its reply with
    /// nothing at all arriving meanwhile: the server or the path to it is
    /// gone without closing the connection.
    pub fn keepalive_unanswered(&self, limit: Duration) -> bool {
        let state = self.lock();
        state.pending.iter().any(|s| s.keepalive)
            && state.last_sent.elapsed() > limit
            && state.last_received.elapsed() > limit
    }

    /// Whether a `quit`/`logout` was answered with `+` (the server closes
    /// next). A refused one (`- NOAUTH` before login) leaves the
    /// session open.
    pub fn quit_accepted(&self) -> bool {
        self.lock().quit_accepted
    }

    /// How many commands await their completion.
    #[cfg(test)]
    pub fn outstanding(&self) -> usize {
        self.lock().pending.len()
    }

    /// How many commands were answered with `-`, and whether one of them was
    /// a `login` or `register`.
    pub fn failures(&self) -> (usize, bool) {
        let state = self.lock();
        (state.failed, state.login_failed)
    }

    /// A copy of the usernames seen so far.
    pub fn names(&self) -> BTreeSet<String> {
        self.lock().names.clone()
    }

    /// Marks that the person is leaving, unless the connection already ended;
    /// returns that ending if so.
    pub fn start_quitting(&self) -> Option<End> {
        let mut state = self.lock();
        if state.end.is_none() {
            state.quitting = true;
        }
        state.end.clone()
    }

    /// Whether the person asked to leave.
    pub fn quitting(&self) -> bool {
        self.lock().quitting
    }

    /// Waits until no command is outstanding or the connection is over, for at
    /// most `timeout` (`None`: no limit). Returns the ending if there is one.
    pub fn wait_idle(&self, timeout: Option<Duration>) -> Option<End> {
        self.wait(timeout, |s| s.pending.is_empty() || s.end.is_some())
    }

    /// Waits until fewer than `limit` commands are outstanding (or the
    /// connection is over), so a long script never has more than that many
    /// records in memory.
    pub fn wait_room(&self, limit: usize) -> Option<End> {
        self.wait(None, |s| s.pending.len() < limit || s.end.is_some())
    }

    /// Waits for the connection to end, for at most `timeout`.
    pub fn wait_end(&self, timeout: Duration) -> Option<End> {
        self.wait(Some(timeout), |s| s.end.is_some())
    }

    fn wait(&self, timeout: Option<Duration>, done: impl Fn(&State) -> bool) -> Option<End> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.lock();
        while !done(&state) {
            state = match deadline {
                None => self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    self.changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        state.end.clone()
    }

    /// Takes one parsed line into account: learns names, notes arrival.
    /// Returns the command the line belongs to, if any; a completion is only
    /// counted by [`Shared::complete`], after it has been shown.
    fn note(&self, line: &ServerLine) -> Option<Sent> {
        let mut state = self.lock();
        state.last_received = Instant::now();
        if matches!(line, ServerLine::Event(_)) {
            for name in learn_names(None, line) {
                state.names.insert(name);
            }
            return None;
        }
        let current = state.pending.front().cloned();
        for name in learn_names(current.as_ref(), line) {
            state.names.insert(name);
        }
        current
    }

    /// Pops the command a completion answers and wakes any waiter.
    fn complete(&self, line: &ServerLine) {
        let mut state = self.lock();
        let current = state.pending.pop_front();
        if let Some(cmd) = &current {
            let ok = matches!(line, ServerLine::Ok(_));
            if ok && cmd.ends_session() {
                state.quit_accepted = true;
            }
            state.logged_in |= ok && cmd.logs_in();
            if !ok && !cmd.keepalive {
                state.failed += 1;
                state.login_failed |= cmd.logs_in();
            }
        }
        self.changed.notify_all();
    }

    /// Records the final ending and wakes any waiter. Returns whether the
    /// input thread had asked to leave (and so will finish the process
    /// itself).
    pub fn finish(&self, end: End) -> bool {
        let mut state = self.lock();
        state.end = Some(end);
        self.changed.notify_all();
        state.quitting
    }
}

/// The shortest wait for a keepalive's reply before giving a connection up,
/// for very short keepalive intervals: a round trip on a slow link plus a
/// busy server's pause stays well within it.
const MIN_DEAD_AFTER: Duration = Duration::from_secs(5);

/// How the reader keeps a quiet session alive.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    /// Send a `ping` after this long without sending anything. The socket's
    /// read timeout must be shorter, so the reader gets to check.
    pub interval: Duration,
}

impl Keepalive {
    /// The read timeout that lets the reader check for a due keepalive often
    /// enough: well within the interval, without waking needlessly often.
    pub fn tick(&self) -> Duration {
        (self.interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    /// How long an unanswered keepalive may wait, with nothing else arriving,
    /// before the connection counts as dead (a suspended laptop, a changed
    /// network, a hung server): three intervals, so a server pacing a busy
    /// client, which still sends something meanwhile, is never mistaken for
    /// a dead one; at least [`MIN_DEAD_AFTER`].
    pub fn dead_after(&self) -> Duration {
        (self.interval * 3).max(MIN_DEAD_AFTER)
    }
}

/// The reader: reads lines from one connection until it ends, hands each
/// one with the command it answers to `out` (keepalive replies excepted), and
/// keeps the shared state current. With `keepalive`, the socket must have a
/// read timeout of `keepalive.tick()`; the reader then sends a `ping` after
/// a quiet spell and gives the connection up when one goes unanswered.
/// Returns how the connection ended; recording that as final is the
/// caller's decision (it may reconnect instead).
pub fn read_loop<R: Read>(
    reader: &mut LineReader<R>,
    shared: &Shared,
    keepalive: Option<Keepalive>,
    out: &mut dyn FnMut(&ServerLine, Option<&Sent>),
) -> End {
    let mut bye = None;
    let mut logged_out = false;
    loop {
        let raw = match reader.read_line() {
            Ok(Some(raw)) => raw,
            Ok(None) if logged_out => return End::LoggedOut,
            Ok(None) => {
                return match bye.take() {
                    Some(reason) => End::Bye(reason),
                    None => End::Dropped("the server closed the connection".into()),
                }
            }
            Err(e) if is_timeout(&e) && keepalive.is_some() => {
                let Some(k) = keepalive else { continue };
                if shared.keepalive_unanswered(k.dead_after()) {
                    return End::Dropped(format!(
                        "no reply from the server in {} s",
                        k.dead_after().as_secs()
                    ));
                }
                if let Err(e) = shared.keepalive_if_due(k.interval) {
                    if e.kind() != io::ErrorKind::NotConnected {
                        return End::Dropped(e.to_string());
                    }
                }
                continue;
            }
            Err(e) => return End::Dropped(e.to_string()),
        };
        let line = natter_client::parse(&raw);
        let command = shared.note(&line);
        if !command.as_ref().is_some_and(|c| c.keepalive) {
            out(&line, command.as_ref());
        }
        // Counted after it is shown, so that a waiter woken by the last
        // completion finds its text already written.
        if line.is_completion() {
            shared.complete(&line);
        }
        match (&line, command) {
            (ServerLine::Event(Event::Bye { reason }), _) => bye = Some(reason.clone()),
            (ServerLine::Ok(_), Some(cmd)) if cmd.ends_session() => logged_out = true,
            _ => {}
        }
    }
}

/// A read that ran into the socket's read timeout.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A writer whose bytes the test can read back.
    #[derive(Clone, Default)]
    struct Tap(Arc<Mutex<Vec<u8>>>);

    impl Write for Tap {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("tap").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Tap {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("tap")).into_owned()
        }
    }

    fn shared() -> (Shared, Tap) {
        let tap = Tap::default();
        (Shared::new(LineWriter::new(Box::new(tap.clone()))), tap)
    }

    fn run(input: &str, sent: &[&str]) -> (Vec<String>, Shared, End) {
        let (shared, _) = shared();
        for line in sent {
            shared.send(line).expect("send");
        }
        let mut shown = Vec::new();
        let end = read_loop(
            &mut LineReader::new(input.as_bytes()),
            &shared,
            None,
            &mut |line, _| shown.push(natter_client::render(line, &natter_client::Style::PLAIN)),
        );
        (shown, shared, end)
    }

    #[test]
    fn blank_lines_are_not_sent_or_counted() {
        let (shared, tap) = shared();
        for line in ["ping", "", "  \t ", "whoelse"] {
            shared.send(line).expect("send");
        }
        assert_eq!(shared.outstanding(), 2);
        assert_eq!(tap.text(), "ping\nwhoelse\n");
    }

    #[test]
    fn completions_pop_commands_and_events_do_not() {
        let (shown, shared, _) = run(
            "+ pong\n* broadcast bob 2026-11-24T19:20:03Z hi\n= bob\n",
            &["ping", "whoelse"],
        );
        assert_eq!(shared.outstanding(), 1);
        assert_eq!(shown.len(), 3);
        assert!(shared.names().contains("bob"));
    }

    #[test]
    fn quit_answered_then_eof_is_a_logout() {
        let (_, shared, end) = run("+ pong\n+ bye\n", &["ping", "QUIT"]);
        assert_eq!(end, End::LoggedOut);
        assert_eq!(shared.outstanding(), 0);
    }

    #[test]
    fn bye_then_eof_reports_the_reason() {
        let (shown, _, end) = run("* bye replaced\n", &[]);
        assert_eq!(end, End::Bye("replaced".into()));
        assert_eq!(shown.len(), 1);
        assert_eq!(End::Bye("idle".into()).exit_code(), 1);
    }

    #[test]
    fn eof_without_bye_is_a_drop() {
        let (_, shared, end) = run("+ pong\n", &["ping", "whoelse"]);
        assert!(matches!(end, End::Dropped(_)));
        assert_eq!(shared.outstanding(), 1);
        assert_eq!(shared.disconnect().len(), 1);
        assert!(matches!(
            shared.send("ping").map_err(|e| e.kind()),
            Err(io::ErrorKind::NotConnected)
        ));
    }

    #[test]
    fn only_decisions_by_someone_stop_a_reconnect() {
        for reason in ["replaced", "banned", "kicked", "meteor"] {
            assert!(!End::Bye(reason.into()).reconnects(), "{reason}");
        }
        for reason in ["shutdown", "idle", "slow", "busy"] {
            assert!(End::Bye(reason.into()).reconnects(), "{reason}");
        }
        assert!(End::Dropped("reset".into()).reconnects());
        assert!(!End::LoggedOut.reconnects());
        assert!(!End::Refused("wrong password".into()).reconnects());
    }

    #[test]
    fn sent_record_never_keeps_the_password() {
        let sent = Sent::of("login alice secret words").expect("a command");
        assert_eq!(sent.word, "login");
        assert_eq!(sent.arg.as_deref(), Some("alice"));
        assert_eq!(sent.shown, "login alice ***");
        assert!(sent.holds_password());
        assert!(!Sent::of("send bob login x y")
            .expect("a command")
            .holds_password());
        let passwd = Sent::of("passwd old-one new-one").expect("a command");
        assert_eq!((passwd.arg, passwd.shown.as_str()), (None, "passwd ***"));
        assert_eq!(Sent::of("  "), None);
        let send = Sent::of("send bob hi  there").expect("a command");
        assert_eq!(send.message(), Some(("bob", "hi  there")));
    }

    #[test]
    fn keepalive_replies_are_hidden_and_failures_counted() {
        let (shared, tap) = shared();
        // Not before login.
        assert!(!shared.keepalive_if_due(Duration::ZERO).expect("ok"));
        shared.set_logged_in();
        assert!(!shared
            .keepalive_if_due(Duration::from_secs(60))
            .expect("ok"));
        assert!(shared.keepalive_if_due(Duration::ZERO).expect("sent"));
        // Only one keepalive waits at a time.
        assert!(!shared.keepalive_if_due(Duration::ZERO).expect("ok"));
        shared.send("send nobody hi").expect("send");
        shared.send("login alice wrong").expect("send");
        assert_eq!(tap.text(), "ping\nsend nobody hi\nlogin alice wrong\n");
        let mut shown = Vec::new();
        read_loop(
            &mut LineReader::new("+ pong\n- NOUSER x\n- AUTHFAIL y\n".as_bytes()),
            &shared,
            None,
            &mut |line, cmd| shown.push((line.clone(), cmd.map(|c| c.shown.clone()))),
        );
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert_eq!(shown[0].1.as_deref(), Some("send nobody hi"));
        assert_eq!(shared.failures(), (2, true));
    }

    #[test]
    fn a_keepalive_without_any_reply_means_a_dead_connection() {
        let (shared, _) = shared();
        shared.set_logged_in();
        assert!(shared.keepalive_if_due(Duration::ZERO).expect("sent"));
        assert!(shared.keepalive_unanswered(Duration::ZERO));
        assert!(!shared.keepalive_unanswered(Duration::from_secs(60)));
    }
}
