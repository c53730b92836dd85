#!/usr/bin/env bash
# Instructions and L1 cache misses one request costs the whole server, over
# a real socket: `wharf up` on the benchmark app runs under callgrind (with
# its cache model), a client on loopback sends warm-up requests, the
# counters are zeroed, then REQUESTS keep-alive requests one after another
# are counted and divided. The same figures on a busy machine or an idle
# one, so a change to the request path can be told from noise where
# timings cannot (`parts-callgrind.sh` does the same in process, without
# hyper, the connection or the access log).
#
#   bench/server-callgrind.sh [PATH [REQUESTS [WHARF]]]
#
# PATH is the route (default hello), REQUESTS the requests counted (default
# 3000), WHARF a `wharf` binary (default: this tree's, built in release).
# SERVER=wasmtime counts `wasmtime serve` instead, with its defaults, on the
# component PATH routes to (a component named `*-p3` is served as WASI 0.3,
# which `wasmtime serve` reuses by default). CONNECTIONS=N counts N
# concurrent keep-alive connections from `wrk` for DURATION seconds (default 20)
# instead, dividing by the requests `wrk` saw answered (callgrind runs the
# server's threads one at a time, so this is the work, not the waiting).
# Needs valgrind and python3 (and wrk with CONNECTIONS); about two minutes
# for a hello.
set -euo pipefail
path=${1:-hello}
requests=${2:-3000}
wharf=${3:+$(realpath "$3")}
server_kind=${SERVER:-wharf}
connections=${CONNECTIONS:-1}
seconds=${DURATION:-20}
cd "$(dirname "$0")"
port=${PORT:-7790}
needed=(valgrind callgrind_control python3)
[ "$connections" -gt 1 ] && needed+=(wrk)
[ "$server_kind" = wasmtime ] && needed+=(wasmtime)
for tool in "${needed[@]}"; do
  command -v "$tool" >/dev/null || { echo "server-callgrind: needs $tool (apt-get install valgrind python3 wrk; cargo install wasmtime-cli)" >&2; exit 1; }
done
out=$(mktemp -d)
server=
# The manifest's paths are relative to it: the copy lives beside the original.
manifest=.server-callgrind.toml
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$out" "$manifest"' EXIT
case "$server_kind" in
  wharf)
    if [ -z "$wharf" ]; then
      cargo build --release -p wharf --quiet
      wharf=../target/release/wharf
    fi
    sed -e "s/^listen = .*/listen = \"127.0.0.1:$port\"/" -e 's/^admin_listen = .*/admin_listen = "off"/' \
      wharf-bench.toml >"$manifest"
    command=("$wharf" up -m "$manifest")
    url_path=$path
    ;;
  wasmtime)
    # The component the benchmark app routes PATH to, and whether it is WASI 0.3.
    read -r component p3 < <(python3 - "$path" <<'PY'
import sys, tomllib
app = tomllib.load(open("wharf-bench.toml", "rb"))
route = next((r for r in app["route"] if r["path"].strip("/") == sys.argv[1]), None)
if route is None:
    sys.exit(f"server-callgrind: no route /{sys.argv[1]} in wharf-bench.toml")
name = route["component"]
print(app["component"][name]["source"], int(name.endswith("-p3")))
PY
)
    (cd ../components && cargo build --release --target wasm32-wasip2 --quiet)
    command=(wasmtime serve -Scli --addr "127.0.0.1:$port")
    [ "$p3" = 1 ] && command+=(-Sp3 -Wcomponent-model-async)
    command+=("$component")
    url_path=
    ;;
  *) echo "server-callgrind: SERVER is wharf or wasmtime" >&2; exit 1 ;;
esac
valgrind --tool=callgrind --cache-sim=yes --dump-instr=no --callgrind-out-file="$out/cg.out" \
  "${command[@]}" >"$out/server.log" 2>&1 &
server=$!

# Sends `count` GET /path on one keep-alive connection; each must be a 200.
send() {
  python3 - "$port" "$url_path" "$1" <<'PY'
import http.client, sys, time
port, path, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + 300
while True:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.connect()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("server-callgrind: the server did not start")
        time.sleep(0.5)
for _ in range(count):
    connection.request("GET", "/" + path)
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"server-callgrind: /{path} answered {response.status}")
PY
}

# `wrk` for `1` seconds on CONNECTIONS connections; prints the requests it
# saw answered with a 2xx.
load() {
  wrk -t1 -c"$connections" -d"$1"s "http://127.0.0.1:$port/$url_path" >"$out/wrk.txt"
  python3 - "$out/wrk.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
total = int(re.search(r"(\d+) requests in", text).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(total - (int(bad.group(1)) if bad else 0))
PY
}

send 300
if [ "$connections" -gt 1 ]; then
  load 5 >/dev/null
  callgrind_control -z "$server" >/dev/null 2>&1
  requests=$(load "$seconds")
else
  callgrind_control -z "$server" >/dev/null 2>&1
  send "$requests"
fi
callgrind_control -d "$server" >/dev/null 2>&1
kill -INT "$server"
wait "$server" || true
server=
# The dump after zeroing is the second file; its summary line holds the
# events in the order of its `events:` line.
dump=$(ls "$out"/cg.out.* | sort | tail -n 1)
python3 - "$dump" "$requests" "$server_kind /$path, $connections connection(s)" <<'PY'
import sys
dump, requests, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
events = summary = None
for line in open(dump):
    if line.startswith("events:"):
        events = line.split()[1:]
    elif line.startswith("summary:"):
        summary = [int(v) for v in line.split()[1:]]
counts = dict(zip(events, summary))
per = lambda name: counts.get(name, 0) / requests
print(f"| {label} | {requests:,} | {per('Ir'):,.0f} | {per('I1mr'):,.0f} | {per('D1mr') + per('D1mw'):,.0f} |")
PY
