//! Messages to people: `send` and `broadcast user` (direct messages,
//! committed before they are acknowledged or pushed) and `broadcast` (to
//! everyone online, never stored).

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

use crate::cluster::Bus;
use crate::protocol::{self, err, ok, ErrorCode, Reply};
use crate::store::{NewMessage, StoreOutput, StoreRequest};

use super::job::{
    write_failed, Cont, Delivery, Effects, Job, Step, StoredMessage, Work, WorkResult,
};
use super::{Chat, Clock, SessionRef};

/// What a direct message did for one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectStatus {
    /// Recipient was online when the message was committed and got it pushed.
    Delivered,
    /// Kept in the recipient's inbox.
    Stored,
    /// The recipient blocks the sender; nothing was sent.
    Blocked,
    /// No such user.
    NoUser,
    /// Offline, and its inbox is full; nothing was sent.
    Full,
}

impl DirectStatus {
    fn as_str(self) -> &'static str {
        match self {
            DirectStatus::Delivered => "delivered",
            DirectStatus::Stored => "stored",
            DirectStatus::Blocked => "blocked",
            DirectStatus::NoUser => "nouser",
            DirectStatus::Full => "full",
        }
    }

    fn is_sent(self) -> bool {
        matches!(self, DirectStatus::Delivered | DirectStatus::Stored)
    }
}

/// One recipient of a direct message while its commit is in flight.
#[derive(Clone, Debug)]
pub struct DirectTarget {
    /// Canonical recipient name.
    pub user: String,
    /// Blocked or NoUser are final; otherwise decided when the commit lands.
    pub status: DirectStatus,
}

/// Which command a direct message came from; decides the reply and event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectKind {
    /// `send`: one recipient, `* msg` event, `+ delivered|stored`.
    Send,
    /// `broadcast user`: a list, `* broadcast` event, a data line each.
    List,
}

impl Chat {
    pub(super) fn send(&mut self, me: String, to: String, text: String, now: Clock) -> Step {
        if to == me {
            return Step::Reply(err(ErrorCode::BadArg, "you cannot send to yourself"));
        }
        match self.direct_status(&me, &to) {
            DirectStatus::NoUser => {
                Step::Reply(err(ErrorCode::NoUser, &format!("no such user {to}")))
            }
            DirectStatus::Blocked => {
                Step::Reply(err(ErrorCode::Blocked, &format!("{to} blocks you")))
            }
            DirectStatus::Full => Step::Reply(err(
                ErrorCode::Full,
                &format!("{to}'s inbox is full; try again once they have read it"),
            )),
            status => {
                let targets = vec![DirectTarget { user: to, status }];
                self.direct(DirectKind::Send, me, text, targets, now)
            }
        }
    }

    pub(super) fn send_to_list(
        &mut self,
        me: String,
        users: Vec<String>,
        text: String,
        now: Clock,
    ) -> Step {
        let mut seen = HashSet::new();
        let targets: Vec<DirectTarget> = users
            .into_iter()
            .filter(|u| *u != me && seen.insert(u.clone()))
            .map(|user| DirectTarget {
                status: self.direct_status(&me, &user),
                user,
            })
            .collect();
        self.direct(DirectKind::List, me, text, targets, now)
    }

    /// Whether `from` may message `to`, and where it would go right now.
    fn direct_status(&self, from: &str, to: &str) -> DirectStatus {
        match self.accounts.get(to) {
            None => DirectStatus::NoUser,
            Some(a) if a.blocks.contains(from) => DirectStatus::Blocked,
            Some(_) if self.is_online(to) => DirectStatus::Delivered,
            Some(a) if self.settings.max_inbox > 0 && a.unread >= self.settings.max_inbox => {
                DirectStatus::Full
            }
            Some(_) => DirectStatus::Stored,
        }
    }

    /// Starts committing a direct message to every deliverable target.
    fn direct(
        &mut self,
        kind: DirectKind,
        from: String,
        text: String,
        targets: Vec<DirectTarget>,
        now: Clock,
    ) -> Step {
        let (sender, body): (Arc<str>, Arc<str>) = (from.as_str().into(), text.as_str().into());
        // In a cluster every message starts in the inbox and leaves it by
        // id once written out (see `cluster.rs`).
        let clustered = self.is_clustered();
        let messages: Vec<NewMessage> = targets
            .iter()
            .filter(|t| t.status.is_sent())
            .map(|t| NewMessage {
                ts: now.wall,
                sender: Arc::clone(&sender),
                recipient: t.user.clone(),
                body: Arc::clone(&body),
                unread: clustered || t.status == DirectStatus::Stored,
            })
            .collect();
        if messages.is_empty() {
            // Only possible for a list naming nobody reachable: nothing to commit.
            return Step::Reply(direct_reply(kind, &targets));
        }
        Step::Wait(Job {
            cont: Cont::Direct {
                kind,
                from,
                ts: now.wall,
                text,
                targets,
            },
            work: Work::Store(StoreRequest::InsertMessages(messages)),
        })
    }

    /// The commit of a direct message is back: push it to the recipients
    /// still online, and put it in the inbox of those who left meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn direct_committed(
        &mut self,
        kind: DirectKind,
        from: String,
        ts: i64,
        text: String,
        mut targets: Vec<DirectTarget>,
        result: WorkResult,
        fx: &mut Effects,
    ) -> Step {
        let WorkResult::Store(Ok(StoreOutput::Ids(ids))) = result else {
            return Step::Reply(write_failed(&result, "message not stored; try again"));
        };
        let event_kind = match kind {
            DirectKind::Send => "msg",
            DirectKind::List => "broadcast",
        };
        let mut line: Option<Rc<[u8]>> = None;
        let mut now_unread = Vec::new();
        let mut left = Vec::new();
        let mut ids = ids.into_iter();
        for t in targets.iter_mut() {
            match t.status {
                DirectStatus::Delivered => {
                    let id = ids.next();
                    if let (Some(node), Some(id)) = (self.remote_node(&t.user), id) {
                        let line = line.get_or_insert_with(|| {
                            protocol::chat_event(event_kind, &from, ts, &text).into()
                        });
                        let line = String::from_utf8_lossy(line).into_owned();
                        self.tell(
                            Some(node.to_string()),
                            Bus::Deliver {
                                user: t.user.clone(),
                                id,
                                line,
                            },
                        );
                        continue;
                    }
                    match (self.online.get(t.user.as_str()), id) {
                        (Some(session), Some(id)) => {
                            let line = line.get_or_insert_with(|| {
                                protocol::chat_event(event_kind, &from, ts, &text).into()
                            });
                            fx.deliveries.push(Delivery {
                                to: *session,
                                line: Rc::clone(line),
                                stored: Some(Box::new(StoredMessage {
                                    recipient: t.user.clone(),
                                    id,
                                })),
                            });
                        }
                        _ => {
                            // Left between submit and commit: it was
                            // stored as on its way to a session, so the
                            // inbox must get it.
                            t.status = DirectStatus::Stored;
                            now_unread.extend(id);
                            left.push(t.user.clone());
                            self.bump_unread(&t.user);
                        }
                    }
                }
                DirectStatus::Stored => {
                    ids.next();
                    self.bump_unread(&t.user);
                }
                DirectStatus::Blocked | DirectStatus::NoUser | DirectStatus::Full => {}
            }
        }
        for t in &targets {
            match t.status {
                DirectStatus::Delivered => self.counters.delivered += 1,
                DirectStatus::Stored => self.counters.stored += 1,
                _ => {}
            }
        }
        let reply = direct_reply(kind, &targets);
        if now_unread.is_empty() {
            Step::Reply(reply)
        } else {
            // "stored" is a promise: acknowledge once the inbox flag is durable.
            Step::Wait(self.return_to_inbox(left, now_unread, reply))
        }
    }

    pub(super) fn broadcast(
        &mut self,
        me: &str,
        text: &str,
        now: Clock,
        fx: &mut Effects,
    ) -> Vec<u8> {
        let line: Rc<[u8]> = protocol::chat_event("broadcast", me, now.wall, text).into();
        let mut n = self.fan_out(me, &line, fx);
        if let Some(c) = self.cluster.as_ref() {
            // The other nodes fan out to their own users; counted here from
            // what this node knows of them.
            let blockers = self.blocked_by.get(me);
            n += c
                .remote
                .keys()
                .filter(|u| *u != me && blockers.is_none_or(|b| !b.contains(*u)))
                .count();
            self.tell(
                None,
                Bus::Broadcast {
                    from: me.to_string(),
                    ts: now.wall,
                    text: text.to_string(),
                },
            );
        }
        self.counters.broadcast_deliveries += n as u64;
        ok(&format!("sent to {n}"))
    }

    /// Queues `line` from `me` to every local session but its own and
    /// those of users blocking `me`; returns how many.
    pub(super) fn fan_out(&mut self, me: &str, line: &Rc<[u8]>, fx: &mut Effects) -> usize {
        let mut n = 0;
        if fx.deliveries.is_empty() && fx.deliveries.capacity() < self.online.len() {
            fx.deliveries = std::mem::take(&mut self.spare_deliveries);
        }
        fx.deliveries.reserve(self.online.len());
        // Who not to send to, looked up once per broadcast: the sender's
        // session and those of the online users who block the sender (one
        // name lookup per blocker, not per recipient), sorted so that a
        // recipient costs a comparison or a binary search, never a hash.
        let mine = self.online.get(me).copied();
        let mut blocking: Vec<SessionRef> = Vec::new();
        if let Some(blockers) = self.blocked_by.get(me) {
            blocking.extend(blockers.iter().filter_map(|u| self.online.get(u.as_str())));
            blocking.sort_unstable();
        }
        for session in self.online.values() {
            if Some(*session) == mine
                || (!blocking.is_empty() && blocking.binary_search(session).is_ok())
            {
                continue;
            }
            fx.deliveries.push(Delivery {
                to: *session,
                line: Rc::clone(line),
                stored: None,
            });
            n += 1;
        }
        n
    }
}

/// `+ delivered|stored` for `send`; a data line per recipient for a list.
fn direct_reply(kind: DirectKind, targets: &[DirectTarget]) -> Vec<u8> {
    match kind {
        DirectKind::Send => match targets.first().map(|t| t.status) {
            Some(DirectStatus::Delivered) => ok("delivered"),
            Some(DirectStatus::Stored) => ok("stored"),
            _ => err(ErrorCode::Internal, "internal error"),
        },
        DirectKind::List => {
            let mut reply = Reply::new();
            let mut sent = 0;
            for t in targets {
                reply.data(&format!("{} {}", t.user, t.status.as_str()));
                if t.status.is_sent() {
                    sent += 1;
                }
            }
            reply.ok(&format!("sent to {sent} of {}", targets.len()))
        }
    }
}
