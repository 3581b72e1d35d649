//! Starting natterd: the `--config` file and its precedence under flags,
//! `--port`, a `--data` that is a file, the start-up log line, and a
//! self-signed certificate whose names changed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Client, Server, TIMEOUT};

/// A config file in its own temporary directory.
struct ConfigFile {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

fn config_file(text: &str) -> ConfigFile {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("natterd.toml");
    std::fs::write(&path, text).expect("write config file");
    ConfigFile { path, _dir: dir }
}

/// The binary under test, chosen as `util` chooses it (`NATTERD` or cargo's).
fn natterd() -> Command {
    let binary = std::env::var_os("NATTERD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_natterd")));
    let mut command = Command::new(binary);
    command.stdin(Stdio::null()).env("RUST_LOG", "info");
    command
}

/// Runs natterd with `args` until it exits (killed if it runs past
/// [`TIMEOUT`]: these starts are expected to fail) and returns whether it
/// succeeded and what it wrote on stderr.
fn run_to_exit(args: &[&str]) -> (bool, String) {
    let mut child = natterd()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start natterd");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                use std::io::Read;
                let _ = err.read_to_string(&mut stderr);
            }
            return (status.success(), stderr);
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("natterd {args:?} was expected to fail at start but still runs");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A natterd started with exactly `args`, killed when dropped.
struct Raw {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_raw(args: &[&str]) -> Raw {
    let mut child = natterd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start natterd");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(TIMEOUT);
    let addr = line
        .as_deref()
        .ok()
        .and_then(|l| l.strip_prefix("listening on "))
        .and_then(|a| a.parse().ok());
    match addr {
        Some(addr) => Raw { child, addr },
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("natterd {args:?} did not say where it listens: {line:?}");
        }
    }
}

#[test]
fn the_config_file_sets_what_flags_do_not_and_flags_override_it() {
    let file = config_file(
        "# limits for this test\n\
         registration = \"closed\"\n\
         max-line = 64\n",
    );
    let path = file.path.display().to_string();
    // The file alone: registration is closed.
    let server = Server::start(&["--config", &path]);
    let mut c = server.connect();
    let reply = c.cmd("register alice password-alice");
    assert!(reply[0].starts_with("- "), "{reply:?}");
    drop(server);
    // A flag overrides the file's registration; the file's max-line holds.
    let server = Server::start(&["--config", &path, "--registration", "open"]);
    let mut c = server.connect();
    assert_eq!(
        c.cmd("register alice password-alice"),
        vec!["+ registered alice".to_string()]
    );
    let reply = c.cmd(&format!("send alice {}", "x".repeat(80)));
    assert!(reply[0].starts_with("- TOOLONG"), "{reply:?}");
}

#[test]
fn an_unknown_key_in_the_config_file_fails_the_start_naming_key_and_line() {
    let file = config_file("port = 5000\n\n# a typo:\nmax_clients = 100\n");
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let (ok, stderr) = run_to_exit(&[
        "--config",
        &file.path.display().to_string(),
        "--data",
        &data.display().to_string(),
    ]);
    assert!(!ok, "natterd started with an unknown key: {stderr}");
    assert!(stderr.contains("max_clients"), "{stderr}");
    assert!(stderr.contains("line 4"), "{stderr}");
    assert!(!data.exists(), "it went on to create the data directory");
}

#[test]
fn port_can_be_given_as_a_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let server = start_raw(&[
        "--data",
        &data.display().to_string(),
        "--hash-cost",
        "low",
        "--port",
        "0",
    ]);
    let mut c = Client::connect(server.addr);
    c.skip_greeting();
    assert_eq!(
        c.cmd("register porter password-porter"),
        vec!["+ registered porter".to_string()]
    );
}

#[test]
fn a_data_path_naming_a_file_says_not_a_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("natter-data");
    std::fs::write(&file, "not a directory").expect("write file");
    let (ok, stderr) = run_to_exit(&["--data", &file.display().to_string(), "0"]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("not a directory"), "{stderr}");
}

#[test]
fn the_start_up_line_shows_version_and_absolute_data_directory() {
    let server = Server::start(&[]);
    let data = std::fs::canonicalize(&server.data).expect("data directory");
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains(concat!("natterd ", env!("CARGO_PKG_VERSION"), " starting")))
        .unwrap_or_else(|| panic!("no start-up line with the version in:\n{log}"));
    assert!(
        line.contains(&format!("data {};", data.display())),
        "{line}"
    );
    assert!(line.contains(&server.addr.to_string()), "{line}");
    assert!(line.contains("registration open"), "{line}");
}

fn fingerprint_of(cert: &Path, key: &Path) -> String {
    natter::tls::load(cert, key)
        .expect("a certificate")
        .fingerprint
}

#[test]
fn new_self_signed_names_make_a_new_certificate_and_keep_the_old_one() {
    let server = Server::start(&["--tls-self-signed", "localhost"]);
    let (_, first) = server.tls.clone().expect("TLS listener");
    let server = server.restart_with(&["--tls-self-signed", "localhost,chat.example.test"]);
    let (_, second) = server.tls.clone().expect("TLS listener");
    assert_ne!(first, second, "the certificate for the old names was kept");
    assert!(
        server.log().contains("differ from the kept certificate"),
        "the change is not logged"
    );
    // The old pair is kept beside the new one.
    let tls = server.data.join("tls");
    let old: Vec<PathBuf> = std::fs::read_dir(&tls)
        .expect("tls directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("self-signed-cert.") && name != "self-signed-cert.pem"
        })
        .collect();
    assert_eq!(old.len(), 1, "{old:?}");
    let old_key = PathBuf::from(
        old[0]
            .display()
            .to_string()
            .replace("self-signed-cert.", "self-signed-key."),
    );
    assert_eq!(fingerprint_of(&old[0], &old_key), first);
    // The same names again (in another order): the new one is kept.
    let server = server.restart_with(&["--tls-self-signed", "chat.example.test,localhost"]);
    assert_eq!(server.tls.clone().expect("TLS listener").1, second);
}

/// Waits (bounded) until the server's log contains `what`; returns the log.
pub fn log_with(server: &Server, what: &str) -> String {
    let until = Instant::now() + TIMEOUT;
    loop {
        let log = server.log();
        if log.contains(what) {
            return log;
        }
        assert!(Instant::now() < until, "no {what:?} in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGHUP to the server.
pub fn sighup(server: &Server) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(server.pid() as i32, libc::SIGHUP);
    }
}

/// Regression: SIGHUP ended natterd (exit 129, no goodbye). Now it re-reads
/// the config file: what can change live does, the rest is named as
/// needing a restart, and nobody is dropped.
#[test]
fn sighup_reloads_the_config_file_without_dropping_anyone() {
    let file = config_file("registration = \"open\"\n");
    let path = file.path.display().to_string();
    let mut server = Server::start(&["--config", &path]);
    let mut alice = server.user("alice");
    std::fs::write(&file.path, "registration = \"closed\"\nmax-clients = 5\n")
        .expect("rewrite config file");
    sighup(&server);
    let log = log_with(&server, "reload: applied");
    assert!(log.contains("reload: applied registration closed"), "{log}");
    assert!(log.contains("need a restart"), "{log}");
    let mut c = server.connect();
    assert_eq!(
        c.cmd1("register carol password-carol").split(' ').nth(1),
        Some("CLOSED")
    );
    assert_eq!(alice.cmd1("ping"), "+ pong");
    // A broken file changes nothing and ends nothing.
    std::fs::write(&file.path, "registration = \"sometimes\"\n").expect("rewrite");
    sighup(&server);
    log_with(&server, "reload failed");
    assert_eq!(alice.cmd1("ping"), "+ pong");
    let (status, _) = server.signal(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
}
