//! Test helpers: start the real `natterd` binary on port 0 with its own data
//! directory, and talk to it over TCP with a client whose every wait has a
//! timeout. Servers are killed by PID when their handle drops.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long any single wait may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Holds off every other caller until the guard drops. Tests that measure
/// latency or the server's memory take it first, so that on a 2-core machine
/// they never measure each other's load (other tests still run beside them).
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A test that failed while holding it must not fail the ones after it.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The slowest ping round trip a check tolerates, given `baseline` (the
/// median round trip of the same client measured just before, see
/// [`Client::ping_baseline`]). A stalled loop shows up as a round trip many
/// times the baseline; a busy 2-core machine can delay one round trip by
/// tens of milliseconds, so the bound never drops below a second.
pub fn stall_bound(baseline: Duration) -> Duration {
    (baseline * 20).max(Duration::from_secs(1))
}

/// A running natterd child process.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The TLS listener and its certificate's SHA-256 fingerprint, if any.
    pub tls: Option<(SocketAddr, String)>,
    /// The web listener (`--web`), if any.
    pub web: Option<SocketAddr>,
    /// The web listener inside TLS (`--web-tls`), if any.
    pub web_tls: Option<SocketAddr>,
    pub data: PathBuf,
    /// Keeps the temporary directory alive (and removes it at the end).
    _dir: Option<tempfile::TempDir>,
    args: Vec<String>,
    /// With `NATTER_TEST_CLUSTER` set: the Redis and the second node of
    /// the two-node cluster this server is a node of.
    peer: Option<Box<Peer>>,
}

/// The rest of a two-node cluster (see [`Server::start`]).
struct Peer {
    /// The other node. Dropped (killed) before Redis.
    _sibling: Server,
    _redis: crate::redis::Redis,
    /// The flags that make a node of this cluster.
    flags: Vec<String>,
}

impl Peer {
    /// With `NATTER_TEST_CLUSTER=1` in the environment, a server started
    /// without a `--store` of its own becomes a node of a two-node cluster
    /// (a fresh PostgreSQL database, a Redis, and a second node running
    /// beside it), so every test written against one server runs against
    /// a cluster node unchanged: `NATTER_TEST_CLUSTER=1 cargo test --test
    /// server contract::` (as `.ci/run` does).
    fn wanted(args: &[&str]) -> Option<Peer> {
        std::env::var_os("NATTER_TEST_CLUSTER")?;
        if args.iter().any(|a| *a == "--store" || *a == "--cluster") {
            return None;
        }
        let redis = crate::redis::Redis::start();
        let db = crate::pg::database();
        let flags = |id: &str| -> Vec<String> {
            ["--store", &db, "--cluster", &redis.url(), "--node-id", id]
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        let sibling_flags = flags("sibling");
        let sibling_args: Vec<&str> = sibling_flags.iter().map(String::as_str).collect();
        let sibling = Server::start(&sibling_args);
        Some(Peer {
            _sibling: sibling,
            flags: flags("tested"),
            _redis: redis,
        })
    }
}

impl Server {
    /// Starts a server with a fresh data directory. `--rate 0` and
    /// `--hash-cost low` are added unless `args` sets them.
    pub fn start(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let peer = Peer::wanted(args).map(Box::new);
        let mut full: Vec<&str> = args.to_vec();
        if let Some(p) = &peer {
            full.extend(p.flags.iter().map(String::as_str));
        }
        let mut s = Server::launch(&data, &full, None);
        s._dir = Some(dir);
        s.peer = peer;
        s
    }

    /// Starts a server whose open-file limit is `nofile`.
    pub fn start_with_fd_limit(args: &[&str], nofile: u64) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let mut s = Server::launch(&data, args, Some(nofile));
        s._dir = Some(dir);
        s
    }

    /// Starts a server on an existing data directory (restart tests).
    pub fn start_at(data: &Path, args: &[&str]) -> Server {
        Server::launch(data, args, None)
    }

    fn launch(data: &Path, args: &[&str], nofile: Option<u64>) -> Server {
        let mut full: Vec<String> = vec!["--data".into(), data.display().to_string()];
        if !args.contains(&"--rate") {
            full.extend(["--rate".into(), "0".into()]);
        }
        if !args.contains(&"--hash-cost") {
            full.extend(["--hash-cost".into(), "low".into()]);
        }
        full.extend(args.iter().map(|a| a.to_string()));
        if args.iter().any(|a| a.starts_with("--tls")) && !args.contains(&"--tls-port") {
            full.extend(["--tls-port".into(), "0".into()]);
        }
        // Port 0: the kernel picks a free port, which the server prints.
        full.push("0".into());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))
            .expect("log file next to the data directory");
        // NATTERD runs the tests against another build (a release build,
        // to read the heavy tests' latency figures as production would see
        // them); by default, the one cargo built for this test binary.
        let binary = std::env::var_os("NATTERD")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_natterd")));
        let mut command = Command::new(binary);
        if let Some(limit) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .args(&full)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start natterd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Forward every line; keep draining so the server never blocks
            // on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut next_line = |what: &str| match rx.recv_timeout(TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "natterd did not print {what}; log:\n{}",
                    std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
                );
            }
        };
        let tls_wanted = args.iter().any(|a| a.starts_with("--tls"));
        let plain_wanted = !args.contains(&"--no-plaintext");
        let mut addr = None;
        let mut tls = None;
        if plain_wanted {
            let line = next_line("its plaintext address");
            addr = line
                .strip_prefix("listening on ")
                .and_then(|a| a.parse().ok());
            assert!(addr.is_some(), "unexpected first line {line:?}");
        }
        if tls_wanted {
            let line = next_line("its TLS address");
            let rest = line.strip_prefix("listening on ").unwrap_or("");
            let (a, fingerprint) = rest
                .split_once(" tls sha256 ")
                .unwrap_or_else(|| panic!("unexpected TLS line {line:?}"));
            tls = Some((a.parse().expect("TLS address"), fingerprint.to_string()));
        }
        let (mut web, mut web_tls) = (None, None);
        let (want_web, want_web_tls) = (args.contains(&"--web"), args.contains(&"--web-tls"));
        // After the listening lines (and a metrics line, if any).
        while (want_web && web.is_none()) || (want_web_tls && web_tls.is_none()) {
            let line = next_line("its web address");
            let parse = |a: &str| a.trim_end_matches('/').parse().ok();
            if let Some(a) = line.strip_prefix("web on http://") {
                web = parse(a);
            } else if let Some(a) = line.strip_prefix("web on https://") {
                web_tls = parse(a);
            }
        }
        Server {
            child: Some(child),
            web,
            web_tls,
            // With --no-plaintext nothing listens here; connecting fails fast.
            addr: addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9))),
            tls,
            data: data.to_path_buf(),
            _dir: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            peer: None,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// A new connection with the greeting already read.
    pub fn connect(&self) -> Client {
        let mut c = Client::connect(self.addr);
        c.skip_greeting();
        c
    }

    /// A connection logged in as a newly registered user.
    pub fn user(&self, name: &str) -> Client {
        let mut c = self.connect();
        let reply = c.cmd(&format!("register {name} password-{name}"));
        assert_eq!(reply, vec![format!("+ registered {}", name.to_lowercase())]);
        c
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal and waits (bounded) for the exit.
    pub fn signal(&mut self, sig: i32) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("server running");
        let started = Instant::now();
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            if started.elapsed() > TIMEOUT {
                let _ = child.kill();
                panic!("natterd did not exit within {TIMEOUT:?} of signal {sig}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    /// Stops this server (SIGKILL) and starts another on the same data
    /// directory with the same flags.
    pub fn restart_after_kill(mut self) -> Server {
        self.kill();
        self.start_again()
    }

    /// Stops this server with SIGTERM (checking it exits cleanly) and starts
    /// another on the same data directory with the same flags.
    pub fn restart(mut self) -> Server {
        let (status, _) = self.signal(libc::SIGTERM);
        assert!(status.success(), "{status:?}");
        self.start_again()
    }

    /// Stops this server with SIGTERM (checking it exits cleanly) and starts
    /// another on the same data directory with other flags.
    pub fn restart_with(mut self, args: &[&str]) -> Server {
        let (status, _) = self.signal(libc::SIGTERM);
        assert!(status.success(), "{status:?}");
        self.args = args.iter().map(|a| a.to_string()).collect();
        if let Some(p) = &self.peer {
            self.args.extend(p.flags.iter().cloned());
        }
        self.start_again()
    }

    fn start_again(mut self) -> Server {
        let args: Vec<&str> = self.args.iter().map(|s| s.as_str()).collect();
        let mut next = Server::start_at(&self.data, &args);
        next._dir = self._dir.take();
        next.peer = self.peer.take();
        next
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A connection with a 4 KiB receive window, greeting read: a client on a
/// slow link, or one that stops reading, makes the server hold its output.
pub fn slow_link(server: &Server) -> Client {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket
        .connect_timeout(&server.addr.into(), TIMEOUT)
        .expect("connect");
    let mut c = Client::from_stream(TcpStream::from(socket));
    c.skip_greeting();
    c
}

/// The complete lines of what arrived: a line cut off at the end was not
/// delivered.
pub fn complete_lines(raw: &[u8]) -> Vec<String> {
    let end = raw.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    String::from_utf8_lossy(&raw[..end])
        .lines()
        .map(str::to_string)
        .collect()
}

/// One TCP connection to the server, reading line by line with timeouts.
/// Events (`*` lines) that arrive while a reply is awaited are kept aside
/// for `expect_event`.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
    pub events: VecDeque<String>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        Client::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Client {
            stream,
            reader,
            events: VecDeque::new(),
        }
    }

    /// Reads the hello and notice lines.
    pub fn skip_greeting(&mut self) {
        assert_eq!(self.line(), "* hello natter 1");
        loop {
            let line = self.line();
            assert!(line.starts_with("* notice "), "greeting line {line:?}");
            if line.contains("help") {
                break;
            }
        }
    }

    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next line from the server, without its LF. Fails on timeout or EOF.
    pub fn line(&mut self) -> String {
        self.try_line()
            .expect("connection closed while a line was expected")
    }

    /// The next line, or `None` at EOF. Fails on timeout.
    pub fn try_line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                assert_eq!(buf.pop(), Some(b'\n'), "line without LF: {buf:?}");
                Some(String::from_utf8(buf).expect("server sent invalid UTF-8"))
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no line from the server within {TIMEOUT:?}")
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Every whole line that arrives within `window` (a line cut off at the
    /// end is dropped), stopping early at EOF.
    pub fn lines_within(&mut self, window: Duration) -> Vec<String> {
        let until = Instant::now() + window;
        let mut lines = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            let mut buf = Vec::new();
            match self.reader.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) if buf.ends_with(b"\n") => {
                    buf.pop();
                    lines.push(String::from_utf8_lossy(&buf).into_owned());
                }
                Ok(_) => break,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => panic!("read failed: {e}"),
            }
        }
        self.stream
            .set_read_timeout(Some(TIMEOUT))
            .expect("timeout");
        lines
    }

    /// Reads one reply: data lines and the completion. Events are set aside.
    pub fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            if line.starts_with("* ") {
                assert!(lines.is_empty(), "event {line:?} inside a reply {lines:?}");
                self.events.push_back(line);
                continue;
            }
            let done = line.starts_with("+ ") || line.starts_with("- ");
            assert!(done || line.starts_with("= "), "unexpected line {line:?}");
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Sends a command and returns its reply.
    pub fn cmd(&mut self, line: &str) -> Vec<String> {
        self.send(line);
        self.reply()
    }

    /// Sends a command and returns the completion line of its reply.
    pub fn cmd1(&mut self, line: &str) -> String {
        let mut reply = self.cmd(line);
        reply.pop().expect("completion")
    }

    /// Waits for the next event (set-aside ones first).
    pub fn event(&mut self) -> String {
        if let Some(e) = self.events.pop_front() {
            return e;
        }
        let line = self.line();
        assert!(line.starts_with("* "), "expected an event, got {line:?}");
        line
    }

    /// Logs in and checks the welcome.
    pub fn login(&mut self, user: &str, password: &str) {
        let reply = self.cmd1(&format!("login {user} {password}"));
        assert!(reply.starts_with(&format!("+ welcome {user} ")), "{reply}");
    }

    /// Everything left until the server's side is closed, raw (what the
    /// kernel had accepted still arrives after natterd is killed).
    pub fn read_to_end(&mut self) -> Vec<u8> {
        use std::io::Read;
        let mut raw = self.reader.buffer().to_vec();
        self.reader.consume(raw.len());
        let mut chunk = [0u8; 65536];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return raw,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return raw,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Reads `inbox` until it is empty; returns every row, in order.
    pub fn drain_inbox(&mut self) -> Vec<String> {
        let mut rows = Vec::new();
        loop {
            let mut reply = self.cmd("inbox");
            let done = reply.pop().expect("a completion");
            assert!(done.starts_with("+ "), "inbox failed: {done}");
            if reply.is_empty() {
                return rows;
            }
            rows.extend(reply);
        }
    }

    /// Waits until the server closes the connection, returning what came before.
    pub fn until_closed(&mut self) -> Vec<String> {
        let mut lines: Vec<String> = self.events.drain(..).collect();
        while let Some(line) = self.try_line() {
            lines.push(line);
        }
        lines
    }

    /// Every line that arrives before the `+ pong` of a `ping` sent now,
    /// events set aside earlier included: empty proves that nothing was
    /// waiting for this client. The server answers each connection in order
    /// and queues a push while it handles the command that causes it, so
    /// whatever a command already answered would have sent this client
    /// arrives before the pong. Needs a logged-in client.
    pub fn arrived_before_pong(&mut self) -> Vec<String> {
        let mut lines: Vec<String> = self.events.drain(..).collect();
        self.send("ping");
        loop {
            let line = self.line();
            if line == "+ pong" {
                return lines;
            }
            lines.push(line);
        }
    }

    /// Round-trip time of a `ping`.
    pub fn ping(&mut self) -> Duration {
        let started = Instant::now();
        assert_eq!(self.cmd1("ping"), "+ pong");
        started.elapsed()
    }

    /// The median of 21 ping round trips: this client's normal latency, to
    /// compare later round trips with (see [`stall_bound`]).
    pub fn ping_baseline(&mut self) -> Duration {
        let mut samples: Vec<Duration> = (0..21).map(|_| self.ping()).collect();
        samples.sort();
        samples[samples.len() / 2]
    }
}
