//! Several natterd nodes sharing one PostgreSQL and one Redis
//! (`--cluster`), each a real process on its own port, spoken to over TCP:
//! messages and broadcasts cross nodes, presence is cluster-wide, a second
//! login anywhere replaces the first, and killing a node, Redis or
//! PostgreSQL loses nothing that was acknowledged.

use std::time::{Duration, Instant};

use crate::pg;
use crate::redis::Redis;
use crate::util::{Client, Server};

/// How long a change may take to reach every node (a pub/sub hop, or a
/// node noticing Redis is back).
const SPREAD: Duration = Duration::from_secs(15);
/// The documented time for a dead node's users to leave presence
/// (`cluster::NODE_EXPIRY`, 5 s, plus the subscriber's tick), with slack
/// for a loaded test machine.
const NODE_GONE: Duration = Duration::from_secs(10);

/// A node of the cluster on `redis` and `db`.
fn node(redis: &Redis, db: &str, id: &str) -> Server {
    Server::start(&["--store", db, "--cluster", &redis.url(), "--node-id", id])
}

/// Two nodes on a Redis and a database of their own, alice logged in on
/// the first and bob on the second, each node seeing the other's user.
struct Two {
    /// Kept alive (dropped, so killed, with the test's value).
    _redis: Redis,
    db: String,
    n1: Server,
    n2: Server,
}

fn two_nodes() -> (Two, Client, Client) {
    let redis = Redis::start();
    let db = pg::database();
    let n1 = node(&redis, &db, "n1");
    let n2 = node(&redis, &db, "n2");
    let mut alice = n1.user("alice");
    let mut bob = n2.user("bob");
    eventually(SPREAD, "n1 sees bob", || sees(&mut alice, &["bob"]));
    eventually(SPREAD, "n2 sees alice", || sees(&mut bob, &["alice"]));
    (
        Two {
            _redis: redis,
            db,
            n1,
            n2,
        },
        alice,
        bob,
    )
}

/// Polls `check` until it holds, failing the test with `what` after `limit`.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// `whoelse` as a list of names.
fn whoelse(c: &mut Client) -> Vec<String> {
    let mut lines = c.cmd("whoelse");
    let done = lines.pop().expect("completion");
    assert!(done.starts_with("+ "), "{done}");
    lines
        .into_iter()
        .map(|l| l.trim_start_matches("= ").to_string())
        .collect()
}

/// Logs in on `server`. The account was registered on another node whose
/// users this one has seen since (an account is announced before its
/// first login, in order), so it is known here: a wrong guess would count
/// towards a lockout, so there is no retrying.
fn login_on(server: &Server, user: &str) -> Client {
    let mut c = server.connect();
    c.login(user, &format!("password-{user}"));
    c
}

fn sees(c: &mut Client, names: &[&str]) -> bool {
    let online = whoelse(c);
    names.iter().all(|n| online.iter().any(|o| o == n))
}

#[test]
fn messages_broadcasts_and_presence_cross_nodes() {
    let redis = Redis::start();
    let db = pg::database();
    let n1 = node(&redis, &db, "n1");
    let n2 = node(&redis, &db, "n2");
    let n3 = node(&redis, &db, "n3");
    let mut alice = n1.user("alice");
    let mut bob = n2.user("bob");
    let mut carol = n3.user("carol");

    // Everyone on every node, in every node's whoelse.
    eventually(SPREAD, "n1 sees bob and carol", || {
        sees(&mut alice, &["bob", "carol"])
    });
    eventually(SPREAD, "n2 sees alice and carol", || {
        sees(&mut bob, &["alice", "carol"])
    });
    assert_eq!(whoelse(&mut carol), ["alice", "bob"]);
    let wholast = carol.cmd("wholast 5");
    assert!(wholast.iter().any(|l| l == "= alice online"), "{wholast:?}");

    // A direct message to another node is pushed there.
    assert_eq!(alice.cmd1("send bob hello from n1"), "+ delivered");
    let e = bob.event();
    assert!(
        e.starts_with("* msg alice ") && e.ends_with(" hello from n1"),
        "{e}"
    );

    // A broadcast reaches everyone else once.
    assert_eq!(bob.cmd1("broadcast all hands"), "+ sent to 2");
    for c in [&mut alice, &mut carol] {
        let e = c.event();
        assert!(
            e.starts_with("* broadcast bob ") && e.ends_with(" all hands"),
            "{e}"
        );
    }
    for c in [&mut alice, &mut bob, &mut carol] {
        let extra = c.lines_within(Duration::from_millis(500));
        assert!(extra.is_empty(), "a broadcast arrived twice: {extra:?}");
    }

    // A list broadcast across nodes, like send.
    let reply = carol.cmd("broadcast user alice bob message list to two nodes");
    assert_eq!(
        reply.last().map(String::as_str),
        Some("+ sent to 2 of 2"),
        "{reply:?}"
    );
    for c in [&mut alice, &mut bob] {
        let e = c.event();
        assert!(e.ends_with(" list to two nodes"), "{e}");
    }

    // carol leaves: the others stop seeing her, and a message to her is
    // stored, then found in her inbox on whichever node she comes back to.
    assert_eq!(carol.cmd1("quit"), "+ bye");
    eventually(SPREAD, "n1 no longer sees carol", || {
        !sees(&mut alice, &["carol"])
    });
    assert_eq!(alice.cmd1("send carol while you were out"), "+ stored");
    let mut carol = login_on(&n2, "carol");
    let inbox = carol.drain_inbox();
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert!(inbox[0].ends_with(" alice while you were out"), "{inbox:?}");

    // Pushed messages were marked read by the node that wrote them:
    // bob, back on n3, has nothing unread.
    drop(bob);
    let mut bob = n3.connect();
    assert_eq!(
        bob.cmd1("login bob password-bob"),
        "+ welcome bob (0 unread messages)"
    );
}

#[test]
fn a_login_on_another_node_replaces_the_first() {
    let redis = Redis::start();
    let db = pg::database();
    let n1 = node(&redis, &db, "n1");
    let n2 = node(&redis, &db, "n2");
    let mut first = n1.user("alice");
    let mut watcher = n2.user("bob");
    eventually(SPREAD, "n2 sees alice", || sees(&mut watcher, &["alice"]));
    let _second = login_on(&n2, "alice");
    let lines = first.until_closed();
    assert!(
        lines.iter().any(|l| l == "* bye replaced"),
        "the first session was not replaced: {lines:?}"
    );
    // Still online, once, on n2.
    assert_eq!(whoelse(&mut watcher), ["alice"]);
}

#[test]
fn blocks_bans_and_passwords_hold_on_every_node() {
    let (two, mut alice, mut bob) = two_nodes();
    assert_eq!(bob.cmd1("block alice"), "+ blocked alice");
    eventually(SPREAD, "the block reaches n1", || {
        alice.cmd1("send bob let me in").starts_with("- BLOCKED")
    });
    // (Tries before the block arrived were delivered.)
    bob.lines_within(Duration::from_millis(300));
    assert_eq!(alice.cmd1("broadcast anyone"), "+ sent to 0");
    let leaked = bob.lines_within(Duration::from_millis(500));
    assert!(leaked.is_empty(), "{leaked:?}");

    // A password changed on n2 is the password on n1.
    assert_eq!(
        bob.cmd1("passwd password-bob better-password"),
        "+ password changed"
    );
    // n2 announces in order: once alice (on n1) has bob's broadcast, n1
    // has the new hash. (Probing with logins would count failures.)
    assert_eq!(bob.cmd1("broadcast password changed"), "+ sent to 1");
    let e = alice.event();
    assert!(e.ends_with(" password changed"), "{e}");
    let mut c = two.n1.connect();
    let reply = c.cmd1("login bob better-password");
    assert!(reply.starts_with("+ welcome bob"), "{reply}");
    assert_eq!(
        bob.until_closed().last().map(String::as_str),
        Some("* bye replaced")
    );
}

#[test]
fn a_killed_node_leaves_presence_in_seconds_and_loses_nothing() {
    let redis = Redis::start();
    let db = pg::database();
    let n1 = node(&redis, &db, "n1");
    let mut n2 = node(&redis, &db, "n2");
    let n3 = node(&redis, &db, "n3");
    let mut alice = n1.user("alice");
    let mut bob = n2.user("bob");
    let _carol = n3.user("carol");
    eventually(SPREAD, "n1 sees bob", || sees(&mut alice, &["bob"]));

    // Messages to bob on n2, some of them surely still in flight (or
    // written but not yet marked read) when n2 dies.
    let mut acknowledged = Vec::new();
    for i in 0..30 {
        let reply = alice.cmd1(&format!("send bob m{i}"));
        assert!(reply == "+ delivered" || reply == "+ stored", "{reply}");
        acknowledged.push(format!("m{i}"));
    }
    let received: Vec<String> = bob
        .lines_within(Duration::from_millis(50))
        .into_iter()
        .filter_map(|l| l.rsplit(' ').next().map(str::to_string))
        .collect();
    n2.kill();
    let gone = eventually(NODE_GONE, "bob leaves n1's whoelse", || {
        !sees(&mut alice, &["bob"])
    });
    eprintln!("bob left presence {gone:?} after n2 was killed");
    assert_eq!(alice.cmd1("send bob after the crash"), "+ stored");
    acknowledged.push("crash".to_string());

    // On n3, bob finds everything he had not received in his inbox.
    let mut bob = login_on(&n3, "bob");
    let inbox: Vec<String> = bob
        .drain_inbox()
        .into_iter()
        .filter_map(|l| l.rsplit(' ').next().map(str::to_string))
        .collect();
    for m in &acknowledged {
        assert!(
            received.contains(m) || inbox.contains(m),
            "{m} was acknowledged, never received and is not in the inbox \
             (received {received:?}, inbox {inbox:?})"
        );
    }
    // The survivors keep serving.
    assert_eq!(alice.cmd1("ping"), "+ pong");
}

#[test]
fn a_redis_restart_stores_meanwhile_and_then_routes_again() {
    let mut redis = Redis::start();
    let db = pg::database();
    let n1 = node(&redis, &db, "n1");
    let n2 = node(&redis, &db, "n2");
    let mut alice = n1.user("alice");
    let mut bob = n2.user("bob");
    let mut carol = n1.user("carol");
    eventually(SPREAD, "n2 sees carol", || sees(&mut bob, &["carol"]));
    eventually(SPREAD, "n1 sees bob", || sees(&mut alice, &["bob"]));

    redis.kill();
    // Without Redis each node serves its own users; bob is unknown to n1
    // now, so a message to him is stored (never lost).
    eventually(SPREAD, "n1 notices Redis is gone", || {
        !sees(&mut alice, &["bob"])
    });
    assert_eq!(alice.cmd1("send bob during the outage"), "+ stored");
    assert_eq!(alice.cmd1("ping"), "+ pong");
    // Changes announced during the outage are lost on the way: dave
    // registers on n2 and bob blocks carol there; n1 hears of neither.
    let _dave = n2.user("dave");
    assert_eq!(bob.cmd1("block carol"), "+ blocked carol");
    assert_eq!(alice.cmd1("send dave hello?"), "- NOUSER no such user dave");

    redis.restart();
    eventually(SPREAD, "n1 sees bob again", || sees(&mut alice, &["bob"]));
    // Caught up from the database once Redis is back.
    eventually(SPREAD, "n1 knows dave", || {
        alice.cmd1("send dave welcome aboard") == "+ delivered"
    });
    let reply = carol.cmd1("send bob hi");
    assert!(reply.starts_with("- BLOCKED"), "{reply}");
    assert_eq!(alice.cmd1("send bob after the outage"), "+ delivered");
    let e = bob.event();
    assert!(e.ends_with(" after the outage"), "{e}");
    let inbox = bob.drain_inbox();
    assert!(
        inbox.iter().any(|l| l.ends_with(" during the outage")),
        "{inbox:?}"
    );
}

#[test]
fn lockouts_and_bans_follow_a_user_to_every_node() {
    let redis = Redis::start();
    let db = pg::database();
    let n1 = node(&redis, &db, "n1");
    let n2 = node(&redis, &db, "n2");
    let mut bob = n2.user("bob");
    let mut alice = n1.user("alice");
    eventually(SPREAD, "n1 sees bob", || sees(&mut alice, &["bob"]));

    // Three wrong passwords on n1 (--max-login-failures 3) lock bob's
    // name for this address on n2 too: changing node resets nothing.
    let mut guesser = n1.connect();
    for _ in 0..3 {
        let reply = guesser.cmd1("login bob wrong-guess");
        assert!(reply.starts_with("- AUTHFAIL"), "{reply}");
    }
    // n1 announces in order: once bob (on n2) has alice's broadcast, n2
    // has applied the failures announced before it. (Probing with logins
    // would count failures on n2 itself, or clear them with a success.)
    assert_eq!(alice.cmd1("broadcast after the guesses"), "+ sent to 1");
    let e = bob.event();
    assert!(e.ends_with(" after the guesses"), "{e}");
    let mut elsewhere = n2.connect();
    let reply = elsewhere.cmd1("login bob password-bob");
    assert!(reply.starts_with("- LOCKED"), "{reply}");

    // The operator bans alice through n2's natterctl: her session on n1
    // ends, and no node lets her in.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natterctl"))
        .arg("--data")
        .arg(&n2.data)
        .args(["user", "lock", "alice"])
        .output()
        .expect("run natterctl");
    assert!(out.status.success(), "{out:?}");
    let lines = alice.until_closed();
    assert!(lines.iter().any(|l| l == "* bye banned"), "{lines:?}");
    let mut again = n1.connect();
    let reply = again.cmd1("login alice password-alice");
    assert!(reply.starts_with("- BANNED"), "{reply}");
}

#[test]
fn while_postgres_is_away_durable_commands_fail_honestly_on_every_node() {
    let (two, mut alice, mut bob) = two_nodes();

    crate::postgres::refuse_connections(&two.db);
    for i in 0..3 {
        let reply = alice.cmd1(&format!("send bob lost {i}"));
        assert!(reply.starts_with("- INTERNAL"), "{reply}");
    }
    // What needs no database goes on, across nodes too.
    assert_eq!(alice.cmd1("broadcast still here"), "+ sent to 1");
    let e = bob.event();
    assert!(e.ends_with(" still here"), "{e}");
    let leaked = bob.lines_within(Duration::from_millis(300));
    assert!(leaked.is_empty(), "a refused message arrived: {leaked:?}");

    crate::postgres::allow_connections(&two.db);
    assert_eq!(alice.cmd1("send bob back again"), "+ delivered");
    let e = bob.event();
    assert!(e.ends_with(" back again"), "{e}");
}

#[test]
fn a_node_that_falls_silent_and_comes_back_is_seen_again() {
    let (two, mut alice, mut bob) = two_nodes();
    // Frozen past the expiry (an overloaded host, a paused VM): n1 takes
    // its users for gone...
    // SAFETY: signalling a child process this test started.
    unsafe { libc::kill(two.n2.pid() as i32, libc::SIGSTOP) };
    eventually(NODE_GONE, "bob leaves n1's whoelse", || {
        !sees(&mut alice, &["bob"])
    });
    assert_eq!(alice.cmd1("send bob while frozen"), "+ stored");
    // ...and sees them again once it speaks again.
    // SAFETY: as above.
    unsafe { libc::kill(two.n2.pid() as i32, libc::SIGCONT) };
    eventually(SPREAD, "n1 sees bob again", || sees(&mut alice, &["bob"]));
    assert_eq!(alice.cmd1("send bob thawed"), "+ delivered");
    let e = bob.event();
    assert!(e.ends_with(" thawed"), "{e}");
}
