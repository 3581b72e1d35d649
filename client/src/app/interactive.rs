//! Interactive mode: a rustyline prompt owns the terminal's input, and every
//! line from the server is printed through rustyline's external printer, which
//! clears the prompt, prints the line above it and redraws the prompt with the
//! text typed so far and the cursor where they were. That is what keeps an
//! incoming message from landing inside what the person is typing.
//!
//! Besides the two threads every mode has (this one with the editor, the
//! reader), interactive mode keeps the session going: the reader sends
//! keepalives and, when the connection drops, connects and logs in again
//! with backoff while the editor (and the half-typed line) stays as it is.
//! Small watcher threads restore the terminal on SIGTERM/SIGHUP and repaint
//! the screen after a resize.
//!
//! This is the only module that puts the terminal in raw mode (through
//! rustyline) and the only one that restores it.

use std::io::{self, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use nix::sys::termios::{self, SetArg, Termios};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{
    Cmd, CompletionType, ConditionalEventHandler, Config, Context, Editor, EventContext,
    EventHandler, ExternalPrinter as _, Helper, KeyEvent, RepeatCount,
};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use natter_client::{Event, LineReader, ServerLine, Stream, Style};

use super::autolog::{entry, Autolog};
use super::complete::complete;
use super::link::{backoff, jitter, whole_seconds, Connection, Dialer};
use super::login::Credentials;
use super::notify::Notifier;
use super::present::{rings, slash_help, Presenter};
use super::screen::Transcript;
use super::session::{read_loop, End, Keepalive, Sent, Shared};
use super::slash::{interpret, prompt, Action};

/// How long to wait for `+ bye` after sending `quit` on the way out. The
/// server answers at once; this only bounds the wait on a stuck one.
const QUIT_GRACE: Duration = Duration::from_secs(3);

/// When the server ends the session while the person is at the prompt, the
/// editor may still be drawing the last lines handed to it; this much time
/// lets it finish before the terminal is restored under it.
const DRAW_GRACE: Duration = Duration::from_millis(100);

/// A resize is repainted once no further resize came for this long: a
/// window being dragged sends dozens, and the editor's own reaction to the
/// last one must be over before the repaint.
const RESIZE_SETTLE: Duration = Duration::from_millis(150);

/// Typed commands kept for the Up arrow, in memory only: a history file would
/// be one more place a mistyped password could end up.
const HISTORY_SIZE: usize = 1000;

/// What the person chose on the command line for the session.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Connect again when the connection drops.
    pub reconnect: bool,
    /// Ring the terminal's bell on a direct message.
    pub bell: bool,
    /// Run this (with `sh -c`) on a direct message instead of the bell.
    pub notify: Option<String>,
    /// Write each conversation to its own file here.
    pub log_dir: Option<PathBuf>,
}

/// Runs interactive mode to the end; returns the exit status.
pub fn run(
    conn: Connection,
    dialer: Dialer,
    mut creds: Credentials,
    welcome: &ServerLine,
    style: Style,
    settings: Settings,
) -> i32 {
    // The account exists now: coming back after a drop is a login, even
    // when this session began with `--register`.
    creds.register = false;
    let user = creds.user.to_ascii_lowercase();
    let autolog = match settings.log_dir.as_deref().map(Autolog::open) {
        None => None,
        Some(Ok(log)) => Some(log),
        Some(Err(e)) => {
            eprintln!("natter: cannot use --log-dir: {e}");
            return 1;
        }
    };
    let notifier = settings.notify.clone().map(Notifier::new);
    let (reader, wire) = conn.into_halves();
    let shared = Arc::new(Shared::new(wire));
    shared.set_logged_in();
    // Saved before rustyline changes it, so the reader thread can put the
    // terminal back if it has to end the process under the editor.
    let saved = termios::tcgetattr(io::stdin()).ok();
    let cancelled = Arc::new(Mutex::new(String::new()));
    let mut editor = match editor(Arc::clone(&shared), Arc::clone(&cancelled)) {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("natter: cannot start the line editor: {e}");
            return 1;
        }
    };
    let print: Box<dyn FnMut(String) + Send> = match editor.create_external_printer() {
        // The newline is added here because the printer only adds one itself
        // while the editor is active; between prompts it writes as given.
        Ok(mut printer) => Box::new(move |text| {
            if printer.print(format!("{text}\n")).is_err() {
                super::say(&text);
            }
        }),
        // Output is not a terminal (e.g. piped to tee): nothing to redraw.
        Err(_) => Box::new(|text| super::say(&text)),
    };
    let screen = Arc::new(Screen {
        inner: Mutex::new(ScreenInner {
            print,
            transcript: Transcript::default(),
        }),
    });
    screen.show(&natter_client::render(welcome, &style));
    restore_on_termination(saved.clone());
    if io::stdout().is_terminal() {
        repaint_on_resize(Arc::clone(&screen));
    }

    let reading = Reading {
        shared: Arc::clone(&shared),
        screen: Arc::clone(&screen),
        dialer,
        creds,
        style,
        settings,
        autolog,
        notifier,
        saved,
    };
    let spawned = thread::Builder::new()
        .name("natter-reader".into())
        .spawn(move || reading.run(reader));
    if let Err(e) = spawned {
        eprintln!("natter: cannot start the reader thread: {e}");
        return 1;
    }

    let mut query: Option<String> = None;
    let mut kept: Option<String> = None;
    loop {
        let prompt = prompt(&user, query.as_deref());
        let read = match kept.take() {
            Some(line) => editor.readline_with_initial(&prompt, (&line, "")),
            None => editor.readline(&prompt),
        };
        let line = match read {
            Ok(line) => line,
            // Ctrl-C cancels the line, as in a shell; the editor leaves it on
            // screen. On an empty line it explains how to leave instead.
            Err(ReadlineError::Interrupted) => {
                let typed = std::mem::take(&mut *lock(&cancelled));
                if typed.is_empty() {
                    screen.record(&prompt);
                    screen.show("-- Ctrl-D on an empty line (or /quit) leaves natter");
                } else {
                    screen.record(&format!("{prompt}{typed}"));
                }
                continue;
            }
            Err(ReadlineError::Eof) => return quit(&shared, "quit"),
            Err(e) => {
                eprintln!("natter: terminal error: {e}");
                quit(&shared, "quit");
                return 1;
            }
        };
        let action = interpret(&line, query.as_deref());
        // A login, register or passwd line holds a password: it is kept
        // neither for Up nor for a repaint (which shows it masked).
        let secret = match &action {
            Action::Send(command) => Sent::of(command).filter(Sent::holds_password),
            _ => None,
        };
        match &secret {
            Some(sent) => screen.record(&format!("{prompt}{}", sent.shown)),
            None => {
                screen.record(&format!("{prompt}{line}"));
                if !matches!(action, Action::Nothing) {
                    let _ = editor.add_history_entry(line.as_str());
                }
            }
        }
        match action {
            Action::Nothing => {}
            Action::Usage(problem) => screen.show(&format!("-- {problem}")),
            Action::Help => screen.show_all(&slash_help(), false),
            Action::Query(Some(other)) => {
                screen.show(&format!(
                    "-- talking to {other}: plain lines go to them (/query alone stops)"
                ));
                query = Some(other);
            }
            Action::Query(None) => {
                if let Some(other) = query.take() {
                    screen.show(&format!("-- no longer talking to {other}"));
                }
            }
            Action::Quit => return quit(&shared, "quit"),
            Action::Send(command) => {
                if Sent::of(&command).is_some_and(|s| s.ends_session()) {
                    return quit(&shared, &command);
                }
                match shared.send(&command) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                        screen.show(&format!("-- not sent: {e}"));
                    }
                    // Disconnected, or the write failed as the connection
                    // dropped: the reader is reconnecting (or will end the
                    // process). The line comes back to be sent later.
                    Err(e) => {
                        screen.show(&format!(
                            "-- not sent ({e}); the line is kept: press Enter once reconnected"
                        ));
                        kept = Some(line);
                    }
                }
            }
        }
    }
}

/// What the reader thread needs: it reads, shows, keeps alive and
/// reconnects.
struct Reading {
    shared: Arc<Shared>,
    screen: Arc<Screen>,
    dialer: Dialer,
    creds: Credentials,
    style: Style,
    settings: Settings,
    autolog: Option<Autolog>,
    notifier: Option<Notifier>,
    saved: Option<Termios>,
}

impl Reading {
    fn run(self, mut reader: LineReader<Stream>) {
        let user = self.creds.user.to_ascii_lowercase();
        let keepalive: Option<Keepalive> = self.dialer.keepalive;
        let mut log_failed = false;
        loop {
            // Fresh for each connection: a reply cut off by a drop must not
            // leave held rows behind for the next one.
            let mut presenter = Presenter::new(self.style, &user);
            let end = read_loop(&mut reader, &self.shared, keepalive, &mut |line, cmd| {
                // A `* bye` is told with the ending, below.
                if matches!(line, ServerLine::Event(Event::Bye { .. })) {
                    return;
                }
                let now = OffsetDateTime::now_utc();
                let shown = presenter.show(line, cmd, now);
                let ring = rings(line) && self.notifier.is_none() && self.settings.bell;
                self.screen.show_all(&shown, ring);
                if let (Some(notifier), ServerLine::Event(Event::Msg { from, text, .. })) =
                    (&self.notifier, line)
                {
                    if let Err(e) = notifier.notify(from, text) {
                        self.screen.show(&format!("-- {e}"));
                    }
                }
                if let Some(log) = &self.autolog {
                    let stamp = now.format(&Rfc3339).unwrap_or_default();
                    let written = entry(line, cmd, &user, &stamp).map(|e| log.write(&e));
                    if let Some(Err(e)) = written {
                        // Told once: a full disk would otherwise repeat it on
                        // every message.
                        if !log_failed {
                            self.screen.show(&format!(
                                "-- cannot write to the log in {}: {e}",
                                log.dir().display()
                            ));
                            log_failed = true;
                        }
                    }
                }
            });
            if self.shared.quitting() || !self.settings.reconnect || !end.reconnects() {
                self.finish(end);
                return;
            }
            for lost in self.shared.disconnect() {
                self.screen.show(&format!(
                    "-- no reply came for: {} (it may or may not have been done)",
                    lost.shown
                ));
            }
            if let Some(message) = end.message() {
                self.screen.show(&format!("-- {message}"));
            }
            match self.reconnect() {
                Ok(next) => reader = next,
                Err(end) => {
                    self.finish(end);
                    return;
                }
            }
        }
    }

    /// Tries to connect and log in again, waiting longer after each failure,
    /// until it works or the login is refused.
    fn reconnect(&self) -> Result<LineReader<Stream>, End> {
        let mut attempt = 0;
        loop {
            let wait = backoff(attempt, jitter());
            attempt = attempt.saturating_add(1);
            self.screen
                .show(&format!("-- reconnecting in {} s", whole_seconds(wait)));
            thread::sleep(wait);
            if self.shared.quitting() {
                return Err(End::LoggedOut);
            }
            match self.dialer.dial(&self.creds) {
                Ok((reader, wire, welcome)) => {
                    self.shared.connect(wire);
                    self.screen.show("-- reconnected");
                    self.screen
                        .show(&natter_client::render(&welcome, &self.style));
                    return Ok(reader);
                }
                Err(e) if e.retry => self.screen.show(&format!("-- {}", e.message)),
                Err(e) => return Err(End::Refused(e.message)),
            }
        }
    }

    /// Records the final ending; ends the process if the person is still at
    /// the prompt.
    fn finish(&self, end: End) {
        if !self.shared.finish(end.clone()) {
            leave_under_editor(&end, self.saved.clone());
        }
    }
}

/// Everything interactive mode prints goes through here, so a repaint after
/// a resize knows what the screen held.
struct Screen {
    inner: Mutex<ScreenInner>,
}

struct ScreenInner {
    print: Box<dyn FnMut(String) + Send>,
    transcript: Transcript,
}

impl Screen {
    fn lock(&self) -> std::sync::MutexGuard<'_, ScreenInner> {
        lock(&self.inner)
    }

    /// Prints one line above the prompt.
    fn show(&self, line: &str) {
        self.show_all(&[line.to_string()], false);
    }

    /// Prints lines above the prompt, ringing the bell with the last one.
    fn show_all(&self, lines: &[String], bell: bool) {
        let mut inner = self.lock();
        for (i, line) in lines.iter().enumerate() {
            inner.transcript.push(line);
            if bell && i + 1 == lines.len() {
                (inner.print)(format!("{line}\x07"));
            } else {
                (inner.print)(line.clone());
            }
        }
    }

    /// Notes a line the editor itself left on the screen (a prompt and what
    /// was typed after it).
    fn record(&self, line: &str) {
        self.lock().transcript.push(line);
    }

    /// Clears the screen and prints its latest lines again at the
    /// terminal's current size; the editor then draws the prompt below.
    fn repaint(&self) {
        let Some((cols, rows)) = window_size() else {
            return;
        };
        let mut inner = self.lock();
        let text = inner.transcript.redraw(cols, rows, 1);
        let text = text.strip_suffix('\n').unwrap_or(&text).to_string();
        (inner.print)(text);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The terminal's size in columns and rows, if stdout is one.
fn window_size() -> Option<(usize, usize)> {
    let mut size = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct it is given,
    // which lives for the whole call.
    let rc = unsafe {
        nix::libc::ioctl(
            io::stdout().as_raw_fd(),
            nix::libc::TIOCGWINSZ,
            &mut size as *mut nix::libc::winsize,
        )
    };
    (rc == 0 && size.ws_col > 0 && size.ws_row > 0)
        .then(|| (usize::from(size.ws_col), usize::from(size.ws_row)))
}

/// Repaints the screen once a resize has settled (see [`super::screen`] for
/// why the editor's own redraw is not enough).
fn repaint_on_resize(screen: Arc<Screen>) {
    use signal_hook::consts::SIGWINCH;
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGWINCH]) else {
        return;
    };
    let watcher = thread::Builder::new()
        .name("natter-resize".into())
        .spawn(move || {
            while signals.forever().next().is_some() {
                loop {
                    thread::sleep(RESIZE_SETTLE);
                    if signals.pending().next().is_none() {
                        break;
                    }
                }
                screen.repaint();
            }
        });
    if let Err(e) = watcher {
        eprintln!("natter: cannot watch for terminal resizes: {e}");
    }
}

/// The editor with completion, in-memory history and List completion (the
/// common prefix, then the choices on a second Tab, as in a shell), and
/// Ctrl-C noting what it cancelled.
fn editor(
    shared: Arc<Shared>,
    cancelled: Arc<Mutex<String>>,
) -> rustyline::Result<Editor<NatterHelper, DefaultHistory>> {
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .auto_add_history(false)
        .max_history_size(HISTORY_SIZE)?
        .history_ignore_dups(true)?
        // Off so that a pasted block of lines is sent as commands one by one
        // and no escape mode is left on if the process must end mid-edit.
        .bracketed_paste(false)
        .build();
    let mut editor = Editor::with_config(config)?;
    editor.set_helper(Some(NatterHelper { shared }));
    editor.bind_sequence(
        KeyEvent::ctrl('C'),
        EventHandler::Conditional(Box::new(CancelLine { cancelled })),
    );
    Ok(editor)
}

/// Ctrl-C: interrupts the editor as usual, first noting the line it
/// cancels, which rustyline does not return.
struct CancelLine {
    cancelled: Arc<Mutex<String>>,
}

impl ConditionalEventHandler for CancelLine {
    fn handle(
        &self,
        _evt: &rustyline::Event,
        _n: RepeatCount,
        _positive: bool,
        ctx: &EventContext,
    ) -> Option<Cmd> {
        *lock(&self.cancelled) = ctx.line().to_string();
        Some(Cmd::Interrupt)
    }
}

/// Sends `line` (a quit or logout) and waits briefly for the server to close.
/// The person asked to leave, so this exits 0 even if the server is slow to
/// confirm or the client is between connections.
fn quit(shared: &Shared, line: &str) -> i32 {
    if let Some(end) = shared.start_quitting() {
        return report(&end);
    }
    if shared.send(line).is_ok() {
        match shared.wait_end(QUIT_GRACE) {
            Some(End::LoggedOut) => {}
            Some(end) => {
                report(&end);
            }
            None => eprintln!("natter: the server did not confirm the logout; leaving anyway"),
        }
    }
    0
}

fn report(end: &End) -> i32 {
    if let Some(message) = end.message() {
        eprintln!("natter: {message}");
    }
    end.exit_code()
}

/// Ends the process from the reader thread while the main thread is blocked
/// in the editor: rustyline offers no way to cancel a `readline` from another
/// thread, so the terminal is restored here before exiting.
fn leave_under_editor(end: &End, saved: Option<Termios>) -> ! {
    thread::sleep(DRAW_GRACE);
    if let Some(saved) = saved {
        let _ = termios::tcsetattr(io::stdin(), SetArg::TCSADRAIN, &saved);
    }
    let mut out = io::stdout();
    if out.is_terminal() {
        // Wipe the prompt line: what was typed there will not be sent.
        let _ = out.write_all(b"\r\x1b[K");
        let _ = out.flush();
    }
    eprintln!(
        "natter: {}",
        end.message().unwrap_or_else(|| "disconnected".into())
    );
    std::process::exit(end.exit_code())
}

/// SIGTERM or SIGHUP while the editor holds the terminal in raw mode would
/// leave the person's shell without echo: a watcher thread puts the saved
/// settings back before the process ends.
fn restore_on_termination(saved: Option<Termios>) {
    use signal_hook::consts::{SIGHUP, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGTERM, SIGHUP]) else {
        return;
    };
    let watcher = thread::Builder::new()
        .name("natter-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                if let Some(saved) = &saved {
                    let _ = termios::tcsetattr(io::stdin(), SetArg::TCSADRAIN, saved);
                }
                eprintln!("\r\nnatter: terminated (signal {signal})");
                std::process::exit(1);
            }
        });
    if let Err(e) = watcher {
        eprintln!("natter: cannot watch for termination signals: {e}");
    }
}

/// rustyline's hooks: completion of command words and known usernames.
struct NatterHelper {
    shared: Arc<Shared>,
}

impl Completer for NatterHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, words) = complete(line, pos, &self.shared.names());
        let pairs = words
            .into_iter()
            .map(|word| Pair {
                replacement: format!("{word} "),
                display: word,
            })
            .collect();
        Ok((start, pairs))
    }
}

impl Hinter for NatterHelper {
    type Hint = String;
}

impl Highlighter for NatterHelper {}

impl Validator for NatterHelper {}

impl Helper for NatterHelper {}
