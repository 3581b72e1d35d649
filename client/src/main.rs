//! `natter`, the terminal client for natterd. This file only parses the
//! command line, lays the config file's defaults under it, and documents the
//! client in `--help`; `app` does the work.

mod app;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use natter_client::TlsConfig;

const AFTER_HELP: &str = "\
Interactive use (stdin is a terminal):
  natter asks for the username (unless --user is given) and the password
  (without echo, unless NATTER_PASSWORD is set), logs in, then shows a prompt.
  Messages arrive as chat lines above what you are typing, e.g.
  '[19:20] bob: hi'; the bell rings on a direct message (--no-bell).
  Slash commands:
    /msg <user> <text>     send one message
    /query <user>          talk to <user>: plain lines go to them until
                           /query alone or /close; the prompt shows alice→bob>
    /who  /last [<min>]    who is online; who was, in the last minutes
    /inbox  /history [<user>] [<n>]   unread messages; past conversations
    /block <user>  /unblock <user>  /blocked  /broadcast <text>
    /help  /quit
  A line without a slash is sent as typed (protocol commands such as
  'send bob hi' or 'whoelse' work as they are), except in a query.
  Keys: Tab completes commands and names; Up/Down recall earlier lines (never
  ones holding a password); Ctrl-C clears the line; Ctrl-D on an empty line
  logs out.
  Staying connected: natter sends a keepalive ping after --keepalive seconds
  without a command (the server logs idle sessions out), and when the
  connection drops or the server restarts it reconnects, waiting 1, 2, 4 ...
  up to 60 s between tries, keeps what you were typing, logs in again and
  shows how many unread messages wait. Being logged in from elsewhere
  ('replaced'), banned or kicked, or a refused login, ends it instead.
  --log-dir DIR writes each conversation to DIR/<user>.log (mode 0600);
  --notify CMD runs CMD on a direct message instead of the bell.

Piped use (stdin is not a terminal):
  No prompt and no line editing. Each input line is one command; what comes
  back is printed on stdout as the server's lines ('+ ...' success,
  '- CODE ...' failure, '= ...' data, events as chat lines), or with --json
  as one JSON object per reply ({\"command\", \"status\": \"ok\"|\"error\",
  \"code\", \"text\", \"data\": [lines]}) and per event ({\"event\": ...}).
  Commands are pipelined and paced by the server; --wait sends each one only
  after the previous one is answered. At the end of input natter waits for
  every reply, then exits. Without --user the script logs in itself:
    printf 'login alice secret-pw\\nwhoelse\\n' | natter 127.0.0.1 4000
  With --user, natter logs in first using NATTER_PASSWORD (or asks on the
  terminal):
    printf 'send bob hi\\n' | NATTER_PASSWORD=secret-pw natter --user alice
  If the connection ends early, the commands that got no answer are listed
  on stderr. Piped mode never reconnects.

TLS:
  --tls encrypts the connection (natterd's TLS listener, port 4443 unless
  PORT is given). The server's certificate is verified against Mozilla's
  root certificates (built in) and must be valid for HOST (a name or an IP
  address, as typed). For a server with its own CA give --ca FILE; for one
  started with --tls-self-signed, pin the fingerprint natterd printed:
    natter --tls --fingerprint CE:54:97:...:25:DF 127.0.0.1
  A certificate that fails the check ends the client with a one-line reason
  before anything, the password included, is sent.

Config file:
  $XDG_CONFIG_HOME/natter/config.toml (~/.config/natter/config.toml, or
  --config FILE) gives defaults in TOML; flags win. Keys are the long flags'
  names: host, port, user, tls, ca, fingerprint, colour, bell, notify,
  keepalive, reconnect, log-dir. Never a password.

Environment:
  NATTER_PASSWORD  the password, for scripts; used instead of asking.
  NO_COLOR         when set and non-empty, never use colour. Colour is
                   otherwise used only when stdout is a terminal.

Exit status:
  0  logged out ('/quit', 'quit', 'logout', Ctrl-D), or the end of piped input
     with every command answered and none refused.
  1  the server closed the connection ('* bye <reason>', shown with the reason)
     or it dropped (piped mode, or a reconnect refused); the server could not
     be reached; its TLS certificate was refused; a login failed (also a
     'login' line in a script).
  2  bad command-line arguments (including a malformed --fingerprint or an
     unreadable --ca file).
  3  piped mode: every command was answered, but one or more were refused
     ('- CODE ...').";

/// The natter chat client.
#[derive(Parser)]
#[command(name = "natter", version, about, after_help = AFTER_HELP)]
struct Args {
    /// Server host name or address [default: 127.0.0.1].
    host: Option<String>,
    /// Server port [default: 4000, or 4443 with --tls].
    port: Option<u16>,
    /// Log in as NAME (asked for when missing on a terminal).
    #[arg(short, long, value_name = "NAME")]
    user: Option<String>,
    /// Register NAME as a new user (and log in) instead of logging in.
    #[arg(short, long)]
    register: bool,
    /// Connect with TLS; the server's certificate must be trusted (see TLS
    /// below).
    #[arg(long)]
    tls: bool,
    /// With --tls: trust the certificates in this PEM file (a CA, or the
    /// server's own certificate) instead of the built-in roots.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls",
        conflicts_with = "fingerprint"
    )]
    ca: Option<PathBuf>,
    /// With --tls: accept exactly the server certificate with this SHA-256
    /// fingerprint (AB:CD:... as natterd prints it, or plain hex), whoever
    /// issued it and whatever names it holds.
    #[arg(long, value_name = "SHA256", requires = "tls")]
    fingerprint: Option<String>,
    /// Send a keepalive after this many seconds without a command (0: never)
    /// [default: 60]. Must be well under the server's idle timeout (30
    /// minutes by default).
    #[arg(long, value_name = "SECS")]
    keepalive: Option<u64>,
    /// Interactive: end instead of reconnecting when the connection drops.
    #[arg(long)]
    no_reconnect: bool,
    /// Interactive: no bell on a direct message.
    #[arg(long)]
    no_bell: bool,
    /// Piped: print each reply and event as one JSON object.
    #[arg(long)]
    json: bool,
    /// Piped: send each command only after the previous one is answered.
    #[arg(long)]
    wait: bool,
    /// Interactive: run this shell command on a direct message instead of
    /// ringing the bell; it gets NATTER_FROM and NATTER_TEXT.
    #[arg(long, value_name = "CMD")]
    notify: Option<String>,
    /// Interactive: write each conversation to DIR/<user>.log (0600).
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Read defaults from this file instead of
    /// $XDG_CONFIG_HOME/natter/config.toml (~/.config/natter/config.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Seconds without a command before a keepalive, unless told otherwise.
const DEFAULT_KEEPALIVE_SECS: u64 = 60;

fn main() {
    let args = Args::parse();
    let config = match app::config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("natter: {e}");
            std::process::exit(2);
        }
    };
    let tls_on = args.tls || config.tls.unwrap_or(false);
    // Trust given on the command line replaces the file's, whichever kind.
    let (ca, fingerprint) = if args.ca.is_some() || args.fingerprint.is_some() {
        (args.ca.clone(), args.fingerprint.clone())
    } else {
        (config.ca.clone(), config.fingerprint.clone())
    };
    let tls = match TlsConfig::from_flags(tls_on, ca.as_deref(), fingerprint.as_deref()) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("natter: {e}");
            std::process::exit(2);
        }
    };
    let default_port = if tls_on {
        natter_client::DEFAULT_TLS_PORT
    } else {
        natter_client::DEFAULT_PORT
    };
    let keepalive = args
        .keepalive
        .or(config.keepalive)
        .unwrap_or(DEFAULT_KEEPALIVE_SECS);
    let code = app::run(app::Options {
        host: args
            .host
            .or(config.host)
            .unwrap_or_else(|| natter_client::DEFAULT_HOST.to_string()),
        port: args.port.or(config.port).unwrap_or(default_port),
        tls,
        user: args.user.or(config.user),
        register: args.register,
        keepalive: (keepalive > 0).then(|| Duration::from_secs(keepalive)),
        reconnect: !args.no_reconnect && config.reconnect.unwrap_or(true),
        bell: !args.no_bell && config.bell.unwrap_or(true),
        notify: args.notify.or(config.notify),
        log_dir: args.log_dir.or(config.log_dir),
        colour: config.colour.unwrap_or(true),
        json: args.json,
        wait: args.wait,
    });
    std::process::exit(code);
}
