//! The `fanout` scenario: one sender broadcasts to N logged-in receivers.
//! Receivers are spread over a few threads, each polling its share of the
//! sockets; the send time travels in the text, so latency is the receiving
//! thread's clock minus it (one process, one monotonic clock). The sender
//! keeps at most `--window` broadcasts that some receiver has not yet got:
//! the last receiver to get a broadcast counts it complete and wakes the
//! sender. An extra idle client pings meanwhile, to show whether the
//! server's loop stalls under the load. With `--nodes`, the sender and
//! the pinger are on the first node and the receivers round-robin over all,
//! so the report also counts the deliveries that crossed nodes.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use natter_client::{ServerLine, Stream};
use natter_proto::EventKind;

use crate::args::Args;
use crate::error::BenchError;
use crate::lines::{event, push_text, stamp, Conn};
use crate::progress::{Progress, TICK};
use crate::report::{Report, Value};
use crate::setup::{
    self, completion, expect_ok, first, home, open_sessions, open_spread, read_or_quiet, send,
    wait_until_listed, Read, Session, Target, STOPPED,
};
use crate::stats::{per_sec, secs, Latency};
use crate::sys::CpuWatch;
use crate::ws::{self, WsTarget};

/// How long receivers may keep draining after the measurement cap, so that
/// broadcasts already sent are still counted.
pub const GRACE: Duration = Duration::from_secs(5);

/// How long a poll waits before the thread looks at the shared flags again.
pub const POLL_WAIT: Duration = Duration::from_millis(20);

/// State the sender, the receivers and the main thread share.
struct Shared {
    /// Time zero of the measurement; send times in the text count from it.
    epoch: Instant,
    /// Per broadcast, how many receivers have it.
    per_seq: Vec<AtomicU32>,
    receivers: u32,
    /// Broadcasts every receiver has.
    completed: AtomicU64,
    /// Deliveries so far, for the progress bar.
    delivered: AtomicU64,
    /// Broadcasts that will be sent in all: `--broadcasts`, lowered to what
    /// was sent when the cap stops the sender early.
    target: AtomicU64,
    /// Set once `target` is final.
    sender_done: AtomicBool,
    /// Set by any thread that fails, so the others stop.
    abort: AtomicBool,
    /// Receiving threads still running.
    receiving: AtomicUsize,
    /// Set once the receivers are done, to stop the pinger.
    stop_ping: AtomicBool,
    /// Whether the pinger is still running: receivers keep their
    /// connections open until it has stopped, so that no ping measures
    /// natterd closing thousands of sessions at once.
    pinging: AtomicBool,
}

/// What one receiving thread measured.
struct Received {
    latency: Latency,
    /// When its last broadcast arrived.
    last: Option<Instant>,
    deliveries: u64,
    /// Broadcasts each of its connections got, in the order given.
    got: Vec<u64>,
}

/// Nanoseconds in `d`, saturating (a run never nears 584 years).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs the scenario.
pub fn run(a: &Args, targets: &[Target]) -> Result<Report, BenchError> {
    let target = first(targets)?;
    let nodes = targets.len();
    let p = &a.users_prefix;
    let setup_deadline = Instant::now() + Duration::from_secs(a.max_seconds);
    let sender_name = format!("{p}fs");
    let pinger_name = format!("{p}fp");
    let mut both = open_sessions(
        target,
        &[sender_name.clone(), pinger_name],
        setup_deadline,
        "setup",
    )?;
    let mut pinger = both.pop();
    let mut sender = both
        .pop()
        .ok_or_else(|| BenchError::new("no sender session"))?;
    if a.ping_interval_us == 0 {
        pinger = None;
    }
    if let Some(pinger) = pinger.as_mut() {
        // The pinger must stay idle: blocking the sender keeps the
        // broadcasts away from it.
        send(pinger, &format!("block {sender_name}"))?;
        expect_ok(pinger, setup_deadline, "block (ping client)")?;
    }
    let names: Vec<String> = (0..a.receivers).map(|i| format!("{p}f{i}")).collect();
    let conns: Vec<Conn> = match a.ws {
        None => open_spread(targets, &names, setup_deadline, "receivers")?
            .into_iter()
            .map(Conn::from_reader)
            .collect::<Result<_, _>>()?,
        Some(port) => {
            let ws_target = WsTarget {
                host: target.host,
                port,
                password: target.password,
            };
            ws::open_sessions(ws_target, &names, setup_deadline, "receivers")?
                .into_iter()
                .map(|s| s.into_conn())
                .collect::<Result<_, _>>()?
        }
    };
    if nodes > 1 {
        wait_until_listed(&mut sender, &names, setup_deadline)?;
    }
    let threads = a.threads.min(a.receivers);
    let mut groups: Vec<Vec<Conn>> = (0..threads).map(|_| Vec::new()).collect();
    // Per group, each receiver's node, to count what crossed nodes.
    let mut homes: Vec<Vec<usize>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, conn) in conns.into_iter().enumerate() {
        groups[i % threads].push(conn);
        homes[i % threads].push(home(i, nodes));
    }

    let shared = Shared {
        epoch: Instant::now(),
        per_seq: (0..a.broadcasts).map(|_| AtomicU32::new(0)).collect(),
        receivers: u32::try_from(a.receivers)
            .map_err(|_| BenchError::new("--receivers is too large"))?,
        completed: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        target: AtomicU64::new(a.broadcasts),
        sender_done: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        stop_ping: AtomicBool::new(false),
        pinging: AtomicBool::new(pinger.is_some()),
        receiving: AtomicUsize::new(threads),
    };
    let cap = shared.epoch + Duration::from_secs(a.max_seconds);
    let hard = cap + GRACE;
    let cpu = CpuWatch::start(a.server_pid);
    let sh = &shared;
    let writer = sender.get_ref().try_clone()?;

    let (received, sent, acks, ping) = thread::scope(|s| {
        let sender_thread = s.spawn(move || {
            let r = send_broadcasts(writer, a, sh, cap, hard);
            sh.target.store(*r.as_ref().unwrap_or(&0), Ordering::SeqCst);
            sh.sender_done.store(true, Ordering::SeqCst);
            if r.is_err() {
                sh.abort.store(true, Ordering::SeqCst);
            }
            r
        });
        let wake: Thread = sender_thread.thread().clone();
        let acks = s.spawn(move || guard(sh, read_acks(sender, sh, hard)));
        let ping = pinger.map(|pinger| {
            let every = Duration::from_micros(a.ping_interval_us);
            s.spawn(move || {
                let r = guard(sh, ping_loop(pinger, every, sh, hard));
                sh.pinging.store(false, Ordering::SeqCst);
                r
            })
        });
        let workers: Vec<_> = groups
            .into_iter()
            .map(|conns| {
                let wake = wake.clone();
                s.spawn(move || {
                    let r = guard(sh, receive(conns, sh, &wake, hard));
                    if r.is_err() {
                        receiver_done(sh);
                    }
                    r
                })
            })
            .collect();
        let total = a.broadcasts * a.receivers as u64;
        let mut bar = Progress::new("fanout", total);
        while !workers.iter().all(|w| w.is_finished()) {
            thread::sleep(TICK);
            bar.set(sh.delivered.load(Ordering::Relaxed));
        }
        bar.finish();
        let received: Vec<_> = workers.into_iter().map(join).collect();
        let sent = join(sender_thread);
        let acks = join(acks);
        let ping = ping.map(join);
        (received, sent, acks, ping)
    });
    let sent = sent?;
    let acks = acks?;
    let ping = ping.transpose()?;
    let mut latency = Latency::new();
    let mut deliveries = 0;
    let mut last = None;
    let mut remote_deliveries = 0;
    for (r, homes) in received.into_iter().zip(&homes) {
        let r = r?;
        latency.merge(&r.latency);
        deliveries += r.deliveries;
        last = last.max(r.last);
        remote_deliveries += r
            .got
            .iter()
            .zip(homes)
            .filter(|&(_, &node)| node != 0)
            .map(|(got, _)| got)
            .sum::<u64>();
    }
    let elapsed = last.map_or(Duration::ZERO, |l| l.duration_since(shared.epoch));

    let mut report = Report::new(
        "fanout",
        format!(
            "1 sender, {} receivers{}, {}-byte text, window {}, {} receiving threads",
            a.receivers,
            if a.ws.is_some() {
                " over WebSocket"
            } else {
                ""
            },
            a.payload,
            a.window,
            threads
        ),
    );
    report.nodes(nodes);
    report.field("receivers", "receivers", Value::Int(a.receivers as u64));
    if nodes > 1 {
        let remote = (0..a.receivers).filter(|&i| home(i, nodes) != 0).count();
        report.field(
            "remote_receivers",
            "remote receivers",
            Value::Int(remote as u64),
        );
    }
    report.field("broadcasts", "broadcasts", Value::Int(sent));
    report.field("deliveries", "deliveries", Value::Int(deliveries));
    if nodes > 1 {
        report.field(
            "remote_deliveries",
            "remote deliveries",
            Value::Int(remote_deliveries),
        );
    }
    report.field("seconds", "secs", secs(elapsed));
    report.field(
        "deliveries_per_sec",
        "deliveries/s",
        per_sec(deliveries, elapsed),
    );
    report.field("p50_ms", "p50 ms", latency.quantile_ms(0.5));
    report.field("p99_ms", "p99 ms", latency.quantile_ms(0.99));
    report.field("max_ms", "max ms", latency.max_ms());
    let ping = ping.unwrap_or_default();
    report.field("ping_count", "pings", Value::Int(ping.count()));
    report.field("ping_p50_ms", "ping p50 ms", ping.quantile_ms(0.5));
    report.field("ping_p99_ms", "ping p99 ms", ping.quantile_ms(0.99));
    report.field("ping_max_ms", "ping max ms", ping.max_ms());
    cpu.finish(&mut report);
    if sent < a.broadcasts {
        report.notes.push(format!(
            "stopped at --max-seconds {} after {sent} of {} broadcasts",
            a.max_seconds, a.broadcasts
        ));
    }
    let expected = sent * a.receivers as u64;
    if deliveries != expected {
        report.notes.push(format!(
            "{} of {expected} deliveries arrived within {GRACE:?} after the cap",
            deliveries
        ));
    }
    if let Some(n) = acks.min_sent_to.filter(|&n| n != a.receivers as u64) {
        report.notes.push(format!(
            "natterd reported a broadcast sent to {n} users, not {}: other users are \
             online (or blocking the sender)",
            a.receivers
        ));
    }
    if a.ping_interval_us == 0 {
        report
            .notes
            .push("no ping client (--ping-interval-us 0)".into());
    }
    Ok(report)
}

/// Marks the run aborted when a thread fails, so the others stop waiting.
/// One receiving thread is done. The last one ends the pinging, so pings
/// measure the loaded server only.
fn receiver_done(sh: &Shared) {
    if sh.receiving.fetch_sub(1, Ordering::SeqCst) == 1 {
        sh.stop_ping.store(true, Ordering::SeqCst);
    }
}

fn guard<T>(sh: &Shared, r: Result<T, BenchError>) -> Result<T, BenchError> {
    if r.is_err() {
        sh.abort.store(true, Ordering::SeqCst);
    }
    r
}

/// Joins a scoped thread, turning a panic into an error.
fn join<T>(h: thread::ScopedJoinHandle<'_, Result<T, BenchError>>) -> Result<T, BenchError> {
    h.join()
        .unwrap_or_else(|_| Err(BenchError::new("a bench thread panicked")))
}

/// Sends broadcasts, at most `--window` incomplete, until all are sent or the
/// cap. Returns how many were sent.
fn send_broadcasts(
    mut out: Stream,
    a: &Args,
    sh: &Shared,
    cap: Instant,
    hard: Instant,
) -> Result<u64, BenchError> {
    // A server that stops reading must not hang the bench past the grace.
    out.tcp().set_write_timeout(Some(
        hard.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    ))?;
    let line_len = "broadcast ".len() + a.payload + 32;
    let mut buf = Vec::with_capacity(line_len * a.window.min(4096) as usize);
    let mut sent = 0u64;
    while sent < a.broadcasts {
        if sh.abort.load(Ordering::Relaxed) || Instant::now() >= cap {
            break;
        }
        let in_flight = sent - sh.completed.load(Ordering::Acquire);
        if in_flight >= a.window {
            // The receiver that completes a broadcast unparks this thread;
            // the timeout only bounds a lost wake-up.
            thread::park_timeout(Duration::from_millis(1));
            continue;
        }
        let n = (a.window - in_flight).min(a.broadcasts - sent);
        buf.clear();
        let now = nanos(sh.epoch.elapsed());
        for seq in sent..sent + n {
            buf.extend_from_slice(b"broadcast ");
            push_text(&mut buf, seq, now, a.payload);
        }
        out.write_all(&buf)?;
        sent += n;
    }
    Ok(sent)
}

/// What the sender's replies said.
struct Acks {
    /// The smallest `<n>` in `+ sent to <n>`.
    min_sent_to: Option<u64>,
}

/// Reads the sender's replies, one `+ sent to <n>` per broadcast, until every
/// broadcast is answered; the server stops reading a client whose replies
/// pile up, so they must be read.
fn read_acks(mut s: Session, sh: &Shared, hard: Instant) -> Result<Acks, BenchError> {
    let mut acks = 0u64;
    let mut min_sent_to = None;
    s.get_ref().tcp().set_read_timeout(Some(POLL_WAIT))?;
    loop {
        // `target` is final once the sender is done.
        let all_in =
            sh.sender_done.load(Ordering::SeqCst) && acks >= sh.target.load(Ordering::SeqCst);
        if all_in || sh.abort.load(Ordering::Relaxed) || Instant::now() > hard {
            break;
        }
        let line = match read_or_quiet(&mut s)? {
            Read::Line(line) => line,
            Read::Closed => return Err(BenchError::new("natterd closed the sender's connection")),
            Read::Quiet => continue,
        };
        match natter_client::parse(&line) {
            ServerLine::Ok(text) => {
                acks += 1;
                let n = text
                    .strip_prefix("sent to ")
                    .and_then(|n| n.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok());
                if let Some(n) = n {
                    min_sent_to = Some(min_sent_to.map_or(n, |m: u64| m.min(n)));
                }
            }
            ServerLine::Err { code, text } => {
                return Err(BenchError::refused("broadcast", &code, &text))
            }
            ServerLine::Event(natter_client::Event::Bye { reason }) => {
                return Err(BenchError::bye("broadcast sender", &reason))
            }
            _ => {}
        }
    }
    Ok(Acks { min_sent_to })
}

/// Pings every `every` until told to stop, recording each round trip. At
/// least one round trip is made (unless another thread failed), so a run the
/// receivers finish before the pinger's first pong still reports a ping
/// figure rather than none.
fn ping_loop(
    mut s: Session,
    every: Duration,
    sh: &Shared,
    hard: Instant,
) -> Result<Latency, BenchError> {
    let mut latency = Latency::new();
    let mut next = Instant::now();
    while !sh.abort.load(Ordering::Relaxed)
        && (latency.count() == 0 || !sh.stop_ping.load(Ordering::Relaxed))
    {
        let t0 = Instant::now();
        setup::send(&s, "ping")?;
        match completion(&mut s, hard, "ping")? {
            ServerLine::Ok(_) => latency.record_duration(t0.elapsed()),
            ServerLine::Err { code, text } => {
                return Err(BenchError::refused("ping", &code, &text))
            }
            _ => {}
        }
        next += every;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            // Behind schedule (a slow pong): don't fire a burst to catch up.
            next = now;
        }
    }
    Ok(latency)
}

/// One receiving thread: polls its connections until each has every
/// broadcast that will be sent, or the hard deadline.
fn receive(
    mut conns: Vec<Conn>,
    sh: &Shared,
    wake: &Thread,
    hard: Instant,
) -> Result<Received, BenchError> {
    let mut poll = Poll::new()?;
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry()
            .register(&mut c.stream, Token(i), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut out = Received {
        latency: Latency::new(),
        last: None,
        deliveries: 0,
        got: vec![0u64; conns.len()],
    };
    // Lines setup already buffered get no readiness event: read each once.
    let mut ready: Vec<usize> = (0..conns.len()).collect();
    loop {
        if sh.abort.load(Ordering::Relaxed) {
            return Err(BenchError::new(STOPPED));
        }
        for &i in &ready {
            let now = nanos(sh.epoch.elapsed());
            let mut n = 0u64;
            let latency = &mut out.latency;
            let open = conns[i].pump(|line| {
                match event(line) {
                    Some((EventKind::Broadcast, fields)) => {
                        let Some((seq, sent)) = stamp(fields) else {
                            return Ok(());
                        };
                        latency.record(now.saturating_sub(sent));
                        n += 1;
                        let count = usize::try_from(seq).ok().and_then(|s| sh.per_seq.get(s));
                        if let Some(count) = count {
                            if count.fetch_add(1, Ordering::AcqRel) + 1 == sh.receivers {
                                sh.completed.fetch_add(1, Ordering::AcqRel);
                                wake.unpark();
                            }
                        }
                    }
                    Some((EventKind::Bye, reason)) => {
                        return Err(BenchError::bye("receiver", reason))
                    }
                    _ => {}
                }
                Ok(())
            })?;
            if n > 0 {
                out.got[i] += n;
                out.deliveries += n;
                out.last = Some(Instant::now());
                sh.delivered.fetch_add(n, Ordering::Relaxed);
            }
            if !open {
                return Err(BenchError::new(
                    "natterd closed a receiver's connection (dropped as a slow reader? \
                     see natterd's log; try a smaller --window or more --threads)",
                ));
            }
        }
        let target = sh.target.load(Ordering::SeqCst);
        if out.got.iter().all(|&g| g >= target) || Instant::now() > hard {
            receiver_done(sh);
            // Hang up only once the pinger has stopped (see `pinging`).
            while sh.pinging.load(Ordering::SeqCst)
                && !sh.abort.load(Ordering::Relaxed)
                && Instant::now() < hard
            {
                thread::sleep(Duration::from_millis(1));
            }
            return Ok(out);
        }
        match poll.poll(&mut events, Some(POLL_WAIT)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        ready.clear();
        ready.extend(events.iter().map(|e| e.token().0));
    }
}
