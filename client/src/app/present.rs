//! How interactive mode lays out what the server sends, for a person rather
//! than a script: inbox and history as chat lines with a day separator when
//! the date changes, the person's own messages echoed into the conversation,
//! `wholast` and `help` as small tables. Pure: lines (and the command they
//! answer) in, text out; the caller prints it. Piped mode does not use this:
//! scripts get the protocol's lines as they are.

use natter_client::{render, Event, ServerLine, Style};
use natter_proto::{command, split_word};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use super::screen::width;
use super::session::Sent;
use super::slash::SLASH_COMMANDS;

/// The state of one reply being laid out.
pub struct Presenter {
    style: Style,
    /// Who is logged in, for echoing their own messages.
    user: String,
    /// Data lines of a reply shown as a whole (a table), held until its
    /// completion.
    held: Vec<String>,
    /// The day of the last chat line shown in the current inbox or history
    /// reply.
    last_day: Option<Date>,
}

impl Presenter {
    /// A presenter for `user`'s session.
    pub fn new(style: Style, user: &str) -> Presenter {
        Presenter {
            style,
            user: user.to_string(),
            held: Vec::new(),
            last_day: None,
        }
    }

    /// The lines to show for one server line, answering `cmd` (if it is a
    /// reply); `now` dates the echo of a sent message and tells which day is
    /// today.
    pub fn show(
        &mut self,
        line: &ServerLine,
        cmd: Option<&Sent>,
        now: OffsetDateTime,
    ) -> Vec<String> {
        let word = cmd.map_or("", |c| c.word.as_str());
        match line {
            ServerLine::Data(fields) => match word {
                "inbox" => {
                    let (time, rest) = split_word(fields);
                    let (from, text) = split_word(rest);
                    self.chat_row(time, from, text, now)
                }
                "history" => {
                    let (time, rest) = split_word(fields);
                    let (from, rest) = split_word(rest);
                    let (to, text) = split_word(rest);
                    self.chat_row(time, &format!("{from}→{to}"), text, now)
                }
                "wholast" | "help" => {
                    self.held.push(fields.clone());
                    vec![]
                }
                _ => vec![render(line, &self.style)],
            },
            ServerLine::Ok(_) | ServerLine::Err { .. } => {
                let held = std::mem::take(&mut self.held);
                self.last_day = None;
                let mut out = match word {
                    "wholast" => wholast_table(&held, &self.style),
                    "help" => help_table(&held),
                    _ => vec![],
                };
                match (line, cmd.and_then(Sent::message)) {
                    (ServerLine::Ok(text), Some((to, message))) => {
                        let echo =
                            chat_line(&format!("{}→{to}", self.user), &rfc3339(now), message);
                        let mut echo = render(&echo, &self.style);
                        if text.starts_with("stored") {
                            echo.push_str(&format!("  ({to} is offline: stored)"));
                        }
                        out.push(echo);
                    }
                    _ => out.push(render(line, &self.style)),
                }
                out
            }
            _ => vec![render(line, &self.style)],
        }
    }

    /// One inbox or history row as a chat line, after a day separator when
    /// its day differs from the previous row's (or, for the first row, from
    /// today).
    fn chat_row(&mut self, time: &str, from: &str, text: &str, now: OffsetDateTime) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(at) = OffsetDateTime::parse(time, &Rfc3339) {
            let day = at.to_offset(self.style.offset).date();
            let previous = self
                .last_day
                .unwrap_or_else(|| now.to_offset(self.style.offset).date());
            if day != previous {
                out.push(day_separator(day));
            }
            self.last_day = Some(day);
        }
        out.push(render(&chat_line(from, time, text), &self.style));
        out
    }
}

/// Whether a line should ring the bell: a direct message to this person.
pub fn rings(line: &ServerLine) -> bool {
    matches!(line, ServerLine::Event(Event::Msg { .. }))
}

/// A chat line as the display renders a direct message.
fn chat_line(from: &str, time: &str, text: &str) -> ServerLine {
    ServerLine::Event(Event::Msg {
        from: from.to_string(),
        time: time.to_string(),
        text: text.to_string(),
    })
}

fn rfc3339(now: OffsetDateTime) -> String {
    now.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// `-- Tuesday 24 November 2026`.
fn day_separator(day: Date) -> String {
    let long = format_description!("[weekday] [day padding:none] [month repr:long] [year]");
    format!(
        "-- {}",
        day.format(&long).unwrap_or_else(|_| day.to_string())
    )
}

/// Rows of cells as aligned columns, two spaces apart, no trailing blanks.
fn table(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| width(c))
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(widths[i] - width(cell) + 2));
                }
            }
            line
        })
        .collect()
}

/// `= <user> online|<last-seen>` rows as a table with local times.
fn wholast_table(rows: &[String], style: &Style) -> Vec<String> {
    let stamp = format_description!("[year]-[month]-[day] [hour]:[minute]");
    if rows.is_empty() {
        return vec![];
    }
    let mut cells = vec![vec!["user".to_string(), "last seen".to_string()]];
    for row in rows {
        let (user, seen) = split_word(row);
        cells.push(vec![
            natter_client::display::clean(user),
            OffsetDateTime::parse(seen, &Rfc3339)
                .ok()
                .and_then(|t| t.to_offset(style.offset).format(&stamp).ok())
                .unwrap_or_else(|| natter_client::display::clean(seen)),
        ]);
    }
    table(&cells)
}

/// The widest usage `help` puts a description beside; a longer one gets
/// its description on the next line, so one long form does not push every
/// description off an 80-column screen.
const HELP_USAGE_WIDTH: usize = 28;

/// `= <usage>` rows with each command's description beside it (or, for a
/// long usage, below it), all descriptions in one column.
fn help_table(rows: &[String]) -> Vec<String> {
    let column = HELP_USAGE_WIDTH + 2;
    let mut out = Vec::new();
    for usage in rows {
        let (word, _) = split_word(usage);
        let about = command(word).map_or("", |c| c.about);
        let usage = natter_client::display::clean(usage);
        let used = width(&usage);
        if used > HELP_USAGE_WIDTH {
            out.push(usage);
            out.push(format!("{}{about}", " ".repeat(column)));
        } else {
            out.push(format!("{usage}{}{about}", " ".repeat(column - used)));
        }
    }
    out.into_iter().map(|l| l.trim_end().to_string()).collect()
}

/// The `/help` table: every slash command with what it does, then how plain
/// lines and keys work.
pub fn slash_help() -> Vec<String> {
    let cells: Vec<Vec<String>> = SLASH_COMMANDS
        .iter()
        .map(|c| {
            let usage = format!("/{} {}", c.name, c.args);
            vec![usage.trim_end().to_string(), c.about.to_string()]
        })
        .collect();
    let mut out = table(&cells);
    out.extend(
        [
            "A line without a slash is a message in a query, else a protocol command",
            "(type help for those). Tab completes commands and names; Ctrl-C clears",
            "the line; Ctrl-D on an empty line leaves.",
        ]
        .map(String::from),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-24 21:00 UTC);

    fn lines(cmd: &str, input: &[&str]) -> Vec<String> {
        let mut p = Presenter::new(Style::PLAIN, "alice");
        let sent = Sent::of(cmd);
        input
            .iter()
            .flat_map(|l| p.show(&natter_client::parse(l), sent.as_ref(), NOW))
            .collect()
    }

    #[test]
    fn inbox_rows_are_chat_lines_with_day_separators() {
        let got = lines(
            "inbox",
            &[
                "= 2026-11-23T23:50:00Z bob late night",
                "= 2026-11-24T08:00:00Z bob good morning",
                "= 2026-11-24T09:00:00Z carol hi",
                "+ 3 unread",
            ],
        );
        assert_eq!(
            got,
            [
                "-- Monday 23 November 2026",
                "[23:50] bob: late night",
                "-- Tuesday 24 November 2026",
                "[08:00] bob: good morning",
                "[09:00] carol: hi",
                "+ 3 unread",
            ]
        );
        // Today's messages need no separator.
        let today = lines("inbox", &["= 2026-11-24T20:00:00Z bob hi", "+ 1 unread"]);
        assert_eq!(today, ["[20:00] bob: hi", "+ 1 unread"]);
    }

    #[test]
    fn history_rows_show_both_ends() {
        let got = lines(
            "history bob",
            &["= 2026-11-24T19:20:03Z alice bob hi  there", "+ 1 messages"],
        );
        assert_eq!(got, ["[19:20] alice→bob: hi  there", "+ 1 messages"]);
    }

    #[test]
    fn own_messages_are_echoed_into_the_conversation() {
        assert_eq!(
            lines("send bob hi", &["+ delivered"]),
            ["[21:00] alice→bob: hi"]
        );
        assert_eq!(
            lines("send bob hi", &["+ stored"]),
            ["[21:00] alice→bob: hi  (bob is offline: stored)"]
        );
        assert_eq!(
            lines("send nobody hi", &["- NOUSER no such user nobody"]),
            ["- NOUSER no such user nobody"]
        );
    }

    #[test]
    fn wholast_is_a_table() {
        let got = lines(
            "wholast 60",
            &[
                "= bob online",
                "= carolyn 2026-11-24T19:20:03Z",
                "+ 2 users",
            ],
        );
        assert_eq!(
            got,
            [
                "user     last seen",
                "bob      online",
                "carolyn  2026-11-24 19:20",
                "+ 2 users",
            ]
        );
        assert_eq!(lines("wholast 5", &["+ 0 users"]), ["+ 0 users"]);
    }

    #[test]
    fn help_lists_each_command_with_what_it_does() {
        let long = "broadcast user <user> [<user> ...] message <text>";
        let got = lines(
            "help",
            &[
                "= whoelse",
                &format!("= {long}"),
                "= send <user> <text>",
                "+ commands",
            ],
        );
        let column = " ".repeat(HELP_USAGE_WIDTH + 2);
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(
            got[0],
            format!("whoelse{}list the other users online now", &column[7..])
        );
        // A long usage gets its description below, in the same column.
        assert_eq!(got[1], long);
        assert!(
            got[2].starts_with(&column) && got[2].len() > column.len(),
            "{got:?}"
        );
        assert!(
            got[3].starts_with(&format!("send <user> <text>{}", &column[18..])),
            "{got:?}"
        );
        assert_eq!(got[4], "+ commands");
        let help = slash_help();
        assert!(help.iter().any(|l| l.starts_with("/query [<user>]")));
        assert!(help.iter().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn other_lines_are_shown_as_the_display_renders_them() {
        assert_eq!(
            lines("whoelse", &["= bob", "+ 1 online"]),
            ["= bob", "+ 1 online"]
        );
        assert!(rings(&natter_client::parse(
            "* msg bob 2026-11-24T19:20:03Z hi"
        )));
        assert!(!rings(&natter_client::parse(
            "* broadcast bob 2026-11-24T19:20:03Z hi"
        )));
    }
}
