//! Tab completion (protocol commands, slash commands, usernames), and
//! learning the usernames it offers. Pure functions over
//! strings: the line editor glue lives in `interactive`, the set of names in
//! `session`.

use std::collections::BTreeSet;

use natter_client::{Event, ServerLine};
use natter_proto::{command, is_blank, is_valid_username, COMMANDS};

use super::session::Sent;
use super::slash::{slash_command, SLASH_COMMANDS};

/// Every command word natterd v1 knows, sorted (natter-proto's table is in
/// `help` order).
pub fn command_words() -> Vec<&'static str> {
    let mut words: Vec<&str> = COMMANDS.iter().map(|c| c.word).collect();
    words.sort_unstable();
    words.dedup();
    words
}

/// Whether completion offers usernames as the first argument of `word`: a
/// command used once logged in (when names are known) whose usage takes a
/// `<user>` there.
fn completes_user(word: &str) -> bool {
    command(word).is_some_and(|c| !c.before_login && c.takes_user_first())
}

/// The usernames a server line reveals, given the command it answers.
pub fn learn_names(command: Option<&Sent>, line: &ServerLine) -> Vec<String> {
    let found: Vec<&str> = match (line, command) {
        (ServerLine::Event(Event::Msg { from, .. } | Event::Broadcast { from, .. }), _) => {
            vec![from]
        }
        (ServerLine::Data(fields), Some(cmd)) => {
            let f: Vec<&str> = fields.split(is_blank).collect();
            match cmd.word.as_str() {
                // `= <user>`, `= <user> <last-seen>`, `= <user> delivered`
                "whoelse" | "wholast" | "blocked" | "broadcast" => f.into_iter().take(1).collect(),
                // `= <time> <from> <text>`
                "inbox" => f.into_iter().skip(1).take(1).collect(),
                // `= <time> <from> <to> <text>`
                "history" => f.into_iter().skip(1).take(2).collect(),
                _ => vec![],
            }
        }
        // A name the server accepted as a recipient exists.
        (ServerLine::Ok(_), Some(cmd))
            if matches!(cmd.word.as_str(), "send" | "block" | "unblock") =>
        {
            cmd.arg.iter().map(String::as_str).collect()
        }
        _ => vec![],
    };
    found
        .into_iter()
        .filter(|n| is_valid_username(n))
        .map(|n| n.to_ascii_lowercase())
        .collect()
}

/// Completions for the word under the cursor: `(start, candidates)`, where
/// `start` is the byte offset where that word begins. Command words in first
/// position; usernames where a command takes one; the keywords of the
/// `broadcast user ... message` form.
pub fn complete(line: &str, pos: usize, names: &BTreeSet<String>) -> (usize, Vec<String>) {
    let before = line.get(..pos).unwrap_or(line);
    let start = before.rfind(is_blank).map_or(0, |i| i + 1);
    let partial = &before[start..];
    let words: Vec<&str> = before[..start]
        .split(is_blank)
        .filter(|w| !w.is_empty())
        .collect();
    let matching = |options: &mut dyn Iterator<Item = &str>| -> Vec<String> {
        options
            .filter(|o| o.starts_with(&partial.to_ascii_lowercase()))
            .map(str::to_string)
            .collect()
    };
    let Some(command) = words.first().map(|w| w.to_ascii_lowercase()) else {
        if partial.starts_with('/') {
            let slashed: Vec<String> = SLASH_COMMANDS
                .iter()
                .map(|c| format!("/{}", c.name))
                .collect();
            return (start, matching(&mut slashed.iter().map(String::as_str)));
        }
        return (start, matching(&mut command_words().into_iter()));
    };
    let users = || names.iter().map(String::as_str);
    if let Some(name) = command.strip_prefix('/') {
        let takes_user = slash_command(name).is_some_and(|c| c.takes_user);
        let candidates = if takes_user && words.len() == 1 {
            matching(&mut users())
        } else {
            vec![]
        };
        return (start, candidates);
    }
    let candidates = match (command.as_str(), words.len()) {
        (word, 1) if completes_user(word) => matching(&mut users()),
        ("broadcast", 1) => matching(&mut ["message", "user"].into_iter()),
        ("broadcast", _)
            if words[1].eq_ignore_ascii_case("user")
                && !words[2..].iter().any(|w| w.eq_ignore_ascii_case("message")) =>
        {
            let mut options = users().chain(std::iter::once("message"));
            matching(&mut options)
        }
        _ => vec![],
    };
    (start, candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> BTreeSet<String> {
        ["alice", "bob", "bobby"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn first_word_completes_commands() {
        assert_eq!(
            complete("wh", 2, &names()),
            (0, vec!["whoelse".into(), "wholast".into()])
        );
        assert_eq!(
            complete("BL", 2, &names()),
            (0, vec!["block".into(), "blocked".into()])
        );
        assert_eq!(complete("", 0, &names()).1.len(), COMMANDS.len());
        // Names are not offered for login: none are known before it.
        assert_eq!(complete("login a", 7, &names()), (6, vec![]));
        assert_eq!(complete("history b", 9, &names()).1.len(), 2);
        assert_eq!(complete("zz", 2, &names()), (0, vec![]));
    }

    #[test]
    fn recipients_complete_names() {
        assert_eq!(
            complete("send bo", 7, &names()),
            (5, vec!["bob".into(), "bobby".into()])
        );
        assert_eq!(complete("block a", 7, &names()), (6, vec!["alice".into()]));
        // The text of a message is not completed.
        assert_eq!(complete("send bob he", 11, &names()), (9, vec![]));
        assert_eq!(complete("whoelse a", 9, &names()), (8, vec![]));
    }

    #[test]
    fn cursor_in_the_middle_completes_the_word_before_it() {
        assert_eq!(
            complete("send bo hello", 7, &names()),
            (5, vec!["bob".into(), "bobby".into()])
        );
    }

    #[test]
    fn slash_commands_and_their_names_complete() {
        assert_eq!(
            complete("/q", 2, &names()),
            (0, vec!["/query".into(), "/quit".into()])
        );
        assert_eq!(complete("/ms", 3, &names()), (0, vec!["/msg".into()]));
        assert_eq!(
            complete("/query bo", 9, &names()),
            (7, vec!["bob".into(), "bobby".into()])
        );
        assert_eq!(complete("/msg al", 7, &names()), (5, vec!["alice".into()]));
        assert_eq!(complete("/msg bob he", 11, &names()), (9, vec![]));
        assert_eq!(complete("/who a", 6, &names()), (5, vec![]));
    }

    #[test]
    fn broadcast_user_list() {
        assert_eq!(
            complete("broadcast u", 11, &names()),
            (10, vec!["user".into()])
        );
        assert_eq!(
            complete("broadcast user al", 17, &names()),
            (15, vec!["alice".into()])
        );
        assert_eq!(
            complete("broadcast user alice m", 22, &names()),
            (21, vec!["message".into()])
        );
        assert_eq!(
            complete("broadcast user alice message b", 30, &names()),
            (29, vec![])
        );
    }

    #[test]
    fn names_are_learnt_from_events_and_the_right_fields() {
        let t = "2026-11-24T19:20:03Z";
        let cmd = |l: &str| Sent::of(l);
        let msg = natter_client::parse(&format!("* msg carol {t} hi"));
        assert_eq!(learn_names(None, &msg), ["carol"]);
        let data = natter_client::parse("= dave online");
        assert_eq!(learn_names(cmd("wholast 5").as_ref(), &data), ["dave"]);
        let inbox = natter_client::parse(&format!("= {t} erin hello there"));
        assert_eq!(learn_names(cmd("inbox").as_ref(), &inbox), ["erin"]);
        let hist = natter_client::parse(&format!("= {t} frank gina hey"));
        assert_eq!(
            learn_names(cmd("history").as_ref(), &hist),
            ["frank", "gina"]
        );
        let ok = natter_client::parse("+ delivered");
        assert_eq!(learn_names(cmd("send Hank hi").as_ref(), &ok), ["hank"]);
        // The first word of a help line is not a user.
        let help = natter_client::parse("= send <user> <text>");
        assert!(learn_names(cmd("help").as_ref(), &help).is_empty());
        assert!(learn_names(cmd("login ivy pw").as_ref(), &ok).is_empty());
        let bad = natter_client::parse("- NOUSER no such user");
        assert!(learn_names(cmd("send nobody hi").as_ref(), &bad).is_empty());
    }
}
