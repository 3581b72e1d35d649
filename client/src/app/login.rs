//! Getting the username and password, and the login (or register) exchange
//! the client makes on the person's behalf before the two threads start. The
//! password is never printed, never put in history, and only leaves this
//! module inside the one `login`/`register` line sent to the server.

use std::env;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::time::Duration;

use natter_client::display::clean;
use natter_client::{parse, Event, LineReader, LineWriter, ServerLine};
use natter_proto::{ByeReason, ErrorCode};
use nix::sys::signal::{self, SigHandler, Signal};

/// The environment variable a script sets to give the password.
pub const PASSWORD_VAR: &str = "NATTER_PASSWORD";

/// How long to wait for the login reply. The server hashes the password on a
/// worker thread, which takes a fraction of a second; this only stops a stuck
/// server from hanging the client forever.
const LOGIN_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the client logs in with.
pub struct Credentials {
    /// The username as given; the server folds it to lowercase.
    pub user: String,
    /// Never shown or logged.
    pub password: String,
    /// `register` instead of `login`.
    pub register: bool,
}

/// Gets the username (from `user`, else asked for on the terminal) and the
/// password (from `NATTER_PASSWORD`, else asked for without echo). The
/// prompts go to the terminal, not stdout, so piped output stays clean.
pub fn credentials(user: Option<String>, register: bool) -> Result<Credentials, String> {
    let user = match user {
        Some(user) => user,
        None => ask_username()?,
    };
    if user.is_empty() {
        return Err("no username given".into());
    }
    let password = match env::var(PASSWORD_VAR) {
        Ok(password) if !password.is_empty() => password,
        _ => ask_password(register)?,
    };
    if password.contains(['\n', '\r']) {
        return Err("the password cannot contain a line break".into());
    }
    Ok(Credentials {
        user,
        password,
        register,
    })
}

fn ask_username() -> Result<String, String> {
    if !io::stdin().is_terminal() {
        return Err("no username: give --user NAME".into());
    }
    eprint!("username: ");
    let _ = io::stderr().flush();
    let mut line = String::new();
    match io::stdin().lock().read_line(&mut line) {
        Ok(0) => Err("no username given".into()),
        Ok(_) => Ok(line.trim().to_string()),
        Err(e) => Err(format!("cannot read the username: {e}")),
    }
}

fn ask_password(register: bool) -> Result<String, String> {
    let no_tty = |e: io::Error| match e.kind() {
        io::ErrorKind::Interrupted => "interrupted".to_string(),
        io::ErrorKind::UnexpectedEof => "no password given".to_string(),
        _ => format!("cannot ask for the password ({e}); set {PASSWORD_VAR} to give it"),
    };
    let _sigint = IgnoreSigint::new();
    // rpassword reads from the controlling terminal, not stdin, so this also
    // works when stdin is a script.
    let password = rpassword::prompt_password("password: ").map_err(no_tty)?;
    if register {
        let again = rpassword::prompt_password("password again: ").map_err(no_tty)?;
        if again != password {
            return Err("the passwords do not match".into());
        }
    }
    Ok(password)
}

/// Ignores SIGINT while alive. rpassword turns echo off and, on Ctrl-C,
/// raises SIGINT before it turns echo back on; with the default action the
/// process would die and leave the person's shell typing blind. Ignored, the
/// prompt returns `Interrupted` and rpassword restores the terminal.
struct IgnoreSigint(Option<SigHandler>);

impl IgnoreSigint {
    fn new() -> Self {
        // SAFETY: installs no handler code, only the kernel's "ignore".
        let old = unsafe { signal::signal(Signal::SIGINT, SigHandler::SigIgn) };
        IgnoreSigint(old.ok())
    }
}

impl Drop for IgnoreSigint {
    fn drop(&mut self) {
        if let Some(old) = self.0 {
            // SAFETY: puts back what was there before `new`.
            let _ = unsafe { signal::signal(Signal::SIGINT, old) };
        }
    }
}

/// Why logging in did not work, and whether trying again later may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginError {
    /// One line for a person.
    pub message: String,
    /// The connection failed or the server was busy or going away: a
    /// reconnect may try again. A refusal (wrong password, lockout, ban) is
    /// final: retrying would only count as more failed logins.
    pub retry: bool,
}

impl LoginError {
    fn retry(message: String) -> LoginError {
        LoginError {
            message,
            retry: true,
        }
    }
}

/// Sends `login` or `register` and waits for its completion. Events before it
/// (the greeting and the notices explaining how to log in by hand) are not
/// shown: the client is doing that for the person. Returns the server's
/// success line, or why it failed.
pub fn log_in(
    reader: &mut LineReader<impl Read>,
    writer: &mut LineWriter<impl Write>,
    set_timeout: impl Fn(Option<Duration>) -> io::Result<()>,
    creds: &Credentials,
) -> Result<ServerLine, LoginError> {
    let verb = if creds.register { "register" } else { "login" };
    let io_err = |e: io::Error| LoginError::retry(format!("{verb} failed: {e}"));
    writer
        .send(&format!("{verb} {} {}", creds.user, creds.password))
        .map_err(io_err)?;
    set_timeout(Some(LOGIN_REPLY_TIMEOUT)).map_err(io_err)?;
    let reply = loop {
        let raw = match reader.read_line() {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                return Err(LoginError::retry(format!(
                    "{verb} failed: the server closed the connection"
                )))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(LoginError::retry(format!(
                    "{verb} failed: no reply from the server"
                )))
            }
            Err(e) => return Err(io_err(e)),
        };
        match parse(&raw) {
            ServerLine::Event(Event::Bye { reason }) => {
                let retry = matches!(
                    ByeReason::parse(&reason),
                    Some(ByeReason::Busy | ByeReason::Shutdown)
                );
                return Err(LoginError {
                    message: format!(
                        "{verb} failed: the server closed the connection: {}",
                        natter_client::display::explain_bye(&reason)
                    ),
                    retry,
                });
            }
            line if line.is_completion() => break line,
            _ => {}
        }
    };
    set_timeout(None).map_err(io_err)?;
    match reply {
        ServerLine::Err { code, text } => Err(LoginError {
            message: explain_failure(verb, &creds.user, &code, &text),
            retry: ErrorCode::parse(&code) == Some(ErrorCode::Busy),
        }),
        ok => Ok(ok),
    }
}

/// A person-readable reason for a refused login or registration.
fn explain_failure(verb: &str, user: &str, code: &str, text: &str) -> String {
    match ErrorCode::parse(code) {
        Some(ErrorCode::AuthFail) => "login failed: wrong username or password".into(),
        Some(ErrorCode::Locked) => format!(
            "login refused: too many failed attempts for {user} ({})",
            clean(text)
        ),
        Some(ErrorCode::Exists) => format!("registration failed: the name {user} is taken"),
        Some(ErrorCode::Closed) => {
            "registration failed: registration is closed on this server".into()
        }
        _ => format!("{verb} failed: {} {}", clean(code), clean(text)),
    }
}
