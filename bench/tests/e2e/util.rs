//! Fixtures for natter-bench's end-to-end tests: the natterd of this
//! workspace, built once and found through cargo's own report of what it
//! built (never a stale binary that happens to lie in a target directory),
//! started on free ports; and running natter-bench with a deadline.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long natterd may take to print where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one natter-bench run may take. The tests pass `--max-seconds 8`;
/// this is only the backstop that turns a hang into a failure.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The flags a TLS test server gets: a self-signed certificate for both
/// names a test may connect by, on a free port.
pub const TLS_FLAGS: &[&str] = &[
    "--hash-cost",
    "low",
    "--rate",
    "0",
    "--max-per-ip",
    "0",
    "--tls-self-signed",
    "localhost,127.0.0.1",
    "--tls-port",
    "0",
];

/// The natter-bench binary under test.
pub fn bench_bin() -> &'static str {
    env!("CARGO_BIN_EXE_natter-bench")
}

/// natterd as built from this workspace now: `cargo build -p natter --bin
/// natterd` is run once per test binary (cheap when it is up to date) and
/// the executable is the one its `compiler-artifact` message names.
fn natterd() -> &'static Path {
    static NATTERD: OnceLock<PathBuf> = OnceLock::new();
    NATTERD.get_or_init(|| {
        let out = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "natter",
                "--bin",
                "natterd",
                "--message-format=json",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .output()
            .expect("run cargo to build natterd");
        assert!(
            out.status.success(),
            "building natterd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "natterd")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo build reported no natterd executable")
    })
}

/// natterd's TLS listener, from its second `listening on` line.
pub struct TlsListener {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The certificate's SHA-256, as natterd prints it.
    pub fingerprint: String,
}

/// A natterd child process with its own data directory, killed when dropped.
pub struct Server {
    child: Child,
    addr: SocketAddr,
    tls: Option<TlsListener>,
    /// Kept so the directory lives as long as the process.
    _data: tempfile::TempDir,
}

impl Server {
    /// Starts natterd on port 0 with `flags` (besides `--data`) and waits,
    /// bounded, for the line(s) saying where it listens.
    pub fn start_with(flags: &[&str]) -> Server {
        let data = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(natterd())
            .arg("--data")
            .arg(data.path())
            .args(flags)
            .arg("0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start natterd");
        let lines = lines_of(child.stdout.take().expect("natterd stdout"));
        let next = |what: &str| {
            lines
                .recv_timeout(START_TIMEOUT)
                .unwrap_or_else(|_| panic!("natterd did not print {what} in {START_TIMEOUT:?}"))
        };
        let plain = next("where it listens");
        let addr = plain
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok());
        let tls = flags.iter().any(|f| f.starts_with("--tls")).then(|| {
            let line = next("where it listens for TLS");
            let listener = line
                .strip_prefix("listening on ")
                .and_then(|rest| rest.trim().split_once(" tls sha256 "))
                .and_then(|(addr, fingerprint)| {
                    Some(TlsListener {
                        addr: addr.parse().ok()?,
                        fingerprint: fingerprint.to_string(),
                    })
                });
            listener.unwrap_or_else(|| panic!("unexpected TLS line from natterd: {line:?}"))
        });
        let Some(addr) = addr else {
            let _ = child.kill();
            panic!("unexpected first line from natterd: {plain:?}");
        };
        Server {
            child,
            addr,
            tls,
            _data: data,
        }
    }

    /// The plaintext port, as natter-bench's `--port` takes it.
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// natterd's process id, for `--server-pid`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The TLS listener; panics if the server was started without TLS.
    pub fn tls(&self) -> &TlsListener {
        self.tls.as_ref().expect("natterd was started with TLS")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of a child's output, read to the end on a thread so the child
/// never writes into a full or closed pipe.
fn lines_of(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// What a finished natter-bench run left.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to the end with no input, within [`RUN_TIMEOUT`]; kills it and
/// panics if it does not finish.
pub fn run(cmd: &mut Command) -> Run {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start natter-bench");
    let collect = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let stdout = collect(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = collect(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for natter-bench") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("natter-bench did not finish within {RUN_TIMEOUT:?}");
        }
        // std has no wait with a timeout; the exit is polled.
        thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}
