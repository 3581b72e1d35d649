//! What happens once before the loop starts, where blocking is fine: check
//! the data directory, bind the listeners, open the store, import
//! `--users`, load the chat state from it, the start-up log line, and the
//! greeting every connection gets. Nothing here runs on the loop.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

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
    let mut store =
        Store::open_at(&config.data, &config.store).map_err(|e| other_error(e.to_string()))?;
    store.set_fault_file(config.store_fault_file.clone());
    store.set_retention(config.history_retention());
    if let Some(path) = &config.users {
        import_users(&mut store, path, config)?;
    }
    let snapshot = store
        .load()
        .map_err(|e| other_error(format!("cannot load {}: {e}", store.describe())))?;
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
        store.describe()
    );
    Ok((store, chat))
}

/// The listen backlog natterd asks for: connections the kernel completes
/// and holds while the loop has not accepted them yet. std's `bind` asks
/// for 128, which a burst of clients connecting at once overflows (the rest
/// wait for a SYN retransmission, a second or more). The kernel caps it at
/// `net.core.somaxconn` (4096 by default since Linux 5.4).
pub const LISTEN_BACKLOG: i32 = 1024;

/// The backlog the kernel grants: [`LISTEN_BACKLOG`] or the system maximum
/// (`/proc/sys/net/core/somaxconn`) if that is lower.
pub fn listen_backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|max| *max > 0)
        .map_or(LISTEN_BACKLOG, |max| max.min(LISTEN_BACKLOG))
}

/// A listening socket on `addr` with a backlog of [`LISTEN_BACKLOG`]
/// (`SO_REUSEADDR` set, as std sets it, so a restart can bind at once while
/// old connections linger in TIME_WAIT).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Refuses a `--data` path that exists but is not a directory, before
/// anything else tries to create files under it (with a message that says
/// so, rather than the "File exists" creating the directory would give).
pub fn check_data_dir(data: &Path) -> Result<(), String> {
    match std::fs::metadata(data) {
        Ok(meta) if !meta.is_dir() => Err(format!(
            "data directory {} is not a directory",
            data.display()
        )),
        _ => Ok(()),
    }
}

/// The data directory as an absolute path (for the log: a relative one
/// depends on where natterd was started).
pub fn absolute(data: &Path) -> PathBuf {
    std::fs::canonicalize(data)
        .or_else(|_| std::env::current_dir().map(|cwd| cwd.join(data)))
        .unwrap_or_else(|_| data.to_path_buf())
}

/// The start-up log line: version, where it listens, the data directory,
/// registration and the main limits, so that the log of a run says what
/// that run was doing.
pub fn banner(config: &Config, plain: Option<SocketAddr>, tls: Option<SocketAddr>) -> String {
    let mut listening = Vec::new();
    if let Some(addr) = plain {
        listening.push(format!("{addr} (plain)"));
    }
    if let Some(addr) = tls {
        listening.push(format!("{addr} (tls)"));
    }
    let registration = match config.registration {
        Registration::Open => "open",
        Registration::Closed => "closed",
    };
    let rate = match config.rate {
        r if r > 0.0 => format!("{r}/s burst {}", config.burst),
        _ => "off".to_string(),
    };
    let config_file = config
        .config_file
        .as_ref()
        .map(|p| format!("; config {}", absolute(p).display()))
        .unwrap_or_default();
    format!(
        "natterd {} starting: listening on {}; data {}; registration {registration}; \
         max-clients {}, max-unauthenticated {}, max-per-ip {}, max-line {}, max-outbuf {}, \
         max-output-total {}, max-inbox {}, rate {rate}, idle-timeout {}s, login-timeout {}s, \
         listen backlog {}{config_file}",
        env!("CARGO_PKG_VERSION"),
        listening.join(" and "),
        absolute(&config.data).display(),
        config.max_clients,
        config.max_unauthenticated,
        config.max_per_ip,
        config.max_line,
        config.max_outbuf,
        config.output_budget(),
        config.max_inbox,
        config.idle_timeout,
        config.login_timeout,
        listen_backlog(),
    )
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
    use super::*;

    /// The backlog the kernel holds for a listening socket, from
    /// `TCP_INFO` (for a listener Linux reports it in `tcpi_sacked`).
    fn backlog_of(listener: &TcpListener) -> u32 {
        use std::os::fd::AsRawFd;
        // SAFETY: an all-zero tcp_info is valid; getsockopt writes at most `len` bytes into it.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        info.tcpi_sacked
    }

    #[test]
    fn listeners_get_a_backlog_of_1024_or_the_system_maximum() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(backlog_of(&listener), listen_backlog() as u32);
        // Unless this machine's somaxconn is below it, that is 1024, not
        // the 128 std's `bind` asks for.
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(backlog_of(&listener), somaxconn.min(1024));
    }

    #[test]
    fn a_file_is_not_a_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_data_dir(dir.path()), Ok(()));
        assert_eq!(check_data_dir(&dir.path().join("missing")), Ok(()));
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = check_data_dir(&file).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn the_banner_says_version_addresses_data_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data: dir.path().to_path_buf(),
            ..Config::default()
        };
        let line = banner(
            &config,
            Some("127.0.0.1:4000".parse().unwrap()),
            Some("127.0.0.1:4443".parse().unwrap()),
        );
        for part in [
            concat!("natterd ", env!("CARGO_PKG_VERSION")),
            "127.0.0.1:4000 (plain) and 127.0.0.1:4443 (tls)",
            "registration open",
            "max-clients 10000",
            "rate 10/s burst 20",
        ] {
            assert!(line.contains(part), "{part:?} not in {line}");
        }
        let data = std::fs::canonicalize(dir.path()).unwrap();
        assert!(
            line.contains(&format!("data {};", data.display())),
            "{line}"
        );
    }

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
