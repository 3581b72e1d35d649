//! The contract between the chat core and the connection layer: what a
//! command produces for its own session ([`Step`]), the background work it
//! may need ([`Job`], [`Work`], and the continuation [`Cont`] that comes
//! back with the result), and what it does to everyone else ([`Effects`]).
//!
//! Plain data only: the connection layer moves these values around and
//! never looks inside a continuation.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::Instant;

use crate::addr::AddrGroup;
use crate::auth::{HashOutcome, HashWork};
use crate::protocol::ByeReason;
use crate::protocol::{err, ErrorCode};
use crate::store::{Marks, StoreError, StoreOutput, StoreRequest};

use super::direct::{DirectKind, DirectTarget};
use super::SessionRef;

/// Key of a lockout record: the username and the address group guessing it.
pub type LockKey = (String, AddrGroup);

/// What a command (or a completed job) produced for its own session.
#[derive(Debug)]
pub enum Step {
    /// Nothing to say: a job whose session has gone, or one nobody waits for.
    Done,
    /// The complete reply: data lines and one completion.
    Reply(Vec<u8>),
    /// An `inbox` reply, with where each row's line ends in it and its
    /// message id: a row counts as read once its line has left natterd.
    Inbox {
        /// The reply.
        reply: Vec<u8>,
        /// (end offset in `reply`, message id), in order.
        rows: Vec<(usize, i64)>,
    },
    /// Waiting for background work; the reply comes from [`super::Chat::complete`].
    Wait(Job),
    /// A part of a long reply (data lines, no completion), and the job for
    /// the next part: started once the client has taken most of this one.
    /// Events wait until the reply is complete, so none lands inside it.
    More { part: Vec<u8>, next: Job },
}

/// Background work plus what to do with its result.
#[derive(Debug)]
pub struct Job {
    /// What to do with the result; comes back with it.
    pub cont: Cont,
    /// What the background thread does.
    pub work: Work,
}

/// Work for a background thread.
#[derive(Debug)]
pub enum Work {
    /// For the store thread.
    Store(StoreRequest),
    /// For the hashing pool.
    Hash(HashWork),
    /// Nothing for a thread: the next page of a long reply made from the
    /// chat's memory, once the loop takes the (immediate) result.
    Local,
}

/// The outcome of [`Work`].
#[derive(Debug)]
pub enum WorkResult {
    /// Store result; the error text is for the log.
    Store(Result<StoreOutput, StoreError>),
    /// From the hashing pool.
    Hash(HashOutcome),
    /// [`Work::Local`] is due.
    Local,
}

/// The reply to a write that did not succeed: "not done" when nothing was
/// committed, and honest uncertainty when the commit itself failed (it may
/// be on disk), so the client checks before resending.
pub fn write_failed(result: &WorkResult, not_done: &str) -> Vec<u8> {
    match result {
        WorkResult::Store(Err(StoreError::Unknown(_))) => err(
            ErrorCode::Internal,
            "outcome unknown (the disk failed while committing); check before resending",
        ),
        _ => err(ErrorCode::Internal, not_done),
    }
}

/// What to do with a background result once it is back. Carried with the
/// job and returned untouched, so the reactor keeps no per-job state.
#[derive(Clone, Debug)]
pub enum Cont {
    /// Password checked for a login.
    Login {
        /// Who is logging in.
        user: String,
        /// Whether the account exists (else the dummy hash was checked).
        known: bool,
        /// From where: lockouts are per user and address.
        ip: IpAddr,
        /// Whether it took a token of the account's guessing budget.
        charged: bool,
    },
    /// Old password checked for a `passwd`.
    PasswdChecked {
        /// Whose.
        user: String,
        /// From where (a wrong old password counts as a failed login).
        ip: IpAddr,
        /// The new password, hashed next.
        new: String,
    },
    /// New password hashed for a `passwd`.
    PasswdHashed { user: String },
    /// New password hash written for a `passwd`.
    PasswdStored { user: String, hash: String },
    /// New password hashed for a register.
    RegisterHashed { user: String },
    /// New account written.
    RegisterStored { user: String, hash: String },
    /// Direct message(s) committed.
    Direct {
        kind: DirectKind,
        from: String,
        ts: i64,
        text: String,
        targets: Vec<DirectTarget>,
    },
    /// The accounts read again after a cluster outage.
    Reloaded,
    /// Logged in (cluster mode): the inbox count for the welcome.
    Welcome { user: String },
    /// Inbox rows read (they stay unread until written out).
    Inbox { user: String },
    /// A page of history read; where the reply stands.
    History(Box<super::HistoryCursor>),
    /// The next page of a long `whoelse` or `wholast`.
    Who(Box<super::WhoCursor>),
    /// A write whose only reply is this fixed line once it is committed.
    Ack(Vec<u8>),
    /// A block or unblock being written; undone in memory if that fails.
    Block {
        /// Who blocks.
        user: String,
        /// Whom.
        other: String,
        /// Block (true) or unblock.
        on: bool,
        /// Whether the block existed before.
        had: bool,
    },
    /// Messages going back to these users' inboxes; their read marks wait
    /// for this (see `read_marks.rs`). `reply`, if any, answers a command.
    Returned {
        users: Vec<String>,
        reply: Option<Vec<u8>>,
    },
    /// Read marks copied into the database.
    Advanced,
    /// An admin request's work (a backup); the reactor answers the admin
    /// connection `conn` (with its `id`, in case the slot was reused).
    Admin { conn: usize, id: u64 },
    /// A step of an operator's request that runs through the chat (a new
    /// account, a password reset): `then` continues it as for a session,
    /// and its reply (or `done` when there is none) answers the admin
    /// connection `conn` with its `id`.
    Operator {
        conn: usize,
        id: u64,
        then: Box<Cont>,
        done: &'static str,
    },
    /// A write nobody waits for (last-seen times); failures are only logged.
    Background,
}

impl Cont {
    /// Roughly what this job holds in memory while it waits for the store
    /// (a list broadcast's text once plus a row per recipient), so a session
    /// can be held to a share of the store's queue.
    pub fn queued_bytes(&self) -> usize {
        match self {
            Cont::Direct { text, targets, .. } => text.len() + 64 * targets.len(),
            _ => 0,
        }
    }

    /// At most how many rows its result makes the loop format.
    pub fn rows_to_format(&self) -> usize {
        match self {
            Cont::History(_) => super::HISTORY_PAGE as usize,
            // Names are short: a page of them formats like ~100 rows.
            Cont::Who(_) => 100,
            Cont::Inbox { .. } => super::INBOX_PAGE as usize,
            _ => 0,
        }
    }

    /// Whether later lines of the session must wait for this job: their
    /// meaning depends on whether a login or register succeeds; and an
    /// `inbox` or `history` reply can be megabytes, so one at a time keeps
    /// what a pipelining client can make us hold to one such reply.
    pub fn is_barrier(&self) -> bool {
        matches!(
            self,
            Cont::Login { .. }
                | Cont::Welcome { .. }
                | Cont::RegisterHashed { .. }
                | Cont::RegisterStored { .. }
                | Cont::Inbox { .. }
                | Cont::History(_)
                | Cont::Who(_)
        )
    }

    /// Whether its reply may come in parts: then it starts only once every
    /// earlier command of its session is answered (its parts go straight
    /// to the output, so it must be the next reply out).
    pub fn replies_in_parts(&self) -> bool {
        matches!(self, Cont::History(_) | Cont::Who(_))
    }
}

/// A stored direct message on its way to a recipient's socket: if it
/// cannot be written there, it goes back to the inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// The recipient's name.
    pub recipient: String,
    /// The message's id in the store.
    pub id: i64,
}

/// One event line for one session.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Who gets it.
    pub to: SessionRef,
    /// The complete `* ...` line, formatted once and shared by every
    /// delivery of the same message.
    pub line: Rc<[u8]>,
    /// Set for a stored direct message. Boxed: a broadcast to thousands
    /// carries none, and each delivery stays small.
    pub stored: Option<Box<StoredMessage>>,
}

/// Side effects of a command beyond its own reply.
#[derive(Debug, Default)]
pub struct Effects {
    /// Events for other sessions.
    pub deliveries: Vec<Delivery>,
    /// Sessions to send `* bye <reason>` and close.
    pub closes: Vec<(SessionRef, ByeReason)>,
    /// Writes nobody waits for.
    pub background: Vec<StoreRequest>,
    /// Lockout records to look at again at the given time.
    pub lock_timers: Vec<(Instant, LockKey)>,
    /// The caller is now logged in as this user.
    pub logged_in: Option<super::Name>,
    /// The caller asked to leave (`quit`/`logout`).
    pub quit: bool,
    /// Read marks to record: (slot, marks).
    pub marks: Vec<(u64, Marks)>,
}
