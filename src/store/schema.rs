//! The database schema and its migrations. `PRAGMA user_version` records
//! how many migrations a database has had; opening runs the missing ones in
//! one transaction, so a newer release can open any older database. Never
//! edit a migration that has shipped: add a new one.

use rusqlite::Connection;

/// Migrations in order; entry `i` takes a database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, direct messages, blocks.
    "CREATE TABLE users (
        name      TEXT PRIMARY KEY NOT NULL,
        hash      TEXT NOT NULL,
        created   INTEGER NOT NULL,
        last_seen INTEGER
     );
     CREATE TABLE messages (
        id        INTEGER PRIMARY KEY,
        ts        INTEGER NOT NULL,
        sender    TEXT NOT NULL,
        recipient TEXT NOT NULL,
        body      TEXT NOT NULL,
        unread    INTEGER NOT NULL
     );
     CREATE INDEX messages_by_sender ON messages (sender, id);
     CREATE INDEX messages_by_recipient ON messages (recipient, id);
     CREATE INDEX messages_unread ON messages (recipient, id) WHERE unread = 1;
     CREATE TABLE blocks (
        blocker TEXT NOT NULL,
        blocked TEXT NOT NULL,
        PRIMARY KEY (blocker, blocked)
     ) WITHOUT ROWID;",
    // 2: read marks (see marks.rs). A message handed to an online session
    // is stored with unread = 2 and counts as read once its id is at most
    // its recipient's `pushed`; an inbox row (unread = 1) once at most
    // `inboxed`. Rows written before this migration keep 0 and 1.
    "ALTER TABLE users ADD COLUMN pushed INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE users ADD COLUMN inboxed INTEGER NOT NULL DEFAULT 0;",
    // 3: one body per list broadcast. The first recipient's row holds the
    // text; the others have an empty body and `body_of` = that row's id
    // (a row referenced so is kept until its references are gone).
    "ALTER TABLE messages ADD COLUMN body_of INTEGER;
     CREATE INDEX messages_body_refs ON messages (body_of) WHERE body_of IS NOT NULL;",
    // 4: accounts the operator banned (`natterctl user lock`).
    "ALTER TABLE users ADD COLUMN banned INTEGER NOT NULL DEFAULT 0;",
    // 5: accounts are identities, not names. Messages and blocks refer to
    // an account id that is never given out again (AUTOINCREMENT), so
    // deleting an account detaches its history for good: a new account
    // with the name gets a new id and sees nothing old. Ids keep the old
    // rowids, which are the accounts' slots in the marks file. A name in
    // messages or blocks that is no account (deleted by hand, or a
    // `!deleted-<n>` tombstone) gets an id of its own that no account has,
    // so its messages stay detached; its unread rows stop being unread and
    // its blocks go. A message id keeps its value (the read marks hold
    // ids). `sender_id`/`recipient_id` are NULL only for a message
    // committed just after its account was deleted.
    "CREATE TABLE accounts (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        name      TEXT NOT NULL UNIQUE,
        hash      TEXT NOT NULL,
        created   INTEGER NOT NULL,
        last_seen INTEGER,
        pushed    INTEGER NOT NULL DEFAULT 0,
        inboxed   INTEGER NOT NULL DEFAULT 0,
        banned    INTEGER NOT NULL DEFAULT 0
     );
     INSERT INTO accounts (id, name, hash, created, last_seen, pushed, inboxed, banned)
        SELECT rowid, name, hash, created, last_seen, pushed, inboxed, banned FROM users;
     CREATE TEMP TABLE former_names (name TEXT PRIMARY KEY) WITHOUT ROWID;
     INSERT INTO former_names
        SELECT sender FROM messages UNION SELECT recipient FROM messages
        UNION SELECT blocker FROM blocks UNION SELECT blocked FROM blocks
        EXCEPT SELECT name FROM users;
     INSERT INTO accounts (name, hash, created) SELECT name, '', 0 FROM former_names;
     CREATE TABLE messages_by_id (
        id           INTEGER PRIMARY KEY,
        ts           INTEGER NOT NULL,
        sender_id    INTEGER,
        recipient_id INTEGER,
        body         TEXT NOT NULL,
        unread       INTEGER NOT NULL,
        body_of      INTEGER
     );
     INSERT INTO messages_by_id (id, ts, sender_id, recipient_id, body, unread, body_of)
        SELECT m.id, m.ts, s.id, r.id, m.body,
               CASE WHEN r.name IN (SELECT name FROM former_names) THEN 0 ELSE m.unread END,
               m.body_of
        FROM messages m JOIN accounts s ON s.name = m.sender JOIN accounts r ON r.name = m.recipient;
     DROP TABLE messages;
     ALTER TABLE messages_by_id RENAME TO messages;
     CREATE INDEX messages_by_sender ON messages (sender_id, id);
     CREATE INDEX messages_by_recipient ON messages (recipient_id, id);
     CREATE INDEX messages_unread ON messages (recipient_id, id) WHERE unread = 1;
     CREATE INDEX messages_body_refs ON messages (body_of) WHERE body_of IS NOT NULL;
     CREATE TABLE blocks_by_id (
        blocker_id INTEGER NOT NULL,
        blocked_id INTEGER NOT NULL,
        PRIMARY KEY (blocker_id, blocked_id)
     ) WITHOUT ROWID;
     INSERT INTO blocks_by_id (blocker_id, blocked_id)
        SELECT a.id, b.id FROM blocks k
        JOIN users ua ON ua.name = k.blocker JOIN users ub ON ub.name = k.blocked
        JOIN accounts a ON a.name = k.blocker JOIN accounts b ON b.name = k.blocked;
     DROP TABLE blocks;
     ALTER TABLE blocks_by_id RENAME TO blocks;
     DELETE FROM accounts WHERE name IN (SELECT name FROM former_names);
     DROP TABLE former_names;
     DROP TABLE users;
     ALTER TABLE accounts RENAME TO users;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the database up to [`SCHEMA_VERSION`]; refuses a newer one.
pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    let current: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if current > SCHEMA_VERSION {
        return Err(format!(
            "database schema version {current} is newer than this server's {SCHEMA_VERSION}; upgrade natterd"
        ));
    }
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql)
            .map_err(|e| format!("migration {}: {e}", i + 1))?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}
