//! The `idle` scenario: hold C logged-in sessions that do nothing, and read
//! natterd's resident memory before and after. The figure per session is an
//! upper bound: it also holds whatever opening the sessions left behind
//! (new accounts, allocator slack from hashing). For the tightest figure, run
//! once to create the users, restart natterd on the same --data, run again.

use std::thread;
use std::time::{Duration, Instant};

use crate::args::Args;
use crate::error::BenchError;
use crate::report::{Report, Value};
use crate::setup::{expect_ok, first, home, open_spread, send, Target};
use crate::stats::{per_sec, secs};
use crate::sys::vm_rss_kib;
use crate::ws::{self, WsTarget};

/// Wait after the last login before reading memory, so replies still being
/// freed or written do not count.
const SETTLE: Duration = Duration::from_millis(500);

/// Sessions pinged afterwards to check they are still held.
const CHECKED: usize = 100;

/// Runs the scenario.
pub fn run(a: &Args, targets: &[Target]) -> Result<Report, BenchError> {
    let target = first(targets)?;
    let nodes = targets.len();
    let rss = |pid: u32| {
        vm_rss_kib(pid).map_err(|e| BenchError::new(format!("reading /proc/{pid}/status: {e}")))
    };
    let before = a.server_pid.map(rss).transpose()?;
    let names: Vec<String> = (0..a.sessions)
        .map(|i| format!("{}i{i}", a.users_prefix))
        .collect();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(a.max_seconds);
    let (opened, after, checked) = match a.ws {
        None => {
            let mut sessions = open_spread(targets, &names, deadline, "idle")?;
            let opened = start.elapsed();
            thread::sleep(SETTLE);
            let after = a.server_pid.map(rss).transpose()?;
            // Pipelined pings on a spread of sessions: they must all still be there.
            let checked = spread(sessions.len());
            for &i in &checked {
                send(&sessions[i], "ping")?;
            }
            let check_deadline = Instant::now() + Duration::from_secs(a.max_seconds);
            for &i in &checked {
                expect_ok(&mut sessions[i], check_deadline, "ping (idle session)")?;
            }
            (opened, after, checked.len())
        }
        Some(port) => {
            let ws_target = WsTarget {
                host: target.host,
                port,
                password: target.password,
            };
            let mut sessions = ws::open_sessions(ws_target, &names, deadline, "idle")?;
            let opened = start.elapsed();
            thread::sleep(SETTLE);
            let after = a.server_pid.map(rss).transpose()?;
            let checked = spread(sessions.len());
            for &i in &checked {
                sessions[i].send("ping")?;
            }
            let check_deadline = Instant::now() + Duration::from_secs(a.max_seconds);
            for &i in &checked {
                sessions[i].expect_ok(check_deadline, "ping (idle session)")?;
            }
            (opened, after, checked.len())
        }
    };

    let over = if a.ws.is_some() {
        " over WebSocket"
    } else {
        ""
    };
    let mut report = Report::new(
        "idle",
        format!("{} logged-in idle sessions{over}", a.sessions),
    );
    report.nodes(nodes);
    report.field("sessions", "sessions", Value::Int(a.sessions as u64));
    report.field("setup_seconds", "setup secs", secs(opened));
    report.field(
        "sessions_per_sec",
        "sessions/s",
        per_sec(a.sessions as u64, opened),
    );
    let kib = |v: Option<u64>| v.map_or(Value::Missing, Value::Int);
    report.field("rss_before_kib", "rss before KiB", kib(before));
    report.field("rss_after_kib", "rss after KiB", kib(after));
    // --server-pid is one process: the first node's, holding its share.
    let measured = (0..a.sessions).filter(|&i| home(i, nodes) == 0).count();
    let per_session = match (before, after) {
        (Some(b), Some(f)) if measured > 0 => {
            Value::Float(f.saturating_sub(b) as f64 * 1024.0 / measured as f64, 0)
        }
        _ => Value::Missing,
    };
    report.field("bytes_per_session", "bytes/session", per_session);
    report.field("checked_alive", "checked alive", Value::Int(checked as u64));
    if a.server_pid.is_none() {
        report
            .notes
            .push("memory not measured: give --server-pid <natterd's pid> (same machine)".into());
    } else {
        report.notes.push(
            "per-session memory includes account creation and hashing left-overs: an upper bound"
                .into(),
        );
        if nodes > 1 {
            report.notes.push(format!(
                "memory is the first node's (--server-pid), per its {measured} sessions"
            ));
        }
    }
    Ok(report)
}

/// About `CHECKED` sessions spread over `n`.
fn spread(n: usize) -> Vec<usize> {
    let step = (n / CHECKED).max(1);
    (0..n).step_by(step).collect()
}
