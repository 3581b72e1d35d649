//! What `/metrics` reports (`--metrics ADDR:PORT`), in the Prometheus text
//! exposition format, encoded by `prometheus-client`. Counters the chat
//! and the reactor keep as plain numbers are read at scrape time into a
//! registry made for that scrape; only the histograms live on, shared with
//! the threads that observe them (the store thread times its commits).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Histograms observed as things happen.
#[derive(Clone, Debug)]
pub struct Timings {
    /// Seconds one loop pass took (from poll's return to the next poll).
    pub loop_pass: Histogram,
    /// Seconds a store batch took to run and commit (its fsync included).
    pub store_commit: Histogram,
    /// Requests per store batch.
    pub store_batch: Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            // 10 µs .. ~5 s
            loop_pass: Histogram::new(exponential_buckets(0.000_01, 3.0, 12)),
            // 100 µs .. ~6 s
            store_commit: Histogram::new(exponential_buckets(0.000_1, 3.0, 11)),
            store_batch: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
        }
    }
}

/// The figures of one scrape, gathered by the reactor.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// (state, connections): `logged_in`, `not_logged_in`.
    pub connections: Vec<(&'static str, u64)>,
    /// (outcome, logins so far).
    pub logins: Vec<(&'static str, u64)>,
    /// (kind, messages so far): `delivered`, `stored`, `broadcast`.
    pub messages: Vec<(&'static str, u64)>,
    /// (reason, sessions closed so far).
    pub closed: Vec<(&'static str, u64)>,
    /// Unsent output of all sessions, bytes.
    pub output_bytes: u64,
    /// Heap the sessions' input, output and reply queues hold, bytes:
    /// room as well as content (an idle session holds none).
    pub session_buffer_bytes: u64,
    /// Bytes of writes waiting for the store.
    pub store_waiting_bytes: u64,
    /// Password checks waiting for a hashing thread.
    pub hash_queue: u64,
    /// Registered accounts.
    pub users: u64,
    /// In a cluster: whether Redis is reachable, users online on the other
    /// nodes, and messages to them dropped so far (Redis down or too slow).
    pub cluster: Option<ClusterFigures>,
}

/// What `/metrics` says of a cluster node's link to the others.
#[derive(Debug, Default)]
pub struct ClusterFigures {
    /// Subscribed to Redis now.
    pub connected: bool,
    /// Users online on the other nodes, as this node knows them.
    pub remote_sessions: u64,
    /// Messages for the other nodes never published.
    pub dropped: u64,
}

/// Encodes a scrape: `snapshot` plus the histograms.
pub fn render(snapshot: &Snapshot, timings: &Timings) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("natter");
    let labelled = |pairs: &[(&'static str, u64)], label: &'static str| {
        let family = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        for (value, n) in pairs {
            family.get_or_create(&vec![(label, *value)]).inc_by(*n);
        }
        family
    };
    let connections = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    for (state, n) in &snapshot.connections {
        connections
            .get_or_create(&vec![("state", *state)])
            .set(*n as i64);
    }
    registry.register("connections", "Open connections by state", connections);
    registry.register(
        "logins",
        "Login attempts by outcome",
        labelled(&snapshot.logins, "outcome"),
    );
    registry.register(
        "messages",
        "Messages by kind: direct ones delivered or stored, broadcast deliveries",
        labelled(&snapshot.messages, "kind"),
    );
    registry.register(
        "sessions_closed",
        "Sessions closed by reason",
        labelled(&snapshot.closed, "reason"),
    );
    let gauge = |v: u64| {
        let g = Gauge::<i64>::default();
        g.set(v as i64);
        g
    };
    registry.register(
        "output_bytes",
        "Unsent output of all sessions together",
        gauge(snapshot.output_bytes),
    );
    registry.register(
        "session_buffer_bytes",
        "Heap the sessions' input and output buffers hold, room included",
        gauge(snapshot.session_buffer_bytes),
    );
    registry.register(
        "store_waiting_bytes",
        "Bytes of commands' writes waiting for the store",
        gauge(snapshot.store_waiting_bytes),
    );
    registry.register(
        "hash_queue",
        "Password checks waiting for a hashing thread",
        gauge(snapshot.hash_queue),
    );
    registry.register("users", "Registered accounts", gauge(snapshot.users));
    if let Some(cluster) = &snapshot.cluster {
        registry.register(
            "cluster_connected",
            "1 while this node hears the others through Redis, else 0",
            gauge(u64::from(cluster.connected)),
        );
        registry.register(
            "cluster_remote_sessions",
            "Users online on the other nodes, as this node knows them",
            gauge(cluster.remote_sessions),
        );
        let dropped = Counter::<u64>::default();
        dropped.inc_by(cluster.dropped);
        registry.register(
            "cluster_dropped",
            "Messages for the other nodes never published (Redis down or too slow)",
            dropped,
        );
    }
    registry.register(
        "loop_pass_seconds",
        "Time one pass of the event loop took",
        timings.loop_pass.clone(),
    );
    registry.register(
        "store_commit_seconds",
        "Time a store batch took to run and commit, fsync included",
        timings.store_commit.clone(),
    );
    registry.register(
        "store_batch_requests",
        "Requests committed together in one store batch",
        timings.store_batch.clone(),
    );
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_names_every_family_with_its_labels() {
        let timings = Timings::default();
        timings.loop_pass.observe(0.001);
        let snapshot = Snapshot {
            logins: vec![("ok", 3), ("failed", 1)],
            messages: vec![("delivered", 7)],
            ..Snapshot::default()
        };
        let text = render(&snapshot, &timings).unwrap();
        assert!(
            text.contains("natter_logins_total{outcome=\"ok\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("natter_messages_total{kind=\"delivered\"} 7"),
            "{text}"
        );
        assert!(text.contains("natter_loop_pass_seconds_count 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        assert!(
            !text.contains("cluster"),
            "a single node has no cluster figures"
        );
    }

    #[test]
    fn a_cluster_node_says_whether_it_hears_the_others() {
        let snapshot = Snapshot {
            cluster: Some(ClusterFigures {
                connected: true,
                remote_sessions: 12,
                dropped: 3,
            }),
            ..Snapshot::default()
        };
        let text = render(&snapshot, &Timings::default()).unwrap();
        for line in [
            "natter_cluster_connected 1",
            "natter_cluster_remote_sessions 12",
            "natter_cluster_dropped_total 3",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
