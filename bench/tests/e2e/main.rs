//! natter-bench against a real natterd, each scenario with tiny counts: the
//! reports have their fields, the counts add up (every broadcast reaches
//! every receiver, every message is acknowledged and delivered), and the
//! server settings that would spoil a benchmark are named when met; with
//! `--nodes`, against a two-node cluster (its own PostgreSQL and Redis),
//! every scenario runs and fan-out and messages cross nodes. One test
//! binary; its fixtures (natterd built from this workspace, started on free
//! ports) are in `util`.

mod util;

use std::process::Command;

use serde_json::Value;

use util::redis::Redis;
use util::{bench_bin, pg, run, Run, Server, TLS_FLAGS};

/// The flags the bench's own tests start natterd with, as its help says.
const BENCH_SERVER: &[&str] = &["--hash-cost", "low", "--rate", "0", "--max-per-ip", "0"];

fn bench(server: &Server, args: &[&str]) -> Run {
    let mut cmd = Command::new(bench_bin());
    cmd.args(["--port", &server.port(), "--max-seconds", "8"])
        .args(args);
    run(&mut cmd)
}

/// The JSON reports, one per stdout line, after checking the run succeeded.
fn reports(r: &Run) -> Vec<Value> {
    assert!(
        r.status.success(),
        "natter-bench failed: {:?}\nstdout: {}\nstderr: {}",
        r.status,
        r.stdout,
        r.stderr
    );
    r.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn int(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {v}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// p50 ≤ p99 ≤ max, all positive: a sane latency distribution.
fn ordered(v: &Value, prefix: &str) {
    let (p50, p99, max) = (
        num(v, &format!("{prefix}p50_ms")),
        num(v, &format!("{prefix}p99_ms")),
        num(v, &format!("{prefix}max_ms")),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{prefix}: {v}");
}

#[test]
fn fanout_delivers_every_broadcast_to_every_receiver() {
    let server = Server::start_with(BENCH_SERVER);
    let pid = server.pid().to_string();
    let r = bench(
        &server,
        &[
            "fanout",
            "--json",
            "--receivers",
            "5",
            "--broadcasts",
            "300",
            "--window",
            "4",
            "--threads",
            "2",
            "--server-pid",
            &pid,
        ],
    );
    let v = &reports(&r)[0];
    assert_eq!(v["scenario"], "fanout");
    assert_eq!(int(v, "receivers"), 5);
    assert_eq!(int(v, "broadcasts"), 300);
    assert_eq!(int(v, "deliveries"), 5 * 300);
    assert!(num(v, "deliveries_per_sec") > 0.0, "{v}");
    assert!(num(v, "seconds") > 0.0, "{v}");
    ordered(v, "");
    // The ping client runs alongside and always makes at least one round
    // trip, so there is a ping figure to check.
    assert!(int(v, "ping_count") > 0, "{v}");
    ordered(v, "ping_");
    assert!(v["server_cpu_pct"].is_number(), "{v}");
    assert!(v["bench_cpu_pct"].is_number(), "{v}");
    assert_eq!(v["notes"], serde_json::json!([]));
    // One node: the report is what it was before clusters.
    assert!(v.get("nodes").is_none(), "{v}");
}

#[test]
fn dm_acknowledges_and_delivers_every_message_at_a_fixed_rate() {
    let server = Server::start_with(BENCH_SERVER);
    let r = bench(
        &server,
        &[
            "dm",
            "--json",
            "--pairs",
            "3",
            "--messages",
            "40",
            "--window",
            "8",
            "--rate-limit",
            "400",
        ],
    );
    let v = &reports(&r)[0];
    assert_eq!(v["scenario"], "dm");
    assert_eq!(int(v, "pairs"), 3);
    assert_eq!(int(v, "acked"), 120);
    assert_eq!(int(v, "delivered"), 120);
    assert_eq!(int(v, "rate_limit"), 400);
    // 120 messages at 400/s take about 0.3 s: the limit holds.
    let rate = num(v, "acked_per_sec");
    assert!(rate > 0.0 && rate < 400.0 * 1.3, "{v}");
    ordered(v, "");
    ordered(v, "ack_");
    // Without --server-pid there is no CPU figure.
    assert!(v["server_cpu_pct"].is_null(), "{v}");
}

#[test]
fn dm_with_history_readers_counts_their_reads_and_loses_no_message() {
    let server = Server::start_with(BENCH_SERVER);
    let r = bench(
        &server,
        &[
            "dm",
            "--json",
            "--pairs",
            "2",
            "--messages",
            "300",
            "--rate-limit",
            "1000",
            "--history-readers",
            "2",
        ],
    );
    let v = &reports(&r)[0];
    assert_eq!(int(v, "acked"), 600);
    assert_eq!(int(v, "delivered"), 600);
    assert_eq!(int(v, "history_readers"), 2);
    // The run takes about 0.3 s; each read of 1,000 rows takes milliseconds.
    assert!(int(v, "history_reads") > 0, "{v}");
    ordered(v, "ack_");
}

#[test]
fn idle_reports_memory_per_session_only_with_the_server_pid() {
    let server = Server::start_with(BENCH_SERVER);
    let pid = server.pid().to_string();
    let r = bench(
        &server,
        &["idle", "--json", "--sessions", "30", "--server-pid", &pid],
    );
    let v = &reports(&r)[0];
    assert_eq!(int(v, "sessions"), 30);
    assert_eq!(int(v, "checked_alive"), 30);
    assert!(int(v, "rss_after_kib") > 0, "{v}");
    assert!(v["bytes_per_session"].is_number(), "{v}");

    // Again without the pid: same users (logged in, not registered), no
    // memory figure, and a note saying why.
    let r = bench(&server, &["idle", "--json", "--sessions", "30"]);
    let v = &reports(&r)[0];
    assert!(v["bytes_per_session"].is_null(), "{v}");
    assert!(v["notes"][0]
        .as_str()
        .is_some_and(|n| n.contains("--server-pid")));
}

#[test]
fn login_counts_every_login() {
    let server = Server::start_with(BENCH_SERVER);
    let r = bench(
        &server,
        &["login", "--json", "--logins", "12", "--concurrency", "3"],
    );
    let v = &reports(&r)[0];
    assert_eq!(int(v, "logins"), 12);
    assert_eq!(int(v, "concurrency"), 3);
    assert!(num(v, "logins_per_sec") > 0.0, "{v}");
    ordered(v, "");
}

#[test]
fn table_output_has_a_heading_and_a_row_per_scenario() {
    let server = Server::start_with(BENCH_SERVER);
    let r = bench(
        &server,
        &[
            "--receivers",
            "3",
            "--broadcasts",
            "20",
            "--pairs",
            "2",
            "--messages",
            "10",
            "--sessions",
            "5",
            "--logins",
            "4",
            "--concurrency",
            "2",
            "--users-prefix",
            "tbl",
        ],
    );
    assert!(r.status.success(), "stderr: {}", r.stderr);
    for (scenario, heading) in [
        ("fanout", "deliveries/s"),
        ("dm", "acked/s"),
        ("idle", "bytes/session"),
        ("login", "logins/s"),
    ] {
        let at = r
            .stdout
            .find(&format!("== {scenario}: "))
            .unwrap_or_else(|| panic!("no {scenario} table in {}", r.stdout));
        let table: Vec<&str> = r.stdout[at..].lines().take(3).collect();
        assert_eq!(table.len(), 3, "{table:?}");
        let (head, row) = (table[1], table[2]);
        assert!(head.contains(heading), "{table:?}");
        // Every column is right-aligned to the wider of heading and value,
        // so the two rows are equally wide; values hold no blanks, so the
        // value row has one word per field, each a number or `-`.
        assert_eq!(head.chars().count(), row.chars().count(), "{table:?}");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert!(cells.len() > 3, "{table:?}");
        for cell in cells {
            assert!(
                cell == "-"
                    || cell
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == ',' || c == '.'),
                "{cell:?} in {table:?}"
            );
        }
    }
}

#[test]
fn a_rate_limited_server_is_named_as_the_problem() {
    let server = Server::start_with(&["--hash-cost", "low", "--max-per-ip", "0"]);
    let r = bench(
        &server,
        &[
            "fanout",
            "--receivers",
            "2",
            "--broadcasts",
            "500",
            "--window",
            "500",
        ],
    );
    assert_eq!(r.status.code(), Some(1), "stdout: {}", r.stdout);
    assert!(r.stderr.contains("--rate 0"), "stderr: {}", r.stderr);
}

#[test]
fn the_per_address_limit_is_named_as_the_problem() {
    // natterd's default --max-per-ip is 64.
    let server = Server::start_with(&["--hash-cost", "low", "--rate", "0"]);
    let r = bench(&server, &["idle", "--sessions", "70"]);
    assert_eq!(r.status.code(), Some(1), "stdout: {}", r.stdout);
    assert!(r.stderr.contains("--max-per-ip 0"), "stderr: {}", r.stderr);
}

#[test]
fn help_documents_every_flag_and_bad_arguments_exit_2() {
    let out = Command::new(bench_bin())
        .arg("--help")
        .output()
        .expect("run natter-bench --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--host",
        "--port",
        "--receivers",
        "--broadcasts",
        "--pairs",
        "--messages",
        "--rate-limit",
        "--sessions",
        "--logins",
        "--concurrency",
        "--payload",
        "--window",
        "--threads",
        "--ping-interval-us",
        "--max-seconds",
        "--server-pid",
        "--users-prefix",
        "--password",
        "--json",
        "--tls",
        "--nodes",
        "--ca",
        "--fingerprint",
        "fanout",
        "dm",
        "idle",
        "login",
        "--max-per-ip 0",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
    let out = Command::new(bench_bin())
        .args(["--window", "0"])
        .output()
        .expect("run natter-bench");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--window"));
}

#[test]
fn fanout_and_idle_over_websocket_count_every_message_and_session() {
    let mut flags = BENCH_SERVER.to_vec();
    flags.extend(["--web", "127.0.0.1:0"]);
    let server = Server::start_with(&flags);
    let web = server.web.expect("natterd printed its web address");
    let pid = server.pid().to_string();
    let r = bench(
        &server,
        &[
            "fanout",
            "idle",
            "--ws",
            &web.port().to_string(),
            "--json",
            "--receivers",
            "5",
            "--broadcasts",
            "300",
            "--window",
            "4",
            // Lines of about 2 KB: frames split across reads.
            "--payload",
            "2000",
            "--threads",
            "2",
            "--sessions",
            "300",
            "--server-pid",
            &pid,
        ],
    );
    let v = reports(&r);
    assert_eq!(v.len(), 2, "stdout: {}", r.stdout);
    assert_eq!(v[0]["scenario"], "fanout");
    assert_eq!(int(&v[0], "deliveries"), 5 * 300);
    ordered(&v[0], "");
    assert_eq!(v[0]["notes"], serde_json::json!([]));
    assert_eq!(v[1]["scenario"], "idle");
    assert_eq!(int(&v[1], "sessions"), 300);
    assert!(int(&v[1], "checked_alive") > 0);
    assert!(num(&v[1], "bytes_per_session") > 0.0, "{}", v[1]);
    // WebSocket sessions are refused for the scenarios it does not drive.
    let r = bench(&server, &["dm", "--ws", &web.port().to_string()]);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
}

/// natter-bench through natterd's TLS listener, pinned to its certificate.
fn bench_tls(server: &Server, args: &[&str]) -> Run {
    let tls = server.tls();
    let mut cmd = Command::new(bench_bin());
    cmd.args(["--tls", "--fingerprint", &tls.fingerprint])
        .args(["--port", &tls.addr.port().to_string(), "--max-seconds", "8"])
        .args(args);
    run(&mut cmd)
}

#[test]
fn fanout_and_dm_over_tls_count_every_message() {
    let server = Server::start_with(TLS_FLAGS);
    let r = bench_tls(
        &server,
        &[
            "fanout",
            "dm",
            "--json",
            "--receivers",
            "4",
            "--broadcasts",
            "200",
            "--window",
            "8",
            "--pairs",
            "3",
            "--messages",
            "100",
            // Lines of about 2 KB: several per record, records split
            // across reads.
            "--payload",
            "2000",
            "--threads",
            "2",
        ],
    );
    let v = reports(&r);
    assert_eq!(v.len(), 2, "stdout: {}", r.stdout);
    assert_eq!(v[0]["scenario"], "fanout");
    assert_eq!(int(&v[0], "deliveries"), 4 * 200);
    ordered(&v[0], "");
    assert_eq!(v[0]["notes"], serde_json::json!([]));
    assert_eq!(v[1]["scenario"], "dm");
    assert_eq!(int(&v[1], "acked"), 300);
    assert_eq!(int(&v[1], "delivered"), 300);
    ordered(&v[1], "ack_");
}

#[test]
fn login_over_tls_and_an_untrusted_certificate() {
    let server = Server::start_with(TLS_FLAGS);
    let r = bench_tls(
        &server,
        &["login", "--json", "--logins", "6", "--concurrency", "2"],
    );
    assert_eq!(int(&reports(&r)[0], "logins"), 6);

    // Without the pin the self-signed certificate is refused, clearly.
    let mut cmd = Command::new(bench_bin());
    cmd.args(["--tls", "--port", &server.tls().addr.port().to_string()])
        .args(["login", "--logins", "1", "--max-seconds", "8"]);
    let r = run(&mut cmd);
    assert_eq!(r.status.code(), Some(1), "stderr: {}", r.stderr);
    assert!(
        r.stderr.contains("TLS: certificate not trusted"),
        "stderr: {}",
        r.stderr
    );
}

/// natter-bench with `--nodes` (and no `--port`).
fn bench_nodes(nodes: &[&Server], args: &[&str]) -> Run {
    let nodes: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let mut cmd = Command::new(bench_bin());
    cmd.args(["--nodes", &nodes.join(",")]).args(args);
    run(&mut cmd)
}

#[test]
fn every_scenario_runs_across_a_two_node_cluster() {
    // Panics (fails, never skips) when redis-server or PostgreSQL is missing.
    let redis = Redis::start();
    let (db, url) = (pg::database(), redis.url());
    let node = |id: &str| {
        let mut flags = BENCH_SERVER.to_vec();
        flags.extend(["--store", &db, "--cluster", &url, "--node-id", id]);
        Server::start_with(&flags)
    };
    let (n1, n2) = (node("n1"), node("n2"));
    let r = bench_nodes(
        &[&n1, &n2],
        &[
            "fanout",
            "dm",
            "idle",
            "login",
            "--json",
            // Generous: setup on a loaded machine includes the pub/sub wait.
            "--max-seconds",
            "20",
            "--receivers",
            "6",
            "--broadcasts",
            "100",
            "--window",
            "4",
            "--pairs",
            "3",
            "--messages",
            "50",
            "--sessions",
            "10",
            "--logins",
            "8",
            "--concurrency",
            "2",
        ],
    );
    let v = reports(&r);
    assert_eq!(v.len(), 4, "stdout: {}", r.stdout);
    for report in &v {
        assert_eq!(int(report, "nodes"), 2, "{report}");
    }

    let fanout = &v[0];
    assert_eq!(fanout["scenario"], "fanout");
    // Round-robin: receivers 1, 3 and 5 are on the second node.
    assert_eq!(int(fanout, "remote_receivers"), 3, "{fanout}");
    assert_eq!(int(fanout, "deliveries"), 6 * 100, "{fanout}");
    assert_eq!(int(fanout, "remote_deliveries"), 3 * 100, "{fanout}");
    ordered(fanout, "");
    // No note: in particular every `+ sent to` counted all six receivers,
    // so the sender's node knew them all before the first broadcast.
    assert_eq!(fanout["notes"], serde_json::json!([]), "{fanout}");

    let dm = &v[1];
    assert_eq!(dm["scenario"], "dm");
    assert_eq!(int(dm, "acked"), 150, "{dm}");
    assert_eq!(int(dm, "delivered"), 150, "{dm}");
    assert!(num(dm, "acked_per_sec") > 0.0, "{dm}");
    ordered(dm, "ack_");
    // None stored: every receiver was known online across the nodes.
    assert_eq!(dm["notes"], serde_json::json!([]), "{dm}");

    assert_eq!(int(&v[2], "sessions"), 10, "{}", v[2]);
    assert_eq!(int(&v[2], "checked_alive"), 10, "{}", v[2]);
    assert_eq!(int(&v[3], "logins"), 8, "{}", v[3]);
}

#[test]
fn nodes_that_are_not_one_cluster_are_named_as_the_problem() {
    // Two separate servers: the second's users never reach the first.
    let (a, b) = (
        Server::start_with(BENCH_SERVER),
        Server::start_with(BENCH_SERVER),
    );
    let r = bench_nodes(
        &[&a, &b],
        &["fanout", "--receivers", "2", "--max-seconds", "2"],
    );
    assert_eq!(r.status.code(), Some(1), "stdout: {}", r.stdout);
    assert!(
        r.stderr.contains("whoelse") && r.stderr.contains("one cluster"),
        "stderr: {}",
        r.stderr
    );
}
