//! Slash commands, in the style of irssi: what a typed line means, given the
//! conversation (query) the person is in. Pure: it returns what to do and
//! the protocol line to send, and the table `/help` and Tab completion use.
//!
//! A line without a slash is sent as typed, so every protocol command keeps
//! working, except inside a query, where it is a message to that person. A
//! line starting with `//` sends the rest, slash included, the same way.

use natter_proto::{is_valid_username, split_word};

/// One slash command: its name, its arguments, and what it does.
pub struct SlashCommand {
    /// The name without the slash.
    pub name: &'static str,
    /// Its arguments as `/help` shows them.
    pub args: &'static str,
    /// What it does, in one line.
    pub about: &'static str,
    /// Whether its first argument is a username (for completion).
    pub takes_user: bool,
}

const fn slash(
    name: &'static str,
    args: &'static str,
    about: &'static str,
    takes_user: bool,
) -> SlashCommand {
    SlashCommand {
        name,
        args,
        about,
        takes_user,
    }
}

/// Every slash command, in the order `/help` lists them.
pub const SLASH_COMMANDS: &[SlashCommand] = &[
    slash("msg", "<user> <text>", "send one message to <user>", true),
    slash(
        "query",
        "[<user>]",
        "talk to <user>: plain lines go to them (alone: stop)",
        true,
    ),
    slash("close", "", "stop talking to the query's user", false),
    slash("who", "", "who else is online", false),
    slash(
        "last",
        "[<minutes>]",
        "who was online in the last <minutes> (default 60)",
        false,
    ),
    slash(
        "inbox",
        "",
        "read the messages that came while you were away",
        false,
    ),
    slash(
        "history",
        "[<user>] [<n>]",
        "the last <n> messages (with <user>, or the query's)",
        true,
    ),
    slash(
        "broadcast",
        "<text>",
        "send <text> to everyone online",
        false,
    ),
    slash("block", "<user>", "stop messages from <user>", true),
    slash(
        "unblock",
        "<user>",
        "accept messages from <user> again",
        true,
    ),
    slash("blocked", "", "the users you block", false),
    slash("help", "", "this list", false),
    slash("quit", "", "log out and leave (also Ctrl-D)", false),
];

/// The slash command called `name`, if there is one.
pub fn slash_command(name: &str) -> Option<&'static SlashCommand> {
    SLASH_COMMANDS
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(name))
}

/// `/wholast` without minutes: the last hour.
const DEFAULT_LAST_MINUTES: &str = "60";

/// What a typed line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this protocol line.
    Send(String),
    /// Talk to this user from now on; `None` ends the query.
    Query(Option<String>),
    /// Show the help table.
    Help,
    /// Log out and leave.
    Quit,
    /// A blank line: nothing.
    Nothing,
    /// A mistake, explained; nothing is sent.
    Usage(String),
}

/// What `line` means with `query` as the current conversation.
pub fn interpret(line: &str, query: Option<&str>) -> Action {
    if line.trim().is_empty() {
        return Action::Nothing;
    }
    let plain = |text: &str| match query {
        Some(user) => Action::Send(format!("send {user} {text}")),
        None => Action::Send(text.to_string()),
    };
    if let Some(escaped) = line.strip_prefix("//") {
        return plain(&format!("/{escaped}"));
    }
    let Some(slashed) = line.strip_prefix('/') else {
        return plain(line);
    };
    let (name, rest) = split_word(slashed);
    let Some(cmd) = slash_command(name) else {
        return Action::Usage(format!("unknown command /{name} (/help lists them)"));
    };
    let (first, after) = split_word(rest);
    let usage = || Action::Usage(format!("usage: /{} {}", cmd.name, cmd.args));
    let user_then = |f: &dyn Fn(&str) -> Action| {
        if is_valid_username(first) {
            f(first)
        } else if first.is_empty() {
            usage()
        } else {
            Action::Usage(format!("{first} is not a valid username"))
        }
    };
    match cmd.name {
        "msg" if after.is_empty() => usage(),
        "msg" => user_then(&|user| Action::Send(format!("send {user} {after}"))),
        "query" if first.is_empty() => Action::Query(None),
        "query" => user_then(&|user| Action::Query(Some(user.to_ascii_lowercase()))),
        "close" => Action::Query(None),
        "who" => Action::Send("whoelse".into()),
        "last" if first.is_empty() => Action::Send(format!("wholast {DEFAULT_LAST_MINUTES}")),
        "last" => Action::Send(format!("wholast {first}")),
        "inbox" => Action::Send("inbox".into()),
        "history" => {
            let starts_with_count = first.starts_with(|c: char| c.is_ascii_digit());
            match (query, first.is_empty() || starts_with_count) {
                (Some(user), true) => {
                    Action::Send(format!("history {user} {rest}").trim_end().to_string())
                }
                _ => Action::Send(format!("history {rest}").trim_end().to_string()),
            }
        }
        "broadcast" if rest.is_empty() => usage(),
        "broadcast" => Action::Send(format!("broadcast message {rest}")),
        "block" | "unblock" => user_then(&|user| Action::Send(format!("{} {user}", cmd.name))),
        "blocked" => Action::Send("blocked".into()),
        "help" => Action::Help,
        "quit" => Action::Quit,
        _ => usage(),
    }
}

/// The prompt: `alice> `, or `alice→bob> ` in a query.
pub fn prompt(user: &str, query: Option<&str>) -> String {
    match query {
        Some(other) => format!("{user}→{other}> "),
        None => format!("{user}> "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(line: &str) -> Action {
        Action::Send(line.to_string())
    }

    #[test]
    fn plain_lines_are_protocol_commands_outside_a_query() {
        assert_eq!(interpret("whoelse", None), send("whoelse"));
        assert_eq!(interpret("send bob hi", None), send("send bob hi"));
        assert_eq!(interpret("   ", None), Action::Nothing);
        assert_eq!(interpret("//etc/passwd", None), send("/etc/passwd"));
    }

    #[test]
    fn plain_lines_go_to_the_query() {
        assert_eq!(
            interpret("hi there", Some("bob")),
            send("send bob hi there")
        );
        assert_eq!(interpret("//shrug", Some("bob")), send("send bob /shrug"));
        // Slash commands still work inside a query.
        assert_eq!(interpret("/who", Some("bob")), send("whoelse"));
    }

    #[test]
    fn query_opens_and_closes() {
        assert_eq!(
            interpret("/query Bob", None),
            Action::Query(Some("bob".into()))
        );
        assert_eq!(interpret("/query", Some("bob")), Action::Query(None));
        assert_eq!(interpret("/CLOSE", Some("bob")), Action::Query(None));
        assert!(matches!(interpret("/query 9x", None), Action::Usage(_)));
    }

    #[test]
    fn commands_translate_to_the_protocol() {
        assert_eq!(
            interpret("/msg bob see  you", None),
            send("send bob see  you")
        );
        assert!(matches!(interpret("/msg bob", None), Action::Usage(_)));
        assert!(matches!(interpret("/msg", None), Action::Usage(_)));
        assert_eq!(interpret("/last", None), send("wholast 60"));
        assert_eq!(interpret("/last 30", None), send("wholast 30"));
        assert_eq!(interpret("/inbox", None), send("inbox"));
        assert_eq!(interpret("/history", None), send("history"));
        assert_eq!(interpret("/history carol 5", None), send("history carol 5"));
        assert_eq!(interpret("/history", Some("bob")), send("history bob"));
        assert_eq!(interpret("/history 5", Some("bob")), send("history bob 5"));
        assert_eq!(
            interpret("/history carol", Some("bob")),
            send("history carol")
        );
        assert_eq!(interpret("/block eve", None), send("block eve"));
        assert_eq!(interpret("/unblock eve", None), send("unblock eve"));
        assert_eq!(
            interpret("/broadcast user x", None),
            send("broadcast message user x")
        );
        assert_eq!(interpret("/help", None), Action::Help);
        assert_eq!(interpret("/quit", Some("bob")), Action::Quit);
        assert!(matches!(interpret("/nope", None), Action::Usage(m) if m.contains("/help")));
    }

    #[test]
    fn prompt_shows_the_query() {
        assert_eq!(prompt("alice", None), "alice> ");
        assert_eq!(prompt("alice", Some("bob")), "alice→bob> ");
    }

    #[test]
    fn every_command_is_interpreted() {
        for cmd in SLASH_COMMANDS {
            let line = format!("/{} bob 5 text", cmd.name);
            assert!(
                !matches!(interpret(&line, None), Action::Usage(ref m) if m.starts_with("unknown")),
                "/{}",
                cmd.name
            );
        }
    }
}
