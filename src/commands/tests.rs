//! Command parsing and chat logic without sockets, threads or real time.

use std::time::Duration;

use super::*;
use crate::auth::{HashOutcome, HashWork};
use crate::config::{HashCost, Registration};
use crate::protocol::ByeReason;
use crate::store::{Marks, MessageRow, StoreOutput, StoreRequest};

/// Parses a member's line into its command, or the error line.
fn parse_in(line: &str) -> Result<MemberCommand, String> {
    match parse(line, Some("me")) {
        Ok(Command::Member { cmd, .. }) => Ok(cmd),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(String::from_utf8_lossy(&e.reply()).into_owned()),
    }
}

fn member(me: &str, cmd: MemberCommand) -> Command {
    Command::Member { me: me.into(), cmd }
}

fn recipients(fx: &Effects) -> Vec<SessionRef> {
    fx.deliveries.iter().map(|d| d.to).collect()
}

fn code(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply)
        .split(' ')
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn command_words_are_case_insensitive_and_blanks_separate() {
    assert_eq!(parse_in("PiNg"), Ok(MemberCommand::Ping));
    assert_eq!(
        parse_in("SEND\tBob  hi  there"),
        Ok(MemberCommand::Send {
            to: "bob".into(),
            text: "hi  there".into()
        })
    );
}

#[test]
fn login_state_decides_noauth_and_already() {
    let noauth = parse("whoelse", None).unwrap_err().reply();
    assert_eq!(code(&noauth), "- NOAUTH");
    let already = parse("login a password", Some("me")).unwrap_err().reply();
    assert_eq!(code(&already), "- ALREADY");
    // Unknown words are BADCMD whatever the state.
    assert_eq!(code(&parse("dance", None).unwrap_err().reply()), "- BADCMD");
    assert_eq!(
        code(&parse("dance", Some("me")).unwrap_err().reply()),
        "- BADCMD"
    );
    assert_eq!(parse("help", None), Ok(Command::Help));
    assert_eq!(parse("logout", Some("me")), Ok(Command::Quit));
}

#[test]
fn a_password_is_the_rest_of_the_line() {
    assert_eq!(
        parse("login Alice  my pass word ", None),
        Ok(Command::Login {
            user: "alice".into(),
            password: "my pass word ".into()
        })
    );
}

#[test]
fn broadcast_forms() {
    assert_eq!(
        parse_in("broadcast hello world"),
        Ok(MemberCommand::Broadcast {
            text: "hello world".into()
        })
    );
    assert_eq!(
        parse_in("broadcast MESSAGE hello"),
        Ok(MemberCommand::Broadcast {
            text: "hello".into()
        })
    );
    assert_eq!(
        parse_in("broadcast user Bob carol message hi there"),
        Ok(MemberCommand::BroadcastTo {
            users: vec!["bob".into(), "carol".into()],
            text: "hi there".into()
        })
    );
    for bad in [
        "broadcast",
        "broadcast message",
        "broadcast user",
        "broadcast user message x",
        "broadcast user bob message",
        "broadcast user bob hi",
    ] {
        assert_eq!(
            code(&parse(bad, Some("me")).unwrap_err().reply()),
            "- BADARG",
            "{bad}"
        );
    }
}

#[test]
fn history_arguments() {
    let h = |with: Option<&str>, count| {
        Ok(MemberCommand::History {
            with: with.map(str::to_string),
            count,
        })
    };
    assert_eq!(parse_in("history"), h(None, 20));
    assert_eq!(parse_in("history 5"), h(None, 5));
    assert_eq!(parse_in("history Bob"), h(Some("bob"), 20));
    assert_eq!(parse_in("history bob 1000"), h(Some("bob"), 1000));
    for bad in [
        "history 0",
        "history 1001",
        "history bob 0",
        "history 1 2 3",
        "history 9z",
    ] {
        assert!(parse_in(bad).is_err(), "{bad}");
    }
}

#[test]
fn wholast_bounds() {
    assert_eq!(
        parse_in("wholast 1"),
        Ok(MemberCommand::Wholast { minutes: 1 })
    );
    assert_eq!(
        parse_in("wholast 10080"),
        Ok(MemberCommand::Wholast { minutes: 10080 })
    );
    for bad in [
        "wholast",
        "wholast 0",
        "wholast 10081",
        "wholast 1 2",
        "wholast +5x",
    ] {
        assert!(parse_in(bad).is_err(), "{bad}");
    }
}

// ----- chat state -----------------------------------------------------------

fn settings() -> ChatSettings {
    ChatSettings {
        max_login_failures: 3,
        block_time: Duration::from_secs(60),
        registration: Registration::Open,
        hash_cost: HashCost::Low,
        max_inbox: 2,
        ipv6_prefix: 64,
        account_guesses_per_hour: 10,
    }
}

fn account() -> Account {
    Account::new("hash".into(), 0)
}

fn chat_with(users: &[&str]) -> Chat {
    let accounts = users
        .iter()
        .enumerate()
        .map(|(i, u)| (u.to_string(), Account::new("hash".into(), i as u64 + 1)))
        .collect();
    Chat::new(settings(), accounts, "dummy".into())
}

fn caller(token: usize, user: Option<&str>) -> Caller {
    Caller {
        session: SessionRef {
            token,
            id: token as u64 + 100,
        },
        ip: "127.0.0.1".parse().unwrap(),
        user: user.map(Name::from),
    }
}

fn clock(t0: Instant, secs: u64) -> Clock {
    Clock {
        mono: t0 + Duration::from_secs(secs),
        wall: 1_800_000_000 + secs as i64,
        wall_ms: (1_800_000_000 + secs as i64) * 1000,
    }
}

/// Runs `c`'s login as `user` through a successful password check; returns
/// what the chat does next.
fn verified_login(chat: &mut Chat, c: &Caller, user: &str, now: Clock, fx: &mut Effects) -> Step {
    let cmd = Command::Login {
        user: user.into(),
        password: "pw".into(),
    };
    let Step::Wait(job) = chat.execute(c, cmd, now, fx) else {
        panic!("login must wait for the hasher")
    };
    let verified = WorkResult::Hash(HashOutcome::Verified(true));
    chat.complete(Some(c), job.cont, verified, now, fx)
}

/// Logs `c` in by running the login job to a successful verification.
fn log_in(chat: &mut Chat, c: &mut Caller, user: &str, now: Clock) -> Effects {
    let mut fx = Effects::default();
    let step = verified_login(chat, c, user, now, &mut fx);
    assert!(matches!(step, Step::Reply(ref r) if r.starts_with(b"+ welcome")));
    c.user = fx.logged_in.clone();
    fx
}

fn reply_text(step: Step) -> String {
    match step {
        Step::Reply(r) | Step::Inbox { reply: r, .. } => String::from_utf8(r).unwrap(),
        Step::Done => panic!("expected a reply, got nothing"),
        Step::More { .. } => panic!("expected a whole reply, got a part"),
        Step::Wait(job) => panic!("expected a reply, got a job {job:?}"),
    }
}

#[test]
fn a_send_is_acknowledged_only_when_its_commit_returns() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["alice", "bob"]);
    let mut alice = caller(1, None);
    let mut bob = caller(2, None);
    log_in(&mut chat, &mut alice, "alice", clock(t0, 0));
    log_in(&mut chat, &mut bob, "bob", clock(t0, 0));
    let mut fx = Effects::default();
    let cmd = member(
        "alice",
        MemberCommand::Send {
            to: "bob".into(),
            text: "hi".into(),
        },
    );
    let Step::Wait(job) = chat.execute(&alice, cmd, clock(t0, 1), &mut fx) else {
        panic!("send must wait for the store")
    };
    assert!(
        fx.deliveries.is_empty(),
        "nothing is pushed before the commit"
    );
    let Work::Store(StoreRequest::InsertMessages(msgs)) = &job.work else {
        panic!("{job:?}")
    };
    assert_eq!(msgs.len(), 1);
    assert!(
        !msgs[0].unread,
        "an online recipient's message is not an inbox message"
    );
    let step = chat.complete(
        Some(&alice),
        job.cont,
        WorkResult::Store(Ok(StoreOutput::Ids(vec![7]))),
        clock(t0, 1),
        &mut fx,
    );
    assert_eq!(reply_text(step), "+ delivered\n");
    assert_eq!(fx.deliveries.len(), 1);
    assert_eq!(recipients(&fx), vec![bob.session]);
    let line = String::from_utf8(fx.deliveries[0].line.to_vec()).unwrap();
    assert_eq!(line, "* msg alice 2027-01-15T08:00:01Z hi\n");
}

#[test]
fn a_failed_commit_is_never_acknowledged() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["alice", "bob"]);
    let mut alice = caller(1, None);
    log_in(&mut chat, &mut alice, "alice", clock(t0, 0));
    let mut fx = Effects::default();
    let cmd = member(
        "alice",
        MemberCommand::Send {
            to: "bob".into(),
            text: "hi".into(),
        },
    );
    let Step::Wait(job) = chat.execute(&alice, cmd, clock(t0, 1), &mut fx) else {
        panic!()
    };
    let step = chat.complete(
        Some(&alice),
        job.cont,
        WorkResult::Store(Err(crate::store::StoreError::Failed("disk full".into()))),
        clock(t0, 1),
        &mut fx,
    );
    assert!(reply_text(step).starts_with("- INTERNAL "));
    assert!(fx.deliveries.is_empty());
}

#[test]
fn a_recipient_who_leaves_before_the_commit_gets_it_in_the_inbox() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["alice", "bob"]);
    let mut alice = caller(1, None);
    let mut bob = caller(2, None);
    log_in(&mut chat, &mut alice, "alice", clock(t0, 0));
    log_in(&mut chat, &mut bob, "bob", clock(t0, 0));
    let mut fx = Effects::default();
    let cmd = member(
        "alice",
        MemberCommand::Send {
            to: "bob".into(),
            text: "hi".into(),
        },
    );
    let Step::Wait(job) = chat.execute(&alice, cmd, clock(t0, 1), &mut fx) else {
        panic!()
    };
    assert!(chat.disconnect(&bob, clock(t0, 1)).is_some());
    let step = chat.complete(
        Some(&alice),
        job.cont,
        WorkResult::Store(Ok(StoreOutput::Ids(vec![9]))),
        clock(t0, 1),
        &mut fx,
    );
    // The "stored" promise waits for the inbox flag to be committed.
    let Step::Wait(mark) = step else {
        panic!("{step:?}")
    };
    assert!(matches!(
        mark.work,
        Work::Store(StoreRequest::MarkUnread { ref ids }) if ids == &[9]
    ));
    let ack = chat.complete(
        Some(&alice),
        mark.cont,
        WorkResult::Store(Ok(StoreOutput::Done)),
        clock(t0, 1),
        &mut fx,
    );
    assert_eq!(reply_text(ack), "+ stored\n");
    assert!(fx.deliveries.is_empty());
    assert_eq!(chat.accounts["bob"].unread, 1);
}

#[test]
fn lockout_counts_per_user_and_address_and_expires() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["alice"]);
    let mut c = caller(1, None);
    let mut fx = Effects::default();
    let attempt = |chat: &mut Chat, c: &mut Caller, at: u64, fx: &mut Effects, ok: bool| {
        let cmd = Command::Login {
            user: "alice".into(),
            password: "pw".into(),
        };
        match chat.execute(c, cmd, clock(t0, at), fx) {
            Step::Wait(job) => reply_text(chat.complete(
                Some(&*c),
                job.cont,
                WorkResult::Hash(HashOutcome::Verified(ok)),
                clock(t0, at),
                fx,
            )),
            step => reply_text(step),
        }
    };
    for _ in 0..3 {
        assert!(attempt(&mut chat, &mut c, 0, &mut fx, false).starts_with("- AUTHFAIL"));
    }
    let locked = attempt(&mut chat, &mut c, 10, &mut fx, true);
    assert_eq!(
        locked,
        "- LOCKED too many failed logins; try again in 50 seconds\n"
    );
    let mut other_ip = caller(2, None);
    other_ip.ip = "127.0.0.2".parse().unwrap();
    assert!(attempt(&mut chat, &mut other_ip, 10, &mut fx, true).starts_with("+ welcome"));
    assert!(attempt(&mut chat, &mut c, 60, &mut fx, true).starts_with("+ welcome"));
    assert!(!fx.lock_timers.is_empty());
}

#[test]
fn unknown_users_are_verified_against_the_dummy_hash() {
    let t0 = Instant::now();
    let mut chat = chat_with(&[]);
    let c = caller(1, None);
    let cmd = Command::Login {
        user: "ghost".into(),
        password: "pw".into(),
    };
    let Step::Wait(job) = chat.execute(&c, cmd, clock(t0, 0), &mut Effects::default()) else {
        panic!()
    };
    assert!(matches!(job.work, Work::Hash(HashWork::Verify { ref hash, .. }) if hash == "dummy"));
    // Even a "match" against the dummy hash is a failure.
    let step = chat.complete(
        Some(&c),
        job.cont,
        WorkResult::Hash(HashOutcome::Verified(true)),
        clock(t0, 0),
        &mut Effects::default(),
    );
    assert!(reply_text(step).starts_with("- AUTHFAIL"));
}

#[test]
fn a_second_login_replaces_the_first_session() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["alice"]);
    let mut first = caller(1, None);
    let mut second = caller(2, None);
    log_in(&mut chat, &mut first, "alice", clock(t0, 0));
    let fx = log_in(&mut chat, &mut second, "alice", clock(t0, 1));
    assert_eq!(fx.closes, vec![(first.session, ByeReason::Replaced)]);
    // The replaced session leaving does not take the user offline.
    assert!(chat.disconnect(&first, clock(t0, 2)).is_none());
    assert_eq!(chat.online_count(), 1);
    assert!(chat.disconnect(&second, clock(t0, 3)).is_some());
    assert_eq!(chat.accounts["alice"].last_seen, Some(clock(t0, 3).wall));
}

#[test]
fn two_registrations_cannot_race_for_one_name() {
    let t0 = Instant::now();
    let mut chat = chat_with(&[]);
    let a = caller(1, None);
    let b = caller(2, None);
    let reg = || Command::Register {
        user: "neo".into(),
        password: "password1".into(),
    };
    let mut fx = Effects::default();
    let Step::Wait(job) = chat.execute(&a, reg(), clock(t0, 0), &mut fx) else {
        panic!()
    };
    assert!(reply_text(chat.execute(&b, reg(), clock(t0, 0), &mut fx)).starts_with("- EXISTS"));
    let Step::Wait(store) = chat.complete(
        Some(&a),
        job.cont,
        WorkResult::Hash(HashOutcome::Hashed(Ok("h".into()))),
        clock(t0, 0),
        &mut fx,
    ) else {
        panic!()
    };
    let done = chat.complete(
        Some(&a),
        store.cont,
        WorkResult::Store(Ok(StoreOutput::Done)),
        clock(t0, 0),
        &mut fx,
    );
    assert_eq!(reply_text(done), "+ registered neo\n");
    assert_eq!(fx.logged_in.as_deref(), Some("neo"));
}

#[test]
fn broadcast_skips_the_sender_and_those_who_block_them() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["alice", "bob", "carol"]);
    let mut cs: Vec<Caller> = (0..3).map(|i| caller(i, None)).collect();
    for (c, name) in cs.iter_mut().zip(["alice", "bob", "carol"]) {
        log_in(&mut chat, c, name, clock(t0, 0));
    }
    let mut fx = Effects::default();
    let block = member(
        "carol",
        MemberCommand::Block {
            user: "alice".into(),
        },
    );
    assert!(matches!(
        chat.execute(&cs[2], block, clock(t0, 0), &mut fx),
        Step::Wait(_)
    ));
    let step = chat.execute(
        &cs[0],
        member("alice", MemberCommand::Broadcast { text: "yo".into() }),
        clock(t0, 1),
        &mut fx,
    );
    assert_eq!(reply_text(step), "+ sent to 1\n");
    assert_eq!(recipients(&fx), vec![cs[1].session]);
}

#[test]
fn broadcast_honours_blocks_loaded_at_startup_until_lifted_or_the_blocker_is_deleted() {
    let t0 = Instant::now();
    let mut accounts: std::collections::HashMap<String, Account> = ["alice", "bob", "carol"]
        .iter()
        .enumerate()
        .map(|(i, u)| (u.to_string(), Account::new("hash".into(), i as u64 + 1)))
        .collect();
    accounts
        .get_mut("carol")
        .unwrap()
        .blocks
        .insert("alice".into());
    let mut chat = Chat::new(settings(), accounts, "dummy".into());
    let mut cs: Vec<Caller> = (0..3).map(|i| caller(i, None)).collect();
    for (c, name) in cs.iter_mut().zip(["alice", "bob", "carol"]) {
        log_in(&mut chat, c, name, clock(t0, 0));
    }
    let yo = || member("alice", MemberCommand::Broadcast { text: "yo".into() });
    let mut fx = Effects::default();
    let step = chat.execute(&cs[0], yo(), clock(t0, 1), &mut fx);
    assert_eq!(
        reply_text(step),
        "+ sent to 1\n",
        "carol's stored block holds"
    );
    assert_eq!(recipients(&fx), vec![cs[1].session]);

    let unblock = member(
        "carol",
        MemberCommand::Unblock {
            user: "alice".into(),
        },
    );
    chat.execute(&cs[2], unblock, clock(t0, 2), &mut Effects::default());
    let mut fx = Effects::default();
    let step = chat.execute(&cs[0], yo(), clock(t0, 3), &mut fx);
    assert_eq!(reply_text(step), "+ sent to 2\n", "the block is lifted");

    // Blocked again, then deleted: a new account of that name blocks nobody.
    let block = member(
        "carol",
        MemberCommand::Block {
            user: "alice".into(),
        },
    );
    chat.execute(&cs[2], block, clock(t0, 4), &mut Effects::default());
    assert!(chat.delete_user("carol", &mut Effects::default()).is_some());
    chat.accounts.insert("carol".into(), account());
    let mut carol = caller(5, None);
    log_in(&mut chat, &mut carol, "carol", clock(t0, 5));
    let mut fx = Effects::default();
    let step = chat.execute(&cs[0], yo(), clock(t0, 6), &mut fx);
    assert_eq!(reply_text(step), "+ sent to 2\n");
    assert_eq!(recipients(&fx).len(), 2);
}

#[test]
fn inbox_reports_what_is_still_waiting() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["bob"]);
    chat.accounts.get_mut("bob").unwrap().unread = 101;
    let mut bob = caller(1, None);
    log_in(&mut chat, &mut bob, "bob", clock(t0, 0));
    let rows = vec![MessageRow {
        id: 1,
        ts: 0,
        sender: "alice".into(),
        recipient: "bob".into(),
        body: "hi".into(),
    }];
    let step = chat.complete(
        Some(&bob),
        Cont::Inbox { user: "bob".into() },
        WorkResult::Store(Ok(StoreOutput::Rows(rows))),
        clock(t0, 0),
        &mut Effects::default(),
    );
    assert_eq!(
        reply_text(step),
        "= 1970-01-01T00:00:00Z alice hi\n+ 1 unread (100 more waiting: inbox again)\n"
    );
}

fn login_cmd(password: &str) -> Command {
    Command::Login {
        user: "alice".into(),
        password: password.into(),
    }
}

#[test]
fn logins_count_when_submitted_so_guesses_sent_at_once_stop_at_the_limit() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["alice"]);
    let mut fx = Effects::default();
    let conns: Vec<Caller> = (0..5).map(|i| caller(i, None)).collect();
    // Five guesses sent at once: only three (the limit) are verified.
    let steps: Vec<Step> = conns
        .iter()
        .map(|c| chat.execute(c, login_cmd("guess"), clock(t0, 0), &mut fx))
        .collect();
    let mut jobs = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            Step::Wait(job) => jobs.push((i, job)),
            step => assert!(reply_text(step).starts_with("- LOCKED"), "attempt {i}"),
        }
    }
    assert_eq!(jobs.len(), 3);
    // The second in flight was the right password, but the other two fail
    // first and lock the name: it gets the same LOCKED as a wrong one would.
    let mut jobs = jobs.into_iter();
    let (first, second, third) = (
        jobs.next().unwrap(),
        jobs.next().unwrap(),
        jobs.next().unwrap(),
    );
    for (i, job) in [first, third] {
        let reply = chat.complete(
            Some(&conns[i]),
            job.cont,
            WorkResult::Hash(HashOutcome::Verified(false)),
            clock(t0, 1),
            &mut fx,
        );
        assert!(reply_text(reply).starts_with("- AUTHFAIL"));
    }
    let (i, job) = second;
    let reply = chat.complete(
        Some(&conns[i]),
        job.cont,
        WorkResult::Hash(HashOutcome::Verified(true)),
        clock(t0, 2),
        &mut fx,
    );
    assert!(reply_text(reply).starts_with("+ welcome"));
    assert_eq!(fx.logged_in.as_deref(), Some("alice"));
}

#[test]
fn a_verification_finishing_while_locked_gets_locked_whatever_the_password() {
    let t0 = Instant::now();
    let mut fx = Effects::default();
    for right in [false, true] {
        let mut chat = chat_with(&["alice"]);
        let conns: Vec<Caller> = (0..3).map(|i| caller(i, None)).collect();
        let mut jobs: Vec<Job> = conns
            .iter()
            .map(
                |c| match chat.execute(c, login_cmd("guess"), clock(t0, 0), &mut fx) {
                    Step::Wait(job) => job,
                    step => panic!("{step:?}"),
                },
            )
            .collect();
        let last = jobs.pop().unwrap();
        for (c, job) in conns.iter().zip(jobs) {
            let reply = chat.complete(
                Some(c),
                job.cont,
                WorkResult::Hash(HashOutcome::Verified(false)),
                clock(t0, 0),
                &mut fx,
            );
            assert!(reply_text(reply).starts_with("- AUTHFAIL"));
        }
        // Locked by something else meanwhile (a lock record from an
        // earlier round, say): the last check comes back into the lock.
        let key = (
            "alice".to_string(),
            crate::addr::AddrGroup::of(conns[2].ip, 64),
        );
        if let Some(f) = chat.failures.get_mut(&key) {
            f.locked_until = Some(t0 + Duration::from_secs(60));
        }
        let reply = chat.complete(
            Some(&conns[2]),
            last.cont,
            WorkResult::Hash(HashOutcome::Verified(right)),
            clock(t0, 1),
            &mut fx,
        );
        assert_eq!(
            reply_text(reply),
            "- LOCKED too many failed logins; try again in 59 seconds\n",
            "right password: {right}"
        );
    }
    // Then every new attempt is locked, the right password too.
    let mut chat = chat_with(&["alice"]);
    let c = caller(1, None);
    for _ in 0..3 {
        let Step::Wait(job) = chat.execute(&c, login_cmd("guess"), clock(t0, 0), &mut fx) else {
            panic!()
        };
        chat.complete(
            Some(&c),
            job.cont,
            WorkResult::Hash(HashOutcome::Verified(false)),
            clock(t0, 0),
            &mut fx,
        );
    }
    let step = chat.execute(&c, login_cmd("pw"), clock(t0, 65), &mut fx);
    assert!(
        matches!(step, Step::Wait(_)),
        "the lock ends after block_time"
    );
}

#[test]
fn a_full_inbox_refuses_more_until_it_is_read() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["alice", "bob"]);
    let mut alice = caller(1, None);
    log_in(&mut chat, &mut alice, "alice", clock(t0, 0));
    chat.accounts.get_mut("bob").unwrap().unread = 2;
    let mut fx = Effects::default();
    let send = member(
        "alice",
        MemberCommand::Send {
            to: "bob".into(),
            text: "hi".into(),
        },
    );
    let step = chat.execute(&alice, send.clone(), clock(t0, 1), &mut fx);
    assert!(reply_text(step).starts_with("- FULL bob's inbox is full"));
    let list = member(
        "alice",
        MemberCommand::BroadcastTo {
            users: vec!["bob".into()],
            text: "hi".into(),
        },
    );
    let step = chat.execute(&alice, list, clock(t0, 1), &mut fx);
    assert_eq!(reply_text(step), "= bob full\n+ sent to 0 of 1\n");
    chat.accounts.get_mut("bob").unwrap().unread = 1;
    assert!(matches!(
        chat.execute(&alice, send, clock(t0, 2), &mut fx),
        Step::Wait(_)
    ));
}

/// A message going back to the inbox must not be overtaken by a higher
/// `pushed` mark: if natterd died before that write committed, it would
/// count as read although it never left.
#[test]
fn read_marks_wait_while_a_message_goes_back_to_the_inbox() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["alice", "bob"]);
    let mut bob = caller(2, None);
    log_in(&mut chat, &mut bob, "bob", clock(t0, 0));
    let slot = chat.accounts["bob"].read.slot;

    let recorded = chat.written("bob", 5, 0, &[]);
    assert_eq!(
        recorded,
        Some((
            slot,
            Marks {
                pushed: 5,
                inboxed: 0
            }
        ))
    );
    assert_eq!(chat.written("bob", 5, 0, &[]), None, "nothing moved");

    // bob's session stops being open with message 6 unwritten; a newer
    // session then writes 7 before 6 is back in the inbox.
    chat.disconnect(&bob, clock(t0, 1));
    let mut fx = Effects::default();
    let job = chat
        .left_over("bob", &[6], &[], &mut fx)
        .expect("message 6 goes back to the inbox");
    assert!(fx.marks.is_empty(), "nothing new to record");
    assert_eq!(
        chat.written("bob", 7, 0, &[]),
        None,
        "held until 6 is back in the inbox"
    );
    assert!(matches!(
        job.work,
        Work::Store(StoreRequest::MarkUnread { ref ids }) if ids == &[6]
    ));
    assert_eq!(chat.accounts["bob"].unread, 1);

    let step = chat.complete(
        None,
        job.cont,
        WorkResult::Store(Ok(StoreOutput::Done)),
        clock(t0, 2),
        &mut fx,
    );
    assert!(matches!(step, Step::Done));
    assert_eq!(
        fx.marks,
        vec![(
            slot,
            Marks {
                pushed: 7,
                inboxed: 0
            }
        )]
    );
    let advance = chat.take_advance().expect("the database's copy is due");
    assert!(matches!(
        advance.work,
        Work::Store(StoreRequest::Advance(ref m)) if m == &[("bob".to_string(), Marks { pushed: 7, inboxed: 0 })]
    ));
    assert!(chat.take_advance().is_none(), "one at a time");
}

/// Inbox rows never written out are offered again by the next `inbox`.
#[test]
fn inbox_rows_never_written_out_are_offered_again() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["bob"]);
    let mut bob = caller(2, None);
    log_in(&mut chat, &mut bob, "bob", clock(t0, 0));
    chat.accounts.get_mut("bob").unwrap().unread = 3;
    let mut fx = Effects::default();
    let Step::Wait(job) = chat.execute(
        &bob,
        member("bob", MemberCommand::Inbox),
        clock(t0, 1),
        &mut fx,
    ) else {
        panic!("inbox reads the store")
    };
    let rows = (10..13)
        .map(|id| MessageRow {
            id,
            ts: 0,
            sender: "alice".into(),
            recipient: "bob".into(),
            body: format!("m{id}"),
        })
        .collect();
    let step = chat.complete(
        Some(&bob),
        job.cont,
        WorkResult::Store(Ok(StoreOutput::Rows(rows))),
        clock(t0, 1),
        &mut fx,
    );
    let Step::Inbox { rows, .. } = step else {
        panic!("an inbox reply with its rows")
    };
    assert_eq!(rows.iter().map(|r| r.1).collect::<Vec<_>>(), [10, 11, 12]);
    // Only row 10 left natterd before the session closed.
    chat.written("bob", 0, 10, &[]);
    chat.disconnect(&bob, clock(t0, 2));
    assert!(chat.left_over("bob", &[], &[11, 12], &mut fx).is_none());
    let Step::Wait(job) = chat.execute(
        &bob,
        member("bob", MemberCommand::Inbox),
        clock(t0, 3),
        &mut fx,
    ) else {
        panic!("inbox reads the store")
    };
    assert!(matches!(
        job.work,
        Work::Store(StoreRequest::TakeInbox { after: 10, .. })
    ));
    assert_eq!(chat.accounts["bob"].unread, 2);
}

#[test]
fn the_dummy_takes_the_parameters_most_hashes_use_and_old_hashes_are_upgraded() {
    let t0 = Instant::now();
    let low = |pw: &str| crate::auth::hash_password(pw, HashCost::Low).unwrap();
    let normal = crate::auth::hash_password("x", HashCost::Normal).unwrap();
    let accounts = ["alice", "bob", "carol"]
        .iter()
        .map(|u| {
            let a = Account {
                hash: low(&format!("pw-{u}")).into(),
                ..account()
            };
            (u.to_string(), a)
        })
        .collect();
    let settings = ChatSettings {
        hash_cost: HashCost::Normal,
        ..settings()
    };
    let mut chat = Chat::new(settings, accounts, normal.clone());
    let low_params = crate::auth::stand_in(&low("any")).unwrap();
    let normal_params = crate::auth::stand_in(&normal).unwrap();
    // Every stored hash is at low cost: so is the dummy.
    let verify = |chat: &mut Chat, user: &str| {
        let cmd = Command::Login {
            user: user.into(),
            password: format!("pw-{user}"),
        };
        match chat.execute(&caller(1, None), cmd, clock(t0, 0), &mut Effects::default()) {
            Step::Wait(Job {
                cont,
                work: Work::Hash(HashWork::Verify { hash, upgrade, .. }),
            }) => (cont, hash, upgrade),
            step => panic!("{step:?}"),
        }
    };
    let (_, dummy, upgrade) = verify(&mut chat, "nobody");
    assert_eq!((dummy, upgrade), (low_params.clone(), None));
    // A known user's hash at old parameters is re-hashed when the password matches.
    for (i, user) in ["alice", "bob"].into_iter().enumerate() {
        let (cont, _, upgrade) = verify(&mut chat, user);
        assert_eq!(upgrade, Some(HashCost::Normal));
        let new = crate::auth::hash_password(&format!("pw-{user}"), HashCost::Normal).unwrap();
        let mut fx = Effects::default();
        let c = caller(2 + i, None);
        let step = chat.complete(
            Some(&c),
            cont,
            WorkResult::Hash(HashOutcome::Upgraded(new.clone())),
            clock(t0, 0),
            &mut fx,
        );
        assert!(reply_text(step).starts_with("+ welcome"));
        assert_eq!(&*chat.accounts[user].hash, new);
        assert!(matches!(
            &fx.background[..],
            [StoreRequest::SetPasswordHash { user: u, hash }] if u == user && *hash == new
        ));
    }
    // Two of three now use the current parameters: the dummy follows, and
    // upgraded users are not re-hashed again.
    let (_, dummy, _) = verify(&mut chat, "nobody");
    assert_eq!(dummy, normal_params);
    assert_eq!(verify(&mut chat, "alice").2, None);
    assert_eq!(verify(&mut chat, "carol").2, Some(HashCost::Normal));
}

#[test]
fn passwd_checks_the_old_password_like_a_login_and_commits_before_answering() {
    let t0 = Instant::now();
    assert_eq!(
        parse_in("passwd old-one new one  "),
        Ok(MemberCommand::Passwd {
            old: "old-one".into(),
            new: "new one  ".into()
        })
    );
    assert!(parse_in("passwd only-one").is_err());
    assert_eq!(
        code(&parse("passwd a b", None).unwrap_err().reply()),
        "- NOAUTH"
    );

    let mut chat = chat_with(&["alice"]);
    let mut alice = caller(1, None);
    log_in(&mut chat, &mut alice, "alice", clock(t0, 0));
    let passwd = |old: &str, new: &str| {
        member(
            "alice",
            MemberCommand::Passwd {
                old: old.into(),
                new: new.into(),
            },
        )
    };
    let mut fx = Effects::default();
    let short = chat.execute(&alice, passwd("pw", "short"), clock(t0, 1), &mut fx);
    assert!(reply_text(short).starts_with("- BADARG"));
    // A wrong old password is a failed login: three of them lock.
    for _ in 0..3 {
        let Step::Wait(job) = chat.execute(
            &alice,
            passwd("guess", "new password"),
            clock(t0, 1),
            &mut fx,
        ) else {
            panic!()
        };
        let step = chat.complete(
            Some(&alice),
            job.cont,
            WorkResult::Hash(HashOutcome::Verified(false)),
            clock(t0, 1),
            &mut fx,
        );
        assert!(reply_text(step).starts_with("- AUTHFAIL"));
    }
    let locked = chat.execute(&alice, passwd("pw", "new password"), clock(t0, 2), &mut fx);
    assert!(reply_text(locked).starts_with("- LOCKED"));
    // After the lock: the right old password, the new one hashed, written,
    // and only then in memory and answered.
    let Step::Wait(job) =
        chat.execute(&alice, passwd("pw", "new password"), clock(t0, 70), &mut fx)
    else {
        panic!()
    };
    let Step::Wait(hash_job) = chat.complete(
        Some(&alice),
        job.cont,
        WorkResult::Hash(HashOutcome::Verified(true)),
        clock(t0, 70),
        &mut fx,
    ) else {
        panic!()
    };
    assert!(matches!(
        hash_job.work,
        Work::Hash(HashWork::Hash { ref password, cost: HashCost::Low }) if password == "new password"
    ));
    let Step::Wait(store_job) = chat.complete(
        Some(&alice),
        hash_job.cont,
        WorkResult::Hash(HashOutcome::Hashed(Ok("new-hash".into()))),
        clock(t0, 70),
        &mut fx,
    ) else {
        panic!()
    };
    assert!(matches!(
        store_job.work,
        Work::Store(StoreRequest::SetPasswordHash { ref user, ref hash }) if user == "alice" && hash == "new-hash"
    ));
    assert_eq!(
        &*chat.accounts["alice"].hash, "hash",
        "not before the commit"
    );
    let done = chat.complete(
        Some(&alice),
        store_job.cont,
        WorkResult::Store(Ok(StoreOutput::Done)),
        clock(t0, 70),
        &mut fx,
    );
    assert_eq!(reply_text(done), "+ password changed\n");
    assert_eq!(&*chat.accounts["alice"].hash, "new-hash");
}

#[test]
fn lockouts_count_an_ipv6_prefix_as_one_address() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["alice"]);
    let mut fx = Effects::default();
    // Each guess from another address of one /64.
    for i in 1..=4u16 {
        let mut c = caller(usize::from(i), None);
        c.ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, i, 0, 0, 1).into();
        let step = chat.execute(&c, login_cmd("guess"), clock(t0, 0), &mut fx);
        let reply = match step {
            Step::Wait(job) => reply_text(chat.complete(
                Some(&c),
                job.cont,
                WorkResult::Hash(HashOutcome::Verified(false)),
                clock(t0, 0),
                &mut fx,
            )),
            step => reply_text(step),
        };
        let want = if i <= 3 { "- AUTHFAIL" } else { "- LOCKED" };
        assert!(reply.starts_with(want), "guess {i}: {reply}");
    }
    // Another /64 is another address.
    let mut other = caller(9, None);
    other.ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1).into();
    assert!(matches!(
        chat.execute(&other, login_cmd("guess"), clock(t0, 0), &mut fx),
        Step::Wait(_)
    ));
}

#[test]
fn a_login_the_hashing_queue_had_no_room_for_is_busy_and_not_a_failure() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["alice"]);
    let c = caller(1, None);
    let mut fx = Effects::default();
    // More BUSY answers than the lockout allows failures: none counts.
    for _ in 0..5 {
        let Step::Wait(job) = chat.execute(&c, login_cmd("pw"), clock(t0, 0), &mut fx) else {
            panic!("the attempt was locked out")
        };
        let step = chat.complete(
            Some(&c),
            job.cont,
            WorkResult::Hash(HashOutcome::Busy),
            clock(t0, 0),
            &mut fx,
        );
        assert_eq!(reply_text(step), "- BUSY try again in a moment\n");
    }
    // A register that could not be hashed frees its name.
    let reg = Command::Register {
        user: "bob".into(),
        password: "long enough".into(),
    };
    let Step::Wait(job) = chat.execute(&c, reg.clone(), clock(t0, 0), &mut fx) else {
        panic!()
    };
    let step = chat.complete(
        Some(&c),
        job.cont,
        WorkResult::Hash(HashOutcome::Busy),
        clock(t0, 0),
        &mut fx,
    );
    assert!(reply_text(step).starts_with("- BUSY"));
    assert!(matches!(
        chat.execute(&c, reg, clock(t0, 0), &mut fx),
        Step::Wait(_)
    ));
}

#[test]
fn attempts_that_end_without_a_failure_leave_no_record() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["alice"]);
    let mut fx = Effects::default();
    for (i, outcome) in [HashOutcome::Busy, HashOutcome::Verified(true)]
        .into_iter()
        .enumerate()
    {
        let c = caller(i, None);
        let cmd = Command::Login {
            user: format!("name{i}"),
            password: "pw".into(),
        };
        let Step::Wait(job) = chat.execute(&c, cmd, clock(t0, 0), &mut fx) else {
            panic!()
        };
        chat.complete(
            Some(&c),
            job.cont,
            WorkResult::Hash(outcome),
            clock(t0, 0),
            &mut fx,
        );
    }
    // Budget refusals too (ten guesses for one name from ten addresses).
    for i in 0..12u8 {
        let mut c = caller(usize::from(i), None);
        c.ip = std::net::Ipv4Addr::new(10, 0, 0, i).into();
        if let Step::Wait(job) = chat.execute(&c, login_cmd("guess"), clock(t0, 0), &mut fx) {
            chat.complete(
                Some(&c),
                job.cont,
                WorkResult::Hash(HashOutcome::Verified(false)),
                clock(t0, 0),
                &mut fx,
            );
        }
    }
    // Ten failures, one record each; the BUSY, the unknown name's "match"
    // (a failure: kept) and the two budget refusals add nothing more.
    let records = chat.failures.len();
    assert_eq!(
        records,
        11,
        "{:?}",
        chat.failures.keys().collect::<Vec<_>>()
    );
}

/// Rows an old session never wrote out go back to the inbox; a newer
/// session of the same user that meanwhile wrote out later rows must not
/// make them count as read (the `inboxed` mark is a high-water mark, and
/// `Advance` takes every inbox row at or below it out of the inbox).
#[test]
fn inbox_rows_a_replaced_session_never_wrote_out_are_not_covered_by_a_newer_mark() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["bob"]);
    chat.accounts.get_mut("bob").unwrap().unread = 5;
    let rows = |ids: std::ops::Range<i64>| -> Vec<MessageRow> {
        ids.map(|id| MessageRow {
            id,
            ts: 0,
            sender: "alice".into(),
            recipient: "bob".into(),
            body: format!("m{id}"),
        })
        .collect()
    };
    let inbox = |chat: &mut Chat, who: &Caller, ids, at| {
        let mut fx = Effects::default();
        let Step::Wait(job) = chat.execute(who, member("bob", MemberCommand::Inbox), at, &mut fx)
        else {
            panic!("inbox reads the store")
        };
        chat.complete(
            Some(who),
            job.cont,
            WorkResult::Store(Ok(StoreOutput::Rows(rows(ids)))),
            at,
            &mut fx,
        )
    };
    let mut first = caller(1, None);
    log_in(&mut chat, &mut first, "bob", clock(t0, 0));
    // The first session's inbox reply (rows 10 to 12) stalls in natterd.
    inbox(&mut chat, &first, 10..13, clock(t0, 1));
    // bob logs in again: the first session is replaced, and what it never
    // wrote out is handed back as it stops being open.
    let mut second = caller(2, None);
    log_in(&mut chat, &mut second, "bob", clock(t0, 2));
    chat.disconnect(&first, clock(t0, 2));
    let mut fx = Effects::default();
    assert!(chat.left_over("bob", &[], &[10, 11, 12], &mut fx).is_none());
    let mut marks: Vec<Marks> = fx.marks.iter().map(|m| m.1).collect();
    // The new session's inbox starts with them again.
    let Step::Wait(job) = chat.execute(
        &second,
        member("bob", MemberCommand::Inbox),
        clock(t0, 3),
        &mut Effects::default(),
    ) else {
        panic!("inbox reads the store")
    };
    let Work::Store(StoreRequest::TakeInbox { after, .. }) = job.work else {
        panic!("inbox takes rows")
    };
    assert!(
        after < 10,
        "the next inbox starts after {after}, past rows 10 to 12"
    );
    inbox(&mut chat, &second, 10..15, clock(t0, 3));
    marks.extend(chat.written("bob", 0, 9, &[]).into_iter().map(|m| m.1));
    if let Some(advance) = chat.take_advance() {
        if let Work::Store(StoreRequest::Advance(m)) = advance.work {
            marks.extend(m.iter().map(|m| m.1));
        }
    }
    assert!(
        marks.iter().all(|m| m.inboxed < 10),
        "rows 10 to 12 never left natterd, yet a recorded mark covers them: {marks:?}"
    );
}

/// The same for a pushed message: bob's first session idles out with
/// message 5 unwritten (his link stalled); message 6 goes to his inbox;
/// he logs in again and reads it. When the first session is gone, 5 goes
/// back to the inbox, below the `inboxed` mark 6: the next `Advance`
/// takes it out of the inbox, and the next `inbox` starts after 6.
#[test]
fn a_push_an_idle_session_never_wrote_out_is_not_covered_by_a_newer_inbox_mark() {
    let t0 = Instant::now();
    let mut chat = chat_with(&["bob"]);
    let mut first = caller(1, None);
    log_in(&mut chat, &mut first, "bob", clock(t0, 0));
    // Message 5 is pushed to the first session; then it idles out, and 5
    // goes back to the inbox as it stops being open.
    assert!(
        chat.disconnect(&first, clock(t0, 1)).is_some(),
        "bob is offline"
    );
    let mut fx = Effects::default();
    let back = chat
        .left_over("bob", &[5], &[], &mut fx)
        .expect("message 5 goes back to the inbox");
    chat.complete(
        None,
        back.cont,
        WorkResult::Store(Ok(StoreOutput::Done)),
        clock(t0, 1),
        &mut fx,
    );
    // Message 6 is stored in his inbox meanwhile.
    chat.accounts.get_mut("bob").unwrap().unread = 1;
    let mut second = caller(2, None);
    log_in(&mut chat, &mut second, "bob", clock(t0, 2));
    let mut fx = Effects::default();
    let Step::Wait(job) = chat.execute(
        &second,
        member("bob", MemberCommand::Inbox),
        clock(t0, 3),
        &mut fx,
    ) else {
        panic!("inbox reads the store")
    };
    let Work::Store(StoreRequest::TakeInbox { after, .. }) = &job.work else {
        panic!("inbox takes rows")
    };
    assert!(*after < 5, "the inbox starts after {after}, past message 5");
    let marks: Vec<Marks> = fx.marks.iter().map(|m| m.1).collect();
    let Step::Wait(next) = chat.execute(
        &second,
        member("bob", MemberCommand::Inbox),
        clock(t0, 5),
        &mut Effects::default(),
    ) else {
        panic!("inbox reads the store")
    };
    let Work::Store(StoreRequest::TakeInbox { after, .. }) = next.work else {
        panic!("inbox takes rows")
    };
    assert!(
        after < 5 && marks.iter().all(|m| m.inboxed < 5),
        "message 5 never left natterd, yet the next inbox starts after {after} \
         and the recorded marks are {marks:?}"
    );
}

// Cluster mode: what a node does with what the others say, without Redis.

mod clustered {
    use super::*;
    use crate::cluster::{Bus, Envelope, Inbound};

    fn node(users: &[&str]) -> Chat {
        let mut chat = chat_with(users);
        chat.join_cluster("n1".into());
        chat
    }

    fn from(node: &str, msg: Bus) -> Inbound {
        Inbound::Message(Envelope {
            from: node.into(),
            msg,
        })
    }

    /// Logs in on a clustered node: the welcome waits for the inbox count.
    fn log_in_here(chat: &mut Chat, c: &mut Caller, user: &str, now: Clock) -> Effects {
        let mut fx = Effects::default();
        let Step::Wait(count) = verified_login(chat, c, user, now, &mut fx) else {
            panic!("a clustered login counts the inbox in the database")
        };
        assert!(matches!(
            count.work,
            Work::Store(StoreRequest::CountInbox { .. })
        ));
        let counted = WorkResult::Store(Ok(StoreOutput::Count(3)));
        let step = chat.complete(Some(&*c), count.cont, counted, now, &mut fx);
        assert_eq!(
            reply_text(step),
            format!("+ welcome {user} (3 unread messages)\n")
        );
        c.user = fx.logged_in.clone();
        fx
    }

    fn who(chat: &mut Chat, me: &Caller, now: Clock) -> String {
        let mut fx = Effects::default();
        let me_name = me.user.clone().unwrap();
        reply_text(chat.execute(me, member(&me_name, MemberCommand::Whoelse), now, &mut fx))
    }

    #[test]
    fn the_newer_login_of_a_user_wins_on_whichever_node_it_is() {
        let t0 = Instant::now();
        let mut chat = node(&["alice", "bob"]);
        let mut alice = caller(1, None);
        let fx = log_in_here(&mut chat, &mut alice, "alice", clock(t0, 10));
        assert!(fx.closes.is_empty());
        let announced = chat.take_outgoing();
        assert!(
            matches!(&announced[..], [(None, Bus::LoginOk { .. }), (None, Bus::Online { user, .. })]
                if user == "alice"),
            "{announced:?}"
        );
        let here = clock(t0, 10).wall_ms;
        // An older login elsewhere (it crossed ours in flight) loses.
        let mut fx = Effects::default();
        let older = Bus::Online {
            user: "alice".into(),
            since: here - 1,
        };
        chat.on_cluster(from("n2", older), clock(t0, 11), &mut fx);
        assert!(fx.closes.is_empty());
        assert_eq!(chat.remote_count(), 0);
        // A newer one replaces ours.
        let newer = Bus::Online {
            user: "alice".into(),
            since: here + 1,
        };
        chat.on_cluster(from("n2", newer), clock(t0, 11), &mut fx);
        assert_eq!(fx.closes, vec![(alice.session, ByeReason::Replaced)]);
        assert_eq!(chat.remote_count(), 1);
    }

    #[test]
    fn a_message_for_another_node_is_committed_unread_and_routed_there() {
        let t0 = Instant::now();
        let mut chat = node(&["alice", "bob"]);
        let mut alice = caller(1, None);
        log_in_here(&mut chat, &mut alice, "alice", clock(t0, 0));
        let mut fx = Effects::default();
        let presence = Bus::Presence {
            users: vec![("bob".into(), 5)],
        };
        chat.on_cluster(from("n2", presence), clock(t0, 0), &mut fx);
        chat.take_outgoing();
        let send = member(
            "alice",
            MemberCommand::Send {
                to: "bob".into(),
                text: "hi".into(),
            },
        );
        let Step::Wait(job) = chat.execute(&alice, send, clock(t0, 1), &mut fx) else {
            panic!("send must wait for the store")
        };
        let Work::Store(StoreRequest::InsertMessages(msgs)) = &job.work else {
            panic!("{job:?}")
        };
        assert!(msgs[0].unread, "in a cluster a message starts in the inbox");
        let committed = WorkResult::Store(Ok(StoreOutput::Ids(vec![7])));
        let step = chat.complete(Some(&alice), job.cont, committed, clock(t0, 1), &mut fx);
        assert_eq!(reply_text(step), "+ delivered\n");
        assert!(fx.deliveries.is_empty(), "bob is not on this node");
        let out = chat.take_outgoing();
        assert!(
            matches!(&out[..], [(Some(n), Bus::Deliver { user, id: 7, line })]
                if n == "n2" && user == "bob" && line.ends_with(" hi\n")),
            "{out:?}"
        );
        // On n2, the same Deliver reaches bob's session with its id, so
        // that writing it out marks it read.
        let mut n2 = chat_with(&["alice", "bob"]);
        n2.join_cluster("n2".into());
        let mut bob = caller(2, None);
        log_in_here(&mut n2, &mut bob, "bob", clock(t0, 0));
        let Some((_, deliver)) = out.into_iter().next() else {
            unreachable!()
        };
        let mut fx = Effects::default();
        n2.on_cluster(from("n1", deliver), clock(t0, 1), &mut fx);
        assert_eq!(recipients(&fx), vec![bob.session]);
        assert_eq!(fx.deliveries[0].stored.as_ref().map(|s| s.id), Some(7));
        assert_eq!(n2.written("bob", 7, 0, &[7]), None, "no marks in a cluster");
        let Some(Job {
            work: Work::Store(StoreRequest::MarkRead { ids }),
            ..
        }) = n2.take_advance()
        else {
            panic!("the written line must be marked read")
        };
        assert_eq!(ids, vec![7]);
    }

    #[test]
    fn a_silent_node_or_lost_redis_takes_their_users_offline_here() {
        let t0 = Instant::now();
        let mut chat = node(&["alice", "bob", "carol"]);
        let mut alice = caller(1, None);
        log_in_here(&mut chat, &mut alice, "alice", clock(t0, 0));
        let mut fx = Effects::default();
        for (n, u) in [("n2", "bob"), ("n3", "carol")] {
            let p = Bus::Presence {
                users: vec![(u.into(), 1)],
            };
            chat.on_cluster(from(n, p), clock(t0, 0), &mut fx);
        }
        assert_eq!(
            who(&mut chat, &alice, clock(t0, 1)),
            "= bob\n= carol\n+ 2 online\n"
        );
        chat.on_cluster(Inbound::NodeDown("n2".into()), clock(t0, 2), &mut fx);
        assert_eq!(
            who(&mut chat, &alice, clock(t0, 2)),
            "= carol\n+ 1 online\n"
        );
        chat.on_cluster(Inbound::Lost, clock(t0, 3), &mut fx);
        assert_eq!(who(&mut chat, &alice, clock(t0, 3)), "+ 0 online\n");
        // Back on Redis: this node announces itself and asks the others;
        // once subscribed again it reloads the accounts, and so does
        // everyone (it may have missed their changes, they its).
        chat.take_outgoing();
        assert!(chat
            .on_cluster(Inbound::Connected, clock(t0, 4), &mut fx)
            .is_none());
        let out = chat.take_outgoing();
        assert!(
            matches!(&out[..], [(None, Bus::Presence { users }), (None, Bus::Sync { reload: false })]
                if users.len() == 1 && users[0].0 == "alice"),
            "{out:?}"
        );
        let reload = chat.on_cluster(Inbound::Subscribed, clock(t0, 4), &mut fx);
        assert!(matches!(
            reload,
            Some(Job {
                work: Work::Store(StoreRequest::LoadAccounts),
                ..
            })
        ));
        let out = chat.take_outgoing();
        assert!(
            matches!(&out[1..], [(None, Bus::Sync { reload: true })]),
            "{out:?}"
        );
        // Only once per outage.
        assert!(chat
            .on_cluster(Inbound::Subscribed, clock(t0, 5), &mut fx)
            .is_none());
    }

    #[test]
    fn a_broadcast_from_another_node_skips_those_who_block_its_sender() {
        let t0 = Instant::now();
        let mut chat = node(&["alice", "bob", "carol"]);
        let mut bob = caller(2, None);
        let mut carol = caller(3, None);
        log_in_here(&mut chat, &mut bob, "bob", clock(t0, 0));
        log_in_here(&mut chat, &mut carol, "carol", clock(t0, 0));
        let mut fx = Effects::default();
        let block = Bus::Block {
            user: "carol".into(),
            other: "alice".into(),
            on: true,
        };
        chat.on_cluster(from("n2", block), clock(t0, 0), &mut fx);
        let b = Bus::Broadcast {
            from: "alice".into(),
            ts: 1_800_000_000,
            text: "hello all".into(),
        };
        chat.on_cluster(from("n2", b), clock(t0, 1), &mut fx);
        assert_eq!(recipients(&fx), vec![bob.session]);
    }
}

#[test]
fn a_reload_after_an_outage_brings_in_what_was_missed_and_keeps_what_is_newer() {
    use crate::store::{Snapshot, UserRow};
    let t0 = Instant::now();
    // Accounts 1 (alice), 2 (bob), 3 (carol) loaded; carol blocks bob.
    let mut chat = chat_with(&["alice", "bob", "carol"]);
    chat.join_cluster("n1".into());
    let mut fx = Effects::default();
    chat.apply_block("carol", "bob", true);
    // While cut off, elsewhere: bob was deleted, dave (4) registered,
    // carol unblocked bob and blocked alice, alice was banned. Meanwhile
    // here erin (5) registered after the snapshot was read.
    chat.accounts
        .insert("erin".into(), Account::new("hash".into(), 5));
    let row = |slot: u64, banned: bool| UserRow {
        hash: "hash".into(),
        last_seen: None,
        slot,
        marks: Marks::default(),
        banned,
    };
    let mut snap = Snapshot::default();
    snap.users.insert("alice".into(), row(1, true));
    snap.users.insert("carol".into(), row(3, false));
    snap.users.insert("dave".into(), row(4, false));
    snap.blocks.push(("carol".into(), "alice".into()));
    snap.unread.insert("dave".into(), 2);
    let result = WorkResult::Store(Ok(StoreOutput::Accounts(Box::new(snap))));
    chat.complete(None, Cont::Reloaded, result, clock(t0, 1), &mut fx);
    let mut names: Vec<&str> = chat.accounts.keys().map(|n| &n[..]).collect();
    names.sort();
    assert_eq!(names, ["alice", "carol", "dave", "erin"]);
    assert!(chat.accounts["alice"].banned);
    assert_eq!(chat.accounts["dave"].unread, 2);
    let blocks: Vec<&String> = chat.accounts["carol"].blocks.iter().collect();
    assert_eq!(blocks, ["alice"]);
}
