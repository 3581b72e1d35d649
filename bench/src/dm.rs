//! The `dm` scenario: P sender→receiver pairs. Each sender pipelines `send`
//! with at most `--window` unacknowledged; natterd acknowledges only after
//! the message is committed, so acknowledged messages/s is the durable
//! throughput. Pairs are spread over a few threads, each owning both ends of
//! its pairs, so it can tell alone when its pairs are done. With
//! `--rate-limit` each sender follows a fixed schedule and latency counts
//! from when a message was due, not when it left: a server that falls behind
//! shows as latency instead of silently slowing the sender. With `--nodes`,
//! the senders are on the first node and their receivers on the others, so
//! every acknowledgement is of a message that crossed nodes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use natter_proto::{split_line, EventKind, Line};

use crate::args::Args;
use crate::error::BenchError;
use crate::fanout::{nanos, GRACE, POLL_WAIT};
use crate::lines::{event, push_text, stamp, Conn};
use crate::progress::join_with_progress;
use crate::report::{Report, Value};
use crate::setup::{
    completion, expect_ok, first, open_sessions, open_spread, send, wait_until_listed, Session,
    Target, STOPPED,
};
use crate::stats::{per_sec, secs, Latency};
use crate::sys::CpuWatch;

/// One sender's progress.
struct Sender {
    conn: Conn,
    /// `send <receiver> `, the start of every line.
    prefix: Vec<u8>,
    /// Messages to send: `--messages`, or what was sent when the cap hit.
    limit: u64,
    sent: u64,
    acked: u64,
    /// Acknowledgements that said `+ stored` (receiver offline).
    stored: u64,
    /// When the next message is due, in epoch nanoseconds (rate limit only).
    due: u64,
    /// Send (or due) times of unacknowledged messages, oldest first: replies
    /// come in order.
    in_flight: VecDeque<u64>,
}

/// What one thread measured.
#[derive(Default)]
struct Measured {
    delivery: Latency,
    ack: Latency,
    acked: u64,
    delivered: u64,
    stored: u64,
    sent: u64,
    last_ack: Option<Instant>,
}

/// Runs the scenario.
pub fn run(a: &Args, targets: &[Target]) -> Result<Report, BenchError> {
    let target = first(targets)?;
    let nodes = targets.len();
    let p = &a.users_prefix;
    let setup_deadline = Instant::now() + Duration::from_secs(a.max_seconds);
    let sessions = if nodes == 1 {
        let mut names = Vec::with_capacity(2 * a.pairs);
        for i in 0..a.pairs {
            names.push(format!("{p}ds{i}"));
            names.push(format!("{p}dr{i}"));
        }
        open_sessions(target, &names, setup_deadline, "pairs")?
    } else {
        cross_node_pairs(a, targets, setup_deadline)?
    };
    let threads = a.threads.min(a.pairs);
    let mut groups: Vec<Vec<(Sender, Conn)>> = (0..threads).map(|_| Vec::new()).collect();
    // Without a rate limit `due` stays 0 (always due); with one, pair i
    // starts i/P of an interval late so the pairs do not send in lockstep.
    let interval = a
        .rate_limit
        .map(|r| (a.pairs as u64).saturating_mul(1_000_000_000) / r.max(1));
    let mut it = sessions.into_iter();
    for i in 0..a.pairs {
        let (Some(s), Some(r)) = (it.next(), it.next()) else {
            return Err(BenchError::new("fewer sessions than pairs"));
        };
        let sender = Sender {
            conn: Conn::from_reader(s)?,
            prefix: format!("send {p}dr{i} ").into_bytes(),
            limit: a.messages,
            sent: 0,
            acked: 0,
            stored: 0,
            due: interval.map_or(0, |iv| iv * i as u64 / a.pairs as u64),
            in_flight: VecDeque::with_capacity(a.window.min(1 << 16) as usize),
        };
        groups[i % threads].push((sender, Conn::from_reader(r)?));
    }

    let readers = history_readers(a, target, setup_deadline)?;
    let reads_total = AtomicU64::new(0);
    let readers_stop = AtomicBool::new(false);
    let flooders = list_flooders(a, target, setup_deadline)?;
    let floods_total = AtomicU64::new(0);
    let rss_peak = AtomicU64::new(0);

    let epoch = Instant::now();
    let cap = epoch + Duration::from_secs(a.max_seconds);
    let hard = cap + GRACE;
    let acked_total = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    let cpu = CpuWatch::start(a.server_pid);
    let results: Vec<Result<Measured, BenchError>> = thread::scope(|s| {
        let reading: Vec<_> = readers
            .into_iter()
            .map(|session| {
                let (reads_total, stop) = (&reads_total, &readers_stop);
                s.spawn(move || read_history(session, reads_total, stop, hard))
            })
            .chain(flooders.into_iter().map(|(session, line)| {
                let (floods_total, stop) = (&floods_total, &readers_stop);
                s.spawn(move || flood_lists(session, &line, floods_total, stop, hard))
            }))
            .collect();
        if a.list_flooders > 0 {
            if let Some(pid) = a.server_pid {
                let (peak, stop) = (&rss_peak, &readers_stop);
                s.spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok(kib) = crate::sys::vm_rss_kib(pid) {
                            peak.fetch_max(kib, Ordering::Relaxed);
                        }
                        thread::sleep(Duration::from_millis(50));
                    }
                });
            }
        }
        let workers: Vec<_> = groups
            .into_iter()
            .map(|pairs| {
                let (acked_total, abort) = (&acked_total, &abort);
                s.spawn(move || {
                    let ctx = Ctx {
                        a,
                        epoch,
                        cap,
                        hard,
                        interval,
                        acked_total,
                        abort,
                    };
                    let r = drive(pairs, &ctx);
                    if r.is_err() {
                        abort.store(true, Ordering::SeqCst);
                    }
                    r
                })
            })
            .collect();
        let results = join_with_progress("dm", a.messages * a.pairs as u64, &acked_total, workers);
        readers_stop.store(true, Ordering::SeqCst);
        for reader in reading {
            if let Ok(Err(e)) = reader.join() {
                abort.store(true, Ordering::SeqCst);
                eprintln!("natter-bench: history reader: {}", e.0);
            }
        }
        results
    });
    let mut all = Measured::default();
    let mut first_err: Option<BenchError> = None;
    for r in results {
        match r {
            Ok(m) => {
                all.delivery.merge(&m.delivery);
                all.ack.merge(&m.ack);
                all.acked += m.acked;
                all.delivered += m.delivered;
                all.stored += m.stored;
                all.sent += m.sent;
                all.last_ack = all.last_ack.max(m.last_ack);
            }
            Err(e) if first_err.as_ref().is_none_or(|f| f.0 == STOPPED) => first_err = Some(e),
            Err(_) => {}
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let elapsed = all
        .last_ack
        .map_or(Duration::ZERO, |l| l.duration_since(epoch));
    let rate = match a.rate_limit {
        Some(r) => format!("rate limit {r} msgs/s"),
        None => "no rate limit".to_string(),
    };
    let mut report = Report::new(
        "dm",
        format!(
            "{} pairs, {}-byte text, window {} per sender, {rate}, {threads} threads",
            a.pairs, a.payload, a.window
        ),
    );
    report.nodes(nodes);
    report.field("pairs", "pairs", Value::Int(a.pairs as u64));
    report.field("acked", "acked", Value::Int(all.acked));
    report.field("delivered", "delivered", Value::Int(all.delivered));
    report.field("seconds", "secs", secs(elapsed));
    report.field("acked_per_sec", "acked/s", per_sec(all.acked, elapsed));
    report.field(
        "rate_limit",
        "limit/s",
        a.rate_limit.map_or(Value::Missing, Value::Int),
    );
    report.field("p50_ms", "p50 ms", all.delivery.quantile_ms(0.5));
    report.field("p99_ms", "p99 ms", all.delivery.quantile_ms(0.99));
    report.field("max_ms", "max ms", all.delivery.max_ms());
    report.field("ack_p50_ms", "ack p50 ms", all.ack.quantile_ms(0.5));
    report.field("ack_p99_ms", "ack p99 ms", all.ack.quantile_ms(0.99));
    report.field("ack_max_ms", "ack max ms", all.ack.max_ms());
    if a.list_flooders > 0 {
        report.field(
            "list_flooders",
            "flooders",
            Value::Int(a.list_flooders as u64),
        );
        let floods = floods_total.load(Ordering::SeqCst);
        report.field("list_broadcasts", "lists", Value::Int(floods));
        let peak = rss_peak.load(Ordering::SeqCst);
        report.field(
            "server_rss_peak_kib",
            "rss peak KiB",
            if peak > 0 {
                Value::Int(peak)
            } else {
                Value::Missing
            },
        );
    }
    if a.history_readers > 0 {
        let reads = reads_total.load(Ordering::SeqCst);
        report.field(
            "history_readers",
            "readers",
            Value::Int(a.history_readers as u64),
        );
        report.field("history_reads", "reads", Value::Int(reads));
        report.field("history_reads_per_sec", "reads/s", per_sec(reads, elapsed));
    }
    cpu.finish(&mut report);
    let planned = a.messages * a.pairs as u64;
    if all.sent < planned {
        report.notes.push(format!(
            "stopped at --max-seconds {} after {} of {planned} messages",
            a.max_seconds, all.sent
        ));
    }
    if all.acked != all.sent || all.delivered != all.sent {
        report.notes.push(format!(
            "of {} sent, {} acknowledged and {} delivered within {GRACE:?} after the cap",
            all.sent, all.acked, all.delivered
        ));
    }
    if all.stored > 0 {
        report.notes.push(format!(
            "{} messages were stored, not delivered: a receiver was offline",
            all.stored
        ));
    }
    if a.rate_limit.is_some() {
        report
            .notes
            .push("latency counts from each message's scheduled time".into());
    }
    Ok(report)
}

/// What every dm thread shares.
struct Ctx<'a> {
    a: &'a Args,
    epoch: Instant,
    cap: Instant,
    hard: Instant,
    /// Nanoseconds between one sender's messages, with a rate limit.
    interval: Option<u64>,
    acked_total: &'a AtomicU64,
    abort: &'a AtomicBool,
}

/// Runs this thread's pairs to the end. Token `2k` is pair k's sender, `2k+1`
/// its receiver.
fn drive(mut pairs: Vec<(Sender, Conn)>, ctx: &Ctx) -> Result<Measured, BenchError> {
    let a = ctx.a;
    let mut poll = Poll::new()?;
    for (k, (s, r)) in pairs.iter_mut().enumerate() {
        poll.registry().register(
            &mut s.conn.stream,
            Token(2 * k),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        poll.registry()
            .register(&mut r.stream, Token(2 * k + 1), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut m = Measured::default();
    let mut got = vec![0u64; pairs.len()];
    let mut ready: Vec<usize> = (0..2 * pairs.len()).collect();
    let mut capped = false;
    loop {
        if ctx.abort.load(Ordering::Relaxed) {
            return Err(BenchError::new(STOPPED));
        }
        for &t in &ready {
            let (s, r) = &mut pairs[t / 2];
            let now = nanos(ctx.epoch.elapsed());
            if t.is_multiple_of(2) {
                let before = s.acked;
                read_acks(s, now, &mut m.ack)?;
                if s.acked > before {
                    m.last_ack = Some(Instant::now());
                    ctx.acked_total
                        .fetch_add(s.acked - before, Ordering::Relaxed);
                }
            } else {
                let mut n = 0;
                let delivery = &mut m.delivery;
                let open = r.pump(|line| {
                    match event(line) {
                        Some((EventKind::Msg, fields)) => {
                            if let Some((_, sent)) = stamp(fields) {
                                delivery.record(now.saturating_sub(sent));
                                n += 1;
                            }
                        }
                        Some((EventKind::Bye, reason)) => {
                            return Err(BenchError::bye("dm receiver", reason))
                        }
                        _ => {}
                    }
                    Ok(())
                })?;
                got[t / 2] += n;
                if !open {
                    return Err(BenchError::new("natterd closed a dm receiver's connection"));
                }
            }
        }
        if !capped && Instant::now() >= ctx.cap {
            capped = true;
            for (s, _) in pairs.iter_mut() {
                s.limit = s.sent;
            }
        }
        let now = nanos(ctx.epoch.elapsed());
        let mut wait = POLL_WAIT;
        for (s, _) in pairs.iter_mut() {
            while s.sent < s.limit && s.sent - s.acked < a.window && s.due <= now {
                let stamp_at = if ctx.interval.is_some() { s.due } else { now };
                let out = s.conn.out();
                out.extend_from_slice(&s.prefix);
                push_text(out, s.sent, stamp_at, a.payload);
                s.in_flight.push_back(stamp_at);
                s.sent += 1;
                if let Some(iv) = ctx.interval {
                    s.due += iv;
                }
            }
            if s.conn.has_output() {
                s.conn.flush()?;
            }
            if s.sent < s.limit && s.sent - s.acked < a.window && s.due > now {
                wait = wait.min(Duration::from_nanos(s.due - now));
            }
        }
        let done = pairs
            .iter()
            .zip(&got)
            .all(|((s, _), &g)| s.acked >= s.limit && g >= s.limit);
        if done || Instant::now() > ctx.hard {
            for (s, _) in &pairs {
                m.acked += s.acked;
                m.stored += s.stored;
                m.sent += s.sent;
            }
            m.delivered = got.iter().sum();
            return Ok(m);
        }
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        ready.clear();
        ready.extend(events.iter().map(|e| e.token().0));
    }
}

/// The pairs' sessions in the order a single node's setup gives them
/// (sender 0, receiver 0, sender 1, ...), with every sender on the first
/// node and the receivers round-robin over the others, so every message
/// crosses nodes. Returns once the first node lists every receiver.
fn cross_node_pairs(
    a: &Args,
    targets: &[Target],
    deadline: Instant,
) -> Result<Vec<Session>, BenchError> {
    let p = &a.users_prefix;
    let (sending, others) = (first(targets)?, &targets[1..]);
    let senders: Vec<String> = (0..a.pairs).map(|i| format!("{p}ds{i}")).collect();
    let receivers: Vec<String> = (0..a.pairs).map(|i| format!("{p}dr{i}")).collect();
    let mut senders = open_sessions(sending, &senders, deadline, "senders")?;
    let receiving = open_spread(others, &receivers, deadline, "receivers")?;
    let watcher = senders
        .first_mut()
        .ok_or_else(|| BenchError::new("no sender session"))?;
    wait_until_listed(watcher, &receivers, deadline)?;
    Ok(senders
        .into_iter()
        .zip(receiving)
        .flat_map(|(s, r)| [s, r])
        .collect())
}

/// Reads a sender's replies: each `+` acknowledges its oldest message.
fn read_acks(s: &mut Sender, now: u64, ack: &mut Latency) -> Result<(), BenchError> {
    let Sender {
        conn,
        acked,
        stored,
        in_flight,
        ..
    } = s;
    let open = conn.pump(|line| {
        // A line that is not UTF-8 is not one of natterd's; it counts as
        // nothing, as an unknown line does.
        let line = std::str::from_utf8(line).unwrap_or_default();
        match split_line(line) {
            Some(Line::Ok(text)) => {
                *acked += 1;
                if let Some(t) = in_flight.pop_front() {
                    ack.record(now.saturating_sub(t));
                }
                if text == "stored" {
                    *stored += 1;
                }
            }
            Some(Line::Err { code, text }) => return Err(BenchError::refused("send", code, text)),
            Some(Line::Event { kind, fields })
                if EventKind::parse(kind) == Some(EventKind::Bye) =>
            {
                return Err(BenchError::bye("dm sender", fields))
            }
            _ => {}
        }
        Ok(())
    })?;
    if open {
        Ok(())
    } else {
        Err(BenchError::new("natterd closed a dm sender's connection"))
    }
}

/// Messages each history reader sends its neighbour before the run, so
/// that `history 1000` has a thousand rows to read (500 sent, 500 received).
const HISTORY_SEED: usize = 500;

/// Opens `--history-readers` sessions and gives each a history to read:
/// reader i messages reader i+1. All sends go out first, then the
/// acknowledgements are read (the neighbour's messages, arriving as events
/// meanwhile, are skipped).
fn history_readers(
    a: &Args,
    target: Target,
    deadline: Instant,
) -> Result<Vec<Session>, BenchError> {
    let n = a.history_readers;
    if n == 0 {
        return Ok(Vec::new());
    }
    let p = &a.users_prefix;
    let names: Vec<String> = (0..n).map(|i| format!("{p}dh{i}")).collect();
    let mut sessions = open_sessions(target, &names, deadline, "history readers")?;
    for (i, session) in sessions.iter().enumerate() {
        let to = &names[(i + 1) % n];
        for j in 0..HISTORY_SEED {
            send(session, &format!("send {to} history seed {j}"))?;
        }
    }
    for session in &mut sessions {
        for _ in 0..HISTORY_SEED {
            expect_ok(session, deadline, "send (history seed)")?;
        }
    }
    Ok(sessions)
}

/// Users each flooder's list broadcast names (offline, so each is stored).
const FLOOD_RECIPIENTS: usize = 300;
/// Bytes of text in each flooded list broadcast, at most: less if the line
/// would not fit natterd's default `--max-line` (4096) with the names.
const FLOOD_TEXT: usize = 2500;

/// Registers `FLOOD_RECIPIENTS` users (left offline) and opens
/// `--list-flooders` sessions, each with the line it will repeat.
fn list_flooders(
    a: &Args,
    target: Target,
    deadline: Instant,
) -> Result<Vec<(Session, String)>, BenchError> {
    let n = a.list_flooders;
    if n == 0 {
        return Ok(Vec::new());
    }
    let p = &a.users_prefix;
    let recipients: Vec<String> = (0..FLOOD_RECIPIENTS).map(|i| format!("{p}dl{i}")).collect();
    // Registered (or logged in) once, then gone: their messages are stored.
    drop(open_sessions(
        target,
        &recipients,
        deadline,
        "flood recipients",
    )?);
    let names: Vec<String> = (0..n).map(|i| format!("{p}df{i}")).collect();
    let sessions = open_sessions(target, &names, deadline, "list flooders")?;
    let head = format!("broadcast user {} message ", recipients.join(" "));
    let text = FLOOD_TEXT.min(4000usize.saturating_sub(head.len())).max(1);
    let line = format!("{head}{}", "f".repeat(text));
    Ok(sessions.into_iter().map(|s| (s, line.clone())).collect())
}

/// Repeats `line` until `stop`, one at a time, counting the answered ones.
fn flood_lists(
    mut session: Session,
    line: &str,
    floods: &AtomicU64,
    stop: &AtomicBool,
    hard: Instant,
) -> Result<(), BenchError> {
    while !stop.load(Ordering::SeqCst) {
        send(&session, line)?;
        match completion(&mut session, hard, "broadcast user")? {
            natter_client::ServerLine::Ok(_) => {
                floods.fetch_add(1, Ordering::Relaxed);
            }
            _ => return Err(BenchError::new("broadcast user: refused")),
        }
    }
    Ok(())
}

/// Loops `history 1000` until `stop`, counting completed reads.
fn read_history(
    mut session: Session,
    reads: &AtomicU64,
    stop: &AtomicBool,
    hard: Instant,
) -> Result<(), BenchError> {
    while !stop.load(Ordering::SeqCst) {
        send(&session, "history 1000")?;
        match completion(&mut session, hard, "history 1000")? {
            natter_client::ServerLine::Ok(_) => {
                reads.fetch_add(1, Ordering::Relaxed);
            }
            _ => return Err(BenchError::new("history 1000: refused")),
        }
    }
    Ok(())
}
