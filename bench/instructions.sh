#!/bin/bash
# Instructions per proxied request, counted by callgrind: a figure that does not move with the
# machine's load (wall-clock and CPU time do, on a shared 2-core box), for comparing two builds.
#
#   bench/instructions.sh [ROOT] [OUT]      ROOT: a checkout with `make native` done (default .)
#   SHADOW=1 bench/instructions.sh          the route mirrors 100% to a 200 ms shadow
#   SHADOW=1 SHADOW_MAX_CONCURRENCY=1 ...    the same, pacing copies to about 5 a second: under
#                                            valgrind's ~150 requests a second that mirrors about the
#                                            share `make bench` mirrors at full speed (64 / 0.2 s of
#                                            ~25,000), where the default lets half of them through
#   CLUSTER=1 bench/instructions.sh         cluster counters in a local redis-server (`make deps`)
#   COLLECT=uv_run bench/instructions.sh    count the whole event loop, not only its socket callbacks
#                                            (uv__io_poll): call_soon callbacks and timers too
#
# The router runs under valgrind (about 50x slower), takes 3 s of wrk warm-up, then its counters
# are zeroed and 8 s of load are counted. Only user space is counted (no kernel time). Needs
# valgrind (`apt-get install -y valgrind`). `callgrind_annotate --inclusive=yes OUT.1` shows where.
set -euo pipefail
ROOT=$(cd "${1:-.}" && pwd); OUT=${2:-/tmp/router-callgrind.out}
HERE=$(cd "$(dirname "$0")/.." && pwd); PY=$HERE/.venv/bin/python
command -v valgrind >/dev/null || { echo "valgrind is not installed: apt-get install -y valgrind" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is not installed (make deps)" >&2; exit 2; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BP=$(free_port); SP=$(free_port); RP=$(free_port); AP=$(free_port)
PIDS=""; D=$(mktemp -d); trap 'kill $PIDS 2>/dev/null; rm -rf "$D"' EXIT
CLUSTER_KEY=""
if [ "${CLUSTER:-0}" = 1 ]; then
  command -v redis-server >/dev/null || { echo "redis-server is not installed (make deps)" >&2; exit 2; }
  RSP=$(free_port); redis-server --port "$RSP" --save '' --appendonly no >/dev/null 2>&1 & PIDS="$PIDS $!"
  CLUSTER_KEY="cluster: {name: instr, redis_url: \"redis://127.0.0.1:$RSP/0\"}"
fi
SHADOW_KEY=""; [ "${SHADOW:-0}" = 1 ] && SHADOW_KEY=", shadow: {backend: s, percent: 100, max_concurrency: ${SHADOW_MAX_CONCURRENCY:-64}}"
cat > "$D/r.yaml" <<EOT
listen: 127.0.0.1:$RP
admin: {listen: 127.0.0.1:$AP}
state_dir: $D/state
$CLUSTER_KEY
backends: {m: {url: "http://127.0.0.1:$BP"}, s: {url: "http://127.0.0.1:$SP"}}
routes:
  - {name: m, match: {path_prefix: /v1/models/m}, primary: m$SHADOW_KEY}
EOT
cat > "$D/post.lua" <<'EOT'
wrk.method = "POST"
wrk.body = '{"inputs": [[0.1, 0.2, 0.3, 0.4]]}'
wrk.headers["Content-Type"] = "application/json"
EOT
cd "$ROOT"
"$PY" -m backends.fast_server --port "$BP" >/dev/null 2>&1 & PIDS="$PIDS $!"
"$PY" -m backends.fast_server --port "$SP" --latency-ms 200 >/dev/null 2>&1 & PIDS="$PIDS $!"
valgrind --tool=callgrind --callgrind-out-file="$OUT" --collect-atstart=no --toggle-collect=${COLLECT:-uv__io_poll} \
  "$PY" -m router serve --config "$D/r.yaml" >"$D/router.log" 2>&1 & RPID=$!; PIDS="$PIDS $RPID"
for _ in $(seq 900); do curl -fs -o /dev/null "http://127.0.0.1:$AP/-/healthz" && break; sleep 0.2; done
URL="http://127.0.0.1:$RP/v1/models/m/predict"
wrk -t1 -c8 -d3s -s "$D/post.lua" "$URL" >/dev/null
count() { curl -fs "http://127.0.0.1:$AP/metrics" | awk '/^router_requests_total/ {s+=$2} END {print s}'; }
n0=$(count); callgrind_control -z "$RPID" >/dev/null 2>&1
wrk -t1 -c8 -d8s -s "$D/post.lua" "$URL" >/dev/null
callgrind_control -d "$RPID" >/dev/null 2>&1; n1=$(count)
dump=$(ls -t "$OUT".* | head -1)
ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
echo "$ROOT: $((n1 - n0)) requests, $((ir / (n1 - n0))) instructions per request (user space; $dump)"
