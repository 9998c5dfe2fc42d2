#!/usr/bin/env bash
# Static checks of the deploy files (no container engine, no cluster):
#   - docker-compose config of deploy/docker-compose.yml, its sharded and
#     pytorch profiles (and with the container test's host-network override);
#   - promtool check config of deploy/prometheus/prometheus.yml, and the
#     Grafana provisioning files parse;
#   - promtool check rules and test rules of the alerts
#     (deploy/prometheus/alerts.yml, tests/deploy/alerts_test.yml), and
#     deploy/k8s/prometheusrule.yaml made from them;
#   - the Dockerfile linted with dockerfile-utils (npm), no finding allowed;
#   - the kustomize base validated against the Kubernetes schemas with
#     kubernetes-models and @kubernetes-models/prometheus-operator (npm),
#     plus cross-reference checks, the TLS component deploy/k8s/tls and the
#     overlay deploy/k8s/overlays/pytorch applied to it
#     (tests/deploy/validate_k8s.cjs; with --bin the flags the TLS component
#     adds are checked against the binaries' --helpfull);
#   - kubectl kustomize of the base and of the base with the TLS component,
#     every rendered object validated (when kubectl is installed);
#   - the manifests' container args are the compose file's (check_consistency.py);
#   - the Grafana dashboard (check_dashboard.py; with --bin DIR it also runs
#     the built server and checks the dashboard's metrics are exported).
# Usage: tests/deploy/static_check.sh [--bin DIR]. Installs what it needs
# (apt as root; npm packages into EFFADAM_NPM_CACHE, default
# /var/cache/effadam-ci/npm, or a temp dir when that is not writable).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN=""
if [ "${1:-}" = "--bin" ]; then BIN="$2"; fi

PACKAGES=(docker-compose prometheus nodejs npm python3 python3-yaml)
missing=()
for p in "${PACKAGES[@]}"; do
  # nodejs may come from elsewhere than Debian; any node and npm will do.
  case "$p" in nodejs) command -v node >/dev/null && continue ;; npm) command -v npm >/dev/null && continue ;; esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "static_check: missing ${missing[*]}; run as root to install" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

TMP="$(mktemp -d /tmp/effadam-static-check.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
step() { echo; echo "== $* =="; }

step "docker-compose config"
# An empty environment file keeps a user's .env out of the check.
(cd "$ROOT/deploy" && env -i PATH="$PATH" docker-compose -f docker-compose.yml config -q)
echo "ok   deploy/docker-compose.yml"
# The sharded profile: a second server service for shard 1 of 2, which the
# workers dial beside the first (docs/sharding.md).
sharded=$(cd "$ROOT/deploy" && env -i PATH="$PATH" EFFADAM_NUM_SHARDS=2 \
  EFFADAM_SERVER_ADDR=server:50051,server-shard1:50051 \
  docker-compose -f docker-compose.yml --profile sharded config)
for want in "FLAGS_shard: '1'" "--num_shards=2" \
            "--server=server:50051,server-shard1:50051"; do
  if ! grep -qF -- "$want" <<<"$sharded"; then
    echo "FAIL compose --profile sharded: no $want"; exit 1
  fi
done
echo "ok   deploy/docker-compose.yml --profile sharded: shard 1 of 2, workers dial both"
# The pytorch profile: PyTorch workers from the Dockerfile's pytorch target,
# the server from the environment, WORLD_SIZE the server's --workers.
pytorch=$(cd "$ROOT/deploy" && env -i PATH="$PATH" EFFADAM_WORKERS=3 \
  docker-compose -f docker-compose.yml --profile pytorch config)
for want in "target: pytorch" "/opt/effadam/examples/fashion_mnist_cnn.py" \
            "EFFADAM_SERVER: server:50051" "WORLD_SIZE: '3'" "--workers=3"; do
  if ! grep -qF -- "$want" <<<"$pytorch"; then
    echo "FAIL compose --profile pytorch: no $want"; exit 1
  fi
done
grep -q '^FROM .* AS pytorch$' "$ROOT/Dockerfile" \
  || { echo "FAIL Dockerfile: no pytorch target"; exit 1; }
echo "ok   deploy/docker-compose.yml --profile pytorch: the example from the pytorch image, WORLD_SIZE = --workers"
python3 "$ROOT/tests/deploy/make_override.py" --compose "$ROOT/deploy/docker-compose.yml" \
  --data "$TMP/data" --data_shard1 "$TMP/data1" --metrics 1 > "$TMP/override.yml"
env -i PATH="$PATH" EFFADAM_SERVER_LISTEN=127.0.0.1:50051 \
  EFFADAM_SHARD1_LISTEN=127.0.0.1:50052 docker-compose \
  -f "$ROOT/deploy/docker-compose.yml" -f "$TMP/override.yml" --profile sharded \
  --profile pytorch config -q
echo "ok   deploy/docker-compose.yml + the container test's host-network override"

step "promtool check config"
promtool check config "$ROOT/deploy/prometheus/prometheus.yml"
python3 - "$ROOT/deploy/grafana/provisioning" <<'PY'
import pathlib, sys, yaml
for p in sorted(pathlib.Path(sys.argv[1]).rglob("*.yml")):
    d = yaml.safe_load(p.read_text())
    assert d["apiVersion"] == 1 and ("datasources" in d or "providers" in d), p
    print("ok  ", p.relative_to(pathlib.Path(sys.argv[1]).parent.parent.parent))
PY

step "promtool: the alerting rules"
# deploy/prometheus/alerts.yml: syntax, then each alert firing and silent
# (tests/deploy/alerts_test.yml); the PrometheusRule made from it is current.
promtool check rules "$ROOT/deploy/prometheus/alerts.yml"
promtool test rules "$ROOT/tests/deploy/alerts_test.yml"
python3 "$ROOT/deploy/prometheus/make_prometheusrule.py" --check

step "npm packages"
NPM_DIR="${EFFADAM_NPM_CACHE:-/var/cache/effadam-ci/npm}"
if ! mkdir -p "$NPM_DIR" 2>/dev/null || [ ! -w "$NPM_DIR" ]; then NPM_DIR="$TMP/npm"; mkdir -p "$NPM_DIR"; fi
# Pinned: kubernetes-models 5 needs node >= 22, Debian bookworm has 18.
NPM_PKGS=(kubernetes-models@4.5.1 @kubernetes-models/prometheus-operator@4.4.4
          dockerfile-utils@0.16.3 yaml@2.9.1)
stamp="$NPM_DIR/.installed-$(echo "${NPM_PKGS[*]}" | md5sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  npm install --prefix "$NPM_DIR" --no-audit --no-fund --no-save --loglevel=error "${NPM_PKGS[@]}"
  touch "$stamp"
fi
echo "ok   ${NPM_PKGS[*]} in $NPM_DIR"

step "dockerfile-utils lint Dockerfile"
"$NPM_DIR/node_modules/.bin/dockerfile-utils" lint "$ROOT/Dockerfile" > "$TMP/lint.out" 2>&1 \
  || { cat "$TMP/lint.out"; echo "FAIL dockerfile-utils lint" >&2; exit 1; }
if [ -s "$TMP/lint.out" ]; then cat "$TMP/lint.out"; echo "FAIL dockerfile-utils has findings" >&2; exit 1; fi
echo "ok   Dockerfile: no findings"

step "Kubernetes manifests (kubernetes-models)"
EFFADAM_BIN="$BIN" K8S_ARGS_OUT="$TMP/k8s-args.json" NODE_PATH="$NPM_DIR/node_modules" \
  node "$ROOT/tests/deploy/validate_k8s.cjs" "$ROOT/deploy/k8s"

step "kubectl kustomize: the base and the TLS component, rendered"
# kubectl is not in Debian bookworm nor on npm: used when the machine has
# it, else skipped (the validator above reads the files and applies the TLS
# component's patches itself).
if command -v kubectl >/dev/null; then
  kubectl kustomize "$ROOT/deploy/k8s" > "$TMP/base.yaml"
  cp -r "$ROOT/deploy/k8s" "$TMP/k8s-tls"
  for f in ca.pem server.pem server.key client.pem client.key token; do
    echo placeholder > "$TMP/k8s-tls/tls/$f"
  done
  sed -i 's/^# components:/components:/; s/^#   - tls/  - tls/' "$TMP/k8s-tls/kustomization.yaml"
  kubectl kustomize "$TMP/k8s-tls" > "$TMP/tls.yaml"
  NODE_PATH="$NPM_DIR/node_modules" node "$ROOT/tests/deploy/validate_k8s.cjs" --rendered \
    "$TMP/base.yaml" "$TMP/tls.yaml"
else
  echo "skip kubectl kustomize: no kubectl on this machine"
fi

step "the manifests run the compose file's commands"
python3 "$ROOT/tests/deploy/check_consistency.py" --k8s-args "$TMP/k8s-args.json"

step "Grafana dashboard"
python3 "$ROOT/tests/deploy/check_dashboard.py" ${BIN:+--bin "$BIN"}

echo
echo "static_check: all checks passed"
