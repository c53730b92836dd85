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
# Needs valgrind and python3; about two minutes for a hello.
set -euo pipefail
path=${1:-hello}
requests=${2:-3000}
wharf=${3:+$(realpath "$3")}
cd "$(dirname "$0")"
port=${PORT:-7790}
for tool in valgrind callgrind_control python3; do
  command -v "$tool" >/dev/null || { echo "server-callgrind: needs $tool (apt-get install valgrind python3)" >&2; exit 1; }
done
if [ -z "$wharf" ]; then
  cargo build --release -p wharf --quiet
  wharf=../target/release/wharf
fi
out=$(mktemp -d)
server=
# The manifest's paths are relative to it: the copy lives beside the original.
manifest=.server-callgrind.toml
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$out" "$manifest"' EXIT
sed -e "s/^listen = .*/listen = \"127.0.0.1:$port\"/" -e 's/^admin_listen = .*/admin_listen = "off"/' \
  wharf-bench.toml >"$manifest"
valgrind --tool=callgrind --cache-sim=yes --dump-instr=no --callgrind-out-file="$out/cg.out" \
  "$wharf" up -m "$manifest" >"$out/server.log" 2>&1 &
server=$!

# Sends `count` GET /path on one keep-alive connection; each must be a 200.
send() {
  python3 - "$port" "$path" "$1" <<'PY'
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

send 300
callgrind_control -z "$server" >/dev/null 2>&1
send "$requests"
callgrind_control -d "$server" >/dev/null 2>&1
kill -INT "$server"
wait "$server" || true
server=
# The dump after zeroing is the second file; its summary line holds the
# events in the order of its `events:` line.
dump=$(ls "$out"/cg.out.* | sort | tail -n 1)
python3 - "$dump" "$requests" "$path" <<'PY'
import sys
dump, requests, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
events = summary = None
for line in open(dump):
    if line.startswith("events:"):
        events = line.split()[1:]
    elif line.startswith("summary:"):
        summary = [int(v) for v in line.split()[1:]]
counts = dict(zip(events, summary))
per = lambda name: counts.get(name, 0) / requests
print(f"| /{path} | {per('Ir'):,.0f} | {per('I1mr'):,.0f} | {per('D1mr') + per('D1mw'):,.0f} |")
PY
