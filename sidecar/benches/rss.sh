#!/usr/bin/env bash
# Memory of the sidecar (Twin's HTTP/1 engine, one worker thread) with many client
# connections: its resident set (VmRSS) and peak (VmHWM) from /proc, in four phases, behind
# the same nginx and with the same wrk Lua script as proxy.sh:
#   start   no connection yet
#   idle    CONNECTIONS keep-alive clients that each sent one request, got the answer, and
#           now sit idle (held open by a small Python client; all requests sent at once, or
#           with IDLE=seq one client after the other)
#   load    wrk with CONNECTIONS connections for SECONDS (RSS read 1 s before wrk ends;
#           the idle clients of the previous phase are closed first)
#   after   wrk done (its connections closed), the upstream pool still full
# RSS does not depend on how loaded the machine is, so this can run while others build.
#
# Usage: sidecar/benches/rss.sh [SECONDS] [CONNECTIONS]   (defaults 8 and 1000)
#        env SIDECAR=PATH (a binary built before, to compare two builds), TWIN_ACCESS_LOG
#        (default off)
# Prints one Markdown table row per phase on stdout; logs go to stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-8}"
CONNS="${2:-1000}"
for tool in wrk nginx taskset python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
if [ -z "${SIDECAR:-}" ]; then
  cargo build --release --quiet -p twin-sidecar
  SIDECAR="$(pwd)/target/release/twin-sidecar"
fi
ulimit -n "$(( CONNS * 3 + 1024 ))" 2>/dev/null || true
WORK="$(mktemp -d /tmp/twin-rss-XXXXXX)"
trap 'kill $(jobs -p) 2>/dev/null; wait; rm -rf "$WORK"' EXIT
trap 'exit 1' INT TERM
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; exit 1; }
A=$(port); B=$(port); S=$(port); I=$(port); M=$(port)

printf '%s\n' "worker_processes 1; pid $WORK/nginx.pid; error_log $WORK/nginx.err warn; daemon off;" \
  'worker_rlimit_nofile 16384; events { worker_connections 8192; }' \
  "http { access_log off; keepalive_requests 1000000; client_body_temp_path $WORK;" \
  "  server { listen 127.0.0.1:$A; location / { return 200 \"m6v\n\"; } }" \
  "  server { listen 127.0.0.1:$B; location / { return 200 \"wanguo\n\"; } } }" >"$WORK/nginx.conf"
taskset -c 0 nginx -c "$WORK/nginx.conf" -e "$WORK/nginx.err" &
printf '%s\n' 'datacenters: {m6v: {code: 0}, wanguo: {code: 1}}' 'routes:' '  payments:' \
  '    weights: {m6v: 30%, wanguo: 70%}' \
  "    endpoints: {m6v: ['127.0.0.1:$A'], wanguo: ['127.0.0.1:$B']}" >"$WORK/routes.yaml"
TWIN_ACCESS_LOG="${TWIN_ACCESS_LOG:-off}" RUST_LOG=warn taskset -c 1 "$SIDECAR" --dc m6v \
  --routes-file "$WORK/routes.yaml" --threads 1 --http1-engine twin --outbound "127.0.0.1:$S" \
  --ids "127.0.0.1:$I" --admin "127.0.0.1:$M" --hwm-file "$WORK/hwm" >"$WORK/sidecar.log" 2>&1 &
TWIN=$!
up "$A"; up "$B"; up "$S"
cat >"$WORK/unit.lua" <<'EOF'
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/", { ["Host"] = "payments", ["x-twin-unit"] = tostring(math.random(1, 2000000000)) })
end
EOF

kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
row() { echo "| $1 | $(( $(kib "$TWIN" VmRSS) / 1024 )) ($(kib "$TWIN" VmRSS) KiB) | $(( $(kib "$TWIN" VmHWM) / 1024 )) ($(kib "$TWIN" VmHWM) KiB) | $2 |"; }

echo "| phase ($CONNS connections) | VmRSS MiB | VmHWM MiB | note |"
echo "|---|---:|---:|---|"
sleep 0.5
row start "no connection"

# Idle keep-alive clients: each sends one request, reads its whole answer, then waits.
# IDLE=seq: one client at a time (request, answer, next client), else all requests at once.
python3 - "$S" "$CONNS" "$WORK/idle.ready" "${IDLE:-burst}" <<'EOF' &
import socket, sys, time
port, n, ready, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
req = b"GET / HTTP/1.1\r\nHost: payments\r\nx-twin-unit: %d\r\n\r\n"
def answer(s):
    got = b""
    while b"\r\n\r\n" not in got or not got.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection closed")
        got += chunk
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req % i)
    socks.append(s)
    if mode == "seq":
        answer(s)
if mode != "seq":
    for s in socks:
        answer(s)
open(ready, "w").close()
time.sleep(3600)
EOF
IDLERS=$!
for _ in $(seq 600); do [ -f "$WORK/idle.ready" ] && break; sleep 0.1; done
[ -f "$WORK/idle.ready" ] || { echo "idle clients never got their answers" >&2; exit 1; }
sleep 0.5
row idle "$CONNS keep-alive clients idle after one request each (${IDLE:-burst})"
kill "$IDLERS"; wait "$IDLERS" 2>/dev/null || true
sleep 0.5

taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$WORK/unit.lua" "http://127.0.0.1:$S/" >"$WORK/wrk.out" 2>&1 &
WRK=$!
sleep "$(( DURATION - 1 ))"
LOADROW=$(row load "wrk -c$CONNS, RSS 1 s before its end")
wait "$WRK" || true
echo "$LOADROW" | sed "s/|\$/($(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out") req\/s) |/"
cat "$WORK/wrk.out" >&2
sleep 0.5
row after "wrk done"
