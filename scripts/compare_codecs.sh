#!/usr/bin/env bash
# Trains the same model with the same seeds under several codec settings in
# effadam-sim and prints one table: accuracy, bytes each way per round and
# the ratio to fp32. Usage: scripts/compare_codecs.sh [extra sim flags...]
# e.g. scripts/compare_codecs.sh --model=mlp --rounds=2000
set -euo pipefail
cd "$(dirname "$0")/.."
SIM=build/bin/effadam-sim
[ -x "$SIM" ] || scripts/build.sh
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

printf "%-16s %9s %10s %14s %14s %8s %8s\n" setting accuracy train_loss \
  "up B/round" "down B/round" ratio seconds
i=0
# The settings bench/e2e/e2e_bench.py runs too, one per line.
while IFS=$'\t' read -r name worker server feedback; do
  case "$name" in ''|'#'*) continue ;; esac
  "$SIM" --eval_every=0 "$@" --worker_codec="$worker" --server_codec="$server" \
    --error_feedback="$feedback" --summary_json="$OUT/$i.json" </dev/null >/dev/null
  python3 - "$OUT/$i.json" "$name" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
r, w = s["rounds"], s["workers"]
metric = s.get("test_accuracy", s.get("distance_to_optimum"))
print("%-16s %9.4f %10.4f %14d %14d %7.1fx %8.1f" % (
    sys.argv[2], metric, s["train_loss"],
    s["bytes_worker_to_server"] // (r * w), s["bytes_server_to_worker"] // (r * w),
    s["compression_ratio"], s["seconds"]))
PY
  i=$((i + 1))
done < bench/codec_settings.tsv
