#!/usr/bin/env bash
# Runs benches/l4.rs: ucp-lb, nginx stream and HAProxy mode tcp side by side.
# Installs nginx and haproxy when missing (needs root), raises the fd limit,
# and pins the load generator to CPU 1 (the bench pins each proxy to CPU 0).
# Usage: benches/run.sh            ROUNDS=3 IDLE_CONNS=5000 by default
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-stream haproxy >/dev/null
  else
    echo "nginx/haproxy missing and not root: they will be skipped" >&2
  fi
fi
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --bench l4 >/dev/null 2>&1 || true
exec taskset -c 1 cargo bench --bench l4
