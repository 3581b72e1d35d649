//! Fixtures for natter-bench's end-to-end tests: the natterd of this
//! workspace, built once and found through cargo's own report of what it
//! built (never a stale binary that happens to lie in a target directory),
//! started on free ports; a PostgreSQL and a Redis of the tests' own for
//! cluster nodes; and running natter-bench with a deadline.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long one natter-bench run may take. The tests pass `--max-seconds 8`;
/// this is only the backstop that turns a hang into a failure.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

#[path = "../../../tests/support/natterd.rs"]
mod support;
pub use support::{Server, TLS_FLAGS};

#[path = "../../../tests/support/postgres.rs"]
pub mod pg;
#[path = "../../../tests/support/redis.rs"]
pub mod redis;

/// The natter-bench binary under test.
pub fn bench_bin() -> &'static str {
    env!("CARGO_BIN_EXE_natter-bench")
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
