//! Which of a user's messages have left natterd. A stored message counts as
//! read only once the bytes of its `* msg` line (or its `inbox` row) were
//! handed to the kernel for the recipient's socket; the reactor reports
//! that through [`Chat::written`], and the marks it records (see
//! `store::marks`) are all a restart needs to put everything else back in
//! the inbox, exactly once.
//!
//! `pushed` is a high-water mark, which is sound because one session gets
//! its pushes in id order and a user has one open session at a time. The
//! one way a lower id can be left behind is a message going back to the
//! inbox (its session closed, was replaced or was dropped before writing
//! it): until that write is committed, raising `pushed` past it would make
//! it count as read if natterd died just then, so meanwhile the user's
//! marks are held in memory and recorded once it lands. A session's
//! leftovers are handed back the moment it stops being open, before a
//! newer session of the same user can read past them.

use crate::store::{Marks, StoreRequest};

use super::job::{Cont, Effects, Job, Step, Work, WorkResult};
use super::Chat;

/// Where one user's messages stand on their way out.
#[derive(Clone, Debug)]
pub struct ReadState {
    /// Slot in the marks file (the account's rowid).
    pub slot: u64,
    /// Highest ids written out, as the loop saw them.
    written: Marks,
    /// What the marks file holds: `written`, unless held back.
    recorded: Marks,
    /// Writes putting this user's messages back in the inbox not yet
    /// committed. One that fails stays counted: the marks then stay held
    /// until a restart sorts the messages out from the database.
    returning: u32,
    /// Highest inbox row handed to an `inbox` reply, written or not: the
    /// next `inbox` goes on after it.
    pub(super) inbox_sent: i64,
    /// In `Chat::marks_dirty`.
    dirty: bool,
}

impl ReadState {
    /// The state of an account whose marks are `marks`.
    pub fn new(slot: u64, marks: Marks) -> Self {
        ReadState {
            slot,
            written: marks,
            recorded: marks,
            returning: 0,
            inbox_sent: marks.inboxed,
            dirty: false,
        }
    }
}

impl Chat {
    /// Bytes of `user`'s messages left natterd: the highest pushed and
    /// inbox ids among them (0: none). Returns the marks to record, unless
    /// they are held back or did not move.
    ///
    /// In a cluster, `ids` (every one of those messages) are marked read
    /// instead, and no marks are recorded (see `cluster.rs`).
    pub fn written(
        &mut self,
        user: &str,
        pushed: i64,
        inboxed: i64,
        ids: &[i64],
    ) -> Option<(u64, Marks)> {
        if self.is_clustered() {
            self.written_ids(ids);
            return None;
        }
        let account = self.accounts.get_mut(user)?;
        let read = &mut account.read;
        read.written.pushed = read.written.pushed.max(pushed);
        read.written.inboxed = read.written.inboxed.max(inboxed);
        self.record(user)
    }

    /// Records `user`'s written marks unless held back or unchanged.
    fn record(&mut self, user: &str) -> Option<(u64, Marks)> {
        let read = &mut self.accounts.get_mut(user)?.read;
        if read.returning > 0 || read.written == read.recorded {
            return None;
        }
        read.recorded = read.written;
        if !read.dirty {
            read.dirty = true;
            self.marks_dirty.push(user.to_string());
        }
        Some((read.slot, read.recorded))
    }

    /// A session of `user` stopped being open (called at that moment, with
    /// [`Chat::disconnect`]); `pushes` and `inbox` are what it never wrote
    /// out. They are unread again at once: a newer session of the user may
    /// be reading the inbox meanwhile, and rows handed back later would
    /// land below what that one has read, where no `inbox` looks.
    pub fn left_over(
        &mut self,
        user: &str,
        pushes: &[i64],
        inbox: &[i64],
        fx: &mut Effects,
    ) -> Option<Job> {
        let job = self.undelivered(user, pushes, inbox);
        fx.marks.extend(self.record(user));
        job
    }

    /// Messages that were on their way to `user` but never left natterd:
    /// pushes go back to the inbox (the returned job makes that durable,
    /// and holds the marks until it has), inbox rows are simply offered
    /// again by the next `inbox`.
    pub fn undelivered(&mut self, user: &str, pushes: &[i64], inbox: &[i64]) -> Option<Job> {
        let account = self.accounts.get_mut(user)?;
        let back = pushes.len() + inbox.len();
        account.unread = account
            .unread
            .saturating_add(u32::try_from(back).unwrap_or(u32::MAX));
        if let Some(first) = inbox.iter().min() {
            account.read.inbox_sent = account.read.inbox_sent.min(first - 1);
        }
        if pushes.is_empty() {
            return None;
        }
        account.read.returning += 1;
        Some(Job {
            cont: Cont::Returned {
                users: vec![user.to_string()],
                reply: None,
            },
            work: Work::Store(StoreRequest::MarkUnread {
                ids: pushes.to_vec(),
            }),
        })
    }

    /// Messages committed for `users` while they were online, who left
    /// before they could be pushed: back to their inboxes, then `reply`.
    pub(super) fn return_to_inbox(
        &mut self,
        users: Vec<String>,
        ids: Vec<i64>,
        reply: Vec<u8>,
    ) -> Job {
        for user in &users {
            if let Some(a) = self.accounts.get_mut(user.as_str()) {
                a.read.returning += 1;
            }
        }
        Job {
            cont: Cont::Returned {
                users,
                reply: Some(reply),
            },
            work: Work::Store(StoreRequest::MarkUnread { ids }),
        }
    }

    /// Messages are back in the inbox (or could not be put back).
    pub(super) fn returned(
        &mut self,
        users: Vec<String>,
        reply: Option<Vec<u8>>,
        result: WorkResult,
        fx: &mut Effects,
    ) -> Step {
        let ok = matches!(result, WorkResult::Store(Ok(_)));
        if ok {
            for user in &users {
                if let Some(a) = self.accounts.get_mut(user.as_str()) {
                    a.read.returning = a.read.returning.saturating_sub(1);
                }
                fx.marks.extend(self.record(user));
            }
        } else {
            log::error!(
                "store: messages for {} could not go back to the inbox; their read marks stay held until a restart",
                users.join(", ")
            );
        }
        match reply {
            Some(reply) if ok => Step::Reply(reply),
            Some(_) => Step::Reply(super::job::write_failed(
                &result,
                "message stored, but not yet in the inbox of everyone who left; check history",
            )),
            None => Step::Done,
        }
    }

    /// The database's copy of the marks of everyone whose marks moved, if
    /// none is being written now (the marks file already has them; this
    /// keeps the database's copy close, so a restart has little to fold).
    pub fn take_advance(&mut self) -> Option<Job> {
        if let Some(request) = self.take_read() {
            return Some(Job {
                cont: Cont::Background,
                work: Work::Store(request),
            });
        }
        if self.advance_in_flight || self.marks_dirty.is_empty() {
            return None;
        }
        let mut marks = Vec::with_capacity(self.marks_dirty.len());
        for user in std::mem::take(&mut self.marks_dirty) {
            if let Some(a) = self.accounts.get_mut(user.as_str()) {
                a.read.dirty = false;
                marks.push((user, a.read.recorded));
            }
        }
        self.advance_in_flight = true;
        Some(Job {
            cont: Cont::Advanced,
            work: Work::Store(StoreRequest::Advance(marks)),
        })
    }

    /// An `Advance` is done. If it failed the marks file still has the
    /// marks, and the next start folds them in.
    pub(super) fn advanced(&mut self, result: WorkResult) -> Step {
        self.advance_in_flight = false;
        if !matches!(result, WorkResult::Store(Ok(_))) {
            log::warn!("store: read marks not copied into the database; the marks file keeps them");
        }
        Step::Done
    }
}
