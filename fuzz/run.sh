#!/usr/bin/env bash
# Runs every cargo-fuzz target for FUZZ_SECS seconds each (default 600),
# then prints, per target, the inputs tried and the crashes found; each
# target's libFuzzer output stays in fuzz/logs/TARGET.log.
# Installs what it needs: the nightly toolchain and cargo-fuzz (from crates).
# Seeds: config/*.toml, tests/nginx/*.conf and fuzz/seeds/ (probe/, sni/, proxy_header/). A crash leaves
# its input in fuzz/artifacts/TARGET/; fix it and keep it in
# tests/fuzz_regressions/TARGET/ (tests/fuzz_regressions.rs runs those).
# Usage: fuzz/run.sh [TARGET...]      FUZZ_SECS=600 by default
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECS:-600}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config nginx probe_response sni proxy_header)
mkdir -p fuzz/logs fuzz/corpus/config fuzz/corpus/nginx fuzz/corpus/probe_response fuzz/corpus/sni fuzz/corpus/proxy_header
cp config/*.toml fuzz/corpus/config/
cp tests/nginx/*.conf fuzz/corpus/nginx/
cp fuzz/seeds/probe/* fuzz/corpus/probe_response/
cp fuzz/seeds/sni/* fuzz/corpus/sni/
cp fuzz/seeds/proxy_header/* fuzz/corpus/proxy_header/
summary=()
for t in "${targets[@]}"; do
  log=fuzz/logs/$t.log
  echo "== $t: ${secs}s"
  status=0
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 \
    >"$log" 2>&1 || status=$?
  # Inputs tried: libFuzzer's "Done N runs" line, or after a crash its last
  # "#N <event>" status line (its "######" dictionary lines are not that).
  runs=$(sed -n 's/^Done \([0-9][0-9]*\) runs.*/\1/p' "$log" | tail -1)
  [ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9][0-9]*\)[[:space:]].*/\1/p' "$log" | tail -1)
  crashes=$(find "fuzz/artifacts/$t" -type f 2>/dev/null | wc -l)
  [ "$status" = 0 ] || tail -40 "$log"
  summary+=("$(printf '%-16s %12s inputs  %3d crash files  exit %s' "$t" "${runs:-?}" "$crashes" "$status")")
done
printf '%s\n' "${summary[@]}"
