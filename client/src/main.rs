//! `natter`, the terminal client for natterd. This file only parses the
//! command line (and documents the client in `--help`); `app` does the work.

mod app;

use std::path::PathBuf;

use clap::Parser;
use natter_client::TlsConfig;

const AFTER_HELP: &str = "\
Interactive use (stdin is a terminal):
  natter asks for the username (unless --user is given) and the password
  (without echo, unless NATTER_PASSWORD is set), logs in, then shows a prompt.
  Type protocol commands at the prompt, e.g.:
    send <user> <text>        whoelse           wholast <minutes>
    broadcast <text>          broadcast user <u1> [<u2> ...] message <text>
    inbox    history [<user>] [<count>]    block <user>    unblock <user>
    blocked  ping    help     logout | quit
  Replies are shown as the server sends them: '+ ...' success, '- CODE ...'
  failure, '= ...' data lines. Messages arrive as chat lines with the local
  time and the sender, e.g. '[19:20] alice: hi', printed above the prompt so
  what you are typing is never disturbed. Up/Down recall earlier commands;
  Tab completes command words and the usernames seen so far.
  Ctrl-C or Ctrl-D logs out, like 'quit'.

Piped use (stdin is not a terminal):
  No prompt and no line editing. Each input line is sent as a command and what
  comes back is printed in plain text on stdout. At the end of input natter
  waits for the reply to every command sent, then exits. Without --user the
  script logs in itself:
    printf 'login alice secret-pw\\nwhoelse\\n' | natter 127.0.0.1 4000
  With --user, natter logs in first using NATTER_PASSWORD (or asks on the
  terminal):
    printf 'send bob hi\\n' | NATTER_PASSWORD=secret-pw natter --user alice

TLS:
  --tls encrypts the connection (natterd's TLS listener, port 4443 unless
  PORT is given). The server's certificate is verified against Mozilla's
  root certificates (built in) and must be valid for HOST (a name or an IP
  address, as typed). For a server with its own CA give --ca FILE; for one
  started with --tls-self-signed, pin the fingerprint natterd printed:
    natter --tls --fingerprint CE:54:97:...:25:DF 127.0.0.1
  A certificate that fails the check ends the client with a one-line reason
  before anything, the password included, is sent.

Environment:
  NATTER_PASSWORD  the password, for scripts; used instead of asking.
  NO_COLOR         when set and non-empty, never use colour. Colour is
                   otherwise used only when stdout is a terminal.

Exit status:
  0  logged out ('quit', 'logout', Ctrl-C, Ctrl-D), or the end of piped input
     with every reply received.
  1  the server closed the connection ('* bye <reason>', shown with the reason)
     or it dropped; the server could not be reached; its TLS certificate was
     refused; the login failed.
  2  bad command-line arguments (including a malformed --fingerprint or an
     unreadable --ca file).";

/// The natter chat client.
#[derive(Parser)]
#[command(name = "natter", version, about, after_help = AFTER_HELP)]
struct Args {
    /// Server host name or address.
    #[arg(default_value = natter_client::DEFAULT_HOST)]
    host: String,
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
}

fn main() {
    let args = Args::parse();
    let tls = match tls_config(&args) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("natter: {e}");
            std::process::exit(2);
        }
    };
    let default_port = if args.tls {
        natter_client::DEFAULT_TLS_PORT
    } else {
        natter_client::DEFAULT_PORT
    };
    let code = app::run(app::Options {
        host: args.host,
        port: args.port.unwrap_or(default_port),
        tls,
        user: args.user,
        register: args.register,
    });
    std::process::exit(code);
}

/// The TLS configuration the flags ask for, if any.
fn tls_config(args: &Args) -> Result<Option<TlsConfig>, String> {
    TlsConfig::from_flags(args.tls, args.ca.as_deref(), args.fingerprint.as_deref())
}
