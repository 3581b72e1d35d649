//! Piped mode: stdin is not a terminal, so there is no line editor and no
//! prompt. Each input line is one command; what comes back is printed on
//! stdout, as the protocol's lines or (`--json`) one JSON object per reply
//! or event. Errors go to stderr so stdout is only the server's answers.
//!
//! Commands are pipelined by default: sent as they are read, the server's
//! rate limit pacing them (it delays reading, never refuses), so nothing is
//! dropped; `--wait` sends each only once the one before is answered. The
//! exit status says whether the script can trust the run: 0 when every
//! command succeeded, 3 when one was refused, 1 when the connection failed
//! or a login did. If the connection ends before the input does, the
//! commands that got no answer are listed on stderr.

use std::io::{self, BufRead};
use std::sync::Arc;
use std::thread;

use natter_client::{render, Event, ServerLine, Style};
use serde_json::{json, Value};

use super::link::Connection;
use super::session::{read_loop, End, Keepalive, Sent, Shared};

/// Exit status when every command was answered and one or more were
/// refused (`- CODE`).
pub const EXIT_COMMAND_FAILED: i32 = 3;

/// Commands in flight at most: a long script waits for answers beyond
/// this, so the records of unanswered commands stay bounded while the
/// pipeline stays full (the server answers far fewer per round trip).
const MAX_IN_FLIGHT: usize = 1000;

/// How piped mode prints and paces.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// One JSON object per reply and per event.
    pub json: bool,
    /// Send each command only after the previous one is answered.
    pub wait: bool,
    /// Keep a paused script's session alive.
    pub keepalive: Option<Keepalive>,
}

/// Runs piped mode to the end; returns the exit status. `welcome` is the
/// reply to the login the client made (with `--user`), if it made one.
pub fn run(
    conn: Connection,
    welcome: Option<(Sent, ServerLine)>,
    style: Style,
    settings: Settings,
) -> i32 {
    let (mut reader, wire) = conn.into_halves();
    let shared = Arc::new(Shared::new(wire));
    let mut output = Output::new(style, settings.json);
    if let Some((login, reply)) = &welcome {
        shared.set_logged_in();
        output.line(reply, Some(login));
    }
    let for_reader = Arc::clone(&shared);
    let spawned = thread::Builder::new()
        .name("natter-reader".into())
        .spawn(move || {
            let end = read_loop(&mut reader, &for_reader, settings.keepalive, &mut |l, c| {
                output.line(l, c)
            });
            // Until stdin ends the main thread is blocked reading it and would
            // not notice the connection going, so the reader ends the process.
            if !for_reader.finish(end.clone()) {
                std::process::exit(exit_status(Some(&end), &for_reader));
            }
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
        if let Some(end) = shared.wait_room(MAX_IN_FLIGHT) {
            return exit_status(Some(&end), &shared);
        }
        if let Err(e) = shared.send(line) {
            if e.kind() == io::ErrorKind::InvalidInput {
                eprintln!("natter: skipped an input line: {e}");
                continue;
            }
            // The socket is gone; the reader reports why.
            break;
        }
        let ends_session = Sent::of(line).is_some_and(|s| s.ends_session());
        if settings.wait || ends_session {
            if let Some(end) = shared.wait_idle(None) {
                return exit_status(Some(&end), &shared);
            }
        }
        // The server closes after a quit it accepts, and ignores what follows;
        // a refused one (logout before login) leaves the script going.
        if ends_session && shared.quit_accepted() {
            break;
        }
    }

    if let Some(end) = shared.start_quitting() {
        return exit_status(Some(&end), &shared);
    }
    let end = shared.wait_idle(None);
    exit_status(end.as_ref(), &shared)
}

/// The exit status for a run that ended with `end` (`None`: input over and
/// every command answered, the connection still open). A connection that
/// ended other than by the script's own `quit` is a failure, and the
/// commands it left unanswered are listed.
fn exit_status(end: Option<&End>, shared: &Shared) -> i32 {
    if let Some(end) = end.filter(|e| **e != End::LoggedOut) {
        if let Some(message) = end.message() {
            eprintln!("natter: {message}");
        }
        let lost = shared.disconnect();
        if !lost.is_empty() {
            eprintln!("natter: {} got no answer:", commands(lost.len()));
            for sent in lost {
                eprintln!("  {}", sent.shown);
            }
        }
        return end.exit_code();
    }
    match shared.failures() {
        (_, true) => {
            eprintln!("natter: a login in the script failed");
            1
        }
        (0, false) => 0,
        (n, false) => {
            eprintln!("natter: {} failed", commands(n));
            EXIT_COMMAND_FAILED
        }
    }
}

/// "1 command", "2 commands".
fn commands(n: usize) -> String {
    if n == 1 {
        "1 command".into()
    } else {
        format!("{n} commands")
    }
}

/// Prints what the reader hands over, as text or JSON.
struct Output {
    style: Style,
    json: bool,
    /// Data lines of the reply being built (JSON only: a reply is one
    /// object).
    data: Vec<String>,
}

impl Output {
    fn new(style: Style, json: bool) -> Output {
        Output {
            style,
            json,
            data: Vec::new(),
        }
    }

    fn line(&mut self, line: &ServerLine, cmd: Option<&Sent>) {
        if !self.json {
            super::say(&render(line, &self.style));
            return;
        }
        if let Some(object) = self.json_of(line, cmd) {
            super::say(&object.to_string());
        }
    }

    /// The JSON for a line: `None` for a data line, held until its reply is
    /// complete.
    fn json_of(&mut self, line: &ServerLine, cmd: Option<&Sent>) -> Option<Value> {
        let command = cmd.map(|c| c.shown.as_str());
        Some(match line {
            ServerLine::Data(fields) if cmd.is_some() => {
                self.data.push(fields.clone());
                return None;
            }
            ServerLine::Data(fields) => json!({ "data": fields }),
            ServerLine::Ok(text) => json!({
                "command": command,
                "status": "ok",
                "code": null,
                "text": text,
                "data": std::mem::take(&mut self.data),
            }),
            ServerLine::Err { code, text } => json!({
                "command": command,
                "status": "error",
                "code": code,
                "text": text,
                "data": std::mem::take(&mut self.data),
            }),
            ServerLine::Event(event) => event_json(event),
            ServerLine::Unknown(raw) => json!({ "unknown": raw }),
        })
    }
}

fn event_json(event: &Event) -> Value {
    match event {
        Event::Hello { version } => json!({ "event": "hello", "version": version }),
        Event::Notice(text) => json!({ "event": "notice", "text": text }),
        Event::Msg { from, time, text } => {
            json!({ "event": "msg", "from": from, "time": time, "text": text })
        }
        Event::Broadcast { from, time, text } => {
            json!({ "event": "broadcast", "from": from, "time": time, "text": text })
        }
        Event::Bye { reason } => json!({ "event": "bye", "reason": reason }),
        Event::Other { kind, fields } => json!({ "event": kind, "fields": fields }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(cmd: &str, lines: &[&str]) -> Vec<Value> {
        let mut out = Output::new(Style::PLAIN, true);
        let sent = Sent::of(cmd);
        lines
            .iter()
            .filter_map(|l| out.json_of(&natter_client::parse(l), sent.as_ref()))
            .collect()
    }

    #[test]
    fn a_reply_is_one_object_with_its_data_lines() {
        let got = json("whoelse", &["= bob", "= carol", "+ 2 online"]);
        assert_eq!(
            got,
            [json!({
                "command": "whoelse", "status": "ok", "code": null,
                "text": "2 online", "data": ["bob", "carol"],
            })]
        );
        let got = json("login alice secret", &["- AUTHFAIL wrong"]);
        assert_eq!(got[0]["command"], "login alice ***");
        assert_eq!(
            (got[0]["status"].as_str(), got[0]["code"].as_str()),
            (Some("error"), Some("AUTHFAIL"))
        );
    }

    #[test]
    fn events_are_objects_of_their_own() {
        let got = json("ping", &["* msg bob 2026-11-24T19:20:03Z hi", "* bye idle"]);
        assert_eq!(
            got[0],
            json!({"event": "msg", "from": "bob", "time": "2026-11-24T19:20:03Z", "text": "hi"})
        );
        assert_eq!(got[1], json!({"event": "bye", "reason": "idle"}));
    }
}
