//! The wire vocabulary of protocol v1 (docs/PROTOCOL.md): error codes, `bye`
//! reasons, username and text rules, time format, and the encoders that turn
//! them into server lines. Everything here is pure; nothing touches a socket.
//!
//! Every line the server writes is built here, so the invariant "one sigil, a
//! space, no control characters, one LF" is kept in one place.

use std::fmt::Write as _;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The protocol version announced in `* hello natter <version>`.
pub const PROTOCOL_VERSION: &str = "1";

/// Longest username accepted, in characters (all ASCII, so also bytes).
pub const MAX_USERNAME_LEN: usize = 32;
/// Shortest new password, in bytes.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest new password, in bytes.
pub const MAX_PASSWORD_LEN: usize = 256;

/// The one-word failure codes of `- <CODE> <text>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadCmd,
    BadArg,
    BadText,
    BadUtf8,
    TooLong,
    NoAuth,
    Already,
    AuthFail,
    Locked,
    Exists,
    Closed,
    NoUser,
    Blocked,
    Rate,
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadCmd => "BADCMD",
            ErrorCode::BadArg => "BADARG",
            ErrorCode::BadText => "BADTEXT",
            ErrorCode::BadUtf8 => "BADUTF8",
            ErrorCode::TooLong => "TOOLONG",
            ErrorCode::NoAuth => "NOAUTH",
            ErrorCode::Already => "ALREADY",
            ErrorCode::AuthFail => "AUTHFAIL",
            ErrorCode::Locked => "LOCKED",
            ErrorCode::Exists => "EXISTS",
            ErrorCode::Closed => "CLOSED",
            ErrorCode::NoUser => "NOUSER",
            ErrorCode::Blocked => "BLOCKED",
            ErrorCode::Rate => "RATE",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

/// Why the server is closing a connection (`* bye <reason>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByeReason {
    Idle,
    Timeout,
    Replaced,
    Shutdown,
    Slow,
    Flood,
    Busy,
}

impl ByeReason {
    /// The reason as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ByeReason::Idle => "idle",
            ByeReason::Timeout => "timeout",
            ByeReason::Replaced => "replaced",
            ByeReason::Shutdown => "shutdown",
            ByeReason::Slow => "slow",
            ByeReason::Flood => "flood",
            ByeReason::Busy => "busy",
        }
    }
}

/// Checks a username against the contract and returns its canonical
/// (lowercase) form, or `None` if it is not a valid name.
pub fn canonical_username(raw: &str) -> Option<String> {
    let mut chars = raw.chars();
    let first = chars.next()?;
    if !first.is_ascii_alphabetic() || raw.len() > MAX_USERNAME_LEN {
        return None;
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return None;
    }
    Some(raw.to_ascii_lowercase())
}

/// True for the characters the contract treats as argument separators.
pub fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// True if the line holds a control character the contract refuses
/// (anything in Unicode category Cc except TAB).
pub fn has_forbidden_control(line: &str) -> bool {
    line.chars().any(|c| c.is_control() && c != '\t')
}

/// Makes text safe to relay: TAB is the one control character a line may
/// carry, and the server never relays control characters, so it becomes a
/// space.
pub fn relayable(text: &str) -> String {
    text.replace('\t', " ")
}

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
        push_line(&mut self.bytes, '=', fields);
        self
    }

    /// Finishes with `+ <text>`.
    pub fn ok(mut self, text: &str) -> Vec<u8> {
        push_line(&mut self.bytes, '+', text);
        self.bytes
    }

    /// Finishes with `- <CODE> <text>`.
    pub fn err(mut self, code: ErrorCode, text: &str) -> Vec<u8> {
        let mut line = String::with_capacity(code.as_str().len() + 1 + text.len());
        line.push_str(code.as_str());
        line.push(' ');
        line.push_str(text);
        push_line(&mut self.bytes, '-', &line);
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
    push_line(&mut bytes, '*', fields);
    bytes
}

/// `* bye <reason>`.
pub fn bye(reason: ByeReason) -> Vec<u8> {
    event(&format!("bye {}", reason.as_str()))
}

/// `* msg|broadcast <from> <time> <text>`: formatted once per message and
/// copied into each recipient's buffer.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_contract() {
        assert_eq!(canonical_username("Alice"), Some("alice".into()));
        assert_eq!(canonical_username("a.b-c_9"), Some("a.b-c_9".into()));
        assert_eq!(canonical_username(&"a".repeat(32)), Some("a".repeat(32)));
        assert_eq!(canonical_username(&"a".repeat(33)), None);
        assert_eq!(canonical_username(""), None);
        assert_eq!(canonical_username("9lives"), None);
        assert_eq!(canonical_username("_x"), None);
        assert_eq!(canonical_username("a b"), None);
        assert_eq!(canonical_username("é"), None);
    }

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
    fn control_characters_other_than_tab_are_forbidden() {
        assert!(!has_forbidden_control("send bob hi\tthere"));
        assert!(has_forbidden_control("send bob \u{1b}[31mred"));
        assert!(has_forbidden_control("x\u{85}"));
        assert!(has_forbidden_control("x\r"));
    }
}
