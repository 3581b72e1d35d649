//! The state the two threads share, and the socket-reading thread's loop.
//!
//! The input thread records each command before it sends it; the reader pops
//! one record per completion (`+` or `-`), since the server answers commands
//! in order with exactly one completion each. That count is how piped mode
//! knows when every reply is in, and the record says which command a data line
//! belongs to, which is how usernames are learnt for completion. The reader
//! never touches the terminal itself: it hands each rendered line to a sink
//! the mode provides.

use std::collections::{BTreeSet, VecDeque};
use std::io::{self, Read, Write};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use natter_client::display::explain_bye;
use natter_client::{render, Event, LineReader, LineWriter, ServerLine, Style};
use natter_proto::{command, split_word};

use super::complete::learn_names;

/// A command sent and not yet completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The command word, lowercased (the server's command words are
    /// case-insensitive).
    pub word: String,
    /// The first argument, kept for learning usernames. Never the rest of
    /// the line: for `login` that would be the password.
    pub arg: Option<String>,
}

impl Sent {
    /// The record for a command line, or `None` for a blank line, which the
    /// server does not answer.
    pub fn of(line: &str) -> Option<Sent> {
        let (word, rest) = split_word(line);
        if word.is_empty() {
            return None;
        }
        let (arg, _) = split_word(rest);
        Some(Sent {
            word: word.to_ascii_lowercase(),
            arg: (!arg.is_empty()).then(|| arg.to_string()),
        })
    }

    /// Whether the server closes the connection after answering this.
    pub fn ends_session(&self) -> bool {
        command(&self.word).is_some_and(|c| c.ends_session)
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
}

impl End {
    /// The process exit status for this ending: only a logout is success.
    pub fn exit_code(&self) -> i32 {
        match self {
            End::LoggedOut => 0,
            End::Bye(_) | End::Dropped(_) => 1,
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
        }
    }
}

/// Everything both threads look at, behind one lock.
#[derive(Debug, Default)]
struct State {
    /// Commands sent and not yet completed, oldest first.
    pending: VecDeque<Sent>,
    /// Usernames seen in events and replies, for Tab completion.
    names: BTreeSet<String>,
    /// Set once by the reader when the connection is over.
    end: Option<End>,
    /// Set by the input thread when the person asked to leave; from then on
    /// the end of the connection is expected, and the input thread, not the
    /// reader, finishes the process.
    quitting: bool,
    /// A `quit`/`logout` got its `+`.
    quit_accepted: bool,
}

/// The shared state, with a condition variable the reader signals whenever a
/// command completes or the connection ends.
#[derive(Debug, Default)]
pub struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in the other thread must not turn into a second panic here:
        // the data is a queue and a set, still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records and sends one command line; blank lines are neither sent nor
    /// recorded. Recording comes first so the reply can never arrive before
    /// the reader knows to expect it.
    pub fn send<W: Write>(&self, writer: &mut LineWriter<W>, line: &str) -> io::Result<()> {
        let Some(sent) = Sent::of(line) else {
            return Ok(());
        };
        self.lock().pending.push_back(sent);
        let result = writer.send(line);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::InvalidInput) {
            // Refused before anything was written (a CR or LF inside the
            // line): no reply will come for it, so it must not be awaited.
            self.lock().pending.pop_back();
        }
        result
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

    /// A copy of the usernames seen so far.
    pub fn names(&self) -> BTreeSet<String> {
        self.lock().names.clone()
    }

    /// The ending, if the connection is over.
    #[cfg(test)]
    pub fn end(&self) -> Option<End> {
        self.lock().end.clone()
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

    /// Waits until no command is outstanding or the connection is over, for at
    /// most `timeout` (`None`: no limit). Returns the ending if there is one.
    pub fn wait_idle(&self, timeout: Option<Duration>) -> Option<End> {
        self.wait(timeout, |s| s.pending.is_empty() || s.end.is_some())
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

    /// Takes one parsed line into account: pops the completed command, learns
    /// names. Returns the command the line belonged to, if any.
    fn note(&self, line: &ServerLine) -> Option<Sent> {
        let mut state = self.lock();
        let current = state.pending.front().cloned();
        for name in learn_names(current.as_ref(), line) {
            state.names.insert(name);
        }
        if line.is_completion() {
            if matches!(line, ServerLine::Ok(_)) && current.as_ref().is_some_and(Sent::ends_session)
            {
                state.quit_accepted = true;
            }
            state.pending.pop_front();
            self.changed.notify_all();
        }
        current
    }

    /// Records the ending and wakes any waiter. Returns whether the input
    /// thread had asked to leave (and so will finish the process itself).
    fn finish(&self, end: End) -> bool {
        let mut state = self.lock();
        state.end = Some(end);
        self.changed.notify_all();
        state.quitting
    }
}

/// The reader thread: reads lines until the connection ends, shows each one
/// through `out`, and keeps the shared state current. `show_bye` is false
/// where the ending is reported another way and `* bye` would say it twice.
/// When the connection ends and the person had not asked to leave,
/// `interrupt` is called with the ending: the input thread is blocked reading
/// input and cannot notice by itself.
pub fn read_loop<R: Read>(
    mut reader: LineReader<R>,
    shared: &Shared,
    style: Style,
    show_bye: bool,
    mut out: impl FnMut(String),
    interrupt: impl FnOnce(End),
) {
    let mut bye = None;
    let mut logged_out = false;
    let end = loop {
        let raw = match reader.read_line() {
            Ok(Some(raw)) => raw,
            Ok(None) if logged_out => break End::LoggedOut,
            Ok(None) => match bye.take() {
                Some(reason) => break End::Bye(reason),
                None => break End::Dropped("the server closed the connection".into()),
            },
            Err(e) => break End::Dropped(e.to_string()),
        };
        let line = natter_client::parse(&raw);
        let is_bye = matches!(line, ServerLine::Event(Event::Bye { .. }));
        if !is_bye || show_bye {
            out(render(&line, &style));
        }
        // Shown before it counts, so that a waiter woken by the last
        // completion finds its text already written.
        let command = shared.note(&line);
        match (&line, command) {
            (ServerLine::Event(Event::Bye { reason }), _) => bye = Some(reason.clone()),
            (ServerLine::Ok(_), Some(cmd)) if cmd.ends_session() => logged_out = true,
            _ => {}
        }
    };
    if !shared.finish(end.clone()) {
        interrupt(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str, sent: &[&str]) -> (Vec<String>, Shared) {
        let shared = Shared::default();
        let mut w = LineWriter::new(Vec::new());
        for line in sent {
            shared.send(&mut w, line).expect("send");
        }
        let mut shown = Vec::new();
        read_loop(
            LineReader::new(input.as_bytes()),
            &shared,
            Style::PLAIN,
            true,
            |s| shown.push(s),
            |_| {},
        );
        (shown, shared)
    }

    #[test]
    fn blank_lines_are_not_sent_or_counted() {
        let shared = Shared::default();
        let mut w = LineWriter::new(Vec::new());
        for line in ["ping", "", "  \t ", "whoelse"] {
            shared.send(&mut w, line).expect("send");
        }
        assert_eq!(shared.outstanding(), 2);
        assert_eq!(w.get_ref().as_slice(), b"ping\nwhoelse\n");
    }

    #[test]
    fn completions_pop_commands_and_events_do_not() {
        let (shown, shared) = run(
            "+ pong\n* broadcast bob 2026-11-24T19:20:03Z hi\n= bob\n",
            &["ping", "whoelse"],
        );
        assert_eq!(shared.outstanding(), 1);
        assert_eq!(shown.len(), 3);
        assert!(shared.names().contains("bob"));
    }

    #[test]
    fn quit_answered_then_eof_is_a_logout() {
        let (_, shared) = run("+ pong\n+ bye\n", &["ping", "QUIT"]);
        assert_eq!(shared.end(), Some(End::LoggedOut));
        assert_eq!(shared.outstanding(), 0);
    }

    #[test]
    fn bye_then_eof_reports_the_reason() {
        let (shown, shared) = run("* bye replaced\n", &[]);
        assert_eq!(shared.end(), Some(End::Bye("replaced".into())));
        assert_eq!(shown.len(), 1);
        assert_eq!(End::Bye("idle".into()).exit_code(), 1);
    }

    #[test]
    fn eof_without_bye_is_a_drop() {
        let (_, shared) = run("+ pong\n", &["ping", "whoelse"]);
        assert!(matches!(shared.end(), Some(End::Dropped(_))));
        assert_eq!(
            shared
                .wait_idle(Some(Duration::ZERO))
                .map(|e| e.exit_code()),
            Some(1)
        );
    }

    #[test]
    fn sent_record_never_keeps_the_password() {
        let sent = Sent::of("login alice secret words").expect("a command");
        assert_eq!(sent.word, "login");
        assert_eq!(sent.arg.as_deref(), Some("alice"));
        assert_eq!(Sent::of("  "), None);
    }
}
