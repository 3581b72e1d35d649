//! What happens once before the loop starts, where blocking is fine: open
//! the store, import `--users`, load the chat state from it, and the
//! greeting every connection gets. Nothing here runs on the loop.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use crate::auth;
use crate::commands::{Account, Chat, ChatSettings, Clock, ReadState};
use crate::config::{Config, Registration};
use crate::protocol;
use crate::store::{Store, StoreRequest};

fn other_error(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Opens the store, imports `--users` and loads the chat state from it.
pub fn open(config: &Config) -> io::Result<(Store, Chat)> {
    let mut store = Store::open(&config.data).map_err(|e| other_error(e.to_string()))?;
    store.set_fault_file(config.store_fault_file.clone());
    store.set_retention(config.history_retention());
    if let Some(path) = &config.users {
        import_users(&mut store, path, config)?;
    }
    let snapshot = store
        .load()
        .map_err(|e| other_error(format!("cannot load {}: {e}", store.path().display())))?;
    let mut accounts: HashMap<String, Account> = snapshot
        .users
        .into_iter()
        .map(|(name, user)| {
            let mut account = Account::new(user.hash, user.slot);
            account.unread = snapshot.unread.get(&name).copied().unwrap_or(0);
            account.last_seen = user.last_seen;
            account.read = ReadState::new(user.slot, user.marks);
            account.banned = user.banned;
            (name, account)
        })
        .collect();
    for (blocker, blocked) in snapshot.blocks {
        if let Some(a) = accounts.get_mut(&blocker) {
            a.blocks.insert(blocked);
        }
    }
    // Only its parameters matter: they are the current cost's.
    let current_hash =
        auth::hash_password("natter-dummy-password", config.hash_cost).map_err(other_error)?;
    let chat = Chat::new(ChatSettings::from(config), accounts, current_hash);
    log::info!(
        "{} users loaded from {}",
        chat.user_count(),
        store.path().display()
    );
    Ok((store, chat))
}

/// The lines every connection starts with.
pub fn greeting(config: &Config) -> Vec<u8> {
    let mut out = protocol::hello();
    out.extend(protocol::event(
        "notice welcome to natter; log in with: login <user> <password>",
    ));
    let register = match config.registration {
        Registration::Open => "notice new here? create an account with: register <user> <password>",
        Registration::Closed => {
            "notice registration is closed on this server; ask its operator for an account"
        }
    };
    out.extend(protocol::event(register));
    out.extend(protocol::event("notice type help for every command"));
    out
}

/// Why a `--users` line is skipped, if it is. The rules are `register`'s
/// (a valid name, a password of 8 to 256 bytes, no control characters),
/// plus one a file needs: a password may not end in a blank, which an
/// editor shows no sign of. The reason never quotes the line: it may hold a
/// password, or a name that is no account.
fn users_line_problem(user: &str, password: &str) -> Option<&'static str> {
    if protocol::canonical_username(user).is_none() || password.is_empty() {
        Some("not `<user> <password>` with a valid username")
    } else if protocol::has_forbidden_control(password) {
        Some("the password holds a control character")
    } else if !(protocol::MIN_PASSWORD_LEN..=protocol::MAX_PASSWORD_LEN).contains(&password.len()) {
        Some("the password must be 8 to 256 bytes")
    } else if password.ends_with([' ', '\t']) {
        Some("the password ends in a blank")
    } else {
        None
    }
}

/// Imports `<user> <password>` lines, adding only users that do not exist.
/// A line that breaks the rules ([`users_line_problem`]) is skipped with a
/// warning naming its line number; the others are imported.
fn import_users(store: &mut Store, path: &Path, config: &Config) -> io::Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| other_error(format!("cannot read users file {}: {e}", path.display())))?;
    let now = Clock::now().wall;
    let mut requests = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut skipped = 0usize;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (user, password) = protocol::split_word(line);
        let name = match (
            users_line_problem(user, password),
            protocol::canonical_username(user),
        ) {
            (None, Some(name)) => name,
            (problem, _) => {
                let why = problem.unwrap_or("not a valid username");
                log::warn!("{}:{}: skipped: {why}", path.display(), n + 1);
                skipped += 1;
                continue;
            }
        };
        let exists = store
            .user_exists(&name)
            .map_err(|e| other_error(format!("cannot read database: {e}")))?;
        if exists || !seen.insert(name.clone()) {
            continue;
        }
        let hash = auth::hash_password(password, config.hash_cost).map_err(other_error)?;
        requests.push(StoreRequest::CreateUser {
            name,
            hash,
            created: now,
        });
    }
    let imported = requests.len();
    for result in store.run_batch(&requests) {
        result.map_err(|e| other_error(format!("cannot import users: {e}")))?;
    }
    log::info!(
        "imported {imported} users from {} ({skipped} lines skipped)",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::users_line_problem;

    #[test]
    fn users_lines_follow_the_rules_of_register() {
        assert_eq!(users_line_problem("alice", "long enough"), None);
        assert_eq!(users_line_problem("alice", "tab\tinside"), None);
        for (user, password) in [
            ("alice", "short"),
            ("alice", "trailing blank "),
            ("alice", "trailing tab\t"),
            ("alice", ""),
            ("not/valid", "long enough"),
            ("alice", "bell\u{7} inside"),
        ] {
            assert!(
                users_line_problem(user, password).is_some(),
                "{user:?} {password:?}"
            );
        }
        let long = "x".repeat(257);
        assert!(users_line_problem("alice", &long).is_some());
    }
}
