#!/usr/bin/env bash
# Builds floodgate with profile-guided optimisation into target/pgo/floodgate.
#
#   scripts/pgo-build.sh
#
# 1. an instrumented build (target/pgo/instrumented), 2. the training workload
# (examples/pgo_workload.rs: the benchmark's traffic and a mix over config/floodgate.toml, on
# loopback), 3. its profiles merged with llvm-profdata, 4. the release build optimised with them
# (target/pgo/optimized). LLVM lays out the hot paths together and keeps cold code out of
# them: about a quarter fewer instructions and a quarter of the instruction-cache misses per
# proxied request (docs/performance.md).
#
# llvm-profdata comes from rustup's llvm-tools component (the same LLVM as rustc). Without it
# (no rustup, or no network to fetch the component) the script says so and builds the plain
# release binary instead, so a container build still succeeds.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/pgo
mkdir -p "$OUT"
plain() {
  echo "pgo-build: $1; building without profile guidance" >&2
  cargo build --release --locked --bin floodgate
  cp target/release/floodgate "$OUT/floodgate"
  exit 0
}

command -v rustup >/dev/null 2>&1 || plain "rustup not found"
rustup component add llvm-tools >/dev/null 2>&1 || plain "llvm-tools component unavailable"
PROFDATA=$(find "$(rustc --print sysroot)/lib/rustlib" -name llvm-profdata -type f | head -n 1)
[ -n "$PROFDATA" ] || plain "llvm-profdata not found in the toolchain"

PROFILES="$PWD/$OUT/profiles"
# --target: RUSTFLAGS then apply to floodgate and its dependencies only, not to build scripts.
HOST=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-Cprofile-generate=$PROFILES" cargo build --release --locked --bin floodgate \
  --target "$HOST" --target-dir "$OUT/instrumented"
cargo build --release --locked --example pgo_workload
rm -rf "$PROFILES"
LLVM_PROFILE_FILE="$PROFILES/floodgate-%p-%m.profraw" \
  target/release/examples/pgo_workload "$OUT/instrumented/$HOST/release/floodgate"
"$PROFDATA" merge -o "$OUT/floodgate.profdata" "$PROFILES"

RUSTFLAGS="-Cprofile-use=$PWD/$OUT/floodgate.profdata" cargo build --release --locked \
  --bin floodgate --target "$HOST" --target-dir "$OUT/optimized"
cp "$OUT/optimized/$HOST/release/floodgate" "$OUT/floodgate"
echo "pgo-build: $OUT/floodgate" >&2
