#!/usr/bin/env bash
# Container integration test of the Dockerfile and deploy/docker-compose.yml,
# with the engine recipe of docs/design.md ("Testing recipes"): podman (Debian) builds the
# image from a Debian base made locally with debootstrap, docker-compose (v1)
# drives podman's Docker-compatible API, every service runs on the host
# network on 127.0.0.1 (tests here never use compose's bridge networks), and
# Debian's Prometheus on the host scrapes the server container's metrics.
#
#   tests/deploy/container_test.sh          (as root; installs what it needs)
#
# Steps: build the image; `docker-compose up` the server and 4 workers (--scale)
# from deploy/docker-compose.yml plus a host-network override; wait for the
# run to end; check every container exited 0, the server's summary (rounds,
# workers, exact byte counts, compression ratio, loss) and that Prometheus
# scraped the server's metrics (every server metric the dashboard uses).
# Then the same run with the `sharded` profile (2 server containers): every
# worker ends with the first run's x, and the shards' bytes add up to its.
# Then the `pytorch` profile: the Dockerfile's pytorch image, 4 PyTorch
# workers (examples/fashion_mnist_cnn.py) against the server for a short
# run; every worker's params_checksum equals the server's.
#
# Cache (kept between runs, EFFADAM_CI_CACHE, default /var/cache/effadam-ci;
# delete it to start cold): the debootstrap root file system, and podman's
# storage with the imported debian:bookworm base, the build-deps and build
# stages and the newest image (tags localhost/effadam-ci:cache-*), so a warm
# run at most recompiles. Everything else (containers, the test's image tag, volumes,
# mount namespace, podman service, Prometheus, temp files) is removed.
set -euo pipefail
# The whole script is one { ... } block, so bash parses it before running
# it and an edit of this file during a run cannot change the running test.
{
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${EFFADAM_CI_CACHE:-/var/cache/effadam-ci}"
ROUNDS="${EFFADAM_TEST_ROUNDS:-300}"
NWORKERS=4
log() { echo "container_test: $*"; }

if [ "$(id -u)" -ne 0 ]; then
  # 77: ctest's SKIP_RETURN_CODE for this test (CI runs as root).
  echo "container_test: SKIP: needs root (rootful podman, unshare, debootstrap)" >&2
  exit 77
fi

# --- what it needs, from Debian ---------------------------------------------
PACKAGES=(podman debootstrap uidmap fuse-overlayfs docker-compose prometheus
          python3 python3-yaml)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- the private mount namespace ---------------------------------------------
# Everything that talks to podman runs in one private mount namespace that
# hides the cgroup v2 mount of the host's hybrid cgroups (the OCI runtime
# refuses hybrid). The script re-executes itself there once.
if [ "${EFFADAM_IN_NS:-}" != 1 ]; then
  export EFFADAM_IN_NS=1
  exec unshare -m --propagation private "$0" "$@"
fi
if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi

# One run at a time per cache: podman's run directory (below) belongs to
# the cache's storage, whose database records it.
mkdir -p "$CACHE"
CACHE_ID="$(realpath "$CACHE" | md5sum | cut -c1-8)"
exec 9>"/run/lock/effadam-ci-$CACHE_ID.lock"
flock -w 1800 9

WORK="$(mktemp -d /tmp/effadam-container-test.XXXXXX)"
PROJECT="effadamct$$"
IMAGE="localhost/effadam:ct-$$"
PYIMAGE="localhost/effadam-pytorch:ct-$$"
PYROUNDS="${EFFADAM_TEST_PYTORCH_ROUNDS:-30}"
CACHE_TAG="localhost/effadam-ci:cache"
SOCK="$WORK/podman.sock"
# Podman's run state: a fixed path per cache, because podman records its
# run directories in the (cached) storage database and insists on them.
RUN_DIR="/run/effadam-ci-$CACHE_ID"
mkdir -p "$CACHE/storage" "$RUN_DIR" "$WORK/data" "$WORK/prometheus"

cat > "$WORK/containers.conf" <<CONF
[containers]
default_ulimits = []
cgroups = "disabled"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$RUN_DIR/libpod"
CONF
export CONTAINERS_CONF="$WORK/containers.conf"
# Storage in the cache (kept), run state in RUN_DIR (removed).
cat > "$WORK/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$CACHE/storage"
runroot = "$RUN_DIR/storage"
CONF
export CONTAINERS_STORAGE_CONF="$WORK/storage.conf"

PODMAN_PID=""
PROM_PID=""
cleanup() {
  local rc=$?
  set +e
  if [ -S "$SOCK" ]; then
    DOCKER_HOST="unix://$SOCK" docker-compose -p "$PROJECT" \
      -f "$ROOT/deploy/docker-compose.yml" -f "$WORK/override.yml" \
      down --volumes --remove-orphans >/dev/null 2>&1
  fi
  [ -n "$PROM_PID" ] && kill "$PROM_PID" 2>/dev/null && wait "$PROM_PID" 2>/dev/null
  [ -n "$PODMAN_PID" ] && kill "$PODMAN_PID" 2>/dev/null && wait "$PODMAN_PID" 2>/dev/null
  podman ps -a --filter "label=com.docker.compose.project=$PROJECT" -q \
    | xargs -r podman rm -f >/dev/null 2>&1
  podman volume ls -q --filter "label=com.docker.compose.project=$PROJECT" \
    | xargs -r podman volume rm -f >/dev/null 2>&1
  # Remove the test's tag; the image's layers stay, tagged as the cache.
  podman untag "$IMAGE" >/dev/null 2>&1
  podman untag "$PYIMAGE" >/dev/null 2>&1
  rm -rf "$WORK" "$RUN_DIR"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the base image: debian:bookworm from Debian's packages -------------------
if ! podman image exists docker.io/library/debian:bookworm; then
  if [ ! -f "$CACHE/rootfs/etc/debian_version" ]; then
    log "debootstrap bookworm into $CACHE/rootfs"
    rm -rf "$CACHE/rootfs.tmp"
    debootstrap --variant=minbase bookworm "$CACHE/rootfs.tmp" >"$WORK/debootstrap.log" 2>&1 \
      || { tail -20 "$WORK/debootstrap.log"; exit 1; }
    mv "$CACHE/rootfs.tmp" "$CACHE/rootfs"
  fi
  log "importing the base image"
  tar -C "$CACHE/rootfs" -c . | podman import - docker.io/library/debian:bookworm >/dev/null
fi

# --- build -------------------------------------------------------------------
# --format docker keeps HEALTHCHECK (OCI images have no such field). The
# build-deps stage (apt-get of the compilers and -dev packages) and the build
# stage (the compiled tree) are tagged so that pruning keeps them: a warm
# build starts at COPY of the sources, and reuses the compile when the
# sources are unchanged. (The third build is all cache hits.)
log "building $IMAGE"
t0=$(date +%s)
BUILD=(podman build --format docker --network=host --pull=never --layers)
{ "${BUILD[@]}" --target build-deps -t "$CACHE_TAG-build-deps" "$ROOT" \
  && "${BUILD[@]}" -t "$IMAGE" "$ROOT" \
  && "${BUILD[@]}" --target build -t "$CACHE_TAG-build" "$ROOT" \
  && "${BUILD[@]}" --target pytorch -t "$PYIMAGE" "$ROOT"; } >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log"; exit 1; }
log "image built in $(( $(date +%s) - t0 )) s"
# The newest image stays tagged as the cache of the runtime stage's layers;
# untagged leftovers of earlier runs are pruned, so the cache holds at most
# the base, build-deps, one build stage and one image.
podman tag "$IMAGE" "$CACHE_TAG-last"
podman tag "$PYIMAGE" "$CACHE_TAG-pytorch-last"
for _ in 1 2 3 4 5; do
  [ -z "$(podman image prune -f 2>/dev/null)" ] && break
done
# The image runs as the unprivileged user, and both daemons are in it.
[ "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = "effadam:effadam" ]
podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE" | grep -q effadam-health
for b in effadam-server effadam-worker effadam-health; do
  podman run --rm --no-healthcheck --network=host --entrypoint "$b" "$IMAGE" --version >/dev/null
done
# The pytorch image: unprivileged, torch with OpenBLAS, the package.
[ "$(podman image inspect --format '{{.Config.User}}' "$PYIMAGE")" = "effadam:effadam" ]
podman run --rm --network=host --entrypoint python3 "$PYIMAGE" -c \
  "import torch, effadam.optim; assert 'openblas' in open('/proc/self/maps').read(), 'torch without OpenBLAS'"

# Does this build export metrics (--metrics_listen)? Until it does, the test
# runs without it and says so.
# (--helpfull exits 1 by absl's design; only its text matters.)
if { podman run --rm --no-healthcheck --network=host "$IMAGE" --helpfull 2>&1 || true; } | grep -q -- '--metrics_listen'; then
  METRICS=1
else
  METRICS=0
  log "WARNING: effadam-server has no --metrics_listen yet: the Prometheus part is skipped"
fi

# --- loopback ports and the host-network override ------------------------------
read -r GRPC_PORT METRICS_PORT PROM_PORT SHARD1_PORT < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
)
mkdir -p "$WORK/sharded0" "$WORK/sharded1" "$WORK/pytorch"
chown 10001:10001 "$WORK/data" "$WORK/sharded0" "$WORK/sharded1" "$WORK/pytorch"
export EFFADAM_IMAGE="$IMAGE"
export EFFADAM_WORKERS="$NWORKERS" EFFADAM_ROUNDS="$ROUNDS" EFFADAM_MODEL=mlp
export EFFADAM_EVAL_EVERY=100 EFFADAM_ROUND_TIMEOUT=60s
# /metrics stays up this long after the last round: Prometheus (1 s scrape
# interval) gets the final counts, which check_run.py compares exactly.
export EFFADAM_METRICS_LINGER=4s
export EFFADAM_SERVER_LISTEN="127.0.0.1:$GRPC_PORT"
export EFFADAM_SERVER_METRICS_LISTEN="127.0.0.1:$METRICS_PORT"
export EFFADAM_SERVER_ADDR="127.0.0.1:$GRPC_PORT"
export EFFADAM_SHARD1_LISTEN="127.0.0.1:$SHARD1_PORT"
python3 "$ROOT/tests/deploy/make_override.py" \
  --compose "$ROOT/deploy/docker-compose.yml" --data "$WORK/data" \
  --data_shard1 "$WORK/sharded1" --metrics "$METRICS" > "$WORK/override.yml"
# The sharded run: fresh data volumes, so that shard 0 does not resume the
# first run's checkpoints.
python3 "$ROOT/tests/deploy/make_override.py" \
  --compose "$ROOT/deploy/docker-compose.yml" --data "$WORK/sharded0" \
  --data_shard1 "$WORK/sharded1" --metrics 0 > "$WORK/override-sharded.yml"
python3 "$ROOT/tests/deploy/make_override.py" \
  --compose "$ROOT/deploy/docker-compose.yml" --data "$WORK/pytorch" \
  --data_shard1 "$WORK/sharded1" --metrics 0 > "$WORK/override-pytorch.yml"

# --- Prometheus on the host, scraping the server container on loopback --------
if [ "$METRICS" = 1 ]; then
  cat > "$WORK/prometheus.yml" <<CONF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: effadam-server
    static_configs:
      - targets: ["127.0.0.1:$METRICS_PORT"]
CONF
  promtool check config "$WORK/prometheus.yml" >/dev/null
  prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prometheus" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
  PROM_PID=$!
fi

# --- run -------------------------------------------------------------------------
podman system service --time=0 "unix://$SOCK" >"$WORK/podman-service.log" 2>&1 &
PODMAN_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
export DOCKER_HOST="unix://$SOCK"
COMPOSE=(docker-compose -p "$PROJECT" -f "$ROOT/deploy/docker-compose.yml" -f "$WORK/override.yml")

# run_compose NAME SERVERS SERVICES... : with the compose command in RUN,
# `up` the services (NWORKERS worker replicas), wait until every container
# has exited (a server exits 0 after --rounds, each worker after its last
# round), keep the logs in $WORK/NAME.log and check that SERVERS + NWORKERS
# containers exited 0.
run_compose() {
  local name=$1 servers=$2; shift 2
  local t0 deadline running failed id code cname
  t0=$(date +%s)
  "${RUN[@]}" up -d --no-build --scale "${WORKER_SERVICE:-worker}=$NWORKERS" "$@"
  deadline=$(( $(date +%s) + 900 ))
  while :; do
    running=$(podman ps -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
    [ "$running" -eq 0 ] && break
    # A container that failed fails the run now: the others may wait for
    # it until their timeouts.
    failed=$(podman ps -a --filter "label=com.docker.compose.project=$PROJECT" \
      --filter status=exited --format '{{.Names}} {{.ExitCode}}' | awk '$2 != 0')
    if [ -n "$failed" ]; then
      "${RUN[@]}" logs --tail=30
      echo "container_test: exited with an error: $failed" >&2; exit 1
    fi
    if [ "$(date +%s)" -gt "$deadline" ]; then
      "${RUN[@]}" logs --tail=30; echo "container_test: timed out" >&2; exit 1
    fi
    sleep 2
  done
  log "$name run finished in $(( $(date +%s) - t0 )) s"
  "${RUN[@]}" logs --no-color >"$WORK/$name.log" 2>&1 || true
  grep -E 'effadam-server:|rank 0' "$WORK/$name.log" | tail -8 || true
  mapfile -t ids < <(podman ps -a -q --filter "label=com.docker.compose.project=$PROJECT")
  [ "${#ids[@]}" -eq $(( NWORKERS + servers )) ] \
    || { echo "container_test: ${#ids[@]} containers, want $(( NWORKERS + servers ))" >&2; exit 1; }
  for id in "${ids[@]}"; do
    read -r cname code < <(podman inspect --format '{{.Name}} {{.State.ExitCode}}' "$id")
    if [ "$code" != 0 ]; then
      tail -30 "$WORK/$name.log"
      echo "container_test: $cname exited $code" >&2; exit 1
    fi
  done
}

log "docker-compose up server + $NWORKERS workers, $ROUNDS rounds of mlp"
RUN=("${COMPOSE[@]}")
run_compose compose 1 server worker

python3 "$ROOT/tests/deploy/check_run.py" \
  --summary "$WORK/data/server-summary.json" --rounds "$ROUNDS" --workers "$NWORKERS" \
  --log "$WORK/compose.log" \
  $( [ "$METRICS" = 1 ] && echo --prometheus "http://127.0.0.1:$PROM_PORT" \
       --dashboard "$ROOT/deploy/grafana/dashboards/effadam.json" )

# --- the sharded profile: the same run, the model over 2 servers --------------
# (docs/sharding.md). Every worker must end with the x of the run above, and
# the shards' byte counts must add up to its server's.
"${COMPOSE[@]}" down --volumes >/dev/null 2>&1
export EFFADAM_NUM_SHARDS=2
export EFFADAM_SERVER_ADDR="127.0.0.1:$GRPC_PORT,127.0.0.1:$SHARD1_PORT"
log "docker-compose --profile sharded up: 2 server shards + $NWORKERS workers"
RUN=(docker-compose -p "$PROJECT" -f "$ROOT/deploy/docker-compose.yml"
     -f "$WORK/override-sharded.yml" --profile sharded)
run_compose sharded 2 server server-shard1 worker
python3 "$ROOT/tests/deploy/check_run.py" \
  --summary "$WORK/data/server-summary.json" --rounds "$ROUNDS" --workers "$NWORKERS" \
  --log "$WORK/compose.log" \
  --shard_summaries "$WORK/sharded0/server-summary.json" "$WORK/sharded1/server-summary.json" \
  --shard_log "$WORK/sharded.log"

# --- the pytorch profile: PyTorch workers from the pytorch image ---------------
"${RUN[@]}" down --volumes >/dev/null 2>&1
export EFFADAM_NUM_SHARDS=1 EFFADAM_SERVER_ADDR="127.0.0.1:$GRPC_PORT"
export EFFADAM_PYTORCH_IMAGE="$PYIMAGE" EFFADAM_ROUNDS="$PYROUNDS"
export EFFADAM_EVAL_EVERY="$PYROUNDS"
log "docker-compose --profile pytorch up: server + $NWORKERS PyTorch workers, $PYROUNDS rounds of the CNN"
RUN=(docker-compose -p "$PROJECT" -f "$ROOT/deploy/docker-compose.yml"
     -f "$WORK/override-pytorch.yml" --profile pytorch)
WORKER_SERVICE=pytorch-worker run_compose pytorch 1 server pytorch-worker
python3 - "$WORK/pytorch/server-summary.json" "$WORK/pytorch.log" "$NWORKERS" "$PYROUNDS" <<'PY'
import json, re, sys
summary, log, workers, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = json.load(open(summary))
text = open(log, errors="replace").read()
said = re.findall(r"rank (\d+) done after round (\d+), params_checksum ([0-9a-f]{16})", text)
assert s["rounds"] == rounds, s
assert sorted(int(r) for r, _, _ in said) == list(range(workers)), said
bad = [(r, c) for r, n, c in said if c != s["params_checksum"] or int(n) != rounds]
assert not bad, "server %s, workers %s" % (s["params_checksum"], bad)
acc = re.findall(r"test_accuracy ([0-9.]+)", text)
print("container_test: pytorch: %d workers, %d rounds, every params_checksum "
      "equal to the server's %s; rank 0 test_accuracy %s"
      % (workers, rounds, s["params_checksum"], acc[-1] if acc else "-"))
PY
log "PASS"
exit 0
}
