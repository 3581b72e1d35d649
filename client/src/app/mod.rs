//! The `natter` program behind `main`: connects, logs in when it should, then
//! runs one of the two modes. Interactive mode (stdin is a terminal) has a
//! line editor, slash commands and reconnects; piped mode reads commands from
//! stdin for scripts. Both run the same two threads: the caller's thread owns
//! the input and sends commands, a reader thread owns the socket's read side,
//! shows what arrives and sends keepalives.

mod autolog;
mod complete;
pub mod config;
mod interactive;
mod link;
mod login;
mod notify;
mod piped;
mod present;
mod screen;
mod session;
mod slash;

use std::env;
use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use natter_client::{Style, TlsConfig};
use time::UtcOffset;

/// What `main` parsed from the command line.
pub struct Options {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Connect with TLS, trusting what this says.
    pub tls: Option<TlsConfig>,
    /// Username to log in as; asked for when missing in interactive mode.
    pub user: Option<String>,
    /// Register the user instead of logging in.
    pub register: bool,
    /// Send a `ping` after this long without sending anything (`None`:
    /// never).
    pub keepalive: Option<Duration>,
    /// Interactive mode connects again when the connection drops.
    pub reconnect: bool,
    /// Interactive mode rings the bell on a direct message.
    pub bell: bool,
    /// Interactive mode runs this on a direct message instead of the bell.
    pub notify: Option<String>,
    /// Interactive mode writes each conversation to its own file here.
    pub log_dir: Option<std::path::PathBuf>,
    /// Colour is allowed (it is still only used on a terminal, and never
    /// under `NO_COLOR`).
    pub colour: bool,
    /// Piped mode prints one JSON object per reply and event.
    pub json: bool,
    /// Piped mode waits for each reply before sending the next command.
    pub wait: bool,
}

/// Runs the client; returns the process exit status.
pub fn run(opts: Options) -> i32 {
    let interactive = io::stdin().is_terminal();
    // The local offset can only be read soundly while the process has one
    // thread, so it is read once here; a session spanning a DST change shows
    // times an hour off until restarted.
    let offset = UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC);
    let style = Style {
        colour: opts.colour && interactive && io::stdout().is_terminal() && !no_color(),
        offset,
    };
    if !interactive && opts.register && opts.user.is_none() {
        return fail("--register needs --user NAME when stdin is not a terminal");
    }
    let dialer = link::Dialer {
        host: opts.host,
        port: opts.port,
        tls: opts.tls,
        keepalive: opts
            .keepalive
            .map(|interval| session::Keepalive { interval }),
    };
    let mut conn = match dialer.connect() {
        Ok(conn) => conn,
        Err(e) => return fail(&e.to_string()),
    };
    let mut login = None;
    if interactive || opts.user.is_some() {
        let creds = match login::credentials(opts.user, opts.register) {
            Ok(creds) => creds,
            Err(e) => return fail(&e),
        };
        match conn.log_in(&creds) {
            Ok(welcome) => login = Some((creds, welcome)),
            Err(e) => return fail(&e.message),
        }
    }
    if let Err(e) = conn.arm(dialer.keepalive) {
        return fail(&format!("cannot use the connection: {e}"));
    }
    match login {
        Some((creds, welcome)) if interactive => {
            let settings = interactive::Settings {
                reconnect: opts.reconnect,
                bell: opts.bell,
                notify: opts.notify,
                log_dir: opts.log_dir,
            };
            interactive::run(conn, dialer, creds, &welcome, style, settings)
        }
        _ if interactive => fail("no credentials"),
        login => {
            let settings = piped::Settings {
                json: opts.json,
                wait: opts.wait,
                keepalive: dialer.keepalive,
            };
            let welcome = login.and_then(|(creds, welcome)| {
                let verb = if creds.register { "register" } else { "login" };
                let sent = session::Sent::of(&format!("{verb} {} ***", creds.user))?;
                Some((sent, welcome))
            });
            piped::run(conn, welcome, style, settings)
        }
    }
}

/// Colour is off whenever `NO_COLOR` is set to anything non-empty
/// (no-color.org).
fn no_color() -> bool {
    env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Prints one line on stdout. A closed stdout (`natter | head -1`) is not
/// worth a panic: the session goes on, or ends, as it would have.
pub fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints a one-line error and gives the failure status.
fn fail(message: &str) -> i32 {
    eprintln!("natter: {message}");
    1
}
