//! What this node knows of the other nodes of a cluster, and what it does
//! with what they say (see `crate::cluster` for the transport).
//!
//! Every node keeps the whole chat in memory as a single node does
//! (accounts, blocks, bans), and the others keep it current by telling it
//! each change. What is only on other nodes is who is online there
//! ([`ClusterState::remote`]). A login announces itself; the newer login of
//! a user wins, wherever it is, and the older session ends with
//! `* bye replaced`. A node silent for `NODE_EXPIRY`, or the loss of Redis,
//! takes the users it held offline here at once.
//!
//! Read state works by id in a cluster: every direct message is committed
//! as unread (in the inbox), and the node that writes its line out marks
//! that row read. Message ids come from one sequence shared by all nodes,
//! so they say nothing about the order a recipient's messages commit in,
//! and the single node's high-water marks would count a late-committing
//! lower id as read. A node that dies between writing a line and marking
//! it leaves it in the inbox: shown twice, never lost.
//!
//! Nothing here does I/O: what to tell the others is queued in
//! [`ClusterState::outgoing`] and sent by the reactor.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use crate::cluster::{Bus, Inbound};
use crate::protocol::{self, ok, ByeReason};
use crate::store::{StoreOutput, StoreRequest};

use super::job::{Cont, Delivery, Effects, Job, Step, StoredMessage, Work, WorkResult};
use super::{Account, Chat, Clock, Name};

/// A node's view of the rest of the cluster.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// This node's id.
    pub node: String,
    /// Users online on other nodes: name → (node, login time in Unix ms).
    /// Ordered, so `whoelse` merges it with the local sessions unsorted.
    pub remote: BTreeMap<String, (Rc<str>, i64)>,
    /// When each local session logged in (Unix ms): the newer login of a
    /// user wins across nodes.
    pub since: HashMap<String, i64>,
    /// Ids of messages whose lines left this node, to be marked read.
    pub read: Vec<i64>,
    /// Messages for the other nodes: (`Some(node)` for one, `None` for
    /// all), sent by the reactor after each pass.
    pub outgoing: Vec<(Option<String>, Bus)>,
    /// Cut off from Redis since the last subscription: once subscribed
    /// again, every node reloads the accounts.
    pub cut_off: bool,
}

impl ClusterState {
    /// Forgets every user of `node`; returns their names.
    fn drop_node(&mut self, node: &str) -> Vec<String> {
        let gone: Vec<String> = self
            .remote
            .iter()
            .filter(|(_, (n, _))| &**n == node)
            .map(|(u, _)| u.clone())
            .collect();
        for u in &gone {
            self.remote.remove(u);
        }
        gone
    }
}

impl Chat {
    /// Makes this chat node `node` of a cluster.
    pub fn join_cluster(&mut self, node: String) {
        self.cluster = Some(ClusterState {
            node,
            ..ClusterState::default()
        });
    }

    /// Whether this chat is a node of a cluster.
    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// Whether this node hears the others (not cut off from Redis).
    pub fn cluster_connected(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| !c.cut_off)
    }

    /// Users online on other nodes, as far as this node knows.
    pub fn remote_count(&self) -> usize {
        self.cluster.as_ref().map_or(0, |c| c.remote.len())
    }

    /// Online here or on another node.
    pub(super) fn is_online(&self, user: &str) -> bool {
        self.online.contains_key(user)
            || self
                .cluster
                .as_ref()
                .is_some_and(|c| c.remote.contains_key(user))
    }

    /// The node holding `user`'s session, if it is another node.
    pub(super) fn remote_node(&self, user: &str) -> Option<Rc<str>> {
        let cluster = self.cluster.as_ref()?;
        cluster.remote.get(user).map(|(n, _)| Rc::clone(n))
    }

    /// Queues `msg` for the other nodes (all, or one).
    pub(super) fn tell(&mut self, to: Option<String>, msg: Bus) {
        if let Some(c) = self.cluster.as_mut() {
            c.outgoing.push((to, msg));
        }
    }

    /// What to send to the other nodes since the last call.
    pub fn take_outgoing(&mut self) -> Vec<(Option<String>, Bus)> {
        self.cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.outgoing))
            .unwrap_or_default()
    }

    /// A local login of `user` at `now`: the other nodes hear of it (and
    /// end any older session of theirs).
    pub(super) fn announce_login(&mut self, user: &str, now: Clock) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let since = now.wall_ms;
        c.remote.remove(user);
        c.since.insert(user.to_string(), since);
        c.outgoing.push((
            None,
            Bus::Online {
                user: user.to_string(),
                since,
            },
        ));
    }

    /// `user`'s local session ended at `at` (Unix seconds).
    pub(super) fn announce_logout(&mut self, user: &str, at: i64) {
        if let Some(c) = self.cluster.as_mut() {
            c.since.remove(user);
            c.outgoing.push((
                None,
                Bus::Offline {
                    user: user.to_string(),
                    at,
                },
            ));
        }
    }

    /// In a cluster, the welcome waits for the inbox count from the
    /// database (messages for this user may have been stored by any node).
    pub(super) fn welcome_step(&mut self, user: String) -> Step {
        if !self.is_clustered() {
            return Step::Reply(welcome_line(&user, self.unread_of(&user)));
        }
        if let Some(a) = self.accounts.get_mut(user.as_str()) {
            // Rows another node offered and never wrote out are below
            // anything this node handed out: start from the beginning.
            a.read.inbox_sent = 0;
        }
        Step::Wait(Job {
            cont: Cont::Welcome { user: user.clone() },
            work: Work::Store(StoreRequest::CountInbox { user }),
        })
    }

    /// The inbox count is back: the welcome can go.
    pub(super) fn welcomed(&mut self, user: String, result: WorkResult) -> Step {
        match result {
            WorkResult::Store(Ok(StoreOutput::Count(n))) => {
                if let Some(a) = self.accounts.get_mut(user.as_str()) {
                    a.unread = u32::try_from(n).unwrap_or(u32::MAX);
                }
            }
            other => log::warn!("login of {user}: inbox not counted: {other:?}"),
        }
        Step::Reply(welcome_line(&user, self.unread_of(&user)))
    }

    fn unread_of(&self, user: &str) -> u32 {
        self.accounts.get(user).map_or(0, |a| a.unread)
    }

    /// Lines of these message ids left this node (cluster mode).
    pub(super) fn written_ids(&mut self, ids: &[i64]) {
        if let Some(c) = self.cluster.as_mut() {
            c.read.extend_from_slice(ids);
        }
    }

    /// The write marking read what left this node since the last call.
    pub fn take_read(&mut self) -> Option<StoreRequest> {
        let c = self.cluster.as_mut()?;
        if c.read.is_empty() {
            return None;
        }
        Some(StoreRequest::MarkRead {
            ids: std::mem::take(&mut c.read),
        })
    }

    /// Applies what the link to the other nodes brought; returns the
    /// reload of the accounts when this node may have missed changes.
    pub fn on_cluster(&mut self, inbound: Inbound, now: Clock, fx: &mut Effects) -> Option<Job> {
        let me = self.cluster.as_ref()?.node.clone();
        match inbound {
            Inbound::Connected | Inbound::Subscribed => {
                let reload = matches!(inbound, Inbound::Subscribed)
                    && self
                        .cluster
                        .as_mut()
                        .is_some_and(|c| std::mem::take(&mut c.cut_off));
                let users = self.local_presence();
                self.tell(None, Bus::Presence { users });
                self.tell(None, Bus::Sync { reload });
                if reload {
                    return Some(reload_accounts());
                }
            }
            Inbound::Lost => {
                if let Some(c) = self.cluster.as_mut() {
                    c.cut_off = true;
                    let gone: Vec<String> = std::mem::take(&mut c.remote).into_keys().collect();
                    self.seen_leaving(&gone, now.wall);
                }
            }
            Inbound::NodeUp(node) => {
                self.tell(Some(node), Bus::Sync { reload: false });
            }
            Inbound::NodeDown(node) => {
                if let Some(c) = self.cluster.as_mut() {
                    let gone = c.drop_node(&node);
                    self.seen_leaving(&gone, now.wall);
                }
            }
            Inbound::Message(env) => {
                if env.from == me {
                    return None;
                }
                return self.on_bus(env.from, env.msg, now, fx);
            }
        }
        None
    }

    /// The accounts as the database has them now are back: whatever was
    /// announced while this node could not hear (or be heard) is applied.
    /// Accounts newer than the snapshot's newest stay (registered here
    /// since it was read); others missing from it were deleted.
    pub(super) fn reloaded(&mut self, result: WorkResult, fx: &mut Effects) -> Step {
        let WorkResult::Store(Ok(StoreOutput::Accounts(snap))) = result else {
            log::error!("cluster: accounts not reloaded after the outage: {result:?}");
            return Step::Done;
        };
        let newest = snap.users.values().map(|u| u.slot).max().unwrap_or(0);
        let gone: Vec<String> = self
            .accounts
            .iter()
            .filter(|(name, a)| a.read.slot <= newest && !snap.users.contains_key(&name[..]))
            .map(|(name, _)| name.to_string())
            .collect();
        for name in gone {
            let _ = self.delete_here(&name, fx);
        }
        for (name, row) in &snap.users {
            match self.accounts.get_mut(name.as_str()) {
                Some(a) => {
                    a.banned = row.banned;
                    a.last_seen = a.last_seen.max(row.last_seen);
                    if *a.hash != *row.hash {
                        self.set_hash(name, row.hash.clone());
                    }
                }
                None => {
                    self.hash_changed(None, &row.hash);
                    let mut a = Account::new(row.hash.clone(), row.slot);
                    a.banned = row.banned;
                    a.last_seen = row.last_seen;
                    self.accounts.insert(Name::from(name.as_str()), a);
                }
            }
            if row.banned {
                if let Some(&session) = self.online.get(name.as_str()) {
                    fx.closes.push((session, ByeReason::Banned));
                }
            }
        }
        for (name, a) in self.accounts.iter_mut() {
            a.unread = snap.unread.get(&name[..]).copied().unwrap_or(0);
        }
        // Blocks: exactly the database's.
        let blocks: Vec<(String, String)> = self
            .accounts
            .iter()
            .flat_map(|(u, a)| a.blocks.iter().map(move |o| (u.to_string(), o.clone())))
            .collect();
        for (user, other) in blocks {
            self.apply_block(&user, &other, false);
        }
        for (user, other) in &snap.blocks {
            self.apply_block(user, other, true);
        }
        log::info!(
            "cluster: accounts reloaded after the outage ({} accounts)",
            self.accounts.len()
        );
        Step::Done
    }

    fn local_presence(&self) -> Vec<(String, i64)> {
        let Some(c) = self.cluster.as_ref() else {
            return Vec::new();
        };
        self.online
            .keys()
            .map(|u| (u.to_string(), c.since.get(&u[..]).copied().unwrap_or(0)))
            .collect()
    }

    fn seen_leaving(&mut self, users: &[String], at: i64) {
        for u in users {
            if let Some(a) = self.accounts.get_mut(u.as_str()) {
                a.last_seen = Some(at);
            }
        }
    }

    /// `user` is online on `node` since `since`: the newer of that and a
    /// session here wins.
    fn remote_login(&mut self, node: &str, user: String, since: i64, fx: &mut Effects) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if let Some(&session) = self.online.get(user.as_str()) {
            let mine = c.since.get(&user).copied().unwrap_or(0);
            if (since, node) < (mine, c.node.as_str()) {
                // Ours is newer: that node ends its own when it hears of ours.
                return;
            }
            fx.closes.push((session, ByeReason::Replaced));
        }
        c.remote.insert(user, (Rc::from(node), since));
    }

    fn on_bus(&mut self, from: String, msg: Bus, now: Clock, fx: &mut Effects) -> Option<Job> {
        // Redis is trusted as the database is, but what reaches a socket
        // or the chat state is checked all the same: a broken or foreign
        // publisher must not break a client's framing or invent names.
        if let Some(bad) = malformed(&msg) {
            log::warn!("cluster: dropped a malformed message from node {from}: {bad}");
            return None;
        }
        match msg {
            Bus::Heartbeat => {}
            Bus::Online { user, since } => self.remote_login(&from, user, since, fx),
            Bus::Offline { user, at } => {
                if let Some(c) = self.cluster.as_mut() {
                    if c.remote.get(&user).is_some_and(|(n, _)| **n == *from) {
                        c.remote.remove(&user);
                    }
                }
                if let Some(a) = self.accounts.get_mut(user.as_str()) {
                    a.last_seen = Some(at);
                }
            }
            Bus::Presence { users } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.drop_node(&from);
                }
                for (user, since) in users {
                    self.remote_login(&from, user, since, fx);
                }
            }
            Bus::Sync { reload } => {
                let users = self.local_presence();
                self.tell(Some(from), Bus::Presence { users });
                if reload {
                    return Some(reload_accounts());
                }
            }
            Bus::Deliver { user, id, line } => {
                // Not here any more: the row is in the inbox already.
                if let Some(&session) = self.online.get(user.as_str()) {
                    fx.deliveries.push(Delivery {
                        to: session,
                        line: Rc::from(line.into_bytes()),
                        stored: Some(Box::new(StoredMessage {
                            recipient: user,
                            id,
                        })),
                    });
                }
            }
            Bus::Broadcast {
                from: sender,
                ts,
                text,
            } => {
                let line: Rc<[u8]> = protocol::chat_event("broadcast", &sender, ts, &text).into();
                let n = self.fan_out(&sender, &line, fx);
                self.counters.broadcast_deliveries += n as u64;
            }
            Bus::Account { user, id, hash } => {
                if !self.accounts.contains_key(user.as_str()) {
                    self.hash_changed(None, &hash);
                    self.accounts
                        .insert(Name::from(user), Account::new(hash, id));
                }
            }
            Bus::Hash { user, hash } => self.set_hash(&user, hash),
            Bus::Block { user, other, on } => {
                self.apply_block(&user, &other, on);
            }
            Bus::Banned { user, on } => {
                let _ = self.ban_here(&user, on, fx);
            }
            Bus::Deleted { user } => {
                let _ = self.delete_here(&user, fx);
            }
            Bus::LoginFailed { user, ip } => self.remote_failure(user, ip, now, fx),
            Bus::LoginOk { user, ip } => {
                self.forget_failures(&user, ip);
                self.trust(&user, ip);
            }
        }
        None
    }
}

/// Why `msg` cannot be applied, if it cannot: a name that is not a
/// canonical username, or a line that is not one well-formed event line.
fn malformed(msg: &Bus) -> Option<&'static str> {
    let name = |u: &str| protocol::canonical_username(u).as_deref() == Some(u);
    let names_ok = match msg {
        Bus::Online { user, .. }
        | Bus::Offline { user, .. }
        | Bus::Deliver { user, .. }
        | Bus::Account { user, .. }
        | Bus::Hash { user, .. }
        | Bus::Banned { user, .. }
        | Bus::Deleted { user }
        | Bus::LoginOk { user, .. } => name(user),
        Bus::Block { user, other, .. } => name(user) && name(other),
        Bus::Broadcast { from, .. } => name(from),
        Bus::Presence { users } => users.iter().all(|(u, _)| name(u)),
        // A failed login may name anything (it is counted as typed).
        Bus::LoginFailed { .. } | Bus::Heartbeat | Bus::Sync { .. } => true,
    };
    if !names_ok {
        return Some("not a username");
    }
    if let Bus::Deliver { line, .. } = msg {
        let body = line.strip_suffix('\n').unwrap_or("\n");
        if !body.starts_with("* ") || protocol::has_forbidden_control(body) {
            return Some("not one event line");
        }
    }
    None
}

/// Reads every account again (see [`Chat::reloaded`]).
fn reload_accounts() -> Job {
    Job {
        cont: Cont::Reloaded,
        work: Work::Store(StoreRequest::LoadAccounts),
    }
}

/// `+ welcome <user> (<n> unread messages)`.
pub(super) fn welcome_line(user: &str, unread: u32) -> Vec<u8> {
    let plural = if unread == 1 { "" } else { "s" };
    ok(&format!("welcome {user} ({unread} unread message{plural})"))
}
