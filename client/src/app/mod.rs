//! The `natter` program behind `main`: connects, logs in when it should, then
//! runs one of the two modes. Interactive mode (stdin is a terminal) has a
//! line editor; piped mode reads commands from stdin for scripts. Both run the
//! same two threads: the caller's thread owns the input and sends commands,
//! a reader thread owns the socket's read side and shows what arrives.

mod complete;
mod interactive;
mod login;
mod piped;
mod session;

use std::env;
use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use natter_client::{open, render, split, Style, TlsConfig};
use time::UtcOffset;

/// How long to try to reach the server before saying it is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// Runs the client; returns the process exit status.
pub fn run(opts: Options) -> i32 {
    let interactive = io::stdin().is_terminal();
    // The local offset can only be read soundly while the process has one
    // thread, so it is read once here; a session spanning a DST change shows
    // times an hour off until restarted.
    let offset = UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC);
    let style = Style {
        colour: interactive && io::stdout().is_terminal() && !no_color(),
        offset,
    };
    if !interactive && opts.register && opts.user.is_none() {
        return fail("--register needs --user NAME when stdin is not a terminal");
    }
    let stream = match open(&opts.host, opts.port, CONNECT_TIMEOUT, opts.tls.as_ref()) {
        Ok(stream) => stream,
        Err(e) => return fail(&e.to_string()),
    };
    // Timeouts are the socket's, so they also bound reads through TLS.
    let timeouts = match stream.tcp().try_clone() {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot use the connection: {e}")),
    };
    let (mut reader, mut writer) = match split(stream) {
        Ok(halves) => halves,
        Err(e) => return fail(&format!("cannot use the connection: {e}")),
    };
    let mut user = opts.user.clone();
    if interactive || opts.user.is_some() {
        let creds = match login::credentials(opts.user, opts.register) {
            Ok(creds) => creds,
            Err(e) => return fail(&e),
        };
        let set_timeout = |t| timeouts.set_read_timeout(t);
        match login::log_in(&mut reader, &mut writer, set_timeout, &creds) {
            Ok(welcome) => say(&render(&welcome, &style)),
            Err(e) => return fail(&e),
        }
        user = Some(creds.user.to_ascii_lowercase());
    }
    if interactive {
        interactive::run(reader, writer, style, user.as_deref().unwrap_or("natter"))
    } else {
        piped::run(reader, writer, style)
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
