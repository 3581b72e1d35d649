//! Piped mode: stdin is not a terminal, so there is no line editor and no
//! prompt. Each input line is sent as it is read; what comes back is printed
//! in plain text on stdout; at the end of input the client waits for the reply
//! to every command it sent, then exits. Errors go to stderr so stdout is
//! only the server's lines.

use std::io::{self, BufRead};
use std::sync::Arc;
use std::thread;

use natter_client::{LineReader, LineWriter, Stream, Style};

use super::session::{read_loop, End, Sent, Shared};

/// Runs piped mode to the end; returns the exit status.
pub fn run(reader: LineReader<Stream>, mut writer: LineWriter<Stream>, style: Style) -> i32 {
    let shared = Arc::new(Shared::default());
    let for_reader = Arc::clone(&shared);
    let spawned = thread::Builder::new()
        .name("natter-reader".into())
        .spawn(move || {
            let print = |line: String| super::say(&line);
            // Until stdin ends the main thread is blocked reading it and would
            // not notice the connection going, so the reader ends the process.
            let interrupt = |end: End| std::process::exit(report(&end));
            read_loop(reader, &for_reader, style, true, print, interrupt);
        });
    if let Err(e) = spawned {
        eprintln!("natter: cannot start the reader thread: {e}");
        return 1;
    }

    let mut stdin = io::stdin().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match stdin.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                eprintln!("natter: cannot read stdin: {e}");
                break;
            }
        }
        let bytes = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let Ok(line) = std::str::from_utf8(bytes) else {
            eprintln!("natter: skipped an input line that is not UTF-8");
            continue;
        };
        if let Err(e) = shared.send(&mut writer, line) {
            if e.kind() == io::ErrorKind::InvalidInput {
                eprintln!("natter: skipped an input line: {e}");
                continue;
            }
            // The socket is gone; the reader reports why.
            break;
        }
        // The server closes after a quit it accepts, and ignores what follows;
        // a refused one (logout before login) leaves the script going.
        if Sent::of(line).is_some_and(|s| s.ends_session()) {
            if let Some(end) = shared.wait_idle(None) {
                return report(&end);
            }
            if shared.quit_accepted() {
                break;
            }
        }
    }

    if let Some(end) = shared.start_quitting() {
        return report(&end);
    }
    match shared.wait_idle(None) {
        Some(end) => report(&end),
        None => 0,
    }
}

fn report(end: &End) -> i32 {
    if let Some(message) = end.message() {
        eprintln!("natter: {message}");
    }
    end.exit_code()
}
