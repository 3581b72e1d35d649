//! Input-side CPU cost per command, without sockets: how fast
//! [`LineFramer::next_frame`] splits a buffer of typical pipelined command
//! lines (bytes/s), and how fast [`commands::parse`] turns a mix of command
//! lines into commands (lines/s). Run with `cargo bench --bench framing`
//! (add `-- --quick` for a fast rough look).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use natter::commands::{self, Command, ParseError};
use natter::session::{Frame, LineFramer};

/// Lines in the framing buffer: enough (about 400 KiB) that the per-call
/// overhead of the benchmark loop is noise next to the framing itself,
/// yet small enough to stay in the L2/L3 cache like a hot input buffer.
const FRAMED_LINES: usize = 10_000;

/// The server's default `--max-line`.
const MAX_LINE: usize = 4096;

/// Command lines as a logged-in client sends them, weighted towards the
/// chatty commands (`send`, `broadcast`) that dominate real traffic.
const LOGGED_IN_MIX: &[&str] = &[
    "send bob hi bob, are you coming to lunch today?",
    "send carol_2 the build is green again",
    "send Dave.K ok",
    "broadcast deploy starts in five minutes, please push now",
    "broadcast message lunch?",
    "broadcast user bob carol dave message standup moved to 10:30",
    "send bob\tsee the ticket, it has a tab in it",
    "ping",
    "whoelse",
    "history",
    "history bob 50",
    "inbox",
    "wholast 60",
    "block mallory",
    "send erin this one is a little longer: it carries the kind of paragraph people paste when they explain something, with punctuation, numbers like 42 and 3.14, and no control characters",
];

/// Lines a client sends before logging in.
const LOGGED_OUT_MIX: &[&str] = &[
    "login alice correct horse battery",
    "register u17 password-u17",
];

fn framing(c: &mut Criterion) {
    let mut input = Vec::new();
    for i in 0..FRAMED_LINES {
        input.extend_from_slice(LOGGED_IN_MIX[i % LOGGED_IN_MIX.len()].as_bytes());
        // Some clients (telnet) end lines with CRLF; the framer strips the CR.
        input.extend_from_slice(if i % 8 == 0 { b"\r\n" } else { b"\n" });
    }

    let mut group = c.benchmark_group("framing");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("next_frame", |b| {
        b.iter(|| {
            let mut framer = LineFramer::new(MAX_LINE);
            let buf = black_box(&input[..]);
            let mut at = 0;
            let mut lines = 0usize;
            let mut line_bytes = 0usize;
            loop {
                match framer.next_frame(&buf[at..]) {
                    (0, None) => break,
                    (used, frame) => {
                        at += used;
                        match frame {
                            Some(Frame::Line(line)) => {
                                lines += 1;
                                line_bytes += line.len();
                            }
                            Some(Frame::TooLong) => panic!("framer called a typical line too long"),
                            None => {}
                        }
                    }
                }
            }
            assert_eq!(lines, FRAMED_LINES, "framer lost or invented lines");
            black_box(line_bytes)
        })
    });
    group.finish();
}

fn parsing(c: &mut Criterion) {
    // (line, logged_in) pairs as the reactor would hand them to `parse`.
    let mix: Vec<(&str, Option<&str>)> = LOGGED_IN_MIX
        .iter()
        .map(|l| (*l, Some("alice")))
        .chain(LOGGED_OUT_MIX.iter().map(|l| (*l, None)))
        .collect();
    // Every line of the mix is valid, so an Err means the bench no longer
    // measures the path it claims to (or parse regressed).
    for (line, logged_in) in &mix {
        if let Err(e) = commands::parse(line, *logged_in) {
            panic!(
                "bench line {line:?} no longer parses: {}",
                String::from_utf8_lossy(&e.reply())
            );
        }
    }

    let mut group = c.benchmark_group("parse");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(mix.len() as u64));
    group.bench_function("command_mix", |b| {
        b.iter(|| {
            let mut parsed = 0usize;
            for (line, logged_in) in &mix {
                let cmd: Result<Command, ParseError> =
                    commands::parse(black_box(line), black_box(*logged_in));
                parsed += usize::from(black_box(cmd).is_ok());
            }
            parsed
        })
    });
    group.finish();
}

criterion_group!(benches, framing, parsing);
criterion_main!(benches);
