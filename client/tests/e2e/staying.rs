//! Staying connected, through a pseudo-terminal: the keepalive keeps a
//! silent client logged in past the server's idle timeout, and when the
//! server goes away the client reconnects, keeps the half-typed line, logs
//! in again and says how many messages wait, unless the login is refused.

use std::thread;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use std::time::Duration;

use crate::interactive::{exit_code, keys, logged_in, on_screen};
use crate::util::{natter_bin, Raw, Restartable, Server};

/// `natter 127.0.0.1 <port>` with a clean environment and no colour.
fn natter_at(port: &str, extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(natter_bin());
    cmd.args(extra)
        .args(["127.0.0.1", port])
        .env_remove("NATTER_PASSWORD")
        .env("XDG_CONFIG_HOME", crate::util::NO_CONFIG_HOME)
        .env("NO_COLOR", "1");
    cmd
}

#[test]
fn a_silent_client_stays_logged_in_past_the_idle_timeout() {
    let server = Server::start_with(&["--hash-cost", "low", "--rate", "0", "--idle-timeout", "3"]);
    server.register("alice", "password-a");
    server.register("bob", "password-b");
    let mut pty = logged_in(
        natter_at(&server.port(), &["--keepalive", "1"]),
        "alice",
        "password-a",
    );
    // Left alone for more than three idle timeouts.
    thread::sleep(Duration::from_secs(10));
    let mut bob = Raw::login(&server, "bob", "password-b");
    bob.send("whoelse");
    bob.expect_line("= alice");
    keys(&mut pty, "ping\r");
    let before = pty.exp_string("+ pong").expect("still logged in");
    // The keepalives' own replies never reach the screen.
    assert!(
        !before.contains("pong"),
        "keepalive replies shown: {before:?}"
    );
    assert!(!before.contains("idle"), "logged out meanwhile: {before:?}");
    pty.send_control('d').expect("Ctrl-D");
    assert_eq!(exit_code(&mut pty), 0);
}

#[test]
fn without_keepalive_the_idle_timeout_ends_the_session_and_the_client_comes_back() {
    // The control for the test above: with keepalives off, the same idle
    // client is logged out (and, being a drop the person did not ask for,
    // reconnects).
    let server = Server::start_with(&["--hash-cost", "low", "--rate", "0", "--idle-timeout", "2"]);
    server.register("alice", "password-a");
    let mut pty = logged_in(
        natter_at(&server.port(), &["--keepalive", "0"]),
        "alice",
        "password-a",
    );
    pty.exp_string("you were idle for too long (idle)")
        .expect("the server's idle logout");
    pty.exp_string("-- reconnecting in ").expect("a reconnect");
    pty.exp_string("-- reconnected").expect("back in");
    pty.send_control('d').expect("Ctrl-D");
    assert_eq!(exit_code(&mut pty), 0);
}

#[test]
fn a_server_restart_is_survived_with_the_typed_line_and_unread_count() {
    let mut server = Restartable::start(&[]);
    server.register("alice", "password-a");
    server.register("bob", "password-b");
    let mut pty = logged_in(natter_at(&server.port(), &[]), "alice", "password-a");
    keys(&mut pty, "send bob typed before the crash");
    pty.exp_string("before the crash")
        .expect("the typed text echoed");

    server.kill();
    pty.exp_string("lost the connection to the server")
        .expect("the drop told");
    pty.exp_string("-- reconnecting in 1 s")
        .expect("the first wait told");
    // The first tries find no server, and the waits double; the third is
    // 4 s (3 to 5 with jitter), time enough even on a loaded machine for the
    // server to come back and bob to leave a message.
    pty.exp_regex("-- reconnecting in [23] s")
        .expect("the second wait told");
    pty.exp_regex("-- reconnecting in [345] s")
        .expect("the third wait told");
    server.restart();
    let mut bob = Raw::login_to(server.addr, "bob", "password-b");
    bob.send("send alice left while you were away");
    bob.expect_line("+ stored");

    pty.exp_string("-- reconnected").expect("reconnected");
    pty.exp_string("+ welcome alice (1 unread message)")
        .expect("the unread count after logging in again");
    // The half-typed line is still there: finishing it sends all of it.
    keys(&mut pty, " and after\r");
    pty.exp_string(&on_screen("alice→bob: typed before the crash and after"))
        .expect("the kept line sent");
    let got = bob.expect_prefix("* msg alice ");
    assert!(got.ends_with(" typed before the crash and after"), "{got}");
    keys(&mut pty, "/inbox\r");
    pty.exp_string("bob: left while you were away")
        .expect("the stored message read");
    pty.send_control('d').expect("Ctrl-D");
    assert_eq!(exit_code(&mut pty), 0);
}

#[test]
fn a_refused_login_after_a_restart_ends_the_client_instead_of_retrying() {
    let mut server = Restartable::start(&[]);
    server.register("alice", "password-a");
    let mut pty = logged_in(natter_at(&server.port(), &[]), "alice", "password-a");
    // The server comes back without alice's account: her password is now
    // wrong, and retrying would only count as failed logins.
    server.restart_empty();
    pty.exp_string("-- reconnecting in").expect("a reconnect");
    pty.exp_string("natter: login failed: wrong username or password")
        .expect("the refusal told");
    assert_eq!(exit_code(&mut pty), 1);
}

#[test]
fn a_server_that_stops_answering_is_given_up_and_reconnected() {
    // SIGSTOP: the connection stays open but nothing answers, as when a
    // network path dies without a reset. Only the keepalive can notice.
    let server = Server::start();
    server.register("alice", "password-a");
    let mut pty = logged_in(
        natter_at(&server.port(), &["--keepalive", "1"]),
        "alice",
        "password-a",
    );
    let natterd = Pid::from_raw(i32::try_from(server.pid()).expect("a pid"));
    signal::kill(natterd, Signal::SIGSTOP).expect("SIGSTOP natterd");
    let told = pty.exp_string("no reply from the server in 5 s");
    // Resumed before anything can fail, so the server is never left stopped.
    let resumed = pty.exp_string("-- reconnecting in ");
    signal::kill(natterd, Signal::SIGCONT).expect("SIGCONT natterd");
    told.expect("the silent connection given up");
    resumed.expect("a reconnect");
    pty.exp_string("-- reconnected").expect("back in");
    keys(&mut pty, "ping\r");
    pty.exp_string("+ pong").expect("a working session");
    pty.send_control('d').expect("Ctrl-D");
    assert_eq!(exit_code(&mut pty), 0);
}

#[test]
fn a_session_begun_with_register_logs_in_when_it_comes_back() {
    let mut server = Restartable::start(&[]);
    let mut pty = logged_in(
        natter_at(&server.port(), &["--register"]),
        "carol",
        "password-c",
    );
    server.restart();
    pty.exp_string("-- reconnecting in").expect("a reconnect");
    // Registering again would be refused (EXISTS) and end the client.
    pty.exp_string("-- reconnected")
        .expect("back in, logged in");
    pty.exp_string("+ welcome carol")
        .expect("a login, not a register");
    pty.send_control('d').expect("Ctrl-D");
    assert_eq!(exit_code(&mut pty), 0);
}
