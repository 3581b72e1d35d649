//! What a command line means, and the chat state it acts on.
//!
//! - [`parse`](mod@parse): one line into a [`Command`], or a [`ParseError`]
//!   rendered in one place. Login state is checked there and only there.
//! - [`job`]: the contract with the connection layer: a command answers
//!   with a [`Step`] (done, a reply, or a [`Job`] for the store or the hasher
//!   whose result comes back with its [`Cont`]), and [`Effects`] for others.
//! - [`Chat`] (`chat.rs`) owns the in-memory state; its commands are split by
//!   topic: `login.rs` (login, register, lockouts), `direct.rs` (send and
//!   both broadcasts), `reads.rs` (who is online, inbox, history, blocks),
//!   `read_marks.rs` (which messages have left natterd).
//!
//! Nothing here touches a socket, a file or a thread, and time is passed in,
//! so all of it runs in unit tests and fuzzers exactly as in the server.

use std::net::IpAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

mod budget;
mod chat;
mod cluster;
mod direct;
pub mod job;
mod login;
mod operator;
pub mod parse;
mod read_marks;
mod reads;

pub use reads::{HistoryCursor, WhoCursor};

pub use chat::{Account, Blocks, Chat, ChatSettings, Counters};
pub use cluster::ClusterState;
pub use direct::{DirectKind, DirectStatus, DirectTarget};
pub use job::{Cont, Delivery, Effects, Job, LockKey, Step, StoredMessage, Work, WorkResult};
pub use operator::UserSummary;
pub use parse::{parse, parse_line, Command, MemberCommand, ParseError};
pub use read_marks::ReadState;

/// Longest `wholast` window: one week, in minutes.
pub const MAX_WHOLAST_MINUTES: u32 = 10_080;
/// `history` count when none is given.
pub const DEFAULT_HISTORY: u32 = 20;
/// Largest `history` count.
pub const MAX_HISTORY: u32 = 1000;
/// Messages per part of a `history` reply (and at most
/// `store::HISTORY_PART_BYTES` of text): each part is read and
/// formatted only once the client has taken most of the one before, so a
/// reply costs at most a page of memory however long it is.
pub const HISTORY_PAGE: u32 = 100;
/// Names per part of a long `whoelse` or `wholast` reply (a reply that
/// fits in one goes out whole, at once).
pub const WHO_PAGE: usize = 1000;
/// Most messages one `inbox` reply carries; the rest stay unread for the
/// next `inbox`. Keeps one reply to a few hundred KiB at the longest lines.
pub const INBOX_PAGE: u32 = 100;

/// A session as the reactor knows it: slab slot plus never-reused id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionRef {
    /// Slab index (the mio token).
    pub token: usize,
    /// Unique session id.
    pub id: u64,
}

/// A user's name as the chat keeps it: one allocation shared by the
/// account, the online map, the trusted-address record and the session
/// (issue 16: four copies cost an idle session over a hundred bytes).
pub type Name = std::rc::Rc<str>;

/// Who is speaking: the part of a session the chat logic reads. The chat
/// never changes it; a login comes back as [`Effects::logged_in`].
#[derive(Clone, Debug)]
pub struct Caller {
    /// The session.
    pub session: SessionRef,
    /// Peer address (lockouts are per user and address).
    pub ip: IpAddr,
    /// The logged-in user, if any.
    pub user: Option<Name>,
}

/// Wall and monotonic time, read once per loop pass and passed in.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// For deadlines and lockouts.
    pub mono: Instant,
    /// Unix seconds, for timestamps shown to users and stored.
    pub wall: i64,
    /// Unix milliseconds: orders logins across the nodes of a cluster.
    pub wall_ms: i64,
}

impl Clock {
    /// The time now.
    pub fn now() -> Clock {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            mono: Instant::now(),
            wall: since_epoch.as_secs() as i64,
            wall_ms: since_epoch.as_millis() as i64,
        }
    }
}

#[cfg(test)]
mod tests;
