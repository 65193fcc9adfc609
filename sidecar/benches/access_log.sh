#!/usr/bin/env bash
# Access log cost: the same wrk client and nginx upstream through two twin-sidecars that
# differ only in `--access-log`: `off`, and a file with `--access-log-sample 1` (every
# request logged). Runs alternate off/on ROUNDS times so that other load on the machine
# falls on both alike; each sidecar has one worker thread pinned to CPU 1, wrk and nginx
# run on CPU 0. Every request carries a random x-twin-unit (as proxy.sh).
#
# Usage: sidecar/benches/access_log.sh [SECONDS] [CONNECTIONS] [ROUNDS]   (defaults 10 50 2)
# Prints a Markdown section for BENCHMARKS.md on stdout; logs go to stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-10}"
CONNS="${2:-50}"
ROUNDS="${3:-2}"

# shellcheck source=sidecar/benches/lib.sh
source sidecar/benches/lib.sh
bench_setup twin-bench-log wrk nginx

A=$(free_port); B=$(free_port)
start_nginx "$A" "$B"
write_routes "$A" "$B"

# sidecar NAME ACCESS_LOG PORT -> starts it; sets PID_<NAME>
sidecar() {
  local name="$1" log="$2" s="$3" i m
  i=$(free_port); m=$(free_port)
  RUST_LOG=warn taskset -c 1 "$SIDECAR" --dc m6v --routes-file "$WORK/routes.yaml" --threads 1 \
    --outbound "127.0.0.1:$s" --ids "127.0.0.1:$i" --admin "127.0.0.1:$m" --hwm-file "$WORK/$name.hwm" \
    --access-log "$log" --access-log-sample 1 >"$WORK/$name.out" 2>&1 &
  PIDS+=($!)
  printf -v "PID_$name" '%s' "$!"
  wait_port "$s"
}
OFF=$(free_port); ON=$(free_port)
sidecar off off "$OFF"
sidecar on "$WORK/access.log" "$ON"
wait_port "$A"; wait_port "$B"

write_unit_lua /pay

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
# run PORT PID -> "req/s cpu_us_per_request" of one measured run (after a 2 s warm-up)
run() {
  taskset -c 0 wrk -t1 -c"$CONNS" -d2s -s "$WORK/unit.lua" "http://127.0.0.1:$1/" >/dev/null 2>&1
  local c0 c1 out n
  c0=$(cpu_us "$2")
  out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$WORK/unit.lua" "http://127.0.0.1:$1/")
  c1=$(cpu_us "$2")
  echo "$out" >&2
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}') $(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN { printf "%.1f", (b-a)/n }')"
}
OFFS=(); ONS=(); OFFC=(); ONC=()
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r: access log off ==" >&2; read -r R C < <(run "$OFF" "$PID_off"); OFFS+=("$R"); OFFC+=("$C")
  echo "== round $r: access log on ==" >&2;  read -r R C < <(run "$ON" "$PID_on");   ONS+=("$R");  ONC+=("$C")
done
mean() { printf '%s\n' "$@" | awk '{s+=$1} END { printf "%.1f", s/NR }'; }
OFF_RPS=$(mean "${OFFS[@]}"); ON_RPS=$(mean "${ONS[@]}")
OFF_CPU=$(mean "${OFFC[@]}"); ON_CPU=$(mean "${ONC[@]}")
RATIO=$(awk -v a="$ON_RPS" -v b="$OFF_RPS" 'BEGIN { printf "%.2f", a/b }')
# Requests one core can carry, on vs off: the inverse ratio of CPU per request.
CPU_RATIO=$(awk -v a="$ON_CPU" -v b="$OFF_CPU" 'BEGIN { printf "%.2f", b/a }')
LINES=$(wc -l < "$WORK/access.log")
cat <<EOF
## Access log: on (every request, to a file) vs off

Command: \`sidecar/benches/access_log.sh $DURATION $CONNS $ROUNDS\` — two release twin-sidecars, one worker thread each on
CPU 1, identical but for \`--access-log off\` and \`--access-log FILE --access-log-sample 1\`; wrk 1 thread, $CONNS
connections, ${DURATION}s per run after a 2s warm-up, off/on alternated $ROUNDS times; nginx upstream on CPU 0.
Load average at start: $LOAD.

| access log | req/s (mean of $ROUNDS) | runs | sidecar CPU µs/request (mean) | runs |
|---|---|---|---|---|
| off | $OFF_RPS | ${OFFS[*]} | $OFF_CPU | ${OFFC[*]} |
| on, sample 1.0, to a file | $ON_RPS | ${ONS[*]} | $ON_CPU | ${ONC[*]} |

On/off: req/s **$RATIO×**; requests per CPU second (off CPU/request ÷ on) **$CPU_RATIO×**
($LINES lines written).
EOF
