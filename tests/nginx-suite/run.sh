#!/bin/sh
# Runs nginx's own stream tests (nginx-tests' *.t files and lib/Test/Nginx*)
# against ucp-lb through convert-nginx, with nginx-as-ucp-lb as the nginx
# binary Test::Nginx starts. A check by hand, not part of `cargo test`: the
# test files are nginx's and are not shipped here (docs/behaviour.md says
# where to get them).
#
#   tests/nginx-suite/run.sh DIR [FILE.t ...]
#
# DIR holds nginx-tests (lib/Test/Nginx.pm, lib/Test/Nginx/Stream.pm and the
# .t files). Without FILEs, the selection below: the stream tests whose
# directives convert-nginx carries. UCP_LB picks the binary (default the
# newer of target/release/ucp-lb and target/debug/ucp-lb: build first); NGINX the real nginx serving
# the tests' http {} backends (default /usr/sbin/nginx). Extra prove
# options go in PROVE_OPTS (e.g. -v); TEST_NGINX_VERBOSE=1 and
# TEST_NGINX_LEAVE=1 work as in nginx-tests.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: $0 NGINX_TESTS_DIR [FILE.t ...]" >&2; exit 2; }
dir=$(cd "$1" && pwd)
shift
[ -f "$dir/lib/Test/Nginx.pm" ] || { echo "$dir: no lib/Test/Nginx.pm (a checkout of nginx-tests?)" >&2; exit 2; }
command -v prove >/dev/null || { echo "prove (perl) is needed" >&2; exit 2; }

SELECTION="stream_upstream.t stream_limit_conn.t stream_limit_conn_complex.t
stream_proxy.t stream_proxy_next_upstream.t stream_tcp_nodelay.t stream_upstream_hash.t
stream_upstream_least_conn.t stream_upstream_max_conns.t stream_upstream_random.t"

if [ $# -eq 0 ]; then
	set --
	for f in $SELECTION; do
		if [ -f "$dir/$f" ]; then set -- "$@" "$f"; else echo "not in $dir: $f (skipped)" >&2; fi
	done
fi

TEST_NGINX_BINARY="$here/nginx-as-ucp-lb"
export TEST_NGINX_BINARY
"$TEST_NGINX_BINARY" -v
cd "$dir"
# shellcheck disable=SC2086
exec prove ${PROVE_OPTS:-} "$@"
