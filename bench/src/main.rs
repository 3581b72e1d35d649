//! natter-bench: the load generator for natterd, in its own crate so the
//! client crate stays the blocking two-thread client. It owns the scenarios,
//! their non-blocking I/O and their statistics; it connects and parses
//! setup replies through natter-client and reads the protocol's words and
//! line shapes from natter-proto, never spelling them itself.
//!
//! `main` parses and checks the
//! arguments, raises the open-file limit, and runs each scenario in turn,
//! printing its report; the scenarios live in their own modules and share
//! the session setup (`setup`), the non-blocking line I/O (`lines`), the
//! statistics (`stats`) and the report format (`report`).

mod args;
mod dm;
mod error;
mod fanout;
mod idle;
mod lines;
mod login;
mod progress;
mod report;
mod setup;
mod stats;
mod sys;
mod ws;

use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use clap::Parser;

use args::{Args, Scenario};
use error::BenchError;
use setup::Target;

/// Pause between scenarios, so natterd has closed the sessions of one before
/// the next opens its own (they count against --max-clients).
const BETWEEN: Duration = Duration::from_millis(500);

/// Descriptors the bench needs beyond its sessions (stdio, pollers, spares).
const SPARE_FDS: u64 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("natter-bench: {e}");
        return ExitCode::from(2);
    }
    let tls = match args.tls_config() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("natter-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let scenarios = args.scenarios();
    let most_sessions = scenarios
        .iter()
        .map(|s| match s {
            Scenario::Fanout => args.receivers + 2,
            Scenario::Dm => 2 * args.pairs,
            Scenario::Idle => args.sessions,
            Scenario::Login => args.concurrency,
        })
        .max()
        .unwrap_or(0) as u64;
    match sys::raise_nofile_limit() {
        Ok(limit) if limit < most_sessions + SPARE_FDS => eprintln!(
            "natter-bench: warning: the open-file limit is {limit}, below the \
             {most_sessions} sessions asked for; raise the hard limit (ulimit -Hn)"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("natter-bench: warning: cannot raise the open-file limit: {e}"),
    }
    let nodes = args.nodes();
    let targets: Vec<Target> = nodes
        .iter()
        .map(|node| Target {
            host: &node.host,
            port: node.port,
            password: &args.password,
            tls: tls.as_ref(),
        })
        .collect();
    for (i, scenario) in scenarios.iter().enumerate() {
        if i > 0 {
            thread::sleep(BETWEEN);
        }
        let result = match scenario {
            Scenario::Fanout => fanout::run(&args, &targets),
            Scenario::Dm => dm::run(&args, &targets),
            Scenario::Idle => idle::run(&args, &targets),
            Scenario::Login => login::run(&args, &targets),
        };
        let shown = result.and_then(|report| {
            if args.json {
                report
                    .json()
                    .map_err(|e| BenchError::new(format!("cannot write the JSON report: {e}")))
            } else {
                Ok(report.table())
            }
        });
        match shown {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("natter-bench: {}: {e}", scenario.name());
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
