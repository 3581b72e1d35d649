//! natterd with `--store postgres://...` against a real PostgreSQL server
//! (started for the tests: tests/support/postgres.rs): what is acknowledged
//! survives a SIGKILL, and while the database is unreachable durable
//! commands get `- INTERNAL`, never a false `+`, until it is back.

use crate::pg;
use crate::util::Server;

/// The database name at the end of a test database's URL.
pub fn database_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or_default()
}

/// Runs SQL as the superuser on the server's maintenance database (so it
/// works while the test's own database refuses connections).
pub fn as_superuser(url: &str, sql: &str) {
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    let mut admin = postgres::Client::connect(&format!("{base}/postgres"), postgres::NoTls)
        .expect("connect to the maintenance database");
    admin.batch_execute(sql).expect("superuser SQL");
}

/// The test's database goes away under natterd: its connections are cut
/// and new ones refused, until [`allow_connections`].
pub fn refuse_connections(url: &str) {
    let db = database_name(url);
    as_superuser(
        url,
        &format!(
            "ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = '{db}' AND pid <> pg_backend_pid();"
        ),
    );
}

/// The database is back.
pub fn allow_connections(url: &str) {
    let db = database_name(url);
    as_superuser(
        url,
        &format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true;"),
    );
}

#[test]
fn acknowledged_messages_survive_a_sigkill_on_postgres() {
    let url = pg::database();
    let server = Server::start(&["--store", &url]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    assert_eq!(bob.cmd1("quit"), "+ bye");
    for i in 0..50 {
        assert_eq!(alice.cmd1(&format!("send bob m{i}")), "+ stored");
    }
    let server = server.restart_after_kill();
    let mut bob = server.connect();
    assert_eq!(
        bob.cmd1("login bob password-bob"),
        "+ welcome bob (50 unread messages)"
    );
    let inbox = bob.drain_inbox();
    assert_eq!(inbox.len(), 50);
    for (i, row) in inbox.iter().enumerate() {
        assert!(row.ends_with(&format!(" alice m{i}")), "{row}");
    }
    let mut rows = bob.cmd("history alice 100");
    assert_eq!(rows.pop().as_deref(), Some("+ 50 messages"));
    // Read once written out: a later start has nothing unread for bob.
    let server = server.restart();
    let mut bob = server.connect();
    assert_eq!(
        bob.cmd1("login bob password-bob"),
        "+ welcome bob (0 unread messages)"
    );
}

#[test]
fn while_postgres_is_unreachable_writes_are_refused_never_falsely_acknowledged() {
    let url = pg::database();
    let server = Server::start(&["--store", &url]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");

    refuse_connections(&url);
    for i in 0..3 {
        let reply = alice.cmd1(&format!("send bob lost {i}"));
        assert!(reply.starts_with("- INTERNAL"), "{reply}");
    }
    let history = alice.cmd("history bob");
    assert!(
        history.last().is_some_and(|l| l.starts_with("- INTERNAL")),
        "{history:?}"
    );
    // Nothing refused was delivered either.
    assert_eq!(bob.cmd1("ping"), "+ pong");
    assert!(server.log().contains("unreachable"), "the log says why");

    // Back: natterd connects again by itself.
    allow_connections(&url);
    assert_eq!(alice.cmd1("send bob back again"), "+ delivered");
    let event = bob.event();
    assert!(
        event.starts_with("* msg alice ") && event.ends_with(" back again"),
        "{event}"
    );
    let mut rows = alice.cmd("history bob");
    assert_eq!(rows.pop().as_deref(), Some("+ 1 messages"), "{rows:?}");

    let server = server.restart_after_kill();
    let mut bob = server.connect();
    bob.login("bob", "password-bob");
    let mut rows = bob.cmd("history alice");
    assert_eq!(rows.pop().as_deref(), Some("+ 1 messages"));
    assert!(rows[0].ends_with(" alice bob back again"), "{rows:?}");
}
