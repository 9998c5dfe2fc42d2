#!/usr/bin/env bash
# A longer fuzzing campaign than the fuzz ctests: runs each libFuzzer
# target in turn (one process at a time) for SECONDS, from a copy of its
# seed corpus that grows across runs in OUT/<target>/corpus, and appends one
# markdown table row per run to OUT/campaign.md: executions, seconds,
# coverage (libFuzzer's cov: and ft:), corpus size, crash inputs (kept in
# OUT/<target>/artifacts).
# Usage: scripts/fuzz_campaign.sh OUT SECONDS [TARGET...]
# Needs build-fuzz (scripts/test.sh builds it, or:
#   cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ \
#         -DEFFADAM_FUZZ=ON && cmake --build build-fuzz --target fuzzers).
set -uo pipefail
cd "$(dirname "$0")/.."
out=$1
seconds=$2
shift 2
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(fuzz_codec fuzz_codec_spec fuzz_chunk_assembler fuzz_join_request)
fi
mkdir -p "$out"
if [ ! -f "$out/campaign.md" ]; then
  echo "| target | seconds | executions | exec/s | cov | ft | corpus | crashes |" \
    > "$out/campaign.md"
  echo "|---|---|---|---|---|---|---|---|" >> "$out/campaign.md"
fi
for t in "${targets[@]}"; do
  dir="$out/$t"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp -n "tests/fuzz/corpus/$t"/* "$dir/corpus/"
  log="$dir/run-$(date +%s).log"
  start=$(date +%s)
  "build-fuzz/bin/$t" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$dir/artifacts/" "$dir/corpus" > "$log" 2>&1 &
  fuzzer=$!
  # Stopped early (SIGTERM, Ctrl-C): the fuzzer prints its statistics on
  # SIGINT, and the run still gets its row.
  trap 'kill -INT $fuzzer 2>/dev/null; stop=1' TERM INT
  stop=0
  wait $fuzzer
  rc=$?
  while kill -0 $fuzzer 2>/dev/null; do wait $fuzzer; rc=$?; done
  trap - TERM INT
  elapsed=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | grep ' cov: ' | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<< "$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<< "$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<< "$last")
  crashes=$(find "$dir/artifacts" -type f | wc -l)
  echo "| $t | $elapsed | ${execs:-?} | ${rate:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | $crashes (exit $rc) |" \
    >> "$out/campaign.md"
  [ "$stop" = 1 ] && break
done
cat "$out/campaign.md"
