//! The store against each backend: a real SQLite file in a temporary
//! directory, and a real PostgreSQL server (started for the tests, see
//! `tests/support/postgres.rs`). The same tests run against both (the
//! `both!` list at the end); a few look at one backend's own files.

use super::*;
use rusqlite::Connection;

#[path = "../../tests/support/postgres.rs"]
mod pg;

/// Which backend a test runs against.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Sqlite,
    Postgres,
}

/// A data directory, and where the backend keeps its data.
struct Db {
    dir: tempfile::TempDir,
    location: StoreLocation,
}

impl Db {
    fn new(kind: Kind) -> Db {
        let location = match kind {
            Kind::Sqlite => StoreLocation::Sqlite,
            Kind::Postgres => StoreLocation::Postgres(pg::database()),
        };
        Db {
            dir: tempfile::tempdir().unwrap(),
            location,
        }
    }

    /// Opens the store (again): what a natterd start does.
    fn open(&self) -> Store {
        Store::open_at(self.dir.path(), &self.location).unwrap()
    }
}

fn open(kind: Kind) -> (Db, Store) {
    let db = Db::new(kind);
    let store = db.open();
    (db, store)
}

fn msg(sender: &str, recipient: &str, body: &str, unread: bool) -> NewMessage {
    NewMessage {
        ts: 1,
        sender: sender.into(),
        recipient: recipient.into(),
        body: body.into(),
        unread,
    }
}

/// Makes the accounts that messages and blocks refer to (by id).
fn accounts(store: &mut Store, names: &[&str]) {
    let requests: Vec<StoreRequest> = names
        .iter()
        .map(|name| StoreRequest::CreateUser {
            name: name.to_string(),
            hash: "h".into(),
            created: 0,
        })
        .collect();
    for out in store.run_batch(&requests) {
        out.unwrap();
    }
}

fn bodies(out: &Result<StoreOutput, StoreError>) -> Vec<String> {
    match out {
        Ok(StoreOutput::Rows(rows)) | Ok(StoreOutput::History { rows, .. }) => {
            rows.iter().map(|r| r.body.clone()).collect()
        }
        other => panic!("{other:?}"),
    }
}

fn inbox_returns_unread_after_the_cursor_and_keeps_them_until_advanced(kind: Kind) {
    let (_db, mut store) = open(kind);
    store.run_batch(&[
        StoreRequest::CreateUser {
            name: "b".into(),
            hash: "h".into(),
            created: 0,
        },
        StoreRequest::InsertMessages(vec![
            msg("a", "b", "one", true),
            msg("a", "b", "seen", false),
            msg("c", "b", "two", true),
            msg("b", "a", "other way", true),
        ]),
    ]);
    let take = |after| StoreRequest::TakeInbox {
        user: "b".into(),
        after,
        limit: 1,
    };
    let out = store.run_batch(&[take(0), take(1), take(3)]);
    assert_eq!(bodies(&out[0]), ["one"]);
    assert_eq!(bodies(&out[1]), ["two"]);
    assert!(bodies(&out[2]).is_empty());
    // Read only once written out: both are still unread.
    assert_eq!(store.load().unwrap().unread.get("b"), Some(&2));
    let marks = Marks {
        pushed: 0,
        inboxed: 1,
    };
    store.run_batch(&[StoreRequest::Advance(vec![("b".into(), marks)])]);
    let snap = store.load().unwrap();
    assert_eq!(snap.unread.get("b"), Some(&1));
    assert_eq!(snap.users["b"].marks, marks);
}

/// What a SIGKILL leaves: messages handed to a session (unread = 2) and
/// inbox rows, with only the marks file knowing how far the writes got.
fn reopening_folds_the_marks_file_in_and_returns_what_never_left(kind: Kind) {
    let db = Db::new(kind);
    {
        let mut store = db.open();
        store.run_batch(&[
            StoreRequest::CreateUser {
                name: "b".into(),
                hash: "h".into(),
                created: 0,
            },
            StoreRequest::InsertMessages(vec![
                msg("a", "b", "inbox 1", true),
                msg("a", "b", "inbox 2", true),
                msg("a", "b", "pushed 3", false),
                msg("a", "b", "pushed 4", false),
                msg("a", "b", "pushed 5", false),
            ]),
        ]);
        let slot = store.load().unwrap().users["b"].slot;
        let mut marks = store.take_marks().unwrap();
        marks
            .set(
                slot,
                Marks {
                    pushed: 4,
                    inboxed: 1,
                },
            )
            .unwrap();
        // Dropped without any Advance: as if killed.
    }
    let mut store = db.open();
    let snap = store.load().unwrap();
    assert_eq!(snap.unread.get("b"), Some(&2), "inbox 2 and pushed 5");
    assert_eq!(
        snap.users["b"].marks,
        Marks {
            pushed: 4,
            inboxed: 1
        }
    );
    let out = store.run_batch(&[StoreRequest::TakeInbox {
        user: "b".into(),
        after: 1,
        limit: 10,
    }]);
    assert_eq!(bodies(&out[0]), ["inbox 2", "pushed 5"]);
}

/// A damaged marks file can only make more show as unread.
fn a_mark_beyond_the_newest_message_is_not_trusted(kind: Kind) {
    let db = Db::new(kind);
    {
        let mut store = db.open();
        store.run_batch(&[
            StoreRequest::CreateUser {
                name: "b".into(),
                hash: "h".into(),
                created: 0,
            },
            StoreRequest::InsertMessages(vec![msg("a", "b", "pushed", false)]),
        ]);
        let slot = store.load().unwrap().users["b"].slot;
        let bogus = Marks {
            pushed: i64::MAX,
            inboxed: -5,
        };
        store.take_marks().unwrap().set(slot, bogus).unwrap();
    }
    let mut store = db.open();
    assert_eq!(store.load().unwrap().unread.get("b"), Some(&1));
}

/// A mark not trusted at one start (beyond the newest message) must not
/// become trusted at a later one, once that many messages exist: they were
/// never written out.
fn a_mark_not_trusted_once_stays_untrusted_as_messages_arrive(kind: Kind) {
    let db = Db::new(kind);
    let create = StoreRequest::CreateUser {
        name: "b".into(),
        hash: "h".into(),
        created: 0,
    };
    {
        let mut store = db.open();
        store.run_batch(&[create]);
        let slot = store.load().unwrap().users["b"].slot;
        // Left by another database (an older one restored, say).
        let stale = Marks {
            pushed: 3,
            inboxed: 3,
        };
        store.take_marks().unwrap().set(slot, stale).unwrap();
    }
    {
        let mut store = db.open();
        store.run_batch(&[StoreRequest::InsertMessages(vec![
            msg("a", "b", "one", true),
            msg("a", "b", "two", true),
            msg("a", "b", "three", true),
        ])]);
    }
    let mut store = db.open();
    assert_eq!(
        store.load().unwrap().unread.get("b"),
        Some(&3),
        "none of b's messages was ever written out"
    );
}

/// An account created after the marks file was written (a `--users`
/// import, after a database was replaced) starts with nothing read,
/// whatever its slot held.
fn an_account_created_later_does_not_inherit_a_stale_slot(kind: Kind) {
    let db = Db::new(kind);
    let create = |name: &str| StoreRequest::CreateUser {
        name: name.into(),
        hash: "h".into(),
        created: 0,
    };
    {
        let mut store = db.open();
        store.run_batch(&[create("a")]);
        let slot = store.load().unwrap().users["a"].slot;
        // Slot of the next account, left by another database.
        let stale = Marks {
            pushed: 2,
            inboxed: 2,
        };
        store.take_marks().unwrap().set(slot + 1, stale).unwrap();
    }
    {
        let mut store = db.open();
        store.run_batch(&[create("b")]);
        store.run_batch(&[StoreRequest::InsertMessages(vec![
            msg("a", "b", "one", true),
            msg("a", "b", "two", true),
        ])]);
    }
    let mut store = db.open();
    assert_eq!(
        store.load().unwrap().unread.get("b"),
        Some(&2),
        "none of b's messages was ever written out"
    );
}

fn history_is_the_last_n_oldest_first_optionally_with_one_user(kind: Kind) {
    let (_db, mut store) = open(kind);
    accounts(&mut store, &["a", "b", "c"]);
    store.run_batch(&[StoreRequest::InsertMessages(vec![
        msg("a", "b", "1", false),
        msg("b", "a", "2", false),
        msg("a", "c", "3", false),
        msg("c", "b", "4", false),
    ])]);
    let history = |with: Option<&str>, limit| StoreRequest::History {
        user: "a".into(),
        with: with.map(str::to_string),
        limit,
        after: 0,
        upto: None,
        page: 100,
    };
    let out = store.run_batch(&[history(None, 10), history(None, 2), history(Some("b"), 10)]);
    assert_eq!(bodies(&out[0]), ["1", "2", "3"]);
    assert_eq!(bodies(&out[1]), ["2", "3"]);
    assert_eq!(bodies(&out[2]), ["1", "2"]);
}

fn history_comes_a_page_at_a_time_within_the_span_found_first(kind: Kind) {
    let (_db, mut store) = open(kind);
    accounts(&mut store, &["a", "b"]);
    let to_b: Vec<NewMessage> = (1..=7)
        .map(|n| msg("a", "b", &n.to_string(), false))
        .collect();
    store.run_batch(&[StoreRequest::InsertMessages(to_b)]);
    let page = |after, upto| StoreRequest::History {
        user: "b".into(),
        with: None,
        limit: 5,
        after,
        upto,
        page: 2,
    };
    let out = store.run_batch(&[page(0, None)]);
    let Ok(StoreOutput::History { rows, upto, total }) = &out[0] else {
        panic!("{:?}", out[0])
    };
    assert_eq!((rows.len(), *upto, *total), (2, 7, 5));
    assert_eq!(bodies(&out[0]), ["3", "4"]);
    // A message arriving meanwhile is not part of this reply.
    store.run_batch(&[StoreRequest::InsertMessages(vec![msg(
        "a", "b", "8", false,
    )])]);
    let out = store.run_batch(&[page(4, Some(7)), page(6, Some(7))]);
    assert_eq!(bodies(&out[0]), ["5", "6"]);
    assert_eq!(bodies(&out[1]), ["7"]);
}

/// A list broadcast stores its text once; every recipient reads it, and
/// pruning keeps the row holding it while others refer to it.
fn a_list_broadcast_stores_its_text_once(kind: Kind) {
    let (_db, mut store) = open(kind);
    let names: Vec<String> = (0..300).map(|i| format!("u{i}")).collect();
    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
    all.push("a");
    accounts(&mut store, &all);
    let text: Arc<str> = "x".repeat(3000).into();
    let sender: Arc<str> = "a".into();
    let to = |r: &str| NewMessage {
        ts: 0,
        sender: Arc::clone(&sender),
        recipient: r.into(),
        body: Arc::clone(&text),
        unread: true,
    };
    store.run_batch(&[StoreRequest::InsertMessages(
        (0..300).map(|i| to(&format!("u{i}"))).collect(),
    )]);
    let stored = store
        .scalar("SELECT CAST(sum(length(body)) AS BIGINT) FROM messages")
        .unwrap();
    assert_eq!(stored, 3000, "the text is stored once");
    let out = store.run_batch(&[StoreRequest::TakeInbox {
        user: "u299".into(),
        after: 0,
        limit: 10,
    }]);
    assert_eq!(bodies(&out[0]), [&*text]);
}

fn a_failing_request_does_not_take_its_batch_down(kind: Kind) {
    let (_db, mut store) = open(kind);
    accounts(&mut store, &["b"]);
    let create = StoreRequest::CreateUser {
        name: "a".into(),
        hash: "h".into(),
        created: 0,
    };
    let out = store.run_batch(&[
        create.clone(),
        create,
        StoreRequest::SetBlock {
            blocker: "a".into(),
            blocked: "b".into(),
            on: true,
        },
    ]);
    assert!(out[0].is_ok());
    assert!(out[1].is_err(), "duplicate user must fail");
    assert!(out[2].is_ok());
    let snap = store.load().unwrap();
    assert_eq!(snap.users.len(), 2);
    assert_eq!(snap.blocks, vec![("a".to_string(), "b".to_string())]);
}

fn data_and_schema_version_survive_reopening(kind: Kind) {
    let db = Db::new(kind);
    {
        let mut store = db.open();
        store.run_batch(&[
            StoreRequest::CreateUser {
                name: "a".into(),
                hash: "h".into(),
                created: 0,
            },
            StoreRequest::SetLastSeen {
                user: "a".into(),
                at: 42,
            },
        ]);
    }
    let mut store = db.open();
    let a = &store.load().unwrap().users["a"];
    assert_eq!((a.hash.as_str(), a.last_seen), ("h", Some(42)));
    let version = match kind {
        Kind::Sqlite => store.scalar("PRAGMA user_version").unwrap(),
        Kind::Postgres => store.scalar("SELECT version FROM natter_schema").unwrap(),
    };
    let expected = match kind {
        Kind::Sqlite => i64::from(SCHEMA_VERSION),
        Kind::Postgres => super::postgres::PG_SCHEMA_VERSION,
    };
    assert_eq!(version, expected);
}

#[test]
fn a_database_from_a_newer_release_is_refused() {
    let db = Db::new(Kind::Sqlite);
    drop(db.open());
    let conn = Connection::open(db.dir.path().join(DB_FILE)).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let err = Store::open(db.dir.path()).err().expect("must refuse");
    assert!(err.0.contains("newer"), "{err}");
}

#[test]
fn a_postgres_database_from_a_newer_release_is_refused() {
    let db = Db::new(Kind::Postgres);
    drop(db.open());
    let StoreLocation::Postgres(url) = &db.location else {
        unreachable!()
    };
    let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
    client
        .execute("UPDATE natter_schema SET version = version + 1", &[])
        .unwrap();
    drop(client);
    let err = Store::open_at(db.dir.path(), &db.location)
        .err()
        .expect("must refuse");
    assert!(err.0.contains("newer"), "{err}");
}

fn the_thread_reports_every_request_after_its_commit_in_order(kind: Kind) {
    let (db, mut store) = open(kind);
    accounts(&mut store, &["a", "b"]);
    let (tx, rx) = mpsc::channel();
    let mut handle = store
        .spawn(move |batch: Vec<(u32, Result<StoreOutput, StoreError>)>| {
            for (tag, result) in batch {
                tx.send((tag, result)).unwrap();
            }
        })
        .unwrap();
    for i in 0..200u32 {
        let req = StoreRequest::InsertMessages(vec![msg("a", "b", &i.to_string(), true)]);
        assert!(handle.submit(req, i).is_ok());
    }
    handle.close();
    let tags: Vec<u32> = rx
        .iter()
        .map(|(tag, r)| {
            assert!(matches!(r, Ok(StoreOutput::Ids(_))));
            tag
        })
        .collect();
    assert_eq!(tags, (0..200).collect::<Vec<_>>());
    // Everything reported was committed: a fresh connection sees it.
    let mut reopened = db.open();
    assert_eq!(reopened.load().unwrap().unread.get("b"), Some(&200));
}

fn retention_deletes_only_old_messages_that_were_read(kind: Kind) {
    let (_db, mut store) = open(kind);
    accounts(&mut store, &["a", "b"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut recent = msg("a", "b", "recent", false);
    recent.ts = now;
    store.run_batch(&[StoreRequest::InsertMessages(vec![
        msg("a", "b", "old and read", false),
        msg("a", "b", "old but unread", true),
        recent,
    ])]);
    store.set_retention(Some(Duration::from_secs(86_400)));
    // A second connection, as the reader thread has (the data directory is
    // locked by the store).
    let mut reader = store.reader().unwrap();
    // The thread prunes as soon as it starts, with no request to wake it.
    let mut handle = store
        .spawn(|_: Vec<((), Result<StoreOutput, StoreError>)>| {})
        .unwrap();
    let history = |reader: &mut Box<dyn Reader>| {
        let out = reader.read(&StoreRequest::History {
            user: "b".into(),
            with: None,
            limit: 10,
            after: 0,
            upto: None,
            page: 100,
        });
        bodies(&out)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while history(&mut reader).len() == 3 {
        assert!(Instant::now() < deadline, "nothing was pruned");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(history(&mut reader), vec!["old but unread", "recent"]);
    handle.close();
}

/// The newest account deleted and its name registered again: the new
/// account gets a new id (never the old one's), so nothing old is its.
fn a_name_registered_again_is_a_new_account_even_when_the_old_had_the_newest_id(kind: Kind) {
    let (_db, mut store) = open(kind);
    accounts(&mut store, &["a", "b"]);
    store.run_batch(&[
        StoreRequest::InsertMessages(vec![
            msg("a", "b", "read", false),
            msg("a", "b", "unread", true),
        ]),
        StoreRequest::SetBlock {
            blocker: "b".into(),
            blocked: "a".into(),
            on: true,
        },
        // "read" was written out to b's session.
        StoreRequest::Advance(vec![(
            "b".into(),
            Marks {
                pushed: 1,
                inboxed: 0,
            },
        )]),
    ]);
    let old_slot = store.load().unwrap().users["b"].slot;
    for out in store.run_batch(&[StoreRequest::DeleteUser { user: "b".into() }]) {
        out.unwrap();
    }
    accounts(&mut store, &["b"]);
    let snap = store.load().unwrap();
    assert_ne!(snap.users["b"].slot, old_slot);
    assert!(snap.blocks.is_empty());
    assert_eq!(snap.unread.get("b"), None);
    let history = |user: &str| StoreRequest::History {
        user: user.into(),
        with: None,
        limit: 10,
        after: 0,
        upto: None,
        page: 100,
    };
    let out = store.run_batch(&[history("b"), history("a")]);
    assert!(bodies(&out[0]).is_empty());
    // The other side keeps what was read, with the old account detached.
    let Ok(StoreOutput::History { rows, .. }) = &out[1] else {
        panic!("{:?}", out[1])
    };
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].body, "read");
    assert_eq!(rows[0].recipient, format!("!deleted-{old_slot}"));
}

/// Each test above, once per backend.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[test]
            fn $name() {
                super::$name(super::Kind::Sqlite)
            })*
        }
        mod on_postgres {
            $(#[test]
            fn $name() {
                super::$name(super::Kind::Postgres)
            })*
        }
    };
}

both!(
    inbox_returns_unread_after_the_cursor_and_keeps_them_until_advanced,
    reopening_folds_the_marks_file_in_and_returns_what_never_left,
    a_mark_beyond_the_newest_message_is_not_trusted,
    a_mark_not_trusted_once_stays_untrusted_as_messages_arrive,
    an_account_created_later_does_not_inherit_a_stale_slot,
    history_is_the_last_n_oldest_first_optionally_with_one_user,
    history_comes_a_page_at_a_time_within_the_span_found_first,
    a_list_broadcast_stores_its_text_once,
    a_failing_request_does_not_take_its_batch_down,
    data_and_schema_version_survive_reopening,
    the_thread_reports_every_request_after_its_commit_in_order,
    retention_deletes_only_old_messages_that_were_read,
    a_name_registered_again_is_a_new_account_even_when_the_old_had_the_newest_id,
);
