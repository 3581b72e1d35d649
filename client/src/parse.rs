//! Parsing one server line into what it means. Pure: no I/O, no terminal.
//! It follows the contract's advice to match on the sigil, the code and the
//! first word, and never on the human text after them, and it never fails:
//! a line it cannot make sense of becomes [`ServerLine::Unknown`], so a newer
//! or broken server degrades what is shown instead of ending the session.
//! The grammar itself (sigils, words, event fields) is natter-proto's; this
//! module only gives the pieces owned types a caller can keep.

use natter_proto::{split_chat, split_line, split_word, EventKind, Line, PROTOCOL_NAME};

/// One line from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerLine {
    /// `+ <text>`: the oldest outstanding command succeeded.
    Ok(String),
    /// `- <CODE> <text>`: the oldest outstanding command failed.
    Err {
        /// The one-word error code as sent, e.g. `NOUSER`; kept as text so a
        /// newer server's codes survive. `natter_proto::ErrorCode::parse`
        /// gives the known ones.
        code: String,
        /// The human explanation; may be empty.
        text: String,
    },
    /// `= <fields>`: a data line of the reply being built.
    Data(String),
    /// `* <event> <fields>`: an unsolicited event.
    Event(Event),
    /// A line without a known sigil, or an event missing fields it must
    /// have. Kept whole so it can still be shown.
    Unknown(String),
}

impl ServerLine {
    /// Whether this line completes a command (`+` or `-`); exactly one does
    /// per command sent, which is how callers count outstanding replies.
    pub fn is_completion(&self) -> bool {
        matches!(self, ServerLine::Ok(_) | ServerLine::Err { .. })
    }
}

/// An unsolicited event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `* hello natter <version>`: the first line on every connection.
    Hello {
        /// The protocol version the server speaks.
        version: String,
    },
    /// `* notice <text>`: a message from the server for a person.
    Notice(String),
    /// `* msg <from> <time> <text>`: a direct message.
    Msg {
        /// The sender, lowercase.
        from: String,
        /// RFC 3339 UTC, as sent; not parsed here so a bad time loses nothing.
        time: String,
        /// The message.
        text: String,
    },
    /// `* broadcast <from> <time> <text>`: a broadcast.
    Broadcast {
        /// The sender, lowercase.
        from: String,
        /// RFC 3339 UTC, as sent.
        time: String,
        /// The message.
        text: String,
    },
    /// `* bye <reason>`: the server is closing this connection.
    Bye {
        /// One of the reasons in the contract (`natter_proto::ByeReason::parse`),
        /// or whatever a newer server sends.
        reason: String,
    },
    /// An event this client does not know, kept for display.
    Other {
        /// The event word.
        kind: String,
        /// Everything after it.
        fields: String,
    },
}

/// Parses one server line (without its LF).
pub fn parse(line: &str) -> ServerLine {
    let Some(split) = split_line(line) else {
        return ServerLine::Unknown(line.to_string());
    };
    match split {
        Line::Ok(text) => ServerLine::Ok(text.to_string()),
        Line::Data(fields) => ServerLine::Data(fields.to_string()),
        Line::Err { code, text } => ServerLine::Err {
            code: code.to_string(),
            text: text.to_string(),
        },
        Line::Event { kind, fields } => match parse_event(kind, fields) {
            Some(event) => ServerLine::Event(event),
            None => ServerLine::Unknown(line.to_string()),
        },
    }
}

/// Builds the event `* <kind> <fields>`; `None` when a known event lacks a
/// field.
fn parse_event(kind: &str, fields: &str) -> Option<Event> {
    let need = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let Some(known) = EventKind::parse(kind) else {
        return Some(Event::Other {
            kind: kind.to_string(),
            fields: fields.to_string(),
        });
    };
    match known {
        EventKind::Hello => {
            let (name, version) = split_word(fields);
            (name == PROTOCOL_NAME).then_some(())?;
            Some(Event::Hello {
                version: need(version)?,
            })
        }
        EventKind::Notice => Some(Event::Notice(fields.to_string())),
        EventKind::Msg | EventKind::Broadcast => {
            let chat = split_chat(fields)?;
            let (from, time, text) = (
                chat.from.to_string(),
                chat.time.to_string(),
                chat.text.to_string(),
            );
            Some(if known == EventKind::Msg {
                Event::Msg { from, time, text }
            } else {
                Event::Broadcast { from, time, text }
            })
        }
        EventKind::Bye => Some(Event::Bye {
            reason: need(fields)?,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn completions_and_data() {
        assert_eq!(parse("+ delivered"), ServerLine::Ok(s("delivered")));
        assert_eq!(parse("+"), ServerLine::Ok(s("")));
        assert_eq!(
            parse("- NOUSER no such user"),
            ServerLine::Err {
                code: s("NOUSER"),
                text: s("no such user")
            }
        );
        assert_eq!(
            parse("- FUTURE"),
            ServerLine::Err {
                code: s("FUTURE"),
                text: s("")
            }
        );
        assert_eq!(parse("= bob online"), ServerLine::Data(s("bob online")));
        assert!(parse("+ x").is_completion());
        assert!(parse("- X y").is_completion());
        assert!(!parse("= x").is_completion());
        assert!(!parse("* notice x").is_completion());
    }

    #[test]
    fn events() {
        assert_eq!(
            parse("* hello natter 1"),
            ServerLine::Event(Event::Hello { version: s("1") })
        );
        assert_eq!(
            parse("* notice type help"),
            ServerLine::Event(Event::Notice(s("type help")))
        );
        assert_eq!(
            parse("* msg alice 2026-11-24T19:20:03Z hi  there"),
            ServerLine::Event(Event::Msg {
                from: s("alice"),
                time: s("2026-11-24T19:20:03Z"),
                text: s("hi  there")
            })
        );
        assert_eq!(
            parse("* broadcast bob 2026-11-24T19:20:03Z all"),
            ServerLine::Event(Event::Broadcast {
                from: s("bob"),
                time: s("2026-11-24T19:20:03Z"),
                text: s("all")
            })
        );
        assert_eq!(
            parse("* bye idle"),
            ServerLine::Event(Event::Bye { reason: s("idle") })
        );
        assert_eq!(
            parse("* typing alice"),
            ServerLine::Event(Event::Other {
                kind: s("typing"),
                fields: s("alice")
            })
        );
    }

    #[test]
    fn events_missing_fields_are_unknown() {
        for line in [
            "* msg",
            "* msg alice",
            "* msg alice 2026-11-24T19:20:03Z",
            "* broadcast alice 2026-11-24T19:20:03Z  ",
            "* bye",
            "* hello",
            "* hello other 1",
            "*",
            "* ",
            "-",
            "- ",
        ] {
            assert_eq!(parse(line), ServerLine::Unknown(s(line)), "{line:?}");
        }
    }

    #[test]
    fn odd_lines_are_unknown() {
        for line in ["", " ", "hello", "+ok", "-ERR", "=x", "# comment", "é x"] {
            assert_eq!(parse(line), ServerLine::Unknown(s(line)), "{line:?}");
        }
    }

    #[test]
    fn tabs_separate_fields() {
        assert_eq!(
            parse("*\tmsg\talice\t2026-11-24T19:20:03Z\thi"),
            ServerLine::Event(Event::Msg {
                from: s("alice"),
                time: s("2026-11-24T19:20:03Z"),
                text: s("hi")
            })
        );
    }
}
