# Shared setup of the shell benchmarks (proxy.sh, access_log.sh), sourced by both: the
# tool check, a release twin-sidecar, a work directory removed on exit with every started
# process, free ports, the nginx upstream with its two "datacenters", the 30/70 routes
# file, the wrk script with a random sticky key, and CPU time of a process.
#
# Sets SIDECAR (the binary), WORK (the directory) and PIDS (processes killed on exit).

# bench_setup WORK_PREFIX PACKAGE... -> checks the tools (the packages' commands and taskset),
# builds the sidecar, makes $WORK
bench_setup() {
  local prefix="$1" tool
  shift
  for tool in "$@" taskset; do
    command -v "$tool" >/dev/null 2>&1 || { echo "missing $tool: apt-get install -y $* util-linux" >&2; exit 1; }
  done
  cargo build --release --quiet -p twin-sidecar
  SIDECAR="$(pwd)/target/release/twin-sidecar"
  WORK="$(mktemp -d "/tmp/$prefix-XXXXXX")"
  PIDS=()
  trap bench_cleanup EXIT INT TERM
}

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

# start_nginx PORT_M6V PORT_WANGUO -> one nginx worker on CPU 0 answering on both ports
# (each names its datacenter)
start_nginx() {
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
  server { listen 127.0.0.1:$1; location / { return 200 "m6v\n"; } }
  server { listen 127.0.0.1:$2; location / { return 200 "wanguo\n"; } }
}
EOF
  taskset -c 0 nginx -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
  PIDS+=($!)
}

# write_routes PORT_M6V PORT_WANGUO -> $WORK/routes.yaml: service payments, 30/70
write_routes() {
  cat > "$WORK/routes.yaml" <<EOF
datacenters: {m6v: {code: 0}, wanguo: {code: 1}}
routes:
  payments:
    weights: {m6v: 30%, wanguo: 70%}
    endpoints: {m6v: ['127.0.0.1:$1'], wanguo: ['127.0.0.1:$2']}
EOF
}

# write_unit_lua PATH -> $WORK/unit.lua: GET PATH to service payments, a random sticky key
# per request (so the sidecar really splits per request)
write_unit_lua() {
  cat > "$WORK/unit.lua" <<EOF
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "$1", { ["Host"] = "payments", ["x-twin-unit"] = tostring(math.random(1, 2000000000)) })
end
EOF
}

# cpu_us PID -> CPU time (user+system, all threads) the process has used, in microseconds
# (0 without a PID)
cpu_us() { [ -z "${1:-}" ] && { echo 0; return; }; awk -v t="$(getconf CLK_TCK)" '{printf "%.0f", ($14+$15)*1000000/t}' "/proc/$1/stat"; }
