//! Test fixtures: a real natterd on a free port, a raw protocol client for
//! the other side of a conversation, and running the real `natter` binary
//! with a deadline. Every wait here is bounded; nothing sleeps blindly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The bound on any single wait for the server or the client.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The `natter` binary under test.
pub fn natter_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_natter"))
}

#[path = "../../../tests/support/natterd.rs"]
mod support;
pub use support::{Server, TLS_FLAGS};

impl Server {
    /// Starts natterd on port 0 with cheap hashing and no rate limit, and
    /// waits (bounded) for its `listening on` line.
    pub fn start() -> Server {
        Server::start_with(&["--hash-cost", "low", "--rate", "0"])
    }

    /// Starts natterd with a self-signed TLS listener beside the plaintext
    /// one ([`TLS_FLAGS`]).
    pub fn start_tls() -> Server {
        Server::start_with(TLS_FLAGS)
    }

    /// Registers `user` over a raw connection and logs it out again.
    pub fn register(&self, user: &str, password: &str) {
        let mut c = Raw::connect(self);
        c.send(&format!("register {user} {password}"));
        c.expect_line(&format!("+ registered {user}"));
        c.send("quit");
        c.expect_line("+ bye");
    }
}

/// A natterd that can be killed and started again on the same port and data
/// directory, as an operator's restart (or a crash) would: for the
/// reconnect tests. [`Server`] always takes a fresh port and directory.
pub struct Restartable {
    child: Option<Child>,
    /// Where it listens (the same after a restart).
    pub addr: SocketAddr,
    data: tempfile::TempDir,
    flags: Vec<String>,
}

impl Restartable {
    /// Starts natterd on a free port with cheap hashing, no rate limit and
    /// `flags`.
    pub fn start(flags: &[&str]) -> Restartable {
        let mut server = Restartable {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data: tempfile::tempdir().expect("temp dir"),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        };
        server.restart();
        server
    }

    /// The port, as `natter` takes it.
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// Kills natterd with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL natterd");
            child.wait().expect("reap natterd");
        }
    }

    /// Starts natterd again on the same port (the first time: a free one)
    /// and data directory; waits, bounded, until it listens.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = Command::new(support::natterd())
            .arg("--data")
            .arg(self.data.path())
            .args(["--hash-cost", "low", "--rate", "0"])
            .args(&self.flags)
            .arg(self.addr.port().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start natterd");
        let mut stdout = BufReader::new(child.stdout.take().expect("natterd stdout"));
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = tx.send(line);
            // Keep reading so natterd never writes into a closed pipe.
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        self.child = Some(child);
        let line = rx
            .recv_timeout(TIMEOUT)
            .expect("natterd to say where it listens");
        self.addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from natterd: {line:?}"));
    }

    /// Kills natterd, empties its data directory (every account gone) and
    /// starts it again on the same port.
    pub fn restart_empty(&mut self) {
        self.kill();
        for entry in std::fs::read_dir(self.data.path()).expect("read the data dir") {
            let path = entry.expect("a data dir entry").path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove from the data dir");
            } else {
                std::fs::remove_file(&path).expect("remove from the data dir");
            }
        }
        self.restart();
    }

    /// Registers `user` over a raw connection and logs it out again.
    pub fn register(&self, user: &str, password: &str) {
        let mut c = Raw::connect_to(self.addr);
        c.send(&format!("register {user} {password}"));
        c.expect_line(&format!("+ registered {user}"));
        c.send("quit");
        c.expect_line("+ bye");
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain protocol connection, as netcat would use: the other person in a
/// conversation with the client under test.
pub struct Raw {
    writer: TcpStream,
    lines: mpsc::Receiver<String>,
    /// Every line received so far, for failure messages.
    seen: Vec<String>,
}

impl Raw {
    /// Connects; lines are read on a thread so waits can have deadlines.
    pub fn connect(server: &Server) -> Raw {
        Raw::connect_to(server.addr)
    }

    /// Connects to natterd at `addr`.
    pub fn connect_to(addr: SocketAddr) -> Raw {
        let writer = TcpStream::connect(addr).expect("connect to natterd");
        let reader = writer.try_clone().expect("clone stream");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Raw {
            writer,
            lines,
            seen: Vec::new(),
        }
    }

    /// Connects and logs in.
    pub fn login(server: &Server, user: &str, password: &str) -> Raw {
        Raw::login_to(server.addr, user, password)
    }

    /// Connects to natterd at `addr` and logs in.
    pub fn login_to(addr: SocketAddr, user: &str, password: &str) -> Raw {
        let mut c = Raw::connect_to(addr);
        c.send(&format!("login {user} {password}"));
        c.expect_prefix(&format!("+ welcome {user}"));
        c
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to natterd");
    }

    /// Waits for a line starting with `prefix`, skipping others; panics with
    /// everything seen if none comes in time.
    pub fn expect_prefix(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!("no line starting {prefix:?}; saw {:#?}", self.seen),
            }
        }
    }

    /// Waits for exactly `line`.
    pub fn expect_line(&mut self, line: &str) {
        let got = self.expect_prefix(line);
        assert_eq!(got, line);
    }
}

/// What a finished `natter` run left.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout's lines, without the greeting and notices (`--` lines) that
    /// depend on the server's wording.
    pub fn replies(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| !l.starts_with("-- "))
            .collect()
    }
}

/// Where the tests point natter's config directory: nowhere, so a config
/// file of the person running the tests cannot change what natter does.
pub const NO_CONFIG_HOME: &str = "/nonexistent/natter-tests";

/// A `natter` command for `server`, with colour, password and config file
/// unset so the caller's environment cannot change the output.
pub fn natter(server: &Server) -> Command {
    let mut cmd = Command::new(natter_bin());
    cmd.args(["127.0.0.1", &server.port()])
        .env_remove("NATTER_PASSWORD")
        .env_remove("NO_COLOR")
        .env("XDG_CONFIG_HOME", NO_CONFIG_HOME);
    cmd
}

/// A `natter --tls` command for `server`'s TLS listener, with `trust` (e.g.
/// `["--fingerprint", fp]`) and the same clean environment as [`natter`].
pub fn natter_tls(server: &Server, host: &str, trust: &[&str]) -> Command {
    let mut cmd = Command::new(natter_bin());
    cmd.arg("--tls")
        .args(trust)
        .args([host, &server.tls().addr.port().to_string()])
        .env_remove("NATTER_PASSWORD")
        .env_remove("NO_COLOR")
        .env("XDG_CONFIG_HOME", NO_CONFIG_HOME);
    cmd
}

/// Runs `cmd` with `input` on stdin to the end, within [`TIMEOUT`]; kills it
/// and panics if it does not finish.
pub fn run(cmd: &mut Command, input: &str) -> Run {
    run_within(cmd, input, TIMEOUT)
}

/// [`run`] with a longer bound, for long scripts.
pub fn run_within(cmd: &mut Command, input: &str, limit: Duration) -> Run {
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start natter");
    let mut running = Running::new(child);
    // A client that exits early (e.g. cannot connect) may not read its input.
    if let Some(stdin) = running.child.stdin.as_mut() {
        let _ = stdin.write_all(input.as_bytes());
    }
    running.close_stdin();
    running.finish_within(limit)
}

/// A `natter` still running, with its output collected on threads so the
/// test can wait for a line with a deadline while feeding more input.
pub struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    out_lines: Vec<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Running {
    /// Wraps a child spawned with all three streams piped.
    pub fn new(mut child: Child) -> Running {
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Running {
            child,
            stdout: rx,
            out_lines: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Starts `cmd` with all streams piped.
    pub fn spawn(cmd: &mut Command) -> Running {
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start natter");
        Running::new(child)
    }

    /// Writes to the client's stdin.
    pub fn write(&mut self, input: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin still open");
        stdin.write_all(input.as_bytes()).expect("write to natter");
        stdin.flush().expect("flush natter stdin");
    }

    /// Ends the client's input.
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits for a stdout line that `pred` accepts; panics with the output so
    /// far if none comes in time.
    pub fn expect_stdout(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.out_lines.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("natter never printed {what}; stdout: {:#?}", self.out_lines),
            }
        }
    }

    /// Waits for the process to exit within [`TIMEOUT`] and collects the rest
    /// of its output; kills it and panics if it does not exit.
    pub fn finish(self) -> Run {
        self.finish_within(TIMEOUT)
    }

    /// [`Running::finish`] with another bound.
    pub fn finish_within(mut self, limit: Duration) -> Run {
        let deadline = Instant::now() + limit;
        let status = loop {
            match self.child.try_wait().expect("wait for natter") {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "natter did not exit within {limit:?}; stdout: {:#?}",
                        self.out_lines
                    );
                }
                // Polling the exit status: std has no wait with a timeout.
                None => thread::sleep(Duration::from_millis(20)),
            }
        };
        // The pipes close at exit, so these end promptly.
        while let Ok(line) = self.stdout.recv_timeout(TIMEOUT) {
            self.out_lines.push(line);
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let mut stdout = self.out_lines.join("\n");
        if !stdout.is_empty() {
            stdout.push('\n');
        }
        Run {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only a test that panicked leaves the child running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
