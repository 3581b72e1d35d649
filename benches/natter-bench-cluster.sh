#!/usr/bin/env bash
# Reproduces the cluster figures in docs/PERFORMANCE.md: two fresh natterd
# nodes per run on one PostgreSQL and one Redis (both yours, already
# running), natter-bench --nodes against them, one JSON line per run
# (collect them, take the median). A run that fails stops the script with
# its exit status, as in natter-bench-runs.sh.
#
#   STORE=postgres://natter@127.0.0.1/bench CLUSTER=redis://127.0.0.1:6379 \
#       benches/natter-bench-cluster.sh [RUNS] [extra natter-bench flags...]
#   NATTERD=<path> BENCH=<path> BUILD=0 ...   # other binaries, no build
#
# STORE's database keeps the bench's users (reused by later runs) and every
# message sent; start from an empty database for comparable figures. The
# nodes and the bench are not pinned: three processes, PostgreSQL and Redis
# share the cores.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${STORE:?set STORE=postgres://... (the database the nodes share)}"
: "${CLUSTER:?set CLUSTER=redis://HOST:PORT (the Redis the nodes share)}"
runs=${1:-5}
shift || true
extra=("$@")

if [ "${BUILD:-1}" = 1 ]; then
    cargo build --release -p natter --bin natterd -p natter-bench --bin natter-bench >&2
fi
natterd=${NATTERD:-target/release/natterd}
bench=${BENCH:-target/release/natter-bench}

pids=() dirs=()
stop_nodes() {
    # Each node by its own pid; its exit status after the kill says nothing
    # about the run.
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for dir in "${dirs[@]}"; do rm -rf "$dir"; done
    pids=() dirs=()
}
trap stop_nodes EXIT

start_node() { # start_node ID: a node on a free 127.0.0.1 port; sets $node
    local data
    data=$(mktemp -d)
    dirs+=("$data")
    "$natterd" --rate 0 --max-per-ip 0 --max-clients 20000 --hash-cost low \
        --store "$STORE" --cluster "$CLUSTER" --node-id "$1" \
        --data "$data" 0 >"$data/out" 2>"$data/log" &
    pids+=($!)
    # Connecting to PostgreSQL and Redis comes before listening: up to 20 s.
    for _ in $(seq 400); do grep -q '^listening on' "$data/out" 2>/dev/null && break; sleep 0.05; done
    node=$(sed -n '1s/^listening on \(.*\)$/\1/p' "$data/out")
    if [ -z "$node" ]; then
        echo "natter-bench-cluster: node $1 did not start:" >&2
        tail -n 20 "$data/log" >&2 || true
        return 1
    fi
}

run() { # run <natter-bench args...>
    start_node n1
    local first=$node
    start_node n2
    local status=0
    "$bench" --nodes "$first,$node" --server-pid "${pids[0]}" --json \
        --max-seconds 120 "$@" "${extra[@]}" || status=$?
    if [ "$status" -ne 0 ]; then
        echo "natter-bench-cluster: run failed (exit $status): natter-bench $*" >&2
        for dir in "${dirs[@]}"; do tail -n 20 "$dir/log" >&2 || true; done
    fi
    stop_nodes
    return "$status"
}

for _ in $(seq "$runs"); do
    # Half the receivers on the second node.
    run fanout --receivers 1000 --broadcasts 2000
    # Every message from the first node to the second.
    run dm --pairs 50 --messages 4000
done
