//! The command table: every command word of protocol v1, its usage lines,
//! whether it is allowed before login, and what it does. The server's parser
//! and `help`, and the client's completion, all read this one table.

/// One command word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// The word, lowercase (command words are case-insensitive on the wire).
    pub word: &'static str,
    /// Its usage lines as `help` shows them, one per form.
    pub usage: &'static [&'static str],
    /// Whether it may be used before logging in.
    pub before_login: bool,
    /// Whether the server closes the connection after answering it.
    pub ends_session: bool,
    /// What it does, in one line.
    pub about: &'static str,
}

impl CommandSpec {
    /// Whether the first argument of some form of this command is a
    /// username (`<user>` or `[<user>]` in its usage), as completion wants
    /// to know.
    pub fn takes_user_first(&self) -> bool {
        self.usage.iter().any(|u| {
            let (_, args) = crate::split_word(u);
            let (first, _) = crate::split_word(args);
            first == "<user>" || first == "[<user>]"
        })
    }
}

/// Every command, in the order `help` lists them.
pub const COMMANDS: &[CommandSpec] = &[
    spec(
        "login",
        &["login <user> <password>"],
        true,
        false,
        "log in to an existing account",
    ),
    spec(
        "register",
        &["register <user> <password>"],
        true,
        false,
        "create an account and log in to it",
    ),
    spec(
        "whoelse",
        &["whoelse"],
        false,
        false,
        "list the other users online now",
    ),
    spec(
        "wholast",
        &["wholast <minutes>"],
        false,
        false,
        "list the users seen in the last <minutes>",
    ),
    spec(
        "send",
        &["send <user> <text>"],
        false,
        false,
        "send a direct message, kept until read",
    ),
    spec(
        "broadcast",
        &[
            "broadcast <text>",
            "broadcast user <user> [<user> ...] message <text>",
        ],
        false,
        false,
        "send a message to everyone online, or to the users listed",
    ),
    spec(
        "inbox",
        &["inbox"],
        false,
        false,
        "show the direct messages received while away",
    ),
    spec(
        "history",
        &["history [<user>] [<count>]"],
        false,
        false,
        "show past direct messages, with one user or all",
    ),
    spec(
        "block",
        &["block <user>"],
        false,
        false,
        "stop a user's messages reaching you",
    ),
    spec(
        "unblock",
        &["unblock <user>"],
        false,
        false,
        "let a blocked user's messages through again",
    ),
    spec(
        "blocked",
        &["blocked"],
        false,
        false,
        "list the users you block",
    ),
    spec(
        "passwd",
        &["passwd <old> <new>"],
        false,
        false,
        "change your password (<old> is one word; <new> is the rest of the line)",
    ),
    spec(
        "ping",
        &["ping"],
        false,
        false,
        "check the connection (answers + pong)",
    ),
    spec("help", &["help"], true, false, "list the commands"),
    spec(
        "logout",
        &["logout"],
        false,
        true,
        "log out and close the connection",
    ),
    spec("quit", &["quit"], true, true, "close the connection"),
];

const fn spec(
    word: &'static str,
    usage: &'static [&'static str],
    before_login: bool,
    ends_session: bool,
    about: &'static str,
) -> CommandSpec {
    CommandSpec {
        word,
        usage,
        before_login,
        ends_session,
        about,
    }
}

/// The command `word` names, in any case; `None` when it is no command.
pub fn command(word: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.word.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_unique_lowercase_and_usages_start_with_them() {
        for (i, c) in COMMANDS.iter().enumerate() {
            assert_eq!(c.word, c.word.to_ascii_lowercase());
            assert!(
                COMMANDS[i + 1..].iter().all(|d| d.word != c.word),
                "{}",
                c.word
            );
            assert!(!c.usage.is_empty() && !c.about.is_empty(), "{}", c.word);
            for u in c.usage {
                assert_eq!(crate::split_word(u).0, c.word, "{u}");
            }
        }
        assert_eq!(COMMANDS.len(), 16);
    }

    #[test]
    fn lookup_is_case_insensitive() {
        assert_eq!(command("SEND").map(|c| c.word), Some("send"));
        assert!(command("sendx").is_none());
        let before: Vec<&str> = COMMANDS
            .iter()
            .filter(|c| c.before_login)
            .map(|c| c.word)
            .collect();
        assert_eq!(before, ["login", "register", "help", "quit"]);
    }

    #[test]
    fn user_arguments_are_read_from_the_usage() {
        let takes: Vec<&str> = COMMANDS
            .iter()
            .filter(|c| c.takes_user_first())
            .map(|c| c.word)
            .collect();
        assert_eq!(
            takes,
            ["login", "register", "send", "history", "block", "unblock"]
        );
    }
}
