//! Piped mode end to end: the real `natter` with a script on stdin against a
//! real natterd.

use crate::util::{natter, run, Raw, Running, Server};

/// A chat line as piped mode prints it: `[HH:MM] <from>: <text>`.
fn is_chat_line(line: &str, from: &str, text: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let bytes = rest.as_bytes();
    bytes.len() > 6
        && bytes[..5].iter().enumerate().all(|(i, b)| match i {
            2 => *b == b':',
            _ => b.is_ascii_digit(),
        })
        && rest[5..] == format!("] {from}: {text}")
}

#[test]
fn script_of_commands_gets_every_reply_in_order() {
    let server = Server::start();
    server.register("alice", "password-a");
    let script =
        "login alice password-a\nwhoelse\n\n   \nsend nobody hi\nPING\nwholast 5\nwholast 0\n";
    let out = run(&mut natter(&server), script);
    // Two commands were refused: every reply came, but the run says so.
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit {:?}, stderr {}",
        out.status,
        out.stderr
    );
    assert_eq!(
        out.replies(),
        [
            "+ welcome alice (0 unread messages)",
            "+ 0 online",
            "- NOUSER no such user nobody",
            "+ pong",
            "+ 0 users",
            "- BADARG usage: wholast <minutes>, minutes from 1 to 10080",
        ],
        "stdout: {}",
        out.stdout
    );
    assert!(out
        .stdout
        .starts_with("-- connected to natter (protocol 1)\n"));
    assert_eq!(out.stderr, "natter: 2 commands failed\n");
}

#[test]
fn user_flag_logs_in_without_showing_the_password() {
    let server = Server::start();
    server.register("alice", "secret-pass");
    server.register("bob", "password-b");
    let mut bob = Raw::login(&server, "bob", "password-b");
    let out = run(
        natter(&server)
            .args(["--user", "Alice"])
            .env("NATTER_PASSWORD", "secret-pass"),
        "send bob hello from a pipe\nwhoelse\n",
    );
    assert!(out.status.success(), "stderr: {}", out.stderr);
    assert_eq!(
        out.replies(),
        [
            "+ welcome alice (0 unread messages)",
            "+ delivered",
            "= bob",
            "+ 1 online"
        ]
    );
    let got = bob.expect_prefix("* msg alice ");
    assert!(got.ends_with(" hello from a pipe"), "{got}");
    assert!(!out.stdout.contains("secret-pass") && !out.stderr.contains("secret-pass"));
}

#[test]
fn events_are_shown_as_chat_lines_while_input_is_open() {
    let server = Server::start();
    server.register("alice", "password-a");
    server.register("bob", "password-b");
    let mut client = Running::spawn(
        natter(&server)
            .args(["--user", "alice"])
            .env("NATTER_PASSWORD", "password-a"),
    );
    client.write("ping\n");
    client.expect_stdout("+ pong", |l| l == "+ pong");
    let mut bob = Raw::login(&server, "bob", "password-b");
    bob.send("send alice are you there?");
    bob.expect_line("+ delivered");
    bob.send("broadcast hello all");
    bob.expect_line("+ sent to 1");
    client.expect_stdout("bob's message", |l| {
        is_chat_line(l, "bob", "are you there?")
    });
    client.expect_stdout("bob's broadcast", |l| {
        is_chat_line(l, "bob (broadcast)", "hello all")
    });
    client.close_stdin();
    let out = client.finish();
    assert!(out.status.success(), "stderr: {}", out.stderr);
}

#[test]
fn nothing_is_sent_after_quit_and_the_exit_is_clean() {
    let server = Server::start();
    server.register("alice", "password-a");
    let out = run(
        &mut natter(&server),
        "login alice password-a\nping\nquit\nping\n",
    );
    assert!(out.status.success(), "stderr: {}", out.stderr);
    assert_eq!(
        out.replies(),
        ["+ welcome alice (0 unread messages)", "+ pong", "+ bye"]
    );
}

#[test]
fn being_replaced_is_explained_with_a_failure_status() {
    let server = Server::start();
    server.register("alice", "password-a");
    let mut client = Running::spawn(
        natter(&server)
            .args(["--user", "alice"])
            .env("NATTER_PASSWORD", "password-a"),
    );
    client.write("ping\n");
    client.expect_stdout("+ pong", |l| l == "+ pong");
    let _other = Raw::login(&server, "alice", "password-a");
    let out = client.finish();
    assert_eq!(out.status.code(), Some(1), "stderr: {}", out.stderr);
    assert!(
        out.stderr
            .contains("you logged in from somewhere else (replaced)"),
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn server_going_away_is_a_failure() {
    let server = Server::start();
    server.register("alice", "password-a");
    let mut client = Running::spawn(
        natter(&server)
            .args(["--user", "alice"])
            .env("NATTER_PASSWORD", "password-a"),
    );
    client.write("ping\n");
    client.expect_stdout("+ pong", |l| l == "+ pong");
    drop(server);
    let out = client.finish();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("lost the connection to the server"),
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn wrong_password_is_one_clear_line() {
    let server = Server::start();
    server.register("alice", "password-a");
    let out = run(
        natter(&server)
            .args(["--user", "alice"])
            .env("NATTER_PASSWORD", "not-the-password"),
        "ping\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.stderr,
        "natter: login failed: wrong username or password\n"
    );
    assert_eq!(out.stdout, "");
}

#[test]
fn register_flag_creates_the_user() {
    let server = Server::start();
    let out = run(
        natter(&server)
            .args(["--user", "carol", "--register"])
            .env("NATTER_PASSWORD", "password-c"),
        "whoelse\n",
    );
    assert!(out.status.success(), "stderr: {}", out.stderr);
    assert_eq!(out.replies(), ["+ registered carol", "+ 0 online"]);
    let _carol = Raw::login(&server, "carol", "password-c");
}

#[test]
fn refused_connection_is_one_line_not_a_panic() {
    // A port that was just free: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = run(
        std::process::Command::new(crate::util::natter_bin())
            .args(["127.0.0.1", &port.to_string()]),
        "ping\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stderr.lines().count(), 1, "stderr: {}", out.stderr);
    assert!(
        out.stderr
            .starts_with(&format!("natter: cannot connect to 127.0.0.1:{port}")),
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn help_documents_modes_and_environment() {
    let out = run(
        std::process::Command::new(crate::util::natter_bin()).arg("--help"),
        "",
    );
    assert!(out.status.success());
    for needed in [
        "--user",
        "--register",
        "NATTER_PASSWORD",
        "NO_COLOR",
        "Piped use",
        "Ctrl-C",
        "Ctrl-D",
        "/query",
        "--keepalive",
        "reconnect",
        "--json",
        "--wait",
        "--log-dir",
        "--notify",
        "config.toml",
        "Exit status",
        "3  piped mode",
    ] {
        assert!(out.stdout.contains(needed), "--help lacks {needed}");
    }
}

#[test]
fn a_line_with_a_cr_inside_is_skipped_without_waiting_for_its_reply() {
    // Regression: the skipped line stayed in the queue of commands awaiting
    // a reply, so the client waited until the server timed the session out.
    let server = Server::start();
    server.register("alice", "password-a");
    let script = "login alice password-a\nping\rping\nping\n";
    let out = run(&mut natter(&server), script);
    assert!(
        out.status.success(),
        "exit {:?}, stderr {}",
        out.status,
        out.stderr
    );
    assert_eq!(
        out.replies(),
        ["+ welcome alice (0 unread messages)", "+ pong"]
    );
    assert!(
        out.stderr.contains("skipped an input line"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_refused_logout_does_not_end_the_script() {
    // `logout` before login is refused (NOAUTH) and the connection stays:
    // the rest of the script must still be sent.
    let server = Server::start();
    server.register("alice", "password-a");
    let script = "logout\nlogin alice password-a\nping\nquit\n";
    let out = run(&mut natter(&server), script);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit {:?}, stderr {}",
        out.status,
        out.stderr
    );
    let replies = out.replies();
    assert!(replies[0].starts_with("- NOAUTH "), "{replies:?}");
    assert_eq!(
        &replies[1..],
        ["+ welcome alice (0 unread messages)", "+ pong", "+ bye"]
    );
}

#[test]
fn a_failed_login_line_exits_1_and_refused_commands_exit_3() {
    let server = Server::start();
    server.register("alice", "password-a");
    let out = run(&mut natter(&server), "login alice not-her-password\nping\n");
    assert_eq!(out.status.code(), Some(1), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("login"), "stderr: {}", out.stderr);
    let out = run(
        natter(&server)
            .args(["--user", "alice"])
            .env("NATTER_PASSWORD", "password-a"),
        "ping\nblock nobody\nping\n",
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", out.stderr);
    assert_eq!(out.stderr, "natter: 1 command failed\n");
    // Every command was still answered.
    assert_eq!(out.replies().len(), 4, "{}", out.stdout);
}

#[test]
fn json_gives_one_object_per_reply_and_event() {
    let server = Server::start();
    server.register("alice", "password-a");
    server.register("bob", "password-b");
    let mut client = Running::spawn(
        natter(&server)
            .args(["--user", "alice", "--json"])
            .env("NATTER_PASSWORD", "password-a"),
    );
    client.write("ping\n");
    client.expect_stdout("the pong", |l| l.contains("pong"));
    let mut bob = Raw::login(&server, "bob", "password-b");
    bob.send("send alice hi from bob");
    bob.expect_line("+ delivered");
    client.expect_stdout("bob's message", |l| l.contains("hi from bob"));
    client.write("whoelse\nsend nobody hi\n");
    client.close_stdin();
    let out = client.finish();
    assert_eq!(out.status.code(), Some(3), "stderr: {}", out.stderr);
    let objects: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(objects.len(), 5, "{}", out.stdout);
    assert_eq!(objects[0]["command"], "login alice ***");
    assert_eq!(objects[0]["status"], "ok");
    assert_eq!(objects[1]["command"], "ping");
    assert_eq!(objects[1]["text"], "pong");
    assert_eq!(objects[2]["event"], "msg");
    assert_eq!(objects[2]["from"], "bob");
    assert_eq!(objects[2]["text"], "hi from bob");
    assert_eq!(
        objects[3],
        serde_json::json!({
            "command": "whoelse", "status": "ok", "code": null,
            "text": "1 online", "data": ["bob"],
        })
    );
    assert_eq!(objects[4]["status"], "error");
    assert_eq!(objects[4]["code"], "NOUSER");
    assert!(!out.stdout.contains("password-a"));
}

#[test]
fn a_long_script_is_paced_by_the_server_and_every_command_answered() {
    // A rate limit the script outruns many times over: the server delays
    // reading, the client keeps sending, nothing is refused or lost.
    let server = Server::start_with(&["--hash-cost", "low", "--rate", "2500", "--burst", "100"]);
    server.register("alice", "password-a");
    server.register("bob", "password-b");
    let mut bob = Raw::login(&server, "bob", "password-b");
    let mut script = String::new();
    for i in 0..5000 {
        match i % 10 {
            0 => script.push_str(&format!("send bob line {i}\n")),
            5 => script.push_str("whoelse\n"),
            _ => script.push_str("ping\n"),
        }
    }
    let out = crate::util::run_within(
        natter(&server)
            .args(["--user", "alice"])
            .env("NATTER_PASSWORD", "password-a"),
        &script,
        std::time::Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "exit {:?}, stderr {}",
        out.status,
        out.stderr
    );
    let replies = out.replies();
    let count = |reply: &str| replies.iter().filter(|l| **l == reply).count();
    assert_eq!(count("+ pong"), 4000);
    assert_eq!(count("+ 1 online"), 500);
    assert_eq!(count("+ delivered"), 500);
    for i in (0..5000).step_by(10) {
        let got = bob.expect_prefix("* msg alice ");
        assert!(
            got.ends_with(&format!(" line {i}")),
            "expected line {i}, got {got}"
        );
    }
}

#[test]
fn wait_sends_each_command_after_the_last_answer() {
    let server = Server::start();
    server.register("alice", "password-a");
    let out = run(
        natter(&server)
            .args(["--user", "alice", "--wait"])
            .env("NATTER_PASSWORD", "password-a"),
        "ping\nwhoelse\nping\n",
    );
    assert!(out.status.success(), "stderr: {}", out.stderr);
    assert_eq!(
        out.replies(),
        [
            "+ welcome alice (0 unread messages)",
            "+ pong",
            "+ 0 online",
            "+ pong"
        ]
    );
}

#[test]
fn a_connection_lost_mid_script_lists_the_unanswered_commands() {
    // One command a second: most of the script is still waiting when the
    // server dies.
    let server = Server::start_with(&["--hash-cost", "low", "--rate", "1", "--burst", "1"]);
    server.register("alice", "password-a");
    let mut client = Running::spawn(&mut natter(&server));
    client.write("login alice password-a\nping\nwhoelse\nsend bob hi\nblocked\n");
    client.close_stdin();
    client.expect_stdout("the login", |l| l.starts_with("+ welcome alice"));
    drop(server);
    let out = client.finish();
    assert_eq!(out.status.code(), Some(1), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("lost the connection to the server"),
        "stderr: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(" commands got no answer:"),
        "stderr: {}",
        out.stderr
    );
    for line in ["  whoelse", "  send bob hi", "  blocked"] {
        assert!(
            out.stderr.lines().any(|l| l == line),
            "{line:?} not listed: {}",
            out.stderr
        );
    }
}
