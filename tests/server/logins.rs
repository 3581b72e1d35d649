//! Logins under attack: what an attacker guessing passwords can and cannot
//! learn or do, with real sockets against the real server.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::contract::connect_from;
use crate::util::{serial, Client, Server, TIMEOUT};

/// The code of a completion line (`- LOCKED`, `+ welcome`, ...).
fn code(line: &str) -> String {
    line.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// Regression: 40 guesses sent at once all passed the lockout check (it was
/// counted only when a verification finished), and a right password that
/// finished while locked got `LOCKED` where wrong ones got `AUTHFAIL`.
#[test]
fn concurrent_guesses_are_held_to_the_limit_and_never_reveal_the_password() {
    let server = Server::start(&[
        "--hash-cost",
        "normal",
        "--max-login-failures",
        "3",
        "--block-time",
        "60",
    ]);
    drop(server.user("alice"));
    const GUESSES: usize = 40;
    // The right password goes last, where it is least likely to be among
    // the few guesses verified.
    let right = GUESSES - 1;
    let mut clients: Vec<Client> = (0..GUESSES).map(|_| server.connect()).collect();
    // Every line is out before the first verification (tens of ms) ends.
    for (i, c) in clients.iter_mut().enumerate() {
        if i == right {
            c.send("login alice password-alice");
        } else {
            c.send(&format!("login alice wrong-guess-{i}"));
        }
    }
    let replies: Vec<String> = clients
        .iter_mut()
        .map(|c| c.reply().pop().expect("completion"))
        .collect();
    eprintln!("{replies:#?}");
    let verified = replies
        .iter()
        .filter(|r| r.starts_with("- AUTHFAIL") || r.starts_with("+ welcome"))
        .count();
    assert!(
        verified <= 3,
        "{verified} guesses verified, the limit is 3: {replies:?}"
    );
    for r in &replies {
        assert!(
            ["- AUTHFAIL", "- LOCKED", "+ welcome"].contains(&code(r).as_str()),
            "{r}"
        );
    }
    let answer = code(&replies[right]);
    if answer != "+ welcome" {
        // The right password's answer must be one some wrong guess got too.
        assert!(
            replies
                .iter()
                .enumerate()
                .any(|(i, r)| i != right && code(r) == answer),
            "only the right password got {answer}: {replies:?}"
        );
    }
}

/// Median of `v`.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Regression: with accounts hashed at `low` and the server restarted at
/// `normal`, an unknown name (checked against a dummy at the new cost) took
/// 16 ms and a known one's wrong password 0.2 ms, so names were enumerable.
#[test]
fn after_a_cost_change_unknown_names_cost_what_known_ones_do_and_old_hashes_are_upgraded() {
    let _serial = serial();
    let server = Server::start(&["--hash-cost", "low"]);
    for name in ["alice", "bob", "carol"] {
        drop(server.user(name));
    }
    // Many guesses from one address: no lockout, no account-wide budget.
    let server = server.restart_with(&[
        "--hash-cost",
        "normal",
        "--max-login-failures",
        "1000",
        "--account-guesses-per-hour",
        "0",
    ]);
    let mut c = server.connect();
    let mut timed = |line: &str| {
        let started = Instant::now();
        let reply = c.cmd1(line);
        assert!(reply.starts_with("- AUTHFAIL "), "{reply}");
        started.elapsed().as_secs_f64()
    };
    // Interleaved pairs, alternating which goes first, so both kinds see the
    // same load; the median of the per-pair ratios ignores disturbed pairs.
    let mut ratios = Vec::new();
    let (mut wrong, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..21 {
        let (w, u) = if i % 2 == 0 {
            let w = timed("login alice not-her-password");
            (w, timed("login nobody not-her-password"))
        } else {
            let u = timed("login nobody not-her-password");
            (timed("login alice not-her-password"), u)
        };
        wrong.push(w);
        unknown.push(u);
        ratios.push(u / w);
    }
    let (w, u, ratio) = (
        median(&mut wrong),
        median(&mut unknown),
        median(&mut ratios),
    );
    eprintln!("medians: wrong password {w:.5}s, unknown user {u:.5}s, ratio {ratio:.2}");
    assert!(
        (1.0 / 3.0..3.0).contains(&ratio),
        "unknown user / wrong password = {ratio:.2} (medians {u:.5}s, {w:.5}s)"
    );
    // The right password re-hashes alice's password at the current cost.
    server.connect().login("alice", "password-alice");
    let db = server.data.join("natter.db");
    let started = Instant::now();
    loop {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open the database");
        let hash: String = conn
            .query_row("SELECT hash FROM users WHERE name = 'alice'", [], |r| {
                r.get(0)
            })
            .expect("alice's hash");
        if hash.contains("m=19456,t=2,p=1") {
            break;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "alice's hash was not upgraded: {hash}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // And it still lets her in.
    server.connect().login("alice", "password-alice");
}

/// Regression: the lockout warning logged the attempted name verbatim, and
/// a password typed into the user field ended up in the log.
#[test]
fn names_that_are_no_account_never_reach_the_log() {
    let server = Server::start(&["--max-login-failures", "2"]);
    drop(server.user("alice"));
    let mut c = server.connect();
    for _ in 0..3 {
        c.cmd1("login hunter2-typo whatever");
        c.cmd1("login alice wrong-guess");
    }
    let log = server.log();
    assert!(
        log.contains("login locked for alice from 127.0.0.1"),
        "{log}"
    );
    assert!(log.contains("login locked for an unknown user"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
}

/// Sessions from `sources` (one thread each) that send `login <fresh name>
/// x` over and over until `stop`; returns the threads and the count of
/// `- BUSY` answers they got.
fn hammer_logins(
    server: std::net::SocketAddr,
    sources: &[String],
    per_source: usize,
    stop: &Arc<AtomicBool>,
    busy: &Arc<AtomicUsize>,
) -> Vec<thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    for (s, source) in sources.iter().enumerate() {
        for i in 0..per_source {
            let mut c = connect_from(source, server);
            let (stop, busy) = (Arc::clone(stop), Arc::clone(busy));
            threads.push(thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let reply = c.cmd1(&format!("login x{s}n{i}n{n} not-the-password"));
                    if reply.starts_with("- BUSY ") {
                        busy.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert!(reply.starts_with("- AUTHFAIL "), "{reply}");
                    }
                }
            }));
        }
    }
    threads
}

/// How long `login real password-real` takes from 127.0.0.200, in seconds.
fn timed_login(server: &Server) -> f64 {
    let mut c = connect_from("127.0.0.200", server.addr);
    let started = Instant::now();
    c.login("real", "password-real");
    started.elapsed().as_secs_f64()
}

/// Runs the attack of item 4 of issue 11: `per_source` sessions from each
/// of `sources` addresses hammer logins with random names at the default
/// rate, and a real user logs in from another address meanwhile. Returns
/// the real login's time before and (the median of five) during the attack.
fn login_during_hash_flood(sources: usize, per_source: usize) -> (f64, f64, usize) {
    let server = Server::start(&["--hash-cost", "normal", "--rate", "10"]);
    drop(server.user("real"));
    let mut quiet: Vec<f64> = (0..5).map(|_| timed_login(&server)).collect();
    let quiet = median(&mut quiet);
    let stop = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(AtomicUsize::new(0));
    let sources: Vec<String> = (0..sources)
        .map(|s| format!("127.0.0.{}", 10 + s))
        .collect();
    let threads = hammer_logins(server.addr, &sources, per_source, &stop, &busy);
    // Let the queue fill.
    thread::sleep(Duration::from_secs(2));
    let mut during: Vec<f64> = (0..5).map(|_| timed_login(&server)).collect();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("attacker");
    }
    let during = median(&mut during);
    let busy = busy.load(Ordering::Relaxed);
    eprintln!(
        "{} sessions from {} addresses: real login {quiet:.3}s quiet, {during:.3}s under attack; {busy} BUSY answers",
        sources.len() * per_source,
        sources.len()
    );
    (quiet, during, busy)
}

/// Regression: one FIFO for the hashing threads let sessions hammering
/// logins make every real login wait behind all of theirs.
#[test]
fn a_login_flood_from_two_addresses_does_not_hold_up_a_third() {
    let _serial = serial();
    let (quiet, during, _) = login_during_hash_flood(2, 64);
    // Behind one job per busy address (and the two being hashed) rather
    // than behind the whole backlog (about 60 jobs before the fix).
    assert!(
        during < (12.0 * quiet).max(0.3),
        "real login {during:.3}s under attack, {quiet:.3}s without"
    );
}

#[test]
#[ignore = "heavy: 512 sessions hammering logins at --hash-cost normal; .ci/run runs it with --ignored"]
fn a_real_login_completes_in_under_a_second_while_512_sessions_hammer_logins() {
    let _serial = serial();
    let (_, during, busy) = login_during_hash_flood(8, 64);
    assert!(during < 1.0, "real login took {during:.3}s under attack");
    assert!(busy > 0, "the queue never filled: the attack was too weak");
}

/// Regression: the lockout was per exact (user, address), so 40 addresses
/// × 3 guesses = 120 checked guesses, never locked.
#[test]
fn guesses_from_many_addresses_share_the_account_budget_but_the_owner_gets_in() {
    // The defaults: 3 failures per address, 10 guesses per account per hour.
    let server = Server::start(&[]);
    // Registered (and so trusted) from 127.0.0.1.
    drop(server.user("alice"));
    for name in ["alice", "nobody"] {
        let mut checked = 0;
        let mut locked = 0;
        for a in 0..40 {
            let mut c = connect_from(&format!("127.0.1.{}", 10 + a), server.addr);
            for g in 0..3 {
                let reply = c.cmd1(&format!("login {name} guess-{a}-{g}"));
                if reply.starts_with("- AUTHFAIL ") {
                    checked += 1;
                } else {
                    assert!(reply.starts_with("- LOCKED "), "{reply}");
                    locked += 1;
                }
            }
        }
        eprintln!("{name}: {checked} guesses checked, {locked} locked out");
        // The stated bound: 10 + 10 per hour (the test takes seconds).
        assert!(checked <= 10, "{name}: {checked} guesses checked");
        assert_eq!(checked + locked, 120);
    }
    // The owner, from an address she logged in from before, gets in.
    server.connect().login("alice", "password-alice");
    // From a new address, even the right password waits for the budget.
    let reply = connect_from("127.0.2.1", server.addr).cmd1("login alice password-alice");
    assert!(reply.starts_with("- LOCKED "), "{reply}");
}
