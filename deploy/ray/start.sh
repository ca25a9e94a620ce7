#!/usr/bin/env bash
# A kodo-bus node on a two-node Ray cluster, all on this machine's loopback: a Ray head and one
# extra Ray worker node (`ray start --block`, in the foreground so this script owns them), an
# embedded nats-server and a registry (unless NATS_URL names a running bus), and a kodo-bus node
# (node.yaml) attached with `--ray-address`. Ctrl-C, or any of them exiting, stops everything this
# script started, by PID, process trees included. Never `ray stop`: it stops every Ray instance
# of this user on the machine, not just this one.
#
#   deploy/ray/start.sh                                  # Ray on 127.0.0.1:6379, NATS on :4222
#   RAY_PORT=6390 NATS_PORT=4333 NATS_HTTP_PORT=8333 deploy/ray/start.sh
#   NATS_URL=nats://127.0.0.1:4222 deploy/ray/start.sh   # a running bus (with its registry)
#   HEAD_CPUS=1 WORKER_CPUS=1 DATA=/tmp/kr deploy/ray/start.sh
#
# `ray` and `kodo-bus` are taken next to the Python interpreter (PYTHON, default python3 on PATH:
# run it from an activated venv, or PYTHON=.venv/bin/python). Logs and the Ray auth token go to
# DATA (default: a new /tmp/kodo-ray.XXXXXX, short because Ray's socket paths must stay under
# 107 bytes).
set -euo pipefail
# Job control: every process below gets a process group of its own, so Ctrl-C reaches this script
# only, which then stops them one by one in order (the node before its Ray and its bus).
set -m

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$(command -v python3 || command -v python)}"
bin="$(dirname "$("$python" -c 'import sys; print(sys.executable)')")"
for tool in ray kodo-bus; do
    if [[ ! -x "$bin/$tool" ]]; then
        echo "$bin/$tool not found: pip install -e . (kodo-bus brings ray), or set PYTHON" >&2
        exit 1
    fi
done

ray_port="${RAY_PORT:-6379}"
head_cpus="${HEAD_CPUS:-2}"
worker_cpus="${WORKER_CPUS:-2}"
nats_url="${NATS_URL:-}"
data="${DATA:-$(mktemp -d /tmp/kodo-ray.XXXXXX)}"
mkdir -p "$data"
address="127.0.0.1:$ray_port"

# Every Ray process, and the node, import the flow modules (examples.*) from the repository root.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
# Ray's token auth with a token of this cluster's own: the head, the worker, the node's driver
# and `ray status` all need RAY_AUTH_MODE=token and the same token.
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$data/auth_token"
if [[ ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
    (umask 077 && "$python" -c 'import secrets; print(secrets.token_hex(32))' \
        >"$RAY_AUTH_TOKEN_PATH")
fi
unset RAY_ADDRESS RAY_AUTH_TOKEN

pids=()
names=()

alive() { # running, and not a zombie waiting to be reaped
    local stat
    stat="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
    [[ "$stat" != Z* ]]
}

tree() { # a PID and all its descendants
    local child
    echo "$1"
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        tree "$child"
    done
}

stop() { # SIGTERM each process we started (newest first), then SIGKILL what is left of its tree
    trap - INT TERM EXIT
    local i pid n left
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid="${pids[i]}"
        alive "$pid" || continue
        # shellcheck disable=SC2207
        left=($(tree "$pid"))
        echo "stopping ${names[i]} (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((n = 0; n < 300; n++)); do # 30 s
            alive "$pid" || break
            sleep 0.1
        done
        for ((n = 0; n < 100; n++)); do # 10 s for the rest of the tree (Ray's workers)
            local rest=()
            for pid in "${left[@]}"; do
                if alive "$pid"; then rest+=("$pid"); fi
            done
            left=("${rest[@]}")
            ((${#left[@]})) || break
            sleep 0.1
        done
        if ((${#left[@]})); then
            echo "killing what is left of ${names[i]}: ${left[*]}" >&2
            kill -KILL "${left[@]}" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
}
trap stop INT TERM EXIT

start() { # NAME LOG COMMAND...: run COMMAND in the background, output to LOG
    local name="$1" log="$2"
    shift 2
    "$@" >>"$log" 2>&1 &
    pids+=("$!")
    names+=("$name")
    echo "started $name (pid $!, log $log)"
}

wait_for() { # LOG TEXT SECONDS: until TEXT is in LOG; fail if the last process started exits
    local n
    for ((n = 0; n < $3 * 10; n++)); do
        if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
        if ! alive "${pids[-1]}"; then break; fi
        sleep 0.1
    done
    echo "${names[-1]} did not come up; the end of $1:" >&2
    tail -n 20 "$1" >&2
    exit 1
}

free_ports() { # N free loopback ports (Ray's per-node ports: two nodes on one machine must differ)
    "$python" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

ray_node() { # NAME CPUS ARGS...: `ray start --block` for one Ray node, with ports of its own
    local name="$1" cpus="$2" ports
    shift 2
    read -r -a ports <<<"$(free_ports 6)"
    start "ray $name" "$data/ray-$name.log" "$bin/ray" start --block \
        --node-ip-address 127.0.0.1 --num-cpus "$cpus" --temp-dir "$data/ray" \
        --disable-usage-stats \
        --node-manager-port "${ports[0]}" --object-manager-port "${ports[1]}" \
        --dashboard-agent-listen-port "${ports[2]}" --dashboard-agent-grpc-port "${ports[3]}" \
        --runtime-env-agent-port "${ports[4]}" --metrics-export-port "${ports[5]}" "$@"
    wait_for "$data/ray-$name.log" "Ray runtime started" 120
}

if [[ -z "$nats_url" ]]; then
    nats_url="nats://127.0.0.1:${NATS_PORT:-4222}"
    start "nats-server" "$data/nats.log" "$bin/kodo-bus" server --port "${NATS_PORT:-4222}" \
        --http-port "${NATS_HTTP_PORT:-8222}" --store "$data/nats"
    wait_for "$data/nats.log" "nats://" 30
    start "registry" "$data/registry.log" "$bin/kodo-bus" run --role registry --id ray-registry \
        --nats "$nats_url" --heartbeat 2
fi

read -r dashboard_port <<<"$(free_ports 1)"
ray_node head "$head_cpus" --head --port "$ray_port" --include-dashboard false \
    --dashboard-port "$dashboard_port"
ray_node worker "$worker_cpus" --address "$address"
# RAY_DISABLE_FAILURE_SIGNAL_HANDLER=1: kodo-bus sets it itself, but only if `ray` is not imported
# yet, and a flow module that imports ray at its top (examples/calc) comes first: without it,
# Ray's handler turns the node's SIGTERM into a stack dump and an abort (no graceful stop).
start "kodo-bus node" "$data/node.log" env RAY_DISABLE_FAILURE_SIGNAL_HANDLER=1 \
    "$bin/kodo-bus" run --config "$here/node.yaml" --nats "$nats_url" --ray-address "$address"
wait_for "$data/node.log" "ready (" 60 # the node attaches to Ray at its first launch

echo "up: Ray $address (2 Ray nodes, $((head_cpus + worker_cpus)) CPUs), NATS $nats_url"
echo "logs: $data"
echo "try: kodo-bus launch calc -i tasks=8 --nats $nats_url    — Ctrl-C here stops everything"
echo "     RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH \\"
echo "         ray status --address $address"
# Return as soon as any of them exits (then stop the others).
wait -n "${pids[@]}"
