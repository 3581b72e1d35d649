//! `natterctl migrate`: moving a single node's embedded database into
//! PostgreSQL, so a deployment can go on with `--store postgres://...` (and
//! the cluster). This file owns that copy and nothing else: opening the
//! data directory as natterd does (its lock, its schema brought up to date,
//! the read marks folded in), checking what the target already holds, and
//! writing accounts, messages and blocks with their ids in one PostgreSQL
//! transaction. All or nothing: a copy cut short (killed, the connection
//! lost) leaves the target as it was, and running it again finishes the
//! job; a target that already holds exactly this data is left alone.

use std::path::Path;

use ::postgres::{Client, NoTls, Transaction};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::files::lock_data_dir;
use super::postgres::PgBackend;
use super::{Backend, Store, StoreLocation, DB_FILE};

/// Rows read and written at a time: a bounded amount of text in memory
/// however many messages there are, and few round trips.
const PAGE: usize = 1000;

/// How many rows of each kind the target holds afterwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Accounts.
    pub users: u64,
    /// Message rows (one per recipient).
    pub messages: u64,
    /// Blocks.
    pub blocks: u64,
}

/// What a migration did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migrated {
    /// The target was empty; everything was copied.
    Copied(Counts),
    /// The target already held exactly this data (an earlier run); nothing
    /// was written.
    AlreadyThere(Counts),
}

/// Why a migration did not (surely) happen.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyError {
    /// Not attempted, nothing written: natterd runs on the directory,
    /// there is no database in it, or the target holds other data.
    Refused(String),
    /// Attempted and failed before the commit (a file or the database
    /// could not be read or written): nothing of it was committed.
    Failed(String),
    /// The commit itself failed: the copy may or may not be in the target.
    /// Running it again finishes it or finds it done.
    Unknown(String),
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::Refused(why) | CopyError::Failed(why) | CopyError::Unknown(why) => {
                f.write_str(why)
            }
        }
    }
}

/// An account as both databases hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct User {
    id: i64,
    name: String,
    hash: String,
    created: i64,
    last_seen: Option<i64>,
    pushed: i64,
    inboxed: i64,
    banned: bool,
}

/// A message row as both databases hold it (`unread` and `body_of` keep
/// their meaning: see `schema.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Message {
    id: i64,
    ts: i64,
    sender_id: Option<i64>,
    recipient_id: Option<i64>,
    body: String,
    unread: i64,
    body_of: Option<i64>,
}

/// (blocker id, blocked id)
type Block = (i64, i64);

/// Copies the embedded database of the data directory `dir` into the
/// PostgreSQL database at `url`, ids and read state included.
///
/// The directory is opened as natterd opens it, lock and all, so this
/// refuses while a natterd runs on it, and what the marks file recorded
/// beyond the database is folded in first (messages that never left
/// natterd go back to their inboxes). The target's schema is brought up to
/// date by the PostgreSQL backend itself. If the target holds anything, it
/// must be exactly what would be copied (then nothing is done); otherwise
/// this refuses.
pub fn sqlite_to_postgres(dir: &Path, url: &str) -> Result<Migrated, CopyError> {
    let db = dir.join(DB_FILE);
    if !db.is_file() {
        // Opening would create an empty one: say so instead.
        return Err(CopyError::Refused(format!(
            "there is no database {} to migrate",
            db.display()
        )));
    }
    // Taken and let go at once, only to tell "natterd runs here" (a
    // refusal) from a failure to open; opening takes it again and holds it.
    drop(lock_data_dir(dir).map_err(|e| CopyError::Refused(e.0))?);
    // Held until the copy is committed: no natterd starts on the directory
    // meanwhile and writes what would not be copied.
    let source = Store::open_at(dir, &StoreLocation::Sqlite)
        .map_err(|e| CopyError::Failed(format!("cannot open the data directory: {}", e.0)))?;
    let from = Source::open(&db)?;

    let target = PgBackend::connect(url).map_err(|e| CopyError::Failed(e.0))?;
    let shown = target.describe();
    drop(target);
    let fail = |e: ::postgres::Error| CopyError::Failed(format!("{shown}: {e}"));
    let mut client = Client::connect(url, NoTls).map_err(fail)?;
    let mut tx = client.transaction().map_err(fail)?;
    // Writers wait until the copy is committed (and readers see nothing of
    // it before): so does a second `migrate`, which then finds it done.
    tx.batch_execute("LOCK TABLE users, messages, blocks IN EXCLUSIVE MODE")
        .map_err(fail)?;
    let held = target_counts(&mut tx).map_err(fail)?;
    let outcome = if held == Counts::default() {
        let counts = copy(&from, &mut tx)?;
        tx.commit()
            .map_err(|e| CopyError::Unknown(format!("{shown}: {e}")))?;
        Migrated::Copied(counts)
    } else {
        match compare(&from, &mut tx, held)? {
            None => Migrated::AlreadyThere(held),
            Some(difference) => {
                return Err(CopyError::Refused(format!(
                    "{shown} already holds other data ({difference}; it has {} accounts, \
                     {} messages, {} blocks); nothing was copied. Migrate into an empty \
                     database",
                    held.users, held.messages, held.blocks
                )))
            }
        }
    };
    drop(source);
    Ok(outcome)
}

/// Rows the target already holds.
fn target_counts(tx: &mut Transaction<'_>) -> Result<Counts, ::postgres::Error> {
    let row = tx.query_one(
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM messages),
                (SELECT count(*) FROM blocks)",
        &[],
    )?;
    let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
    Ok(Counts {
        users: n(0),
        messages: n(1),
        blocks: n(2),
    })
}

/// The embedded database, read in one read transaction (nothing else
/// writes it: the data directory is locked).
struct Source {
    conn: Connection,
}

impl Source {
    fn open(db: &Path) -> Result<Source, CopyError> {
        let fail = |e: rusqlite::Error| CopyError::Failed(format!("{}: {e}", db.display()));
        let conn =
            Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(fail)?;
        conn.execute_batch("BEGIN").map_err(fail)?;
        Ok(Source { conn })
    }

    fn fail(&self, e: rusqlite::Error) -> CopyError {
        CopyError::Failed(format!("reading the embedded database: {e}"))
    }

    fn users(&self) -> Result<Vec<User>, CopyError> {
        let read = || -> rusqlite::Result<Vec<User>> {
            self.conn
                .prepare(
                    "SELECT id, name, hash, created, last_seen, pushed, inboxed, banned
                     FROM users ORDER BY id",
                )?
                .query_map([], |r| {
                    Ok(User {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        hash: r.get(2)?,
                        created: r.get(3)?,
                        last_seen: r.get(4)?,
                        pushed: r.get(5)?,
                        inboxed: r.get(6)?,
                        banned: r.get(7)?,
                    })
                })?
                .collect()
        };
        read().map_err(|e| self.fail(e))
    }

    fn blocks(&self) -> Result<Vec<Block>, CopyError> {
        let read = || -> rusqlite::Result<Vec<Block>> {
            self.conn
                .prepare("SELECT blocker_id, blocked_id FROM blocks ORDER BY 1, 2")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        };
        read().map_err(|e| self.fail(e))
    }

    /// Up to [`PAGE`] messages with ids above `after`, in id order. A row
    /// handed to a session (unread = 2) and within its recipient's `pushed`
    /// mark is read: it goes across as plainly read (0), so the copy says
    /// so by itself, whatever marks file the next node has.
    fn messages(&self, after: i64) -> Result<Vec<Message>, CopyError> {
        let read = || -> rusqlite::Result<Vec<Message>> {
            self.conn
                .prepare_cached(
                    "SELECT m.id, m.ts, m.sender_id, m.recipient_id, m.body,
                            CASE WHEN m.unread = 2 AND m.id <= u.pushed THEN 0
                                 ELSE m.unread END,
                            m.body_of
                     FROM messages m LEFT JOIN users u ON u.id = m.recipient_id
                     WHERE m.id > ?1 ORDER BY m.id LIMIT ?2",
                )?
                .query_map(rusqlite::params![after, PAGE as i64], |r| {
                    Ok(Message {
                        id: r.get(0)?,
                        ts: r.get(1)?,
                        sender_id: r.get(2)?,
                        recipient_id: r.get(3)?,
                        body: r.get(4)?,
                        unread: r.get(5)?,
                        body_of: r.get(6)?,
                    })
                })?
                .collect()
        };
        read().map_err(|e| self.fail(e))
    }

    /// The highest account id ever given out: a deleted account's id stays
    /// in the messages it left (detached history), and a new account must
    /// never get it.
    fn highest_user_id(&self) -> Result<i64, CopyError> {
        let read = || -> rusqlite::Result<i64> {
            let given: Option<i64> = self
                .conn
                .query_row(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'users'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            let held: i64 =
                self.conn
                    .query_row("SELECT coalesce(max(id), 0) FROM users", [], |r| r.get(0))?;
            Ok(given.unwrap_or(0).max(held))
        };
        read().map_err(|e| self.fail(e))
    }
}

/// Writes everything into the (empty) target inside `tx`, then moves the
/// target's id sequences past what was copied.
fn copy(from: &Source, tx: &mut Transaction<'_>) -> Result<Counts, CopyError> {
    let fail = |e: ::postgres::Error| CopyError::Failed(format!("writing to PostgreSQL: {e}"));
    let mut counts = Counts::default();
    let users = from.users()?;
    for page in users.chunks(PAGE) {
        let column = |f: fn(&User) -> i64| page.iter().map(f).collect::<Vec<i64>>();
        let names: Vec<&str> = page.iter().map(|u| u.name.as_str()).collect();
        let hashes: Vec<&str> = page.iter().map(|u| u.hash.as_str()).collect();
        let last_seen: Vec<Option<i64>> = page.iter().map(|u| u.last_seen).collect();
        let banned: Vec<bool> = page.iter().map(|u| u.banned).collect();
        tx.execute(
            "INSERT INTO users (id, name, hash, created, last_seen, pushed, inboxed, banned)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[],
                                  $5::bigint[], $6::bigint[], $7::bigint[], $8::boolean[])",
            &[
                &column(|u| u.id),
                &names,
                &hashes,
                &column(|u| u.created),
                &last_seen,
                &column(|u| u.pushed),
                &column(|u| u.inboxed),
                &banned,
            ],
        )
        .map_err(fail)?;
        counts.users += page.len() as u64;
    }
    let blocks = from.blocks()?;
    for page in blocks.chunks(PAGE) {
        let blockers: Vec<i64> = page.iter().map(|b| b.0).collect();
        let blocked: Vec<i64> = page.iter().map(|b| b.1).collect();
        tx.execute(
            "INSERT INTO blocks (blocker_id, blocked_id)
             SELECT * FROM unnest($1::bigint[], $2::bigint[])",
            &[&blockers, &blocked],
        )
        .map_err(fail)?;
        counts.blocks += page.len() as u64;
    }
    let mut after = 0;
    let mut newest = 0;
    loop {
        let page = from.messages(after)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        newest = newest.max(last.id);
        let column = |f: fn(&Message) -> i64| page.iter().map(f).collect::<Vec<i64>>();
        let maybe = |f: fn(&Message) -> Option<i64>| page.iter().map(f).collect::<Vec<_>>();
        let bodies: Vec<&str> = page.iter().map(|m| m.body.as_str()).collect();
        tx.execute(
            "INSERT INTO messages (id, ts, sender_id, recipient_id, body, unread, body_of)
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],
                                  $5::text[], $6::bigint[], $7::bigint[])",
            &[
                &column(|m| m.id),
                &column(|m| m.ts),
                &maybe(|m| m.sender_id),
                &maybe(|m| m.recipient_id),
                &bodies,
                &column(|m| m.unread),
                &maybe(|m| m.body_of),
            ],
        )
        .map_err(fail)?;
        counts.messages += page.len() as u64;
    }
    // A new message's id must be above every read mark too, or it would
    // count as read the moment it is stored.
    let marks = users
        .iter()
        .map(|u| u.pushed.max(u.inboxed))
        .max()
        .unwrap_or(0);
    set_sequence(tx, "users", from.highest_user_id()?).map_err(fail)?;
    set_sequence(tx, "messages", newest.max(marks)).map_err(fail)?;
    Ok(counts)
}

/// Makes the identity column of `table` hand out ids above `highest`.
/// (`setval` is not rolled back with the transaction; a sequence left
/// ahead by a copy that failed only skips some ids.)
fn set_sequence(
    tx: &mut Transaction<'_>,
    table: &str,
    highest: i64,
) -> Result<(), ::postgres::Error> {
    if highest > 0 {
        tx.execute(
            "SELECT setval(pg_get_serial_sequence($1, 'id'), $2)",
            &[&table, &highest],
        )?;
    }
    Ok(())
}

/// Whether the target holds exactly what would be copied: `None` if so,
/// else the first difference found, in words.
fn compare(
    from: &Source,
    tx: &mut Transaction<'_>,
    held: Counts,
) -> Result<Option<String>, CopyError> {
    let fail = |e: ::postgres::Error| CopyError::Failed(format!("reading PostgreSQL: {e}"));
    let users = from.users()?;
    if held.users != users.len() as u64 {
        return Ok(Some(format!(
            "{} accounts to copy, {} there",
            users.len(),
            held.users
        )));
    }
    let there: Vec<User> = tx
        .query(
            "SELECT id, name, hash, created, last_seen, pushed, inboxed, banned
             FROM users ORDER BY id",
            &[],
        )
        .map_err(fail)?
        .iter()
        .map(|r| User {
            id: r.get(0),
            name: r.get(1),
            hash: r.get(2),
            created: r.get(3),
            last_seen: r.get(4),
            pushed: r.get(5),
            inboxed: r.get(6),
            banned: r.get(7),
        })
        .collect();
    if let Some((ours, theirs)) = users.iter().zip(&there).find(|(a, b)| a != b) {
        return Ok(Some(format!(
            "account {} (id {}) differs from its copy {} (id {})",
            ours.name, ours.id, theirs.name, theirs.id
        )));
    }
    let blocks = from.blocks()?;
    let there: Vec<Block> = tx
        .query(
            "SELECT blocker_id, blocked_id FROM blocks ORDER BY 1, 2",
            &[],
        )
        .map_err(fail)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if blocks != there {
        return Ok(Some("the blocks differ".to_string()));
    }
    let mut after = 0;
    loop {
        let ours = from.messages(after)?;
        let theirs: Vec<Message> = tx
            .query(
                "SELECT id, ts, sender_id, recipient_id, body, unread, body_of
                 FROM messages WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &(PAGE as i64)],
            )
            .map_err(fail)?
            .iter()
            .map(|r| Message {
                id: r.get(0),
                ts: r.get(1),
                sender_id: r.get(2),
                recipient_id: r.get(3),
                body: r.get(4),
                unread: r.get(5),
                body_of: r.get(6),
            })
            .collect();
        if let Some((a, _)) = ours.iter().zip(&theirs).find(|(a, b)| a != b) {
            return Ok(Some(format!("message {} differs from its copy", a.id)));
        }
        if ours.len() != theirs.len() {
            return Ok(Some(format!("the messages after id {after} differ")));
        }
        let Some(last) = ours.last() else { break };
        after = last.id;
    }
    Ok(None)
}
