//! `--log-dir DIR`: each conversation written to its own file, as irssi's
//! autolog does: `DIR/bob.log` holds what bob sent you and what you sent
//! bob, one `<time> <from>: <text>` line each, times in UTC (RFC 3339) so the
//! files sort and compare the same everywhere. The directory is created 0700
//! and the files 0600: they are private conversations.
//!
//! What goes in a log is decided by [`entry`], which is pure; [`Autolog`]
//! only appends.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use natter_client::display::clean;
use natter_client::{Event, ServerLine};
use natter_proto::{is_valid_username, split_word};

use super::session::Sent;

/// One line for one conversation's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The other person; names the file.
    pub peer: String,
    /// The line, without LF.
    pub line: String,
}

/// What a server line adds to a conversation log, if anything: a direct
/// message received (pushed, or read from the inbox), or one of `user`'s
/// own sends once the server took it (`now` dates it). Broadcasts are not
/// conversations. A peer that is not a valid username (a broken or hostile
/// server) gets no file: the name becomes a path.
pub fn entry(line: &ServerLine, cmd: Option<&Sent>, user: &str, now: &str) -> Option<Entry> {
    let (peer, time, from, text) = match (line, cmd) {
        (ServerLine::Event(Event::Msg { from, time, text }), _) => {
            (from.as_str(), time.as_str(), from.as_str(), text.as_str())
        }
        (ServerLine::Data(fields), Some(cmd)) if cmd.word == "inbox" => {
            let (time, rest) = split_word(fields);
            let (from, text) = split_word(rest);
            (from, time, from, text)
        }
        (ServerLine::Ok(_), Some(cmd)) => {
            let (to, text) = cmd.message()?;
            (to, now, user, text)
        }
        _ => return None,
    };
    if !is_valid_username(peer) || text.is_empty() {
        return None;
    }
    Some(Entry {
        peer: peer.to_ascii_lowercase(),
        line: format!("{} {}: {}", clean(time), clean(from), clean(text)),
    })
}

/// The log directory, created (private) on first use.
pub struct Autolog {
    dir: PathBuf,
}

impl Autolog {
    /// Creates `dir` if missing, readable by its owner only.
    pub fn open(dir: &Path) -> io::Result<Autolog> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        Ok(Autolog {
            dir: dir.to_path_buf(),
        })
    }

    /// Appends `entry` to its conversation's file, creating it 0600.
    pub fn write(&self, entry: &Entry) -> io::Result<()> {
        let path = self.dir.join(format!("{}.log", entry.peer));
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(format!("{}\n", entry.line).as_bytes())
    }

    /// The directory, for messages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const T: &str = "2026-11-24T19:20:03Z";

    fn entry_of(line: &str, cmd: &str) -> Option<Entry> {
        entry(
            &natter_client::parse(line),
            Sent::of(cmd).as_ref(),
            "alice",
            T,
        )
    }

    #[test]
    fn conversations_are_messages_both_ways() {
        assert_eq!(
            entry_of(&format!("* msg Bob {T} hi there"), "ping"),
            Some(Entry {
                peer: "bob".into(),
                line: format!("{T} Bob: hi there")
            })
        );
        assert_eq!(
            entry_of(&format!("= {T} carol while you were out"), "inbox"),
            Some(Entry {
                peer: "carol".into(),
                line: format!("{T} carol: while you were out")
            })
        );
        assert_eq!(
            entry_of("+ stored", "send dave see you"),
            Some(Entry {
                peer: "dave".into(),
                line: format!("{T} alice: see you")
            })
        );
    }

    #[test]
    fn other_lines_and_unsafe_names_are_not_logged() {
        assert_eq!(entry_of(&format!("* broadcast bob {T} all"), "ping"), None);
        assert_eq!(entry_of("- NOUSER x", "send dave hi"), None);
        assert_eq!(entry_of("+ pong", "ping"), None);
        assert_eq!(entry_of(&format!("= {T} bob hi"), "history"), None);
        assert_eq!(entry_of(&format!("* msg ../../etc {T} x"), "ping"), None);
        assert_eq!(entry_of(&format!("= {T} .hidden x"), "inbox"), None);
    }

    #[test]
    fn files_are_private_and_appended() {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = dir.path().join("logs");
        let log = Autolog::open(&logs).expect("open");
        let e = |line: &str| Entry {
            peer: "bob".into(),
            line: line.into(),
        };
        log.write(&e("one")).expect("write");
        log.write(&e("two")).expect("write");
        let file = logs.join("bob.log");
        assert_eq!(fs::read_to_string(&file).expect("read"), "one\ntwo\n");
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&logs), 0o700);
        assert_eq!(log.dir(), logs);
    }
}
