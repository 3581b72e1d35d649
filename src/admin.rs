//! The admin protocol that `natterctl` speaks over natterd's Unix socket:
//! one request line per connection, answered like a chat command (data
//! lines `= key=value ...`, then `+ <text>` or `- <CODE> <text>`), then the
//! socket closes. This file owns parsing requests and the shapes of the
//! answers; the reactor (`reactor/admin.rs`) owns the socket and carries
//! requests out, since they touch sessions and the chat.
//!
//! Who may connect is decided by the socket file's mode (0600, the
//! server's user) and the data directory's; there is no password.

use crate::config::Registration;
use crate::protocol::{self, ErrorCode};

/// Longest request line, LF included.
pub const MAX_REQUEST: usize = 64 * 1024;

/// What the operator asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// Accounts whose name contains the pattern (all without one).
    Users { pattern: Option<String> },
    /// Connections now.
    Sessions,
    /// Close a user's session, or a session by id.
    Kick { target: String, reason: String },
    /// A `* notice` to everyone logged in.
    Notice { text: String },
    /// Open or close registration until the next restart.
    Registration(Registration),
    /// Ban an account (`on`), or lift its ban.
    Ban { user: String, on: bool },
    /// Counters and sizes.
    Stats,
    /// Re-read the config file and TLS certificate (as SIGHUP does).
    Reload,
    /// Delete an account.
    DeleteUser { user: String },
    /// Make an account (even while registration is closed).
    AddUser { user: String, password: String },
    /// Set an account's password, no old one asked for.
    SetPassword { user: String, password: String },
    /// A consistent copy of the database at this absolute path.
    Backup { path: std::path::PathBuf },
}

/// Parses one request line (without its LF).
pub fn parse(line: &str) -> Result<AdminCommand, String> {
    let line = line.trim_end_matches('\r');
    let (word, rest) = protocol::split_word(line);
    let rest = rest.trim();
    let one_name = |what: &str| {
        let (name, extra) = protocol::split_word(rest);
        match protocol::canonical_username(name) {
            Some(name) if extra.trim().is_empty() => Ok(name),
            _ => Err(format!("usage: {what} <user>")),
        }
    };
    match word {
        "users" => Ok(AdminCommand::Users {
            pattern: (!rest.is_empty()).then(|| rest.to_lowercase()),
        }),
        "sessions" if rest.is_empty() => Ok(AdminCommand::Sessions),
        "kick" => {
            let (target, reason) = protocol::split_word(rest);
            if target.is_empty() {
                return Err("usage: kick <user|session-id> [reason]".into());
            }
            Ok(AdminCommand::Kick {
                target: target.to_lowercase(),
                reason: reason.trim().to_string(),
            })
        }
        "notice" if !rest.is_empty() => Ok(AdminCommand::Notice {
            text: protocol::relayable(rest),
        }),
        "notice" => Err("usage: notice <text>".into()),
        "registration" => match rest {
            "open" => Ok(AdminCommand::Registration(Registration::Open)),
            "closed" => Ok(AdminCommand::Registration(Registration::Closed)),
            _ => Err("usage: registration open|closed".into()),
        },
        "ban" => one_name("ban").map(|user| AdminCommand::Ban { user, on: true }),
        "unban" => one_name("unban").map(|user| AdminCommand::Ban { user, on: false }),
        "deluser" => one_name("deluser").map(|user| AdminCommand::DeleteUser { user }),
        "adduser" | "setpasswd" => {
            // The password is the rest of the line, as in `register`.
            let (name, password) = protocol::split_word(rest);
            match protocol::canonical_username(name) {
                Some(user) if !password.is_empty() => Ok(if word == "adduser" {
                    AdminCommand::AddUser {
                        user,
                        password: password.to_string(),
                    }
                } else {
                    AdminCommand::SetPassword {
                        user,
                        password: password.to_string(),
                    }
                }),
                _ => Err(format!("usage: {word} <user> <password>")),
            }
        }
        "stats" if rest.is_empty() => Ok(AdminCommand::Stats),
        "backup" if std::path::Path::new(rest).is_absolute() => {
            Ok(AdminCommand::Backup { path: rest.into() })
        }
        "backup" => Err("usage: backup <absolute path of a file that does not exist>".into()),
        "reload" if rest.is_empty() => Ok(AdminCommand::Reload),
        _ => Err(format!(
            "unknown request {word:?}; natterd knows: users, sessions, kick, notice, \
             registration, ban, unban, deluser, adduser, setpasswd, stats, reload, backup"
        )),
    }
}

/// An answer being built: `= key=value ...` lines, then one completion.
#[derive(Debug, Default)]
pub struct Answer {
    bytes: Vec<u8>,
}

impl Answer {
    /// A data line of `key=value` fields. Values never hold a blank or a
    /// control character (names, numbers, times, words), so the line
    /// splits back unambiguously; anything else is replaced by `_`.
    pub fn row(&mut self, fields: &[(&str, &str)]) {
        self.bytes.extend_from_slice(b"= ");
        for (i, (key, value)) in fields.iter().enumerate() {
            if i > 0 {
                self.bytes.push(b' ');
            }
            self.bytes.extend_from_slice(key.as_bytes());
            self.bytes.push(b'=');
            for c in value.chars() {
                let c = if c.is_whitespace() || c.is_control() {
                    '_'
                } else {
                    c
                };
                let mut buf = [0u8; 4];
                self.bytes
                    .extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
        self.bytes.push(b'\n');
    }

    /// Ends with `+ <text>`.
    pub fn ok(mut self, text: &str) -> Vec<u8> {
        self.bytes.extend(protocol::ok(text));
        self.bytes
    }
}

/// `- <CODE> <text>` alone.
pub fn refuse(code: ErrorCode, text: &str) -> Vec<u8> {
    protocol::err(code, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse("kick Alice spamming the room"),
            Ok(AdminCommand::Kick {
                target: "alice".into(),
                reason: "spamming the room".into()
            })
        );
        assert_eq!(
            parse("ban bob"),
            Ok(AdminCommand::Ban {
                user: "bob".into(),
                on: true
            })
        );
        assert_eq!(parse("users"), Ok(AdminCommand::Users { pattern: None }));
        assert!(parse("ban").unwrap_err().contains("usage"));
        assert!(parse("ban a b").unwrap_err().contains("usage"));
        assert!(parse("registration maybe")
            .unwrap_err()
            .contains("open|closed"));
        assert!(parse("notice").unwrap_err().contains("usage"));
        assert_eq!(
            parse("adduser Carol two words"),
            Ok(AdminCommand::AddUser {
                user: "carol".into(),
                password: "two words".into()
            })
        );
        assert!(parse("setpasswd carol").unwrap_err().contains("usage"));
        assert!(parse("adduser bad/name secret123")
            .unwrap_err()
            .contains("usage"));
        assert!(parse("shutdown").unwrap_err().contains("unknown request"));
    }

    #[test]
    fn answer_rows_keep_one_word_per_value() {
        let mut a = Answer::default();
        a.row(&[("user", "alice"), ("reason", "two words\x07")]);
        let text = String::from_utf8(a.ok("1 row")).unwrap();
        assert_eq!(text, "= user=alice reason=two_words_\n+ 1 row\n");
    }
}
