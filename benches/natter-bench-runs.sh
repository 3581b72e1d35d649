#!/usr/bin/env bash
# Reproduces the figures in docs/PERFORMANCE.md: builds release binaries,
# starts a fresh natterd per scenario run, runs natter-bench against it, and
# prints one JSON line per run (collect them, take the median). A run that
# fails stops the script with its exit status: a missing line would bias the
# median without anyone noticing.
#
#   benches/natter-bench-runs.sh [RUNS] [extra natter-bench flags...]
#   TLS=1 benches/natter-bench-runs.sh [RUNS]    # the same through the TLS listener
#   NATTERD=<path> benches/natter-bench-runs.sh   # another natterd binary (A/B runs)
#
# natterd and natter-bench are pinned to different cores when taskset exists,
# so the two processes do not take turns on one core (not for logins, where
# natterd's hashing threads should have both cores).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
shift || true
extra=("$@")

cargo build --release -p natter --bin natterd -p natter-bench --bin natter-bench >&2
natterd=${NATTERD:-target/release/natterd}
pin_server=() pin_bench=()
if command -v taskset >/dev/null; then
    pin_server=(taskset -c 0) pin_bench=(taskset -c 1)
fi

run() { # run [nopin] <natterd flags...> -- <natter-bench args...>
    local data server_flags=() bench_args=() ps=("${pin_server[@]}") pb=("${pin_bench[@]}")
    if [ "$1" = nopin ]; then ps=() pb=(); shift; fi
    while [ "$1" != "--" ]; do server_flags+=("$1"); shift; done
    shift
    bench_args=("$@")
    data=$(mktemp -d)
    local tls_flags=()
    if [ "${TLS:-0}" = 1 ]; then tls_flags=(--tls-self-signed localhost --tls-port 0); fi
    "${ps[@]}" "$natterd" --rate 0 --max-per-ip 0 --max-clients 20000 \
        --data "$data" "${tls_flags[@]}" "${server_flags[@]}" 0 >"$data/out" 2>"$data/log" &
    local pid=$!
    for _ in $(seq 100); do grep -q '^listening on' "$data/out" 2>/dev/null && break; sleep 0.05; done
    local port target=()
    if [ "${TLS:-0}" = 1 ]; then
        for _ in $(seq 100); do grep -q ' tls sha256 ' "$data/out" 2>/dev/null && break; sleep 0.05; done
        port=$(sed -n 's/^listening on .*:\([0-9]*\) tls sha256 .*$/\1/p' "$data/out")
        target=(--tls --fingerprint "$(sed -n 's/^.* tls sha256 //p' "$data/out")")
    else
        port=$(sed -n '1s/^listening on .*:\([0-9]*\)$/\1/p' "$data/out")
    fi
    local status=0
    "${pb[@]}" target/release/natter-bench -p "$port" "${target[@]}" --server-pid "$pid" --json \
        --max-seconds 120 "${bench_args[@]}" "${extra[@]}" || status=$?
    # natterd is stopped whatever happened; its exit status after the kill
    # says nothing about the run.
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ "$status" -ne 0 ]; then
        # A failed run is not a figure: say which one, show natterd's log,
        # and stop (set -e ends the script with this status).
        echo "natter-bench-runs: run failed (exit $status): natterd ${server_flags[*]}" \
            "-- natter-bench ${bench_args[*]}" >&2
        tail -n 20 "$data/log" >&2 || true
        rm -rf "$data"
        return "$status"
    fi
    rm -rf "$data"
}

for _ in $(seq "$runs"); do
    run --hash-cost low -- fanout --receivers 1000 --broadcasts 2000
    run --hash-cost low -- dm --pairs 50 --messages 4000
    run --hash-cost low -- dm --pairs 50 --messages 5000 --rate-limit 25000
    run --hash-cost low -- idle --sessions 10000
    # Logins are not pinned: natterd's hashing pool should have both cores.
    run nopin --hash-cost low -- login --logins 5000 --concurrency 8
    run nopin --hash-cost normal -- login --logins 200 --concurrency 8
done
