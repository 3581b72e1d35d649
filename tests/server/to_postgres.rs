//! `natterctl migrate`: a single node's data directory, written by the
//! real natterd on SQLite, copied into a real PostgreSQL (the tests' own,
//! tests/support/postgres.rs), then served by natterd with `--store`:
//! everything is there and reads the same over the wire, read state
//! included; running it again is harmless, a copy killed half-way leaves
//! nothing and finishes when run again, and it refuses a running node's
//! directory and a database holding other data.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::pg;
use crate::util::{complete_lines, slow_link, Server};

/// How long one `natterctl migrate` may take.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `natterctl migrate --from data --to url`, killed if it runs past
/// [`MIGRATE_TIMEOUT`].
fn migrate(data: &Path, url: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_natterctl"))
        .arg("migrate")
        .arg("--from")
        .arg(data)
        .args(["--to", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run natterctl");
    let started = Instant::now();
    while child.try_wait().expect("wait for natterctl").is_none() {
        if started.elapsed() > MIGRATE_TIMEOUT {
            let _ = child.kill();
            panic!("natterctl migrate did not finish in {MIGRATE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("natterctl output")
}

/// Runs migrate and expects success; returns what it printed.
fn migrate_ok(data: &Path, url: &str) -> String {
    let out = migrate(data, url);
    assert!(
        out.status.success(),
        "natterctl migrate: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs migrate and expects it to refuse (exit 1); returns its message.
fn migrate_refused(data: &Path, url: &str) -> String {
    let out = migrate(data, url);
    assert_eq!(
        out.status.code(),
        Some(1),
        "natterctl migrate should refuse: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Stops a server with SIGTERM and checks it exited cleanly.
fn stop(mut server: Server) {
    let (status, _) = server.signal(libc::SIGTERM);
    assert!(status.success(), "natterd exited with {status:?}");
}

/// A connection to the test database.
fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("connect to the test database")
}

/// One number from the test database.
fn count(url: &str, sql: &str) -> i64 {
    connect(url).query_one(sql, &[]).expect(sql).get(0)
}

/// What the single node looked like over the wire before the move.
struct Before {
    /// alice's `history 100`.
    history: Vec<String>,
    /// alice's `wholast 10080`, nobody else online.
    wholast: Vec<String>,
}

/// Runs natterd on SQLite in `data` and leaves a bit of everything there:
/// accounts (one deleted, with history left detached), a direct message
/// and a list broadcast waiting in bob's inbox, carol's inbox read, pushed
/// messages read, a block, last-seen times. Stops it with SIGTERM.
fn single_node(data: &Path) -> Before {
    let server = Server::start_at(data, &[]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    let mut carol = server.user("carol");
    let mut dave = server.user("dave");
    let mut erin = server.user("erin");
    assert_eq!(bob.cmd1("quit"), "+ bye");
    assert_eq!(carol.cmd1("quit"), "+ bye");

    assert_eq!(alice.cmd1("send bob hello bob"), "+ stored");
    assert_eq!(alice.cmd1("send carol first for carol"), "+ stored");
    assert_eq!(
        alice.cmd("broadcast user bob carol message to both"),
        ["= bob stored", "= carol stored", "+ sent to 2 of 2"]
    );
    // Pushed and written out: read.
    assert_eq!(alice.cmd1("send dave hi dave"), "+ delivered");
    assert!(dave.event().ends_with(" hi dave"));
    assert_eq!(dave.cmd1("send alice thanks alice"), "+ delivered");
    assert!(alice.event().ends_with(" thanks alice"));
    assert_eq!(dave.cmd1("block alice"), "+ blocked alice");
    // erin talks, then her account is deleted: her history stays detached.
    assert_eq!(alice.cmd1("send erin hi erin"), "+ delivered");
    assert!(erin.event().ends_with(" hi erin"));
    assert_eq!(erin.cmd1("send alice from erin"), "+ delivered");
    assert!(alice.event().ends_with(" from erin"));
    assert_eq!(erin.cmd1("quit"), "+ bye");
    let deleted = Command::new(env!("CARGO_BIN_EXE_natterctl"))
        .arg("--data")
        .arg(data)
        .args(["user", "del", "erin"])
        .output()
        .expect("run natterctl user del");
    assert!(deleted.status.success(), "{deleted:?}");
    // carol reads her inbox: read once written out.
    let mut carol = server.connect();
    assert_eq!(
        carol.cmd1("login carol password-carol"),
        "+ welcome carol (2 unread messages)"
    );
    assert_eq!(carol.drain_inbox().len(), 2);
    assert_eq!(carol.cmd1("quit"), "+ bye");
    assert_eq!(dave.cmd1("quit"), "+ bye");

    drop(alice);
    stop(server);
    // What the node shows once restarted (last-seen times are written in
    // the background, and at the stop) is what the copy must show.
    let server = Server::start_at(data, &[]);
    let mut alice = server.connect();
    alice.login("alice", "password-alice");
    let mut history = alice.cmd("history 100");
    assert_eq!(history.pop().as_deref(), Some("+ 8 messages"));
    assert!(
        history
            .iter()
            .any(|r| r.contains(" !deleted-") && r.ends_with(" from erin")),
        "{history:?}"
    );
    let wholast = alice.cmd("wholast 10080");
    assert_eq!(wholast.len(), 4, "bob, carol and dave: {wholast:?}");
    drop(alice);
    stop(server);
    Before { history, wholast }
}

#[test]
fn a_migrated_node_serves_the_same_accounts_inboxes_history_and_blocks_from_postgres() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let before = single_node(&data);
    let url = pg::database();

    let said = migrate_ok(&data, &url);
    assert!(
        said.contains("migrated 4 accounts, 8 messages and 1 blocks"),
        "{said}"
    );
    // Again: nothing to do, and nothing changes.
    let said = migrate_ok(&data, &url);
    assert!(said.contains("already migrated"), "{said}");
    assert_eq!(count(&url, "SELECT count(*) FROM messages"), 8);
    // Read state says itself: pushed and written out is plainly read.
    assert_eq!(
        count(&url, "SELECT count(*) FROM messages WHERE unread = 2"),
        0
    );
    assert_eq!(
        count(&url, "SELECT count(*) FROM messages WHERE unread = 1"),
        2,
        "bob's two"
    );

    // A new node on a fresh data directory (no marks file of its own):
    // everything it knows comes from PostgreSQL.
    let server = Server::start(&["--store", &url]);
    let mut alice = server.connect();
    assert_eq!(
        alice.cmd1("login alice password-alice"),
        "+ welcome alice (0 unread messages)"
    );
    assert_eq!(alice.cmd("wholast 10080"), before.wholast);
    let mut bob = server.connect();
    assert_eq!(
        bob.cmd1("login bob password-bob"),
        "+ welcome bob (2 unread messages)"
    );
    let inbox = bob.drain_inbox();
    assert_eq!(inbox.len(), 2, "{inbox:?}");
    assert!(inbox[0].ends_with(" alice hello bob"), "{inbox:?}");
    assert!(inbox[1].ends_with(" alice to both"), "{inbox:?}");
    let mut carol = server.connect();
    assert_eq!(
        carol.cmd1("login carol password-carol"),
        "+ welcome carol (0 unread messages)"
    );
    let mut dave = server.connect();
    assert_eq!(
        dave.cmd1("login dave password-dave"),
        "+ welcome dave (0 unread messages)"
    );
    assert_eq!(dave.cmd("blocked"), ["= alice", "+ 1 blocked"]);
    assert!(alice.cmd1("send dave still there").starts_with("- BLOCKED"));

    // New accounts and messages get ids past the copied ones: erin's
    // account id too (it stays with her detached history, never reused).
    let mut erin = server.user("erin");
    assert_eq!(erin.cmd("history"), ["+ 0 messages"]);
    let mut gina = server.user("gina");
    assert_eq!(alice.cmd1("send gina welcome gina"), "+ delivered");
    assert!(gina.event().ends_with(" welcome gina"));
    assert_eq!(alice.cmd1("send bob one more"), "+ delivered");
    assert!(bob.event().ends_with(" one more"));
    let mut history = alice.cmd("history 100");
    assert_eq!(history.pop().as_deref(), Some("+ 10 messages"));
    assert_eq!(history[..8], before.history[..], "history is intact");
    assert!(
        history[8].ends_with(" alice gina welcome gina"),
        "{history:?}"
    );

    // The database has moved on: the old directory is other data now.
    drop((alice, bob, carol, dave, erin, gina));
    stop(server);
    let refused = migrate_refused(&data, &url);
    assert!(refused.contains("other data"), "{refused}");
}

#[test]
fn migrate_refuses_while_natterd_runs_on_the_data_directory() {
    let url = pg::database();
    let server = Server::start(&[]);
    drop(server.user("alice"));
    let refused = migrate_refused(&server.data, &url);
    assert!(refused.contains("in use by another natterd"), "{refused}");
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'users'"
        ),
        0,
        "the database was not touched"
    );
    // Stopped, it goes.
    let data = server.data.clone();
    let mut server = server;
    server.signal(libc::SIGTERM);
    let said = migrate_ok(&data, &url);
    assert!(said.contains("migrated 1 accounts"), "{said}");
}

#[test]
fn migrate_refuses_a_database_holding_other_data() {
    let url = pg::database();
    let other = Server::start(&["--store", &url]);
    drop(other.user("mallory"));
    stop(other);

    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let node = Server::start_at(&data, &[]);
    drop(node.user("alice"));
    stop(node);

    let refused = migrate_refused(&data, &url);
    assert!(refused.contains("other data"), "{refused}");
    let names: Vec<String> = connect(&url)
        .query("SELECT name FROM users", &[])
        .expect("names")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["mallory"], "nothing was copied");
}

#[test]
fn a_migration_killed_half_way_leaves_nothing_and_finishes_when_run_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let node = Server::start_at(&data, &[]);
    let mut alice = node.user("alice");
    let mut bob = node.user("bob");
    assert_eq!(bob.cmd1("quit"), "+ bye");
    for i in 0..20 {
        assert_eq!(alice.cmd1(&format!("send bob m{i}")), "+ stored");
    }
    drop(alice);
    stop(node);

    // The schema is there (natterd made it), and inserting messages
    // stalls: the copy is caught half-way, accounts written, and killed.
    let url = pg::database();
    stop(Server::start(&["--store", &url]));
    connect(&url)
        .batch_execute(
            "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$;
             CREATE TRIGGER stall BEFORE INSERT ON messages
               FOR EACH STATEMENT EXECUTE FUNCTION stall();",
        )
        .expect("the stalling trigger");
    let mut copy = Command::new(env!("CARGO_BIN_EXE_natterctl"))
        .arg("migrate")
        .arg("--from")
        .arg(&data)
        .args(["--to", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run natterctl");
    let until = Instant::now() + MIGRATE_TIMEOUT;
    while count(
        &url,
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event = 'PgSleep'",
    ) == 0
    {
        assert!(
            Instant::now() < until,
            "the copy never reached the messages"
        );
        assert!(
            copy.try_wait().expect("wait").is_none(),
            "natterctl ended before the copy reached the messages"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    copy.kill().expect("SIGKILL natterctl");
    copy.wait().expect("reap natterctl");
    assert_eq!(
        count(&url, "SELECT count(*) FROM users"),
        0,
        "all or nothing"
    );

    // Its transaction ends when PostgreSQL notices; then the copy is run
    // again (without the stall) and finishes the job.
    let mut admin = connect(&url);
    admin
        .batch_execute("SET statement_timeout = '30s'; DROP TRIGGER stall ON messages")
        .expect("drop the trigger");
    let said = migrate_ok(&data, &url);
    assert!(said.contains("migrated 2 accounts, 20 messages"), "{said}");
    let server = Server::start(&["--store", &url]);
    let mut bob = server.connect();
    assert_eq!(
        bob.cmd1("login bob password-bob"),
        "+ welcome bob (20 unread messages)"
    );
    let inbox = bob.drain_inbox();
    assert!(inbox[19].ends_with(" alice m19"), "{inbox:?}");
}

/// The message numbers in `lines` (bodies start with `n<number>:`).
fn numbered<'a>(lines: impl IntoIterator<Item = &'a String>) -> BTreeSet<usize> {
    lines
        .into_iter()
        .filter_map(|line| {
            let word = line
                .split(' ')
                .find(|w| w.starts_with('n') && w.ends_with(':'))?;
            word[1..word.len() - 1].parse().ok()
        })
        .collect()
}

#[test]
fn messages_a_killed_node_never_wrote_out_are_in_the_inbox_after_the_move_once() {
    const SENT: usize = 6000;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    // Room for every push in bob's output buffer: natterd holds a backlog
    // for him when it dies, recorded as pushed but never written out.
    let mut node = Server::start_at(&data, &["--max-outbuf", "16777216"]);
    let mut alice = node.user("alice");
    let mut bob = slow_link(&node);
    assert_eq!(bob.cmd1("register bob password-bob"), "+ registered bob");
    let pad = "p".repeat(1000);
    let script: String = (0..SENT)
        .map(|n| format!("send bob n{n}: {pad}\n"))
        .collect();
    alice.send_raw(script.as_bytes());
    for n in 0..SENT {
        assert_eq!(alice.line(), "+ delivered", "send {n}");
    }
    let mut lines: Vec<String> = (0..50).map(|_| bob.line()).collect();
    node.kill();
    lines.extend(complete_lines(&bob.read_to_end()));
    let received = numbered(&lines);
    assert!(
        received.len() < SENT,
        "bob got every message before the kill: this run proves nothing"
    );

    // Moved straight from the crashed node's directory to a new node with
    // no marks file: only the fold migrate does knows what bob got.
    let url = pg::database();
    migrate_ok(&data, &url);
    let server = Server::start(&["--store", &url]);
    let mut bob = server.connect();
    bob.login("bob", "password-bob");
    let inbox = bob.drain_inbox();
    let kept = numbered(&inbox);
    assert_eq!(kept.len(), inbox.len(), "the inbox has a message twice");
    assert!(
        received.is_disjoint(&kept),
        "messages bob got are in his inbox again"
    );
    assert_eq!(
        received.len() + kept.len(),
        SENT,
        "messages were lost: got {}, inbox {}",
        received.len(),
        kept.len()
    );
}

#[test]
fn a_schema_4_directory_moves_with_deleted_accounts_history_left_detached() {
    // The committed fixture (see tests/server/migration.rs): migrate
    // brings it to the current schema first, as natterd would.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v4");
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    for file in ["natter.db", "natter.marks"] {
        std::fs::copy(fixture.join(file), data.join(file)).expect("copy the fixture");
    }
    let url = pg::database();
    let said = migrate_ok(&data, &url);
    assert!(said.contains("migrated "), "{said}");

    // What the node itself shows (upgraded by migrate) ...
    let node = Server::start_at(&data, &[]);
    let mut alice = node.connect();
    alice.login("alice", "password-alice");
    let history = alice.cmd("history 100");
    assert_eq!(history.last().map(String::as_str), Some("+ 8 messages"));
    drop(alice);
    stop(node);

    // ... PostgreSQL shows, and the names of accounts deleted before the
    // move lead nowhere there either.
    let server = Server::start(&["--store", &url]);
    let mut alice = server.connect();
    alice.login("alice", "password-alice");
    assert_eq!(alice.cmd("history 100"), history);
    let mut carol = server.connect();
    assert_eq!(
        carol.cmd1("login carol password-carol"),
        "+ welcome carol (2 unread messages)"
    );
    let mut bob = server.connect();
    bob.login("bob", "password-bob");
    assert_eq!(bob.cmd("blocked"), ["= carol", "+ 1 blocked"]);
    for name in ["dave", "erin"] {
        let mut again = server.user(name);
        assert_eq!(again.cmd("history"), ["+ 0 messages"], "{name}");
    }
    assert_eq!(alice.cmd("history 100"), history, "still detached");
}
