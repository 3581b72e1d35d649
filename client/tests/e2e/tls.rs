//! The client over TLS against natterd's self-signed TLS listener: a whole
//! piped session with a pinned fingerprint, talking to a plaintext user in
//! both directions; `--ca` with the server's own certificate; and every way
//! verification can fail, each one clear line and a failure status.

use rexpect::process::WaitStatus;
use rexpect::session::{spawn_with_options, Options};

use crate::util::{natter_bin, natter_tls, run, Raw, Run, Running, Server, TIMEOUT};

/// `AB:CD:...` as plain lowercase hex, the other form --fingerprint takes.
fn plain_hex(fingerprint: &str) -> String {
    fingerprint.replace(':', "").to_lowercase()
}

/// The fingerprint with its first digit changed.
fn wrong(fingerprint: &str) -> String {
    let first = if fingerprint.starts_with('0') {
        "1"
    } else {
        "0"
    };
    format!("{first}{}", &fingerprint[1..])
}

/// A failed run: status 1, nothing on stdout, exactly one line on stderr
/// containing `needle`.
fn refused(out: &Run, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "stderr: {}", out.stderr);
    assert_eq!(
        out.stdout, "",
        "nothing may be shown from an unverified server"
    );
    assert_eq!(out.stderr.lines().count(), 1, "stderr: {}", out.stderr);
    assert!(
        out.stderr.starts_with("natter: TLS: ") && out.stderr.contains(needle),
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn piped_session_over_tls_with_a_pinned_fingerprint() {
    let server = Server::start_tls();
    let fp = server.tls().fingerprint.clone();
    server.register("bob", "password-b");
    let mut bob = Raw::login(&server, "bob", "password-b");
    let mut alice = Running::spawn(&mut natter_tls(
        &server,
        "127.0.0.1",
        &["--fingerprint", &fp],
    ));
    alice.write("register alice password-a\n");
    alice.expect_stdout("+ registered alice", |l| l == "+ registered alice");
    alice.write("whoelse\n");
    alice.expect_stdout("bob in whoelse", |l| l == "= bob");
    alice.expect_stdout("the whoelse count", |l| l == "+ 1 online");
    alice.write("send bob hello over tls\n");
    alice.expect_stdout("+ delivered", |l| l == "+ delivered");
    let got = bob.expect_prefix("* msg alice ");
    assert!(got.ends_with(" hello over tls"), "{got}");
    // A burst of long messages: about 100 KB of records, lines straddling
    // record and read boundaries, each still shown whole and in order.
    let pad = "y".repeat(2000);
    for i in 0..50 {
        bob.send(&format!("send alice {i} {pad}"));
    }
    for i in 0..50 {
        bob.expect_line("+ delivered");
        let text = format!("] bob: {i} {pad}");
        alice.expect_stdout(&format!("bob's message {i}"), |l| l.ends_with(&text));
    }
    alice.write("quit\n");
    alice.expect_stdout("+ bye", |l| l == "+ bye");
    alice.close_stdin();
    let out = alice.finish();
    assert!(out.status.success(), "stderr: {}", out.stderr);
    assert_eq!(out.stderr, "");
}

#[test]
fn being_replaced_over_tls_is_explained_with_a_failure_status() {
    let server = Server::start_tls();
    let fp = server.tls().fingerprint.clone();
    server.register("alice", "password-a");
    let mut client = Running::spawn(
        natter_tls(&server, "127.0.0.1", &["--fingerprint", &fp])
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
fn server_going_away_over_tls_is_a_failure() {
    let server = Server::start_tls();
    let fp = server.tls().fingerprint.clone();
    server.register("alice", "password-a");
    let mut client = Running::spawn(
        natter_tls(&server, "127.0.0.1", &["--fingerprint", &fp])
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
fn interactive_session_over_tls_receives_and_logs_out() {
    let server = Server::start_tls();
    let fp = server.tls().fingerprint.clone();
    server.register("alice", "password-a");
    server.register("bob", "password-b");
    let mut cmd = natter_tls(&server, "127.0.0.1", &["--fingerprint", &fp]);
    cmd.args(["--user", "alice"])
        .env("NATTER_PASSWORD", "password-a")
        .env("NO_COLOR", "1")
        .env("TERM", "xterm");
    let timeout = Some(TIMEOUT.as_millis() as u64);
    let mut pty =
        spawn_with_options(cmd, Options::new().timeout_ms(timeout)).expect("spawn natter on a pty");
    pty.exp_string("alice> ").expect("the prompt after login");
    let mut bob = Raw::login(&server, "bob", "password-b");
    bob.send("send alice encrypted hello");
    bob.expect_line("+ delivered");
    pty.exp_string("bob: encrypted hello")
        .expect("bob's message shown");
    pty.send_line("send bob and back").expect("type a command");
    let got = bob.expect_prefix("* msg alice ");
    assert!(got.ends_with(" and back"), "{got}");
    pty.send_control('d').expect("Ctrl-D");
    pty.exp_string("+ bye").expect("the logout confirmed");
    pty.exp_eof().expect("natter to exit");
    match pty.process().wait().expect("natter's exit status") {
        WaitStatus::Exited(_, code) => assert_eq!(code, 0),
        other => panic!("natter did not exit normally: {other:?}"),
    }
}

#[test]
fn user_flag_logs_in_over_tls_with_plain_hex_fingerprint() {
    let server = Server::start_tls();
    let fp = plain_hex(&server.tls().fingerprint);
    server.register("alice", "password-a");
    let out = run(
        natter_tls(&server, "localhost", &["--fingerprint", &fp])
            .args(["--user", "alice"])
            .env("NATTER_PASSWORD", "password-a"),
        "ping\n",
    );
    assert!(out.status.success(), "stderr: {}", out.stderr);
    assert_eq!(
        out.replies(),
        ["+ welcome alice (0 unread messages)", "+ pong"]
    );
}

#[test]
fn wrong_fingerprint_is_one_clear_line() {
    let server = Server::start_tls();
    let fp = wrong(&server.tls().fingerprint);
    let out = run(
        &mut natter_tls(&server, "127.0.0.1", &["--fingerprint", &fp]),
        "register mallory password-m\n",
    );
    refused(&out, "certificate fingerprint does not match --fingerprint");
    // The same in the plain-hex form.
    let out = run(
        &mut natter_tls(&server, "127.0.0.1", &["--fingerprint", &plain_hex(&fp)]),
        "ping\n",
    );
    refused(&out, "does not match --fingerprint");
}

#[test]
fn self_signed_server_is_not_trusted_without_a_pin_or_ca() {
    let server = Server::start_tls();
    let out = run(&mut natter_tls(&server, "127.0.0.1", &[]), "ping\n");
    refused(&out, "certificate not trusted");
    assert!(out.stderr.contains("--fingerprint"), "{}", out.stderr);
}

#[test]
fn the_servers_own_certificate_works_as_ca() {
    let server = Server::start_tls();
    let cert = server.data_dir().join("tls/self-signed-cert.pem");
    let cert = cert.to_str().expect("UTF-8 temp path");
    for (host, user) in [("127.0.0.1", "carol"), ("localhost", "dave")] {
        let out = run(
            &mut natter_tls(&server, host, &["--ca", cert]),
            &format!("register {user} password-c\nping\n"),
        );
        assert!(out.status.success(), "{host}: stderr: {}", out.stderr);
        assert_eq!(out.replies().last(), Some(&"+ pong"), "{host}");
    }
}

#[test]
fn ca_that_did_not_issue_the_certificate_is_refused() {
    let server = Server::start_tls();
    let other = Server::start_tls();
    let cert = other.data_dir().join("tls/self-signed-cert.pem");
    let out = run(
        &mut natter_tls(
            &server,
            "127.0.0.1",
            &["--ca", cert.to_str().expect("UTF-8 path")],
        ),
        "ping\n",
    );
    refused(&out, "certificate not trusted");
}

#[test]
fn tls_to_the_plaintext_port_is_explained() {
    let server = Server::start_tls();
    let fp = server.tls().fingerprint.clone();
    let out = run(
        std::process::Command::new(natter_bin())
            .args(["--tls", "--fingerprint", &fp])
            .args(["127.0.0.1", &server.port()]),
        "ping\n",
    );
    refused(&out, "did not answer in TLS");
}

#[test]
fn malformed_trust_flags_are_usage_errors() {
    let server = Server::start_tls();
    for (args, needle) in [
        (
            &["--tls", "--fingerprint", "AB:CD"][..],
            "--fingerprint must be",
        ),
        (&["--fingerprint", "AB"][..], "--tls"),
        (
            &["--tls", "--ca", "/nonexistent/ca.pem"][..],
            "cannot read --ca",
        ),
    ] {
        let out = run(
            std::process::Command::new(natter_bin())
                .args(args)
                .args(["127.0.0.1", &server.port()]),
            "",
        );
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn help_documents_the_tls_flags() {
    let out = run(std::process::Command::new(natter_bin()).arg("--help"), "");
    assert!(out.status.success());
    for needed in ["--tls", "--ca <FILE>", "--fingerprint <SHA256>", "4443"] {
        assert!(out.stdout.contains(needed), "--help lacks {needed}");
    }
}
