//! The shapes of server lines: `<sigil> <text>` with the sigils `+` (success),
//! `-` (failure with a code), `=` (data) and `*` (event). The builders turn
//! replies and events into bytes for natterd; [`split_line`] and
//! [`split_chat`] take a line apart again, borrowing, for the clients.
//!
//! Every line the server writes is built here, so the invariant "one sigil, a
//! space, no control characters, one LF" is kept in one place.

use std::fmt::Write as _;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::codes::{ByeReason, ErrorCode, EventKind};
use crate::rules::{is_blank, split_word};

/// The protocol version announced in `* hello natter <version>`.
pub const PROTOCOL_VERSION: &str = "1";
/// The name in `* hello natter <version>`.
pub const PROTOCOL_NAME: &str = "natter";

/// Sigil of a success line, `+ <text>`: completes the oldest command.
pub const SIGIL_OK: char = '+';
/// Sigil of a failure line, `- <CODE> <text>`: completes the oldest command.
pub const SIGIL_ERR: char = '-';
/// Sigil of a data line, `= <fields>`, part of a reply being built.
pub const SIGIL_DATA: char = '=';
/// Sigil of an unsolicited event, `* <event> <fields>`.
pub const SIGIL_EVENT: char = '*';

/// Formats a Unix time (seconds) as RFC 3339 UTC with second precision,
/// e.g. `2026-11-24T19:20:03Z`.
pub fn format_time(unix_secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix_secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        // Only a clock set absurdly far away reaches this; say so rather than fail.
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// Builds the bytes of one command's reply: data lines then exactly one
/// completion. Building the whole reply before it reaches a session's output
/// buffer is what keeps events from ever landing inside a reply.
#[derive(Debug, Default)]
pub struct Reply {
    bytes: Vec<u8>,
}

impl Reply {
    /// A reply with no data lines yet.
    pub fn new() -> Self {
        Reply::default()
    }

    /// Appends a `= <fields>` data line.
    pub fn data(&mut self, fields: &str) -> &mut Self {
        push_line(&mut self.bytes, SIGIL_DATA, fields);
        self
    }

    /// The data lines so far, for a reply sent in parts: the completion
    /// comes with a later part.
    pub fn partial(self) -> Vec<u8> {
        self.bytes
    }

    /// Bytes so far (where the next line starts).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether no line was added yet.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Finishes with `+ <text>`.
    pub fn ok(mut self, text: &str) -> Vec<u8> {
        push_line(&mut self.bytes, SIGIL_OK, text);
        self.bytes
    }

    /// Finishes with `- <CODE> <text>`.
    pub fn err(mut self, code: ErrorCode, text: &str) -> Vec<u8> {
        let mut line = String::with_capacity(code.as_str().len() + 1 + text.len());
        line.push_str(code.as_str());
        line.push(' ');
        line.push_str(text);
        push_line(&mut self.bytes, SIGIL_ERR, &line);
        self.bytes
    }
}

/// A reply that is only a success line.
pub fn ok(text: &str) -> Vec<u8> {
    Reply::new().ok(text)
}

/// A reply that is only a failure line.
pub fn err(code: ErrorCode, text: &str) -> Vec<u8> {
    Reply::new().err(code, text)
}

/// An unsolicited `* <event> <fields>` line.
pub fn event(fields: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(fields.len() + 3);
    push_line(&mut bytes, SIGIL_EVENT, fields);
    bytes
}

/// `* hello natter <version>`, the first line on every connection.
pub fn hello() -> Vec<u8> {
    event(&format!(
        "{} {PROTOCOL_NAME} {PROTOCOL_VERSION}",
        EventKind::Hello
    ))
}

/// `* bye <reason>`.
pub fn bye(reason: ByeReason) -> Vec<u8> {
    event(&format!("{} {reason}", EventKind::Bye))
}

/// `* msg|broadcast <from> <time> <text>`: formatted once per message and
/// copied into each recipient's buffer. `kind` is `"msg"` or `"broadcast"`
/// ([`EventKind::Msg`], [`EventKind::Broadcast`] as strings).
pub fn chat_event(kind: &str, from: &str, unix_secs: i64, text: &str) -> Vec<u8> {
    let mut fields = String::with_capacity(kind.len() + from.len() + text.len() + 24);
    let _ = write!(fields, "{kind} {from} {} {text}", format_time(unix_secs));
    event(&fields)
}

/// Appends `<sigil> <text>\n`, replacing any control character in `text`
/// with a space. Callers already refuse such text; this is the last line of
/// defence for the promise that the server never relays one.
fn push_line(out: &mut Vec<u8>, sigil: char, text: &str) {
    out.reserve(text.len() + 3);
    out.push(sigil as u8);
    out.push(b' ');
    if text.chars().any(char::is_control) {
        let clean: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        out.extend_from_slice(clean.as_bytes());
    } else {
        out.extend_from_slice(text.as_bytes());
    }
    out.push(b'\n');
}

/// One server line taken apart by its sigil, borrowing from the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// `+ <text>`.
    Ok(&'a str),
    /// `- <CODE> <text>`; the code is kept as sent (see [`ErrorCode::parse`]),
    /// so a newer server's codes still come through.
    Err {
        /// The one-word code.
        code: &'a str,
        /// The human explanation; may be empty.
        text: &'a str,
    },
    /// `= <fields>`.
    Data(&'a str),
    /// `* <event> <fields>`; the word as sent (see [`EventKind::parse`]).
    Event {
        /// The event word.
        kind: &'a str,
        /// Everything after it.
        fields: &'a str,
    },
}

/// Takes one server line (without its LF) apart by its sigil. `None` for a
/// line without a known sigil, a sigil not followed by a blank (`+ok` is not
/// a completion), or a failure or event without its first word.
pub fn split_line(line: &str) -> Option<Line<'_>> {
    let mut chars = line.chars();
    let sigil = chars.next()?;
    let rest = chars.as_str();
    if !(rest.is_empty() || rest.starts_with(is_blank)) {
        return None;
    }
    let rest = rest.trim_start_matches(is_blank);
    match sigil {
        SIGIL_OK => Some(Line::Ok(rest)),
        SIGIL_DATA => Some(Line::Data(rest)),
        SIGIL_ERR => {
            let (code, text) = split_word(rest);
            (!code.is_empty()).then_some(Line::Err { code, text })
        }
        SIGIL_EVENT => {
            let (kind, fields) = split_word(rest);
            (!kind.is_empty()).then_some(Line::Event { kind, fields })
        }
        _ => None,
    }
}

/// The fields of `* msg` and `* broadcast`: `<from> <time> <text>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatFields<'a> {
    /// The sender, lowercase.
    pub from: &'a str,
    /// RFC 3339 UTC, as sent.
    pub time: &'a str,
    /// The message; blanks inside it are kept as sent.
    pub text: &'a str,
}

/// Takes `<from> <time> <text>` apart; `None` when a field is missing.
pub fn split_chat(fields: &str) -> Option<ChatFields<'_>> {
    let (from, rest) = split_word(fields);
    let (time, text) = split_word(rest);
    if from.is_empty() || time.is_empty() || text.is_empty() {
        return None;
    }
    Some(ChatFields { from, time, text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_seconds() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_795_548_003), "2026-11-24T19:20:03Z");
    }

    #[test]
    fn replies_are_data_lines_then_one_completion() {
        let mut r = Reply::new();
        r.data("bob").data("carol");
        assert_eq!(r.ok("2 online"), b"= bob\n= carol\n+ 2 online\n");
        assert_eq!(
            err(ErrorCode::NoUser, "no such user"),
            b"- NOUSER no such user\n"
        );
    }

    #[test]
    fn encoded_lines_never_carry_control_characters() {
        assert_eq!(event("msg a\tb\u{7}c\nd"), b"* msg a b c d\n");
    }

    #[test]
    fn events_have_their_shapes() {
        assert_eq!(hello(), b"* hello natter 1\n");
        assert_eq!(bye(ByeReason::Slow), b"* bye slow\n");
        assert_eq!(
            chat_event("msg", "alice", 1_795_548_003, "hi  there"),
            b"* msg alice 2026-11-24T19:20:03Z hi  there\n"
        );
    }

    #[test]
    fn built_lines_split_back_into_their_parts() {
        let line = chat_event("broadcast", "bob", 0, "a b");
        let line = std::str::from_utf8(&line).expect("utf-8");
        let Some(Line::Event { kind, fields }) = split_line(line.trim_end()) else {
            panic!("not an event: {line:?}");
        };
        assert_eq!(EventKind::parse(kind), Some(EventKind::Broadcast));
        assert_eq!(
            split_chat(fields),
            Some(ChatFields {
                from: "bob",
                time: "1970-01-01T00:00:00Z",
                text: "a b"
            })
        );
        let e = err(ErrorCode::NoUser, "no such user bob");
        assert_eq!(
            split_line(std::str::from_utf8(&e).expect("utf-8").trim_end()),
            Some(Line::Err {
                code: "NOUSER",
                text: "no such user bob"
            })
        );
    }

    #[test]
    fn odd_lines_do_not_split() {
        for line in [
            "", " ", "hello", "+ok", "-ERR", "=x", "# x", "-", "- ", "*", "* ",
        ] {
            assert_eq!(split_line(line), None, "{line:?}");
        }
        assert_eq!(split_line("+"), Some(Line::Ok("")));
        assert_eq!(split_line("=\tx"), Some(Line::Data("x")));
        assert_eq!(split_chat("alice 2026-11-24T19:20:03Z  "), None);
    }
}
