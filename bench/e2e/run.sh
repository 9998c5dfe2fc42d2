#!/usr/bin/env bash
# End-to-end benchmark of effadam on a slow network (docs/benchmarks.md).
# Makes one network namespace per rate whose loopback tc shapes to that
# rate (docs/design.md, "Testing recipes") and one unshaped, runs bench/e2e/e2e_bench.py
# (real clusters of 1 effadam-server + 4 effadam-worker in them; the round
# cost sweep; codec throughput), then bench/e2e/report.py (tables, PNG
# plots) and bench/e2e/check_results.py (columns and plausible values).
# The namespaces are deleted at the end, also on failure and Ctrl-C.
#
# Usage: bench/e2e/run.sh [--rates=100mbit,1gbit] [--out=build/bench-e2e]
#                         [--img_dir=DIR] [--bin=build/bin] [--quick]
#                         [any e2e_bench.py flag, e.g. --models=mlp
#                          --rounds=mlp=500 --skip=sweep,codec]
# --quick: MLP, fp32/fp32 and sign/sign+EF, 20 rounds, 100mbit only, no
# sweep or codec run (under a minute; ctest runs it as bench_e2e_quick).
# Needs root (ip netns, tc); exits 77 (skipped) otherwise.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-/usr/bin/python3}  # Debian's: python3-matplotlib is for it

RATES=100mbit,1gbit
OUT=""
IMG_DIR=""
BIN="$ROOT/build/bin"
QUICK=0
PASS=()
for arg in "$@"; do
  case "$arg" in
    --rates=*) RATES=${arg#--rates=} ;;
    --out=*) OUT=${arg#--out=} ;;
    --img_dir=*) IMG_DIR=${arg#--img_dir=} ;;
    --bin=*) BIN=${arg#--bin=} ;;
    --quick) QUICK=1; RATES=100mbit; PASS+=("$arg") ;;
    -h|--help) sed -n '2,17s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) PASS+=("$arg") ;;
  esac
done
[ -n "$OUT" ] || OUT="$ROOT/build/bench-e2e"  # /build*/ is ignored by git
[ -n "$IMG_DIR" ] || IMG_DIR="$OUT/img"

if [ "$(id -u)" -ne 0 ]; then
  echo "bench/e2e/run.sh: skipped: needs root for network namespaces and" \
       "tc (ip netns add, tc qdisc); run it as root" >&2
  exit 77
fi
for b in effadam-server effadam-worker effadam-sim \
         effadam-synthetic-worker effadam-bench-codec; do
  if [ ! -x "$BIN/$b" ]; then
    echo "bench/e2e/run.sh: $BIN/$b is missing; build first (scripts/build.sh)" >&2
    exit 1
  fi
done
for tool in ip tc; do
  command -v "$tool" >/dev/null || {
    echo "bench/e2e/run.sh: '$tool' is missing; install iproute2 (scripts/setup.sh)" >&2
    exit 1
  }
done
"$PY" -c "import matplotlib" 2>/dev/null || {
  echo "bench/e2e/run.sh: $PY cannot import matplotlib; install" \
       "python3-matplotlib (scripts/setup.sh)" >&2
  exit 1
}

NAMESPACES=()
DRIVER=""
cleanup() {
  trap - EXIT INT TERM
  # The driver kills the daemons it started when it is told to stop.
  if [ -n "$DRIVER" ] && kill -0 "$DRIVER" 2>/dev/null; then
    kill -TERM "$DRIVER" 2>/dev/null || true
    wait "$DRIVER" 2>/dev/null || true
  fi
  for ns in ${NAMESPACES[@]+"${NAMESPACES[@]}"}; do
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'echo "bench/e2e/run.sh: interrupted" >&2; exit 130' INT TERM

# A namespace whose loopback is up and, with a rate, shaped to it. Names
# carry this shell's pid, so concurrent runs do not collide.
make_namespace() {  # NAME [RATE]
  ip netns add "$1"
  NAMESPACES+=("$1")
  ip -n "$1" link set lo up
  if [ -n "${2:-}" ]; then
    tc -n "$1" qdisc add dev lo root tbf rate "$2" burst 256kb latency 20ms
  fi
}

NETNS_ARGS=()
IFS=, read -r -a RATE_LIST <<<"$RATES"
for rate in "${RATE_LIST[@]}"; do
  ns="effadam-bench-$$-$rate"
  make_namespace "$ns" "$rate"
  NETNS_ARGS+=(--netns="$rate=$ns")
done
if [ "$QUICK" -eq 0 ]; then
  make_namespace "effadam-bench-$$-unshaped"
  NETNS_ARGS+=(--unshaped_netns="effadam-bench-$$-unshaped")
fi

mkdir -p "$OUT"
# In the background, so that a signal to this script reaches the trap at
# once (bash runs traps only between commands, and `wait` is one).
"$PY" "$HERE/e2e_bench.py" --bin="$BIN" --out="$OUT" "${NETNS_ARGS[@]}" \
  ${PASS[@]+"${PASS[@]}"} &
DRIVER=$!
wait "$DRIVER"
DRIVER=""
"$PY" "$HERE/report.py" --out="$OUT" --img_dir="$IMG_DIR" >"$OUT/tables.md"
"$PY" "$HERE/check_results.py" --out="$OUT" --img_dir="$IMG_DIR"
echo "bench/e2e/run.sh: results in $OUT (tables.md, *.csv), plots in $IMG_DIR"
