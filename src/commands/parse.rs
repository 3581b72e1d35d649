//! Turns one framed line into a [`Command`], or into a [`ParseError`] whose
//! wire form is rendered in one place ([`ParseError::reply`]).
//!
//! This is the only place that checks the login state of a command: a
//! member command comes out carrying the member's name, so nothing after
//! parsing asks again. Nothing here has state or touches I/O.

use crate::protocol::{self, canonical_username, err, relayable, split_word, ErrorCode};

use super::{DEFAULT_HISTORY, MAX_HISTORY, MAX_WHOLAST_MINUTES};

/// One parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `login <user> <password>` (only before login).
    Login { user: String, password: String },
    /// `register <user> <password>` (only before login).
    Register { user: String, password: String },
    /// `help`, at any time.
    Help,
    /// `quit`, or `logout` once logged in.
    Quit,
    /// A command only a logged-in user may give, with that user's name.
    Member { me: String, cmd: MemberCommand },
}

impl Command {
    /// Rate tokens it costs: what it may store counts, so a list broadcast
    /// costs one per name listed.
    pub fn rate_cost(&self) -> u32 {
        match self {
            Command::Member {
                cmd: MemberCommand::BroadcastTo { users, .. },
                ..
            } => u32::try_from(users.len()).unwrap_or(u32::MAX).max(1),
            _ => 1,
        }
    }
}

/// The commands of a logged-in user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberCommand {
    /// `whoelse`
    Whoelse,
    /// `wholast <minutes>`
    Wholast { minutes: u32 },
    /// `send <user> <text>`
    Send { to: String, text: String },
    /// `broadcast [message] <text>`
    Broadcast { text: String },
    /// `broadcast user <u1> ... message <text>`
    BroadcastTo { users: Vec<String>, text: String },
    /// `inbox`
    Inbox,
    /// `history [<user>] [<count>]`
    History { with: Option<String>, count: u32 },
    /// `block <user>`
    Block { user: String },
    /// `unblock <user>`
    Unblock { user: String },
    /// `blocked`
    Blocked,
    /// `ping`
    Ping,
    /// `passwd <old> <new>`: the old password is the first word, the new
    /// one the rest of the line (as for `register`).
    Passwd { old: String, new: String },
}

/// Why a line is not a command. Rendered into its `- CODE text` line by
/// [`ParseError::reply`] and nowhere else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Longer than the line limit (LF included); discarded.
    TooLong { max_line: usize },
    /// Not valid UTF-8.
    NotUtf8,
    /// Holds a control character other than TAB.
    ControlCharacter,
    /// Not a command word; the word as typed, cut to 32 characters.
    UnknownCommand(String),
    /// A member command before login.
    NotLoggedIn,
    /// `login` or `register` once logged in.
    AlreadyLoggedIn,
    /// Wrong arguments for this command word.
    Usage(&'static str),
    /// An argument that should be a username is not a valid one.
    BadUsername,
    /// `wholast` without a count in range.
    WholastRange,
    /// `history` with a bad count or extra words.
    HistoryRange,
}

impl ParseError {
    /// The complete failure line.
    pub fn reply(&self) -> Vec<u8> {
        match self {
            ParseError::TooLong { max_line } => err(
                ErrorCode::TooLong,
                &format!("line longer than {max_line} bytes discarded"),
            ),
            ParseError::NotUtf8 => err(ErrorCode::BadUtf8, "line is not valid UTF-8"),
            ParseError::ControlCharacter => {
                err(ErrorCode::BadText, "control characters are not allowed")
            }
            ParseError::UnknownCommand(word) => err(
                ErrorCode::BadCmd,
                &format!("unknown command '{word}' (try help)"),
            ),
            ParseError::NotLoggedIn => {
                err(ErrorCode::NoAuth, "log in first: login <user> <password>")
            }
            ParseError::AlreadyLoggedIn => err(ErrorCode::Already, "already logged in"),
            ParseError::Usage(word) => {
                let usage = protocol::command(word).map_or(&[][..], |spec| spec.usage);
                err(ErrorCode::BadArg, &format!("usage: {}", usage.join(" | ")))
            }
            ParseError::BadUsername => err(ErrorCode::BadArg, "not a valid username"),
            ParseError::WholastRange => err(
                ErrorCode::BadArg,
                &format!("usage: wholast <minutes>, minutes from 1 to {MAX_WHOLAST_MINUTES}"),
            ),
            ParseError::HistoryRange => err(
                ErrorCode::BadArg,
                &format!("usage: history [<user>] [<count>], count from 1 to {MAX_HISTORY}"),
            ),
        }
    }
}

/// A framed line as it came off the wire: `Ok(None)` for a blank line (not
/// a command, no reply), else the command or why it is not one. `user` is
/// the session's logged-in name, if any.
pub fn parse_line(line: &[u8], user: Option<&str>) -> Result<Option<Command>, ParseError> {
    if line.iter().all(|b| *b == b' ' || *b == b'\t') {
        return Ok(None);
    }
    let text = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
    if crate::protocol::has_forbidden_control(text) {
        return Err(ParseError::ControlCharacter);
    }
    parse(text, user).map(Some)
}

/// Parses a line that has already passed the UTF-8 and control-character
/// checks. `user` (the logged-in name, if any) decides between
/// `NOAUTH`/`ALREADY` and the command.
pub fn parse(line: &str, user: Option<&str>) -> Result<Command, ParseError> {
    let (word, rest) = split_word(line);
    let Some(spec) = protocol::command(word) else {
        let shown = word.to_ascii_lowercase().chars().take(32).collect();
        return Err(ParseError::UnknownCommand(shown));
    };
    let word = spec.word;
    let me = match (user, spec.before_login) {
        (None, false) => return Err(ParseError::NotLoggedIn),
        (Some(_), true) if word == "login" || word == "register" => {
            return Err(ParseError::AlreadyLoggedIn)
        }
        (Some(me), false) => me,
        (_, true) => return guest_command(word, rest),
    };
    let cmd = member_command(word, rest)?;
    Ok(match cmd {
        // `logout` is the member's `quit`.
        None => Command::Quit,
        Some(cmd) => Command::Member {
            me: me.to_string(),
            cmd,
        },
    })
}

/// `login`, `register`, `help` and `quit`, which a stranger may give.
fn guest_command(word: &'static str, rest: &str) -> Result<Command, ParseError> {
    match word {
        "login" | "register" => {
            let (user, password) = split_word(rest);
            if user.is_empty() || password.is_empty() {
                return Err(ParseError::Usage(word));
            }
            let user = username_arg(user)?;
            let password = password.to_string();
            if word == "login" {
                Ok(Command::Login { user, password })
            } else {
                Ok(Command::Register { user, password })
            }
        }
        "help" => Ok(Command::Help),
        _ => Ok(Command::Quit),
    }
}

/// A member command; `None` for `logout`.
fn member_command(word: &'static str, rest: &str) -> Result<Option<MemberCommand>, ParseError> {
    let no_args = |cmd: MemberCommand| {
        if rest.is_empty() {
            Ok(Some(cmd))
        } else {
            Err(ParseError::Usage(word))
        }
    };
    match word {
        "logout" => Ok(None),
        "whoelse" => no_args(MemberCommand::Whoelse),
        "blocked" => no_args(MemberCommand::Blocked),
        "inbox" => no_args(MemberCommand::Inbox),
        "ping" => no_args(MemberCommand::Ping),
        "wholast" => {
            let (n, extra) = split_word(rest);
            match n.parse::<u32>() {
                Ok(minutes) if extra.is_empty() && (1..=MAX_WHOLAST_MINUTES).contains(&minutes) => {
                    Ok(Some(MemberCommand::Wholast { minutes }))
                }
                _ => Err(ParseError::WholastRange),
            }
        }
        "send" => {
            let (to, text) = split_word(rest);
            if to.is_empty() || text.is_empty() {
                return Err(ParseError::Usage(word));
            }
            Ok(Some(MemberCommand::Send {
                to: username_arg(to)?,
                text: relayable(text),
            }))
        }
        "passwd" => {
            let (old, new) = split_word(rest);
            if old.is_empty() || new.is_empty() {
                return Err(ParseError::Usage(word));
            }
            Ok(Some(MemberCommand::Passwd {
                old: old.to_string(),
                new: new.to_string(),
            }))
        }
        "broadcast" => parse_broadcast(rest).map(Some),
        "history" => parse_history(rest).map(Some),
        "block" | "unblock" => {
            let (user, extra) = split_word(rest);
            if user.is_empty() || !extra.is_empty() {
                return Err(ParseError::Usage(word));
            }
            let user = username_arg(user)?;
            if word == "block" {
                Ok(Some(MemberCommand::Block { user }))
            } else {
                Ok(Some(MemberCommand::Unblock { user }))
            }
        }
        _ => Err(ParseError::Usage(word)),
    }
}

fn username_arg(raw: &str) -> Result<String, ParseError> {
    canonical_username(raw).ok_or(ParseError::BadUsername)
}

/// `broadcast <text>`, `broadcast message <text>` or
/// `broadcast user <u1> ... message <text>`.
fn parse_broadcast(rest: &str) -> Result<MemberCommand, ParseError> {
    let usage = ParseError::Usage("broadcast");
    let (first, after_first) = split_word(rest);
    match first.to_ascii_lowercase().as_str() {
        "" => Err(usage),
        "message" if after_first.is_empty() => Err(usage),
        "message" => Ok(MemberCommand::Broadcast {
            text: relayable(after_first),
        }),
        "user" => {
            let mut users = Vec::new();
            let mut remaining = after_first;
            loop {
                let (word, after) = split_word(remaining);
                if word.is_empty() {
                    return Err(usage);
                }
                if word.eq_ignore_ascii_case("message") {
                    if users.is_empty() || after.is_empty() {
                        return Err(usage);
                    }
                    return Ok(MemberCommand::BroadcastTo {
                        users,
                        text: relayable(after),
                    });
                }
                users.push(username_arg(word)?);
                remaining = after;
            }
        }
        _ => Ok(MemberCommand::Broadcast {
            text: relayable(rest),
        }),
    }
}

fn parse_history(rest: &str) -> Result<MemberCommand, ParseError> {
    let (a, after_a) = split_word(rest);
    let (b, extra) = split_word(after_a);
    if !extra.is_empty() {
        return Err(ParseError::HistoryRange);
    }
    let count_of = |s: &str| match s.parse::<u32>() {
        Ok(n) if (1..=MAX_HISTORY).contains(&n) => Ok(n),
        _ => Err(ParseError::HistoryRange),
    };
    let starts_with_digit = |s: &str| s.starts_with(|c: char| c.is_ascii_digit());
    match (a, b) {
        ("", _) => Ok(MemberCommand::History {
            with: None,
            count: DEFAULT_HISTORY,
        }),
        (n, "") if starts_with_digit(n) => Ok(MemberCommand::History {
            with: None,
            count: count_of(n)?,
        }),
        (user, n) => Ok(MemberCommand::History {
            with: Some(username_arg(user)?),
            count: if n.is_empty() {
                DEFAULT_HISTORY
            } else {
                count_of(n)?
            },
        }),
    }
}
