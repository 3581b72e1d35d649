//! `--notify CMD`: a command run on each direct message instead of the bell
//! (e.g. `notify-send "natter: $NATTER_FROM" "$NATTER_TEXT"`). The sender
//! and the text reach it as environment variables, never inside the command
//! line, so nothing a sender writes is ever parsed by the shell.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// Runs the notification command, one at a time.
pub struct Notifier {
    command: String,
    /// Set while a notification runs: messages arriving meanwhile do not
    /// start more, so a flood of messages cannot start a flood of processes.
    running: Arc<AtomicBool>,
}

impl Notifier {
    /// A notifier running `command` with `sh -c`.
    pub fn new(command: String) -> Notifier {
        Notifier {
            command,
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts the command for a message from `from`, unless one is still
    /// running. Returns a reason when it could not be started.
    pub fn notify(&self, from: &str, text: &str) -> Result<(), String> {
        if self.running.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let child = Command::new("sh")
            .args(["-c", &self.command])
            .env("NATTER_FROM", from)
            .env("NATTER_TEXT", text)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                self.running.store(false, Ordering::Release);
                return Err(format!("cannot run --notify: {e}"));
            }
        };
        let running = Arc::clone(&self.running);
        // Reaped on a thread of its own so the reader never waits for it.
        let reaper = thread::Builder::new()
            .name("natter-notify".into())
            .spawn(move || {
                let _ = child.wait();
                running.store(false, Ordering::Release);
            });
        if let Err(e) = reaper {
            self.running.store(false, Ordering::Release);
            return Err(format!("cannot wait for --notify: {e}"));
        }
        Ok(())
    }
}
