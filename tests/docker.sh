#!/usr/bin/env bash
# The container image, for real: builds it with docker/build.sh (nothing
# pulled), runs it with --network host against loopback backends, and checks
# traffic, HEALTHCHECK, SIGHUP reload of a changed mounted config, draining
# on docker stop, the non-root user and a port below 1024, an access log
# refused in the read-only config directory and written in compose's logs
# volume; prints the image size. Starts its own dockerd on a private socket and data root, and stops
# it by PID at the end. Run by .ci/run; by hand: `bash tests/docker.sh`.
#
# Skips (exit 0) when dockerd is missing, except under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
  if [ "${CI:-}" = true ]; then
    echo "docker test: dockerd is missing under CI=true (.ci/run installs docker.io)" >&2
    exit 1
  fi
  echo "docker test: skipped, dockerd is not installed"
  exit 0
fi

work=$(mktemp -d /tmp/ucp-lb-docker.XXXXXX)
export DOCKER_HOST=unix://$work/docker.sock
dockerd_pid=
peers=()
fail() {
  echo "docker test: FAILED: $*" >&2
  if [ -n "$dockerd_pid" ]; then
    docker logs ucp-lb-test 2>&1 | tail -20 >&2 || true
  fi
  exit 1
}
cleanup() {
  set +e
  if [ -n "$dockerd_pid" ]; then
    docker rm -f ucp-lb-test ucp-lb ucp-lb-old ucp-lb-new >/dev/null 2>&1
    docker volume rm ucplbtest-run >/dev/null 2>&1
    kill "$dockerd_pid" 2>/dev/null
    for _ in $(seq 1 300); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  for p in "${peers[@]}"; do kill "$p" 2>/dev/null; done
  # dockerd leaves its network namespace mount behind under the exec root.
  findmnt -rn -o TARGET | grep "^$work/" | sort -r | xargs -r umount -l
  rm -rf "$work"
}
trap cleanup EXIT

# Waits until "$@" succeeds, for at most $deadline seconds.
deadline=60
until_ok() {
  local what=$1; shift
  local end=$((SECONDS + deadline))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || fail "$what (after ${deadline}s)"
    sleep 0.2
  done
}

# dockerd of our own: private socket, data and exec roots; no bridge and no
# iptables, since the test uses the host network only.
mkdir -p "$work/data" "$work/exec"
dockerd --host "$DOCKER_HOST" --data-root "$work/data" --exec-root "$work/exec" \
  --pidfile "$work/docker.pid" --bridge none --iptables=false --ip6tables=false \
  >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
until_ok "dockerd did not start: $(tail -3 "$work/dockerd.log")" docker info

start=$SECONDS
docker/build.sh ucp-lb:test 2>&1 | grep -v -e DEPRECATED -e 'legacy builder' -e 'BuildKit is' -e 'environment-variable' -e '^$' \
  || fail "docker/build.sh"
echo "docker test: image built in $((SECONDS - start)) s"
size=$(docker image inspect --format '{{.Size}}' ucp-lb:test)
echo "docker test: image size $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f MB", s / 1e6 }'); goal < 10 MB)"
[ "$(docker history -q ucp-lb:test | wc -l)" -ge 1 ] || fail "no image"

# Two named echo backends on loopback.
peer=tests/peer.py
for name in one two; do
  python3 "$peer" serve "$name" "$work/$name.port" &
  peers+=($!)
done
until_ok "backends did not start" test -s "$work/one.port" -a -s "$work/two.port"
port_one=$(cat "$work/one.port")
port_two=$(cat "$work/two.port")

# Free loopback ports: admin, and a traffic port below 1024 (uid 65532
# binds it through the binary's file capability).
free_port() {
  python3 - "$@" <<'EOF'
import socket, sys
lo, hi = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (0, 0)
for p in ([0] if lo == 0 else range(lo, hi)):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    print(s.getsockname()[1])
    break
EOF
}
admin_port=$(free_port)
lb_port=$(free_port 700 1000)
[ -n "$lb_port" ] || fail "no free port below 1024 on 127.0.0.1"

conf=$work/etc
mkdir -p "$conf"
write_config() { # $1: backend port, $2: more keys of the listener
  cat >"$conf/lb.toml.new" <<EOF
[admin]
listen = "127.0.0.1:$admin_port"

[defaults]
shutdown_timeout = "5s"

[[listener]]
bind = "127.0.0.1:$lb_port"
pool = "p"
${2:-}

[pool.p]
# A name: resolved inside the container from its /etc/hosts.
servers = ["localhost:$1"]

[pool.p.health]
kind = "tcp"
interval = "1s"
EOF
  # In place (same inode): the container sees the file through a single-file
  # bind mount, where a rename-replace would stay invisible.
  cat "$conf/lb.toml.new" >"$conf/lb.toml"
}
write_config "$port_one"
chmod 755 "$conf"
chmod 644 "$conf/lb.toml"

# The config as a single-file mount: ucp-lb's own file watch (on
# /etc/ucp-lb inside the container) does not see writes made on the host
# through another path, so the reload below can only come from SIGHUP.
docker run -d --name ucp-lb-test --network host --stop-timeout 30 \
  -v "$conf/lb.toml:/etc/ucp-lb/lb.toml:ro" ucp-lb:test >/dev/null || fail "docker run"

ask() { python3 "$peer" ask "127.0.0.1:$lb_port"; }
until_ok "no traffic through the container" ask
[ "$(ask)" = one ] || fail "traffic went to $(ask), not backend one"
echo "docker test: traffic passes (127.0.0.1:$lb_port -> backend one)"

pid=$(docker inspect --format '{{.State.Pid}}' ucp-lb-test)
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
[ "$uid" = 65532 ] || fail "the process runs as uid $uid, not 65532"
echo "docker test: runs as uid $uid (non-root), listening on port $lb_port < 1024"

health() { [ "$(docker inspect --format '{{.State.Health.Status}}' ucp-lb-test)" = healthy ]; }
start=$SECONDS
until_ok "HEALTHCHECK never turned healthy" health
echo "docker test: HEALTHCHECK healthy after $((SECONDS - start)) s more"

# SIGHUP: the mounted config now points at backend two.
write_config "$port_two"
docker kill -s HUP ucp-lb-test >/dev/null
is_two() { [ "$(ask)" = two ]; }
until_ok "SIGHUP did not reload the changed config" is_two
# The log is read into a file first: `docker logs | grep -q` under pipefail
# fails when grep exits early and docker logs gets SIGPIPE.
docker logs ucp-lb-test >"$work/lb.log" 2>&1
grep -q "SIGHUP: reloading the config" "$work/lb.log" || fail "no SIGHUP in the log"
! grep -q "config file changed" "$work/lb.log" || fail "the file watch reloaded, not SIGHUP"
echo "docker test: docker kill -s HUP reloaded the config (traffic now to backend two)"

# docker stop: SIGTERM; the open connection keeps passing bytes while new
# ones are refused, and is closed at shutdown_timeout (5s).
python3 "$peer" hold "127.0.0.1:$lb_port" "$work/held" >"$work/hold.out" &
hold_pid=$!
until_ok "held connection not open" test -e "$work/held"
t0=$(date +%s.%N)
docker stop ucp-lb-test >/dev/null &
stop_pid=$!
refused() { ! ask; }
until_ok "still accepting after docker stop" refused
wait "$stop_pid" || fail "docker stop"
t1=$(date +%s.%N)
wait "$hold_pid"
read -r rounds last_ok closed < <(sed 's/[a-z_]*=//g' "$work/hold.out")
code=$(docker inspect --format '{{.State.ExitCode}}' ucp-lb-test)
[ "$code" = 0 ] || fail "exit code $code after docker stop"
awk -v t0="$t0" -v t1="$t1" -v ok="$last_ok" -v closed="$closed" -v rounds="$rounds" 'BEGIN {
  printf "docker test: docker stop took %.2f s (shutdown_timeout 5s); the open connection passed bytes until %.2f s after it, closed at %.2f s (%d round trips)\n", t1 - t0, ok - t0, closed - t0, rounds
  if (ok - t0 < 4) { print "docker test: FAILED: the open connection was cut before shutdown_timeout" > "/dev/stderr"; exit 1 }
  if (t1 - t0 > 10) { print "docker test: FAILED: docker stop took longer than shutdown_timeout allows" > "/dev/stderr"; exit 1 }
}' || exit 1
docker logs ucp-lb-test >"$work/lb.log" 2>&1
grep -q SIGTERM "$work/lb.log" || fail "no SIGTERM in the log"
docker rm ucp-lb-test >/dev/null

# An upgrade: a second container started with --upgrade, sharing the
# control socket's directory, takes the listening sockets and the open
# connection over; the first exits 0 by itself. A client loop connects
# every 50 ms meanwhile: no connect fails, and the held connection goes on.
# As docs/operations.md says: restart only on failure (a container that exits 0 after
# handing over stays stopped), a named volume for the socket's directory.
lb_run() { # $1: name, then arguments for ucp-lb
  local name=$1; shift
  docker run -d --name "$name" --network host --stop-timeout 30 --restart on-failure \
    -v "$conf/lb.toml:/etc/ucp-lb/lb.toml:ro" -v ucplbtest-run:/run/ucp-lb ucp-lb:test "$@" >/dev/null
}
# --upgrade with nobody to take over from: an ordinary start.
lb_run ucp-lb-old --config /etc/ucp-lb/lb.toml --upgrade || fail "docker run (old)"
until_ok "no traffic through the first container" ask
control_up() { docker logs ucp-lb-old 2>&1 | grep -c "control socket up"; }
until_ok "no control socket" control_up
python3 "$peer" hold "127.0.0.1:$lb_port" "$work/held2" "$work/stop" >"$work/hold2.out" &
hold_pid=$!
until_ok "held connection not open" test -e "$work/held2"
python3 "$peer" watch "127.0.0.1:$lb_port" 60 "$work/stop" >"$work/watch.out" &
watch_pid=$!
until_ok "the client loop did not start" test -s "$work/watch.out"
lb_run ucp-lb-new --config /etc/ucp-lb/lb.toml --upgrade || fail "docker run --upgrade"
old_exited() { [ "$(docker inspect --format '{{.State.Status}}' ucp-lb-old)" = exited ]; }
until_ok "the old container did not exit by itself" old_exited
code=$(docker inspect --format '{{.State.ExitCode}}' ucp-lb-old)
[ "$code" = 0 ] || fail "the old container exited $code"
# Traffic for a second more on the new container alone (a duration of
# load, not a wait for something to happen).
sleep 1
touch "$work/stop"
wait "$watch_pid" "$hold_pid"
attempts=$(wc -l <"$work/watch.out")
failed=$(awk '$2 == "-"' "$work/watch.out" | wc -l)
read -r rounds last_ok closed < <(sed 's/[a-z_]*=//g' "$work/hold2.out")
docker logs ucp-lb-new >"$work/new.log" 2>&1
moved=$(grep -o 'moved=[0-9]*' "$work/new.log" | tail -1)
echo "docker test: upgrade by a second container: old exited $code by itself; $attempts connects meanwhile, $failed failed; the held connection made $rounds round trips and was not closed (closed=$closed); new container says $moved"
[ "$failed" = 0 ] || fail "$failed connects failed during the upgrade"
[ "$closed" = 0.000 ] || fail "the held connection was cut"
[ "$(ask)" = two ] || fail "the new container does not serve"
docker rm -f ucp-lb-old ucp-lb-new >/dev/null
docker volume rm ucplbtest-run >/dev/null

# docker/compose.yml's LB service as written (all capabilities dropped but
# NET_BIND_SERVICE, read-only root), on the same config directory.
if command -v docker-compose >/dev/null; then
  compose=(docker-compose -f docker/compose.yml -p ucplbtest --profile lb)
  export UCP_LB_IMAGE=ucp-lb:test UCP_LB_CONFIG_DIR=$conf
  "${compose[@]}" config -q || fail "compose.yml does not validate"
  # The config directory is read-only: an access log beside lb.toml is
  # refused at start, naming the reason; one in the logs volume is written.
  write_config "$port_two" 'access_log = "access.log"'
  if docker run --rm -v "$conf:/etc/ucp-lb:ro" ucp-lb:test check --config /etc/ucp-lb/lb.toml >"$work/check.out" 2>&1; then
    fail "check passed an access log in the read-only config directory"
  fi
  grep -q "listener\[0\].access_log: cannot write the access log: /etc/ucp-lb/access.log: read-only file system" "$work/check.out" \
    || fail "check's message for a read-only access log: $(cat "$work/check.out")"
  echo "docker test: an access log in the read-only config directory is refused: $(grep -o 'read-only file system[^)]*)' "$work/check.out")"
  write_config "$port_two" 'access_log = "/var/log/ucp-lb/access.log"'
  "${compose[@]}" up -d >"$work/compose.log" 2>&1 || fail "docker-compose up: $(tail -3 "$work/compose.log")"
  until_ok "no traffic through the compose service" ask
  echo "docker test: docker/compose.yml (profile lb) serves on port $lb_port: backend $(ask)"
  logs=$(docker volume inspect --format '{{.Mountpoint}}' ucp-lb-logs)/access.log
  logged() { [ "$(wc -l <"$logs")" -ge 3 ]; }
  ask >/dev/null && ask >/dev/null && ask >/dev/null
  until_ok "no access log lines in the ucp-lb-logs volume" logged
  echo "docker test: the access log is written in the volume ucp-lb-logs ($(wc -l <"$logs") lines, mode $(stat -c %a "$logs"), uid $(stat -c %u "$logs"))"
  "${compose[@]}" down -t 30 >"$work/compose.log" 2>&1 || fail "docker-compose down: $(tail -5 "$work/compose.log")"
elif [ "${CI:-}" = true ]; then
  fail "docker-compose is missing under CI=true (.ci/run installs it)"
else
  echo "docker test: compose.yml skipped, docker-compose is not installed"
fi
echo "docker test: passed"
