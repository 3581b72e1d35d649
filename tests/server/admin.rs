//! natterctl against a running natterd, over its admin socket: every
//! request changes the running server at once.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use crate::util::Server;

fn natterctl(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_natterctl"))
        .arg("--data")
        .arg(&server.data)
        .args(args)
        .output()
        .expect("run natterctl")
}

/// Runs natterctl, expects success, returns its stdout.
fn ok(server: &Server, args: &[&str]) -> String {
    let out = natterctl(server, args);
    assert!(
        out.status.success(),
        "natterctl {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn the_admin_socket_is_private_and_lists_users_sessions_and_stats() {
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    drop(server.user("bob"));
    let mode = std::fs::metadata(server.data.join("natterd.sock"))
        .expect("admin socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let users = ok(&server, &["users"]);
    let lines: Vec<&str> = users.lines().collect();
    assert_eq!(lines.len(), 2, "{users}");
    assert!(lines[0].starts_with("user=alice online=yes "), "{users}");
    assert!(lines[1].starts_with("user=bob online=no "), "{users}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(&server, &["users", "ali", "--json"])).expect("json");
    assert_eq!(json[0]["user"], "alice");
    assert_eq!(json.as_array().map(Vec::len), Some(1));

    let sessions: serde_json::Value =
        serde_json::from_str(&ok(&server, &["sessions", "--json"])).expect("json");
    let mine = sessions
        .as_array()
        .and_then(|s| s.iter().find(|s| s["user"] == "alice"))
        .expect("alice's session");
    assert_eq!(mine["address"], "127.0.0.1");
    assert_eq!(mine["transport"], "plain");

    alice.cmd1("send bob hello");
    let stats = ok(&server, &["stats"]);
    assert!(stats.contains("name=users value=2"), "{stats}");
    assert!(stats.contains("name=online_users value=1"), "{stats}");

    let bad = natterctl(&server, &["user", "lock", "nobody"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no such user nobody"));
}

#[test]
fn kick_and_notice_reach_the_sessions_at_once() {
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    ok(&server, &["notice", "maintenance", "at", "noon"]);
    assert_eq!(bob.event(), "* notice maintenance at noon");
    assert_eq!(alice.event(), "* notice maintenance at noon");
    ok(&server, &["kick", "alice", "flooding"]);
    assert_eq!(alice.until_closed(), vec!["* bye kicked"]);
    assert_eq!(bob.cmd1("ping"), "+ pong");
    assert!(server.log().contains("kicked by the operator: flooding"));
    assert_eq!(
        natterctl(&server, &["kick", "alice"]).status.code(),
        Some(1)
    );
}

#[test]
fn a_banned_user_is_closed_refused_and_stays_banned_after_a_restart() {
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    ok(&server, &["user", "lock", "alice"]);
    assert_eq!(alice.until_closed(), vec!["* bye banned"]);
    let mut again = server.connect();
    assert_eq!(
        again.cmd1("login alice password-alice").split(' ').nth(1),
        Some("BANNED")
    );
    // A wrong password learns nothing about the ban.
    assert_eq!(
        again.cmd1("login alice wrong-password").split(' ').nth(1),
        Some("AUTHFAIL")
    );
    let server = server.restart();
    let mut after = server.connect();
    assert_eq!(
        after.cmd1("login alice password-alice").split(' ').nth(1),
        Some("BANNED")
    );
    ok(&server, &["user", "unlock", "alice"]);
    after.login("alice", "password-alice");
}

/// Runs natterctl with `stdin` as its standard input (not a terminal).
fn natterctl_with_input(server: &Server, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_natterctl"))
        .arg("--data")
        .arg(&server.data)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run natterctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write the password");
    child.wait_with_output().expect("natterctl output")
}

#[test]
fn the_operator_adds_accounts_and_sets_passwords_while_registration_is_closed() {
    let server = Server::start(&["--registration", "closed"]);
    let made = natterctl_with_input(&server, &["user", "add", "Carol"], "carol's secret\n");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut carol = server.connect();
    carol.login("carol", "carol's secret");

    // Taken names, short passwords and unknown users are refused, exit 1.
    let taken = natterctl_with_input(&server, &["user", "add", "carol"], "another one\n");
    assert_eq!(taken.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&taken.stderr).contains("taken"));
    let short = natterctl_with_input(&server, &["user", "passwd", "carol"], "ab\n");
    assert_eq!(short.status.code(), Some(1));
    let nobody = natterctl_with_input(&server, &["user", "passwd", "nobody"], "long enough\n");
    assert_eq!(nobody.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("no such user"));

    // A reset takes effect at once, and the open session is told.
    let reset = natterctl_with_input(&server, &["user", "passwd", "carol"], "brand new pass\n");
    assert!(
        reset.status.success(),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    assert_eq!(carol.event(), "* notice your password was changed");
    let mut old = server.connect();
    assert_eq!(
        old.cmd1("login carol carol's secret").split(' ').nth(1),
        Some("AUTHFAIL")
    );
    // And it is on disk.
    let server = server.restart();
    server.connect().login("carol", "brand new pass");
}

#[test]
fn registration_can_be_closed_and_opened_while_running() {
    let server = Server::start(&[]);
    ok(&server, &["registration", "closed"]);
    let mut c = server.connect();
    assert_eq!(
        c.cmd1("register carol password-carol").split(' ').nth(1),
        Some("CLOSED")
    );
    ok(&server, &["registration", "open"]);
    assert_eq!(
        c.cmd1("register carol password-carol"),
        "+ registered carol"
    );
}

#[test]
fn natterctl_says_so_when_natterd_is_not_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_natterctl"))
        .arg("--data")
        .arg(dir.path())
        .arg("stats")
        .output()
        .expect("run natterctl");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach natterd"));
}

#[test]
fn the_log_says_who_did_what_from_where() {
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    assert_eq!(alice.cmd1("quit"), "+ bye");
    alice.until_closed();
    let mut c = server.connect();
    c.login("alice", "password-alice");
    let mut guess = server.connect();
    guess.cmd1("login hunter2-typed-as-a-name password");
    guess.cmd1("login alice wrong-password");
    ok(&server, &["kick", "alice"]);
    c.until_closed();
    let log = server.log();
    for expected in [
        "connection from 127.0.0.1:",
        "alice registered from 127.0.0.1",
        "(alice from 127.0.0.1): closed after 0 s: quit",
        "alice logged in from 127.0.0.1",
        "failed login for an unknown user from 127.0.0.1",
        "failed login for alice from 127.0.0.1",
        "(alice from 127.0.0.1) kicked by the operator",
        "(alice from 127.0.0.1): closed after",
    ] {
        assert!(log.contains(expected), "no {expected:?} in the log:\n{log}");
    }
    assert!(!log.contains("hunter2"), "an unknown name reached the log");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let server = Server::start(&["--log-format", "json"]);
    drop(server.user("alice"));
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON object per line");
        assert!(v["level"].is_string() && v["msg"].is_string(), "{line}");
    }
    assert!(log.contains("alice registered from 127.0.0.1"));
}

/// `GET /metrics` over plain HTTP, the body as text.
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    s.set_read_timeout(Some(crate::util::TIMEOUT))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: natterd\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("openmetrics-text"), "{head}");
    body.to_string()
}

/// A server with `args` serving `/metrics` on a free port, and that port.
fn with_metrics(args: &[&str]) -> (Server, std::net::SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut all = vec!["--metrics".to_string(), addr.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    (Server::start(&all), addr)
}

/// The value of the sample named exactly `name` (labels included).
fn sample(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{body}"))
}

#[test]
fn metrics_are_served_over_http_and_move_with_the_traffic() {
    let (server, addr) = with_metrics(&[]);
    let before = scrape(addr);
    assert_eq!(
        sample(&before, "natter_messages_total{kind=\"delivered\"}"),
        0.0
    );
    let mut alice = server.user("alice");
    let _bob = server.user("bob");
    for _ in 0..3 {
        assert_eq!(alice.cmd1("send bob hi"), "+ delivered");
    }
    let mut stranger = server.connect();
    stranger.cmd1("login alice wrong-password");
    let after = scrape(addr);
    assert_eq!(
        sample(&after, "natter_messages_total{kind=\"delivered\"}"),
        3.0
    );
    assert_eq!(
        sample(&after, "natter_logins_total{outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(
        sample(&after, "natter_connections{state=\"logged_in\"}"),
        2.0
    );
    assert_eq!(sample(&after, "natter_users"), 2.0);
    assert!(sample(&after, "natter_store_commit_seconds_count") >= 3.0);
    assert!(sample(&after, "natter_loop_pass_seconds_count") >= 0.0);
    assert!(after.ends_with("# EOF\n"));
    // Anything else is a 404, and natterd goes on.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("request");
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert_eq!(alice.cmd1("ping"), "+ pong");
}

#[test]
fn sessions_hold_no_buffers_once_idle() {
    // Issue 16: what an idle session keeps is multiplied by every session
    // online. A reply's buffers go once written; a fan-out receiver's are
    // kept a moment for the next line, then freed by the loop's timer.
    let (server, addr) = with_metrics(&["--rate", "0"]);
    let mut sender = server.user("sender");
    let mut receivers: Vec<_> = (0..20).map(|i| server.user(&format!("r{i}"))).collect();
    let settled = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let held = sample(&scrape(addr), "natter_session_buffer_bytes");
            if held == 0.0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{held} bytes still held {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    settled("after the logins");
    for i in 0..30 {
        assert_eq!(
            sender.cmd1(&format!("broadcast {} {i}", "x".repeat(200))),
            "+ sent to 20"
        );
    }
    for r in &mut receivers {
        for i in 0..30 {
            assert!(r.line().ends_with(&format!(" {i}")));
        }
    }
    settled("a while after the fan-out");
    assert_eq!(receivers[0].cmd1("ping"), "+ pong");
}

#[test]
fn natterctl_reload_rereads_the_settings() {
    let server = Server::start(&[]);
    let out = ok(&server, &["reload"]);
    assert!(out.is_empty(), "{out}");
    crate::config::log_with(&server, "reload: nothing to change");
}

#[test]
fn a_deleted_user_cannot_log_in_and_a_new_one_with_the_name_sees_nothing_old() {
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    assert_eq!(alice.cmd1("send bob secret one"), "+ delivered");
    assert_eq!(bob.cmd1("quit"), "+ bye");
    assert_eq!(alice.cmd1("send bob secret two"), "+ stored");
    assert_eq!(alice.cmd1("block bob"), "+ blocked bob");
    ok(&server, &["user", "del", "bob"]);
    let mut again = server.connect();
    assert_eq!(
        again.cmd1("login bob password-bob").split(' ').nth(1),
        Some("AUTHFAIL")
    );
    assert_eq!(alice.cmd1("blocked"), "+ 0 blocked");
    // Even after a restart, the name starts clean.
    let server = server.restart();
    let mut newbob = server.connect();
    assert_eq!(
        newbob.cmd1("register bob another-password"),
        "+ registered bob"
    );
    assert_eq!(newbob.cmd("inbox"), vec!["+ 0 unread"]);
    assert_eq!(newbob.cmd("history"), vec!["+ 0 messages"]);
    // alice's history keeps what bob had read, detached from the name;
    // what waited in his inbox went with it.
    let mut alice = server.connect();
    alice.login("alice", "password-alice");
    let history = alice.cmd("history");
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(history[0].contains("!deleted-"), "{history:?}");
    assert!(history[0].ends_with("secret one"), "{history:?}");
}

#[test]
fn backup_writes_a_consistent_copy_that_opens_and_holds_the_messages() {
    let server = Server::start(&[]);
    let mut alice = server.user("alice");
    drop(server.user("bob"));
    for n in 0..20 {
        assert_eq!(alice.cmd1(&format!("send bob note {n}")), "+ stored");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("copy.db");
    let copy_arg = copy.display().to_string();
    assert_eq!(ok(&server, &["backup", &copy_arg]), "");
    let mode = std::fs::metadata(&copy)
        .expect("the copy")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let db = rusqlite::Connection::open(&copy).expect("the copy opens");
    let n: i64 = db
        .query_row(
            "SELECT count(*) FROM messages m JOIN users u ON u.id = m.recipient_id
             WHERE u.name = 'bob'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(n, 20);
    // An existing file is never overwritten.
    let again = natterctl(&server, &["backup", &copy_arg]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    assert_eq!(alice.cmd1("ping"), "+ pong");
}
