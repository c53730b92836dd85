#!/usr/bin/env bash
# Starts Redis, two Wharf hosts on loopback ports and nginx in front of
# them; checks the app through nginx (the counter is exact across both
# hosts, both hosts serve); stops everything (also on failure).
#
#   deploy/run.sh            # start, check, stop
#   deploy/run.sh serve      # start and keep serving until ctrl-c
#   deploy/run.sh roll       # start, then restart each host in turn under
#                            # steady load: no request may fail, no
#                            # increment may be lost
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
    touch "$WORK/stop-load"
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
declare -A host_pid host_admin
start_host() { # PORT: a host on it, with an admin listener of its own
    local port=$1 admin
    admin=$(free_port)
    "$WHARF" up --manifest wharf.toml --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --redis-url "redis://127.0.0.1:$REDIS_PORT/0" --log-format json >>"$WORK/wharf-$port.log" 2>&1 &
    host_pid[$port]=$!
    host_admin[$port]=$admin
    pids+=($!)
}
for port in "$HOST1" "$HOST2"; do start_host "$port"; done
mkdir -p "$WORK/tmp" && chmod 777 "$WORK/tmp"
sed -e "s|@WORK@|$WORK|g" -e "s|@HOST1@|$HOST1|g" -e "s|@HOST2@|$HOST2|g" -e "s|@NGINX@|$NGINX_PORT|g" \
    nginx.conf.template >"$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK" &
pids+=($!)

wait_for "http://127.0.0.1:${host_admin[$HOST1]}/readyz"
wait_for "http://127.0.0.1:${host_admin[$HOST2]}/readyz"
wait_for "http://127.0.0.1:$NGINX_PORT/hello"
echo "serving: nginx on 127.0.0.1:$NGINX_PORT -> wharf on :$HOST1 and :$HOST2, Redis on :$REDIS_PORT"

if [ "$mode" = serve ]; then
    wait
    exit 0
fi

if [ "$mode" = roll ]; then
    # Steady load: four clients sending increments through nginx until told
    # to stop, each writing "STATUS REQUEST_NUM" per request.
    clients=()
    for client in 1 2 3 4; do
        (
            set +e +o pipefail
            while [ ! -e "$WORK/stop-load" ]; do
                started=$(date -u +%H:%M:%S.%6N)
                body=$(curl -sS --max-time 10 -w ' %{time_total}s from %header{x-upstream} %{http_code}' \
                    "http://127.0.0.1:$NGINX_PORT/api/roll" 2>&1)
                status=${body##* }
                num=$(echo "$body" | grep -o '"request_num":[0-9]*' | cut -d: -f2)
                echo "$status ${num:--}"
                [ "$status" = 200 ] || echo "sent $started: $body" >>"$WORK/failures.txt"
            done >"$WORK/load-$client.txt"
        ) &
        clients+=($!)
        pids+=($!)
    done
    sent() { cat "$WORK"/load-*.txt | wc -l; }
    until [ "$(sent)" -ge 50 ]; do sleep 0.1; done
    for port in "$HOST1" "$HOST2"; do
        old=${host_pid[$port]}
        log="$WORK/wharf-$port.log"
        echo "rolling the host on :$port (pid $old) at $(sent) requests"
        sigterm=$(date -u +%H:%M:%S.%6N)
        kill -TERM "$old"
        # The old host stops accepting after its drain delay; then the port
        # is free for its successor.
        until grep -q '"shutting down: no new connections' "$log"; do sleep 0.05; done
        while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.02; done
        start_host "$port"
        wait_for "http://127.0.0.1:${host_admin[$port]}/readyz"
        wait "$old" || { echo "the old host on :$port did not exit cleanly" >&2; exit 1; }
        exited=$(date -u +%H:%M:%S.%6N)
        # nginx takes the new host back once its fail_timeout has passed:
        # roll the next one only when this one is serving again.
        until curl -sS -D - -o /dev/null "http://127.0.0.1:$NGINX_PORT/hello" | tr -d '\r' |
            grep -qi "^x-upstream: 127.0.0.1:$port$"; do sleep 0.1; done
        at() { grep "$1" "$log" | head -n "${2:-1}" | tail -n 1 | grep -o '"timestamp":"[^"]*"' | cut -d'T' -f2 | tr -d 'Z"'; }
        ago=$(grep '"shutting down: no new connections' "$log" | grep -o '"last_connection_ms_ago":[0-9]*' | cut -d: -f2)
        old_lines=$(grep -n '"shutdown complete"' "$log" | head -n 1 | cut -d: -f1)
        last_response=$(head -n "$old_lines" "$log" | grep '"wharf::access"' | tail -n 1 | grep -o '"timestamp":"[^"]*"' | cut -d'T' -f2 | tr -d 'Z"')
        echo "  timeline: SIGTERM $sigterm, readiness 503 $(at '"drain begun'), stopped accepting $(at '"shutting down') (last new connection ${ago} ms before), last response $last_response, shutdown complete $(at '"shutdown complete'), exited $exited"
    done
    before_stop=$(sent)
    until [ "$(sent)" -ge $((before_stop + 50)) ]; do sleep 0.1; done
    touch "$WORK/stop-load"
    wait "${clients[@]}"
    total=$(sent)
    failed=$(cat "$WORK"/load-*.txt | awk '$1 != 200' | wc -l)
    ok=$((total - failed))
    nums=$(cat "$WORK"/load-*.txt | awk '$1 == 200 {print $2}' | sort -n | tr '\n' ' ')
    expected=$(seq "$ok" | tr '\n' ' ')
    final=$(curl -fsS "http://127.0.0.1:$NGINX_PORT/api/roll" | grep -o '"request_num":[0-9]*' | cut -d: -f2)
    echo "roll: $total requests sent, $failed failed, counter at $final after $ok increments"
    if [ "$failed" -ne 0 ]; then
        cat "$WORK"/load-*.txt | awk '$1 != 200' | sort | uniq -c >&2
        head -c 2000 "$WORK/failures.txt" >&2
        echo "the hosts' warnings and errors:" >&2
        grep -h '"level":"\(WARN\|ERROR\)"' "$WORK"/wharf-*.log | head -n 40 >&2 || true
        exit 1
    fi
    if [ "$nums" != "$expected" ] || [ "$final" -ne $((ok + 1)) ]; then
        echo "increments lost or repeated across the roll" >&2
        exit 1
    fi
    echo "ok: rolled 2 hosts under load with no failed request and no lost increment"
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
