//! A database written by the release before accounts were keyed by id
//! (schema 4, `tests/fixtures/v4`, made by `tests/fixtures/make_v4_db.py`)
//! opens in today's natterd with everything in it, and the names it held
//! for deleted accounts no longer lead anywhere.

use std::path::Path;

use crate::util::Server;

/// A copy of the fixture in a fresh directory; natterd migrates the copy.
fn v4_data(dir: &Path) -> std::path::PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v4");
    let data = dir.join("data");
    std::fs::create_dir(&data).expect("data dir");
    for file in ["natter.db", "natter.marks"] {
        std::fs::copy(fixture.join(file), data.join(file)).expect("copy the fixture");
    }
    let version: u32 = rusqlite::Connection::open(data.join("natter.db"))
        .and_then(|db| db.pragma_query_value(None, "user_version", |r| r.get(0)))
        .expect("read the fixture's schema version");
    assert_eq!(version, 4, "the fixture is a schema-4 database");
    data
}

/// The text of each `history` row, without its time.
fn history(rows: &[String]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| r.strip_prefix("= "))
        .map(|r| r.split_once(' ').map_or("", |(_, rest)| rest).to_string())
        .collect()
}

#[test]
fn a_database_from_the_name_keyed_release_keeps_everything_and_deleted_names_lead_nowhere() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = v4_data(dir.path());
    let server = Server::start_at(&data, &[]);

    // Accounts, passwords, conversations and blocks are all there.
    let mut alice = server.connect();
    alice.login("alice", "password-alice");
    let mut rows = alice.cmd("history bob");
    assert_eq!(rows.pop().as_deref(), Some("+ 3 messages"));
    assert_eq!(
        history(&rows),
        [
            "alice bob hello bob",
            "bob alice hi alice",
            "alice bob to both"
        ]
    );
    // The deleted accounts' messages stay in alice's history, detached.
    let mut all = alice.cmd("history");
    assert_eq!(all.pop().as_deref(), Some("+ 8 messages"));
    let all = history(&all);
    assert!(
        all[5].starts_with("!deleted-") && all[5].ends_with(" alice from dave"),
        "{all:?}"
    );
    assert!(
        all[6].starts_with("!deleted-") && all[6].ends_with(" alice from erin"),
        "{all:?}"
    );
    assert_ne!(all[5].split(' ').next(), all[6].split(' ').next());

    let mut bob = server.connect();
    bob.login("bob", "password-bob");
    assert_eq!(bob.cmd("blocked"), ["= carol", "+ 1 blocked"]);

    // carol's inbox (the list broadcast's text is stored once) is intact.
    let mut carol = server.connect();
    let welcome = carol.cmd1("login carol password-carol");
    assert_eq!(welcome, "+ welcome carol (2 unread messages)");
    let inbox = carol.drain_inbox();
    assert_eq!(inbox.len(), 2, "{inbox:?}");
    assert!(inbox[0].ends_with(" alice are you there"), "{inbox:?}");
    assert!(inbox[1].ends_with(" alice to both"), "{inbox:?}");

    // dave (deleted by natterctl) and erin (deleted by hand in SQL, the
    // old trap) register again and find nothing of the old accounts.
    for name in ["dave", "erin"] {
        let mut again = server.connect();
        assert_eq!(
            again.cmd1(&format!("register {name} password-new-{name}")),
            format!("+ registered {name}")
        );
        assert_eq!(again.cmd("history"), ["+ 0 messages"], "{name}");
        assert!(again.drain_inbox().is_empty(), "{name}");
        assert_eq!(
            again.cmd("history alice"),
            ["+ 0 messages"],
            "{name} sees nothing old"
        );
    }

    // And it is schema 5 now, keyed by id.
    let db = rusqlite::Connection::open_with_flags(
        data.join("natter.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the migrated database");
    let version: u32 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("version");
    assert_eq!(version, 5);
    let orphans: i64 = db
        .query_row(
            "SELECT count(*) FROM messages m
             WHERE m.sender_id NOT IN (SELECT id FROM users)
                OR m.recipient_id NOT IN (SELECT id FROM users)",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(orphans, 3, "dave's and erin's messages are detached");
}
