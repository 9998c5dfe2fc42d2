#!/usr/bin/env bash
# Installs every build, test and demo dependency of effadam from Debian
# packages. Idempotent; runs as root or through sudo.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libabsl-dev libeigen3-dev zlib1g-dev
  # XXH3, the params checksum (core/checksum.cc, header only); its Python
  # binding is the tests' independent reference
  libxxhash-dev python3-xxhash
  libgtest-dev libgmock-dev libbenchmark-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  # TLS: libssl checks the PEM files at start-up; the openssl CLI makes the
  # test certificates (tests/security_test.py)
  libssl-dev openssl
  prometheus-cpp-dev prometheus
  dataset-fashion-mnist
  python3 python3-yaml
  # libFuzzer targets (tests/fuzz): clang and its fuzzer/sanitizer runtimes;
  # clang-format checks the C++ formatting (scripts/check_format.sh)
  clang libclang-rt-14-dev clang-format
  # bench/e2e: network namespaces and tc shaping, plots
  iproute2 python3-matplotlib
  # the Python package (python/): bindings, the PyTorch optimizer and its
  # examples; jargon-text is the char-level language model's corpus
  python3-dev pybind11-dev python3-pybind11 python3-numpy python3-torch
  jargon-text
  # OpenBLAS for torch: without it Debian's torch uses the reference BLAS
  # (forward and backward 6.5x slower)
  libopenblas0-pthread
  # container tests: podman builds the Dockerfile, docker-compose drives it
  podman debootstrap uidmap fuse-overlayfs docker-compose
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "setup.sh: run as root or install sudo" >&2
    exit 1
  fi
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup.sh: all dependencies present"
  exit 0
fi
echo "setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
