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

for tool in wrk nginx taskset; do
  command -v "$tool" >/dev/null 2>&1 || { echo "missing $tool: apt-get install -y wrk nginx util-linux" >&2; exit 1; }
done
cargo build --release --quiet -p twin-sidecar
SIDECAR="$(pwd)/target/release/twin-sidecar"

WORK="$(mktemp -d /tmp/twin-bench-log-XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

A=$(free_port); B=$(free_port)
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx;
  scgi_temp_path $WORK/nginx;
  server { listen 127.0.0.1:$A; location / { return 200 "m6v\n"; } }
  server { listen 127.0.0.1:$B; location / { return 200 "wanguo\n"; } }
}
EOF
taskset -c 0 nginx -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
PIDS+=($!)

cat > "$WORK/routes.yaml" <<EOF
datacenters: {m6v: {code: 0}, wanguo: {code: 1}}
routes:
  payments:
    weights: {m6v: 30%, wanguo: 70%}
    endpoints: {m6v: ['127.0.0.1:$A'], wanguo: ['127.0.0.1:$B']}
EOF

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

cat > "$WORK/unit.lua" <<'EOF'
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/pay", { ["Host"] = "payments", ["x-twin-unit"] = tostring(math.random(1, 2000000000)) })
end
EOF

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
# CPU time (user+system, all threads) a process has used, in microseconds.
cpu_us() { awk -v t="$(getconf CLK_TCK)" '{printf "%.0f", ($14+$15)*1000000/t}' "/proc/$1/stat"; }
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
