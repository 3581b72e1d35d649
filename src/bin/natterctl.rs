//! natterctl: runs one admin request against a running natterd over its
//! Unix socket (`<data>/natterd.sock`) and prints the answer, as text or,
//! with `--json`, as a JSON array of objects (one per row) for scripts.
//! Exits 0 when natterd said `+`, 1 when it refused, 2 when it could not
//! be reached. One subcommand works offline instead: `migrate` copies a
//! stopped node's data directory into PostgreSQL (`natter::store::copy`).

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use natter::config::ADMIN_SOCKET_FILE;

/// natterctl: administer a running natterd.
#[derive(Debug, Parser)]
#[command(name = "natterctl", version, about, long_about = None)]
struct Args {
    /// natterd's data directory (its admin socket is in there).
    #[arg(long, default_value = "natter-data", global = true)]
    data: PathBuf,

    /// The admin socket, if natterd was started with --admin-socket.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,

    /// Print the answer as JSON (an array of objects, one per row).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Admin(AdminCommand),
    /// Copy a stopped node's data directory into PostgreSQL (offline).
    ///
    /// Accounts, password hashes, messages, blocks and read state go into
    /// an empty PostgreSQL database with their ids, in one transaction.
    /// Running it again is harmless; it refuses while natterd runs on the
    /// directory or if the database holds other data. It works on the
    /// files, not through the admin socket (--data and --socket are not
    /// used).
    Migrate {
        /// The data directory natterd ran on (with natter.db).
        #[arg(long, value_name = "DATA_DIR")]
        from: PathBuf,
        /// The PostgreSQL database, as natterd's --store takes it.
        #[arg(long, value_name = "postgres://user@host/db")]
        to: String,
    },
}

/// The requests that go to a running natterd over its admin socket.
#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Accounts (name, online, last seen, unread, banned), optionally only
    /// those whose name contains PATTERN.
    Users { pattern: Option<String> },
    /// Ban, unban, add or delete an account, or set its password.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Connections now: id, user, address, TLS or not, connected and idle
    /// seconds, unsent output bytes.
    Sessions,
    /// Close a user's session (or one by its id) with `* bye kicked`.
    Kick {
        /// A username or a session id (see `sessions`).
        target: String,
        /// Why, for the log.
        reason: Vec<String>,
    },
    /// Send `* notice TEXT` to everyone logged in.
    Notice {
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Open or close registration until natterd restarts.
    Registration {
        #[arg(value_parser = ["open", "closed"])]
        state: String,
    },
    /// natterd's counters and sizes.
    Stats,
    /// Re-read the config file and the TLS certificate, as SIGHUP does
    /// (natterd's log says what changed).
    Reload,
    /// Write a consistent copy of the database to FILE (which must not
    /// exist) while natterd runs (SQLite's online backup, mode 0600).
    Backup { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum UserAction {
    /// Ban: logins refused with `- BANNED`, an open session closed with
    /// `* bye banned`. Kept across restarts.
    Lock { name: String },
    /// Lift a ban.
    Unlock { name: String },
    /// Delete the account: its session ends, its inbox and blocks go, and
    /// its history is detached, so a new account with the name starts clean.
    Del { name: String },
    /// Make an account, even while registration is closed. The password is
    /// asked for (twice) on a terminal, or read as one line from stdin.
    Add { name: String },
    /// Set an account's password (the old one is not needed); its open
    /// session is told. The password is read as for `add`.
    Passwd { name: String },
}

/// The password for `user add` / `user passwd`: asked for twice without
/// echo on a terminal (as passwd(1) does), else the first line of stdin.
fn read_password(name: &str) -> Result<String, String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("new password for {name}: "))
            .map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("again: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the passwords differ; nothing changed".into());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.is_empty() {
        return Err("no password given; nothing changed".into());
    }
    if password.contains(['\n', '\r']) {
        return Err("a password is one line".into());
    }
    Ok(password)
}

fn request(command: &AdminCommand, password: Option<&str>) -> String {
    match command {
        AdminCommand::Users { pattern } => match pattern {
            Some(p) => format!("users {p}"),
            None => "users".to_string(),
        },
        AdminCommand::User { action } => match action {
            UserAction::Lock { name } => format!("ban {name}"),
            UserAction::Unlock { name } => format!("unban {name}"),
            UserAction::Del { name } => format!("deluser {name}"),
            UserAction::Add { name } => format!("adduser {name} {}", password.unwrap_or("")),
            UserAction::Passwd { name } => format!("setpasswd {name} {}", password.unwrap_or("")),
        },
        AdminCommand::Sessions => "sessions".to_string(),
        AdminCommand::Kick { target, reason } => format!("kick {target} {}", reason.join(" ")),
        AdminCommand::Notice { text } => format!("notice {}", text.join(" ")),
        AdminCommand::Registration { state } => format!("registration {state}"),
        AdminCommand::Stats => "stats".to_string(),
        AdminCommand::Reload => "reload".to_string(),
        // natterd runs elsewhere: it needs the path from the root.
        AdminCommand::Backup { file } => {
            let absolute = std::env::current_dir()
                .map(|dir| dir.join(file))
                .unwrap_or_else(|_| file.clone());
            format!("backup {}", absolute.display())
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let command = match &args.command {
        Command::Admin(command) => command,
        Command::Migrate { from, to } => return migrate(from, to, args.json),
    };
    let path = args
        .socket
        .clone()
        .unwrap_or_else(|| args.data.join(ADMIN_SOCKET_FILE));
    let password = match command {
        AdminCommand::User {
            action: UserAction::Add { name } | UserAction::Passwd { name },
        } => match read_password(name) {
            Ok(password) => Some(password),
            Err(e) => {
                eprintln!("natterctl: {e}");
                return ExitCode::from(1);
            }
        },
        _ => None,
    };
    let answer = match ask(&path, &request(command, password.as_deref())) {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("natterctl: cannot reach natterd at {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let Some((last, rows)) = answer.split_last() else {
        eprintln!("natterctl: natterd closed the connection without an answer");
        return ExitCode::from(2);
    };
    let rows: Vec<&str> = rows.iter().filter_map(|l| l.strip_prefix("= ")).collect();
    if let Some(text) = last.strip_prefix("- ") {
        eprintln!("natterctl: {text}");
        return ExitCode::from(1);
    }
    let done = last.strip_prefix("+ ").unwrap_or(last);
    if args.json {
        let objects: Vec<serde_json::Map<String, serde_json::Value>> = rows
            .iter()
            .map(|row| {
                row.split(' ')
                    .filter_map(|field| field.split_once('='))
                    .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                    .collect()
            })
            .collect();
        match serde_json::to_string_pretty(&objects) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("natterctl: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        for row in &rows {
            println!("{row}");
        }
        eprintln!("{done}");
    }
    ExitCode::SUCCESS
}

/// `natterctl migrate`: exits 0 when the data is in PostgreSQL (copied now
/// or before), 1 when it refused, 2 when the copy failed (nothing of it was
/// committed, or the commit itself failed: the message says which).
fn migrate(from: &Path, to: &str, json: bool) -> ExitCode {
    use natter::store::copy::{sqlite_to_postgres, CopyError, Migrated};
    let (outcome, counts) = match sqlite_to_postgres(from, to) {
        Ok(Migrated::Copied(counts)) => ("copied", counts),
        Ok(Migrated::AlreadyThere(counts)) => ("already there", counts),
        Err(CopyError::Refused(why)) => {
            eprintln!("natterctl: migrate refused: {why}");
            return ExitCode::from(1);
        }
        Err(CopyError::Failed(why)) => {
            eprintln!("natterctl: migrate failed, nothing was committed: {why}");
            return ExitCode::from(2);
        }
        Err(CopyError::Unknown(why)) => {
            eprintln!(
                "natterctl: migrate failed while committing, so it may or may not be done: \
                 {why}; run it again: it finishes the copy or finds it done"
            );
            return ExitCode::from(2);
        }
    };
    if json {
        let object = serde_json::json!([{
            "outcome": outcome,
            "users": counts.users.to_string(),
            "messages": counts.messages.to_string(),
            "blocks": counts.blocks.to_string(),
        }]);
        println!("{object:#}");
    } else if outcome == "copied" {
        println!(
            "migrated {} accounts, {} messages and {} blocks from {}",
            counts.users,
            counts.messages,
            counts.blocks,
            from.display()
        );
    } else {
        println!(
            "already migrated: the database holds exactly the {} accounts, {} messages and {} blocks of {}; nothing to do",
            counts.users,
            counts.messages,
            counts.blocks,
            from.display()
        );
    }
    ExitCode::SUCCESS
}

/// Sends `line` and reads the answer up to its completion line.
fn ask(path: &PathBuf, line: &str) -> std::io::Result<Vec<String>> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut lines = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let done = line.starts_with("+ ") || line.starts_with("- ");
        lines.push(line);
        if done {
            break;
        }
    }
    Ok(lines)
}
