//! The `login` scenario: `--concurrency` threads, each repeatedly opening a
//! fresh connection, logging in and quitting. What it measures is mostly the
//! server's password hashing (its --hash-cost), plus accepting and closing a
//! connection. Each thread logs in its own user, so no login replaces
//! another's session.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::args::Args;
use crate::error::BenchError;
use crate::progress::join_with_progress;
use crate::report::{Report, Value};
use crate::setup::{dial, expect_ok, home, open_spread, send, Target, STOPPED};
use crate::stats::{per_sec, secs, Latency};
use crate::sys::CpuWatch;

/// Runs the scenario.
pub fn run(a: &Args, targets: &[Target]) -> Result<Report, BenchError> {
    let names: Vec<String> = (0..a.concurrency)
        .map(|i| format!("{}l{i}", a.users_prefix))
        .collect();
    let setup_deadline = Instant::now() + Duration::from_secs(a.max_seconds);
    // Each user logs in on the node it was set up on, where it is known
    // from the start.
    let mut users = open_spread(targets, &names, setup_deadline, "setup")?;
    for s in &users {
        send(s, "quit")?;
    }
    for s in &mut users {
        expect_ok(s, setup_deadline, "quit")?;
    }
    drop(users);

    let start = Instant::now();
    let cap = start + Duration::from_secs(a.max_seconds);
    let tickets = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    let cpu = CpuWatch::start(a.server_pid);
    let results: Vec<Result<(Latency, Option<Instant>), BenchError>> = thread::scope(|s| {
        let workers: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let (tickets, done, abort) = (&tickets, &done, &abort);
                let target = targets[home(i, targets.len())];
                s.spawn(move || {
                    let mut latency = Latency::new();
                    let mut last = None;
                    while tickets.fetch_add(1, Ordering::Relaxed) < a.logins {
                        if abort.load(Ordering::Relaxed) {
                            return Err(BenchError::new(STOPPED));
                        }
                        if Instant::now() >= cap {
                            break;
                        }
                        let r = login_once(target, name, cap + Duration::from_secs(5));
                        match r {
                            Ok(took) => {
                                latency.record_duration(took);
                                last = Some(Instant::now());
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                abort.store(true, Ordering::SeqCst);
                                return Err(e);
                            }
                        }
                    }
                    Ok((latency, last))
                })
            })
            .collect();
        join_with_progress("login", a.logins, &done, workers)
    });
    let mut latency = Latency::new();
    let mut last = None;
    let mut first_err: Option<BenchError> = None;
    for r in results {
        match r {
            Ok((l, t)) => {
                latency.merge(&l);
                last = last.max(t);
            }
            Err(e) if first_err.as_ref().is_none_or(|f| f.0 == STOPPED) => first_err = Some(e),
            Err(_) => {}
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let logins = latency.count();
    let elapsed = last.map_or(Duration::ZERO, |l| l.duration_since(start));
    let mut report = Report::new(
        "login",
        format!(
            "{} concurrent connections, each connect + login + quit",
            a.concurrency
        ),
    );
    report.nodes(targets.len());
    report.field(
        "concurrency",
        "concurrency",
        Value::Int(a.concurrency as u64),
    );
    report.field("logins", "logins", Value::Int(logins));
    report.field("seconds", "secs", secs(elapsed));
    report.field("logins_per_sec", "logins/s", per_sec(logins, elapsed));
    report.field("p50_ms", "p50 ms", latency.quantile_ms(0.5));
    report.field("p99_ms", "p99 ms", latency.quantile_ms(0.99));
    report.field("max_ms", "max ms", latency.max_ms());
    cpu.finish(&mut report);
    if logins < a.logins {
        report.notes.push(format!(
            "stopped at --max-seconds {} after {logins} of {} logins",
            a.max_seconds, a.logins
        ));
    }
    report
        .notes
        .push("the rate depends on natterd's --hash-cost (low or normal)".into());
    Ok(report)
}

/// Connects, logs in and quits; returns the time from connecting to the
/// welcome.
fn login_once(target: Target, name: &str, deadline: Instant) -> Result<Duration, BenchError> {
    let t0 = Instant::now();
    let mut s = dial(target, deadline)?;
    send(&s, &format!("login {name} {}", target.password))?;
    let welcome = expect_ok(&mut s, deadline, &format!("login {name}"))?;
    let took = t0.elapsed();
    if !welcome.starts_with("welcome") {
        return Err(BenchError::new(format!(
            "login {name}: unexpected reply + {welcome}"
        )));
    }
    send(&s, "quit")?;
    expect_ok(&mut s, deadline, "quit")?;
    Ok(took)
}
