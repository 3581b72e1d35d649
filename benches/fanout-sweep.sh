#!/usr/bin/env bash
# Issue 16's yardstick: natterd's fan-out against a bare relay (benches/relay.c:
# one thread, epoll, a buffer per connection, every line copied to every
# other connection) over an audience sweep, both driven by natter-bench's
# `fanout` with the same flags and pacing (at most 32 broadcasts not yet at
# every receiver), server on CPU 0 and bench on CPU 1. Prints one JSON line
# per run with "server" added ("natterd" or "relay"); take the median of the
# runs for each receiver count and divide.
#
#   benches/fanout-sweep.sh [RUNS] [RECEIVERS...]     (default: 3 runs of 100 1000 4000 8000)
#
# NATTERD=<path> runs that natterd binary instead of the one just built
# (a copy of an older build, for a before/after sweep). BENCH_FLAGS adds
# fanout flags (e.g. "--payload 2000").
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
shift || true
sizes=("$@")
[ "${#sizes[@]}" -gt 0 ] || sizes=(100 1000 4000 8000)

cargo build --release -p natter --bin natterd -p natter-bench --bin natter-bench >&2
mkdir -p target/release
cc -O2 -o target/release/relay benches/relay.c
natterd=${NATTERD:-target/release/natterd}
pin_server=() pin_bench=()
if command -v taskset >/dev/null; then
    pin_server=(taskset -c 0) pin_bench=(taskset -c 1)
fi

run() { # run natterd|relay <receivers>
    local which=$1 receivers=$2 data pid port status=0
    data=$(mktemp -d)
    if [ "$which" = natterd ]; then
        "${pin_server[@]}" "$natterd" --rate 0 --max-per-ip 0 --max-clients 20000 \
            --hash-cost low --data "$data" 0 >"$data/out" 2>"$data/log" &
    else
        "${pin_server[@]}" target/release/relay 0 >"$data/out" 2>"$data/log" &
    fi
    pid=$!
    for _ in $(seq 100); do grep -q '^listening on' "$data/out" 2>/dev/null && break; sleep 0.05; done
    port=$(sed -n '1s/^listening on .*:\([0-9]*\)$/\1/p' "$data/out")
    local broadcasts=$((2000000 / receivers))
    [ "$broadcasts" -le 20000 ] || broadcasts=20000
    "${pin_bench[@]}" target/release/natter-bench -p "$port" --server-pid "$pid" --json \
        --max-seconds 120 fanout --receivers "$receivers" --broadcasts "$broadcasts" \
        --window 32 ${BENCH_FLAGS:-} >"$data/json" || status=$?
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ "$status" -ne 0 ]; then
        echo "fanout-sweep: $which with $receivers receivers failed (exit $status)" >&2
        tail -n 20 "$data/log" >&2 || true
        rm -rf "$data"
        return "$status"
    fi
    sed "s/^{/{\"server\":\"$which\",/" "$data/json"
    rm -rf "$data"
}

for _ in $(seq "$runs"); do
    for receivers in "${sizes[@]}"; do
        run natterd "$receivers"
        run relay "$receivers"
    done
done
