//! Interactive mode through a pseudo-terminal (rexpect): what a person at a
//! terminal sees, above all that an incoming message never lands inside the
//! line being typed.

use rexpect::process::WaitStatus;
use rexpect::session::{spawn_with_options, Options, PtySession};

use crate::util::{natter, Raw, Server, TIMEOUT};

/// `natter --user <user>` on a pty, logged in through NATTER_PASSWORD.
fn client(server: &Server, user: &str, password: &str, colour: bool) -> PtySession {
    let mut cmd = natter(server);
    if !colour {
        cmd.env("NO_COLOR", "1");
    }
    logged_in(cmd, user, password)
}

/// `cmd` (a `natter` command) with `--user <user>` on a pty, logged in
/// through NATTER_PASSWORD, at its first prompt.
pub fn logged_in(mut cmd: std::process::Command, user: &str, password: &str) -> PtySession {
    cmd.args(["--user", user])
        .env("NATTER_PASSWORD", password)
        .env("TERM", "xterm");
    let timeout = Some(TIMEOUT.as_millis() as u64);
    let mut pty =
        spawn_with_options(cmd, Options::new().timeout_ms(timeout)).expect("spawn natter on a pty");
    pty.exp_string(&format!("{user}> "))
        .expect("the prompt after login");
    pty
}

/// `text` as rexpect reports the pty's output: one char per byte, so
/// anything beyond ASCII (the `→` of a conversation) must be matched in that
/// form.
pub fn on_screen(text: &str) -> String {
    text.bytes().map(char::from).collect()
}

/// Types `text` (rexpect buffers until a newline or an explicit flush).
pub fn keys(pty: &mut PtySession, text: &str) {
    pty.send(text).expect("type into the pty");
    pty.flush().expect("flush the pty");
}

/// Waits for the client to exit and returns its status code.
pub fn exit_code(pty: &mut PtySession) -> i32 {
    pty.exp_eof().expect("natter to exit");
    match pty.process().wait().expect("natter's exit status") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("natter did not exit normally: {other:?}"),
    }
}

fn two_users() -> Server {
    let server = Server::start();
    server.register("alice", "password-a");
    server.register("bob", "password-b");
    server
}

#[test]
fn incoming_message_keeps_the_partly_typed_line() {
    let server = two_users();
    let mut pty = client(&server, "alice", "password-a", false);
    let mut bob = Raw::login(&server, "bob", "password-b");

    keys(&mut pty, "send bob hel");
    pty.exp_string("send bob hel")
        .expect("the typed text echoed");

    bob.send("send alice incoming words");
    bob.expect_line("+ delivered");

    // The typed line is wiped (carriage return, erase line) and the message
    // written in its place; then, on the next line, the prompt is drawn again
    // with the text typed so far. A client that just printed the message
    // would leave it glued to "hel" and no prompt below it.
    let before = pty
        .exp_string("bob: incoming words")
        .expect("the message shown");
    let start_of_line = before.rsplit('\r').next().unwrap_or_default();
    let time = ["\x1b[K", "\x1b[0K", "\x1b[2K"]
        .iter()
        .find_map(|erase| start_of_line.strip_prefix(erase));
    assert!(
        time.is_some_and(|t| t.len() == 8 && t.starts_with('[') && t.ends_with("] ")),
        "the message did not start on a wiped line: {before:?}"
    );
    let between = pty
        .exp_string("alice> send bob hel")
        .expect("the prompt and typed text redrawn");
    // The bell (BEL) rings with a direct message.
    assert_eq!(
        between, "\x07\r\n",
        "output between the message and the redrawn prompt"
    );

    // The cursor was left at the end: the rest of the word lands after "hel".
    keys(&mut pty, "lo there\r");
    pty.exp_string(&on_screen("alice→bob: hello there"))
        .expect("the sent message echoed");
    let got = bob.expect_prefix("* msg alice ");
    assert!(got.ends_with(" hello there"), "bob got {got:?}");

    pty.send_control('d').expect("Ctrl-D");
    pty.exp_string("+ bye").expect("the logout confirmed");
    assert_eq!(exit_code(&mut pty), 0);
}

#[test]
fn sender_is_highlighted_only_when_colour_is_allowed() {
    let server = two_users();
    let mut bob = Raw::login(&server, "bob", "password-b");
    for colour in [true, false] {
        let mut pty = client(&server, "alice", "password-a", colour);
        bob.send(&format!("send alice colour {colour}"));
        bob.expect_line("+ delivered");
        let shown = format!(": colour {colour}");
        let before = pty.exp_string(&shown).expect("the message shown");
        assert_eq!(
            before.ends_with("\x1b[1m\x1b[36mbob\x1b[0m"),
            colour,
            "colour {colour}: {before:?}"
        );
        pty.send_control('d').expect("Ctrl-D");
        assert_eq!(exit_code(&mut pty), 0);
    }
}

#[test]
fn ctrl_c_cancels_the_line_and_ctrl_d_logs_out() {
    let server = two_users();
    let mut pty = client(&server, "alice", "password-a", false);
    let mut bob = Raw::login(&server, "bob", "password-b");
    keys(&mut pty, "send bob never sent");
    pty.exp_string("never sent").expect("the typed text echoed");
    pty.send_control('c').expect("Ctrl-C");
    // A fresh, empty prompt; the cancelled line is not sent.
    pty.exp_string("alice> ").expect("a new prompt");
    keys(&mut pty, "send bob this one\r");
    pty.exp_string(&on_screen("alice→bob: this one"))
        .expect("the next line sent");
    let got = bob.expect_prefix("* msg alice ");
    assert!(got.ends_with(" this one"), "bob got {got:?}");
    // Ctrl-C on an empty line says how to leave, and stays.
    pty.send_control('c').expect("Ctrl-C");
    pty.exp_string("Ctrl-D on an empty line (or /quit) leaves natter")
        .expect("the hint");
    bob.send("whoelse");
    bob.expect_line("= alice");
    // Ctrl-D with text on the line deletes, it does not leave.
    keys(&mut pty, "x\x1b[D");
    pty.send_control('d').expect("Ctrl-D on a non-empty line");
    keys(&mut pty, "ping\r");
    pty.exp_string("+ pong").expect("still logged in");
    pty.send_control('d').expect("Ctrl-D");
    pty.exp_string("+ bye").expect("the logout confirmed");
    assert_eq!(exit_code(&mut pty), 0);
    bob.send("whoelse");
    bob.expect_line("+ 0 online");
}

#[test]
fn being_replaced_at_the_prompt_is_explained_and_fails() {
    let server = two_users();
    let mut pty = client(&server, "alice", "password-a", false);
    keys(&mut pty, "send bob never sent");
    let _other = Raw::login(&server, "alice", "password-a");
    pty.exp_string("you logged in from somewhere else (replaced)")
        .expect("the reason shown");
    assert_eq!(exit_code(&mut pty), 1);
}

#[test]
fn tab_completes_commands_and_seen_names() {
    let server = two_users();
    let mut pty = client(&server, "alice", "password-a", false);
    let mut bob = Raw::login(&server, "bob", "password-b");
    keys(&mut pty, "whoe\t");
    pty.exp_string("whoelse").expect("the command completed");
    keys(&mut pty, "\r");
    pty.exp_string("+ 1 online").expect("whoelse answered");
    keys(&mut pty, "send b\t");
    pty.exp_string("send bob")
        .expect("the name learnt from whoelse completed");
    keys(&mut pty, "tab works\r");
    pty.exp_string(&on_screen("alice→bob: tab works"))
        .expect("sent");
    let got = bob.expect_prefix("* msg alice ");
    assert!(got.ends_with(" tab works"), "bob got {got:?}");
    pty.send_control('d').expect("Ctrl-D");
    assert_eq!(exit_code(&mut pty), 0);
}

#[test]
fn ctrl_c_at_the_password_prompt_leaves_echo_on() {
    let server = two_users();
    // A shell turns echo on (rexpect starts the pty without it), runs natter,
    // then reports the echo setting as the person's shell would find it.
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "stty echo; \"$0\" --user alice 127.0.0.1 \"$1\"; echo status=$?; stty -a",
    ])
    .arg(crate::util::natter_bin())
    .arg(server.port())
    .env_remove("NATTER_PASSWORD");
    let timeout = Some(TIMEOUT.as_millis() as u64);
    let mut pty =
        spawn_with_options(cmd, Options::new().timeout_ms(timeout)).expect("spawn sh on a pty");
    pty.exp_string("password: ").expect("the password prompt");
    pty.send_control('c').expect("Ctrl-C");
    pty.exp_string("natter: interrupted")
        .expect("the interruption reported");
    pty.exp_string("status=1").expect("a failure status");
    let (_, echo) = pty.exp_regex(" -?echo ").expect("stty's echo flag");
    assert_eq!(echo, " echo ", "the terminal was left without echo");
}

#[test]
fn sigterm_at_the_prompt_leaves_echo_on() {
    let server = two_users();
    // The shell prints its pid (natter's parent), turns echo on, runs natter,
    // then reports the echo setting as the person's shell would find it.
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "echo shell=$$; stty echo; \"$0\" --user alice 127.0.0.1 \"$1\"; echo status=$?; stty -a",
    ])
    .arg(crate::util::natter_bin())
    .arg(server.port())
    .env("NATTER_PASSWORD", "password-a")
    .env("TERM", "xterm")
    .env("NO_COLOR", "1");
    let timeout = Some(TIMEOUT.as_millis() as u64);
    let mut pty =
        spawn_with_options(cmd, Options::new().timeout_ms(timeout)).expect("spawn sh on a pty");
    let (_, shell) = pty.exp_regex("shell=[0-9]+").expect("the shell's pid");
    let shell = shell.trim_start_matches("shell=").to_string();
    pty.exp_string("alice> ")
        .expect("the prompt (editor in raw mode)");
    let killed = std::process::Command::new("pkill")
        .args(["-TERM", "-P", &shell])
        .status()
        .expect("pkill");
    assert!(killed.success(), "no natter under shell {shell}");
    pty.exp_string("status=1")
        .expect("natter ended with a failure status");
    let (_, echo) = pty.exp_regex(" -?echo ").expect("stty's echo flag");
    assert_eq!(echo, " echo ", "the terminal was left without echo");
}

#[test]
fn a_query_conversation_with_slash_commands() {
    let server = two_users();
    let mut pty = client(&server, "alice", "password-a", false);
    let mut bob = Raw::login(&server, "bob", "password-b");

    keys(&mut pty, "/query bob\r");
    pty.exp_string("-- talking to bob")
        .expect("the query opened");
    pty.exp_string(&on_screen("alice→bob> "))
        .expect("the prompt shows the query");
    keys(&mut pty, "hi bob, plain line\r");
    let got = bob.expect_prefix("* msg alice ");
    assert!(got.ends_with(" hi bob, plain line"), "bob got {got:?}");
    pty.exp_string(&on_screen("alice→bob: hi bob, plain line"))
        .expect("the message echoed into the conversation");

    bob.send("send alice hello alice");
    bob.expect_line("+ delivered");
    pty.exp_string("bob: hello alice")
        .expect("bob's reply shown");

    // /history in a query is the query's conversation, as chat lines.
    keys(&mut pty, "/history\r");
    pty.exp_string(&on_screen("alice→bob: hi bob, plain line"))
        .expect("history row: alice to bob");
    pty.exp_string(&on_screen("bob→alice: hello alice"))
        .expect("history row: bob to alice");
    pty.exp_string("+ 2 messages").expect("history completes");

    // Slash commands still work, and errors are explained locally.
    keys(&mut pty, "/who\r");
    pty.exp_string("+ 1 online").expect("/who answered");
    keys(&mut pty, "/frobnicate\r");
    pty.exp_string("-- unknown command /frobnicate (/help lists them)")
        .expect("an unknown slash command explained");
    keys(&mut pty, "/help\r");
    pty.exp_string("/msg <user> <text>")
        .expect("the help table");
    pty.exp_string("send one message to <user>")
        .expect("help describes each command");

    // /close: plain lines are protocol commands again.
    keys(&mut pty, "/close\r");
    pty.exp_string("-- no longer talking to bob")
        .expect("the query closed");
    pty.exp_string("alice> ").expect("the plain prompt back");
    keys(&mut pty, "ping\r");
    pty.exp_string("+ pong").expect("a protocol command");
    keys(&mut pty, "/msg bob one more\r");
    let got = bob.expect_prefix("* msg alice ");
    assert!(got.ends_with(" one more"), "bob got {got:?}");

    keys(&mut pty, "/quit\r");
    pty.exp_string("+ bye").expect("the logout confirmed");
    assert_eq!(exit_code(&mut pty), 0);
}
