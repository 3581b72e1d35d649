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
