//! natterctl: runs one admin request against a running natterd over its
//! Unix socket (`<data>/natterd.sock`) and prints the answer, as text or,
//! with `--json`, as a JSON array of objects (one per row) for scripts.
//! Exits 0 when natterd said `+`, 1 when it refused, 2 when it could not
//! be reached.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
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

fn request(command: &Command, password: Option<&str>) -> String {
    match command {
        Command::Users { pattern } => match pattern {
            Some(p) => format!("users {p}"),
            None => "users".to_string(),
        },
        Command::User { action } => match action {
            UserAction::Lock { name } => format!("ban {name}"),
            UserAction::Unlock { name } => format!("unban {name}"),
            UserAction::Del { name } => format!("deluser {name}"),
            UserAction::Add { name } => format!("adduser {name} {}", password.unwrap_or("")),
            UserAction::Passwd { name } => format!("setpasswd {name} {}", password.unwrap_or("")),
        },
        Command::Sessions => "sessions".to_string(),
        Command::Kick { target, reason } => format!("kick {target} {}", reason.join(" ")),
        Command::Notice { text } => format!("notice {}", text.join(" ")),
        Command::Registration { state } => format!("registration {state}"),
        Command::Stats => "stats".to_string(),
        Command::Reload => "reload".to_string(),
        // natterd runs elsewhere: it needs the path from the root.
        Command::Backup { file } => {
            let absolute = std::env::current_dir()
                .map(|dir| dir.join(file))
                .unwrap_or_else(|_| file.clone());
            format!("backup {}", absolute.display())
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let path = args
        .socket
        .clone()
        .unwrap_or_else(|| args.data.join(ADMIN_SOCKET_FILE));
    let password = match &args.command {
        Command::User {
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
    let answer = match ask(&path, &request(&args.command, password.as_deref())) {
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
