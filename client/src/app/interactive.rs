//! Interactive mode: a rustyline prompt owns the terminal's input, and every
//! line from the server is printed through rustyline's external printer, which
//! clears the prompt, prints the line above it and redraws the prompt with the
//! text typed so far and the cursor where they were. That is what keeps an
//! incoming message from landing inside what the person is typing.
//!
//! This is the only module that puts the terminal in raw mode (through
//! rustyline) and the only one that restores it.

use std::io::{self, IsTerminal, Write};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nix::sys::termios::{self, SetArg, Termios};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Context, Editor, ExternalPrinter as _, Helper};

use natter_client::{LineReader, LineWriter, Stream, Style};

use super::complete::complete;
use super::session::{read_loop, End, Sent, Shared};

/// How long to wait for `+ bye` after sending `quit` on the way out. The
/// server answers at once; this only bounds the wait on a stuck one.
const QUIT_GRACE: Duration = Duration::from_secs(3);

/// When the server ends the session while the person is at the prompt, the
/// editor may still be drawing the last lines handed to it; this much time
/// lets it finish before the terminal is restored under it.
const DRAW_GRACE: Duration = Duration::from_millis(100);

/// Typed commands kept for the Up arrow, in memory only: a history file would
/// be one more place a mistyped password could end up.
const HISTORY_SIZE: usize = 1000;

/// Runs interactive mode to the end; returns the exit status.
pub fn run(
    reader: LineReader<Stream>,
    mut writer: LineWriter<Stream>,
    style: Style,
    user: &str,
) -> i32 {
    let shared = Arc::new(Shared::default());
    // Saved before rustyline changes it, so the reader thread can put the
    // terminal back if it has to end the process under the editor.
    let saved = termios::tcgetattr(io::stdin()).ok();
    let mut editor = match editor(Arc::clone(&shared)) {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("natter: cannot start the line editor: {e}");
            return 1;
        }
    };
    let print: Box<dyn FnMut(String) + Send> = match editor.create_external_printer() {
        // The newline is added here because the printer only adds one itself
        // while the editor is active; between prompts it writes as given.
        Ok(mut printer) => Box::new(move |line| {
            if printer.print(format!("{line}\n")).is_err() {
                super::say(&line);
            }
        }),
        // Output is not a terminal (e.g. piped to tee): nothing to redraw.
        Err(_) => Box::new(|line| super::say(&line)),
    };
    restore_on_termination(saved.clone());
    let for_reader = Arc::clone(&shared);
    let interrupt = move |end: End| leave_under_editor(&end, saved);
    let spawned = thread::Builder::new()
        .name("natter-reader".into())
        .spawn(move || read_loop(reader, &for_reader, style, false, print, interrupt));
    if let Err(e) = spawned {
        eprintln!("natter: cannot start the reader thread: {e}");
        return 1;
    }

    let prompt = format!("{user}> ");
    loop {
        match editor.readline(&prompt) {
            Ok(line) => {
                let Some(sent) = Sent::of(&line) else {
                    continue;
                };
                // A typed login, register or passwd line holds a password.
                if !matches!(sent.word.as_str(), "login" | "register" | "passwd") {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if sent.ends_session() {
                    return quit(&shared, &mut writer, &line);
                }
                if let Err(e) = shared.send(&mut writer, &line) {
                    if e.kind() == io::ErrorKind::InvalidInput {
                        eprintln!("natter: {e}");
                        continue;
                    }
                    // The reader sees the socket fail and ends the process;
                    // this only bounds the wait if it somehow does not.
                    let end = shared.wait_end(QUIT_GRACE);
                    return report(&end.unwrap_or(End::Dropped(e.to_string())));
                }
            }
            // Ctrl-C and Ctrl-D leave the way `quit` does.
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => {
                return quit(&shared, &mut writer, "quit")
            }
            Err(e) => {
                eprintln!("natter: terminal error: {e}");
                quit(&shared, &mut writer, "quit");
                return 1;
            }
        }
    }
}

/// The editor with completion, in-memory history and List completion (the
/// common prefix, then the choices on a second Tab, as in a shell).
fn editor(shared: Arc<Shared>) -> rustyline::Result<Editor<NatterHelper, DefaultHistory>> {
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
    Ok(editor)
}

/// Sends `line` (a quit or logout) and waits briefly for the server to close.
/// The person asked to leave, so this exits 0 even if the server is slow to
/// confirm.
fn quit(shared: &Shared, writer: &mut LineWriter<Stream>, line: &str) -> i32 {
    if let Some(end) = shared.start_quitting() {
        return report(&end);
    }
    if shared.send(writer, line).is_ok() {
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
