//! A message is unread until its bytes have left natterd: after a SIGKILL,
//! every message its recipient's socket did not get is in the inbox, once,
//! and nothing the socket got is in the inbox again.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::util::{complete_lines, slow_link, Server};

/// The message numbers in `lines`: each test body starts with `n<number>:`.
fn numbers<'a>(lines: impl IntoIterator<Item = &'a String>) -> Vec<usize> {
    lines
        .into_iter()
        .filter_map(|l| {
            let word = l
                .split(' ')
                .find(|w| w.starts_with('n') && w.ends_with(':'))?;
            word[1..word.len() - 1].parse().ok()
        })
        .collect()
}

/// Checks that what reached the socket and what the inbox has after the
/// restart are, together, every message sent, each exactly once.
fn assert_exactly_once(sent: usize, received: &[usize], inbox: &[usize]) {
    let got: BTreeSet<usize> = received.iter().copied().collect();
    assert_eq!(got.len(), received.len(), "the socket got a message twice");
    let kept: BTreeSet<usize> = inbox.iter().copied().collect();
    assert_eq!(kept.len(), inbox.len(), "the inbox has a message twice");
    let both: Vec<&usize> = got.intersection(&kept).collect();
    assert!(
        both.is_empty(),
        "{} messages the socket got are in the inbox again, e.g. {:?}",
        both.len(),
        &both[..both.len().min(5)]
    );
    let all: BTreeSet<usize> = got.union(&kept).copied().collect();
    let lost: Vec<usize> = (0..sent).filter(|n| !all.contains(n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {sent} messages were neither received nor in the inbox \
         (received {}, inbox {}), e.g. {:?}",
        lost.len(),
        got.len(),
        kept.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Registers alice and bob, takes bob offline, and has alice send him
/// `sent` messages of 3 KB (`n<k>: ...`), all stored.
fn store_for_absent_bob(server: &Server, sent: usize) {
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    assert_eq!(bob.cmd1("quit"), "+ bye");
    let pad = "q".repeat(3000);
    let script: String = (0..sent)
        .map(|n| format!("send bob n{n}: {pad}\n"))
        .collect();
    alice.send_raw(script.as_bytes());
    for n in 0..sent {
        assert_eq!(alice.line(), "+ stored", "send {n}");
    }
}

/// bob, on a slow link, asks for three long histories (3 MB each: more
/// than the kernel's socket buffers take) and then his inbox, reads two of
/// the histories, and stalls: the third fills the kernel's buffers and the
/// inbox reply waits in natterd. Returns his connection and what he read.
fn stall_behind_histories(server: &Server) -> (crate::util::Client, Vec<String>) {
    let mut bob = slow_link(server);
    bob.login("bob", "password-bob");
    bob.send_raw(b"history 1000\nhistory 1000\nhistory 1000\ninbox\n");
    let mut lines = Vec::new();
    while lines
        .iter()
        .filter(|l: &&String| l.starts_with("+ "))
        .count()
        < 2
    {
        lines.push(bob.line());
    }
    std::thread::sleep(Duration::from_secs(1));
    (bob, lines)
}

/// What a reader stalled behind three histories (see
/// `stall_behind_histories`) got: how many completions, and the inbox
/// reply's rows (those after the third completion).
fn after_histories(lines: &[String]) -> (usize, Vec<String>) {
    let mut completions = 0;
    let mut inbox_rows = Vec::new();
    for line in lines {
        if line.starts_with("+ ") || line.starts_with("- ") {
            completions += 1;
        } else if completions == 3 && line.starts_with("= ") {
            inbox_rows.push(line.clone());
        }
    }
    (completions, inbox_rows)
}

#[test]
fn delivered_messages_a_killed_server_never_wrote_out_are_in_the_inbox_once() {
    const SENT: usize = 6000;
    // Room for every push in bob's output buffer, no rate limit: the point
    // is a backlog natterd holds when it dies.
    let server = Server::start(&["--rate", "0", "--max-outbuf", "16777216"]);
    let mut alice = server.user("alice");
    let mut bob = slow_link(&server);
    assert_eq!(bob.cmd1("register bob password-bob"), "+ registered bob");
    // bob stops reading; alice sends 6,000 messages of 1 KB, pipelined.
    let pad = "p".repeat(1000);
    let mut script = String::new();
    for n in 0..SENT {
        script.push_str(&format!("send bob n{n}: {pad}\n"));
    }
    alice.send_raw(script.as_bytes());
    for n in 0..SENT {
        assert_eq!(alice.line(), "+ delivered", "send {n}");
    }
    // bob reads a little, as a slow link would; then natterd dies.
    let mut first = Vec::new();
    for _ in 0..50 {
        first.push(bob.line());
    }
    let mut server = server;
    server.kill();
    // What the kernel had accepted still arrives; nothing else will.
    let mut lines = first;
    lines.extend(complete_lines(&bob.read_to_end()));
    let received = numbers(&lines);
    assert!(
        received.len() < SENT,
        "bob's socket got all {SENT} messages before the kill: natterd held \
         nothing back, so this run proves nothing"
    );

    let server = server.restart_after_kill();
    let mut bob = server.connect();
    bob.login("bob", "password-bob");
    let inbox = numbers(&bob.drain_inbox());
    assert_exactly_once(SENT, &received, &inbox);
}

#[test]
fn inbox_rows_a_killed_server_never_wrote_out_stay_in_the_inbox() {
    // 3 MB of history each time: more than the kernel's socket buffers
    // take, so the inbox reply waits in natterd behind them.
    const SENT: usize = 1000;
    // Room for all four replies in bob's output buffer, so `inbox` is taken
    // at once, its reply queued behind the histories.
    let server = Server::start(&["--rate", "0", "--max-outbuf", "16777216"]);
    store_for_absent_bob(&server, SENT);
    // bob on a slow link: three long histories, then his inbox, in one go.
    let (mut bob, mut lines) = stall_behind_histories(&server);
    let mut server = server;
    server.kill();
    lines.extend(complete_lines(&bob.read_to_end()));
    let (completions, inbox_rows) = after_histories(&lines);
    let received = numbers(&inbox_rows);
    assert!(
        completions < 4,
        "bob's socket got the whole inbox reply before the kill: natterd \
         held nothing back, so this run proves nothing"
    );

    let server = server.restart_after_kill();
    let mut bob = server.connect();
    bob.login("bob", "password-bob");
    let inbox = numbers(&bob.drain_inbox());
    assert_exactly_once(SENT, &received, &inbox);
}

#[test]
fn inbox_rows_a_replaced_session_never_wrote_out_stay_in_the_inbox() {
    // bob's first session asks for three long histories and his inbox; its
    // link stalls, so the inbox reply (rows 1 to 100) waits in natterd. He
    // logs in again: the stalled session is replaced and lingers, and the
    // new one takes the next 100 rows. Whatever the stalled session never
    // wrote out must still be in his inbox afterwards.
    const SENT: usize = 1000;
    let server = Server::start(&["--rate", "0", "--max-outbuf", "16777216"]);
    store_for_absent_bob(&server, SENT);
    let (mut first, mut lines) = stall_behind_histories(&server);
    let mut second = server.connect();
    second.login("bob", "password-bob");
    let mut reply = second.cmd("inbox");
    let done = reply.pop().expect("a completion");
    assert!(done.starts_with("+ "), "{done}");
    let mut received = numbers(&reply);
    // natterd gives up on the stalled session after its linger (5 s);
    // then what the kernel had taken is all that arrives.
    std::thread::sleep(Duration::from_secs(7));
    lines.extend(complete_lines(&first.read_to_end()));
    let (completions, inbox_rows) = after_histories(&lines);
    assert!(
        completions < 4,
        "the stalled session got its whole inbox reply: this run proves nothing"
    );
    received.extend(numbers(&inbox_rows));
    let inbox = numbers(&second.drain_inbox());
    assert_exactly_once(SENT, &received, &inbox);
}
