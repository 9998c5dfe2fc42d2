#!/usr/bin/env bash
# Runs one libFuzzer target for a bounded time from a copy of its seed
# corpus, so the checked-in corpus is never written to.
# Usage: run_fuzzer.sh FUZZER SEED_DIR SECONDS
# A crash fails the test; its input is copied to $FUZZ_ARTIFACT_DIR
# (default: ./fuzz-artifacts under the ctest working directory).
set -euo pipefail
fuzzer=$1
seeds=$2
seconds=${3:-20}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/corpus" "$work/artifacts"
cp "$seeds"/* "$work/corpus/"
# -timeout: one input taking 10 s is a hang; -rss_limit_mb bounds memory.
if ! "$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus"; then
  keep=${FUZZ_ARTIFACT_DIR:-$PWD/fuzz-artifacts}
  mkdir -p "$keep"
  cp "$work"/artifacts/* "$keep"/ 2>/dev/null || true
  echo "run_fuzzer.sh: $(basename "$fuzzer") failed; crash inputs in $keep" >&2
  exit 1
fi
