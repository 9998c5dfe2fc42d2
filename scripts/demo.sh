#!/usr/bin/env bash
# The main job: a local Efficient-Adam cluster on loopback. One
# effadam-server and 4 effadam-worker processes train the 784-256-128-10 MLP
# on Fashion-MNIST with the 1-bit sign codec both ways and error feedback on
# both sides. Rank 0 prints progress (round, loss, test accuracy, bytes each
# way, ratio to fp32); the end is a summary of the bytes moved against what
# fp32 Adam would have moved. Installs and builds what is missing; stops
# every process it started, also on Ctrl-C.
#
# Usage: scripts/demo.sh [--rounds=N] [--workers=N] [any effadam-worker flag]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3000
WORKERS=4
EXTRA=()
for arg in "$@"; do
  case "$arg" in
    --rounds=*) ROUNDS=${arg#--rounds=} ;;
    --workers=*) WORKERS=${arg#--workers=} ;;
    *) EXTRA+=("$arg") ;;
  esac
done

scripts/setup.sh
scripts/build.sh
BIN=build/bin
RUN=$(mktemp -d /tmp/effadam-demo.XXXXXX)
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted, stopping the cluster"; exit 130' INT TERM

CODECS=(--worker_codec=sign --server_codec=sign --error_feedback=both)
"$BIN/effadam-server" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 \
  --workers="$WORKERS" --rounds="$ROUNDS" "${CODECS[@]}" \
  --summary_json="$RUN/server.json" \
  >"$RUN/server.out" 2>"$RUN/server.log" &
PIDS+=($!)
PORT=""
for _ in $(seq 1 100); do
  PORT=$(sed -n 's/^effadam-server listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' \
           "$RUN/server.out")
  [ -n "$PORT" ] && break
  kill -0 "${PIDS[0]}" 2>/dev/null || { cat "$RUN/server.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$PORT" ] || { echo "demo: the server did not start" >&2; exit 1; }
echo "demo: effadam-server on 127.0.0.1:$PORT, $WORKERS workers, $ROUNDS rounds, sign/sign with error feedback"
METRICS=$(sed -n 's/^effadam-server metrics on \(.*\)$/\1/p' "$RUN/server.out")
[ -n "$METRICS" ] && echo "demo: Prometheus metrics at $METRICS"

for rank in $(seq 0 $((WORKERS - 1))); do
  args=(--server="127.0.0.1:$PORT" --rank="$rank" --model=mlp
        --rounds="$ROUNDS" --eval_every=$((ROUNDS / 10 > 0 ? ROUNDS / 10 : 1))
        "${CODECS[@]}" --summary_json="$RUN/worker$rank.json" "${EXTRA[@]}")
  if [ "$rank" -eq 0 ]; then
    # Rank 0's progress lines go straight to the terminal.
    "$BIN/effadam-worker" "${args[@]}" 2>"$RUN/worker0.log" &
  else
    "$BIN/effadam-worker" "${args[@]}" >/dev/null 2>"$RUN/worker$rank.log" &
  fi
  PIDS+=($!)
done

status=0
for p in "${PIDS[@]}"; do wait "$p" || status=$?; done
if [ "$status" -ne 0 ]; then
  echo "demo: a process failed (exit $status); its log:" >&2
  tail -n 5 "$RUN"/*.log >&2
  exit "$status"
fi

python3 - "$RUN" "$WORKERS" <<'PY'
import json, sys
run, n = sys.argv[1], int(sys.argv[2])
server = json.load(open(f"{run}/server.json"))
w0 = json.load(open(f"{run}/worker0.json"))
checks = {json.load(open(f"{run}/worker{r}.json"))["params_checksum"]
          for r in range(n)}
mb = lambda b: b / 1e6
up, down = server["bytes_worker_to_server"], server["bytes_server_to_worker"]
fp32 = server["fp32_equivalent_bytes"]
print()
print("== effadam demo summary ==")
print(f"rounds:               {server['rounds']} ({n} workers, {server['seconds']:.1f} s)")
print(f"test accuracy:        {w0['test_accuracy']:.4f}")
print(f"worker -> server:     {mb(up):10.2f} MB")
print(f"server -> worker:     {mb(down):10.2f} MB")
print(f"fp32 Adam would move: {mb(fp32):10.2f} MB ({fp32 / (up + down):.1f}x more)")
print(f"replicas identical:   {'yes' if checks == {server['params_checksum']} else 'NO'}"
      f" (params_checksum {server['params_checksum']})")
PY
