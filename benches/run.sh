#!/usr/bin/env bash
# Runs benches/l4.rs: direct, ucp-lb, nginx stream and HAProxy mode tcp side
# by side, interleaved. Installs nginx (also the HTTP/HTTPS backend),
# haproxy, wrk (and ethtool for the netns topology) when missing (needs
# root), raises the fd limit as far as the hard limit allows, and pins the
# load generator to CPU 1 (the bench pins each proxy to CPU 0).
# Usage: benches/run.sh     ROUNDS=3 IDLE_CONNS=10000 by default; ONLY=ucp-lb,nginx for a subset
#                           of proxies (ucp-lb-shared: splicing only bursts beside another, bulk rows only),
#                           ROWS=bulk,http,sni,proxy,instr,tcp for a subset of rows (proxy: new connections
#                           with a PROXY v2 header from the client, and without);
#                           TOPOLOGY=netns: client, proxy and backends in three network
#                           namespaces joined by veth pairs (needs root), instead of loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
topology=${TOPOLOGY:-loopback}
case "$topology" in loopback | netns) ;; *) echo "TOPOLOGY=$topology: expected loopback or netns" >&2; exit 2 ;; esac
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null || ! command -v wrk >/dev/null \
  || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ] \
  || { [ "$topology" = netns ] && ! command -v ethtool >/dev/null; }; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-stream haproxy wrk ethtool >/dev/null
  else
    echo "nginx/haproxy/wrk/ethtool missing and not root: they will be skipped" >&2
  fi
fi
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --bench l4 >/dev/null 2>&1 || true
if [ "$topology" = loopback ]; then
  exec taskset -c 1 cargo bench --bench l4
fi

# Three namespaces, two veth pairs: cl (10.77.1.1) -- (10.77.1.2) lb
# (10.77.2.1) -- (10.77.2.2) srv. The proxies listen on 10.77.1.2 and reach
# the backends on 10.77.2.2; lb forwards between the two for the direct row.
[ "$(id -u)" = 0 ] || { echo "TOPOLOGY=netns needs root (network namespaces)" >&2; exit 2; }
ns() { local n=$1; shift; ip netns exec "ucplb-bench-$n" "$@"; }
cleanup() { for n in cl lb srv; do ip netns del "ucplb-bench-$n" 2>/dev/null || true; done; }
cleanup
trap cleanup EXIT
for n in cl lb srv; do
  ip netns add "ucplb-bench-$n"
  ns "$n" ip link set lo up
  # Every row opens tens of thousands of short connections between two
  # addresses; off loopback the kernel reuses a TIME_WAIT port only when
  # told to (tcp_tw_reuse=2, the default, is loopback only).
  ns "$n" sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65000"
done
ip link add ucplb-c0 netns ucplb-bench-cl type veth peer name ucplb-l0 netns ucplb-bench-lb
ip link add ucplb-l1 netns ucplb-bench-lb type veth peer name ucplb-s0 netns ucplb-bench-srv
link() { # namespace, device, address
  ns "$1" ip addr add "$3/24" dev "$2"
  ns "$1" ip link set "$2" up
  # veth sends GSO super-packets as they are; GRO on the receiving side
  # (NAPI mode) merges what arrives, as a NIC's driver does.
  ns "$1" ethtool -K "$2" gro on tso on gso on >/dev/null
}
link cl ucplb-c0 10.77.1.1
link lb ucplb-l0 10.77.1.2
link lb ucplb-l1 10.77.2.1
link srv ucplb-s0 10.77.2.2
ns cl ip route add default via 10.77.1.2
ns srv ip route add default via 10.77.2.1
ns lb sysctl -qw net.ipv4.ip_forward=1
TOPOLOGY=netns ns cl taskset -c 1 cargo bench --offline --bench l4
