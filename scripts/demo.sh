#!/usr/bin/env bash
# The main job: trains the 784-256-128-10 MLP on Fashion-MNIST with 4
# workers under Efficient-Adam (1-bit sign codec both ways, error feedback on
# both sides), printing progress and, at the end, the bytes moved against
# what fp32 Adam would have moved. Installs and builds what is missing.
#
# Until the distributed daemons land this runs the single-process simulator
# (effadam-sim), which computes exactly what the cluster will.
# Extra flags are passed on, e.g. scripts/demo.sh --rounds=500
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
exec build/bin/effadam-sim --model=mlp --workers=4 --rounds=1500 \
  --eval_every=150 --worker_codec=sign --server_codec=sign \
  --error_feedback=both "$@"
