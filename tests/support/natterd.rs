//! What the client's and the bench's end-to-end tests both need of natterd,
//! written once and included by each (`#[path]`): this workspace's binary,
//! a child process on free ports with its own data directory, and the flags
//! of a TLS test server. (The server's own tests use `CARGO_BIN_EXE_natterd`,
//! which only its own package gets.) Each includer uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::Duration;

/// How long natterd may take to print where it listens (it may be built
/// first, but `natterd()` has done that before the clock starts).
const START_TIMEOUT: Duration = Duration::from_secs(20);

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

/// This workspace's natterd, built (or found up to date) by cargo once per
/// test binary. A binary that merely sits in the target directory may be
/// stale, from another checkout, or from before the change under test;
/// cargo knows which one belongs to this source, so ask it and take the
/// path its `compiler-artifact` message reports. Panics (failing every test
/// that needs a server) if the build fails or names no executable.
pub fn natterd() -> &'static Path {
    static NATTERD: OnceLock<PathBuf> = OnceLock::new();
    NATTERD.get_or_init(|| {
        // Both crates that include this file sit one level below the workspace.
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        let out = Command::new(env!("CARGO"))
            .args(["build", "-p", "natter", "--bin", "natterd"])
            .args(["--message-format=json", "--manifest-path", manifest])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo to build natterd");
        assert!(
            out.status.success(),
            "cargo build -p natter --bin natterd failed: {}",
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|msg| {
                msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "natterd"
            })
            .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
            .unwrap_or_else(|| {
                panic!("cargo built natterd but reported no executable for it:\n{stdout}")
            });
        assert!(
            path.is_file(),
            "cargo reported {path:?}, which is not a file"
        );
        path
    })
}

/// natterd's TLS listener, from its second `listening on` line.
pub struct TlsListener {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The certificate's SHA-256, as natterd prints it (`AB:CD:...`).
    pub fingerprint: String,
}

/// A natterd child process with its own data directory, killed when dropped.
pub struct Server {
    child: Child,
    /// Where it listens in plaintext.
    pub addr: SocketAddr,
    /// The TLS listener, when started with a TLS flag.
    pub tls: Option<TlsListener>,
    /// The web listener, when started with `--web`.
    pub web: Option<SocketAddr>,
    /// Removed after the process is gone.
    data: tempfile::TempDir,
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
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            web: None,
            data,
        };
        // The server is dropped (killed) by the panics below.
        let next = |what: &str| {
            lines
                .recv_timeout(START_TIMEOUT)
                .unwrap_or_else(|_| panic!("natterd did not print {what} in {START_TIMEOUT:?}"))
        };
        let line = next("where it listens");
        server.addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from natterd: {line:?}"));
        if flags.iter().any(|f| f.starts_with("--tls")) {
            let line = next("where it listens for TLS");
            server.tls = Some(
                parse_tls_line(&line)
                    .unwrap_or_else(|| panic!("unexpected TLS line from natterd: {line:?}")),
            );
        }
        if flags.contains(&"--web") {
            let line = next("where it serves the web page");
            server.web = line
                .trim()
                .strip_prefix("web on http://")
                .and_then(|a| a.trim_end_matches('/').parse().ok());
            assert!(
                server.web.is_some(),
                "unexpected web line from natterd: {line:?}"
            );
        }
        server
    }

    /// The plaintext port, as `natter` and natter-bench take it.
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// natterd's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The TLS listener; panics if the server was started without TLS.
    pub fn tls(&self) -> &TlsListener {
        self.tls.as_ref().expect("natterd was started with TLS")
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `listening on <addr> tls sha256 <fingerprint>`, taken apart.
fn parse_tls_line(line: &str) -> Option<TlsListener> {
    let rest = line.trim().strip_prefix("listening on ")?;
    let (addr, fingerprint) = rest.split_once(" tls sha256 ")?;
    Some(TlsListener {
        addr: addr.parse().ok()?,
        fingerprint: fingerprint.to_string(),
    })
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
