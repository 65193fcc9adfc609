#!/usr/bin/env bash
# Proxy benchmark: the same wrk client against the same nginx upstream, four ways, one run:
#   direct        wrk -> nginx
#   twin (twin)   wrk -> twin-sidecar --http1-engine twin  (1 worker thread, 30/70 by bucket ring) -> nginx x2
#   twin (hyper)  wrk -> twin-sidecar --http1-engine hyper (1 worker thread, 30/70 by bucket ring) -> nginx x2
#   haproxy       wrk -> HAProxy 2.6 (nbthread 1, roundrobin weights 3/7)                        -> nginx x2
# Every request carries a random x-twin-unit (the same Lua script for all three), so the
# sidecar really splits per request as HAProxy does. The proxy under test runs on CPU 1,
# wrk and nginx on CPU 0. Then the ID API with count=1 and count=1000.
#
# Usage: sidecar/benches/proxy.sh [SECONDS] [CONNECTIONS]   (defaults 10 and 50)
# Prints a Markdown section for BENCHMARKS.md on stdout; logs go to stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-10}"
CONNS="${2:-50}"

# shellcheck source=sidecar/benches/lib.sh
source sidecar/benches/lib.sh
bench_setup twin-bench wrk haproxy nginx

A=$(free_port); B=$(free_port); H=$(free_port); S=$(free_port); I=$(free_port); M=$(free_port)
S2=$(free_port); I2=$(free_port); M2=$(free_port)

# --- upstream: nginx, one worker, two ports (the two "datacenters") ---------------------
start_nginx "$A" "$B"

# --- HAProxy: one thread, 30/70 ---------------------------------------------------------
cat > "$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$H
  default_backend be
backend be
  balance roundrobin
  server m6v 127.0.0.1:$A weight 3
  server wanguo 127.0.0.1:$B weight 7
EOF
taskset -c 1 haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=($HAPROXY_PID)

# --- twin-sidecar: one worker thread, 30/70 from a routes file --------------------------
write_routes "$A" "$B"
# Both engines run side by side on CPU 1; only the one under load uses it.
RUST_LOG=warn taskset -c 1 "$SIDECAR" --dc m6v --routes-file "$WORK/routes.yaml" --threads 1 \
  --http1-engine twin --outbound "127.0.0.1:$S" --ids "127.0.0.1:$I" --admin "127.0.0.1:$M" \
  --hwm-file "$WORK/hwm" >"$WORK/sidecar.log" 2>&1 &
SIDECAR_PID=$!
PIDS+=($SIDECAR_PID)
RUST_LOG=warn taskset -c 1 "$SIDECAR" --dc m6v --routes-file "$WORK/routes.yaml" --threads 1 \
  --http1-engine hyper --outbound "127.0.0.1:$S2" --ids "127.0.0.1:$I2" --admin "127.0.0.1:$M2" \
  --hwm-file "$WORK/hwm2" >"$WORK/sidecar-hyper.log" 2>&1 &
HYPER_PID=$!
PIDS+=($HYPER_PID)

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
wait_port "$A"; wait_port "$B"; wait_port "$H"; wait_port "$S"; wait_port "$I"; wait_port "$S2"

# Same request for every target: Host names the service, a random sticky key per request.
write_unit_lua /

# perf stat of a process while wrk runs (software counters: a VM may have no PMU); empty
# when perf is missing or not allowed.
PERF=""
PERF_EVENTS="task-clock,context-switches"
if command -v perf >/dev/null 2>&1 && perf stat -x, -e task-clock true >/dev/null 2>&1; then PERF=1; fi
PERF_NOTE="perf not available: no context switches or syscalls"
[ -z "$PERF" ] || PERF_NOTE="software counters and tracepoints; a VM may have no hardware counters"
if [ -n "$PERF" ] && perf stat -x, -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
  PERF_EVENTS="$PERF_EVENTS,raw_syscalls:sys_enter"
fi
# run URL [script] [pid] -> prints "req/s p50_ms p99_ms cpu_us_per_request_of_pid ctxsw_per_request syscalls_per_request"
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000 } }'; }
run() {
  local url="$1" script="${2:-$WORK/unit.lua}" pid="${3:-}"
  taskset -c 0 wrk -t1 -c"$CONNS" -d2s -s "$script" "$url" >/dev/null 2>&1   # warm-up
  local c0; c0=$(cpu_us "$pid")
  local perf_out="$WORK/perf.$RANDOM"
  local perf_pid=""
  if [ -n "$PERF" ] && [ -n "$pid" ]; then
    perf stat -x, -e "$PERF_EVENTS" -p "$pid" -o "$perf_out" -- sleep "$DURATION" &
    perf_pid=$!
  fi
  local out; out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$script" "$url")
  if [ -n "$perf_pid" ]; then wait "$perf_pid" 2>/dev/null || true; fi
  local c1; c1=$(cpu_us "$pid")
  echo "$out" >&2
  local rps p50 p99 n
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}' | to_ms)
  p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  local cs="" sc=""
  if [ -f "$perf_out" ]; then
    cs=$(awk -F, '$3=="context-switches" {print $1}' "$perf_out")
    sc=$(awk -F, '$3=="raw_syscalls:sys_enter" {print $1}' "$perf_out")
  fi
  per() { awk -v c="${1:-x}" -v n="$n" 'BEGIN { if (n>0 && c ~ /^[0-9]+$/) printf "%.2f", c/n; else print "n/a" }'; }
  echo "$rps $p50 $p99 $(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN { if (n>0) printf "%.1f", (b-a)/n; else print 0 }') $(per "$cs") $(per "$sc")"
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

echo "== direct ==" >&2;       read -r D_RPS D_P50 D_P99 _ < <(run "http://127.0.0.1:$A/")
echo "== twin-sidecar (twin engine) ==" >&2; read -r T_RPS T_P50 T_P99 T_CPU T_CS T_SC < <(run "http://127.0.0.1:$S/" "$WORK/unit.lua" "$SIDECAR_PID")
T_RSS=$(rss_kib $SIDECAR_PID); T_HWM=$(hwm_kib $SIDECAR_PID)
echo "== twin-sidecar (hyper engine) ==" >&2; read -r Y_RPS Y_P50 Y_P99 Y_CPU Y_CS Y_SC < <(run "http://127.0.0.1:$S2/" "$WORK/unit.lua" "$HYPER_PID")
Y_RSS=$(rss_kib $HYPER_PID); Y_HWM=$(hwm_kib $HYPER_PID)
echo "== haproxy ==" >&2;      read -r H_RPS H_P50 H_P99 H_CPU H_CS H_SC < <(run "http://127.0.0.1:$H/" "$WORK/unit.lua" "$HAPROXY_PID")
H_RSS=$(rss_kib $HAPROXY_PID)

# Did the sidecar split 30/70? Its own counters say.
SPLIT=$(curl -s "http://127.0.0.1:$M/metrics" | awk -F'[ }]' '/^twin_sidecar_requests_total\{.*service="payments",dc="m6v",class="2xx"/ {m=$NF} /^twin_sidecar_requests_total\{.*service="payments",dc="wanguo",class="2xx"/ {w=$NF} END { if (m+w>0) printf "%.1f%% / %.1f%%", 100*m/(m+w), 100*w/(m+w) }')

# ID API
echo 'request = function() return wrk.format("GET", "/v1/ids/bench?count=1") end' > "$WORK/id1.lua"
echo 'request = function() return wrk.format("GET", "/v1/ids/bench?count=1000") end' > "$WORK/id1000.lua"
echo "== ids count=1 ==" >&2;    read -r I1_RPS I1_P50 I1_P99 _ < <(run "http://127.0.0.1:$I/" "$WORK/id1.lua")
echo "== ids count=1000 ==" >&2; read -r IK_RPS IK_P50 IK_P99 _ < <(run "http://127.0.0.1:$I/" "$WORK/id1000.lua")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b>0) printf "%.2f", a/b; else print "n/a" }'; }
CPU=$(lscpu | awk -F: '/Model name/ {gsub(/^ +/,"",$2); print $2; exit}')
cat <<EOF
## Proxy: twin-sidecar vs HAProxy vs direct

Command: \`sidecar/benches/proxy.sh $DURATION $CONNS\` — wrk 1 thread, $CONNS connections, ${DURATION}s after a 2s warm-up,
random \`x-twin-unit\` per request (same Lua script for all targets); upstream nginx $(nginx -v 2>&1 | sed 's/.*\///'), 1 worker, two ports;
the proxy under test pinned to CPU 1 with one worker thread (twin-sidecar \`--threads 1\`, HAProxy \`nbthread 1\`),
wrk and nginx pinned to CPU 0. Machine: \`nproc\` = $(nproc), $CPU, load average before the run: $LOAD. One run, $(date -u +%Y-%m-%d).

| target | req/s | p50 ms | p99 ms | proxy CPU µs/request | context switches/request | syscalls/request | RSS MiB |
|---|---:|---:|---:|---:|---:|---:|---:|
| direct (nginx) | $D_RPS | $D_P50 | $D_P99 | – | – | – | – |
| twin-sidecar, twin engine (30/70 bucket ring) | $T_RPS | $T_P50 | $T_P99 | $T_CPU | $T_CS | $T_SC | $((T_RSS / 1024)) |
| twin-sidecar, hyper engine (30/70 bucket ring) | $Y_RPS | $Y_P50 | $Y_P99 | $Y_CPU | $Y_CS | $Y_SC | $((Y_RSS / 1024)) |
| HAProxy $(haproxy -v | head -1 | awk '{print $3}') (roundrobin 3/7) | $H_RPS | $H_P50 | $H_P99 | $H_CPU | $H_CS | $H_SC | $((H_RSS / 1024)) |

- twin engine / HAProxy: req/s **$(ratio "$T_RPS" "$H_RPS")×**, p50 $(ratio "$T_P50" "$H_P50")×, p99 **$(ratio "$T_P99" "$H_P99")×**, CPU/request **$(ratio "$T_CPU" "$H_CPU")×** (targets: ≥ 1.2×, p99 ≤ 1×, CPU ≤ 0.85×).
- hyper engine / HAProxy: req/s $(ratio "$Y_RPS" "$H_RPS")×, p50 $(ratio "$Y_P50" "$H_P50")×, p99 $(ratio "$Y_P99" "$H_P99")×, CPU/request $(ratio "$Y_CPU" "$H_CPU")×.
- twin engine / hyper engine: req/s $(ratio "$T_RPS" "$Y_RPS")×, CPU/request $(ratio "$T_CPU" "$Y_CPU")×.
- CPU per request is user+system of the proxy process (less sensitive to other load on the machine); context switches and syscalls from \`perf stat -e $PERF_EVENTS\` ($PERF_NOTE).
- twin-sidecar / direct: req/s $(ratio "$T_RPS" "$D_RPS")×; HAProxy / direct: $(ratio "$H_RPS" "$D_RPS")×.
- twin-sidecar (twin engine) split measured from its own counters: m6v / wanguo = $SPLIT (target 30% / 70%).
- twin-sidecar (twin engine) memory after the run: RSS $((T_RSS / 1024)) MiB, peak (VmHWM) $((T_HWM / 1024)) MiB; hyper engine peak $((Y_HWM / 1024)) MiB (target ≤ 30 MB).

## ID API (twin-sidecar, no etcd: fixed worker, local high-water-mark file)

| request | req/s | IDs/s | p99 ms |
|---|---:|---:|---:|
| \`GET /v1/ids/bench?count=1\` | $I1_RPS | $(awk -v r="$I1_RPS" 'BEGIN{printf "%.0f", r}') | $I1_P99 |
| \`GET /v1/ids/bench?count=1000\` | $IK_RPS | $(awk -v r="$IK_RPS" 'BEGIN{printf "%.0f", r*1000}') | $IK_P99 |
EOF
