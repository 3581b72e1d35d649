//! Command lines and the chat state they act on.
//!
//! `parse` turns one line into a [`Command`]; [`Chat`] applies commands to
//! the in-memory chat state (accounts, who is online, last-seen times, block
//! lists, lockout counters) and answers with a [`Step`]: either the finished
//! reply, or a [`Job`] for the store or the password hasher whose result comes
//! back through [`Chat::complete`]. Side effects on other sessions (pushed
//! messages, takeovers) and background writes are collected in [`Effects`].
//!
//! Nothing here touches a socket, a file or a thread, and time is passed in,
//! so all of it runs in unit tests and fuzzers exactly as in the server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::auth::{HashOutcome, HashWork};
use crate::config::{Config, HashCost, Registration};
use crate::protocol::{
    self, canonical_username, err, is_blank, ok, relayable, ByeReason, ErrorCode, Reply,
    MAX_PASSWORD_LEN, MIN_PASSWORD_LEN,
};
use crate::store::{MessageRow, NewMessage, StoreOutput, StoreRequest};

/// Longest `wholast` window: one week, in minutes.
pub const MAX_WHOLAST_MINUTES: u32 = 10_080;
/// `history` count when none is given.
pub const DEFAULT_HISTORY: u32 = 20;
/// Largest `history` count.
pub const MAX_HISTORY: u32 = 1000;
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

/// Who is speaking: the part of a session the chat logic reads and changes.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The session.
    pub session: SessionRef,
    /// Peer address (lockouts are per user and address).
    pub ip: IpAddr,
    /// The logged-in user, if any.
    pub user: Option<String>,
}

/// Wall and monotonic time, read once per loop pass and passed in.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// For deadlines and lockouts.
    pub mono: Instant,
    /// Unix seconds, for timestamps shown to users and stored.
    pub wall: i64,
}

/// One parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `login <user> <password>`
    Login { user: String, password: String },
    /// `register <user> <password>`
    Register { user: String, password: String },
    /// `help`
    Help,
    /// `quit` or `logout`
    Quit,
    /// `whoelse`
    Whoelse,
    /// `wholast <minutes>`
    Wholast { minutes: u32 },
    /// `send <user> <text>`
    Send { to: String, text: String },
    /// `broadcast [message] <text>`
    Broadcast { text: String },
    /// `broadcast user <u1> ... message <text>`
    BroadcastTo { users: Vec<String>, text: String },
    /// `inbox`
    Inbox,
    /// `history [<user>] [<count>]`
    History { with: Option<String>, count: u32 },
    /// `block <user>`
    Block { user: String },
    /// `unblock <user>`
    Unblock { user: String },
    /// `blocked`
    Blocked,
    /// `ping`
    Ping,
}

/// Command words and their usage, shown by `help`.
const USAGE: &[(&str, &str)] = &[
    ("login", "login <user> <password>"),
    ("register", "register <user> <password>"),
    ("whoelse", "whoelse"),
    ("wholast", "wholast <minutes>"),
    ("send", "send <user> <text>"),
    ("broadcast", "broadcast <text>"),
    (
        "broadcast",
        "broadcast user <user> [<user> ...] message <text>",
    ),
    ("inbox", "inbox"),
    ("history", "history [<user>] [<count>]"),
    ("block", "block <user>"),
    ("unblock", "unblock <user>"),
    ("blocked", "blocked"),
    ("ping", "ping"),
    ("help", "help"),
    ("logout", "logout"),
    ("quit", "quit"),
];

/// Words that may be used before login.
const BEFORE_LOGIN: &[&str] = &["login", "register", "help", "quit"];

/// Splits off the first blank-separated word; returns it and the rest with
/// leading blanks removed.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(is_blank);
    match s.find(is_blank) {
        Some(i) => (&s[..i], s[i..].trim_start_matches(is_blank)),
        None => (s, ""),
    }
}

/// Parses a line that has already passed the UTF-8 and control-character
/// checks. `logged_in` decides between `NOAUTH`/`ALREADY` and the command.
/// On failure the complete error reply is returned.
pub fn parse(line: &str, logged_in: bool) -> Result<Command, Vec<u8>> {
    let (word, rest) = split_word(line);
    let word = word.to_ascii_lowercase();
    if !USAGE.iter().any(|(w, _)| *w == word) {
        let shown: String = word.chars().take(32).collect();
        return Err(err(
            ErrorCode::BadCmd,
            &format!("unknown command '{shown}' (try help)"),
        ));
    }
    if !logged_in && !BEFORE_LOGIN.contains(&word.as_str()) {
        return Err(err(
            ErrorCode::NoAuth,
            "log in first: login <user> <password>",
        ));
    }
    if logged_in && (word == "login" || word == "register") {
        return Err(err(ErrorCode::Already, "already logged in"));
    }
    let usage_err = || {
        let usage: Vec<&str> = USAGE
            .iter()
            .filter(|(w, _)| *w == word)
            .map(|(_, u)| *u)
            .collect();
        err(ErrorCode::BadArg, &format!("usage: {}", usage.join(" | ")))
    };
    let no_args = |cmd: Command| {
        if rest.is_empty() {
            Ok(cmd)
        } else {
            Err(usage_err())
        }
    };
    match word.as_str() {
        "login" | "register" => {
            let (user, password) = split_word(rest);
            if user.is_empty() || password.is_empty() {
                return Err(usage_err());
            }
            let Some(user) = canonical_username(user) else {
                return Err(err(ErrorCode::BadArg, "not a valid username"));
            };
            let password = password.to_string();
            if word == "login" {
                Ok(Command::Login { user, password })
            } else {
                Ok(Command::Register { user, password })
            }
        }
        "help" => Ok(Command::Help),
        "quit" | "logout" => Ok(Command::Quit),
        "whoelse" => no_args(Command::Whoelse),
        "blocked" => no_args(Command::Blocked),
        "inbox" => no_args(Command::Inbox),
        "ping" => no_args(Command::Ping),
        "wholast" => {
            let (n, extra) = split_word(rest);
            match n.parse::<u32>() {
                Ok(minutes) if extra.is_empty() && (1..=MAX_WHOLAST_MINUTES).contains(&minutes) => {
                    Ok(Command::Wholast { minutes })
                }
                _ => Err(err(
                    ErrorCode::BadArg,
                    &format!("usage: wholast <minutes>, minutes from 1 to {MAX_WHOLAST_MINUTES}"),
                )),
            }
        }
        "send" => {
            let (to, text) = split_word(rest);
            if to.is_empty() || text.is_empty() {
                return Err(usage_err());
            }
            let to = username_arg(to)?;
            Ok(Command::Send {
                to,
                text: relayable(text),
            })
        }
        "broadcast" => match parse_broadcast(rest) {
            Some(Ok(cmd)) => Ok(cmd),
            Some(Err(reply)) => Err(reply),
            None => Err(usage_err()),
        },
        "history" => parse_history(rest),
        "block" | "unblock" => {
            let (user, extra) = split_word(rest);
            if user.is_empty() || !extra.is_empty() {
                return Err(usage_err());
            }
            let user = username_arg(user)?;
            if word == "block" {
                Ok(Command::Block { user })
            } else {
                Ok(Command::Unblock { user })
            }
        }
        _ => Err(usage_err()),
    }
}

fn username_arg(raw: &str) -> Result<String, Vec<u8>> {
    canonical_username(raw).ok_or_else(|| err(ErrorCode::BadArg, "not a valid username"))
}

/// `broadcast <text>`, `broadcast message <text>` or
/// `broadcast user <u1> ... message <text>`; `None` means a usage error.
/// `None` means a usage error; `Some(Err)` a more specific one.
fn parse_broadcast(rest: &str) -> Option<Result<Command, Vec<u8>>> {
    let (first, after_first) = split_word(rest);
    match first.to_ascii_lowercase().as_str() {
        "" => None,
        "message" => (!after_first.is_empty()).then(|| {
            Ok(Command::Broadcast {
                text: relayable(after_first),
            })
        }),
        "user" => {
            let mut users = Vec::new();
            let mut remaining = after_first;
            loop {
                let (word, after) = split_word(remaining);
                if word.is_empty() {
                    return None;
                }
                if word.eq_ignore_ascii_case("message") {
                    if users.is_empty() || after.is_empty() {
                        return None;
                    }
                    return Some(Ok(Command::BroadcastTo {
                        users,
                        text: relayable(after),
                    }));
                }
                match username_arg(word) {
                    Ok(user) => users.push(user),
                    Err(reply) => return Some(Err(reply)),
                }
                remaining = after;
            }
        }
        _ => Some(Ok(Command::Broadcast {
            text: relayable(rest),
        })),
    }
}

fn parse_history(rest: &str) -> Result<Command, Vec<u8>> {
    let bad = || {
        err(
            ErrorCode::BadArg,
            &format!("usage: history [<user>] [<count>], count from 1 to {MAX_HISTORY}"),
        )
    };
    let (a, after_a) = split_word(rest);
    let (b, extra) = split_word(after_a);
    if !extra.is_empty() {
        return Err(bad());
    }
    let count_of = |s: &str| match s.parse::<u32>() {
        Ok(n) if (1..=MAX_HISTORY).contains(&n) => Ok(n),
        _ => Err(bad()),
    };
    let starts_with_digit = |s: &str| s.starts_with(|c: char| c.is_ascii_digit());
    match (a, b) {
        ("", _) => Ok(Command::History {
            with: None,
            count: DEFAULT_HISTORY,
        }),
        (n, "") if starts_with_digit(n) => Ok(Command::History {
            with: None,
            count: count_of(n)?,
        }),
        (user, n) => Ok(Command::History {
            with: Some(username_arg(user)?),
            count: if n.is_empty() {
                DEFAULT_HISTORY
            } else {
                count_of(n)?
            },
        }),
    }
}

/// What a registered user carries in memory.
#[derive(Clone, Debug)]
pub struct Account {
    /// PHC string of the password hash.
    pub hash: String,
    /// Messages waiting in the inbox.
    pub unread: u32,
    /// Unix time the user's last session ended.
    pub last_seen: Option<i64>,
    /// Users whose messages this user refuses.
    pub blocks: HashSet<String>,
}

/// Failed logins for one (user, address) pair.
#[derive(Clone, Debug)]
struct Failures {
    /// Consecutive failures.
    count: u32,
    /// Set once `count` reaches the limit.
    locked_until: Option<Instant>,
    /// When this record is forgotten: `block_time` after the last failure.
    forget_at: Instant,
}

/// Key of a lockout record.
pub type LockKey = (String, IpAddr);

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
}

impl DirectStatus {
    fn as_str(self) -> &'static str {
        match self {
            DirectStatus::Delivered => "delivered",
            DirectStatus::Stored => "stored",
            DirectStatus::Blocked => "blocked",
            DirectStatus::NoUser => "nouser",
        }
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
    },
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
    /// Unread messages read and marked read.
    Inbox { user: String },
    /// History rows read.
    History,
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
    /// A write nobody waits for (last-seen times); failures are only logged.
    Background,
}

impl Cont {
    /// Whether later lines of the session must wait for this job: their
    /// meaning depends on whether a login or register succeeds; and an
    /// `inbox` or `history` reply can be megabytes, so one at a time keeps
    /// what a pipelining client can make us hold to one such reply.
    pub fn is_barrier(&self) -> bool {
        matches!(
            self,
            Cont::Login { .. }
                | Cont::RegisterHashed { .. }
                | Cont::RegisterStored { .. }
                | Cont::Inbox { .. }
                | Cont::History
        )
    }
}

/// Work for a background thread.
#[derive(Debug)]
pub enum Work {
    /// For the store thread.
    Store(StoreRequest),
    /// For the hashing pool.
    Hash(HashWork),
}

/// The outcome of [`Work`].
#[derive(Debug)]
pub enum WorkResult {
    /// Store result; the error text is for the log.
    Store(Result<StoreOutput, String>),
    /// From the hashing pool.
    Hash(HashOutcome),
}

/// Background work plus what to do with its result.
#[derive(Debug)]
pub struct Job {
    /// What to do with the result; comes back with it.
    pub cont: Cont,
    /// What the background thread does.
    pub work: Work,
}

/// What a command (or a completed job) produced for its own session.
#[derive(Debug)]
pub enum Step {
    /// The complete reply.
    Reply(Vec<u8>),
    /// Waiting for background work; the reply comes from [`Chat::complete`].
    Wait(Job),
}

/// One event line for several sessions, formatted once.
#[derive(Debug)]
pub struct Push {
    /// Who gets it.
    pub to: Vec<SessionRef>,
    /// The complete `* ...` line.
    pub line: Vec<u8>,
    /// For a stored direct message: the recipient and message id per entry
    /// of `to`, so a push that cannot be made goes back to the inbox.
    pub stored: Option<Vec<(String, i64)>>,
}

/// Side effects beyond the caller's own reply, applied by the reactor.
#[derive(Debug, Default)]
pub struct Effects {
    /// Events for other sessions.
    pub pushes: Vec<Push>,
    /// Sessions to send `* bye <reason>` and close.
    pub closes: Vec<(SessionRef, ByeReason)>,
    /// Writes nobody waits for.
    pub background: Vec<StoreRequest>,
    /// Lockout records to look at again at the given time.
    pub lock_timers: Vec<(Instant, LockKey)>,
    /// The caller asked to leave (`quit`/`logout`).
    pub close_caller: bool,
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
}

impl From<&Config> for ChatSettings {
    fn from(c: &Config) -> Self {
        ChatSettings {
            max_login_failures: c.max_login_failures.max(1),
            block_time: c.block_time(),
            registration: c.registration,
            hash_cost: c.hash_cost,
        }
    }
}

/// The chat state every command needs, owned by the loop thread.
#[derive(Debug)]
pub struct Chat {
    settings: ChatSettings,
    /// Registered users by canonical name.
    accounts: HashMap<String, Account>,
    /// Who is online and where; ordered so `whoelse` needs no sort.
    online: BTreeMap<String, SessionRef>,
    /// Names with a registration in flight, so two cannot race for one name.
    registering: HashSet<String>,
    /// Failed-login records.
    failures: HashMap<LockKey, Failures>,
    /// Verified when the user is unknown, so a miss costs what a wrong
    /// password costs and timing does not reveal which names exist.
    dummy_hash: String,
}

impl Chat {
    /// Chat state over accounts loaded from the store.
    pub fn new(
        settings: ChatSettings,
        accounts: HashMap<String, Account>,
        dummy_hash: String,
    ) -> Self {
        Chat {
            settings,
            accounts,
            online: BTreeMap::new(),
            registering: HashSet::new(),
            failures: HashMap::new(),
            dummy_hash,
        }
    }

    /// Number of registered users.
    pub fn user_count(&self) -> usize {
        self.accounts.len()
    }

    /// Runs one parsed command for `caller`.
    pub fn execute(
        &mut self,
        caller: &mut Caller,
        cmd: Command,
        now: Clock,
        fx: &mut Effects,
    ) -> Step {
        let user = match (&caller.user, cmd) {
            (_, Command::Help) => return Step::Reply(help_reply(caller.user.is_some())),
            (_, Command::Quit) => {
                fx.close_caller = true;
                return Step::Reply(ok("bye"));
            }
            (None, Command::Login { user, password }) => {
                return self.login(caller, user, password, now)
            }
            (None, Command::Register { user, password }) => return self.register(user, password),
            (None, _) => return Step::Reply(err(ErrorCode::NoAuth, "log in first")),
            (Some(_), Command::Login { .. } | Command::Register { .. }) => {
                return Step::Reply(err(ErrorCode::Already, "already logged in"))
            }
            (Some(user), cmd) => (user.clone(), cmd),
        };
        let (me, cmd) = user;
        let reply = match cmd {
            Command::Ping => ok("pong"),
            Command::Whoelse => self.whoelse(&me),
            Command::Wholast { minutes } => self.wholast(&me, minutes, now),
            Command::Send { to, text } => {
                if to == me {
                    return Step::Reply(err(ErrorCode::BadArg, "you cannot send to yourself"));
                }
                match self.direct_status(&me, &to) {
                    DirectStatus::NoUser => err(ErrorCode::NoUser, &format!("no such user {to}")),
                    DirectStatus::Blocked => err(ErrorCode::Blocked, &format!("{to} blocks you")),
                    status => {
                        let targets = vec![DirectTarget { user: to, status }];
                        return self.direct(DirectKind::Send, me, text, targets, now);
                    }
                }
            }
            Command::BroadcastTo { users, text } => {
                let mut seen = HashSet::new();
                let targets: Vec<DirectTarget> = users
                    .into_iter()
                    .filter(|u| *u != me && seen.insert(u.clone()))
                    .map(|user| DirectTarget {
                        status: self.direct_status(&me, &user),
                        user,
                    })
                    .collect();
                return self.direct(DirectKind::List, me, text, targets, now);
            }
            Command::Broadcast { text } => self.broadcast(&me, &text, now, fx),
            Command::Inbox => {
                return Step::Wait(Job {
                    cont: Cont::Inbox { user: me.clone() },
                    work: Work::Store(StoreRequest::TakeInbox {
                        user: me,
                        limit: INBOX_PAGE,
                    }),
                })
            }
            Command::History { with, count } => {
                if let Some(other) = &with {
                    if !self.accounts.contains_key(other) {
                        return Step::Reply(err(
                            ErrorCode::NoUser,
                            &format!("no such user {other}"),
                        ));
                    }
                }
                return Step::Wait(Job {
                    cont: Cont::History,
                    work: Work::Store(StoreRequest::History {
                        user: me,
                        with,
                        limit: count,
                    }),
                });
            }
            Command::Block { user } | Command::Unblock { user }
                if !self.accounts.contains_key(&user) =>
            {
                err(ErrorCode::NoUser, &format!("no such user {user}"))
            }
            Command::Block { user } if user == me => {
                err(ErrorCode::BadArg, "you cannot block yourself")
            }
            Command::Block { user } => return self.set_block(me, user, true),
            Command::Unblock { user } => return self.set_block(me, user, false),
            Command::Blocked => {
                let mut names: Vec<&String> = self
                    .accounts
                    .get(&me)
                    .map(|a| a.blocks.iter().collect())
                    .unwrap_or_default();
                names.sort();
                let mut reply = Reply::new();
                for name in &names {
                    reply.data(name);
                }
                reply.ok(&format!("{} blocked", names.len()))
            }
            Command::Help | Command::Quit | Command::Login { .. } | Command::Register { .. } => {
                // Handled above; kept exhaustive so a new command cannot be forgotten.
                err(ErrorCode::BadCmd, "unexpected command")
            }
        };
        Step::Reply(reply)
    }

    fn login(&mut self, caller: &Caller, user: String, password: String, now: Clock) -> Step {
        if let Some(locked) = self.lock_message(&user, caller.ip, now) {
            return Step::Reply(locked);
        }
        let (hash, known) = match self.accounts.get(&user) {
            Some(a) => (a.hash.clone(), true),
            None => (self.dummy_hash.clone(), false),
        };
        Step::Wait(Job {
            cont: Cont::Login {
                user,
                known,
                ip: caller.ip,
            },
            work: Work::Hash(HashWork::Verify { hash, password }),
        })
    }

    /// `- LOCKED ...` if `user` is locked out from `ip` now; forgets a
    /// record whose time has passed.
    fn lock_message(&mut self, user: &str, ip: IpAddr, now: Clock) -> Option<Vec<u8>> {
        let key = (user.to_string(), ip);
        let f = self.failures.get(&key)?;
        if f.forget_at <= now.mono {
            self.failures.remove(&key);
            return None;
        }
        let until = f.locked_until.filter(|u| *u > now.mono)?;
        let secs = until.duration_since(now.mono).as_secs_f64().ceil() as u64;
        Some(err(
            ErrorCode::Locked,
            &format!("too many failed logins; try again in {secs} seconds"),
        ))
    }

    fn register(&mut self, user: String, password: String) -> Step {
        if self.settings.registration == Registration::Closed {
            return Step::Reply(err(
                ErrorCode::Closed,
                "registration is closed on this server",
            ));
        }
        if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.len()) {
            return Step::Reply(err(
                ErrorCode::BadArg,
                &format!("a password is {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} bytes"),
            ));
        }
        if self.accounts.contains_key(&user) || !self.registering.insert(user.clone()) {
            return Step::Reply(err(ErrorCode::Exists, &format!("{user} is taken")));
        }
        Step::Wait(Job {
            cont: Cont::RegisterHashed { user },
            work: Work::Hash(HashWork::Hash {
                password,
                cost: self.settings.hash_cost,
            }),
        })
    }

    /// Logs `caller` in as `user`, taking over any older session.
    fn enter(&mut self, caller: &mut Caller, user: &str, fx: &mut Effects) {
        if let Some(old) = self.online.insert(user.to_string(), caller.session) {
            if old != caller.session {
                fx.closes.push((old, ByeReason::Replaced));
            }
        }
        caller.user = Some(user.to_string());
    }

    fn whoelse(&self, me: &str) -> Vec<u8> {
        let mut reply = Reply::new();
        let mut n = 0;
        for name in self.online.keys().filter(|n| *n != me) {
            reply.data(name);
            n += 1;
        }
        reply.ok(&format!("{n} online"))
    }

    fn wholast(&self, me: &str, minutes: u32, now: Clock) -> Vec<u8> {
        let since = now.wall - i64::from(minutes) * 60;
        let mut rows: Vec<(&str, String)> = Vec::new();
        for (name, account) in &self.accounts {
            if name == me {
                continue;
            }
            if self.online.contains_key(name) {
                rows.push((name, "online".to_string()));
            } else if let Some(seen) = account.last_seen.filter(|t| *t >= since) {
                rows.push((name, protocol::format_time(seen)));
            }
        }
        rows.sort();
        let mut reply = Reply::new();
        for (name, when) in &rows {
            reply.data(&format!("{name} {when}"));
        }
        reply.ok(&format!("{} users", rows.len()))
    }

    /// Whether `from` may message `to`, and where it would go right now.
    fn direct_status(&self, from: &str, to: &str) -> DirectStatus {
        match self.accounts.get(to) {
            None => DirectStatus::NoUser,
            Some(a) if a.blocks.contains(from) => DirectStatus::Blocked,
            Some(_) if self.online.contains_key(to) => DirectStatus::Delivered,
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
        let messages: Vec<NewMessage> = targets
            .iter()
            .filter(|t| matches!(t.status, DirectStatus::Delivered | DirectStatus::Stored))
            .map(|t| NewMessage {
                ts: now.wall,
                sender: from.clone(),
                recipient: t.user.clone(),
                body: text.clone(),
                unread: t.status == DirectStatus::Stored,
            })
            .collect();
        let cont = Cont::Direct {
            kind,
            from,
            ts: now.wall,
            text,
            targets,
        };
        if messages.is_empty() {
            // Only possible for a list naming nobody reachable: nothing to commit.
            return Step::Reply(self.direct_reply(&cont));
        }
        Step::Wait(Job {
            cont,
            work: Work::Store(StoreRequest::InsertMessages(messages)),
        })
    }

    fn direct_reply(&self, cont: &Cont) -> Vec<u8> {
        let Cont::Direct { kind, targets, .. } = cont else {
            return err(ErrorCode::Internal, "internal error");
        };
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
                    if matches!(t.status, DirectStatus::Delivered | DirectStatus::Stored) {
                        sent += 1;
                    }
                }
                reply.ok(&format!("sent to {sent} of {}", targets.len()))
            }
        }
    }

    fn broadcast(&self, me: &str, text: &str, now: Clock, fx: &mut Effects) -> Vec<u8> {
        let to: Vec<SessionRef> = self
            .online
            .iter()
            .filter(|(name, _)| *name != me)
            .filter(|(name, _)| {
                !self
                    .accounts
                    .get(*name)
                    .is_some_and(|a| a.blocks.contains(me))
            })
            .map(|(_, s)| *s)
            .collect();
        let n = to.len();
        if n > 0 {
            fx.pushes.push(Push {
                to,
                line: protocol::chat_event("broadcast", me, now.wall, text),
                stored: None,
            });
        }
        ok(&format!("sent to {n}"))
    }

    /// Applies a block at once (so nothing slips through while it is being
    /// written) and undoes it if the write fails.
    fn set_block(&mut self, me: String, other: String, block: bool) -> Step {
        let had = self.apply_block(&me, &other, block);
        Step::Wait(Job {
            cont: Cont::Block {
                user: me.clone(),
                other: other.clone(),
                on: block,
                had,
            },
            work: Work::Store(StoreRequest::SetBlock {
                blocker: me,
                blocked: other,
                on: block,
            }),
        })
    }

    /// Sets whether `user` blocks `other`; returns whether it did before.
    fn apply_block(&mut self, user: &str, other: &str, on: bool) -> bool {
        let Some(account) = self.accounts.get_mut(user) else {
            return false;
        };
        let had = account.blocks.contains(other);
        if on {
            account.blocks.insert(other.to_string());
        } else {
            account.blocks.remove(other);
        }
        had
    }

    /// Finishes a job. `caller` is `None` when its session has gone; the
    /// state change still happens (a committed message still reaches its
    /// recipient, a written account still exists).
    pub fn complete(
        &mut self,
        caller: Option<&mut Caller>,
        cont: Cont,
        result: WorkResult,
        now: Clock,
        fx: &mut Effects,
    ) -> Step {
        match (cont, result) {
            (Cont::Login { user, known, ip }, WorkResult::Hash(HashOutcome::Verified(matched))) => {
                self.finish_login(caller, user, ip, known && matched, now, fx)
            }
            (Cont::RegisterHashed { user }, WorkResult::Hash(HashOutcome::Hashed(Ok(hash)))) => {
                Step::Wait(Job {
                    work: Work::Store(StoreRequest::CreateUser {
                        name: user.clone(),
                        hash: hash.clone(),
                        created: now.wall,
                    }),
                    cont: Cont::RegisterStored { user, hash },
                })
            }
            (Cont::RegisterStored { user, hash }, WorkResult::Store(Ok(_))) => {
                self.registering.remove(&user);
                self.accounts.insert(
                    user.clone(),
                    Account {
                        hash,
                        unread: 0,
                        last_seen: None,
                        blocks: HashSet::new(),
                    },
                );
                match caller {
                    Some(caller) if caller.user.is_none() => {
                        self.enter(caller, &user, fx);
                        Step::Reply(ok(&format!("registered {user}")))
                    }
                    _ => Step::Reply(Vec::new()),
                }
            }
            (Cont::RegisterHashed { user } | Cont::RegisterStored { user, .. }, _) => {
                self.registering.remove(&user);
                Step::Reply(err(
                    ErrorCode::Internal,
                    "could not register; try again later",
                ))
            }
            (
                Cont::Direct {
                    kind,
                    from,
                    ts,
                    text,
                    mut targets,
                },
                WorkResult::Store(Ok(StoreOutput::Ids(ids))),
            ) => {
                let event_kind = match kind {
                    DirectKind::Send => "msg",
                    DirectKind::List => "broadcast",
                };
                let mut pushed_to = Vec::new();
                let mut pushed_ids = Vec::new();
                let mut now_unread = Vec::new();
                let mut ids = ids.into_iter();
                for t in targets.iter_mut() {
                    match t.status {
                        DirectStatus::Delivered => {
                            let id = ids.next();
                            match (self.online.get(&t.user), id) {
                                (Some(session), Some(id)) => {
                                    pushed_to.push(*session);
                                    pushed_ids.push((t.user.clone(), id));
                                }
                                _ => {
                                    // Left between submit and commit: it was
                                    // stored as read, so the inbox must get it.
                                    t.status = DirectStatus::Stored;
                                    now_unread.extend(id);
                                    self.bump_unread(&t.user);
                                }
                            }
                        }
                        DirectStatus::Stored => {
                            ids.next();
                            self.bump_unread(&t.user);
                        }
                        DirectStatus::Blocked | DirectStatus::NoUser => {}
                    }
                }
                if !pushed_to.is_empty() {
                    let line = protocol::chat_event(event_kind, &from, ts, &text);
                    fx.pushes.push(Push {
                        to: pushed_to,
                        line,
                        stored: Some(pushed_ids),
                    });
                }
                let reply = self.direct_reply(&Cont::Direct {
                    kind,
                    from,
                    ts,
                    text,
                    targets,
                });
                if now_unread.is_empty() {
                    Step::Reply(reply)
                } else {
                    // "stored" is a promise: acknowledge once the inbox flag is durable.
                    Step::Wait(Job {
                        cont: Cont::Ack(reply),
                        work: Work::Store(StoreRequest::MarkUnread { ids: now_unread }),
                    })
                }
            }
            (Cont::Direct { .. }, _) => {
                Step::Reply(err(ErrorCode::Internal, "message not stored; try again"))
            }
            (Cont::Inbox { .. }, WorkResult::Store(Ok(StoreOutput::Rows(rows))))
                if caller.is_none() =>
            {
                // Marked read, but the reader is gone: back to the inbox.
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                if !ids.is_empty() {
                    fx.background.push(StoreRequest::MarkUnread { ids });
                }
                Step::Reply(Vec::new())
            }
            (Cont::Inbox { user }, WorkResult::Store(Ok(StoreOutput::Rows(rows)))) => {
                let left = self.accounts.get_mut(&user).map(|a| {
                    a.unread = a.unread.saturating_sub(rows.len() as u32);
                    a.unread
                });
                let mut reply = Reply::new();
                for row in &rows {
                    reply.data(&format!(
                        "{} {} {}",
                        protocol::format_time(row.ts),
                        row.sender,
                        row.body
                    ));
                }
                let text = match left {
                    Some(n) if n > 0 => {
                        format!("{} unread ({n} more waiting: inbox again)", rows.len())
                    }
                    _ => format!("{} unread", rows.len()),
                };
                Step::Reply(reply.ok(&text))
            }
            (Cont::History, WorkResult::Store(Ok(StoreOutput::Rows(rows)))) => {
                Step::Reply(history_reply(&rows))
            }
            (Cont::Inbox { .. } | Cont::History, _) => Step::Reply(err(
                ErrorCode::Internal,
                "could not read messages; try again",
            )),
            (Cont::Ack(reply), WorkResult::Store(Ok(_))) => Step::Reply(reply),
            (Cont::Block { other, on, .. }, WorkResult::Store(Ok(_))) => {
                let verb = if on { "blocked" } else { "unblocked" };
                Step::Reply(ok(&format!("{verb} {other}")))
            }
            (
                Cont::Block {
                    user, other, had, ..
                },
                _,
            ) => {
                self.apply_block(&user, &other, had);
                Step::Reply(err(ErrorCode::Internal, "change not saved; try again"))
            }
            (Cont::Ack(_), _) => {
                Step::Reply(err(ErrorCode::Internal, "change not saved; try again"))
            }
            (Cont::Background, _) => Step::Reply(Vec::new()),
            (cont, result) => {
                log::error!("mismatched job result {result:?} for {cont:?}");
                Step::Reply(err(ErrorCode::Internal, "internal error"))
            }
        }
    }

    /// A committed message could not be pushed after all (the recipient's
    /// session was closing or got dropped as slow): it goes back to the
    /// inbox. Returns the write that makes that durable.
    pub fn undelivered(&mut self, user: &str, ids: &[i64]) -> StoreRequest {
        for _ in ids {
            self.bump_unread(user);
        }
        StoreRequest::MarkUnread { ids: ids.to_vec() }
    }

    fn bump_unread(&mut self, user: &str) {
        if let Some(a) = self.accounts.get_mut(user) {
            a.unread = a.unread.saturating_add(1);
        }
    }

    fn finish_login(
        &mut self,
        caller: Option<&mut Caller>,
        user: String,
        ip: IpAddr,
        success: bool,
        now: Clock,
        fx: &mut Effects,
    ) -> Step {
        if !success {
            // Counted even if the client hung up before the answer.
            self.record_failure(user, ip, now, fx);
            return Step::Reply(err(ErrorCode::AuthFail, "wrong username or password"));
        }
        let Some(caller) = caller else {
            return Step::Reply(Vec::new());
        };
        // A lock that began while this check was in flight still holds,
        // even for the right password.
        if let Some(locked) = self.lock_message(&user, ip, now) {
            return Step::Reply(locked);
        }
        self.failures.remove(&(user.clone(), ip));
        self.enter(caller, &user, fx);
        let unread = self.accounts.get(&user).map_or(0, |a| a.unread);
        let plural = if unread == 1 { "" } else { "s" };
        Step::Reply(ok(&format!(
            "welcome {user} ({unread} unread message{plural})"
        )))
    }

    fn record_failure(&mut self, user: String, ip: IpAddr, now: Clock, fx: &mut Effects) {
        let block = self.settings.block_time;
        let key = (user, ip);
        let f = self.failures.entry(key.clone()).or_insert(Failures {
            count: 0,
            locked_until: None,
            forget_at: now.mono,
        });
        f.count += 1;
        f.forget_at = now.mono + block;
        // Every failure at or past the limit (re)locks: verifications that
        // were already in flight when the lock began must not reopen it.
        if f.count >= self.settings.max_login_failures {
            f.locked_until = Some(now.mono + block);
            log::warn!(
                "login locked for {} from {} after {} failures",
                key.0,
                key.1,
                f.count
            );
        }
        fx.lock_timers.push((f.forget_at, key));
    }

    /// Drops a lockout record whose time has passed (timer callback).
    pub fn expire_lock(&mut self, key: &LockKey, now: Instant) {
        if self.failures.get(key).is_some_and(|f| f.forget_at <= now) {
            self.failures.remove(key);
        }
    }

    /// The session is ending: it is no longer online, and its user's
    /// last-seen time moves to now. Returns the write to make, if any.
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
        Some(StoreRequest::SetLastSeen {
            user: user.clone(),
            at: now.wall,
        })
    }

    /// Online sessions, for shutdown and tests.
    pub fn online_count(&self) -> usize {
        self.online.len()
    }
}

fn history_reply(rows: &[MessageRow]) -> Vec<u8> {
    let mut reply = Reply::new();
    for row in rows {
        reply.data(&format!(
            "{} {} {} {}",
            protocol::format_time(row.ts),
            row.sender,
            row.recipient,
            row.body
        ));
    }
    reply.ok(&format!("{} messages", rows.len()))
}

fn help_reply(logged_in: bool) -> Vec<u8> {
    let mut reply = Reply::new();
    for (word, usage) in USAGE {
        if logged_in || BEFORE_LOGIN.contains(word) {
            reply.data(usage);
        }
    }
    if logged_in {
        reply.ok("commands")
    } else {
        reply.ok("commands before login; more after")
    }
}

#[cfg(test)]
mod tests;
