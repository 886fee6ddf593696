#!/usr/bin/env bash
# The load balancer itself highly available: two LB hosts in network
# namespaces run ucp-lb and keepalived (VRRP) sharing a virtual IP that
# tracks /healthz through `ucp-lb healthcheck`; a client host connects to the
# VIP every 50 ms. Three faults on the master, each followed by recovery:
#   1. ucp-lb killed (SIGKILL)       -> track script fails, VIP moves
#   2. ucp-lb stopped (SIGTERM)      -> /healthz 503 while draining, VIP moves
#   2b. the same with stop_grace 3s  -> /healthz 503 while still accepting:
#      the VIP moves before any client is refused
#   3. the whole host gone (link down, keepalived and ucp-lb with it)
#      -> the backup stops hearing adverts and takes the VIP
# and prints, for each, how long new clients could not connect. Before
# them, the master's ucp-lb is upgraded in place (ucp-lb --upgrade, the
# same binary) with the client running and a connection held open through
# the VIP: no connect may fail, the VIP may not move, the connection may
# not be cut.
#
# Needs root, iproute2, keepalived, python3; uses only its own namespaces
# (ucplb-ha-*) and addresses 10.77.0.0/24. Not in CI (it is a measurement,
# about a minute); run by hand:  bash tests/ha.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for t in ip keepalived python3; do
  command -v "$t" >/dev/null || { echo "ha: needs $t" >&2; exit 1; }
done
cargo build --release --quiet
bin=$(pwd)/target/release/ucp-lb
peer=$(pwd)/tests/peer.py
work=$(mktemp -d /tmp/ucp-lb-ha.XXXXXX)
pids=()
declare -A lb_pid ka_pid

ns() { local n=$1; shift; ip netns exec "ucplb-ha-$n" "$@"; }
cleanup() {
  set +e
  for p in "${pids[@]}" "${lb_pid[@]}" "${ka_pid[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}" "${lb_pid[@]}" "${ka_pid[@]}"; do wait "$p" 2>/dev/null; done
  for n in a b c sw; do ip netns del "ucplb-ha-$n" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "ha: FAILED: $*" >&2
  for f in "$work"/ka-*.log "$work"/a.log "$work"/b.log; do
    [ -e "$f" ] && { echo "--- $f" >&2; tail -15 "$f" >&2; }
  done
  for n in a b; do
    echo "--- host $n: $(ns "$n" ip -4 -br addr show dev eth0); healthcheck: $(ns "$n" "$bin" healthcheck --url http://127.0.0.1:9900/healthz 2>&1)" >&2
  done
  ps -o pid,stat,cmd -p "${lb_pid[a]},${lb_pid[b]},${ka_pid[a]:-1},${ka_pid[b]}" >&2 || true
  exit 1
}
until_ok() { # what, deadline seconds, command...
  local what=$1 d=$2; shift 2
  local end=$((SECONDS + d))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || fail "$what (after ${d}s)"
    sleep 0.1
  done
}

# A switch (a bridge in its own namespace) and three hosts on it.
for n in a b c sw; do ip netns add "ucplb-ha-$n"; done
ns sw ip link add br0 type bridge
ns sw ip link set br0 up
declare -A addr=([a]=10.77.0.1 [b]=10.77.0.2 [c]=10.77.0.3)
for n in a b c; do
  ip link add "ucplb-$n" type veth peer name eth0 netns "ucplb-ha-$n"
  ip link set "ucplb-$n" netns ucplb-ha-sw
  ns sw ip link set "ucplb-$n" master br0 up
  ns "$n" ip addr add "${addr[$n]}/24" dev eth0
  ns "$n" ip link set eth0 up
  ns "$n" ip link set lo up
done
vip=10.77.0.100

# Backends on host c: "one" behind LB a, "two" behind LB b, so each answer
# tells which LB carried it.
for name in one two; do
  # `ip netns exec` directly, not the ns function: $! must be the process
  # itself (ip execs it), not a subshell, for kill to reach it.
  ip netns exec ucplb-ha-c python3 "$peer" serve "$name" "$work/$name.port" 10.77.0.3 &
  pids+=($!)
done
until_ok "backends" 10 test -s "$work/one.port" -a -s "$work/two.port"

start_lb() { # host, backend name
  local h=$1
  cat >"$work/$h.toml" <<EOF
[admin]
listen = "127.0.0.1:9900"
control_socket = "$work/$h-run/control.sock"
[defaults]
shutdown_timeout = "20s"
[[listener]]
bind = "0.0.0.0:8443"
pool = "p"
[pool.p]
servers = ["10.77.0.3:$(cat "$work/$2.port")"]
[pool.p.health]
kind = "tcp"
EOF
  ip netns exec "ucplb-ha-$h" env UCP_LB_STOP_GRACE="${grace:-0}" "$bin" --config "$work/$h.toml" >>"$work/$h.log" 2>&1 &
  lb_pid[$h]=$!
}

start_keepalived() { # host, priority
  local h=$1
  cat >"$work/ka-$h.conf" <<EOF
global_defs {
    router_id ha-$h
    script_user root
    enable_script_security
}
vrrp_script chk_ucp_lb {
    script "$bin healthcheck --url http://127.0.0.1:9900/healthz --timeout 1s"
    interval 1
    timeout 2
    fall 2
    rise 2
}
vrrp_instance ucp_lb {
    state BACKUP
    interface eth0
    virtual_router_id 77
    priority $2
    advert_int 1
    virtual_ipaddress {
        $vip/24 dev eth0
    }
    track_script {
        chk_ucp_lb
    }
}
EOF
  ip netns exec "ucplb-ha-$h" keepalived --dont-fork --log-console --vrrp -f "$work/ka-$h.conf" \
    --pid "$work/ka-$h.pid" --vrrp_pid "$work/ka-$h.vrrp.pid" >>"$work/ka-$h.log" 2>&1 &
  ka_pid[$h]=$!
}

holds_vip() { ns "$1" ip -4 addr show dev eth0 | grep -q "$vip/"; }
answer() { ns c python3 "$peer" ask "$vip:8443"; }
served_by() { [ "$(answer)" = "$1" ]; }

start_lb a one
start_lb b two
start_keepalived a 254
start_keepalived b 250
until_ok "host a never took the VIP" 30 holds_vip a
until_ok "no traffic through the VIP" 30 served_by one
echo "ha: VIP $vip on host a (priority 254), host b (250) waiting; clients served by a"

# An upgrade of the master in place: nothing may move.
upgrade_run=0
upgrade_a() {
  upgrade_run=$((upgrade_run + 1))
  rm -f "$work/stop" "$work/held"
  ip netns exec ucplb-ha-c python3 "$peer" hold "$vip:8443" "$work/held" "$work/stop" >"$work/hold.out" &
  local h=$!
  ip netns exec ucplb-ha-c python3 "$peer" watch "$vip:8443" 60 "$work/stop" >"$work/watch.out" &
  local w=$!
  until_ok "held connection" 10 test -e "$work/held"
  until_ok "watcher" 10 grep -q " one$" "$work/watch.out"
  local t0 old=${lb_pid[a]} code=0
  t0=$(date +%s.%N)
  ip netns exec ucplb-ha-a "$bin" --config "$work/a.toml" --upgrade >>"$work/a.log" 2>&1 &
  lb_pid[a]=$!
  wait "$old" || code=$?
  [ "$code" = 0 ] || fail "upgrade: the old ucp-lb on a exited $code"
  local t1 n
  t1=$(date +%s.%N)
  # Two seconds of clients after the old process has gone (longer than
  # the track script's interval x fall): the VIP would have moved by then.
  n=$(wc -l <"$work/watch.out")
  more() { [ "$(wc -l <"$work/watch.out")" -ge $((n + 40)) ]; }
  until_ok "upgrade: watcher" 10 more
  touch "$work/stop"
  wait "$w" "$h"
  holds_vip a || fail "upgrade: the VIP moved"
  local line
  line=$(awk -v t0="$t0" -v t1="$t1" -v run="$upgrade_run" '
    $1 >= t0 { n++ } $1 >= t0 && $2 == "-" { failed++ } $1 >= t0 && $2 == "two" { moved++ }
    END { printf "upgrade %d of ucp-lb on a: old exited 0 after %.2f s; %d connects, %d failed, %d served by b\n", run, t1 - t0, n, failed, moved }' "$work/watch.out")
  read -r rounds _ closed < <(sed 's/[a-z_]*=//g' "$work/hold.out")
  echo "ha: $line; held connection: $rounds round trips, $( [ "$closed" = 0.000 ] && echo "not cut" || echo "CUT")"
  [ "$closed" = 0.000 ] || fail "upgrade: the held connection was cut"
  awk '$2 == "-" || $2 == "two"' "$work/watch.out" | grep -q . && fail "upgrade: a client failed or went to b"
  upgrades+=("$line")
}
upgrades=()
for _ in 1 2 3; do upgrade_a; done

results=()
scenario() { # name, action on host a...
  local name=$1; shift
  rm -f "$work/stop"
  ip netns exec ucplb-ha-c python3 "$peer" watch "$vip:8443" 60 "$work/stop" >"$work/watch.out" &
  local w=$!
  until_ok "watcher" 10 grep -q " one$" "$work/watch.out"
  local t0
  t0=$(date +%s.%N)
  "$@"
  until_ok "$name: host b never served" 30 grep -q " two$" "$work/watch.out"
  # A little more traffic through b, then stop the watcher.
  local n
  n=$(wc -l <"$work/watch.out")
  more() { [ "$(wc -l <"$work/watch.out")" -ge $((n + 10)) ]; }
  until_ok "$name: watcher" 10 more
  touch "$work/stop"
  wait "$w"
  local line
  line=$(awk -v t0="$t0" -v name="$name" '
    $2 == "one" && !first_b { last_a = $1 }
    $1 >= t0 && $2 == "-" && !first_b { failed++ }
    $1 >= t0 && $2 == "two" && !first_b { first_b = $1 }
    END { printf "%-34s | %6.2f s | %6.2f s | %5d\n", name, first_b - t0, first_b - last_a, failed }' "$work/watch.out")
  results+=("$line")
  echo "ha: $line"
}

restore() {
  start_lb a one
  [ -n "${ka_pid[a]:-}" ] && kill -0 "${ka_pid[a]}" 2>/dev/null || start_keepalived a 254
  until_ok "host a never took the VIP back" 60 holds_vip a
  until_ok "clients never came back to a" 30 served_by one
}

kill_lb() { kill -KILL "${lb_pid[a]}"; wait "${lb_pid[a]}" 2>/dev/null || true; }
term_lb() { kill -TERM "${lb_pid[a]}"; }
host_down() {
  ns a ip link set eth0 down
  kill -KILL "${lb_pid[a]}" "${ka_pid[a]}"
  wait "${lb_pid[a]}" "${ka_pid[a]}" 2>/dev/null || true
  ka_pid[a]=
}

scenario "ucp-lb on a killed (SIGKILL)" kill_lb
restore
echo "ha: restored: VIP back on a"
scenario "ucp-lb on a stopped (SIGTERM)" term_lb
wait "${lb_pid[a]}" 2>/dev/null || true
restore
echo "ha: restored: VIP back on a"
kill -TERM "${lb_pid[a]}"; wait "${lb_pid[a]}" 2>/dev/null || true
grace=3s restore
echo "ha: restored: VIP back on a, its ucp-lb with stop_grace 3s"
scenario "ucp-lb on a stopped, stop_grace 3s" term_lb
wait "${lb_pid[a]}" 2>/dev/null || true
restore
echo "ha: restored: VIP back on a"
scenario "host a gone (link down)" host_down
ns a ip link set eth0 up
restore

echo
echo "failover with keepalived (advert_int 1, track interval 1, fall 2); a client connects every 50 ms:"
printf "%-34s | %-8s | %-8s | %s\n" "fault on the master (host a)" "fault ->" "last a ->" "failed"
printf "%-34s | %-8s | %-8s | %s\n" "" "first b" "first b" "connects"
for r in "${results[@]}"; do echo "$r"; done
echo
for u in "${upgrades[@]}"; do echo "$u"; done
