//! Commands that read or change a user's own view: `whoelse`, `wholast`,
//! `inbox`, `history`, `block`/`unblock`/`blocked`, and `help`.

use std::collections::BinaryHeap;
use std::ops::Bound;

use crate::cluster::Bus;
use crate::protocol::{self, err, ok, ErrorCode, Reply};
use crate::store::{StoreOutput, StoreRequest};

use super::job::{write_failed, Cont, Job, Step, Work, WorkResult};
use super::{Caller, Chat, Clock, HISTORY_PAGE, INBOX_PAGE, WHO_PAGE};

impl Chat {
    pub(super) fn whoelse(&self, me: String) -> Step {
        self.who(WhoCursor {
            me,
            since: None,
            after: None,
            sent: 0,
        })
    }

    pub(super) fn wholast(&self, me: String, minutes: u32, now: Clock) -> Step {
        self.who(WhoCursor {
            me,
            since: Some(now.wall - i64::from(minutes) * 60),
            after: None,
            sent: 0,
        })
    }

    /// A `whoelse` or `wholast` that fits in one page is answered now;
    /// a longer one goes out a page at a time (see [`Chat::who_page`]).
    fn who(&self, cursor: WhoCursor) -> Step {
        match self.who_names(&cursor) {
            (names, false) => Step::Reply(
                self.who_reply(&cursor, &names)
                    .ok(&cursor.total_text(names.len())),
            ),
            (_, true) => Step::Wait(Job {
                cont: Cont::Who(Box::new(cursor)),
                work: Work::Local,
            }),
        }
    }

    /// The next page of a long `whoelse` or `wholast`.
    pub(super) fn who_page(&self, mut cursor: Box<WhoCursor>) -> Step {
        let (names, more) = self.who_names(&cursor);
        let reply = self.who_reply(&cursor, &names);
        cursor.sent += names.len();
        match names.last() {
            Some(last) if more => {
                cursor.after = Some(last.to_string());
                Step::More {
                    part: reply.partial(),
                    next: Job {
                        cont: Cont::Who(cursor),
                        work: Work::Local,
                    },
                }
            }
            _ => Step::Reply(reply.ok(&cursor.total_text(cursor.sent))),
        }
    }

    /// Up to `WHO_PAGE` names after the cursor's, in order, and whether
    /// more follow.
    fn who_names(&self, cursor: &WhoCursor) -> (Vec<&str>, bool) {
        let after = cursor.after.as_deref();
        let others = |name: &&str| *name != cursor.me && after.is_none_or(|a| *name > a);
        let mut names: Vec<&str> = match cursor.since {
            None => {
                let from = match after {
                    Some(a) => Bound::Excluded(a),
                    None => Bound::Unbounded,
                };
                let mut names: Vec<&str> = self
                    .online
                    .range::<str, _>((from, Bound::Unbounded))
                    .map(|(name, _)| &name[..])
                    .filter(others)
                    .take(WHO_PAGE + 1)
                    .collect();
                if let Some(c) = self.cluster.as_ref() {
                    // Both maps are ordered: the first page of each, merged.
                    names.extend(
                        c.remote
                            .range::<str, _>((from, Bound::Unbounded))
                            .map(|(name, _)| &name[..])
                            .filter(others)
                            .take(WHO_PAGE + 1),
                    );
                    names.sort_unstable();
                    names.dedup();
                }
                names
            }
            Some(since) => {
                // The smallest WHO_PAGE + 1 names after the cursor: a bounded
                // heap over the accounts, so a page costs one pass over them
                // and memory for one page, however many match.
                let mut smallest: BinaryHeap<&str> = BinaryHeap::with_capacity(WHO_PAGE + 2);
                let recent = self.accounts.iter().filter(|(name, account)| {
                    self.is_online(name) || account.last_seen.is_some_and(|t| t >= since)
                });
                for name in recent.map(|(name, _)| &name[..]).filter(others) {
                    if smallest.len() <= WHO_PAGE {
                        smallest.push(name);
                    } else if smallest.peek().is_some_and(|top| name < *top) {
                        smallest.pop();
                        smallest.push(name);
                    }
                }
                smallest.into_sorted_vec()
            }
        };
        let more = names.len() > WHO_PAGE;
        names.truncate(WHO_PAGE);
        (names, more)
    }

    /// The data lines for `names`.
    fn who_reply(&self, cursor: &WhoCursor, names: &[&str]) -> Reply {
        let mut reply = Reply::new();
        for name in names {
            match cursor.since {
                None => reply.data(name),
                Some(_) if self.is_online(name) => reply.data(&format!("{name} online")),
                Some(_) => {
                    let seen = self
                        .accounts
                        .get(*name)
                        .and_then(|a| a.last_seen)
                        .unwrap_or(0);
                    reply.data(&format!("{name} {}", protocol::format_time(seen)))
                }
            };
        }
        reply
    }

    pub(super) fn inbox(&self, me: String) -> Step {
        let after = self
            .accounts
            .get(me.as_str())
            .map_or(0, |a| a.read.inbox_sent);
        Step::Wait(Job {
            cont: Cont::Inbox { user: me.clone() },
            work: Work::Store(StoreRequest::TakeInbox {
                user: me,
                after,
                limit: INBOX_PAGE,
            }),
        })
    }

    pub(super) fn inbox_read(
        &mut self,
        caller: Option<&Caller>,
        user: String,
        result: WorkResult,
    ) -> Step {
        let WorkResult::Store(Ok(StoreOutput::Rows(rows))) = result else {
            return read_failed();
        };
        if caller.is_none() {
            // The reader is gone; the rows stay in the inbox.
            return Step::Done;
        }
        let left = self.accounts.get_mut(user.as_str()).map(|a| {
            a.unread = a.unread.saturating_sub(rows.len() as u32);
            if let Some(last) = rows.last() {
                a.read.inbox_sent = a.read.inbox_sent.max(last.id);
            }
            a.unread
        });
        let mut reply = Reply::new();
        let mut ends = Vec::with_capacity(rows.len());
        for row in &rows {
            reply.data(&format!(
                "{} {} {}",
                protocol::format_time(row.ts),
                row.sender,
                row.body
            ));
            ends.push((reply.len(), row.id));
        }
        let text = match left {
            Some(n) if n > 0 => format!("{} unread ({n} more waiting: inbox again)", rows.len()),
            _ => format!("{} unread", rows.len()),
        };
        Step::Inbox {
            reply: reply.ok(&text),
            rows: ends,
        }
    }

    pub(super) fn history(&self, me: String, with: Option<String>, count: u32) -> Step {
        if let Some(other) = &with {
            if !self.accounts.contains_key(other.as_str()) {
                return Step::Reply(err(ErrorCode::NoUser, &format!("no such user {other}")));
            }
        }
        Step::Wait(history_page(Box::new(HistoryCursor {
            user: me,
            with,
            limit: count,
            after: 0,
            upto: None,
            total: 0,
            sent: 0,
        })))
    }

    /// A page of `history` is back: the last page completes the reply,
    /// any other is sent as a part, with the job for the next page.
    pub(super) fn history_read(&self, mut cursor: Box<HistoryCursor>, result: WorkResult) -> Step {
        let WorkResult::Store(Ok(StoreOutput::History { rows, upto, total })) = result else {
            return read_failed();
        };
        if cursor.upto.is_none() {
            cursor.upto = Some(upto);
            cursor.total = total;
        }
        let mut reply = Reply::new();
        for row in &rows {
            reply.data(&format!(
                "{} {} {} {}",
                protocol::format_time(row.ts),
                row.sender,
                row.recipient,
                row.body
            ));
        }
        cursor.sent += rows.len() as u32;
        match rows.last() {
            // A part may be cut short by its size: more follow while the
            // span is not all sent.
            Some(last) if cursor.sent < cursor.total => {
                cursor.after = last.id;
                Step::More {
                    part: reply.partial(),
                    next: history_page(cursor),
                }
            }
            _ => Step::Reply(reply.ok(&format!("{} messages", cursor.sent))),
        }
    }

    /// `block` or `unblock`: applied at once (so nothing slips through while
    /// it is being written) and undone if the write fails.
    pub(super) fn block(&mut self, me: String, other: String, on: bool) -> Step {
        if !self.accounts.contains_key(other.as_str()) {
            return Step::Reply(err(ErrorCode::NoUser, &format!("no such user {other}")));
        }
        if on && other == me {
            return Step::Reply(err(ErrorCode::BadArg, "you cannot block yourself"));
        }
        let had = self.apply_block(&me, &other, on);
        Step::Wait(Job {
            cont: Cont::Block {
                user: me.clone(),
                other: other.clone(),
                on,
                had,
            },
            work: Work::Store(StoreRequest::SetBlock {
                blocker: me,
                blocked: other,
                on,
            }),
        })
    }

    pub(super) fn block_written(
        &mut self,
        user: String,
        other: String,
        on: bool,
        had: bool,
        result: WorkResult,
    ) -> Step {
        if let WorkResult::Store(Ok(_)) = result {
            self.tell(
                None,
                Bus::Block {
                    user: user.clone(),
                    other: other.clone(),
                    on,
                },
            );
            let verb = if on { "blocked" } else { "unblocked" };
            return Step::Reply(ok(&format!("{verb} {other}")));
        }
        self.apply_block(&user, &other, had);
        Step::Reply(write_failed(&result, "change not saved; try again"))
    }

    /// Sets whether `user` blocks `other`; returns whether it did before.
    pub(super) fn apply_block(&mut self, user: &str, other: &str, on: bool) -> bool {
        let Some(account) = self.accounts.get_mut(user) else {
            return false;
        };
        let had = account.blocks.contains(other);
        if on {
            account.blocks.insert(other.to_string());
            self.blocked_by
                .entry(other.to_string())
                .or_default()
                .insert(user.to_string());
        } else {
            account.blocks.remove(other);
            if let Some(blockers) = self.blocked_by.get_mut(other) {
                blockers.remove(user);
                if blockers.is_empty() {
                    self.blocked_by.remove(other);
                }
            }
        }
        had
    }

    pub(super) fn blocked(&self, me: &str) -> Vec<u8> {
        let mut names: Vec<&String> = self
            .accounts
            .get(me)
            .map(|a| a.blocks.iter().collect())
            .unwrap_or_default();
        names.sort();
        let mut reply = Reply::new();
        for name in &names {
            reply.data(name);
        }
        reply.ok(&format!("{} blocked", names.len()))
    }
}

fn read_failed() -> Step {
    Step::Reply(err(
        ErrorCode::Internal,
        "could not read messages; try again",
    ))
}

/// Where a long `whoelse` (`since` None) or `wholast` reply stands.
#[derive(Clone, Debug)]
pub struct WhoCursor {
    me: String,
    /// `wholast`: users seen since this Unix time (and those online).
    since: Option<i64>,
    /// Last name sent so far.
    after: Option<String>,
    /// Names sent so far.
    sent: usize,
}

impl WhoCursor {
    fn total_text(&self, n: usize) -> String {
        match self.since {
            None => format!("{n} online"),
            Some(_) => format!("{n} users"),
        }
    }
}

/// Where a `history` reply stands between its pages.
#[derive(Clone, Debug)]
pub struct HistoryCursor {
    user: String,
    with: Option<String>,
    /// How many messages were asked for.
    limit: u32,
    /// Last id sent so far (0: none).
    after: i64,
    /// Last id of the span, once the first page found it.
    upto: Option<i64>,
    /// Messages in the span.
    total: u32,
    /// Messages sent so far.
    sent: u32,
}

/// The job that reads the page after `cursor`.
fn history_page(cursor: Box<HistoryCursor>) -> Job {
    Job {
        work: Work::Store(StoreRequest::History {
            user: cursor.user.clone(),
            with: cursor.with.clone(),
            limit: cursor.limit,
            after: cursor.after,
            upto: cursor.upto,
            page: HISTORY_PAGE,
        }),
        cont: Cont::History(cursor),
    }
}

pub(super) fn help_reply(logged_in: bool) -> Vec<u8> {
    let mut reply = Reply::new();
    for spec in protocol::COMMANDS {
        if logged_in || spec.before_login {
            for usage in spec.usage {
                reply.data(usage);
            }
        }
    }
    if logged_in {
        reply.ok("commands")
    } else {
        reply.ok("commands before login; more after")
    }
}
