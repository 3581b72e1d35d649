//! [`Chat`]: the in-memory chat state (accounts, who is online where,
//! registrations in flight, lockout records) and the two entry points the
//! connection layer calls: [`Chat::execute`] for a parsed command and
//! [`Chat::complete`] for a finished job. Both only dispatch; the commands
//! themselves live in `login.rs`, `direct.rs` and `reads.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::config::{Config, HashCost, Registration};
use crate::protocol::{ok, ByeReason};
use crate::store::StoreRequest;

use super::budget::{Budgets, Trusted};
use super::job::{write_failed, Cont, Delivery, Effects, Step, WorkResult};
use super::login::Failures;
use super::parse::{Command, MemberCommand};
use super::read_marks::ReadState;
use super::{Caller, Clock, LockKey, Name, SessionRef};
use crate::store::Marks;

/// What a registered user carries in memory.
#[derive(Clone, Debug)]
pub struct Account {
    /// PHC string of the password hash (exact-sized: every account is in
    /// memory).
    pub hash: Box<str>,
    /// Messages waiting in the inbox.
    pub unread: u32,
    /// Unix time the user's last session ended.
    pub last_seen: Option<i64>,
    /// Users whose messages this user refuses.
    pub blocks: Blocks,
    /// Which of its messages have left natterd.
    pub read: ReadState,
    /// Banned by the operator: logins are refused.
    pub banned: bool,
    /// Where its owner logged in from: exempt from its guessing budget.
    pub trusted: Trusted,
}

impl Account {
    /// A new account with nothing unread; `slot` is its rowid.
    pub fn new(hash: String, slot: u64) -> Self {
        Account {
            hash: hash.into_boxed_str(),
            unread: 0,
            last_seen: None,
            blocks: Blocks::default(),
            read: ReadState::new(slot, Marks::default()),
            banned: false,
            trusted: Trusted::default(),
        }
    }
}

/// The users one account blocks. Most block nobody, and every account is
/// in memory: boxed, an empty set costs one word instead of a `HashSet`'s
/// six in every account entry (issue 16).
#[allow(clippy::box_collection)] // the box is the point: one word when unused
#[derive(Clone, Debug, Default)]
pub struct Blocks(Option<Box<HashSet<String>>>);

impl Blocks {
    /// Whether `user` is blocked.
    pub fn contains(&self, user: &str) -> bool {
        self.0.as_ref().is_some_and(|set| set.contains(user))
    }

    /// Blocks `user`; false if it already was.
    pub fn insert(&mut self, user: String) -> bool {
        self.0.get_or_insert_default().insert(user)
    }

    /// Unblocks `user`; false if it was not blocked. The last one gone
    /// frees the set.
    pub fn remove(&mut self, user: &str) -> bool {
        let Some(set) = self.0.as_mut() else {
            return false;
        };
        let removed = set.remove(user);
        if set.is_empty() {
            self.0 = None;
        }
        removed
    }

    /// The blocked users, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.0.iter().flat_map(|set| set.iter())
    }
}

/// What the chat did so far: plain numbers, read by `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Logins that succeeded.
    pub logins_ok: u64,
    /// Wrong name or password.
    pub logins_failed: u64,
    /// Refused by a lockout or the guessing budget.
    pub logins_locked: u64,
    /// Refused because the hashing queue was full.
    pub logins_busy: u64,
    /// Right password, banned account.
    pub logins_banned: u64,
    /// Accounts registered.
    pub registrations: u64,
    /// Direct messages pushed to an online recipient.
    pub delivered: u64,
    /// Direct messages kept in an inbox.
    pub stored: u64,
    /// Broadcast lines queued to recipients.
    pub broadcast_deliveries: u64,
}

/// Chat settings taken from [`Config`].
#[derive(Clone, Debug)]
pub struct ChatSettings {
    /// Failed logins (per user and address) before a lockout.
    pub max_login_failures: u32,
    /// How long a lockout lasts, and how long failures are remembered.
    pub block_time: Duration,
    /// Whether `register` is accepted.
    pub registration: Registration,
    /// Cost of new password hashes.
    pub hash_cost: HashCost,
    /// Unread messages an inbox may hold (0: no limit).
    pub max_inbox: u32,
    /// IPv6 prefix length that makes one address group for lockouts.
    pub ipv6_prefix: u8,
    /// Account-wide guessing budget per hour (0: none); see `budget.rs`.
    pub account_guesses_per_hour: u32,
}

impl From<&Config> for ChatSettings {
    fn from(c: &Config) -> Self {
        ChatSettings {
            max_login_failures: c.max_login_failures.max(1),
            block_time: c.block_time(),
            registration: c.registration,
            hash_cost: c.hash_cost,
            max_inbox: c.max_inbox,
            ipv6_prefix: c.ipv6_prefix,
            account_guesses_per_hour: c.account_guesses_per_hour,
        }
    }
}

/// The chat state every command needs, owned by the loop thread.
#[derive(Debug)]
pub struct Chat {
    pub(super) settings: ChatSettings,
    /// Registered users by canonical name.
    pub(super) accounts: HashMap<Name, Account>,
    /// Who is online and where; ordered so `whoelse` needs no sort.
    pub(super) online: BTreeMap<Name, SessionRef>,
    /// Names with a registration in flight, so two cannot race for one name.
    pub(super) registering: HashSet<String>,
    /// Failed-login records.
    pub(super) failures: HashMap<LockKey, Failures>,
    /// Verified when the user is unknown, so a miss costs what a wrong
    /// password costs and timing does not reveal which names exist: the
    /// stand-in (see [`crate::auth::stand_in`]) of the parameters most
    /// stored hashes use.
    pub(super) dummy_hash: String,
    /// What happened so far, for `/metrics` and `natterctl stats`.
    pub counters: Counters,
    /// Users whose recorded read marks the database has not had yet.
    pub(super) marks_dirty: Vec<String>,
    /// Whether an `Advance` is being committed (one at a time: the next
    /// carries everything that changed meanwhile).
    pub(super) advance_in_flight: bool,
    /// The stand-in of a hash at the current `--hash-cost`: stored hashes
    /// with other parameters are re-hashed at the next successful login.
    pub(super) current_params: String,
    /// Stored hashes by their parameters (named by their stand-in).
    pub(super) hash_params: HashMap<String, usize>,
    /// Guessing budgets per account across addresses.
    pub(super) budgets: Budgets,
    /// Who blocks each user (the reverse of every `Account::blocks`), so a
    /// broadcast looks its sender up once instead of looking up every
    /// recipient's account: most senders are blocked by nobody, and then a
    /// recipient costs no hashing at all.
    pub(super) blocked_by: HashMap<String, HashSet<String>>,
    /// The emptied delivery list of the last fan-out, reused by the next
    /// so a broadcast allocates nothing in proportion to its audience. As
    /// large as the largest audience so far (40 bytes a recipient).
    pub(super) spare_deliveries: Vec<Delivery>,
    /// The other nodes, in cluster mode (see `cluster.rs`).
    pub(super) cluster: Option<super::cluster::ClusterState>,
}

impl Chat {
    /// Chat state over accounts loaded from the store. `current_hash` is
    /// any hash made at the current cost (its parameters are what matter).
    pub fn new(
        settings: ChatSettings,
        accounts: HashMap<String, Account>,
        current_hash: String,
    ) -> Self {
        let current_params = crate::auth::stand_in(&current_hash).unwrap_or(current_hash);
        let budgets = Budgets::new(settings.account_guesses_per_hour);
        let mut blocked_by: HashMap<String, HashSet<String>> = HashMap::new();
        for (blocker, account) in &accounts {
            for blocked in account.blocks.iter() {
                blocked_by
                    .entry(blocked.clone())
                    .or_default()
                    .insert(blocker.clone());
            }
        }
        let accounts = accounts
            .into_iter()
            .map(|(name, account)| (Name::from(name), account))
            .collect();
        let mut chat = Chat {
            blocked_by,
            spare_deliveries: Vec::new(),
            cluster: None,
            budgets,
            settings,
            accounts,
            online: BTreeMap::new(),
            registering: HashSet::new(),
            failures: HashMap::new(),
            dummy_hash: current_params.clone(),
            current_params,
            hash_params: HashMap::new(),
            marks_dirty: Vec::new(),
            advance_in_flight: false,
            counters: Counters::default(),
        };
        chat.count_stored_hashes();
        chat
    }

    /// Takes back a delivery list the reactor has emptied (see
    /// `spare_deliveries`).
    pub fn give_back(&mut self, mut deliveries: Vec<Delivery>) {
        deliveries.clear();
        if deliveries.capacity() > self.spare_deliveries.capacity() {
            self.spare_deliveries = deliveries;
        }
    }

    /// Number of registered users.
    pub fn user_count(&self) -> usize {
        self.accounts.len()
    }

    /// Online sessions, for shutdown and tests.
    pub fn online_count(&self) -> usize {
        self.online.len()
    }

    /// Runs one parsed command for `caller`. [`super::parse`] has already
    /// checked that the caller may give it.
    pub fn execute(&mut self, caller: &Caller, cmd: Command, now: Clock, fx: &mut Effects) -> Step {
        match cmd {
            Command::Help => Step::Reply(super::reads::help_reply(caller.user.is_some())),
            Command::Quit => {
                fx.quit = true;
                Step::Reply(ok("bye"))
            }
            Command::Login { user, password } => self.login(caller, user, password, now),
            Command::Register { user, password } => self.register(user, password),
            Command::Member { me, cmd } => self.member(caller, me, cmd, now, fx),
        }
    }

    fn member(
        &mut self,
        caller: &Caller,
        me: String,
        cmd: MemberCommand,
        now: Clock,
        fx: &mut Effects,
    ) -> Step {
        match cmd {
            MemberCommand::Ping => Step::Reply(ok("pong")),
            MemberCommand::Whoelse => self.whoelse(me),
            MemberCommand::Wholast { minutes } => self.wholast(me, minutes, now),
            MemberCommand::Send { to, text } => self.send(me, to, text, now),
            MemberCommand::BroadcastTo { users, text } => self.send_to_list(me, users, text, now),
            MemberCommand::Broadcast { text } => Step::Reply(self.broadcast(&me, &text, now, fx)),
            MemberCommand::Inbox => self.inbox(me),
            MemberCommand::History { with, count } => self.history(me, with, count),
            MemberCommand::Block { user } => self.block(me, user, true),
            MemberCommand::Unblock { user } => self.block(me, user, false),
            MemberCommand::Blocked => Step::Reply(self.blocked(&me)),
            MemberCommand::Passwd { old, new } => self.passwd(caller, me, old, new, now),
        }
    }

    /// Finishes a job. `caller` is `None` when its session has gone; the
    /// state change still happens (a committed message still reaches its
    /// recipient, a written account still exists).
    pub fn complete(
        &mut self,
        caller: Option<&Caller>,
        cont: Cont,
        result: WorkResult,
        now: Clock,
        fx: &mut Effects,
    ) -> Step {
        match cont {
            Cont::Login {
                user,
                known,
                ip,
                charged,
            } => self.finish_login(caller, user, known, ip, charged, result, now, fx),
            Cont::RegisterHashed { user } => self.register_hashed(user, result, now),
            Cont::PasswdChecked { user, ip, new } => {
                self.passwd_checked(user, ip, new, result, now, fx)
            }
            Cont::PasswdHashed { user } => self.passwd_hashed(user, result),
            Cont::PasswdStored { user, hash } => self.passwd_stored(caller, user, hash, result, fx),
            Cont::RegisterStored { user, hash } => {
                self.register_stored(caller, user, hash, result, now, fx)
            }
            Cont::Welcome { user } => self.welcomed(user, result),
            Cont::Reloaded => self.reloaded(result, fx),
            Cont::Direct {
                kind,
                from,
                ts,
                text,
                targets,
            } => self.direct_committed(kind, from, ts, text, targets, result, fx),
            Cont::Inbox { user } => self.inbox_read(caller, user, result),
            Cont::History(cursor) => self.history_read(cursor, result),
            Cont::Who(cursor) => self.who_page(cursor),
            Cont::Ack(reply) => match result {
                WorkResult::Store(Ok(_)) => Step::Reply(reply),
                _ => Step::Reply(write_failed(&result, "change not saved; try again")),
            },
            Cont::Returned { users, reply } => self.returned(users, reply, result, fx),
            Cont::Advanced => self.advanced(result),
            Cont::Block {
                user,
                other,
                on,
                had,
            } => self.block_written(user, other, on, had, result),
            // The reactor answers admin work itself; nothing for the chat.
            Cont::Background | Cont::Admin { .. } | Cont::Operator { .. } => Step::Done,
        }
    }

    /// Logs `caller` in as `user`, taking over any older session.
    pub(super) fn enter(&mut self, caller: &Caller, user: &str, now: Clock, fx: &mut Effects) {
        self.announce_login(user, now);
        let name = self.name(user);
        if let Some(old) = self.online.insert(name.clone(), caller.session) {
            if old != caller.session {
                fx.closes.push((old, ByeReason::Replaced));
            }
        }
        fx.logged_in = Some(name);
    }

    /// `user` logged in from `ip`: that address group is exempt from the
    /// account's guessing budget from now on.
    pub(super) fn trust(&mut self, user: &str, ip: std::net::IpAddr) {
        let group = crate::addr::AddrGroup::of(ip, self.settings.ipv6_prefix);
        if let Some(account) = self.accounts.get_mut(user) {
            account.trusted.add(group);
        }
    }

    /// The account's copy of `user`, shared; a new one for a name that is
    /// not an account here (yet).
    pub(super) fn name(&self, user: &str) -> Name {
        self.accounts
            .get_key_value(user)
            .map_or_else(|| Name::from(user), |(name, _)| Name::clone(name))
    }

    pub(super) fn bump_unread(&mut self, user: &str) {
        if let Some(a) = self.accounts.get_mut(user) {
            a.unread = a.unread.saturating_add(1);
        }
    }

    /// The session stopped being open: it is no longer online, and the
    /// last-seen time moves to now. Returns the write to make, if any. What
    /// it never wrote out goes to [`Chat::left_over`] at the same moment.
    pub fn disconnect(&mut self, caller: &Caller, now: Clock) -> Option<StoreRequest> {
        let user = caller.user.as_ref()?;
        if self.online.get(user) != Some(&caller.session) {
            // Replaced by a newer session: the user is still online.
            return None;
        }
        self.online.remove(user);
        if let Some(a) = self.accounts.get_mut(user) {
            a.last_seen = Some(now.wall);
        }
        self.announce_logout(user, now.wall);
        Some(StoreRequest::SetLastSeen {
            user: user.to_string(),
            at: now.wall,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Blocks;

    #[test]
    fn blocks_hold_no_set_once_the_last_is_lifted() {
        let mut blocks = Blocks::default();
        assert!(!blocks.contains("bob") && blocks.0.is_none());
        assert!(blocks.insert("bob".into()));
        assert!(!blocks.insert("bob".into()));
        assert!(blocks.contains("bob"));
        assert_eq!(blocks.iter().collect::<Vec<_>>(), ["bob"]);
        assert!(blocks.remove("bob"));
        assert!(!blocks.remove("bob"));
        assert!(
            blocks.0.is_none(),
            "an account that blocks nobody keeps no set"
        );
    }
}
