//! The durable store: accounts, messages (inbox and history), blocks and
//! last-seen times, and the threads that own the database.
//!
//! The loop thread never touches the database after start-up. It sends
//! [`StoreRequest`]s with a tag; the store thread takes everything queued,
//! runs it in one transaction, commits, and only then hands every result of
//! the batch back at once (group commit). So an acknowledgement built from
//! a result always follows a durable commit. Between batches it deletes
//! read messages past `--history-retention-days`. A second thread, the
//! reader, answers `history` on its own connection so reads never wait
//! behind writes.
//!
//! This file owns the request and result types, the [`Backend`] interface
//! and the two threads. The SQL is the backends': `sqlite.rs` (the default,
//! embedded; its migrations in `schema.rs`, its file's mode and identity in
//! `files.rs` with the data directory's lock) and `postgres.rs`
//! (`--store postgres://...`). `marks.rs` owns the read marks that say
//! which messages have left natterd, whichever backend holds them.

pub mod copy;
mod files;
pub mod marks;
mod postgres;
mod schema;
mod sqlite;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use files::lock_data_dir;
pub use files::LOCK_FILE;
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
    /// Take messages out of the inbox: their lines left natterd (cluster
    /// mode, where read state goes by id).
    MarkRead { ids: Vec<i64> },
    /// How many messages wait in `user`'s inbox (cluster mode: any node
    /// may have stored them).
    CountInbox { user: String },
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
    /// Every account, block and inbox count, as at start-up: a cluster
    /// node catching up with changes announced while it could not hear
    /// them. Answered by the reader.
    LoadAccounts,
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
                | StoreRequest::MarkRead { .. }
                | StoreRequest::Advance(_)
                | StoreRequest::SetLastSeen { .. }
                | StoreRequest::DeleteUser { .. }
        )
    }

    /// Rows it writes, roughly (a batch's size is bounded by this).
    pub fn rows(&self) -> usize {
        match self {
            StoreRequest::InsertMessages(messages) => messages.len(),
            StoreRequest::MarkUnread { ids } | StoreRequest::MarkRead { ids } => ids.len(),
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
    /// A count.
    Count(u64),
    /// Messages read.
    Rows(Vec<MessageRow>),
    /// The accounts (for [`StoreRequest::LoadAccounts`]).
    Accounts(Box<Snapshot>),
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

/// What a database behind the store does. The store thread owns batching,
/// group commit, the pruning schedule and fault injection; a backend owns
/// its connection and its SQL. Every method runs on the store thread (or
/// at start-up), never on the loop.
pub trait Backend: Send + 'static {
    /// Runs every request in one transaction, each in a savepoint of its
    /// own (a failing request gets its error and the others go on), then
    /// commits. If the commit fails every request gets
    /// [`StoreError::Unknown`]: it may or may not be on disk.
    fn run_batch(&mut self, requests: &[StoreRequest]) -> Vec<Result<StoreOutput, StoreError>>;
    /// Deletes up to `limit` read messages sent before `cutoff` (Unix
    /// seconds) whose text no other row shares; returns how many.
    fn prune(&mut self, cutoff: i64, limit: usize) -> Result<usize, String>;
    /// Whether the database is still the one opened (checked before each
    /// batch); the reason to refuse writes if not.
    fn check(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// What the chat state keeps in memory.
    fn load(&mut self) -> Result<Snapshot, String>;
    /// At start, before anything else reads the messages: what the marks
    /// file recorded beyond the database goes in, and every message handed
    /// to a session but never written out goes back to its recipient's
    /// inbox. A mark beyond the newest message is not trusted (a damaged
    /// file). Returns every account's slot and marks.
    fn fold_marks(&mut self, marks: &ReadMarks) -> Result<Vec<(u64, Marks)>, String>;
    /// Whether an account exists (start-up import only).
    fn user_exists(&mut self, name: &str) -> Result<bool, String>;
    /// A connection of its own for the reader thread.
    fn reader(&self) -> Result<Box<dyn Reader>, String>;
    /// Where the data is, for the log (a path, or a URL without password).
    fn describe(&self) -> String;
    /// One number from a query (tests look at what is stored this way).
    #[doc(hidden)]
    fn scalar(&mut self, sql: &str) -> Result<i64, String>;
}

/// The reader thread's connection: answers `history` (and takes backups)
/// without waiting behind the write batches.
pub trait Reader: Send + 'static {
    /// Answers a [`StoreRequest::History`] or [`StoreRequest::Backup`];
    /// anything else is refused.
    fn read(&mut self, request: &StoreRequest) -> Result<StoreOutput, StoreError>;
}

/// Where the data lives: `--store`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreLocation {
    /// `<data>/natter.db`, embedded (the default).
    #[default]
    Sqlite,
    /// A PostgreSQL database (`postgres://user@host/db`).
    Postgres(String),
}

/// An open database, before its thread starts.
pub struct Store {
    backend: Box<dyn Backend>,
    /// The data directory's lock, held as long as the store (and so the
    /// server) lives: two servers on one directory would each keep their
    /// own accounts and blocks in memory and split the brain.
    lock: std::fs::File,
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
    /// Opens (creating if needed) the embedded database in `dir` and brings
    /// its schema up to date.
    pub fn open(dir: &Path) -> Result<Store, OpenError> {
        Store::open_at(dir, &StoreLocation::Sqlite)
    }

    /// Opens the store `location` says, with the data directory `dir`
    /// holding the lock and the read marks (and the database, if embedded).
    pub fn open_at(dir: &Path, location: &StoreLocation) -> Result<Store, OpenError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            OpenError(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let lock = lock_data_dir(dir)?;
        let mut backend: Box<dyn Backend> = match location {
            StoreLocation::Sqlite => Box::new(sqlite::SqliteBackend::open(dir)?),
            StoreLocation::Postgres(url) => Box::new(postgres::PgBackend::connect(url)?),
        };
        let mut marks = ReadMarks::open(dir).map_err(|e| {
            OpenError(format!(
                "cannot open read marks {}: {e}",
                dir.join(MARKS_FILE).display()
            ))
        })?;
        let folded = backend.fold_marks(&marks).map_err(|e| {
            OpenError(format!(
                "cannot apply read marks to {}: {e}",
                backend.describe()
            ))
        })?;
        marks.reset_to(&folded).map_err(|e| {
            OpenError(format!(
                "cannot write read marks {}: {e}",
                dir.join(MARKS_FILE).display()
            ))
        })?;
        Ok(Store {
            backend,
            lock,
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

    /// Where the data is, for the log.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Reads what the chat state keeps in memory.
    pub fn load(&mut self) -> Result<Snapshot, String> {
        self.backend.load()
    }

    /// Whether an account exists (start-up import only).
    pub fn user_exists(&mut self, name: &str) -> Result<bool, String> {
        self.backend.user_exists(name)
    }

    /// Runs requests in one transaction outside the thread (start-up import,
    /// benches). Returns each request's result.
    pub fn run_batch(&mut self, requests: &[StoreRequest]) -> Vec<Result<StoreOutput, StoreError>> {
        self.backend.run_batch(requests)
    }

    /// One number from a query, for tests that look at what is stored.
    #[doc(hidden)]
    pub fn scalar(&mut self, sql: &str) -> Result<i64, String> {
        self.backend.scalar(sql)
    }

    /// A connection of its own for reading, as the reader thread has.
    pub fn reader(&self) -> Result<Box<dyn Reader>, String> {
        self.backend.reader()
    }

    /// Starts the reader: a thread with a connection of its own that
    /// answers `history` (and takes backups), so reads never wait behind
    /// the write batches. Any other request is refused.
    pub fn spawn_reader<T, F>(&self, mut on_done: F) -> std::io::Result<StoreHandle<T>>
    where
        T: Send + 'static,
        F: FnMut(Vec<(T, Result<StoreOutput, StoreError>)>) + Send + 'static,
    {
        let mut reader = self.reader().map_err(std::io::Error::other)?;
        let (tx, rx) = mpsc::channel::<(StoreRequest, T)>();
        let thread = thread::Builder::new()
            .name("natter-reader".into())
            .spawn(move || {
                while let Ok((request, tag)) = rx.recv() {
                    let result = reader.read(&request);
                    on_done(vec![(tag, result)]);
                }
            })?;
        Ok(StoreHandle {
            tx: Some(tx),
            thread: Some(thread),
            stop: Arc::new(AtomicBool::new(false)),
        })
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
                store_thread(
                    self.backend,
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
    mut backend: Box<dyn Backend>,
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
                    let more = prune(backend.as_mut(), keep);
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
        let results = match (fault, backend.check()) {
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
                let results = backend.run_batch(&requests);
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
            (None, Ok(())) => backend.run_batch(&requests),
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

/// Deletes up to `PRUNE_BATCH` read messages older than `keep`; returns
/// whether it deleted a full batch (so more may be due).
fn prune(backend: &mut dyn Backend, keep: Duration) -> bool {
    let cutoff = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|now| now.saturating_sub(keep).as_secs() as i64)
        .unwrap_or(0);
    match backend.prune(cutoff, PRUNE_BATCH) {
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

/// Text one part of a `history` reply carries at most (besides its row
/// limit): a session that never reads then holds one small part.
pub const HISTORY_PART_BYTES: usize = 64 * 1024;

/// The first rows of a history page that fit in one part: at most about
/// [`HISTORY_PART_BYTES`] of text (always one row), so a part of long
/// messages stays small. Reading stops at the first row that does not fit.
fn within_part<E>(
    rows: impl IntoIterator<Item = Result<MessageRow, E>>,
) -> Result<Vec<MessageRow>, E> {
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
    Ok(taken)
}

/// For each message of an insert, the earlier message of the same request
/// whose row holds its text (a list broadcast shares one `Arc`), if any:
/// that row's id goes in `body_of` and its own text is stored empty.
fn text_holders(messages: &[NewMessage]) -> Vec<Option<usize>> {
    let mut holder: Option<usize> = None;
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| match holder {
            Some(h) if Arc::ptr_eq(&messages[h].body, &m.body) => Some(h),
            _ => {
                holder = Some(i);
                None
            }
        })
        .collect()
}

/// `unread` of a message waiting in its recipient's inbox.
const UNREAD_INBOX: i64 = 1;
/// `unread` of a message handed to its recipient's session: read once its
/// id is within the recipient's `pushed` mark.
const UNREAD_PUSHED: i64 = 2;

thread_local! {
    /// Set on the store thread while a `commit` fault is injected.
    static FAIL_COMMIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the backend must fail its commit (a test's injected fault; see
/// `Store::set_fault_file`).
fn commit_fault_injected() -> bool {
    FAIL_COMMIT.with(|f| f.get())
}

#[cfg(test)]
mod tests;
