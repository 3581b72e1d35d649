//! What a person sets up once: the config file, the conversation logs
//! (`--log-dir`) and the notification command (`--notify`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::interactive::{exit_code, keys, logged_in, on_screen};
use crate::util::{natter, natter_bin, run, Raw, Server, TIMEOUT};

/// Waits (bounded) until `path` holds text that `done` accepts; returns it.
fn wait_for_file(path: &Path, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never got what was expected; it holds {text:?}",
            path.display()
        );
        // Polling a file another process writes: nothing to wait on.
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_config_file_gives_defaults_and_flags_win() {
    let server = Server::start();
    server.register("alice", "password-a");
    let home = tempfile::tempdir().expect("temp dir");
    fs::create_dir(home.path().join("natter")).expect("mkdir");
    fs::write(
        home.path().join("natter/config.toml"),
        format!(
            "host = \"127.0.0.1\"\nport = {}\nuser = \"alice\"\n",
            server.port()
        ),
    )
    .expect("write the config");
    let natter_with_config = || {
        let mut cmd = std::process::Command::new(natter_bin());
        cmd.env("XDG_CONFIG_HOME", home.path())
            .env("NATTER_PASSWORD", "password-a")
            .env_remove("NO_COLOR");
        cmd
    };
    // No host, port or user on the command line: all from the file.
    let out = run(&mut natter_with_config(), "ping\n");
    assert!(out.status.success(), "stderr: {}", out.stderr);
    assert_eq!(
        out.replies(),
        ["+ welcome alice (0 unread messages)", "+ pong"]
    );
    // A port on the command line wins over the file's.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = run(
        natter_with_config().args(["127.0.0.1", &closed.to_string()]),
        "ping\n",
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", out.stderr);
    assert!(out.stderr.contains(&format!(":{closed}")), "{}", out.stderr);
    // A mistake in the file is a usage error naming the key and its line.
    fs::write(
        home.path().join("natter/config.toml"),
        "user = \"alice\"\nlog_dir = \"x\"\n",
    )
    .expect("write the config");
    let out = run(&mut natter_with_config(), "ping\n");
    assert_eq!(out.status.code(), Some(2), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("line 2") && out.stderr.contains("log_dir"),
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn log_dir_keeps_each_conversation_in_a_private_file() {
    let server = Server::start();
    server.register("alice", "password-a");
    server.register("bob", "password-b");
    let logs = tempfile::tempdir().expect("temp dir");
    let dir = logs.path().join("natter-logs");
    let mut cmd = natter(&server);
    cmd.arg("--log-dir").arg(&dir).env("NO_COLOR", "1");
    let mut pty = logged_in(cmd, "alice", "password-a");
    let mut bob = Raw::login(&server, "bob", "password-b");
    bob.send("send alice hello from bob");
    bob.expect_line("+ delivered");
    pty.exp_string("bob: hello from bob")
        .expect("the message shown");
    keys(&mut pty, "/msg bob hello from alice\r");
    pty.exp_string(&on_screen("alice→bob: hello from alice"))
        .expect("the send echoed");
    let file = dir.join("bob.log");
    let text = wait_for_file(&file, |t| t.lines().count() == 2);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with("Z bob: hello from bob"), "{text}");
    assert!(lines[1].ends_with("Z alice: hello from alice"), "{text}");
    let mode = fs::metadata(&file).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the log is readable by others");
    let mode = fs::metadata(&dir).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the log directory is open to others");
    pty.send_control('d').expect("Ctrl-D");
    assert_eq!(exit_code(&mut pty), 0);
}

#[test]
fn notify_runs_a_command_with_the_sender_and_text_outside_the_shell_line() {
    let server = Server::start();
    server.register("alice", "password-a");
    server.register("bob", "password-b");
    let out = tempfile::tempdir().expect("temp dir");
    let file = out.path().join("notified");
    let mut cmd = natter(&server);
    cmd.arg("--notify")
        .arg(format!(
            "printf '%s|%s' \"$NATTER_FROM\" \"$NATTER_TEXT\" > '{}'",
            file.display()
        ))
        .env("NO_COLOR", "1");
    let mut pty = logged_in(cmd, "alice", "password-a");
    let mut bob = Raw::login(&server, "bob", "password-b");
    // Text a shell would expand if it were pasted into the command line.
    bob.send("send alice $(touch pwned) `id` ; hi");
    bob.expect_line("+ delivered");
    let got = wait_for_file(&file, |t| !t.is_empty());
    assert_eq!(got, "bob|$(touch pwned) `id` ; hi");
    assert!(!Path::new("pwned").exists() && !out.path().join("pwned").exists());
    pty.send_control('d').expect("Ctrl-D");
    assert_eq!(exit_code(&mut pty), 0);
}
