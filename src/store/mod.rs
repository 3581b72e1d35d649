//! The durable store: accounts, messages (inbox and history), blocks and
//! last-seen times in one SQLite database, and the thread that owns it.
//!
//! The loop thread never touches the database after start-up. It sends
//! [`StoreRequest`]s with a tag; the store thread takes everything queued,
//! runs it in one transaction (WAL, `synchronous=FULL`), commits, and only
//! then hands every result of the batch back at once (group commit). So an
//! acknowledgement built from a result always follows an fsync'd commit.
//! Between batches it deletes read messages past `--history-retention-days`.
//! A second thread, the reader, answers `history` on its own read-only
//! connection so reads never wait behind writes. `files.rs` owns the data
//! directory's lock and the database file's mode and identity; `schema.rs`
//! the migrations; `marks.rs` the read marks that say which messages have
//! left natterd (the fold at start is here, with the rest of the SQL). This
//! file is about 750 lines because the request types, the two threads and
//! the SQL they run belong together.

mod files;
pub mod marks;
mod schema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};

pub use files::LOCK_FILE;
use files::{lock_data_dir, make_private, DbFile};
pub use marks::{Marks, ReadMarks, MARKS_FILE};

pub use schema::SCHEMA_VERSION;

/// Most requests committed in one transaction. Large enough that a burst of
/// messages shares one fsync, small enough that one batch's results do not
/// arrive as a single huge lump.
pub const MAX_BATCH: usize = 4096;

/// Most rows written in one transaction (a list broadcast writes a row per
/// recipient): a batch takes tens of milliseconds, not seconds, so a
/// request queued behind a flood of list broadcasts, or a shutdown, waits
/// for little more than one batch.
pub const MAX_BATCH_ROWS: usize = 4096;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "natter.db";

/// A message to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Unix seconds.
    pub ts: i64,
    /// Who sends it. Shared by every recipient's row of one message.
    pub sender: Arc<str>,
    /// To whom.
    pub recipient: String,
    /// The text. Shared: a list broadcast to 300 people queues one body,
    /// not 300 copies, while it waits for the store thread.
    pub body: Arc<str>,
    /// Whether it waits in the recipient's inbox (they were offline).
    /// Otherwise it is on its way to their session, and counts as read
    /// once its id is within their `pushed` mark.
    pub unread: bool,
}

/// A stored message as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRow {
    /// Message id (insertion order).
    pub id: i64,
    /// Unix seconds.
    pub ts: i64,
    /// Who sent it.
    pub sender: String,
    /// To whom.
    pub recipient: String,
    /// The text.
    pub body: String,
}

/// One unit of work for the store thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreRequest {
    /// A new account; returns its rowid (its slot in the marks file).
    CreateUser {
        name: String,
        hash: String,
        created: i64,
    },
    /// Direct messages; returns their ids in order.
    InsertMessages(Vec<NewMessage>),
    /// Put already stored messages back into their recipients' inboxes.
    MarkUnread { ids: Vec<i64> },
    /// Read up to `limit` inbox messages with ids above `after`, oldest
    /// first. They stay unread until their rows are written out (`Advance`).
    TakeInbox {
        user: String,
        after: i64,
        limit: u32,
    },
    /// Copy read marks into the database; inbox rows at or below `inboxed`
    /// leave the inbox.
    Advance(Vec<(String, Marks)>),
    /// A page of `user`'s direct messages (with `with` only), oldest
    /// first: at most `page` rows with ids in `after + 1..=upto`. Without
    /// `upto`, first finds the span of the last `limit` and returns its
    /// first page with the span ([`StoreOutput::History`]).
    History {
        user: String,
        with: Option<String>,
        limit: u32,
        after: i64,
        upto: Option<i64>,
        page: u32,
    },
    /// Add or remove a block.
    SetBlock {
        blocker: String,
        blocked: String,
        on: bool,
    },
    /// When a user's last session ended.
    SetLastSeen { user: String, at: i64 },
    /// Replace a user's password hash (`passwd`, or a re-hash at login).
    SetPasswordHash { user: String, hash: String },
    /// Ban an account, or lift its ban.
    SetBanned { user: String, on: bool },
    /// A consistent copy of the database at `path` (SQLite's online
    /// backup), taken by the reader: writes go on meanwhile.
    Backup { path: PathBuf },
    /// Delete an account: its inbox and blocks go, and its history is
    /// detached (it keeps an account id no one will have again), so a new
    /// account with the name starts clean.
    DeleteUser { user: String },
}

impl StoreRequest {
    /// Whether it is the server's own upkeep rather than a command's write:
    /// such writes go to the store first, in the order they were made.
    pub fn is_upkeep(&self) -> bool {
        matches!(
            self,
            StoreRequest::MarkUnread { .. }
                | StoreRequest::Advance(_)
                | StoreRequest::SetLastSeen { .. }
                | StoreRequest::DeleteUser { .. }
        )
    }

    /// Rows it writes, roughly (a batch's size is bounded by this).
    pub fn rows(&self) -> usize {
        match self {
            StoreRequest::InsertMessages(messages) => messages.len(),
            StoreRequest::MarkUnread { ids } => ids.len(),
            StoreRequest::Advance(marks) => marks.len(),
            _ => 1,
        }
        .max(1)
    }
}

/// What a request returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOutput {
    /// Nothing beyond success.
    Done,
    /// Ids of inserted messages.
    Ids(Vec<i64>),
    /// Messages read.
    Rows(Vec<MessageRow>),
    /// A page of history, the last id of its span, and how many rows the
    /// whole span has (0 after the first page).
    History {
        rows: Vec<MessageRow>,
        upto: i64,
        total: u32,
    },
}

/// Why a request did not succeed, and whether its effect is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Not done: nothing of it was committed.
    Failed(String),
    /// The commit itself failed: it may or may not be on disk.
    Unknown(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Failed(e) => write!(f, "not done: {e}"),
            StoreError::Unknown(e) => write!(f, "outcome unknown: {e}"),
        }
    }
}

/// An account as loaded at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRow {
    /// PHC string of the password hash.
    pub hash: String,
    /// When its last session ended.
    pub last_seen: Option<i64>,
    /// Its rowid: its slot in the marks file.
    pub slot: u64,
    /// Its read marks.
    pub marks: Marks,
    /// Whether the operator banned it.
    pub banned: bool,
}

/// What the chat state needs at start-up; message bodies stay on disk.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// name → account
    pub users: HashMap<String, UserRow>,
    /// (blocker, blocked)
    pub blocks: Vec<(String, String)>,
    /// name → unread count
    pub unread: HashMap<String, u32>,
}

/// Why the store could not open.
#[derive(Debug)]
pub struct OpenError(pub String);

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OpenError {}

/// An open database, before its thread starts.
pub struct Store {
    conn: Connection,
    /// The data directory's lock, held as long as the store (and so the
    /// server) lives: two servers on one directory would each keep their
    /// own accounts and blocks in memory and split the brain.
    lock: std::fs::File,
    path: PathBuf,
    /// While this file exists, batches fail (fault-injection tests).
    fault_file: Option<PathBuf>,
    /// How long read messages are kept; `None`: forever.
    retention: Option<Duration>,
    /// The read marks, until the loop takes them.
    marks: Option<ReadMarks>,
    /// Where the store thread records its batches' sizes and times.
    timings: Option<crate::metrics::Timings>,
}

impl Store {
    /// Opens (creating if needed) the database in `dir` and brings its
    /// schema up to date.
    pub fn open(dir: &Path) -> Result<Store, OpenError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            OpenError(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let lock = lock_data_dir(dir)?;
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
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(fail)?;
        schema::migrate(&mut conn)
            .map_err(|e| OpenError(format!("cannot migrate database {}: {e}", path.display())))?;
        let mut marks = ReadMarks::open(dir).map_err(|e| {
            OpenError(format!(
                "cannot open read marks {}: {e}",
                dir.join(MARKS_FILE).display()
            ))
        })?;
        let folded = fold_marks(&mut conn, &marks).map_err(|e| {
            OpenError(format!(
                "cannot apply read marks to {}: {e}",
                path.display()
            ))
        })?;
        marks.reset_to(&folded).map_err(|e| {
            OpenError(format!(
                "cannot write read marks {}: {e}",
                dir.join(MARKS_FILE).display()
            ))
        })?;
        Ok(Store {
            conn,
            lock,
            path,
            fault_file: None,
            retention: None,
            marks: Some(marks),
            timings: None,
        })
    }

    /// Makes the store thread record each batch's size and commit time.
    pub fn set_timings(&mut self, timings: crate::metrics::Timings) {
        self.timings = Some(timings);
    }

    /// Hands over the read marks (to the loop thread, which records them).
    pub fn take_marks(&mut self) -> Option<ReadMarks> {
        self.marks.take()
    }

    /// Makes every batch fail while `path` exists, so tests can see what
    /// clients get when the disk is full without filling one; if the file
    /// says `commit`, batches run and then their commit fails (outcome
    /// unknown to the client).
    pub fn set_fault_file(&mut self, path: Option<PathBuf>) {
        self.fault_file = path;
    }

    /// Deletes read messages older than `keep` (checked every
    /// `PRUNE_EVERY`, a `PRUNE_BATCH` at a time, between batches).
    pub fn set_retention(&mut self, keep: Option<Duration>) {
        self.retention = keep;
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what the chat state keeps in memory.
    pub fn load(&self) -> rusqlite::Result<Snapshot> {
        let mut snap = Snapshot::default();
        let mut stmt = self
            .conn
            .prepare("SELECT name, hash, last_seen, rowid, pushed, inboxed, banned FROM users")?;
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
        let mut stmt = self.conn.prepare(
            "SELECT a.name, b.name FROM blocks k
             JOIN users a ON a.id = k.blocker_id JOIN users b ON b.id = k.blocked_id",
        )?;
        for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))? {
            snap.blocks.push(row?);
        }
        let mut stmt = self.conn.prepare(
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
    pub fn user_exists(&self, name: &str) -> rusqlite::Result<bool> {
        self.conn
            .query_row("SELECT 1 FROM users WHERE name = ?1", [name], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
    }

    /// Runs requests in one transaction outside the thread (start-up import,
    /// benches). Returns each request's result.
    pub fn run_batch(&mut self, requests: &[StoreRequest]) -> Vec<Result<StoreOutput, StoreError>> {
        run_batch(&mut self.conn, requests)
    }

    /// Starts the store thread. `on_batch` gets each committed batch's
    /// results (tag and result, in request order); it runs on the store
    /// thread and should only hand them over and wake the loop.
    pub fn spawn<T, F>(self, on_batch: F) -> std::io::Result<StoreHandle<T>>
    where
        T: Send + 'static,
        F: FnMut(Vec<(T, Result<StoreOutput, StoreError>)>) + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("natter-store".into())
            .spawn(move || {
                // The data directory stays locked until the last commit is done.
                let _lock = self.lock;
                let file = DbFile::new(self.path);
                store_thread(
                    self.conn,
                    file,
                    self.fault_file,
                    self.retention,
                    rx,
                    stopped,
                    self.timings,
                    on_batch,
                )
            })?;
        Ok(StoreHandle {
            tx: Some(tx),
            thread: Some(thread),
            stop,
        })
    }
}

/// Starts the reader: a thread with its own read-only connection to the
/// database at `path` that answers `history`, so reads never wait behind
/// the write batches (WAL lets it read while the writer commits) and never
/// hold a write transaction open. Any other request is refused.
pub fn spawn_reader<T, F>(path: &Path, mut on_done: F) -> std::io::Result<StoreHandle<T>>
where
    T: Send + 'static,
    F: FnMut(Vec<(T, Result<StoreOutput, StoreError>)>) + Send + 'static,
{
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| {
        std::io::Error::other(format!("cannot open {} to read: {e}", path.display()))
    })?;
    let (tx, rx) = mpsc::channel::<(StoreRequest, T)>();
    let thread = thread::Builder::new()
        .name("natter-reader".into())
        .spawn(move || {
            while let Ok((request, tag)) = rx.recv() {
                let result = match request {
                    StoreRequest::History { .. } => apply(&conn, &request).map_err(|e| {
                        log::error!("store: read failed: {e}");
                        StoreError::Failed(e.to_string())
                    }),
                    StoreRequest::Backup { path } => backup(&conn, &path),
                    _ => Err(StoreError::Failed("the reader only reads".to_string())),
                };
                on_done(vec![(tag, result)]);
            }
        })?;
    Ok(StoreHandle {
        tx: Some(tx),
        thread: Some(thread),
        stop: Arc::new(AtomicBool::new(false)),
    })
}

/// The loop thread's end of the store: submit requests, and on drop, let the
/// thread finish what is queued and join it.
pub struct StoreHandle<T> {
    tx: Option<Sender<(StoreRequest, T)>>,
    thread: Option<JoinHandle<()>>,
    /// Set once nothing more may be committed (see `stop_writes`).
    stop: Arc<AtomicBool>,
}

impl<T> StoreHandle<T> {
    /// Queues a request. Gives it back if the store thread is gone.
    pub fn submit(&self, request: StoreRequest, tag: T) -> Result<(), (StoreRequest, T)> {
        match &self.tx {
            Some(tx) => tx.send((request, tag)).map_err(|e| e.0),
            None => Err((request, tag)),
        }
    }

    /// From now on, requests not yet started are answered as not done
    /// instead of committed: past the shutdown deadline, a write that
    /// could not be answered must not happen either. The batch being
    /// committed finishes and is reported as usual.
    pub fn stop_writes(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops taking requests, lets the thread commit what is queued (unless
    /// `stop_writes` was called), and waits for it.
    pub fn close(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("store thread panicked");
            }
        }
    }
}

impl<T> Drop for StoreHandle<T> {
    fn drop(&mut self) {
        self.close();
    }
}

#[allow(clippy::too_many_arguments)]
fn store_thread<T, F>(
    mut conn: Connection,
    mut file: DbFile,
    fault_file: Option<PathBuf>,
    retention: Option<Duration>,
    rx: Receiver<(StoreRequest, T)>,
    stop: Arc<AtomicBool>,
    timings: Option<crate::metrics::Timings>,
    mut on_batch: F,
) where
    F: FnMut(Vec<(T, Result<StoreOutput, StoreError>)>),
{
    let mut next_prune = Instant::now();
    loop {
        // Blocks for the first request (or until pruning is due), then takes
        // whatever else queued up meanwhile: the longer a commit takes, the
        // bigger the next batch.
        let first = match retention {
            None => match rx.recv() {
                Ok(first) => first,
                Err(_) => return,
            },
            Some(keep) => {
                if Instant::now() >= next_prune {
                    let more = prune(&conn, keep);
                    // A full batch deleted: more may be due; go on soon,
                    // but let waiting requests go first.
                    next_prune = Instant::now() + if more { PRUNE_AGAIN } else { PRUNE_EVERY };
                }
                match rx.recv_timeout(next_prune.saturating_duration_since(Instant::now())) {
                    Ok(first) => first,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        let mut rows = first.0.rows();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && rows < MAX_BATCH_ROWS {
            match rx.try_recv() {
                Ok(item) => {
                    rows += item.0.rows();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        let (requests, tags): (Vec<StoreRequest>, Vec<T>) = batch.into_iter().unzip();
        if stop.load(Ordering::SeqCst) {
            // Past the shutdown deadline: not committed, so not acknowledged.
            let refused = || Err(StoreError::Failed("natterd is shutting down".to_string()));
            on_batch(tags.into_iter().map(|tag| (tag, refused())).collect());
            continue;
        }
        let started = Instant::now();
        let fault = fault_file
            .as_deref()
            .and_then(|f| std::fs::read_to_string(f).ok().map(|text| (f, text)));
        let results = match (fault, file.check()) {
            (_, Err(problem)) => requests
                .iter()
                .map(|_| Err(StoreError::Failed(problem.clone())))
                .collect(),
            (Some((f, text)), Ok(())) if text.trim() == "commit" => {
                log::error!(
                    "store: injected commit failure ({} says commit)",
                    f.display()
                );
                FAIL_COMMIT.with(|c| c.set(true));
                let results = run_batch(&mut conn, &requests);
                FAIL_COMMIT.with(|c| c.set(false));
                results
            }
            (Some((f, _)), Ok(())) => {
                log::error!(
                    "store: batch failed: injected fault ({} exists)",
                    f.display()
                );
                requests
                    .iter()
                    .map(|_| Err(StoreError::Failed("injected fault".to_string())))
                    .collect()
            }
            (None, Ok(())) => run_batch(&mut conn, &requests),
        };
        if let Some(t) = &timings {
            t.store_commit.observe(started.elapsed().as_secs_f64());
            t.store_batch.observe(requests.len() as f64);
        }
        on_batch(tags.into_iter().zip(results).collect());
    }
}

/// How often read messages past their retention are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How soon to go on after deleting a full batch.
const PRUNE_AGAIN: Duration = Duration::from_millis(100);
/// Most messages deleted in one go: a short transaction, so requests
/// queued meanwhile wait milliseconds, not the whole backlog.
const PRUNE_BATCH: usize = 1000;

/// Deletes up to `PRUNE_BATCH` read messages older than `keep` (a row
/// handed to a session, unread = 2, was written out long before: sessions
/// do not live for days with unwritten output, and a restart sorts out the
/// ones that were not); returns
/// whether it deleted a full batch (so more may be due).
fn prune(conn: &Connection, keep: Duration) -> bool {
    let cutoff = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|now| now.saturating_sub(keep).as_secs() as i64)
        .unwrap_or(0);
    let deleted = conn.execute(
        "DELETE FROM messages WHERE id IN
           (SELECT id FROM messages m WHERE unread != 1 AND ts < ?1
              AND NOT EXISTS (SELECT 1 FROM messages r WHERE r.body_of = m.id) LIMIT ?2)",
        rusqlite::params![cutoff, PRUNE_BATCH as i64],
    );
    match deleted {
        Ok(n) => {
            if n > 0 {
                log::info!("store: deleted {n} read messages older than the retention period");
            }
            n == PRUNE_BATCH
        }
        Err(e) => {
            log::error!("store: pruning old messages failed: {e}");
            false
        }
    }
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
    if FAIL_COMMIT.with(|f| f.get()) {
        tx.rollback()?;
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            Some("injected commit failure".into()),
        ));
    }
    tx.commit()
}

thread_local! {
    /// Set on the store thread while a `commit` fault is injected.
    static FAIL_COMMIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
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
            let mut ids = Vec::with_capacity(messages.len());
            // The row holding the text these messages share, if any yet.
            let mut holder: Option<(&Arc<str>, i64)> = None;
            for m in messages {
                let state = if m.unread {
                    UNREAD_INBOX
                } else {
                    UNREAD_PUSHED
                };
                let shared = holder.filter(|(body, _)| Arc::ptr_eq(body, &m.body));
                let (body, body_of) = match shared {
                    Some((_, id)) => ("", Some(id)),
                    None => (&*m.body, None),
                };
                stmt.execute(params![m.ts, &*m.sender, m.recipient, body, state, body_of])?;
                let id = conn.last_insert_rowid();
                if shared.is_none() {
                    holder = Some((&m.body, id));
                }
                ids.push(id);
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
            // At most about HISTORY_PART_BYTES of text too (always one row):
            // a part of long messages stays small.
            let mut taken = Vec::new();
            let mut bytes = 0;
            for row in rows {
                let row = row?;
                if !taken.is_empty() && bytes + row.body.len() > HISTORY_PART_BYTES {
                    break;
                }
                bytes += row.body.len();
                taken.push(row);
            }
            Ok(StoreOutput::History {
                rows: taken,
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
        StoreRequest::Backup { .. } => Err(rusqlite::Error::InvalidParameterName(
            "a backup is taken by the reader".into(),
        )),
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

/// Text one part of a `history` reply carries at most (besides its row
/// limit): a session that never reads then holds one small part.
pub const HISTORY_PART_BYTES: usize = 64 * 1024;

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

/// `unread` of a message waiting in its recipient's inbox.
const UNREAD_INBOX: i64 = 1;
/// `unread` of a message handed to its recipient's session: read once its
/// id is within the recipient's `pushed` mark.
const UNREAD_PUSHED: i64 = 2;

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

#[cfg(test)]
mod tests;
