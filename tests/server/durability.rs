//! Nothing acknowledged is lost: not to SIGKILL at a random moment, not to a
//! store that cannot write.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::util::Server;

const SENDERS: usize = 4;
const PER_SENDER: usize = 300;

/// How many acknowledgements to wait for before the kill: differs from run
/// to run (without a random-number crate) and lands mid-stream.
fn varying_kill_point(round: u64) -> usize {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0);
    let span = (SENDERS * PER_SENDER / 2) as u64;
    (20 + (nanos / 1000 + round * 211) % span) as usize
}

/// Where one round's kill lands: the server to kill, how many
/// acknowledgements (over all senders) to read first, and the count so far.
struct KillPoint {
    pid: i32,
    at: usize,
    acks: AtomicUsize,
}

impl KillPoint {
    /// Counts one acknowledgement read; the one that reaches the kill point
    /// sends SIGKILL at once, from the thread that read it, so the kill lands
    /// exactly there while the server is still acknowledging.
    fn ack(&self) {
        if self.acks.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
            // SAFETY: kill(2) on our own child's pid, not yet reaped (the
            // test waits for it only after the senders are done).
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            }
        }
    }
}

/// Pipelines `send` commands alternating between `bob` (offline) and
/// `carol` (online) and returns the texts whose `+` arrived before the
/// connection died.
fn pipeline_sends(mut stream: TcpStream, sender: usize, kill: Arc<KillPoint>) -> Vec<String> {
    let texts: Vec<(String, String)> = (0..PER_SENDER)
        .map(|n| {
            let to = if n % 2 == 0 { "bob" } else { "carol" };
            (to.to_string(), format!("s{sender}-{n}"))
        })
        .collect();
    let mut batch = String::new();
    for (to, text) in &texts {
        batch.push_str(&format!("send {to} {text}\n"));
    }
    let writer = {
        let mut stream = stream.try_clone().expect("clone");
        thread::spawn(move || {
            // The server may die mid-write; that is the point.
            let _ = stream.write_all(batch.as_bytes());
        })
    };
    let mut acked = Vec::new();
    let mut reader = BufReader::new(&mut stream);
    let mut line = String::new();
    while acked.len() < texts.len() {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = line.trim_end();
        if line.starts_with("* ") {
            continue;
        }
        assert!(
            line == "+ stored" || line == "+ delivered",
            "sender {sender}: unexpected reply {line:?}"
        );
        acked.push(texts[acked.len()].1.clone());
        kill.ack();
    }
    let _ = writer.join();
    acked
}

/// The texts of `user`'s history, oldest first.
fn history_texts(server: &Server, user: &str) -> Vec<String> {
    let mut c = server.connect();
    c.login(user, &format!("password-{user}"));
    let reply = c.cmd("history 1000");
    reply[..reply.len() - 1]
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn acknowledged_sends_survive_sigkill_at_random_moments() {
    for round in 0..3 {
        let mut server = Server::start(&[]);
        drop(server.user("bob"));
        let mut carol = server.user("carol");
        let streams: Vec<TcpStream> = (0..SENDERS)
            .map(|i| {
                let c = server.user(&format!("s{i}"));
                c.stream
            })
            .collect();
        // Kill while acknowledgements are streaming, the moment the chosen
        // number has been read: the riskiest moment for an ack sent too early.
        let kill = Arc::new(KillPoint {
            pid: server.pid() as i32,
            at: varying_kill_point(round),
            acks: AtomicUsize::new(0),
        });
        eprintln!("round {round}: kill point {}", kill.at);
        let workers: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let kill = Arc::clone(&kill);
                thread::spawn(move || pipeline_sends(s, i, kill))
            })
            .collect();
        // The senders end when the server dies (or, if the kill point is
        // never reached, when every send is answered).
        let acked: Vec<Vec<String>> = workers
            .into_iter()
            .map(|w| w.join().expect("sender"))
            .collect();
        server.kill();
        let total: usize = acked.iter().map(Vec::len).sum();
        eprintln!(
            "round {round}: {total} of {} sends acknowledged (kill point {})",
            SENDERS * PER_SENDER,
            kill.at
        );
        // Otherwise this round tested nothing: the kill must have landed at
        // its point, with acknowledgements still to come.
        assert!(
            total >= kill.at,
            "round {round}: never reached the kill point {}",
            kill.at
        );
        assert!(
            total < SENDERS * PER_SENDER,
            "round {round}: every send was acknowledged before the kill"
        );
        // carol was online: what she saw pushed before the kill must be stored too.
        let pushed: Vec<String> = carol
            .until_closed()
            .iter()
            .filter(|l| l.starts_with("* msg "))
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
            .collect();

        let server = server.restart_after_kill();
        let mut kept = history_texts(&server, "bob");
        kept.extend(history_texts(&server, "carol"));
        let mut count: HashMap<&str, usize> = HashMap::new();
        for text in &kept {
            *count.entry(text.as_str()).or_default() += 1;
        }
        for (text, n) in &count {
            assert_eq!(*n, 1, "round {round}: {text} stored {n} times");
        }
        for (i, texts) in acked.iter().enumerate() {
            for text in texts {
                assert!(
                    count.contains_key(text.as_str()),
                    "round {round}: acknowledged {text} lost"
                );
            }
            // Per sender, stored messages keep the order they were sent in.
            let order: Vec<usize> = kept
                .iter()
                .filter_map(|t| t.strip_prefix(&format!("s{i}-")))
                .filter_map(|n| n.parse().ok())
                .collect();
            let (evens, odds): (Vec<usize>, Vec<usize>) = order.iter().partition(|n| *n % 2 == 0);
            assert!(
                evens.windows(2).all(|w| w[0] < w[1]),
                "round {round}: order {evens:?}"
            );
            assert!(
                odds.windows(2).all(|w| w[0] < w[1]),
                "round {round}: order {odds:?}"
            );
        }
        for text in &pushed {
            assert!(
                count.contains_key(text.as_str()),
                "round {round}: pushed {text} not stored"
            );
        }
        eprintln!("round {round}: {total} acknowledged, {} stored", kept.len());
    }
}

#[test]
fn when_the_store_fails_senders_get_internal_and_service_recovers() {
    let dir = tempfile::tempdir().expect("dir");
    let fault = dir.path().join("fault");
    let fault_arg = fault.display().to_string();
    let server = Server::start(&["--store-fault-file", &fault_arg]);
    drop(server.user("bob"));
    let mut carol = server.user("carol");
    let mut alice = server.user("alice");
    assert_eq!(alice.cmd1("send bob before"), "+ stored");

    std::fs::write(&fault, b"").expect("fault on");
    assert!(alice.cmd1("send bob during").starts_with("- INTERNAL "));
    assert!(alice.cmd1("send carol during").starts_with("- INTERNAL "));
    let got = carol.arrived_before_pong();
    assert!(got.is_empty(), "an unstored message was pushed: {got:?}");
    assert!(alice.cmd1("block bob").starts_with("- INTERNAL "));
    assert!(alice.cmd1("inbox").starts_with("- INTERNAL "));
    let mut newcomer = server.connect();
    assert!(newcomer
        .cmd1("register dave password1")
        .starts_with("- INTERNAL "));
    // What needs no disk keeps working.
    assert_eq!(alice.cmd1("ping"), "+ pong");
    assert_eq!(alice.cmd1("broadcast still here"), "+ sent to 1");
    assert!(carol.event().ends_with(" still here"));
    assert!(server.log().contains("injected fault"));

    std::fs::remove_file(&fault).expect("fault off");
    assert_eq!(alice.cmd1("send bob after"), "+ stored");
    assert_eq!(
        newcomer.cmd1("register dave password1"),
        "+ registered dave"
    );
    let server = server.restart_after_kill();
    let mut bob = server.connect();
    assert_eq!(
        bob.cmd1("login bob password-bob"),
        "+ welcome bob (2 unread messages)"
    );
    let inbox = bob.cmd("inbox");
    assert!(
        inbox[0].ends_with(" before") && inbox[1].ends_with(" after"),
        "{inbox:?}"
    );
    let mut carol = server.connect();
    carol.login("carol", "password-carol");
    assert_eq!(carol.cmd("history"), vec!["+ 0 messages"]);
}

/// A small tmpfs mounted for one test and unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes, or returns why it cannot (not root,
    /// no mount permission, no `mount` command).
    fn mount(size: usize) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_refuses_sends_and_recovers_when_space_returns() {
    let fs = match Tmpfs::mount(4 << 20) {
        Ok(fs) => fs,
        // Needs root and mount rights, which CI has (.ci/run runs as root).
        // Without them this test fails rather than pass having checked
        // nothing; the fault-file test above covers the same path anywhere.
        Err(why) => panic!("cannot mount a 4 MiB tmpfs (this test needs root): {why}"),
    };
    let data = fs.dir.path().join("data");
    let server = Server::start_at(&data, &[]);
    drop(server.user("bob"));
    let mut alice = server.user("alice");
    // Fill the disk, leaving the database no room to grow.
    let filler = fs.dir.path().join("filler");
    {
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let body = "x".repeat(3000);
    let mut acked = Vec::new();
    let mut refused = false;
    for n in 0..2000 {
        let reply = alice.cmd1(&format!("send bob {n}-{body}"));
        if reply.starts_with("- INTERNAL ") {
            refused = true;
            break;
        }
        assert_eq!(reply, "+ stored");
        acked.push(n);
    }
    assert!(refused, "the full disk never refused a send");
    eprintln!("disk full after {} acknowledged sends", acked.len());
    assert!(server.log().contains("store:"), "cause not logged");
    assert_eq!(alice.cmd1("ping"), "+ pong");

    std::fs::remove_file(&filler).expect("free space");
    assert_eq!(alice.cmd1("send bob after-the-fix"), "+ stored");
    acked.push(usize::MAX);

    let server = server.restart_after_kill();
    let texts = history_texts(&server, "bob");
    let expected: Vec<String> = acked
        .iter()
        .map(|n| match n {
            &usize::MAX => "after-the-fix".to_string(),
            n => format!("{n}-{body}"),
        })
        .collect();
    let tail = &texts[texts.len().saturating_sub(expected.len())..];
    assert_eq!(tail.len(), expected.len(), "acknowledged messages missing");
    assert!(
        tail.iter().zip(&expected).all(|(a, b)| a == b),
        "stored messages differ from the acknowledged ones"
    );
}

#[test]
fn direct_messages_to_a_reader_dropped_as_slow_go_back_to_its_inbox() {
    use std::io::Read;
    let server = Server::start(&["--max-outbuf", "65536"]);
    let mut alice = server.user("alice");
    // `slow` never reads, with a small receive window.
    let mut slow = crate::util::slow_link(&server);
    assert_eq!(
        slow.cmd1("register slow password-slow"),
        "+ registered slow"
    );

    let body = "m".repeat(3000);
    let mut sent = Vec::new();
    let mut stored_after_drop = 0;
    for n in 0..5000 {
        let reply = alice.cmd1(&format!("send slow {n}-{body}"));
        sent.push(n);
        match reply.as_str() {
            "+ delivered" => {}
            "+ stored" => {
                stored_after_drop += 1;
                if stored_after_drop == 3 {
                    break;
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(stored_after_drop, 3, "the slow reader was never dropped");

    // What reached slow's socket before the drop is still readable there.
    let mut raw = Vec::new();
    let _ = slow.stream.read_to_end(&mut raw);
    // Only complete lines count: a line cut off by the drop was not delivered.
    let complete = &raw[..raw.iter().rposition(|b| *b == b'\n').unwrap_or(0)];
    let pushed: Vec<usize> = String::from_utf8_lossy(complete)
        .lines()
        .filter(|l| l.starts_with("* msg alice "))
        .filter_map(|l| l.rsplit(' ').next()?.split('-').next()?.parse().ok())
        .collect();
    let mut again = server.connect();
    again.login("slow", "password-slow");
    let mut in_inbox = Vec::new();
    loop {
        let reply = again.cmd("inbox");
        let rows = &reply[..reply.len() - 1];
        if rows.is_empty() {
            break;
        }
        in_inbox.extend(rows.iter().filter_map(|l| {
            l.rsplit(' ')
                .next()?
                .split('-')
                .next()?
                .parse::<usize>()
                .ok()
        }));
    }
    let mut all: Vec<usize> = pushed.iter().chain(&in_inbox).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        sent,
        "pushed {} + inbox {} != sent {}",
        pushed.len(),
        in_inbox.len(),
        sent.len()
    );
}

#[test]
fn a_second_natterd_on_the_same_data_directory_refuses_to_start() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let first = Server::start(&[]);
    let mut alice = first.user("alice");
    let mut second = Command::new(env!("CARGO_BIN_EXE_natterd"))
        .args([
            "--data",
            &first.data.display().to_string(),
            "--hash-cost",
            "low",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a second natterd");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait for the second natterd") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = second.kill();
            panic!("a second natterd on the same data directory kept running");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let output = second.wait_with_output().expect("its output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&output.stdout).is_empty(),
        "it must not listen"
    );
    let why = format!("in use by another natterd (pid {})", first.pid());
    assert!(stderr.contains(&why), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // The first one serves on, its data untouched.
    assert_eq!(alice.cmd1("ping"), "+ pong");
    // Every file holding messages is its owner's alone.
    for name in [
        "natter.db",
        "natter.db-wal",
        "natter.db-shm",
        "natterd.lock",
    ] {
        let mode = std::fs::metadata(first.data.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} has mode {:o}", mode & 0o777);
    }
}

#[test]
fn a_commit_that_fails_is_answered_as_unknown_not_as_not_stored() {
    let dir = tempfile::tempdir().expect("dir");
    let fault = dir.path().join("fault");
    let fault_arg = fault.display().to_string();
    let server = Server::start(&["--store-fault-file", &fault_arg]);
    drop(server.user("bob"));
    let mut alice = server.user("alice");
    // The batch runs, then its commit fails: it may or may not be on disk.
    std::fs::write(&fault, b"commit").expect("fault on");
    let reply = alice.cmd1("send bob maybe");
    assert!(reply.starts_with("- INTERNAL outcome unknown"), "{reply}");
    // A batch refused before it ran is still plainly "not stored".
    std::fs::write(&fault, b"").expect("fault on");
    let reply = alice.cmd1("send bob never");
    assert!(
        reply.starts_with("- INTERNAL message not stored"),
        "{reply}"
    );
    std::fs::remove_file(&fault).expect("fault off");
    assert_eq!(alice.cmd1("send bob after"), "+ stored");
}

#[test]
fn a_database_deleted_or_replaced_under_the_server_is_noticed_and_writes_refused() {
    for replace in [false, true] {
        let server = Server::start(&[]);
        drop(server.user("bob"));
        let mut alice = server.user("alice");
        assert_eq!(alice.cmd1("send bob before"), "+ stored");
        let db = server.data.join("natter.db");
        if replace {
            let copy = server.data.join("copy.db");
            std::fs::copy(&db, &copy).expect("copy");
            std::fs::rename(&copy, &db).expect("restore over it");
        } else {
            std::fs::remove_file(&db).expect("rm natter.db");
        }
        let reply = alice.cmd1("send bob lost");
        assert!(reply.starts_with("- INTERNAL "), "{reply}");
        assert!(alice.cmd1("block bob").starts_with("- INTERNAL "));
        let why = if replace {
            "was replaced"
        } else {
            "was deleted"
        };
        let log = server.log();
        assert!(log.contains(why), "{log}");
        assert_eq!(log.matches(why).count(), 1, "said once, not per batch");
    }
}

/// One flooder: pipelines list broadcasts tagged `<name>-<n>` until the
/// server goes away; returns the tags whose `+` it read.
fn flood_list_broadcasts(stream: TcpStream, name: String, recipients: String) -> Vec<String> {
    let mut writer = stream.try_clone().expect("clone");
    let writing = thread::spawn({
        let name = name.clone();
        move || {
            let pad = "b".repeat(2500);
            for n in 0.. {
                let line = format!("broadcast user {recipients} message {name}-{n}: {pad}\n");
                if writer.write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
        }
    });
    let mut acked = Vec::new();
    let mut reader = BufReader::new(stream);
    let mut n = 0;
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.starts_with("+ sent to 0 ") {
            panic!("{name}-{n} reached nobody: {line}");
        } else if line.starts_with("+ sent to") {
            acked.push(format!("{name}-{n}"));
            n += 1;
        } else if line.starts_with("- ") {
            n += 1;
        }
    }
    let _ = writing.join();
    acked
}

#[test]
fn sigterm_under_a_list_broadcast_flood_exits_in_time_with_every_commit_answered() {
    const FLOODERS: usize = 40;
    // No inbox cap: every broadcast stores 300 rows, however long it runs.
    let mut server = Server::start(&[
        "--rate",
        "0",
        "--max-per-ip",
        "0",
        "--hash-cost",
        "low",
        "--max-inbox",
        "0",
    ]);
    let names: Vec<String> = (0..300).map(|i| format!("r{i}")).collect();
    for name in &names {
        let mut c = server.user(name);
        assert_eq!(c.cmd1("quit"), "+ bye");
    }
    let recipients = names.join(" ");
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|i| {
            let name = format!("f{i}");
            let c = server.user(&name);
            c.stream.set_read_timeout(None).expect("no timeout");
            let recipients = recipients.clone();
            let stream = c.stream.try_clone().expect("clone");
            thread::spawn(move || {
                let acked = flood_list_broadcasts(stream, name, recipients);
                drop(c);
                acked
            })
        })
        .collect();
    thread::sleep(std::time::Duration::from_secs(2));
    let (status, took) = server.signal(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(
        took < std::time::Duration::from_secs(5),
        "natterd took {took:?} to exit after SIGTERM (the promise is 5 s)"
    );
    let mut acked: Vec<String> = flooders
        .into_iter()
        .flat_map(|f| f.join().expect("flooder"))
        .collect();
    acked.sort();
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged: no flood to test"
    );

    // What is on disk: one row holds each broadcast's text.
    let db = rusqlite::Connection::open(server.data.join("natter.db")).expect("open db");
    let mut stored: Vec<String> = db
        .prepare(
            "SELECT body FROM messages m JOIN users u ON u.id = m.sender_id
             WHERE body_of IS NULL AND u.name LIKE 'f%'",
        )
        .expect("query")
        .query_map([], |r| r.get::<_, String>(0))
        .expect("rows")
        .map(|body| {
            let body = body.expect("row");
            body.split(':').next().unwrap_or_default().to_string()
        })
        .collect();
    stored.sort();
    let unanswered: Vec<&String> = stored
        .iter()
        .filter(|t| acked.binary_search(t).is_err())
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|t| stored.binary_search(t).is_err())
        .collect();
    eprintln!(
        "{} acknowledged, {} stored, exit {took:?}",
        acked.len(),
        stored.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but not stored: {:?}",
        &lost[..lost.len().min(5)]
    );
    assert!(
        unanswered.is_empty(),
        "{} committed but never answered, e.g. {:?}",
        unanswered.len(),
        &unanswered[..unanswered.len().min(5)]
    );
}
