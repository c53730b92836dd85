#!/usr/bin/env bash
# Starts Redis, two Wharf hosts on loopback ports and nginx in front of
# them; checks the app through nginx (the counter is exact across both
# hosts, both hosts serve); stops everything (also on failure).
#
#   deploy/run.sh            # start, check, stop
#   deploy/run.sh serve      # start and keep serving until ctrl-c
#
# WHARF (default target/release/wharf) is the binary; the components must
# be built (cargo build --release --target wasm32-wasip2 in components/).
set -euo pipefail
cd "$(dirname "$0")"
WHARF=${WHARF:-../target/release/wharf}
mode=${1:-check}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
REDIS_PORT=$(free_port); HOST1=$(free_port); HOST2=$(free_port); NGINX_PORT=$(free_port)
WORK=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_for() { # URL: until it answers 200, 20 s at most
    for _ in $(seq 200); do
        if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "no answer from $1; the logs:" >&2
    tail -n 20 "$WORK"/*.log >&2 || true
    return 1
}

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync everysec \
    --dir "$WORK" >"$WORK/redis.log" 2>&1 &
pids+=($!)
for port in "$HOST1" "$HOST2"; do
    "$WHARF" up --manifest wharf.toml --listen "127.0.0.1:$port" --admin-listen off \
        --redis-url "redis://127.0.0.1:$REDIS_PORT/0" >"$WORK/wharf-$port.log" 2>&1 &
    pids+=($!)
done
mkdir -p "$WORK/tmp" && chmod 777 "$WORK/tmp"
sed -e "s|@WORK@|$WORK|g" -e "s|@HOST1@|$HOST1|g" -e "s|@HOST2@|$HOST2|g" -e "s|@NGINX@|$NGINX_PORT|g" \
    nginx.conf.template >"$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK" &
pids+=($!)

wait_for "http://127.0.0.1:$HOST1/hello"
wait_for "http://127.0.0.1:$HOST2/hello"
wait_for "http://127.0.0.1:$NGINX_PORT/hello"
echo "serving: nginx on 127.0.0.1:$NGINX_PORT -> wharf on :$HOST1 and :$HOST2, Redis on :$REDIS_PORT"

if [ "$mode" = serve ]; then
    wait
    exit 0
fi

# 40 increments through nginx: every count from 1 to 40 exactly once, and
# both hosts took some.
counts=()
upstreams=()
for _ in $(seq 40); do
    response=$(curl -fsS -D - "http://127.0.0.1:$NGINX_PORT/api/deploy")
    counts+=("$(echo "$response" | grep -o '"request_num":[0-9]*' | cut -d: -f2)")
    upstreams+=("$(echo "$response" | tr -d '\r' | grep -i '^x-upstream:' | cut -d' ' -f2)")
done
sorted=$(printf '%s\n' "${counts[@]}" | sort -n | tr '\n' ' ')
expected=$(seq 40 | tr '\n' ' ')
if [ "$sorted" != "$expected" ]; then
    echo "counts through nginx were not 1..40 exactly once: $sorted" >&2
    exit 1
fi
distinct=$(printf '%s\n' "${upstreams[@]}" | sort -u | wc -l)
if [ "$distinct" -lt 2 ]; then
    echo "only one host served: ${upstreams[*]}" >&2
    exit 1
fi
echo "ok: 40 increments exact across 2 hosts behind nginx"
