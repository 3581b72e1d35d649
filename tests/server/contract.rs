//! The protocol contract (docs/PROTOCOL.md), tested the way users meet it:
//! the real natterd binary on port 0, spoken to over TCP.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::util::{serial, stall_bound, Client, Server, TIMEOUT};

// ----- connecting, login, register ----------------------------------------

#[test]
fn greeting_is_hello_then_notices() {
    let server = Server::start(&[]);
    let mut c = Client::connect(server.addr);
    assert_eq!(c.line(), "* hello natter 1");
    let notice = c.line();
    assert!(
        notice.starts_with("* notice ") && notice.contains("login"),
        "{notice}"
    );
}

#[test]
fn register_logs_in_and_login_works_after_logout() {
    let server = Server::start(&[]);
    let mut alice = server.user("Alice");
    assert_eq!(alice.cmd1("ping"), "+ pong");
    assert_eq!(alice.cmd1("logout"), "+ bye");
    assert!(alice.until_closed().is_empty());

    let mut again = server.connect();
    assert_eq!(
        again.cmd1("LOGIN ALICE password-Alice"),
        "+ welcome alice (0 unread messages)"
    );
}

#[test]
fn wrong_password_and_unknown_user_get_the_same_answer() {
    let server = Server::start(&[]);
    drop(server.user("alice"));
    let mut c = server.connect();
    let wrong = c.cmd1("login alice nope-nope");
    let unknown = c.cmd1("login mallory nope-nope");
    assert!(wrong.starts_with("- AUTHFAIL "), "{wrong}");
    assert_eq!(wrong, unknown);
    assert_eq!(
        c.cmd1("login alice"),
        "- BADARG usage: login <user> <password>"
    );
    assert_eq!(c.cmd1("login 9x password"), "- BADARG not a valid username");
}

#[test]
fn register_refuses_taken_names_and_bad_arguments() {
    let server = Server::start(&[]);
    drop(server.user("alice"));
    let mut c = server.connect();
    assert!(c
        .cmd1("register ALICE another-password")
        .starts_with("- EXISTS "));
    assert!(c.cmd1("register bob short").starts_with("- BADARG "));
    let long = "x".repeat(257);
    assert!(c
        .cmd1(&format!("register bob {long}"))
        .starts_with("- BADARG "));
    assert!(c.cmd1("register -bob password1").starts_with("- BADARG "));
    assert!(c
        .cmd1(&format!("register {} password1", "a".repeat(33)))
        .starts_with("- BADARG "));
    // Passwords may contain spaces: the rest of the line is the password.
    assert_eq!(c.cmd1("register bob my secret words"), "+ registered bob");
    drop(c);
    let mut again = server.connect();
    again.login("bob", "my secret words");
}

#[test]
fn registration_can_be_closed() {
    let server = Server::start(&["--registration", "closed"]);
    let mut c = Client::connect(server.addr);
    let lines: Vec<String> = (0..4).map(|_| c.line()).collect();
    assert!(
        lines.iter().any(|l| l.contains("registration is closed")),
        "{lines:?}"
    );
    assert!(c.cmd1("register bob password1").starts_with("- CLOSED "));
}

#[test]
fn commands_before_login_need_auth_and_unknown_words_are_badcmd() {
    let server = Server::start(&[]);
    let mut c = server.connect();
    for cmd in [
        "whoelse",
        "send bob hi",
        "broadcast hi",
        "inbox",
        "history",
        "ping",
        "block bob",
    ] {
        assert!(c.cmd1(cmd).starts_with("- NOAUTH "), "{cmd}");
    }
    assert!(c.cmd1("dance").starts_with("- BADCMD "));
    let help = c.cmd("help");
    assert!(help.iter().any(|l| l.starts_with("= login")));
    assert!(help.last().is_some_and(|l| l.starts_with("+ ")));
    let mut alice = server.user("alice");
    assert!(alice.cmd1("dance").starts_with("- BADCMD "));
    assert!(alice
        .cmd1("login alice password-alice")
        .starts_with("- ALREADY "));
    assert!(alice
        .cmd1("register zed password1")
        .starts_with("- ALREADY "));
    assert!(alice.cmd("help").iter().any(|l| l.starts_with("= send")));
    assert_eq!(c.cmd1("quit"), "+ bye");
    assert!(c.until_closed().is_empty());
}

#[test]
fn a_second_login_takes_over_the_first_session() {
    let server = Server::start(&[]);
    let mut first = server.user("alice");
    let mut second = server.connect();
    second.login("alice", "password-alice");
    assert_eq!(first.until_closed(), vec!["* bye replaced"]);
    let mut bob = server.user("bob");
    assert_eq!(bob.cmd("whoelse"), vec!["= alice", "+ 1 online"]);
    assert_eq!(second.cmd1("ping"), "+ pong");
}

// ----- lockout --------------------------------------------------------------

pub fn connect_from(source: &str, server: SocketAddr) -> Client {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local: SocketAddr = format!("{source}:0").parse().expect("addr");
    socket.bind(&local.into()).expect("bind source address");
    socket
        .connect_timeout(&server.into(), TIMEOUT)
        .expect("connect");
    let mut c = Client::from_stream(TcpStream::from(socket));
    c.skip_greeting();
    c
}

#[test]
fn failed_logins_lock_the_name_from_that_address_only() {
    let server = Server::start(&["--max-login-failures", "3", "--block-time", "2"]);
    drop(server.user("alice"));
    let mut attacker = server.connect();
    for _ in 0..3 {
        assert!(attacker
            .cmd1("login alice guess-guess")
            .starts_with("- AUTHFAIL "));
    }
    let locked = attacker.cmd1("login alice password-alice");
    assert!(
        locked.starts_with("- LOCKED ") && locked.contains("seconds"),
        "{locked}"
    );
    // Another connection from the same address is locked too.
    let mut same_ip = server.connect();
    assert!(same_ip
        .cmd1("login alice password-alice")
        .starts_with("- LOCKED "));
    // Another address is not.
    let mut elsewhere = connect_from("127.0.0.2", server.addr);
    elsewhere.login("alice", "password-alice");
    // Unknown names are counted the same way.
    for _ in 0..3 {
        assert!(attacker
            .cmd1("login nobody guess-guess")
            .starts_with("- AUTHFAIL "));
    }
    assert!(attacker
        .cmd1("login nobody guess-guess")
        .starts_with("- LOCKED "));

    // The lock lifts after --block-time. The refusal says how long is left,
    // rounded up to whole seconds, so once that has passed the right
    // password works (no polling: the server says when). On a slow machine
    // it may have lifted already.
    let reply = same_ip.cmd1("login alice password-alice");
    if !reply.starts_with("+ welcome alice ") {
        let left: u64 = reply
            .strip_prefix("- LOCKED ")
            .and_then(|rest| rest.strip_suffix(" seconds"))
            .and_then(|rest| rest.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("neither welcome nor time left: {reply:?}"));
        assert!((1..=2).contains(&left), "--block-time 2, yet {reply:?}");
        std::thread::sleep(Duration::from_secs(left));
        same_ip.login("alice", "password-alice");
    }
}

#[test]
fn a_successful_login_resets_the_failure_count() {
    let server = Server::start(&["--max-login-failures", "3"]);
    drop(server.user("alice"));
    let mut c = server.connect();
    for _ in 0..2 {
        assert!(c.cmd1("login alice wrong-wrong").starts_with("- AUTHFAIL "));
    }
    c.login("alice", "password-alice");
    drop(c);
    let mut c = server.connect();
    for _ in 0..2 {
        assert!(c.cmd1("login alice wrong-wrong").starts_with("- AUTHFAIL "));
    }
    c.login("alice", "password-alice");
}

// ----- who ------------------------------------------------------------------

#[test]
fn whoelse_lists_other_online_users_sorted() {
    let server = Server::start(&[]);
    let mut carol = server.user("carol");
    let _alice = server.user("alice");
    let mut bob = server.user("bob");
    assert_eq!(carol.cmd("whoelse"), vec!["= alice", "= bob", "+ 2 online"]);
    assert_eq!(bob.cmd1("quit"), "+ bye");
    bob.until_closed();
    // The server has handled the quit once a later command sees its effect.
    let deadline = Instant::now() + TIMEOUT;
    while carol.cmd("whoelse") != vec!["= alice", "+ 1 online"] {
        assert!(Instant::now() < deadline);
    }
    assert!(carol.cmd1("whoelse now").starts_with("- BADARG "));
}

#[test]
fn wholast_shows_online_and_recently_seen_users() {
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    let _carol = server.user("carol");
    assert_eq!(bob.cmd1("quit"), "+ bye");
    bob.until_closed();
    let reply = alice.cmd("wholast 5");
    assert_eq!(reply.len(), 3, "{reply:?}");
    assert!(
        reply[0].starts_with("= bob 20") && reply[0].ends_with('Z'),
        "{reply:?}"
    );
    assert_eq!(reply[1], "= carol online");
    assert_eq!(reply[2], "+ 2 users");
    for bad in [
        "wholast",
        "wholast 0",
        "wholast 10081",
        "wholast x",
        "wholast -1",
    ] {
        assert!(alice.cmd1(bad).starts_with("- BADARG "), "{bad}");
    }
    assert_eq!(alice.cmd1("wholast 10080"), "+ 2 users");
}

// ----- send -----------------------------------------------------------------

#[test]
fn send_to_an_online_user_is_delivered_and_pushed() {
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    assert_eq!(alice.cmd1("send BOB hello  there\tfriend"), "+ delivered");
    let event = bob.event();
    let fields: Vec<&str> = event.splitn(5, ' ').collect();
    assert_eq!(&fields[..3], ["*", "msg", "alice"]);
    assert!(fields[3].ends_with('Z'), "{event}");
    // The text keeps inner spacing; the TAB is relayed as a space.
    assert_eq!(fields[4], "hello  there friend");
}

#[test]
fn send_to_an_offline_user_is_stored_for_the_inbox() {
    let server = Server::start(&[]);
    drop(server.user("bob"));
    let mut alice = server.user("alice");
    assert_eq!(alice.cmd1("send bob first"), "+ stored");
    assert_eq!(alice.cmd1("send bob second"), "+ stored");
    let mut bob = server.connect();
    assert_eq!(
        bob.cmd1("login bob password-bob"),
        "+ welcome bob (2 unread messages)"
    );
    let inbox = bob.cmd("inbox");
    assert_eq!(inbox.len(), 3);
    assert!(
        inbox[0].starts_with("= 20") && inbox[0].ends_with(" alice first"),
        "{inbox:?}"
    );
    assert!(inbox[1].ends_with(" alice second"));
    assert_eq!(inbox[2], "+ 2 unread");
    assert_eq!(bob.cmd("inbox"), vec!["+ 0 unread"]);
}

#[test]
fn send_errors() {
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    assert!(alice.cmd1("send nobody hi").starts_with("- NOUSER "));
    assert!(alice.cmd1("send alice hi").starts_with("- BADARG "));
    assert!(alice.cmd1("send bob").starts_with("- BADARG "));
    assert!(alice.cmd1("send bob    ").starts_with("- BADARG "));
    assert!(alice.cmd1("send").starts_with("- BADARG "));
    assert_eq!(bob.cmd1("block alice"), "+ blocked alice");
    assert!(alice.cmd1("send bob hi").starts_with("- BLOCKED "));
    let got = bob.arrived_before_pong();
    assert!(got.is_empty(), "blocked message reached bob: {got:?}");
}

// ----- broadcast ------------------------------------------------------------

#[test]
fn broadcast_reaches_everyone_online_except_sender_and_blockers() {
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    let mut carol = server.user("carol");
    assert_eq!(carol.cmd1("block alice"), "+ blocked alice");
    assert_eq!(alice.cmd1("broadcast hello all"), "+ sent to 1");
    let event = bob.event();
    assert!(
        event.starts_with("* broadcast alice 20") && event.ends_with(" hello all"),
        "{event}"
    );
    assert_eq!(
        alice.cmd1("broadcast message the message form"),
        "+ sent to 1"
    );
    assert!(bob.event().ends_with(" the message form"));
    // Neither the sender nor the blocker got either broadcast.
    assert_eq!(alice.arrived_before_pong(), Vec::<String>::new());
    assert_eq!(carol.arrived_before_pong(), Vec::<String>::new());
    assert!(alice.cmd1("broadcast").starts_with("- BADARG "));
    assert!(alice.cmd1("broadcast message").starts_with("- BADARG "));
}

#[test]
fn broadcast_to_a_list_delivers_stores_and_reports_each_user() {
    let server = Server::start(&[]);
    drop(server.user("dave"));
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    let mut carol = server.user("carol");
    assert_eq!(carol.cmd1("block alice"), "+ blocked alice");
    let reply = alice.cmd("broadcast user bob dave carol nobody alice bob message hi list");
    assert_eq!(
        reply,
        vec![
            "= bob delivered",
            "= dave stored",
            "= carol blocked",
            "= nobody nouser",
            "+ sent to 2 of 4"
        ]
    );
    let event = bob.event();
    assert!(
        event.starts_with("* broadcast alice ") && event.ends_with(" hi list"),
        "{event}"
    );
    let got = bob.arrived_before_pong();
    assert!(
        got.is_empty(),
        "duplicate listed user got it twice: {got:?}"
    );
    let mut dave = server.connect();
    dave.login("dave", "password-dave");
    let inbox = dave.cmd("inbox");
    assert!(inbox[0].ends_with(" alice hi list"), "{inbox:?}");
    for bad in [
        "broadcast user message hi",
        "broadcast user bob",
        "broadcast user bob message",
        "broadcast user b@d message hi",
    ] {
        assert!(alice.cmd1(bad).starts_with("- BADARG "), "{bad}");
    }
}

// ----- history, block -------------------------------------------------------

#[test]
fn history_shows_both_directions_oldest_first() {
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    let _carol = server.user("carol");
    assert_eq!(alice.cmd1("send bob one"), "+ delivered");
    assert_eq!(bob.cmd1("send alice two"), "+ delivered");
    assert_eq!(alice.cmd1("send carol three"), "+ delivered");
    let all = alice.cmd("history");
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all[0].ends_with(" alice bob one"));
    assert!(all[1].ends_with(" bob alice two"));
    assert!(all[2].ends_with(" alice carol three"));
    assert_eq!(all[3], "+ 3 messages");
    let with_bob = alice.cmd("history bob");
    assert_eq!(with_bob.len(), 3);
    assert_eq!(with_bob[2], "+ 2 messages");
    let last = alice.cmd("history 1");
    assert_eq!(last.len(), 2);
    assert!(last[0].ends_with(" alice carol three"));
    let last_with_bob = alice.cmd("history bob 1");
    assert!(last_with_bob[0].ends_with(" bob alice two"));
    assert!(alice.cmd1("history nobody").starts_with("- NOUSER "));
    for bad in [
        "history 0",
        "history 1001",
        "history bob x",
        "history bob 1 2",
        "history 5x",
    ] {
        assert!(alice.cmd1(bad).starts_with("- BADARG "), "{bad}");
    }
}

#[test]
fn block_unblock_and_blocked() {
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    let _bob = server.user("bob");
    let _carol = server.user("carol");
    assert_eq!(alice.cmd1("block carol"), "+ blocked carol");
    assert_eq!(alice.cmd1("block BOB"), "+ blocked bob");
    assert_eq!(
        alice.cmd("blocked"),
        vec!["= bob", "= carol", "+ 2 blocked"]
    );
    assert_eq!(alice.cmd1("unblock bob"), "+ unblocked bob");
    assert_eq!(alice.cmd("blocked"), vec!["= carol", "+ 1 blocked"]);
    assert!(alice.cmd1("block nobody").starts_with("- NOUSER "));
    assert!(alice.cmd1("unblock nobody").starts_with("- NOUSER "));
    assert!(alice.cmd1("block alice").starts_with("- BADARG "));
    assert!(alice.cmd1("block").starts_with("- BADARG "));
}

// ----- bad input ------------------------------------------------------------

#[test]
fn bad_bytes_get_their_error_and_the_connection_goes_on() {
    let server = Server::start(&["--max-line", "64"]);
    let mut alice = server.user("alice");
    let _bob = server.user("bob");
    alice.send_raw(b"send bob \xc3\x28\xfe\n");
    assert!(alice.reply()[0].starts_with("- BADUTF8 "));
    alice.send_raw(b"send bob \x1b[31mred\n");
    assert!(alice.reply()[0].starts_with("- BADTEXT "));
    alice.send_raw(b"send bob a\rb\n");
    assert!(alice.reply()[0].starts_with("- BADTEXT "));
    alice.send_raw(format!("send bob {}\n", "x".repeat(100)).as_bytes());
    assert!(alice.reply()[0].starts_with("- TOOLONG "));
    // An overlong line split across writes is refused once, then we go on.
    alice.send_raw(&[b'y'; 50]);
    alice.send_raw(&[b'y'; 50]);
    alice.send_raw(b"yyy\nping\n");
    assert!(alice.reply()[0].starts_with("- TOOLONG "));
    assert_eq!(alice.reply(), vec!["+ pong"]);
    // Blank lines are not commands: no reply at all.
    alice.send_raw(b"\n  \t \r\n\r\nping\r\n");
    assert_eq!(alice.reply(), vec!["+ pong"]);
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let server = Server::start(&[]);
    drop(server.user("alice"));
    let _bob = server.user("bob");
    let mut c = server.connect();
    // Login waits on the hasher and send on the store, yet replies keep order.
    c.send_raw(b"login alice password-alice\nwhoelse\nsend bob one\nping\nsend bob two\nhistory 2\nblocked\n");
    assert!(c.reply()[0].starts_with("+ welcome alice"));
    assert_eq!(c.reply(), vec!["= bob", "+ 1 online"]);
    assert_eq!(c.reply(), vec!["+ delivered"]);
    assert_eq!(c.reply(), vec!["+ pong"]);
    assert_eq!(c.reply(), vec!["+ delivered"]);
    let history = c.reply();
    assert_eq!(history.len(), 3);
    assert!(history[1].ends_with(" two"));
    assert_eq!(c.reply(), vec!["+ 0 blocked"]);
}

#[test]
fn many_pipelined_sends_are_all_acknowledged_in_order() {
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    let n = 500;
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!("send bob m{i}\nping\n"));
    }
    alice.send_raw(batch.as_bytes());
    for _ in 0..n {
        assert_eq!(alice.reply(), vec!["+ delivered"]);
        assert_eq!(alice.reply(), vec!["+ pong"]);
    }
    for i in 0..n {
        assert!(bob.event().ends_with(&format!(" m{i}")));
    }
}

#[test]
fn a_client_that_half_closes_still_gets_every_reply() {
    let server = Server::start(&[]);
    drop(server.user("alice"));
    let mut c = server.connect();
    // The last line has no LF, as netcat users often send.
    c.send_raw(b"login alice password-alice\nwhoelse\nping");
    c.stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let lines = c.until_closed();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("+ welcome alice"));
    assert_eq!(lines[1], "+ 0 online");
    assert_eq!(lines[2], "+ pong");
}

/// Regression: telnet's Ctrl-C (`IAC IP`, `IAC DO TIMING-MARK`) was
/// answered `- BADUTF8`, with no timing-mark answer, and telnet then hid all
/// output.
#[test]
fn telnet_ctrl_c_discards_the_typed_line_and_gets_its_timing_mark() {
    use std::io::Read;
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    // Half a line, Ctrl-C, and a telnet option offer before the next line.
    alice.send_raw(b"send nobody half a li\xff\xf4\xff\xfd\x06");
    let mut answer = [0u8; 3];
    alice
        .stream
        .read_exact(&mut answer)
        .expect("timing-mark answer");
    assert_eq!(answer, [0xff, 0xfb, 0x06], "IAC WILL TIMING-MARK");
    alice.send_raw(b"\xff\xfb\x18ping\r\n");
    let mut refusal = [0u8; 3];
    alice
        .stream
        .read_exact(&mut refusal)
        .expect("option refusal");
    assert_eq!(refusal, [0xff, 0xfe, 0x18], "IAC DONT TERMINAL-TYPE");
    // The line before the Ctrl-C is gone; the next one works.
    assert_eq!(alice.reply(), vec!["+ pong"]);
    // Had it not been discarded, this would be the reply to a `send`.
    assert_eq!(alice.cmd1("ping"), "+ pong");
}

// ----- limits and timers ----------------------------------------------------

#[test]
fn over_the_rate_commands_wait_and_every_one_is_answered() {
    let server = Server::start(&["--rate", "5", "--burst", "3"]);
    let mut alice = server.user("alice");
    // register took one token; let the bucket fill up again.
    std::thread::sleep(Duration::from_millis(600));
    let started = Instant::now();
    alice.send_raw("ping\n".repeat(13).as_bytes());
    for _ in 0..13 {
        assert_eq!(alice.reply(), vec!["+ pong"]);
    }
    // Three at once, then one per 200 ms: ten more take two seconds.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1800), "answered in {took:?}");
    // Nothing was refused and the session goes on.
    assert_eq!(alice.cmd1("whoelse"), "+ 0 online");
}

#[test]
fn connections_beyond_max_clients_are_told_busy() {
    let server = Server::start(&["--max-clients", "2"]);
    // Logged in: a newcomer cannot take their place.
    let _a = server.user("alice");
    let _b = server.user("bob");
    let mut c = Client::connect(server.addr);
    assert_eq!(c.until_closed(), vec!["* bye busy"]);
}

#[test]
fn idle_sessions_are_closed() {
    let server = Server::start(&["--idle-timeout", "1"]);
    let mut alice = server.user("alice");
    let started = Instant::now();
    assert_eq!(alice.until_closed(), vec!["* bye idle"]);
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[test]
fn connections_that_never_log_in_time_out() {
    let server = Server::start(&["--login-timeout", "1"]);
    let mut c = server.connect();
    assert_eq!(c.cmd1("ping").split(' ').nth(1), Some("NOAUTH"));
    assert_eq!(c.until_closed(), vec!["* bye timeout"]);
}

/// A newly registered user on a connection with a small receive window,
/// which the test then never reads: the kernel's buffers fill quickly and
/// what the server holds for it grows.
fn slow_reader(server: &Server, name: &str) -> Client {
    let mut slow = crate::util::slow_link(server);
    let reply = slow.cmd1(&format!("register {name} password-slow"));
    assert_eq!(reply, format!("+ registered {name}"));
    slow
}

#[test]
fn a_reader_that_never_reads_is_dropped_and_others_are_unaffected() {
    // Measures the server's memory and carol's latency.
    let _serial = serial();
    let server = Server::start(&["--max-outbuf", "65536"]);
    let mut alice = server.user("alice");
    let mut carol = server.user("carol");
    // `slow` never reads, with a small receive window; kernel buffers fill,
    // then its output buffer passes the limit and the server drops it.
    let slow = slow_reader(&server, "slow");
    let text = "z".repeat(4000);
    let baseline = carol.ping_baseline();
    let mut dropped = false;
    let rss_before = server.rss_kib();
    let mut rss_peak = rss_before;
    for round in 0..5000 {
        let reply = alice.cmd1(&format!("broadcast {text}"));
        if round % 50 == 0 {
            rss_peak = rss_peak.max(server.rss_kib());
        }
        if reply == "+ sent to 1" {
            dropped = true;
            break;
        }
        assert_eq!(reply, "+ sent to 2", "round {round}");
        // carol reads and keeps a normal latency meanwhile.
        assert!(carol.event().ends_with(&text));
    }
    assert!(dropped, "the slow reader was never dropped");
    // The backlog was bounded by --max-outbuf, not by how much was sent.
    let grown = rss_peak.saturating_sub(rss_before);
    assert!(
        grown < 8 * 1024,
        "server grew by {grown} KiB while a reader lagged"
    );
    let ping = carol.ping();
    assert!(
        ping < stall_bound(baseline),
        "ping {ping:?}, {baseline:?} before the slow reader"
    );
    assert!(server.log().contains("output backlog"));
    drop(slow);
}

// ----- persistence and shutdown ---------------------------------------------

#[test]
fn accounts_messages_blocks_and_last_seen_survive_a_restart() {
    let server = Server::start(&[]);
    {
        let _bob = server.user("bob");
    }
    let mut alice = server.user("alice");
    assert_eq!(alice.cmd1("block carol").split(' ').nth(1), Some("NOUSER"));
    drop(server.user("carol"));
    assert_eq!(alice.cmd1("block carol"), "+ blocked carol");
    assert_eq!(alice.cmd1("send bob kept"), "+ stored");
    assert_eq!(alice.cmd1("quit"), "+ bye");
    alice.until_closed();
    let mut server = server.restart();
    let mut bob = server.connect();
    assert_eq!(
        bob.cmd1("login bob password-bob"),
        "+ welcome bob (1 unread message)"
    );
    assert!(bob.cmd("inbox")[0].ends_with(" alice kept"));
    assert!(bob
        .cmd("wholast 60")
        .iter()
        .any(|l| l.starts_with("= alice 20")));
    let mut alice = server.connect();
    alice.login("alice", "password-alice");
    assert_eq!(alice.cmd("blocked"), vec!["= carol", "+ 1 blocked"]);
    let (status, _) = server.signal(libc::SIGTERM);
    assert!(status.success());
}

#[test]
fn sigterm_says_bye_to_everyone_and_exits_cleanly() {
    let mut server = Server::start(&[]);
    let mut alice = server.user("alice");
    let mut anonymous = server.connect();
    let (status, took) = server.signal(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5));
    assert_eq!(alice.until_closed(), vec!["* bye shutdown"]);
    assert_eq!(anonymous.until_closed(), vec!["* bye shutdown"]);
}

#[test]
fn acknowledged_sends_survive_sigkill() {
    let mut server = Server::start(&[]);
    drop(server.user("bob"));
    let mut senders: Vec<Client> = (0..4).map(|i| server.user(&format!("s{i}"))).collect();
    // Each sender pipelines messages to offline bob; we read some acks, then kill.
    let per_sender = 200;
    for (i, s) in senders.iter_mut().enumerate() {
        let mut batch = String::new();
        for n in 0..per_sender {
            batch.push_str(&format!("send bob s{i}-{n}\n"));
        }
        s.send_raw(batch.as_bytes());
    }
    let mut acked = vec![0usize; senders.len()];
    for (i, s) in senders.iter_mut().enumerate() {
        for _ in 0..(50 + 30 * i) {
            assert_eq!(s.reply(), vec!["+ stored"]);
            acked[i] += 1;
        }
    }
    server.kill();
    let server = server.restart_after_kill();
    let mut bob = server.connect();
    bob.login("bob", "password-bob");
    let history = bob.cmd("history 1000");
    for (i, &n) in acked.iter().enumerate() {
        let mine: Vec<&String> = history
            .iter()
            .filter(|l| l.contains(&format!(" s{i}-")))
            .collect();
        assert!(
            mine.len() >= n,
            "sender {i}: {n} acknowledged, {} kept",
            mine.len()
        );
        for (k, line) in mine.iter().enumerate() {
            assert!(
                line.ends_with(&format!(" s{i}-{k}")),
                "order or duplicate: {line}"
            );
        }
    }
}

#[test]
fn users_file_is_imported_once() {
    let dir = tempfile::tempdir().expect("dir");
    let users = dir.path().join("users.txt");
    std::fs::write(
        &users,
        "alice secret-one\n\n# comment\nBob   two words here\nnot/valid x\n",
    )
    .expect("write");
    let data = dir.path().join("data");
    let users_arg = users.display().to_string();
    let mut server = Server::start_at(&data, &["--users", &users_arg]);
    let mut c = server.connect();
    c.login("alice", "secret-one");
    let mut b = server.connect();
    b.login("bob", "two words here");
    assert_eq!(c.cmd1("send bob hi"), "+ delivered");
    server.kill();
    // Importing again keeps existing accounts (and their messages) as they are.
    std::fs::write(&users, "alice changed-password\n").expect("write");
    let server = Server::start_at(&data, &["--users", &users_arg]);
    let mut c = server.connect();
    c.login("alice", "secret-one");
    assert_eq!(c.cmd("history").len(), 2);
}

/// Regression: `--users` imported passwords shorter than `register`
/// allows and kept trailing blanks.
#[test]
fn users_file_lines_follow_the_rules_of_register_and_bad_ones_are_named_by_number() {
    let dir = tempfile::tempdir().expect("dir");
    let users = dir.path().join("users.txt");
    std::fs::write(
        &users,
        "alice secret-one\nshorty pw\ntrailing spaces-after \ncarol fine password\n",
    )
    .expect("write");
    let data = dir.path().join("data");
    let users_arg = users.display().to_string();
    let server = Server::start_at(&data, &["--users", &users_arg]);
    server.connect().login("alice", "secret-one");
    server.connect().login("carol", "fine password");
    for (user, password) in [("shorty", "pw"), ("trailing", "spaces-after ")] {
        let reply = server.connect().cmd1(&format!("login {user} {password}"));
        assert!(reply.starts_with("- AUTHFAIL "), "{user}: {reply}");
    }
    let log = server.log();
    for n in [2, 3] {
        assert!(log.contains(&format!("users.txt:{n}: skipped: ")), "{log}");
    }
    for secret in ["shorty", "trailing", "spaces-after"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[test]
fn passwd_changes_the_password_once_the_old_one_is_given() {
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    assert!(alice
        .cmd1("passwd password-alice short")
        .starts_with("- BADARG "));
    assert!(alice
        .cmd1("passwd wrong-one new password")
        .starts_with("- AUTHFAIL "));
    assert!(alice
        .cmd1("passwd onlyone")
        .starts_with("- BADARG usage: passwd"));
    assert_eq!(
        alice.cmd1("passwd password-alice new password"),
        "+ password changed"
    );
    // It holds across a restart: the change was committed before the `+`.
    let server = server.restart_after_kill();
    let old = server.connect().cmd1("login alice password-alice");
    assert!(old.starts_with("- AUTHFAIL "), "{old}");
    server.connect().login("alice", "new password");
}

#[test]
#[ignore = "heavy: 5,000 sends paced at the default rate take about 8 minutes; .ci/run runs it with --ignored"]
fn a_piped_burst_of_5000_sends_at_the_default_rate_is_answered_in_full() {
    const SENDS: usize = 5_000;
    // The defaults, spelled out: the test helper turns the rate off otherwise.
    let server = Server::start(&["--rate", "10", "--burst", "20"]);
    let mut bob = server.user("bob");
    let alice = server.user("alice");
    let mut writer = alice.stream.try_clone().expect("clone");
    let script = std::thread::spawn(move || {
        let lines: String = (0..SENDS).map(|i| format!("send bob m{i}\n")).collect();
        writer
            .write_all(lines.as_bytes())
            .expect("the whole script is taken, slowly");
    });
    let mut alice = alice;
    for i in 0..SENDS {
        assert_eq!(alice.reply(), vec!["+ delivered"], "send {i}");
        let event = bob.event();
        assert!(event.ends_with(&format!(" m{i}")), "{event}");
    }
    script.join().expect("writer");
    // Still connected, nothing left over, each message stored once.
    assert_eq!(alice.cmd1("ping"), "+ pong");
    let history = alice.cmd("history bob 1000");
    assert_eq!(history.last().map(String::as_str), Some("+ 1000 messages"));
    assert!(history[history.len() - 2].ends_with(&format!(" m{}", SENDS - 1)));
}

#[test]
fn lines_left_in_the_socket_behind_a_barrier_are_all_answered() {
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    // Far more than the input buffer holds, behind an `inbox` that holds
    // the lines after it: what stays in the socket must be read once the
    // inbox is answered, without the client sending anything more.
    let mut burst = String::from("inbox\n");
    for _ in 0..40 {
        burst.push_str(&format!("send nobody {}\n", "x".repeat(3000)));
    }
    alice.send_raw(burst.as_bytes());
    assert_eq!(alice.reply(), vec!["+ 0 unread"]);
    for i in 0..40 {
        let reply = alice.reply();
        assert!(reply[0].starts_with("- NOUSER"), "line {i}: {reply:?}");
    }
}

#[test]
fn a_full_inbox_refuses_more_until_its_owner_reads_it() {
    let server = Server::start(&["--max-inbox", "2"]);
    let mut bob = server.user("bob");
    assert_eq!(bob.cmd1("quit"), "+ bye");
    let mut alice = server.user("alice");
    assert_eq!(alice.cmd1("send bob one"), "+ stored");
    assert_eq!(alice.cmd1("send bob two"), "+ stored");
    let full = alice.cmd1("send bob three");
    assert!(full.starts_with("- FULL bob's inbox is full"), "{full}");
    assert_eq!(
        alice.cmd("broadcast user bob message four"),
        vec!["= bob full", "+ sent to 0 of 1"]
    );
    let mut bob = server.connect();
    bob.login("bob", "password-bob");
    assert_eq!(bob.cmd("inbox").len(), 3, "two messages and the completion");
    assert_eq!(bob.cmd1("quit"), "+ bye");
    assert_eq!(alice.cmd1("send bob five"), "+ stored");
}

#[test]
fn history_right_after_a_send_shows_it() {
    let server = Server::start(&[]);
    let _bob = server.user("bob");
    let mut alice = server.user("alice");
    for i in 0..20 {
        // Pipelined: the history is read on its own connection, and must
        // still see the send before it.
        alice.send_raw(format!("send bob m{i}\nhistory bob 1\n").as_bytes());
        assert_eq!(alice.reply(), vec!["+ delivered"]);
        let history = alice.reply();
        assert!(history[0].ends_with(&format!(" m{i}")), "{history:?}");
    }
}

#[test]
fn readers_that_never_read_are_dropped_when_all_output_passes_the_total_budget() {
    let _serial = serial();
    // Each session may hold 4 MB, but all of them together only 400 KB:
    // the total, not the per-session limit, must be what drops them.
    let server = Server::start(&["--max-outbuf", "4000000", "--max-output-total", "400000"]);
    let mut alice = server.user("alice");
    let mut carol = server.user("carol");
    let mut slow_readers = Vec::new();
    for i in 0..4 {
        slow_readers.push(slow_reader(&server, &format!("slow{i}")));
    }
    let text = "z".repeat(4000);
    let rss_before = server.rss_kib();
    let mut rss_peak = rss_before;
    let mut receivers = 5;
    for round in 0..3000 {
        let reply = alice.cmd1(&format!("broadcast {text}"));
        rss_peak = rss_peak.max(if round % 50 == 0 { server.rss_kib() } else { 0 });
        receivers = reply
            .strip_prefix("+ sent to ")
            .and_then(|n| n.parse().ok())
            .expect("sent to <n>");
        assert!(
            carol.event().ends_with(&text),
            "carol reads on, round {round}"
        );
        if receivers == 1 {
            break;
        }
    }
    assert_eq!(receivers, 1, "the non-readers were never dropped");
    let log = server.log();
    assert!(log.contains("--max-output-total 400000"), "{log}");
    assert!(
        !log.contains("output backlog passed"),
        "the per-session limit acted"
    );
    let grown = rss_peak.saturating_sub(rss_before);
    assert!(grown < 8 * 1024, "server grew by {grown} KiB");
    drop(slow_readers);
}
