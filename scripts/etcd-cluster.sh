#!/usr/bin/env bash
# Starts or stops a local 3-member etcd cluster on 127.0.0.1 for trying the
# etcd backend by hand (the tests start their own, tests/support/etcd.rs,
# with the same flags). Needs etcd (Debian's etcd-server:
# scripts/install-ci-deps.sh); no curl needed (bash's /dev/tcp).
#
#   scripts/etcd-cluster.sh start DIR [BASE_PORT]   # prints the endpoints,
#       # comma-separated: client ports BASE, BASE+2, BASE+4, peer ports
#       # BASE+1, BASE+3, BASE+5 (BASE defaults to 23790). Member i's data
#       # is DIR/m{i}/data, its log DIR/m{i}/etcd.log, its pid DIR/m{i}.pid.
#   scripts/etcd-cluster.sh stop DIR                # kills them, removes DIR
#
# Members run in the background after `start` returns, until `stop`.
set -euo pipefail

members=3

usage() {
    echo "usage: $0 start DIR [BASE_PORT] | stop DIR" >&2
    exit 2
}

# health PORT: succeeds when GET /health on 127.0.0.1:PORT answers
# {"health":"true"}. A subshell, so the redirections stay local.
health() (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET /health HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$1" >&3
    reply=""
    while IFS= read -r -t 3 line <&3; do
        reply+="$line"
    done
    reply+="$line" # the body ends without a newline
    [[ $reply == *'"health":"true"'* ]]
) 2>/dev/null

# alive PIDFILE: the pid it names runs etcd.
alive() {
    local pid
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [ -n "$pid" ] && grep -qa etcd "/proc/$pid/cmdline" 2>/dev/null
}

start() {
    local dir="$1" base="$2" cluster="" endpoints="" token i
    command -v etcd >/dev/null || {
        echo "etcd not found: run scripts/install-ci-deps.sh (Debian package etcd-server)" >&2
        exit 1
    }
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    for ((i = 0; i < members; i++)); do
        if alive "$dir/m$i.pid"; then
            echo "etcd-cluster: m$i already runs (pid $(cat "$dir/m$i.pid")); stop $dir first" >&2
            exit 1
        fi
        cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 2 * i + 1))"
        endpoints+="${endpoints:+,}http://127.0.0.1:$((base + 2 * i))"
    done
    token="devreg-local-$base-$(date +%s)-$$"
    for ((i = 0; i < members; i++)); do
        start_member "$dir" "$i" "$((base + 2 * i))" "$((base + 2 * i + 1))" "$cluster" "$token"
    done
    wait_healthy "$dir" "$base"
    echo "$endpoints"
}

# start_member DIR I CLIENT_PORT PEER_PORT INITIAL_CLUSTER TOKEN
start_member() {
    local dir="$1" i="$2" client="http://127.0.0.1:$3" peer="http://127.0.0.1:$4"
    mkdir -p "$dir/m$i"
    etcd --name "m$i" --data-dir "$dir/m$i/data" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$5" --initial-cluster-token "$6" \
        --initial-cluster-state new \
        --heartbeat-interval 50 --election-timeout 500 \
        --max-txn-ops 1024 --max-request-bytes 4194304 \
        --quota-backend-bytes 4294967296 \
        --logger zap --log-level warn \
        </dev/null >>"$dir/m$i/etcd.log" 2>&1 &
    echo $! >"$dir/m$i.pid"
}

# wait_healthy DIR BASE: up to 30 s for every member; on failure prints the
# logs' tails, stops the cluster and exits 1.
wait_healthy() {
    local dir="$1" base="$2" i deadline=$((SECONDS + 30))
    for ((i = 0; i < members; i++)); do
        until health "$((base + 2 * i))"; do
            if ! alive "$dir/m$i.pid" || [ "$SECONDS" -ge "$deadline" ]; then
                echo "etcd-cluster: m$i (127.0.0.1:$((base + 2 * i))) did not become healthy" >&2
                tail -n 20 "$dir"/m*/etcd.log >&2 || true
                stop "$dir"
                exit 1
            fi
            sleep 0.1
        done
    done
}

stop() {
    local dir="$1" i pid tries
    if [ ! -e "$dir/m0.pid" ] && [ ! -d "$dir/m0" ]; then
        echo "etcd-cluster: $dir holds no cluster (no m0.pid or m0/); not removing it" >&2
        exit 1
    fi
    for ((i = 0; i < members; i++)); do
        alive "$dir/m$i.pid" || continue
        pid="$(cat "$dir/m$i.pid")"
        kill "$pid" 2>/dev/null || true
        for ((tries = 0; tries < 50; tries++)); do
            alive "$dir/m$i.pid" || break
            sleep 0.1
        done
        if alive "$dir/m$i.pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$dir"
}

case "${1:-}" in
    start)
        [ $# -ge 2 ] && [ $# -le 3 ] || usage
        base="${3:-23790}"
        [[ $base =~ ^[0-9]+$ ]] && [ "$base" -ge 1024 ] && [ "$base" -le 65530 ] || usage
        start "$2" "$base"
        ;;
    stop)
        [ $# -eq 2 ] || usage
        stop "$2"
        ;;
    *)
        usage
        ;;
esac
