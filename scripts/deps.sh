#!/usr/bin/env bash
# Installs what Twin's build, tests and demo need on Debian, when missing. Sourced by
# scripts/test and scripts/demo. As root it uses apt-get; otherwise it prints the one line
# to run and stops.
set -euo pipefail

twin_need_packages() {
  local missing=()
  command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
  command -v etcd >/dev/null 2>&1 || [ -n "${TWIN_ETCD_BIN:-}" ] || missing+=(etcd-server)
  command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
  command -v faketime >/dev/null 2>&1 || missing+=(faketime)
  for extra in "$@"; do
    case "$extra" in
      curl) command -v curl >/dev/null 2>&1 || missing+=(curl) ;;
      # Graphviz's `dot` lays out `twinctl deps --svg` (tests draw with and without it).
      dot) command -v dot >/dev/null 2>&1 || missing+=(graphviz) ;;
      # A real HAProxy for the edge load balancer tests (control-plane/tests/edge_*.rs).
      haproxy) command -v haproxy >/dev/null 2>&1 || missing+=(haproxy) ;;
      # promtool checks the alerting rules and dashboard queries (k8s/observability), and a
      # real Prometheus scrapes lab sidecars and exporters for the shift and sync gate tests.
      prometheus) { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus) ;;
      *) command -v "$extra" >/dev/null 2>&1 || missing+=("$extra") ;;
    esac
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "twin: installing ${missing[*]} with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    # The daemons some packages ship (prometheus, haproxy) are not started by the install:
    # tests start their own on loopback ports. policy-rc.d says so to invoke-rc.d and
    # deb-systemd-invoke; recommends (prometheus-node-exporter, another daemon) are skipped.
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -z "$made_policy" ] || rm -f "$policy"
  else
    echo "twin: missing ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "twin: cargo not found; install the Rust toolchain (https://rustup.rs) and re-run" >&2
    exit 1
  fi
}
