//! Cluster mode (`--cluster redis://...`): the link between this node's
//! loop and the other nodes, over Redis pub/sub. Two threads own the Redis
//! connections, never the loop: the publisher sends what the chat asks to
//! tell the others (and a heartbeat every [`HEARTBEAT`]); the subscriber
//! listens on the channel every node hears and on this node's own, hands
//! what arrives to the loop through a bounded channel and the loop's
//! waker (as the store thread does), and says when a node falls silent
//! for [`NODE_EXPIRY`] or when Redis itself is lost or back.
//!
//! Nothing is kept in Redis: presence lives in each node's memory and is
//! gossiped (a node announces its users on every (re)connection and asks
//! the others for theirs), accounts and messages live in PostgreSQL. So a
//! Redis restart loses nothing; the nodes rebuild their picture of each
//! other as they reconnect. What each node does with a message is the
//! chat core's (`commands/cluster.rs`).

pub mod bus;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::Waker;

pub use bus::{Bus, Envelope};

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which a node counts as dead and its users as offline.
/// Five heartbeats: a node busy for a moment, or a Redis hiccup shorter
/// than this, does not drop everyone on it.
pub const NODE_EXPIRY: Duration = Duration::from_secs(5);
/// Messages waiting for the publisher. Beyond this (Redis far slower than
/// the chat) messages are dropped and counted: everything a node publishes
/// is either an optimisation over the database (a `Deliver`: the message
/// is in the recipient's inbox anyway) or repaired by the next `Presence`.
/// A message holds at most a line (4 KiB by default), so this bounds the
/// queue to 32 MiB at the longest lines.
const OUTBOX: usize = 8192;
/// Messages from other nodes waiting for the loop, bounded the same way.
/// When full, the subscriber stops reading and Redis buffers for it, up
/// to its `client-output-buffer-limit pubsub` (32 MB by default), past
/// which Redis disconnects it: the node then counts as cut off, and
/// catches up when it subscribes again (presence and accounts).
const INBOX: usize = 8192;
/// Most messages sent in one pipeline.
const PIPELINE: usize = 1024;
/// How long a Redis read or write may take before the connection counts
/// as broken.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The subscriber's read timeout: how often it looks at the clock (for
/// silent nodes) and at the stop flag.
const TICK: Duration = Duration::from_millis(200);
/// First and longest wait before reconnecting to Redis.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the subscriber hands the loop.
#[derive(Debug)]
pub enum Inbound {
    /// The publisher (re)connected: announce our users, ask for theirs.
    Connected,
    /// The subscriber (re)subscribed: the same, and after a [`Inbound::Lost`]
    /// catch up with what was announced meanwhile.
    Subscribed,
    /// The subscription broke: nothing is known of the other nodes now.
    Lost,
    /// A message from another node.
    Message(Envelope),
    /// A node silent for [`NODE_EXPIRY`].
    NodeDown(String),
    /// A node heard from for the first time since this node subscribed,
    /// or again after it fell silent: ask it who it has (its users were
    /// dropped when it went silent, and its heartbeats do not list them).
    NodeUp(String),
}

/// The loop's end of the link.
pub struct ClusterLink {
    node: String,
    outbox: Option<SyncSender<(Option<String>, Bus)>>,
    inbox: Receiver<Inbound>,
    /// Set by the subscriber when it queued something and woke the loop;
    /// cleared by the loop before draining, so one wake covers a burst.
    woken: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Messages the publisher could not send (full outbox, Redis down).
    pub dropped: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl ClusterLink {
    /// Starts the publisher and subscriber for node `node` on Redis at
    /// `url`. Fails only if the URL is malformed: an unreachable Redis is
    /// retried in the background while the node serves its own users.
    pub fn start(url: &str, node: String, waker: Arc<Waker>) -> Result<ClusterLink, String> {
        let client = redis::Client::open(url)
            .map_err(|e| format!("--cluster {}: {e}", crate::config::redacted(url)))?;
        let (out_tx, out_rx) = mpsc::sync_channel(OUTBOX);
        let (in_tx, in_rx) = mpsc::sync_channel(INBOX);
        let stop = Arc::new(AtomicBool::new(false));
        let woken = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let feed = Feed {
            tx: in_tx,
            waker,
            woken: Arc::clone(&woken),
        };
        let publisher = {
            let (client, node, dropped) = (client.clone(), node.clone(), Arc::clone(&dropped));
            let feed = feed.clone();
            thread::Builder::new()
                .name("cluster-pub".into())
                .spawn(move || publish_loop(client, node, out_rx, dropped, feed))
                .map_err(|e| format!("cannot start the cluster publisher: {e}"))?
        };
        let subscriber = {
            let (node, stop) = (node.clone(), Arc::clone(&stop));
            thread::Builder::new()
                .name("cluster-sub".into())
                .spawn(move || subscribe_loop(client, node, feed, stop))
                .map_err(|e| format!("cannot start the cluster subscriber: {e}"))?
        };
        Ok(ClusterLink {
            node,
            outbox: Some(out_tx),
            inbox: in_rx,
            woken,
            stop,
            dropped,
            threads: vec![publisher, subscriber],
        })
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Queues `msg` for node `to`, or for every node. Never blocks: if the
    /// publisher is that far behind, the message is dropped and counted.
    pub fn publish(&self, to: Option<String>, msg: Bus) {
        let Some(outbox) = &self.outbox else {
            return;
        };
        match outbox.try_send((to, msg)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                if self
                    .dropped
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(10_000)
                {
                    log::warn!("cluster: publisher behind; messages to other nodes dropped");
                }
            }
        }
    }

    /// Starts a pass's draining: a wake from here on is for what arrives
    /// after it.
    pub fn begin_drain(&self) {
        self.woken.store(false, Ordering::SeqCst);
    }

    /// The next thing the subscriber queued, if any.
    pub fn next(&self) -> Option<Inbound> {
        self.inbox.try_recv().ok()
    }

    /// The loop stopped draining with things left: it must not sleep on
    /// them (see [`ClusterLink::has_pending`]).
    pub fn more_later(&self) {
        self.woken.store(true, Ordering::SeqCst);
    }

    /// Whether something is (or may be) queued for the loop.
    pub fn has_pending(&self) -> bool {
        self.woken.load(Ordering::SeqCst)
    }

    /// Stops both threads: the publisher sends what is queued (it is told
    /// by its channel closing), the subscriber at its next tick.
    pub fn shutdown(self) {
        let ClusterLink {
            outbox,
            inbox,
            stop,
            threads,
            ..
        } = self;
        stop.store(true, Ordering::SeqCst);
        drop(outbox);
        // A subscriber blocked on a full queue gets an error and returns.
        drop(inbox);
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Connects with the I/O timeouts every cluster connection uses.
fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let conn = client.get_connection_with_timeout(IO_TIMEOUT)?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

/// The publisher: sends queued messages in pipelines, and a heartbeat every
/// [`HEARTBEAT`]. While Redis is unreachable, messages are dropped (see
/// [`OUTBOX`] for why that is safe) and connecting is retried with backoff.
/// Each time it connects it tells the loop ([`Inbound::Connected`]), which
/// announces this node's users again: whatever was dropped meanwhile, the
/// others' picture of this node is rebuilt.
fn publish_loop(
    client: redis::Client,
    node: String,
    rx: Receiver<(Option<String>, Bus)>,
    dropped: Arc<AtomicU64>,
    feed: Feed,
) {
    let mut conn: Option<redis::Connection> = None;
    let mut backoff = BACKOFF_MIN;
    let mut retry_at = Instant::now();
    let mut next_beat = Instant::now();
    let mut batch = Vec::with_capacity(PIPELINE);
    let mut closing = false;
    while !closing {
        let wait = next_beat.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(m) => batch.push(m),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => closing = true,
        }
        while batch.len() < PIPELINE {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        if now >= next_beat {
            batch.push((None, Bus::Heartbeat));
            next_beat = now + HEARTBEAT;
        }
        if batch.is_empty() {
            continue;
        }
        if conn.is_none() && now >= retry_at {
            match connect(&client) {
                Ok(c) => {
                    log::info!("cluster: publishing to Redis as node {node}");
                    conn = Some(c);
                    backoff = BACKOFF_MIN;
                    feed.send(Inbound::Connected);
                }
                Err(e) => {
                    if backoff == BACKOFF_MIN {
                        log::warn!("cluster: cannot reach Redis to publish: {e}; retrying");
                    }
                    retry_at = now + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            let lost = batch.iter().filter(|(_, m)| *m != Bus::Heartbeat).count();
            dropped.fetch_add(lost as u64, Ordering::Relaxed);
            batch.clear();
            continue;
        };
        let mut pipe = redis::pipe();
        for (to, msg) in batch.drain(..) {
            let channel = match to {
                Some(target) => bus::node_channel(&target),
                None => bus::ALL_CHANNEL.to_string(),
            };
            let env = Envelope {
                from: node.clone(),
                msg,
            };
            pipe.cmd("PUBLISH").arg(channel).arg(env.encode()).ignore();
        }
        if let Err(e) = pipe.query::<()>(c) {
            log::warn!("cluster: publishing failed: {e}; reconnecting");
            conn = None;
            retry_at = Instant::now();
        }
    }
}

/// The way to the loop (both threads have one).
#[derive(Clone)]
struct Feed {
    tx: SyncSender<Inbound>,
    waker: Arc<Waker>,
    woken: Arc<AtomicBool>,
}

impl Feed {
    /// Queues one item and wakes the loop, unless a wake is already pending.
    /// Blocks while the loop's queue is full. False once the loop is gone.
    fn send(&self, item: Inbound) -> bool {
        if self.tx.send(item).is_err() {
            return false;
        }
        if !self.woken.swap(true, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
        true
    }
}

/// Waits `d`, a tick at a time; false if told to stop meanwhile.
fn pause(d: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
    }
    !stop.load(Ordering::SeqCst)
}

/// The subscriber: (re)subscribes with backoff, forwards other nodes'
/// messages, and reports nodes that fall silent.
fn subscribe_loop(client: redis::Client, node: String, feed: Feed, stop: Arc<AtomicBool>) {
    let own = bus::node_channel(&node);
    let mut backoff = BACKOFF_MIN;
    let mut was_connected = false;
    while !stop.load(Ordering::SeqCst) {
        let mut conn = match connect(&client) {
            Ok(c) => c,
            Err(e) => {
                if backoff == BACKOFF_MIN {
                    log::warn!("cluster: cannot reach Redis: {e}; retrying");
                }
                if !pause(backoff, &stop) {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let mut pubsub = conn.as_pubsub();
        if let Err(e) = pubsub
            .subscribe(&[bus::ALL_CHANNEL, own.as_str()])
            .and_then(|()| pubsub.set_read_timeout(Some(TICK)))
        {
            log::warn!("cluster: cannot subscribe: {e}; retrying");
            if !pause(backoff, &stop) {
                return;
            }
            continue;
        }
        backoff = BACKOFF_MIN;
        log::info!(
            "cluster: node {node} {} Redis",
            if was_connected {
                "back on"
            } else {
                "joined the cluster on"
            }
        );
        was_connected = true;
        if !feed.send(Inbound::Subscribed) {
            return;
        }
        let mut heard: HashMap<String, Instant> = HashMap::new();
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            match pubsub.get_message() {
                Ok(msg) => {
                    if let Some(env) = Envelope::decode(msg.get_payload_bytes()) {
                        if env.from != node {
                            let new = heard.insert(env.from.clone(), Instant::now()).is_none();
                            if new && !feed.send(Inbound::NodeUp(env.from.clone())) {
                                return;
                            }
                            if env.msg != Bus::Heartbeat && !feed.send(Inbound::Message(env)) {
                                return;
                            }
                        }
                    }
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => {
                    log::error!(
                        "cluster: lost Redis ({e}); serving this node's users alone until it is back"
                    );
                    if !feed.send(Inbound::Lost) {
                        return;
                    }
                    break;
                }
            }
            let now = Instant::now();
            let silent: Vec<String> = heard
                .iter()
                .filter(|(_, at)| now.duration_since(**at) > NODE_EXPIRY)
                .map(|(n, _)| n.clone())
                .collect();
            for n in silent {
                heard.remove(&n);
                log::warn!("cluster: node {n} silent for {NODE_EXPIRY:?}; its users are offline");
                if !feed.send(Inbound::NodeDown(n)) {
                    return;
                }
            }
        }
    }
}
