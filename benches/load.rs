//! End-to-end load on a real natter server run in-process on 127.0.0.1
//! port 0 (its own temporary data directory, `rate 0`, `hash-cost low`),
//! driven over TCP by blocking std clients:
//!
//! - `fanout/100` and `fanout/1000`: one `broadcast` from one logged-in
//!   client, timed until every one of the 100 or 1000 other logged-in
//!   clients has read its `* broadcast` line (deliveries/s);
//! - `dm_pipelined`: 10 sender→receiver pairs, each sender pipelining a
//!   burst of `send` commands, timed until every sender has read all its
//!   `+ delivered` acks and every receiver all its `* msg` events
//!   (acknowledged, fsync'd and delivered messages/s).
//!
//! Clients, server and the reader threads share the machine, so these
//! numbers are for comparing one build with another, not a capacity figure.
//! Run with `cargo bench --bench load` (add `-- --quick` for a fast rough
//! look, or a filter such as `-- fanout/1000`).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use natter::config::HashCost;
use natter::{Config, Server, ShutdownHandle};

/// How long any single expected line may take before the bench gives up
/// with a panic instead of hanging: far beyond any healthy latency, short
/// enough that a lost message is reported within a bench run.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the server may take to stop after `shutdown` (the contract
/// allows 5 s; the rest is slack for a loaded machine).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Clients connected and registered at a time during setup. The listener's
/// accept backlog is finite; connecting 1000 at once could overflow it and
/// leave connects waiting on SYN retries for seconds.
const REGISTER_CHUNK: usize = 100;

/// Receivers one fan-out reader thread owns. Each thread does a blocking
/// read on each of its clients in turn: by the time it reaches a client
/// the server has usually written the line already, so a delivery costs one
/// `read` syscall and no polling. Non-blocking reads polled in a loop would
/// instead burn the CPU the server needs (there are only 2 cores), and one
/// thread per client would mean 1000 threads waking per broadcast. About 100
/// clients per thread keeps a few threads reading in parallel with the server.
const CLIENTS_PER_READER: usize = 100;

const FANOUT_SIZES: &[usize] = &[100, 1000];

/// Direct-message pairs, and `send`s each sender pipelines per iteration.
/// 100 is beyond the server's per-session in-flight limit (64), so the
/// bench also exercises input pausing and resuming.
const DM_PAIRS: usize = 10;
const DM_BURST: usize = 100;

/// Room for the listener, the database, the poller and the bench's own
/// files beyond the two sockets per client.
const FD_MARGIN: u64 = 256;

/// Makes sure this process may open `clients` connections: each costs two
/// descriptors here, since the server runs in the same process. Raises the
/// soft limit when it is too low rather than failing half-way through setup.
fn ensure_fd_limit(clients: usize) {
    let needed = 2 * clients as u64 + FD_MARGIN;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        panic!("getrlimit: {}", io::Error::last_os_error());
    }
    if limit.rlim_cur >= needed {
        return;
    }
    assert!(
        limit.rlim_max >= needed,
        "this bench needs {needed} file descriptors but the hard limit is {}; raise it (ulimit -Hn)",
        limit.rlim_max
    );
    limit.rlim_cur = needed;
    // SAFETY: setrlimit only reads the struct we pass it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        panic!(
            "cannot raise the file-descriptor limit to {needed}: {}",
            io::Error::last_os_error()
        );
    }
}

/// A natter server on its own thread, with its own data directory.
struct TestServer {
    addr: SocketAddr,
    shutdown: ShutdownHandle,
    thread: JoinHandle<io::Result<()>>,
    /// Kept so the directory outlives the server.
    _dir: tempfile::TempDir,
}

impl TestServer {
    fn start(max_clients: usize) -> TestServer {
        // Same reasoning as the store bench: /tmp may be tmpfs, where the
        // fsync behind every `+ delivered` would cost nothing.
        let dir = tempfile::Builder::new()
            .prefix("natter-bench-load")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("cannot create a temporary data directory");
        let config = Config {
            port: 0,
            data: dir.path().to_path_buf(),
            rate: 0.0,
            hash_cost: HashCost::Low,
            max_clients,
            // Every bench client comes from 127.0.0.1.
            max_per_ip: 0,
            ..Config::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("listener has no local address");
        // The server is built on the thread that runs it: its sessions share
        // broadcast lines by `Rc`, so it never moves between threads.
        let (ready, started) = std::sync::mpsc::channel();
        let thread = thread::Builder::new()
            .name("natter-loop".into())
            .spawn(move || {
                let server = Server::new(listener, config)?;
                let _ = ready.send(server.shutdown_handle());
                server.run()
            })
            .expect("cannot spawn the server thread");
        let shutdown = started.recv().expect("cannot start the server");
        TestServer {
            addr,
            shutdown,
            thread,
            _dir: dir,
        }
    }

    fn stop(self) {
        self.shutdown.shutdown();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !self.thread.is_finished() {
            assert!(
                Instant::now() < deadline,
                "server did not stop within {STOP_TIMEOUT:?} of shutdown"
            );
            thread::sleep(Duration::from_millis(10));
        }
        match self.thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("server loop failed: {e}"),
            Err(_) => panic!("server thread panicked"),
        }
    }
}

/// One logged-in connection, read line by line.
struct Client {
    name: String,
    /// Writes go through `get_mut()`: BufReader buffers only reads, and a
    /// `try_clone` for writing would cost a third descriptor per client.
    conn: BufReader<TcpStream>,
    line: String,
}

impl Client {
    fn connect(addr: SocketAddr, name: String) -> Client {
        let stream = TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("{name}: cannot connect to {addr}: {e}"));
        // Each command goes out in one write; don't let Nagle hold a write
        // back waiting for the ACK of the previous one.
        stream.set_nodelay(true).expect("set_nodelay");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set_read_timeout");
        Client {
            name,
            conn: BufReader::new(stream),
            line: String::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.conn.get_mut().write_all(bytes) {
            panic!("{}: write failed: {e}", self.name);
        }
    }

    /// The next line without its LF; panics on EOF, timeout or error,
    /// naming the client and what it was waiting for.
    fn next_line(&mut self, waiting_for: &str) -> &str {
        self.line.clear();
        match self.conn.read_line(&mut self.line) {
            Ok(0) => panic!("{}: connection closed waiting for {waiting_for}", self.name),
            Ok(_) => self.line.trim_end_matches('\n'),
            Err(e) => panic!("{}: read failed waiting for {waiting_for}: {e}", self.name),
        }
    }

    /// The next line, which must satisfy `ok`; panics naming the client,
    /// what it expected and what it got otherwise. `expected` is only
    /// formatted on failure, to keep allocation out of the timed path.
    fn expect_line(&mut self, ok: impl Fn(&str) -> bool, expected: impl Fn() -> String) {
        self.line.clear();
        let line = match self.conn.read_line(&mut self.line) {
            Ok(0) => panic!(
                "{}: connection closed waiting for {}",
                self.name,
                expected()
            ),
            Ok(_) => self.line.trim_end_matches('\n'),
            Err(e) => panic!("{}: read failed waiting for {}: {e}", self.name, expected()),
        };
        if !ok(line) {
            panic!("{}: expected {}, got {line:?}", self.name, expected());
        }
    }
}

/// Connects and registers `u<i>` (password `password-u<i>`) for each `i`
/// in `ids`, a chunk at a time; the registration logs each session in.
fn register_clients(addr: SocketAddr, ids: std::ops::Range<usize>) -> Vec<Client> {
    let ids: Vec<usize> = ids.collect();
    let mut clients = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(REGISTER_CHUNK) {
        let mut batch: Vec<Client> = chunk
            .iter()
            .map(|i| {
                let mut c = Client::connect(addr, format!("u{i}"));
                let cmd = format!("register u{i} password-u{i}\n");
                c.send(cmd.as_bytes());
                c
            })
            .collect();
        // Sent all before reading any, so the registrations share commits.
        for c in &mut batch {
            let expected = format!("+ registered {}", c.name);
            // The greeting comes first; anything else is a wrong reply.
            loop {
                let line = c.next_line(&expected).to_string();
                if line == expected {
                    break;
                }
                assert!(
                    line.starts_with("* hello ") || line.starts_with("* notice "),
                    "{}: expected {expected:?}, got {line:?}",
                    c.name
                );
            }
        }
        clients.append(&mut batch);
    }
    clients
}

/// A thread that, for each round number it is given, reads that round's
/// broadcast from each of its clients and reports back.
struct Reader {
    go: Sender<u64>,
    thread: JoinHandle<()>,
}

/// A server with one sender and `n` receivers, all logged in.
struct Fanout {
    server: TestServer,
    sender: Client,
    readers: Vec<Reader>,
    done: Receiver<Result<(), String>>,
    receivers: usize,
    round: u64,
}

impl Fanout {
    fn start(receivers: usize) -> Fanout {
        ensure_fd_limit(receivers + 1);
        let server = TestServer::start(receivers + 16);
        let mut clients = register_clients(server.addr, 0..receivers + 1);
        let sender = clients.remove(0);
        let (done_tx, done) = mpsc::channel();
        let mut readers = Vec::new();
        while !clients.is_empty() {
            let mine: Vec<Client> = clients
                .drain(..CLIENTS_PER_READER.min(clients.len()))
                .collect();
            let (go, rounds) = mpsc::channel::<u64>();
            let done_tx = done_tx.clone();
            let prefix = format!("* broadcast {} ", sender.name);
            let thread = thread::Builder::new()
                .name("fanout-reader".into())
                .spawn(move || read_rounds(mine, &prefix, rounds, done_tx))
                .expect("cannot spawn a reader thread");
            readers.push(Reader { go, thread });
        }
        Fanout {
            server,
            sender,
            readers,
            done,
            receivers,
            round: 0,
        }
    }

    /// Runs `iters` broadcasts one after another; returns the time from
    /// each write until the last receiver had read it, summed.
    fn rounds(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let sent_reply = format!("+ sent to {}", self.receivers);
        for _ in 0..iters {
            self.round += 1;
            // Readers are told before the clock starts, so their wake-up
            // from the channel is not counted; their wake-up from the
            // socket is part of the delivery and is.
            for r in &self.readers {
                r.go.send(self.round).expect("a reader thread is gone");
            }
            let cmd = format!("broadcast fanout {}\n", self.round);
            let start = Instant::now();
            self.sender.send(cmd.as_bytes());
            for _ in 0..self.readers.len() {
                match self.done.recv_timeout(READ_TIMEOUT * 2) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("round {}: {e}", self.round),
                    Err(e) => panic!("round {}: no word from a reader: {e}", self.round),
                }
            }
            total += start.elapsed();
            let line = self.sender.next_line(&sent_reply);
            assert_eq!(line, sent_reply, "round {}: sender's reply", self.round);
        }
        total
    }

    fn stop(self) {
        for r in self.readers {
            drop(r.go);
            r.thread.join().expect("a reader thread panicked");
        }
        drop(self.sender);
        self.server.stop();
    }
}

fn read_rounds(
    mut clients: Vec<Client>,
    prefix: &str,
    rounds: Receiver<u64>,
    done: Sender<Result<(), String>>,
) {
    for round in rounds {
        let suffix = format!(" fanout {round}");
        let mut result = Ok(());
        for c in &mut clients {
            // Reading directly (not through next_line) so that a failure
            // goes back to the timing thread as a message, not a silent
            // panic on this one.
            c.line.clear();
            let got = match c.conn.read_line(&mut c.line) {
                Ok(0) => Err("connection closed".to_string()),
                Ok(_) => Ok(c.line.trim_end_matches('\n')),
                Err(e) => Err(e.to_string()),
            };
            match got {
                Ok(line) if line.starts_with(prefix) && line.ends_with(&suffix) => {}
                Ok(line) => {
                    result = Err(format!(
                        "{}: expected {prefix}<time>{suffix}, got {line:?}",
                        c.name
                    ));
                    break;
                }
                Err(e) => {
                    result = Err(format!("{}: waiting for the broadcast: {e}", c.name));
                    break;
                }
            }
        }
        let failed = result.is_err();
        if done.send(result).is_err() || failed {
            return;
        }
    }
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for &n in FANOUT_SIZES {
        group.throughput(Throughput::Elements(n as u64));
        // Set up lazily so that a filter skipping this size skips its
        // thousand registrations too.
        let mut fixture: Option<Fanout> = None;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            let f = fixture.get_or_insert_with(|| Fanout::start(n));
            b.iter_custom(|iters| f.rounds(iters));
        });
        if let Some(f) = fixture {
            f.stop();
        }
    }
    group.finish();
}

/// One sender→receiver pair driven by its own thread.
struct Pair {
    go: Sender<u64>,
    thread: JoinHandle<()>,
}

/// A server with `DM_PAIRS` pairs of logged-in clients.
struct Dm {
    server: TestServer,
    pairs: Vec<Pair>,
    done: Receiver<Result<(), String>>,
    round: u64,
}

impl Dm {
    fn start() -> Dm {
        ensure_fd_limit(2 * DM_PAIRS);
        let server = TestServer::start(2 * DM_PAIRS + 16);
        let mut clients = register_clients(server.addr, 0..2 * DM_PAIRS).into_iter();
        let (done_tx, done) = mpsc::channel();
        let mut pairs = Vec::new();
        while let (Some(sender), Some(receiver)) = (clients.next(), clients.next()) {
            let (go, rounds) = mpsc::channel::<u64>();
            let done_tx = done_tx.clone();
            let thread = thread::Builder::new()
                .name("dm-pair".into())
                .spawn(move || drive_pair(sender, receiver, rounds, done_tx))
                .expect("cannot spawn a pair thread");
            pairs.push(Pair { go, thread });
        }
        Dm {
            server,
            pairs,
            done,
            round: 0,
        }
    }

    /// Runs `iters` rounds in which every pair pipelines `DM_BURST` sends;
    /// returns the time until every pair has all acks and all messages.
    fn rounds(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.round += 1;
            let start = Instant::now();
            for p in &self.pairs {
                p.go.send(self.round).expect("a pair thread is gone");
            }
            for _ in 0..self.pairs.len() {
                match self.done.recv_timeout(READ_TIMEOUT * 2) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("round {}: {e}", self.round),
                    Err(e) => panic!("round {}: no word from a pair: {e}", self.round),
                }
            }
            total += start.elapsed();
        }
        total
    }

    fn stop(self) {
        for p in self.pairs {
            drop(p.go);
            p.thread.join().expect("a pair thread panicked");
        }
        self.server.stop();
    }
}

fn drive_pair(
    mut sender: Client,
    mut receiver: Client,
    rounds: Receiver<u64>,
    done: Sender<Result<(), String>>,
) {
    for round in rounds {
        // All sends in one write: the server sees a pipelined burst.
        let mut burst = String::new();
        for j in 0..DM_BURST {
            burst.push_str(&format!("send {} dm {round} {j}\n", receiver.name));
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sender.send(burst.as_bytes());
            // The sends cannot back up behind unread acks: a burst of acks
            // ("+ delivered\n" each) fits easily in the socket buffers, so
            // reading all acks before all messages cannot deadlock.
            for j in 0..DM_BURST {
                sender.expect_line(
                    |l| l == "+ delivered",
                    || format!("+ delivered (ack {j} of round {round})"),
                );
            }
            let prefix = format!("* msg {} ", sender.name);
            for j in 0..DM_BURST {
                let suffix = format!(" dm {round} {j}");
                receiver.expect_line(
                    |l| l.starts_with(&prefix) && l.ends_with(&suffix),
                    || format!("{prefix}<time>{suffix}"),
                );
            }
        }));
        // The panic message itself has already gone to stderr.
        let result = result.map_err(|_| format!("pair {}→{} failed", sender.name, receiver.name));
        let failed = result.is_err();
        if done.send(result).is_err() || failed {
            return;
        }
    }
}

fn dm_pipelined(c: &mut Criterion) {
    let mut group = c.benchmark_group("dm_pipelined");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements((DM_PAIRS * DM_BURST) as u64));
    let mut fixture: Option<Dm> = None;
    let id = format!("{DM_PAIRS}x{DM_BURST}");
    group.bench_function(id, |b| {
        let dm = fixture.get_or_insert_with(Dm::start);
        b.iter_custom(|iters| dm.rounds(iters));
    });
    if let Some(dm) = fixture {
        dm.stop();
    }
    group.finish();
}

criterion_group!(benches, fanout, dm_pipelined);
criterion_main!(benches);
