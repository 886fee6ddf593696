#!/usr/bin/env bash
# Builds the ucp-lb image without pulling anything: compiles a static
# binary on the host with cargo, lays out a root file system for it, and
# hands that to `docker build` (FROM scratch).
#
#   docker/build.sh [TAG]        # default tag: ucp-lb:latest
#
# Needs: cargo (Rust), setcap (Debian package libcap2-bin), a docker CLI
# talking to a daemon (DOCKER_HOST is honoured).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-ucp-lb:latest}
target=x86_64-unknown-linux-gnu

# glibc linked in statically: the image needs no libc. Only the target
# crates get +crt-static, since --target keeps build scripts and proc
# macros on the host's normal linking.
RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile dist --locked --target "$target"
bin=target/$target/dist/ucp-lb

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/ucp-lb" "$root/tmp" "$root/run" "$root/var/log"
chmod 1777 "$root/tmp"
cp "$bin" "$root/usr/local/bin/ucp-lb"
chmod 0755 "$root/usr/local/bin/ucp-lb"
# The manual pages, where man looks for them (the image has no man; read
# them on the host: docker run --rm ucp-lb --man | man -l -).
install -Dm644 docs/man/ucp-lb.1 "$root/usr/share/man/man1/ucp-lb.1"
install -Dm644 docs/man/lb.toml.5 "$root/usr/share/man/man5/lb.toml.5"
# Bind 443 and 80 as uid 65532 without root: the one capability, on the file.
setcap cap_net_bind_service=+ep "$root/usr/local/bin/ucp-lb"
# Names for uid/gid 65532 (logs, `docker top`); no login, no home.
printf 'root:x:0:0:root:/nonexistent:/sbin/nologin\nucp-lb:x:65532:65532:ucp-lb:/nonexistent:/sbin/nologin\n' \
  > "$root/etc/passwd"
printf 'root:x:0:\nucp-lb:x:65532:\n' > "$root/etc/group"
# Name lookups read /etc/hosts (Docker mounts its own), then DNS.
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"

# The root file system as one layer; tar keeps the capability xattr and
# docker import applies it (COPY in a Dockerfile would not).
version=$(cargo pkgid | sed 's/.*[#@]//')
rootfs_tag=ucp-lb-rootfs:$version
# Everything root's, but the control socket's directory (/run/ucp-lb, mode
# 0700), which belongs to uid 65532: a named volume mounted there starts
# as a copy of it, so the process can make its socket in it, and two
# containers sharing the volume can hand over (ucp-lb --upgrade). The same
# for the access log's directory (/var/log/ucp-lb, mode 0750): /etc/ucp-lb
# is mounted read-only, and a volume here is where a log file can be written.
tar --xattrs --xattrs-include='security.capability' --numeric-owner --owner=0 --group=0 -C "$root" \
  -cf "$ctx/rootfs.tar" .
mkdir -p "$ctx/run/run/ucp-lb" "$ctx/run/var/log/ucp-lb"
chmod 0700 "$ctx/run/run/ucp-lb"
chmod 0750 "$ctx/run/var/log/ucp-lb"
tar --numeric-owner --owner=65532 --group=65532 -C "$ctx/run" -rf "$ctx/rootfs.tar" ./run/ucp-lb ./var/log/ucp-lb
docker import --message "ucp-lb $version root file system" "$ctx/rootfs.tar" "$rootfs_tag" >/dev/null

# The classic builder: FROM a local image needs nothing BuildKit adds, and
# a docker CLI without the buildx plugin can still build.
if ! docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi
mkdir -p "$ctx/empty"
docker build --quiet --tag "$tag" --build-arg ROOTFS="$rootfs_tag" \
  --label org.opencontainers.image.version="$version" \
  --file docker/Dockerfile "$ctx/empty" >/dev/null
# The rootfs tag is only a step: the layer stays, held by $tag.
docker rmi "$rootfs_tag" >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$tag")
echo "built $tag: $(awk -v s="$size" 'BEGIN { printf "%.1f MB (%d bytes)", s / 1e6, s }')"
