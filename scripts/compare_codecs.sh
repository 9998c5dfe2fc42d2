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

SETTINGS=(
  "fp32/fp32        --worker_codec=fp32 --server_codec=fp32"
  "sign/fp32+EF     --worker_codec=sign --server_codec=fp32"
  "sign/sign+EF     --worker_codec=sign --server_codec=sign"
  "sign/sign,no-EF  --worker_codec=sign --server_codec=sign --error_feedback=none"
  "q4/q4+EF         --worker_codec=q4 --server_codec=q4"
  "topk:0.01/q4+EF  --worker_codec=topk:0.01 --server_codec=q4"
)
printf "%-16s %9s %10s %14s %14s %8s %8s\n" setting accuracy train_loss \
  "up B/round" "down B/round" ratio seconds
i=0
for s in "${SETTINGS[@]}"; do
  name=${s%% *}
  flags=${s#* }
  # shellcheck disable=SC2086
  "$SIM" --eval_every=0 "$@" $flags --summary_json="$OUT/$i.json" >/dev/null
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
done
