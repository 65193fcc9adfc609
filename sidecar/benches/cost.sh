#!/usr/bin/env bash
# CPU cost per request, in counts that do not depend on how loaded the machine is: the
# sidecar (Twin's HTTP/1 engine, one worker thread, access log off) and HAProxy (nbthread 1)
# take turns behind the same nginx, with the same wrk Lua script as proxy.sh. For each run,
# perf counts the proxy's syscalls and context switches, and /proc its user and system CPU
# time, divided by the requests wrk completed. With STRACE=1, one short extra run per proxy
# under `strace -c -f` gives the syscall mix per request (strace slows the proxy: its times
# mean nothing, its counts do). With SEGMENTS=1, one short extra run each of direct nginx and
# both proxies under `nstat` (iproute2) gives the TCP segments per request on the loopback,
# pure ACKs and delayed ACKs included: the kernel work a proxy can still save by sending less.
# nstat counts the whole machine, so run it with nothing else talking TCP.
#
# Usage: sidecar/benches/cost.sh [SECONDS] [CONNECTIONS] [ROUNDS]   (defaults 5, 64, 3)
#        env STRACE=1, SEGMENTS=1, PROFILE=1 (CALLGRAPH=dwarf, PERF_DATA=PATH), CALLGRIND=1, SIDECAR=PATH
# Prints one Markdown table on stdout; wrk's output and the strace tables go to stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-5}"
CONNS="${2:-64}"
ROUNDS="${3:-3}"
for tool in wrk haproxy nginx taskset perf; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
# SIDECAR=PATH measures a binary built before (to compare two builds), else this tree's.
if [ -z "${SIDECAR:-}" ]; then
  cargo build --release --quiet -p twin-sidecar
  SIDECAR="$(pwd)/target/release/twin-sidecar"
fi
WORK="$(mktemp -d /tmp/twin-cost-XXXXXX)"
# Every server here is a background job of this script: all of them stop with it.
trap 'kill $(jobs -p) 2>/dev/null; wait; rm -rf "$WORK"' EXIT
trap 'exit 1' INT TERM
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; exit 1; }
A=$(port); B=$(port); H=$(port); S=$(port); I=$(port); M=$(port)

# nginx on CPU 0 with wrk; the proxies on CPU 1.
printf '%s\n' "worker_processes 1; pid $WORK/nginx.pid; error_log $WORK/nginx.err warn; daemon off;" \
  'events { worker_connections 4096; }' \
  "http { access_log off; keepalive_requests 1000000; client_body_temp_path $WORK;" \
  "  server { listen 127.0.0.1:$A; location / { return 200 \"m6v\n\"; } }" \
  "  server { listen 127.0.0.1:$B; location / { return 200 \"wanguo\n\"; } } }" >"$WORK/nginx.conf"
taskset -c 0 nginx -c "$WORK/nginx.conf" -e "$WORK/nginx.err" &
printf '%s\n' 'global' '  nbthread 1' '  maxconn 4000' 'defaults' '  mode http' \
  '  timeout connect 1s' '  timeout client 30s' '  timeout server 30s' \
  '  option http-keep-alive' '  http-reuse always' \
  "frontend fe" "  bind 127.0.0.1:$H" '  default_backend be' 'backend be' '  balance roundrobin' \
  "  server m6v 127.0.0.1:$A weight 3" "  server wanguo 127.0.0.1:$B weight 7" >"$WORK/haproxy.cfg"
taskset -c 1 haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 & HAPROXY=$!
printf '%s\n' 'datacenters: {m6v: {code: 0}, wanguo: {code: 1}}' 'routes:' '  payments:' \
  '    weights: {m6v: 30%, wanguo: 70%}' \
  "    endpoints: {m6v: ['127.0.0.1:$A'], wanguo: ['127.0.0.1:$B']}" >"$WORK/routes.yaml"
TWIN_ACCESS_LOG=off RUST_LOG=warn taskset -c 1 "$SIDECAR" --dc m6v --routes-file "$WORK/routes.yaml" \
  --threads 1 --http1-engine twin --outbound "127.0.0.1:$S" --ids "127.0.0.1:$I" \
  --admin "127.0.0.1:$M" --hwm-file "$WORK/hwm" >"$WORK/sidecar.log" 2>&1 & TWIN=$!
up "$A"; up "$B"; up "$H"; up "$S"
# The very wrk script proxy.sh sends (lib.sh writes it).
# shellcheck source=sidecar/benches/lib.sh
source sidecar/benches/lib.sh
write_unit_lua /
[ -s "$WORK/unit.lua" ] || { echo "no wrk script written by sidecar/benches/lib.sh" >&2; exit 1; }

# User and system CPU time of a process, in clock ticks, as "utime stime".
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
# wrk for DURATION seconds against port $1; prints the number of requests it completed.
load() {
  local out
  out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$WORK/unit.lua" "http://127.0.0.1:$1/")
  echo "$out" >&2
  echo "$out" | awk '/requests in/ {print $1}'
}
# One counted run of the proxy `pid` listening on `port`: prints
# "requests syscalls ctxsw task_clock_us user_us sys_us" (totals).
measure() {
  local pid=$1 port=$2 n t0 t1 perf_pid
  taskset -c 0 wrk -t1 -c"$CONNS" -d1s -s "$WORK/unit.lua" "http://127.0.0.1:$port/" >/dev/null
  t0=$(ticks "$pid")
  perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter -p "$pid" -o "$WORK/perf" &
  perf_pid=$!
  sleep 0.2
  n=$(load "$port")
  kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
  t1=$(ticks "$pid")
  awk -F, -v n="$n" -v t0="$t0" -v t1="$t1" -v hz="$(getconf CLK_TCK)" '
    $3 ~ /task-clock/ { tc = $1 * 1000 } $3 == "context-switches" { cs = $1 }
    $3 == "raw_syscalls:sys_enter" { sc = $1 }
    END { split(t0, a, " "); split(t1, b, " ");
          printf "%d %d %d %.0f %.0f %.0f\n", n, sc, cs, tc, (b[1]-a[1])*1e6/hz, (b[2]-a[2])*1e6/hz }' "$WORK/perf"
}
# Syscall mix per request under strace (a short run).
mix() {
  local pid=$1 port=$2 n
  strace -c -f -p "$pid" -o "$WORK/strace" &
  local st=$!
  sleep 0.5
  n=$(DURATION=2 load "$port")
  kill -INT "$st"; wait "$st" 2>/dev/null || true
  echo "syscalls per request of pid $pid over $n requests:" >&2
  awk -v n="$n" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {
      e = ($5 ~ /^[0-9]+$/) ? $5 : 0; printf "  %-16s %.3f calls/request, %.3f errors/request\n", $NF, $4/n, e/n }' \
    "$WORK/strace" >&2
}

# TCP segments per request over a short run against port $1 (the whole machine's counters).
segments() {
  local name=$1 port=$2 n
  taskset -c 0 wrk -t1 -c"$CONNS" -d1s -s "$WORK/unit.lua" "http://127.0.0.1:$port/" >/dev/null
  nstat -n
  n=$(DURATION=3 load "$port")
  nstat | awk -v n="$n" -v who="$name" '
    $1 == "TcpOutSegs" { out = $2 } $1 == "TcpExtTCPPureAcks" { pure = $2 } $1 == "TcpExtDelayedACKs" { dack = $2 }
    END { printf "%s: %d requests, %.3f TCP segments sent/request, %.3f pure ACKs/request, %.3f delayed ACKs/request\n",
          who, n, out/n, pure/n, dack/n }' >&2
}

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
if [ -n "${SEGMENTS:-}" ]; then
  command -v nstat >/dev/null || { echo "missing nstat: apt-get install -y iproute2" >&2; exit 1; }
  segments "direct nginx" "$A"; segments twin "$S"; segments haproxy "$H"
fi
declare -A SUM
for r in $(seq "$ROUNDS"); do
  for who in twin haproxy; do
    if [ "$who" = twin ]; then pid=$TWIN; p=$S; else pid=$HAPROXY; p=$H; fi
    read -r n sc cs tc us ss < <(measure "$pid" "$p")
    echo "round $r $who: $n requests, $sc syscalls, $cs context switches, task-clock $tc us, user $us us, sys $ss us" >&2
    for k in n sc cs tc us ss; do SUM[$who.$k]=$(( ${SUM[$who.$k]:-0} + ${!k} )); done
  done
done
if [ -n "${STRACE:-}" ]; then mix "$TWIN" "$S"; mix "$HAPROXY" "$H"; fi
# Where the sidecar's own (user) time goes: PROFILE=1 samples it with the cpu-clock event,
# which a VM without hardware counters still has.
if [ -n "${PROFILE:-}" ]; then
  perf record -q -e cpu-clock -F 4999 --call-graph "${CALLGRAPH:-fp}" -p "$TWIN" -o "$WORK/perf.data" &
  prof=$!
  sleep 0.2
  load "$S" >/dev/null
  kill -INT "$prof"; wait "$prof" 2>/dev/null || true
  [ -z "${PERF_DATA:-}" ] || cp "$WORK/perf.data" "$PERF_DATA"
  perf report -i "$WORK/perf.data" --no-children -g none --percent-limit 0.25 --sort dso,sym --stdio 2>/dev/null | grep -v '^$' | head -"${PROFILE_LINES:-80}" >&2
fi
# User-space instructions per request, counted by valgrind (callgrind): exact for the same
# binary and load whatever else the machine does. CALLGRIND=1 starts a second sidecar and a
# second HAProxy under valgrind, zeroes their counters after a warm-up and dumps them after
# one wrk run.
irs() {
  local pid=$1 port=$2 n
  taskset -c 0 wrk -t1 -c"$CONNS" -d1s -s "$WORK/unit.lua" "http://127.0.0.1:$port/" >/dev/null
  callgrind_control -z "$pid" >/dev/null
  n=$(load "$port")
  callgrind_control -d "$pid" >/dev/null
  sleep 0.5
  # The newest dump of that process holds the counts since the zeroing.
  [ -z "${CG_OUT:-}" ] || cp "$(ls -t "$WORK"/cg."$pid".* | head -1)" "$CG_OUT.$pid"
  awk -v n="$n" '/^(summary|totals):/ { ir = $2 } END { printf "%d requests, %.0f user instructions/request\n", n, ir/n }' \
    "$(ls -t "$WORK"/cg."$pid".* | head -1)"
}
if [ -n "${CALLGRIND:-}" ]; then
  VG=(valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p")
  S3=$(port); I3=$(port); M3=$(port); H3=$(port)
  TWIN_ACCESS_LOG=off RUST_LOG=warn taskset -c 1 "${VG[@]}" "$SIDECAR" --dc m6v --routes-file "$WORK/routes.yaml" \
    --threads 1 --http1-engine twin --outbound "127.0.0.1:$S3" --ids "127.0.0.1:$I3" \
    --admin "127.0.0.1:$M3" --hwm-file "$WORK/hwm3" >"$WORK/sidecar-vg.log" 2>&1 & VT=$!
  sed "s/127.0.0.1:$H\$/127.0.0.1:$H3/" "$WORK/haproxy.cfg" >"$WORK/haproxy-vg.cfg"
  taskset -c 1 "${VG[@]}" haproxy -f "$WORK/haproxy-vg.cfg" -db >"$WORK/haproxy-vg.log" 2>&1 & VH=$!
  up "$S3"; up "$H3"
  echo "callgrind twin: $(irs "$VT" "$S3")"
  echo "callgrind haproxy: $(irs "$VH" "$H3")"
fi
[ "$ROUNDS" -gt 0 ] || exit 0

per() { awk -v a="$1" -v n="$2" -v s="${3:-1}" 'BEGIN { printf "%.2f", a*s/n }'; }
echo "| proxy ($CONNS connections, $ROUNDS × ${DURATION}s, load before: $LOAD) | requests | syscalls/request | context switches/request | task-clock µs/request | user µs/request | system µs/request |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for who in twin haproxy; do
  n=${SUM[$who.n]}
  echo "| $who | $n | $(per "${SUM[$who.sc]}" "$n") | $(per "${SUM[$who.cs]}" "$n") | $(per "${SUM[$who.tc]}" "$n") | $(per "${SUM[$who.us]}" "$n") | $(per "${SUM[$who.ss]}" "$n") |"
done
