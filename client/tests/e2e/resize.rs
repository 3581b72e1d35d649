//! Resizing the terminal while the input wraps over several rows and
//! messages arrive, in tmux: a real terminal that re-wraps (reflows) its
//! rows on resize, as most do, which is what broke the line editor's own
//! redraw. The screen is read back with `capture-pane` and must hold every
//! line once, and the prompt with the whole typed line once, at the bottom.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{natter_bin, Raw, Server, TIMEOUT};

/// A tmux server of our own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts a detached `cols` x `rows` session running `command`.
    fn start(command: &str, cols: u16, rows: u16) -> Tmux {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let socket = format!(
            "natter-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let tmux = Tmux { socket };
        let (cols, rows) = (cols.to_string(), rows.to_string());
        tmux.run(&["new-session", "-d", "-x", &cols, "-y", &rows, command]);
        tmux
    }

    /// Runs a tmux command on this server; panics (the test fails) if tmux
    /// is missing or the command fails.
    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("run tmux (it must be installed: .ci/run installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The visible screen, wrapped rows joined into their logical lines,
    /// trailing blank lines dropped.
    fn screen(&self) -> Vec<String> {
        let out = self.run(&["capture-pane", "-p", "-J"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines
    }

    /// Waits (bounded) until the screen satisfies `check`; panics with the
    /// screen and `check`'s complaint if it never does.
    fn wait_for(&self, what: &str, check: impl Fn(&[String]) -> Result<(), String>) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let screen = self.screen();
            match check(&screen) {
                Ok(()) => return,
                Err(why) if Instant::now() >= deadline => {
                    panic!("{what}: {why}; the screen:\n{}", screen.join("\n"))
                }
                // Polling the screen: tmux has no way to wait for content.
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn keys(&self, text: &str) {
        self.run(&["send-keys", "-l", text]);
    }

    fn resize(&self, cols: u16) {
        self.run(&["resize-window", "-x", &cols.to_string()]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// How many screen lines are exactly `line`.
fn count(screen: &[String], line: &str) -> usize {
    screen.iter().filter(|l| l.ends_with(line)).count()
}

#[test]
fn resizing_with_a_wrapped_line_and_messages_arriving_keeps_the_screen_intact() {
    let server = Server::start();
    server.register("alice", "password-a");
    server.register("bob", "password-b");
    let command = format!(
        "env NO_COLOR=1 XDG_CONFIG_HOME=/nonexistent NATTER_PASSWORD=password-a '{}' --user alice 127.0.0.1 {}",
        natter_bin().display(),
        server.port()
    );
    let tmux = Tmux::start(&command, 40, 14);
    tmux.wait_for("the prompt", |s| match s.last() {
        Some(l) if l == "alice>" => Ok(()),
        _ => Err("no prompt yet".into()),
    });
    // Three rows at 40 columns.
    let typed = "send bob aaaaaaaaa bbbbbbbbb ccccccccc ddddddddd eeeeeeeee fffffffff ggg";
    tmux.keys(typed);
    let prompt_line = format!("alice> {typed}");
    let mut bob = Raw::login(&server, "bob", "password-b");
    let mut messages: Vec<String> = Vec::new();
    let intact = |messages: &[String]| {
        let prompt_line = prompt_line.clone();
        let messages = messages.to_vec();
        move |s: &[String]| -> Result<(), String> {
            if s.last() != Some(&prompt_line) {
                return Err("the prompt and typed line are not the last line".into());
            }
            let prompts = s.iter().filter(|l| l.contains("alice>")).count();
            if prompts != 1 {
                return Err(format!("{prompts} prompts on screen"));
            }
            if count(s, "+ welcome alice (0 unread messages)") != 1 {
                return Err("the welcome line is not there once".into());
            }
            for m in &messages {
                if count(s, &format!(" bob: {m}")) != 1 {
                    return Err(format!("{m:?} is not there once"));
                }
            }
            Ok(())
        }
    };
    for (i, cols) in [60u16, 30, 47, 40].into_iter().enumerate() {
        // A message arrives, then the window is resized at once, while the
        // editor is still drawing.
        let message = format!("message number {i} arrives");
        bob.send(&format!("send alice {message}"));
        tmux.resize(cols);
        bob.expect_line("+ delivered");
        messages.push(message);
        tmux.wait_for(&format!("the screen at {cols} columns"), intact(&messages));
    }
    // What was typed is still whole: Enter sends all of it.
    tmux.keys("\r");
    let got = bob.expect_prefix("* msg alice ");
    assert!(
        got.ends_with(" aaaaaaaaa bbbbbbbbb ccccccccc ddddddddd eeeeeeeee fffffffff ggg"),
        "{got}"
    );
}

#[test]
fn a_repaint_shows_a_typed_password_masked() {
    let server = Server::start();
    server.register("alice", "password-a");
    let command = format!(
        "env NO_COLOR=1 XDG_CONFIG_HOME=/nonexistent NATTER_PASSWORD=password-a '{}' --user alice 127.0.0.1 {}",
        natter_bin().display(),
        server.port()
    );
    let tmux = Tmux::start(&command, 60, 10);
    tmux.wait_for("the prompt", |s| match s.last() {
        Some(l) if l == "alice>" => Ok(()),
        _ => Err("no prompt yet".into()),
    });
    // Already logged in: refused, but the line on screen holds the password.
    tmux.keys("login alice password-a\r");
    tmux.wait_for("the refusal", |s| {
        if s.iter().any(|l| l.starts_with("- ALREADY")) {
            Ok(())
        } else {
            Err("no reply yet".into())
        }
    });
    tmux.resize(50);
    tmux.wait_for("the repaint", |s| {
        if s.iter().any(|l| l.contains("password-a")) {
            return Err("the password is still on screen".into());
        }
        if !s.iter().any(|l| l == "alice> login alice ***") {
            return Err("the masked line is missing".into());
        }
        Ok(())
    });
}
