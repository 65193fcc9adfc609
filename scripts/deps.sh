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

# kubectl (with its built-in kustomize) for the manifest checks (scripts/check-k8s): the one
# on PATH, else a pinned release binary from dl.k8s.io in target/tools/, checked against the
# published .sha256 file. Debian 12 has no kubectl package (only kubernetes-client 1.20,
# whose kustomize is too old), so apt is no way to get it. Puts the downloaded one's
# directory (target/tools/kubectl-VERSION) first on PATH. TWIN_KUBECTL_BASE_URL replaces
# https://dl.k8s.io/release (a mirror).
TWIN_KUBECTL_VERSION=v1.30.14
twin_need_kubectl() {
  local dir arch url tmp
  command -v kubectl >/dev/null 2>&1 && return 0
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/tools/kubectl-$TWIN_KUBECTL_VERSION"
  if [ -x "$dir/kubectl" ]; then
    export PATH="$dir:$PATH"
    return 0
  fi
  case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) echo "twin: kubectl missing and no release binary for $(uname -m); install kubectl and re-run" >&2; exit 1 ;;
  esac
  if ! command -v curl >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null
    else
      echo "twin: kubectl and curl missing; run: sudo apt-get install -y curl (or install kubectl) and re-run" >&2; exit 1
    fi
  fi
  url="${TWIN_KUBECTL_BASE_URL:-https://dl.k8s.io/release}/$TWIN_KUBECTL_VERSION/bin/linux/$arch/kubectl"
  echo "twin: kubectl missing; downloading $url" >&2
  mkdir -p "$dir"
  tmp="$(mktemp -d "$dir/.download.XXXXXX")"
  local err
  if ! err="$(curl -fsSL --retry 2 --connect-timeout 20 -o "$tmp/kubectl" "$url" 2>&1)" \
    || ! err="$(curl -fsSL --retry 2 --connect-timeout 20 -o "$tmp/kubectl.sha256" "$url.sha256" 2>&1)"; then
    rm -rf "$tmp"
    echo "twin: could not download kubectl from $url (${err##*$'\n'}); install kubectl (with built-in kustomize) and re-run" >&2
    exit 1
  fi
  if ! printf '%s  %s\n' "$(tr -d '[:space:]' <"$tmp/kubectl.sha256")" "$tmp/kubectl" | sha256sum --check --status 2>/dev/null; then
    rm -rf "$tmp"
    echo "twin: $url does not match its published sha256; not using it" >&2
    exit 1
  fi
  chmod 755 "$tmp/kubectl"
  mv "$tmp/kubectl" "$dir/kubectl"
  rm -rf "$tmp"
  export PATH="$dir:$PATH"
}

# The manifest validator's Python modules (kubernetes-validate, PyYAML): the system
# python's when it has them, else a virtual environment under target/ (a stock Debian 12
# refuses `pip install` into the system python, PEP 668). TWIN_PY_VENV=1 forces the virtual
# environment. Sets TWIN_PY to the python to run k8s/validate.py with.
twin_need_validator() {
  local venv
  TWIN_PY=python3
  if [ -z "${TWIN_PY_VENV:-}" ] && python3 -c 'import kubernetes_validate, yaml' 2>/dev/null; then
    return 0
  fi
  venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/py-venv"
  if ! "$venv/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        rm -rf "$venv"
        python3 -m venv "$venv"
      else
        echo "twin: python3 -m venv failed; run: sudo apt-get install -y python3-venv" >&2; exit 1
      fi
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check kubernetes-validate pyyaml
  fi
  TWIN_PY="$venv/bin/python"
}
