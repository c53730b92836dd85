#!/usr/bin/env bash
# Instructions and L1 cache misses one request costs, row by row of the
# `parts` bench, counted by callgrind: the same figures on a busy or an idle
# machine, so a change can be told from noise where timings cannot (a VM's
# timings of one binary spread by half from run to run). Each row runs in a
# process of its own; a process that serves no request is subtracted (the
# components' compilation), and the rest is divided by the requests served.
# Needs valgrind (apt-get install valgrind). ROUNDS sets the measured rounds
# (the bench adds 1,000 warm-up rounds); about two minutes a row.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "parts-callgrind: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
rounds=${ROUNDS:-1000}
requests=$((rounds + 1000))
bin=$(cargo bench -p wharf-bench --bench parts --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "parts" and m.get("executable"):
        print(m["executable"])')
[ -x "$bin" ] || { echo "parts-callgrind: the parts bench did not build" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

rows=(
  "no request"
  "wasmtime bare, 0.2, fresh"
  "wasmtime bare, 0.2, reused"
  "wasmtime bare, 0.3, fresh"
  "wasmtime bare, 0.3, reused"
  "Wharf, 0.2, fresh"
  "Wharf, 0.3, fresh"
  "Wharf, 0.3, reused"
)

# One row under callgrind: its counters, as "refs i1 d1", into a file.
measure() {
  local index=$1 row=$2
  PARTS_ROUNDS=$rounds valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file=/dev/null \
    "$bin" "$row" >/dev/null 2>"$out/$index.log"
  python3 - "$out/$index.log" >"$out/$index.counts" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
def count(label):
    return int(re.search(label + r":\s+([\d,]+)", text).group(1).replace(",", ""))
print(count(r"I\s+refs"), count(r"I1\s+misses"), count(r"D1\s+misses"))
EOF
}

jobs=$(nproc)
for index in "${!rows[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
  measure "$index" "${rows[$index]}" &
done
wait

read -r base_refs base_i1 base_d1 <"$out/0.counts"
echo "| $rounds + 1,000 requests a row, one at a time | instructions | L1i misses | L1d misses |"
echo "|---|---:|---:|---:|"
for index in "${!rows[@]}"; do
  [ "$index" -eq 0 ] && continue
  read -r refs i1 d1 <"$out/$index.counts"
  printf '| %s | %s | %s | %s |\n' "${rows[$index]}" \
    "$(( (refs - base_refs) / requests ))" "$(( (i1 - base_i1) / requests ))" "$(( (d1 - base_d1) / requests ))"
done
