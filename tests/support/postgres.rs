//! A PostgreSQL server of the tests' own: `initdb` in a temporary
//! directory, `postgres` on a free 127.0.0.1 port with trust
//! authentication, started once per test process and stopped when it exits
//! (and killed by the kernel if the process dies first). Each caller of
//! [`database`] gets a fresh database on it. Included by `#[path]` wherever
//! tests need it (the store's unit tests, the server's tests).
//!
//! If PostgreSQL is not installed or does not start, [`database`] panics
//! with what to install: a PostgreSQL test must fail, never pass unrun.
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

struct Cluster {
    port: u16,
    dir: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static POSTMASTER: AtomicU32 = AtomicU32::new(0);
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// A URL of a new, empty database on the tests' PostgreSQL server.
pub fn database() -> String {
    let cluster = match CLUSTER.get_or_init(start) {
        Ok(cluster) => cluster,
        Err(e) => panic!("PostgreSQL tests cannot run: {e}"),
    };
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::SeqCst)
    );
    let mut admin = postgres::Client::connect(
        &format!("postgres://natter@127.0.0.1:{}/postgres", cluster.port),
        postgres::NoTls,
    )
    .unwrap_or_else(|e| panic!("PostgreSQL tests cannot run: cannot connect: {e}"));
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("PostgreSQL tests cannot run: CREATE DATABASE: {e}"));
    format!("postgres://natter@127.0.0.1:{}/{name}", cluster.port)
}

/// Where the server's binaries are: `NATTER_PG_BIN`, else the newest
/// Debian `/usr/lib/postgresql/<version>/bin`, else `pg_config --bindir`.
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("NATTER_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output();
    match out {
        Ok(out) if out.status.success() => Ok(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )),
        _ => Err(
            "PostgreSQL is not installed (apt-get install postgresql; or set NATTER_PG_BIN)"
                .to_string(),
        ),
    }
}

/// PostgreSQL refuses to run as root: as root, the server runs as the
/// `postgres` user the Debian package makes.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").map_err(|e| e.to_string())?;
    // SAFETY: a valid C string; the result is read before any other
    // getpw* call on this thread.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err("running as root, and there is no `postgres` user to run PostgreSQL as".into());
    }
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn command(bin: &Path, user: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(bin);
    if let Some((uid, gid)) = user {
        c.uid(uid).gid(gid);
    }
    c
}

fn start() -> Result<Cluster, String> {
    let bin = bin_dir()?;
    let user = run_as()?;
    let dir = tempfile::Builder::new()
        .prefix("natter-pg")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    let data = dir.join("data");
    let out = command(&bin.join("initdb"), user)
        .args([
            "--auth=trust",
            "--username=natter",
            "--encoding=UTF8",
            "--no-sync",
        ])
        .arg("-D")
        .arg(&data)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.join("initdb").display()))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    // Spawned from a thread that lives as long as the process: the kernel
    // sends the server SIGKILL when the thread that started it ends
    // (PR_SET_PDEATHSIG), so it must not be a test's thread.
    let (started, result) = mpsc::channel();
    let postgres = bin.join("postgres");
    let (log_dir, sock_dir) = (dir.clone(), dir.clone());
    std::thread::Builder::new()
        .name("postgres-keeper".into())
        .spawn(move || {
            let log = std::fs::File::create(log_dir.join("postgres.log"));
            let mut c = command(&postgres, user);
            c.arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .arg("-k")
                .arg(&sock_dir)
                // The tests need the server's behaviour, not its durability
                // across a power cut; synchronous_commit stays on.
                .args(["-c", "fsync=off", "-c", "max_connections=300"])
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            if let Ok(log) = log {
                c.stderr(log);
            }
            // SAFETY: prctl is async-signal-safe and touches only the child.
            unsafe {
                c.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            match c.spawn() {
                Ok(child) => {
                    POSTMASTER.store(child.id(), Ordering::SeqCst);
                    let _ = started.send(Ok(()));
                    // SAFETY: registering a plain extern "C" fn.
                    unsafe { libc::atexit(stop) };
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = started.send(Err(format!("cannot start postgres: {e}")));
                }
            }
        })
        .map_err(|e| e.to_string())?;
    result
        .recv()
        .map_err(|_| "the postgres keeper thread died".to_string())??;
    let deadline = Instant::now() + START_TIMEOUT;
    let url = format!("postgres://natter@127.0.0.1:{port}/postgres");
    loop {
        match postgres::Client::connect(&url, postgres::NoTls) {
            Ok(_) => return Ok(Cluster { port, dir }),
            Err(e) if Instant::now() > deadline => {
                let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
                return Err(format!("postgres did not start: {e}\n{log}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// At exit: a fast shutdown, then the directory goes.
extern "C" fn stop() {
    let pid = POSTMASTER.load(Ordering::SeqCst);
    if pid == 0 {
        return;
    }
    // SAFETY: signalling a child we started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGQUIT) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let mut status = 0;
        // SAFETY: reaping our own child; WNOHANG never blocks.
        if unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) } != 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(Ok(cluster)) = CLUSTER.get() {
        let _ = std::fs::remove_dir_all(&cluster.dir);
    }
}
