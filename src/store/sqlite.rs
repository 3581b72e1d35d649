//! The embedded backend, natterd's default: one SQLite database file in
//! the data directory (WAL, `synchronous=FULL`, so a commit is fsync'd
//! before anything built on it is acknowledged), and a second, read-only
//! connection for the reader thread. All of its SQL is here; `schema.rs`
//! holds its migrations, `files.rs` the file's mode and identity.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::files::{make_private, DbFile};
use super::marks::{Marks, ReadMarks};
use super::schema;
use super::{
    text_holders, within_part, Backend, MessageRow, OpenError, Reader, Snapshot, StoreError,
    StoreOutput, StoreRequest, UserRow, DB_FILE, UNREAD_INBOX, UNREAD_PUSHED,
};

/// The database file and the writer's connection to it.
pub struct SqliteBackend {
    conn: Connection,
    /// To notice the file deleted or replaced under the running server.
    file: DbFile,
    path: PathBuf,
}

impl SqliteBackend {
    /// Opens (creating if needed) `<dir>/natter.db` and brings its schema
    /// up to date.
    pub fn open(dir: &Path) -> Result<SqliteBackend, OpenError> {
        let path = dir.join(DB_FILE);
        make_private(&path)?;
        let fail =
            |e: rusqlite::Error| OpenError(format!("cannot open database {}: {e}", path.display()));
        let mut conn = Connection::open(&path).map_err(fail)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        // FULL: a commit is fsync'd before we acknowledge anything built on it.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(fail)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(fail)?;
        conn.pragma_update(None, "cache_size", -512).map_err(fail)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(fail)?;
        schema::migrate(&mut conn)
            .map_err(|e| OpenError(format!("cannot migrate database {}: {e}", path.display())))?;
        Ok(SqliteBackend {
            conn,
            file: DbFile::new(path.clone()),
            path,
        })
    }
}

impl Backend for SqliteBackend {
    fn run_batch(&mut self, requests: &[StoreRequest]) -> Vec<Result<StoreOutput, StoreError>> {
        run_batch(&mut self.conn, requests)
    }

    fn prune(&mut self, cutoff: i64, limit: usize) -> Result<usize, String> {
        prune(&self.conn, cutoff, limit).map_err(|e| e.to_string())
    }

    fn check(&mut self) -> Result<(), String> {
        self.file.check()
    }

    fn load(&mut self) -> Result<Snapshot, String> {
        load(&self.conn).map_err(|e| e.to_string())
    }

    fn fold_marks(&mut self, marks: &ReadMarks) -> Result<Vec<(u64, Marks)>, String> {
        fold_marks(&mut self.conn, marks).map_err(|e| e.to_string())
    }

    fn user_exists(&mut self, name: &str) -> Result<bool, String> {
        user_exists(&self.conn, name).map_err(|e| e.to_string())
    }

    /// A read-only connection: WAL lets it read while the writer commits,
    /// and it never holds a write transaction open.
    fn reader(&self) -> Result<Box<dyn Reader>, String> {
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)
            .map_err(|e| format!("cannot open {} to read: {e}", self.path.display()))?;
        Ok(Box::new(SqliteReader { conn }))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn scalar(&mut self, sql: &str) -> Result<i64, String> {
        self.conn
            .query_row(sql, [], |r| r.get(0))
            .map_err(|e| e.to_string())
    }
}

/// The reader thread's connection.
struct SqliteReader {
    conn: Connection,
}

impl Reader for SqliteReader {
    fn read(&mut self, request: &StoreRequest) -> Result<StoreOutput, StoreError> {
        match request {
            StoreRequest::History { .. } => apply(&self.conn, request).map_err(|e| {
                log::error!("store: read failed: {e}");
                StoreError::Failed(e.to_string())
            }),
            StoreRequest::Backup { path } => backup(&self.conn, path),
            StoreRequest::LoadAccounts => load(&self.conn)
                .map(|snap| StoreOutput::Accounts(Box::new(snap)))
                .map_err(|e| StoreError::Failed(e.to_string())),
            _ => Err(StoreError::Failed("the reader only reads".to_string())),
        }
    }
}

/// Reads what the chat state keeps in memory.
fn load(conn: &Connection) -> rusqlite::Result<Snapshot> {
    let mut snap = Snapshot::default();
    let mut stmt =
        conn.prepare("SELECT name, hash, last_seen, rowid, pushed, inboxed, banned FROM users")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            UserRow {
                hash: r.get(1)?,
                last_seen: r.get(2)?,
                slot: r.get::<_, i64>(3)?.max(0) as u64,
                marks: Marks {
                    pushed: r.get(4)?,
                    inboxed: r.get(5)?,
                },
                banned: r.get(6)?,
            },
        ))
    })?;
    for row in rows {
        let (name, user) = row?;
        snap.users.insert(name, user);
    }
    let mut stmt = conn.prepare(
        "SELECT a.name, b.name FROM blocks k
         JOIN users a ON a.id = k.blocker_id JOIN users b ON b.id = k.blocked_id",
    )?;
    for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))? {
        snap.blocks.push(row?);
    }
    let mut stmt = conn.prepare(
        "SELECT u.name, count(*) FROM messages m JOIN users u ON u.id = m.recipient_id
         WHERE m.unread = 1 GROUP BY m.recipient_id",
    )?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))? {
        let (name, n) = row?;
        snap.unread.insert(name, n);
    }
    Ok(snap)
}

/// Whether an account exists (start-up import only).
fn user_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row("SELECT 1 FROM users WHERE name = ?1", [name], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

/// Deletes up to `limit` read messages sent before `cutoff` (a row handed
/// to a session, unread = 2, was written out long before: sessions do not
/// live for days with unwritten output, and a restart sorts out the ones
/// that were not), keeping rows whose text others share.
fn prune(conn: &Connection, cutoff: i64, limit: usize) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM messages WHERE id IN
           (SELECT id FROM messages m WHERE unread != 1 AND ts < ?1
              AND NOT EXISTS (SELECT 1 FROM messages r WHERE r.body_of = m.id) LIMIT ?2)",
        params![cutoff, limit as i64],
    )
}

/// Runs every request in one transaction and commits. A request that fails
/// gets its error; if the commit fails, every request does.
fn run_batch(
    conn: &mut Connection,
    requests: &[StoreRequest],
) -> Vec<Result<StoreOutput, StoreError>> {
    let tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => {
            log::error!("store: cannot begin transaction: {e}");
            return requests
                .iter()
                .map(|_| Err(StoreError::Failed(e.to_string())))
                .collect();
        }
    };
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        // A savepoint per request, so one failure does not leave half of it
        // applied while the rest of the batch commits.
        let result = match savepoint_apply(&tx, request) {
            Ok(out) => Ok(out),
            Err(e) => {
                log::error!("store: request failed: {e}");
                // Some errors (disk full, I/O, out of memory) make SQLite roll
                // back the whole transaction. Going on would run the rest
                // outside any transaction, committing piecemeal what we then
                // report as failed; so the whole batch fails here.
                if tx.is_autocommit() {
                    log::error!("store: transaction rolled back; failing the whole batch");
                    let _ = tx.rollback();
                    return requests
                        .iter()
                        .map(|_| Err(StoreError::Failed(e.to_string())))
                        .collect();
                }
                Err(StoreError::Failed(e.to_string()))
            }
        };
        results.push(result);
    }
    if let Err(e) = commit(tx) {
        // A commit that fails (an fsync error, the disk gone) may have
        // reached the disk or not: say so rather than "not stored".
        log::error!("store: commit failed, outcome unknown: {e}");
        return requests
            .iter()
            .map(|_| Err(StoreError::Unknown(e.to_string())))
            .collect();
    }
    results
}

/// Commits, unless a test asked for a failed commit (see `Fault`).
fn commit(tx: rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    if super::commit_fault_injected() {
        tx.rollback()?;
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            Some("injected commit failure".into()),
        ));
    }
    tx.commit()
}

fn savepoint_apply(
    tx: &rusqlite::Transaction<'_>,
    request: &StoreRequest,
) -> rusqlite::Result<StoreOutput> {
    // Cached statements: this runs once per request on the hot path.
    tx.prepare_cached("SAVEPOINT req")?.execute([])?;
    match apply(tx, request) {
        Ok(out) => {
            tx.prepare_cached("RELEASE req")?.execute([])?;
            Ok(out)
        }
        Err(e) => {
            let _ = tx.execute_batch("ROLLBACK TO req; RELEASE req");
            Err(e)
        }
    }
}

fn apply(conn: &Connection, request: &StoreRequest) -> rusqlite::Result<StoreOutput> {
    match request {
        StoreRequest::CreateUser {
            name,
            hash,
            created,
        } => {
            // A new id (never one a deleted account had): nothing old
            // refers to it.
            conn.prepare_cached("INSERT INTO users (name, hash, created) VALUES (?1, ?2, ?3)")?
                .execute(params![name, hash, created])?;
            Ok(StoreOutput::Ids(vec![conn.last_insert_rowid()]))
        }
        StoreRequest::InsertMessages(messages) => {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO messages (ts, sender_id, recipient_id, body, unread, body_of)
                 VALUES (?1, (SELECT id FROM users WHERE name = ?2),
                         (SELECT id FROM users WHERE name = ?3), ?4, ?5, ?6)",
            )?;
            let mut ids: Vec<i64> = Vec::with_capacity(messages.len());
            for (m, holder) in messages.iter().zip(text_holders(messages)) {
                let state = if m.unread {
                    UNREAD_INBOX
                } else {
                    UNREAD_PUSHED
                };
                let (body, body_of) = match holder {
                    Some(h) => ("", Some(ids[h])),
                    None => (&*m.body, None),
                };
                stmt.execute(params![m.ts, &*m.sender, m.recipient, body, state, body_of])?;
                ids.push(conn.last_insert_rowid());
            }
            Ok(StoreOutput::Ids(ids))
        }
        StoreRequest::MarkUnread { ids } => {
            let mut stmt = conn.prepare_cached("UPDATE messages SET unread = 1 WHERE id = ?1")?;
            for id in ids {
                stmt.execute([id])?;
            }
            Ok(StoreOutput::Done)
        }
        StoreRequest::MarkRead { ids } => {
            let mut stmt = conn.prepare_cached("UPDATE messages SET unread = 0 WHERE id = ?1")?;
            for id in ids {
                stmt.execute([id])?;
            }
            Ok(StoreOutput::Done)
        }
        StoreRequest::CountInbox { user } => {
            let n: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM messages
                     WHERE recipient_id = (SELECT id FROM users WHERE name = ?1) AND unread = 1",
                )?
                .query_row([user], |r| r.get(0))?;
            Ok(StoreOutput::Count(n.max(0) as u64))
        }
        StoreRequest::TakeInbox { user, after, limit } => {
            let rows = conn
                .prepare_cached(&format!(
                    "SELECT {ROW} FROM {ROW_FROM}
                     WHERE m.recipient_id = (SELECT id FROM users WHERE name = ?1)
                       AND m.unread = 1 AND m.id > ?2 ORDER BY m.id LIMIT ?3"
                ))?
                .query_map(params![user, after, limit], message_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(StoreOutput::Rows(rows))
        }
        StoreRequest::Advance(marks) => {
            for (user, m) in marks {
                advance(conn, user, *m)?;
            }
            Ok(StoreOutput::Done)
        }
        StoreRequest::History {
            user,
            with,
            limit,
            after,
            upto,
            page,
        } => {
            // Both directions of a conversation, or everything to or from
            // `user`; each half walks its own index in id order. ?1 and ?3
            // are account ids (an account gone meanwhile has none: nothing).
            let (pick, other) = match with {
                None => ("m.sender_id = ?1", "m.recipient_id = ?1"),
                Some(_) => (
                    "m.sender_id = ?1 AND m.recipient_id = ?3",
                    "m.sender_id = ?3 AND m.recipient_id = ?1",
                ),
            };
            let id_of = |name: &str| -> rusqlite::Result<i64> {
                let id = conn
                    .prepare_cached("SELECT id FROM users WHERE name = ?1")?
                    .query_row([name], |r| r.get(0))
                    .optional()?;
                Ok(id.unwrap_or(-1))
            };
            let user = id_of(user)?;
            let with = match with {
                Some(name) => Some(id_of(name)?),
                None => None,
            };
            let (after, upto, total) = match upto {
                Some(upto) => (*after, *upto, 0),
                None => {
                    let mut span = conn.prepare_cached(&format!(
                        "SELECT coalesce(min(id), 0), coalesce(max(id), 0), count(*) FROM (
                           SELECT id FROM messages m WHERE {pick}
                           UNION ALL
                           SELECT id FROM messages m WHERE {other}
                           ORDER BY id DESC LIMIT ?2)"
                    ))?;
                    let read = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?));
                    let (first, last, n): (i64, i64, u32) = match with {
                        None => span.query_row(params![user, limit], read)?,
                        Some(with) => span.query_row(params![user, limit, with], read)?,
                    };
                    (first - 1, last, n)
                }
            };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ROW} FROM {ROW_FROM} WHERE {pick} AND m.id > ?2 AND m.id <= ?4
                 UNION ALL
                 SELECT {ROW} FROM {ROW_FROM} WHERE {other} AND m.id > ?2 AND m.id <= ?4
                 ORDER BY 1 LIMIT ?5"
            ))?;
            let with = with.unwrap_or(-1);
            let rows = stmt.query_map(params![user, after, with, upto, page], message_row)?;
            Ok(StoreOutput::History {
                rows: within_part(rows)?,
                upto,
                total,
            })
        }
        StoreRequest::SetBlock {
            blocker,
            blocked,
            on,
        } => {
            let sql = if *on {
                "INSERT OR IGNORE INTO blocks (blocker_id, blocked_id)
                 SELECT a.id, b.id FROM users a, users b WHERE a.name = ?1 AND b.name = ?2"
            } else {
                "DELETE FROM blocks
                 WHERE blocker_id = (SELECT id FROM users WHERE name = ?1)
                   AND blocked_id = (SELECT id FROM users WHERE name = ?2)"
            };
            conn.prepare_cached(sql)?
                .execute(params![blocker, blocked])?;
            Ok(StoreOutput::Done)
        }
        StoreRequest::SetLastSeen { user, at } => {
            conn.prepare_cached("UPDATE users SET last_seen = ?2 WHERE name = ?1")?
                .execute(params![user, at])?;
            Ok(StoreOutput::Done)
        }
        // Taken by the reader (`spawn_reader`), never in a write batch.
        StoreRequest::Backup { .. } | StoreRequest::LoadAccounts => Err(
            rusqlite::Error::InvalidParameterName("the reader answers this".into()),
        ),
        StoreRequest::DeleteUser { user } => {
            let id: Option<i64> = conn
                .prepare_cached("SELECT id FROM users WHERE name = ?1")?
                .query_row([user], |r| r.get(0))
                .optional()?;
            let Some(id) = id else {
                return Ok(StoreOutput::Done);
            };
            // Its unread messages go, except a row holding a list
            // broadcast's text for others: that one stays, read, detached.
            conn.prepare_cached(
                "DELETE FROM messages WHERE id IN (
                   SELECT m.id FROM messages m, users u
                   WHERE m.recipient_id = ?1 AND u.id = ?1
                     AND (m.unread = 1 OR (m.unread = 2 AND m.id > u.pushed))
                     AND NOT EXISTS (SELECT 1 FROM messages r WHERE r.body_of = m.id))",
            )?
            .execute([id])?;
            // The rest is history, detached: it keeps an id no account
            // will have again.
            conn.prepare_cached(
                "UPDATE messages SET unread = 0 WHERE recipient_id = ?1 AND unread != 0",
            )?
            .execute([id])?;
            conn.prepare_cached("DELETE FROM blocks WHERE blocker_id = ?1 OR blocked_id = ?1")?
                .execute([id])?;
            conn.prepare_cached("DELETE FROM users WHERE id = ?1")?
                .execute([id])?;
            Ok(StoreOutput::Done)
        }
        StoreRequest::SetBanned { user, on } => {
            conn.prepare_cached("UPDATE users SET banned = ?2 WHERE name = ?1")?
                .execute(params![user, on])?;
            Ok(StoreOutput::Done)
        }
        StoreRequest::SetPasswordHash { user, hash } => {
            conn.prepare_cached("UPDATE users SET hash = ?2 WHERE name = ?1")?
                .execute(params![user, hash])?;
            Ok(StoreOutput::Done)
        }
    }
}

/// Copies the database to `path` (which must not exist yet) with SQLite's
/// online backup, a few hundred pages at a time.
fn backup(conn: &Connection, path: &Path) -> Result<StoreOutput, StoreError> {
    if path.exists() {
        return Err(StoreError::Failed(format!(
            "{} exists; natterd will not overwrite it",
            path.display()
        )));
    }
    // Created private first: every private message is in the copy too.
    make_private(path).map_err(|e| StoreError::Failed(e.0))?;
    let mut target = Connection::open(path)
        .map_err(|e| StoreError::Failed(format!("cannot create {}: {e}", path.display())))?;
    let copy = rusqlite::backup::Backup::new(conn, &mut target)
        .and_then(|b| b.run_to_completion(256, Duration::ZERO, None));
    match copy {
        Ok(()) => Ok(StoreOutput::Done),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(StoreError::Failed(format!("backup failed: {e}")))
        }
    }
}

/// The columns of a [`MessageRow`] from `messages m`, the text taken from
/// the row that holds it when `m` shares another's.
const ROW: &str = "m.id, m.ts,
    coalesce(s.name, '!deleted-' || ifnull(m.sender_id, 0)),
    coalesce(r.name, '!deleted-' || ifnull(m.recipient_id, 0)),
    CASE WHEN m.body_of IS NULL THEN m.body
         ELSE (SELECT b.body FROM messages b WHERE b.id = m.body_of) END";

/// What [`ROW`] reads from: a deleted account's side of a message has no
/// name any more and shows as `!deleted-<id>`.
const ROW_FROM: &str = "messages m LEFT JOIN users s ON s.id = m.sender_id
    LEFT JOIN users r ON r.id = m.recipient_id";

/// Raises `user`'s marks in the database to `m` and takes the inbox rows
/// they cover out of the inbox.
fn advance(conn: &Connection, user: &str, m: Marks) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE users SET pushed = max(pushed, ?2), inboxed = max(inboxed, ?3) WHERE name = ?1",
    )?
    .execute(params![user, m.pushed, m.inboxed])?;
    conn.prepare_cached(
        "UPDATE messages SET unread = 0
         WHERE recipient_id = (SELECT id FROM users WHERE name = ?1) AND unread = 1 AND id <= ?2",
    )?
    .execute(params![user, m.inboxed])?;
    Ok(())
}

/// At start, before anything else reads the messages: what the marks file
/// recorded beyond the database (the last moments before a crash) goes in,
/// and every message handed to a session but never written out goes back
/// to its recipient's inbox. A mark beyond the newest message is not
/// trusted (a damaged file); that can only make more show as unread.
/// Returns every account's slot and marks, for the file to say the same.
fn fold_marks(conn: &mut Connection, marks: &ReadMarks) -> rusqlite::Result<Vec<(u64, Marks)>> {
    let tx = conn.transaction()?;
    let newest: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM messages", [], |r| {
        r.get(0)
    })?;
    let users = tx
        .prepare("SELECT name, rowid, pushed, inboxed FROM users")?
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                Marks {
                    pushed: r.get(2)?,
                    inboxed: r.get(3)?,
                },
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let (mut returned, mut raised) = (0usize, 0usize);
    let mut folded = Vec::with_capacity(users.len());
    for (name, rowid, stored) in users {
        let file = marks.get(rowid.max(0) as u64);
        let trusted = |v: i64| if (0..=newest).contains(&v) { v } else { 0 };
        let m = Marks {
            pushed: stored.pushed.max(trusted(file.pushed)),
            inboxed: stored.inboxed.max(trusted(file.inboxed)),
        };
        if m != stored {
            raised += 1;
            advance(&tx, &name, m)?;
        }
        returned += tx
            .prepare_cached(
                "UPDATE messages SET unread = 1 WHERE recipient_id = ?1 AND unread = 2 AND id > ?2",
            )?
            .execute(params![rowid, m.pushed])?;
        folded.push((rowid.max(0) as u64, m));
    }
    tx.commit()?;
    if returned > 0 || raised > 0 {
        log::info!(
            "store: read marks of {raised} users applied; {returned} messages never written out are back in their inboxes"
        );
    }
    Ok(folded)
}

fn message_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRow> {
    Ok(MessageRow {
        id: r.get(0)?,
        ts: r.get(1)?,
        sender: r.get(2)?,
        recipient: r.get(3)?,
        body: r.get(4)?,
    })
}
