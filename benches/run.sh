#!/usr/bin/env bash
# Runs benches/l4.rs: direct, ucp-lb, nginx stream and HAProxy mode tcp side
# by side, interleaved, on loopback. Installs nginx (also the HTTP/HTTPS
# backend), haproxy and wrk when missing (needs root), raises the fd limit as
# far as the hard limit allows, and pins the load generator to CPU 1 (the
# bench pins each proxy to CPU 0).
# Usage: benches/run.sh     ROUNDS=3 IDLE_CONNS=10000 by default; ONLY=ucp-lb,nginx for a subset
#                           of proxies, ROWS=bulk,http,tcp for a subset of rows
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null || ! command -v wrk >/dev/null \
  || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-stream haproxy wrk >/dev/null
  else
    echo "nginx/haproxy/wrk missing and not root: they will be skipped" >&2
  fi
fi
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --bench l4 >/dev/null 2>&1 || true
exec taskset -c 1 cargo bench --bench l4
