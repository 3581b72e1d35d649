//! Turning a server line into the text a person is shown. Pure: the caller
//! passes the time zone and whether colour is wanted, so the same line always
//! shows the same way and tests can pin it down. Nothing here writes anywhere.
//!
//! Replies keep their sigil (`+ delivered`, `- NOUSER ...`, `= bob`): they are
//! already readable, and scripts reading piped output match on them. Events
//! become chat lines: `[19:20] alice: hi` with the time in local time.

use natter_proto::ByeReason;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

use crate::parse::{parse, Event, ServerLine};

/// How lines are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Use ANSI colour and bold. Only on a terminal, never under `NO_COLOR`;
    /// the caller decides.
    pub colour: bool,
    /// The local time zone's offset, for event times. Passed in because
    /// reading it is only sound before the program starts threads.
    pub offset: UtcOffset,
}

impl Style {
    /// No colour, times in UTC: what tests and logs want.
    pub const PLAIN: Style = Style {
        colour: false,
        offset: UtcOffset::UTC,
    };
}

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const MAGENTA: &str = "\x1b[35m";
const CYAN: &str = "\x1b[36m";

impl Style {
    /// `text` wrapped in `codes` when colour is on.
    fn paint(&self, codes: &str, text: &str) -> String {
        if self.colour {
            format!("{codes}{text}{RESET}")
        } else {
            text.to_string()
        }
    }
}

/// Parses and renders one raw server line.
pub fn show(line: &str, style: &Style) -> String {
    render(&parse(line), style)
}

/// Renders a parsed server line as one line of text (no LF).
pub fn render(line: &ServerLine, style: &Style) -> String {
    match line {
        ServerLine::Ok(text) => join(&style.paint(GREEN, "+"), &clean(text)),
        ServerLine::Err { code, text } => join(
            &style.paint(RED, &format!("- {}", clean(code))),
            &clean(text),
        ),
        ServerLine::Data(fields) => join(
            &style.paint(DIM, "="),
            &clean(&local_data_times(fields, style.offset)),
        ),
        ServerLine::Event(event) => render_event(event, style),
        ServerLine::Unknown(raw) => join(&style.paint(YELLOW, "??"), &clean(raw)),
    }
}

fn render_event(event: &Event, style: &Style) -> String {
    let info = |text: &str| join(&style.paint(DIM, "--"), text);
    match event {
        Event::Hello { version } => info(&format!(
            "connected to natter (protocol {})",
            clean(version)
        )),
        Event::Notice(text) => info(&clean(text)),
        Event::Msg { from, time, text } => format!(
            "{} {}: {}",
            style.paint(DIM, &format!("[{}]", local_time(time, style.offset))),
            style.paint(&format!("{BOLD}{CYAN}"), &clean(from)),
            clean(text)
        ),
        Event::Broadcast { from, time, text } => format!(
            "{} {} {}: {}",
            style.paint(DIM, &format!("[{}]", local_time(time, style.offset))),
            style.paint(&format!("{BOLD}{MAGENTA}"), &clean(from)),
            style.paint(DIM, "(broadcast)"),
            clean(text)
        ),
        Event::Bye { reason } => join(
            &style.paint(&format!("{BOLD}{RED}"), "--"),
            &format!(
                "the server closed the connection: {}",
                explain_bye(&clean(reason))
            ),
        ),
        Event::Other { kind, fields } => info(&format!("{} {}", clean(kind), clean(fields))),
    }
}

/// `head text`, or just `head` when there is no text (no trailing blank).
fn join(head: &str, text: &str) -> String {
    if text.is_empty() {
        head.to_string()
    } else {
        format!("{head} {text}")
    }
}

/// What a `* bye` reason means to a person. Unknown reasons are shown as
/// they came, so a newer server's reasons still say something.
pub fn explain_bye(reason: &str) -> String {
    let Some(known) = ByeReason::parse(reason) else {
        // Unknown words are shown as sent, but never with control characters:
        // this text goes to the terminal too.
        return clean(reason);
    };
    let why = match known {
        ByeReason::Idle => "you were idle for too long",
        ByeReason::Timeout => "you did not log in in time",
        ByeReason::Replaced => "you logged in from somewhere else",
        ByeReason::Shutdown => "the server is shutting down",
        ByeReason::Slow => "this client was not reading fast enough",
        ByeReason::Busy => "the server has too many connections",
        ByeReason::Banned => "the server's operator banned this account",
        ByeReason::Kicked => "the server's operator closed this session",
    };
    format!("{why} ({known})")
}

/// A data line with its time shown in local time. Times stand first (`inbox`,
/// `history`) or second (`wholast`); later words are message text and are
/// left exactly as sent, even if they look like a time.
fn local_data_times(fields: &str, offset: UtcOffset) -> String {
    let full = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let mut words = fields.splitn(3, ' ');
    let mut out = Vec::with_capacity(3);
    for _ in 0..2 {
        let Some(word) = words.next() else { break };
        let local = OffsetDateTime::parse(word, &Rfc3339)
            .ok()
            .and_then(|t| t.to_offset(offset).format(&full).ok());
        out.push(local.unwrap_or_else(|| word.to_string()));
    }
    out.extend(words.next().map(str::to_string));
    out.join(" ")
}

/// An RFC 3339 time as local `HH:MM`, or the text as sent when it does not
/// parse: a wrong time must not hide the message.
fn local_time(time: &str, offset: UtcOffset) -> String {
    let hhmm = format_description!("[hour]:[minute]");
    OffsetDateTime::parse(time, &Rfc3339)
        .ok()
        .and_then(|t| t.to_offset(offset).format(&hhmm).ok())
        .unwrap_or_else(|| clean(time))
}

/// Server text with control characters made harmless. natterd never relays
/// them, but whatever is at the other end of the socket must not be able to
/// move the cursor or recolour the terminal. A TAB becomes a space, the way
/// the server itself relays it.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2026-11-24T19:20:03Z";

    fn plain(line: &str) -> String {
        show(line, &Style::PLAIN)
    }

    #[test]
    fn data_line_times_are_local_and_text_is_untouched() {
        let style = Style {
            offset: UtcOffset::from_hms(1, 0, 0).unwrap(),
            ..Style::PLAIN
        };
        // inbox: time first; the text keeps a time-looking word as sent.
        assert_eq!(
            show(&format!("= {T} bob see you at {T}"), &style),
            format!("= 2026-11-24 20:20:03 bob see you at {T}")
        );
        // wholast: time second.
        assert_eq!(
            show(&format!("= bob {T}"), &style),
            "= bob 2026-11-24 20:20:03"
        );
        assert_eq!(show("= bob online", &style), "= bob online");
        assert_eq!(show("= carol", &style), "= carol");
    }

    #[test]
    fn an_unknown_bye_reason_cannot_reach_the_terminal_raw() {
        assert_eq!(
            explain_bye("\u{1b}]52;c;eA==\u{7}"),
            "\u{fffd}]52;c;eA==\u{fffd}"
        );
    }

    #[test]
    fn replies_keep_their_sigil() {
        assert_eq!(plain("+ delivered"), "+ delivered");
        assert_eq!(plain("+"), "+");
        assert_eq!(plain("- NOUSER no such user"), "- NOUSER no such user");
        assert_eq!(plain("- FUTURE"), "- FUTURE");
        assert_eq!(plain("= bob online"), "= bob online");
        assert_eq!(plain("="), "=");
    }

    #[test]
    fn direct_message_is_a_chat_line() {
        assert_eq!(
            plain(&format!("* msg alice {T} hi there")),
            "[19:20] alice: hi there"
        );
    }

    #[test]
    fn broadcast_is_marked() {
        assert_eq!(
            plain(&format!("* broadcast bob {T} hello all")),
            "[19:20] bob (broadcast): hello all"
        );
    }

    #[test]
    fn event_time_is_local() {
        let style = Style {
            colour: false,
            offset: UtcOffset::from_hms(5, 30, 0).expect("offset"),
        };
        assert_eq!(show(&format!("* msg a {T} x"), &style), "[00:50] a: x");
        let west = Style {
            colour: false,
            offset: UtcOffset::from_hms(-8, 0, 0).expect("offset"),
        };
        assert_eq!(show(&format!("* msg a {T} x"), &west), "[11:20] a: x");
    }

    #[test]
    fn bad_time_is_shown_as_sent() {
        assert_eq!(plain("* msg alice yesterday hi"), "[yesterday] alice: hi");
    }

    #[test]
    fn server_events() {
        assert_eq!(
            plain("* hello natter 1"),
            "-- connected to natter (protocol 1)"
        );
        assert_eq!(
            plain("* notice log in with: login <user> <password>"),
            "-- log in with: login <user> <password>"
        );
        assert_eq!(plain("* notice"), "--");
        assert_eq!(
            plain("* bye idle"),
            "-- the server closed the connection: you were idle for too long (idle)"
        );
        assert_eq!(
            plain("* bye replaced"),
            "-- the server closed the connection: you logged in from somewhere else (replaced)"
        );
        assert_eq!(
            plain("* bye meteor"),
            "-- the server closed the connection: meteor"
        );
        assert_eq!(plain("* typing alice"), "-- typing alice");
    }

    #[test]
    fn odd_lines_are_flagged_not_dropped() {
        assert_eq!(plain(""), "??");
        assert_eq!(plain("what"), "?? what");
        assert_eq!(plain("* msg alice"), "?? * msg alice");
        assert_eq!(plain("+ok"), "?? +ok");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let shown = plain(&format!("* msg eve {T} \x1b[2Jgotcha\x07"));
        assert_eq!(shown, "[19:20] eve: \u{fffd}[2Jgotcha\u{fffd}");
        assert_eq!(plain("= a\tb"), "= a b");
        assert_eq!(plain("?\x1b]0;x\x07"), "?? ?\u{fffd}]0;x\u{fffd}");
    }

    #[test]
    fn colour_highlights_sender_and_only_when_asked() {
        let style = Style {
            colour: true,
            offset: UtcOffset::UTC,
        };
        let shown = show(&format!("* msg alice {T} hi"), &style);
        assert!(
            shown.contains(&format!("{BOLD}{CYAN}alice{RESET}")),
            "{shown:?}"
        );
        assert!(shown.ends_with(": hi"));
        assert_eq!(
            show("- NOUSER x", &style),
            format!("{RED}- NOUSER{RESET} x")
        );
        for line in ["+ a", "- B c", "= d", "* bye idle", "x"] {
            assert!(!plain(line).contains('\x1b'), "{line:?}");
        }
    }
}
