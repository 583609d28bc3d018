#!/usr/bin/env bash
# The project's test command (README "Run the tests"; CI runs exactly this).
# Format and lint checks, loom models, the C ABI tests under valgrind, then every test of
# the workspace (unit, integration, C programs, stress, doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy -D warnings (all features: the bench code too)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "== loom models"
for crate in crates/*/; do
  name=$(basename "$crate")
  for t in "$crate"tests/loom_*.rs; do
    [ -e "$t" ] || continue
    RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
      cargo test -q -p "$name" --release --test "$(basename "$t" .rs)"
  done
done
# Models of crate-internal API (unit tests named loom_*).
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test -q -p nmr --release --lib loom_

if [ -x crates/netio/tests/run-valgrind.sh ]; then
  echo "== C ABI tests under valgrind"
  crates/netio/tests/run-valgrind.sh
fi

echo "== stress test on the rundown's fallback path (sharded counters)"
NMR_RUNDOWN=fallback cargo test -q -p nmr --test stress

echo "== cargo test --workspace"
cargo test --workspace
