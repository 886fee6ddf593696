#!/usr/bin/env bash
# The soak test (benches/soak.rs): the release ucp-lb for SOAK_SECS (default
# 3600) under steady traffic with SHA-256-checked long streams, a reload
# every 10 s and random server flaps, on loopback. Prints a sample row every
# SAMPLE_SECS (default 60), then plots and a verdict; exits 1 when a byte
# was lost or corrupted, a connect failed, or descriptors, RSS or threads grew.
# Usage: benches/soak.sh      SOAK_SECS=3600 SAMPLE_SECS=60 by default
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
exec cargo bench --bench soak
